//! Empty: this package is its `[[bench]]` and `[[example]]` targets (see
//! `Cargo.toml`).
