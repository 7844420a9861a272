//! `ca-daemon`: the binary. Placeholder until the CLI lands.
#![forbid(unsafe_code)]

fn main() {}
