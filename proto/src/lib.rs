//! The v1 gRPC contract (`pki.ca.v1`). Placeholder until the proto helper lands.
#![forbid(unsafe_code)]
