//! The care-network PKI daemon as a library: the binary in `main.rs` is a thin shell over it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
