//! The gRPC edge: TLS 1.3 with required client certificates from the service-client CA, the
//! caller's role read from the certificate, a per-role allow-list from policy, and the four
//! `pki.ca.v1` services plus health and reflection on one port.
//!
//! tonic's built-in TLS has no hook for our role extraction or connection limits, so we run
//! our own accept loop: TCP accept → bounded by a connection semaphore → rustls handshake with
//! a deadline (off the accept loop, so slow handshakes cannot stall others) → the role is read
//! from the verified peer certificate → the stream is handed to tonic through
//! `serve_with_incoming_shutdown`. Handlers find the [`PeerInfo`] in the request extensions.

pub mod auth;
pub mod service_crl;
pub mod services;
pub mod status;
pub mod tls;

pub use auth::PeerInfo;
pub use tls::{TlsIncoming, server_tls_config};
