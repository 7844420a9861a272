//! Pure policy engine of the care-network PKI.
//!
//! No I/O, no async runtime, no keys: this crate turns a TOML policy document into validated
//! types, and holds the domain vocabulary ([`domain`]) every other crate speaks.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod domain;
pub mod keystore;
