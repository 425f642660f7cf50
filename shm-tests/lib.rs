//! Empty: this package is its `[[test]]` targets (see `Cargo.toml`).
