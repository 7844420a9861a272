//! How operator commands find a running daemon: `serve` records the addresses it actually
//! listens on in `DATA_DIR/run/daemon.json` once its listeners are bound, and removes the file
//! on a clean shutdown. A command without `--server` (and without `CA_DAEMON_SERVER`) reads it
//! from its `--data-dir`, so a daemon started on non-default ports is found without flags.
//! The file holds no secret (addresses and the process id).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::keys::fsutil::{self, Overwrite};

/// What a running daemon records about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addresses {
    /// Process id of the daemon.
    pub pid: u32,
    /// gRPC (mTLS) listener.
    pub grpc: SocketAddr,
    /// HTTP (CRL, OCSP, CA chain) listener.
    pub http: SocketAddr,
    /// Metrics listener, if enabled.
    pub metrics: Option<SocketAddr>,
}

/// `DATA_DIR/run/daemon.json`.
pub fn addresses_path(data_dir: &Path) -> PathBuf {
    data_dir.join("run").join("daemon.json")
}

/// Writes the addresses (atomically, replacing a file left by a crashed daemon).
pub fn record(data_dir: &Path, addresses: &Addresses) -> std::io::Result<()> {
    let path = addresses_path(data_dir);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::to_vec_pretty(addresses).map_err(std::io::Error::other)?;
    fsutil::write_atomic(&path, &json, 0o644, Overwrite::Replace)
}

/// Removes the file if it is this process's.
pub fn forget(data_dir: &Path) {
    let path = addresses_path(data_dir);
    if read(data_dir).is_some_and(|a| a.pid == std::process::id()) {
        let _ = std::fs::remove_file(path);
    }
}

/// The recorded addresses, if the file exists and parses.
pub fn read(data_dir: &Path) -> Option<Addresses> {
    let bytes = std::fs::read(addresses_path(data_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The gRPC endpoint a local client uses for a listen address: a wildcard address
/// (`0.0.0.0`, `::`) is reached on loopback.
pub fn grpc_endpoint(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("https://{}", SocketAddr::new(ip, listen.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_reads_and_forgets_only_its_own() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = Addresses {
            pid: std::process::id(),
            grpc: "0.0.0.0:7001".parse().expect("addr"),
            http: "127.0.0.1:7002".parse().expect("addr"),
            metrics: None,
        };
        assert_eq!(read(dir.path()), None);
        record(dir.path(), &a).expect("record");
        assert_eq!(read(dir.path()), Some(a.clone()));
        assert_eq!(grpc_endpoint(a.grpc), "https://127.0.0.1:7001");
        assert_eq!(
            grpc_endpoint("[::]:9".parse().expect("addr")),
            "https://[::1]:9"
        );
        let other = Addresses {
            pid: a.pid.wrapping_add(1),
            ..a
        };
        record(dir.path(), &other).expect("record");
        forget(dir.path());
        assert!(read(dir.path()).is_some(), "another daemon's file stays");
        record(
            dir.path(),
            &Addresses {
                pid: std::process::id(),
                ..other
            },
        )
        .expect("record");
        forget(dir.path());
        assert_eq!(read(dir.path()), None);
    }
}
