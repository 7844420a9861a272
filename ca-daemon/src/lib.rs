//! The care-network PKI daemon as a library: the binary in `main.rs` is a thin shell over it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod crl;
pub mod keys;
pub mod ocsp;
pub mod pkcs12;
pub mod pki;
pub mod store;
