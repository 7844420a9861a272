//! Compiles `pki/ca/v1/*.proto` without a system `protoc`: `protox` parses the files into a
//! `FileDescriptorSet`, which is written to `OUT_DIR` (for gRPC server reflection) and handed to
//! `tonic-prost-build` to generate the messages, clients and servers.

use std::path::PathBuf;

use prost::Message as _;

/// The proto files of the v1 contract, relative to the crate root (the include root).
const PROTOS: &[&str] = &[
    "pki/ca/v1/common.proto",
    "pki/ca/v1/enrollment.proto",
    "pki/ca/v1/certificates.proto",
    "pki/ca/v1/revocation.proto",
    "pki/ca/v1/admin.proto",
];

/// Messages whose generated `Debug` would print a secret (ticket password, PKCS#12 bytes) or a
/// large binary blob; `src/lib.rs` implements `Debug` for them by hand.
const SKIP_DEBUG: &[&str] = &[
    ".pki.ca.v1.CreateTicketResponse",
    ".pki.ca.v1.RedeemTicketRequest",
    ".pki.ca.v1.RedeemTicketResponse",
    ".pki.ca.v1.BackupChunk",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", root.join("pki").display());
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }

    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    // `compile` includes imports (google/protobuf/timestamp.proto) and source info (comments),
    // which is what reflection clients such as grpcurl want to see.
    let fds = protox::compile(&files, [&root])?;
    std::fs::write(
        out_dir.join("pki_ca_v1_descriptor.bin"),
        fds.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .skip_debug(SKIP_DEBUG.iter().copied())
        // A CRL reaches tens of MB: the daemon hands every GetCrl/WatchCrl caller the one
        // published copy (`bytes::Bytes` shares it) instead of a copy each.
        .bytes(".pki.ca.v1.Crl.der")
        .compile_fds(fds)?;
    Ok(())
}
