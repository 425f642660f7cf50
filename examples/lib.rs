//! Empty: this package is its `[[example]]` targets (see `Cargo.toml`).
