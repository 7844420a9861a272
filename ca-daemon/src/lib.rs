//! The care-network PKI daemon as a library: the binary in `main.rs` is a thin shell over it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod authority;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod crl;
pub mod crl_sync;
pub mod discovery;
pub mod error;
pub mod grpc;
pub mod http;
pub mod http_serve;
pub mod integrity;
pub mod issue;
pub mod keys;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod ocsp;
pub mod pkcs12;
pub mod pki;
pub mod promises;
pub mod renewal;
pub mod root_crl;
pub mod server;
pub mod service_ca;
pub mod storage;
pub mod store;
pub mod tickets;
