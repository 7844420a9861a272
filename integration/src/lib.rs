//! Harness for end-to-end tests: starts the real `ca-daemon` binary on loopback.
#![forbid(unsafe_code)]
