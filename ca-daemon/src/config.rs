//! Daemon configuration: a TOML file (every key optional, every default documented) and
//! command-line flags, flags winning. Secrets are never configured inline: the passphrase
//! comes from a file or a systemd credential.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message names the key).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The `[serve]` settings of the config file. See `keys.example/ca-daemon.toml`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data directory (keys, store). Default `./var`.
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address. Default `127.0.0.1:50051`.
    pub grpc_listen: Option<SocketAddr>,
    /// HTTP (CRL, OCSP, CA chain) listen address. Default `127.0.0.1:8080`.
    pub http_listen: Option<SocketAddr>,
    /// Prometheus metrics listen address. Default: off.
    pub metrics_listen: Option<SocketAddr>,
    /// Policy file. Default: the built-in default policy.
    pub policy: Option<PathBuf>,
    /// File holding the passphrase of the sealed keys. Default: `$CREDENTIALS_DIRECTORY/passphrase`
    /// (systemd `LoadCredential=passphrase:...`), else `DATA_DIR/dev/passphrase` in dev mode.
    pub passphrase_file: Option<PathBuf>,
    /// `text` or `json`. Default `text`.
    pub log_format: Option<LogFormat>,
    /// Public base URL embedded in certificates (CRL DP, AIA). Default `http://<http_listen>`.
    pub url_base: Option<String>,
    /// Host names and IP addresses the gRPC server certificate must name (clients check the
    /// name they connect to), in addition to the names it has (`localhost`, `127.0.0.1`, `::1`
    /// from `init`, or its `--server-name`s) and the `grpc_listen` address when that is not a
    /// wildcard. A missing one makes `serve` re-issue the server certificate at start.
    /// Default: none.
    pub server_names: Option<Vec<String>>,
    /// sled page cache of the store, in MiB. Default 128 (sled's own default is 1024).
    pub store_cache_mib: Option<u64>,
    /// Where the store lives: `postgresql://user@host:port/db` (several daemons on one
    /// database, docs/cluster.md). Default: sled in `DATA_DIR/store`.
    pub store: Option<String>,
    /// File holding the PostgreSQL password. Default: `$CREDENTIALS_DIRECTORY/store-password`
    /// (systemd `LoadCredential=store-password:...`) when it exists, else none (peer or trust
    /// authentication). Never in the URL.
    pub store_password_file: Option<PathBuf>,
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses config text.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../keys.example/ca-daemon.toml");
        let c = FileConfig::parse(Path::new("example"), text).expect("example parses");
        assert!(c.data_dir.is_some());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = FileConfig::parse(Path::new("x.toml"), "grpc_listn = \"1.2.3.4:5\"")
            .expect_err("unknown key");
        assert!(e.to_string().contains("grpc_listn"), "{e}");
    }
}
