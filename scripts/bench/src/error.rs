//! The one error type of the benchmark tool.

/// Why a benchmark could not produce its numbers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// An external tool (openssl, wrk, /usr/bin/time) failed or printed something unexpected.
    #[error("{tool}: {detail}")]
    Tool {
        /// The tool.
        tool: String,
        /// What went wrong (its stderr, trimmed).
        detail: String,
    },
    /// The daemon harness failed (start, connect).
    #[error("daemon: {0}")]
    Harness(#[from] integration::HarnessError),
    /// A gRPC call failed.
    #[error("{rpc}: {status}")]
    Rpc {
        /// The method.
        rpc: &'static str,
        /// Its status.
        status: Box<tonic::Status>,
    },
    /// A step of the benchmark itself failed (bad answer, timeout, wrong setup).
    #[error("{0}")]
    Failed(String),
}

/// Shorthand result.
pub type Result<T> = std::result::Result<T, BenchError>;

/// `map_err` helper for I/O.
pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

/// `map_err` helper for gRPC.
pub fn rpc(name: &'static str) -> impl FnOnce(tonic::Status) -> BenchError {
    move |status| BenchError::Rpc {
        rpc: name,
        status: Box::new(status),
    }
}

/// `map_err` helper for anything displayable.
pub fn failed<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> BenchError {
    move |e| BenchError::Failed(format!("{what}: {e}"))
}
