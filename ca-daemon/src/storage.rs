//! Disk full is a state, not a crash: the room on the store's file system, the low-water mark
//! from policy (`[storage] low_water_mib`), what a failed write does, and how the daemon gets
//! back on its feet.
//!
//! - **Low water.** Below the mark, new tickets and redemptions are refused with
//!   RESOURCE_EXHAUSTED ("storage nearly full"); revocations and CRL publication go on in the
//!   room that is left (that is what the room is kept for). Checked with one `statvfs` per
//!   call.
//! - **A write fails anyway** (ENOSPC, EIO): the call gets UNAVAILABLE, never INTERNAL, the
//!   state turns *failed*, gRPC health says NOT_SERVING for `pki.ca.v1.Enrollment` and
//!   `/healthz` answers 503. CRLs and OCSP keep being served from memory.
//! - **Recovery.** sled 0.34 keeps a failed I/O as a global error: every later write fails
//!   until the database is opened again, and it cannot be reopened in-process while request
//!   handlers hold it. So once the free space is back above the low-water mark, the daemon
//!   shuts down gracefully (in-flight calls finish, a checkpoint is written) and exits with
//!   [`RESTART_EXIT_CODE`] (75, EX_TEMPFAIL); systemd (`Restart=on-failure`, see
//!   `scripts/ca-daemon.service`) starts it again on a fresh handle, and everything acknowledged
//!   before the failure is there (every acknowledged write was flushed).
//!
//! The state is process-wide (one daemon, one store), like the metrics registry.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::CaError;
use crate::store::StoreError;

/// Exit code of a daemon that stops to get a fresh store handle after a failed write.
pub const RESTART_EXIT_CODE: i32 = 75;

/// How a refusal below the low-water mark starts (metrics tell it from rate limits by it).
pub const NEARLY_FULL: &str = "storage nearly full";

/// gRPC health service name of enrollment.
pub const ENROLLMENT_SERVICE: &str = "pki.ca.v1.Enrollment";
/// gRPC health service name of revocation.
pub const REVOCATION_SERVICE: &str = "pki.ca.v1.Revocation";

struct State {
    path: PathBuf,
    low_water: u64,
    failed: AtomicBool,
}

static STATE: OnceLock<State> = OnceLock::new();

/// Sets the store directory and the low-water mark (once, at start).
pub fn configure(store_dir: &Path, low_water_bytes: u64) {
    let _ = STATE.set(State {
        path: store_dir.to_path_buf(),
        low_water: low_water_bytes,
        failed: AtomicBool::new(false),
    });
}

/// Free bytes (for unprivileged users) on the file system of `path`.
pub fn free_bytes_at(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Free bytes on the store's file system, if configured.
pub fn free_bytes() -> Option<u64> {
    STATE.get().and_then(|s| free_bytes_at(&s.path))
}

/// Total size of the files under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Whether a write has failed since the start (cleared only by the restart).
pub fn is_failed() -> bool {
    STATE.get().is_some_and(|s| s.failed.load(Ordering::SeqCst))
}

fn failed_error() -> CaError {
    CaError::Unavailable(
        "storage write failed (disk full or I/O error); the daemon restarts by itself once space is back, retry then".into(),
    )
}

/// Refuses work that needs room (new tickets, redemptions): UNAVAILABLE after a failed
/// write, RESOURCE_EXHAUSTED below the low-water mark.
pub fn check_room() -> Result<(), CaError> {
    let Some(s) = STATE.get() else {
        return Ok(());
    };
    if s.failed.load(Ordering::SeqCst) {
        return Err(failed_error());
    }
    match free_bytes_at(&s.path) {
        Some(free) if free < s.low_water => Err(CaError::ResourceExhausted(format!(
            "{NEARLY_FULL}: {} MiB free on the store's file system, below the low-water mark of {} MiB; new tickets and redemptions are refused until space is freed (revocations still work)",
            free >> 20,
            s.low_water >> 20
        ))),
        _ => Ok(()),
    }
}

/// Classifies a store error: a failing storage engine or file system (as opposed to bad
/// data) marks the state failed and becomes UNAVAILABLE; `None` for other errors.
pub fn storage_failure(e: &StoreError) -> Option<CaError> {
    // A database that cannot be reached is not a failed local write: the store reconnects by
    // itself, so nothing is marked failed (no restart), the call is just UNAVAILABLE.
    if let StoreError::Unavailable { detail } = e {
        return Some(CaError::Unavailable(format!(
            "the database is unavailable ({detail}); retry later"
        )));
    }
    let failing = match e {
        StoreError::Backend { source } => matches!(source, ::sled::Error::Io(_)),
        StoreError::Io { .. } => true,
        _ => false,
    };
    if !failing {
        return None;
    }
    if let Some(s) = STATE.get()
        && !s.failed.swap(true, Ordering::SeqCst)
    {
        crate::metrics::metrics().storage_write_failures.inc();
        tracing::error!(error = %e, free_bytes = free_bytes().unwrap_or(0),
            "storage write failed: enrollment is NOT_SERVING; the daemon restarts by itself once space is back");
    }
    Some(failed_error())
}

/// Keeps the health statuses and storage gauges current, once a second: enrollment is
/// NOT_SERVING while a write has failed or the free space is below the low-water mark;
/// revocation is NOT_SERVING while the CRL guard holds a CRL back (`crl_blocked`). After a
/// failed write, once the free space is back above the mark, sends on `restart`.
pub async fn health_monitor(
    reporter: tonic_health::server::HealthReporter,
    crl_blocked: impl Fn() -> bool + Send + 'static,
    restart: tokio::sync::watch::Sender<bool>,
) {
    use tonic_health::ServingStatus;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last: (Option<bool>, Option<bool>) = (None, None);
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        let Some(s) = STATE.get() else { return };
        let path = s.path.clone();
        let size_due = n.is_multiple_of(10);
        n += 1;
        let (free, size) = tokio::task::spawn_blocking(move || {
            (free_bytes_at(&path), size_due.then(|| dir_size(&path)))
        })
        .await
        .unwrap_or((None, None));
        let m = crate::metrics::metrics();
        if let Some(f) = free {
            m.storage_free_bytes
                .set(i64::try_from(f).unwrap_or(i64::MAX));
        }
        if let Some(sz) = size {
            m.store_size_bytes
                .set(i64::try_from(sz).unwrap_or(i64::MAX));
        }
        let room = free.is_none_or(|f| f >= s.low_water);
        let failed = s.failed.load(Ordering::SeqCst);
        let enrollment_ok = room && !failed;
        let revocation_ok = !crl_blocked();
        if last.0 != Some(enrollment_ok) {
            let status = if enrollment_ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter
                .set_service_status(ENROLLMENT_SERVICE, status)
                .await;
            if !enrollment_ok && !failed {
                tracing::warn!(
                    free_bytes = free.unwrap_or(0),
                    low_water_bytes = s.low_water,
                    "storage nearly full: refusing new tickets and redemptions"
                );
            }
            last.0 = Some(enrollment_ok);
        }
        set_health(&reporter, REVOCATION_SERVICE, revocation_ok, &mut last.1).await;
        if failed && room {
            tracing::warn!(
                free_bytes = free.unwrap_or(0),
                "storage has room again after a failed write: restarting for a fresh store handle (exit 75)"
            );
            let _ = restart.send(true);
            return;
        }
    }
}

/// Sets a gRPC health status when it changed since `last`.
pub async fn set_health(
    reporter: &tonic_health::server::HealthReporter,
    service: &str,
    ok: bool,
    last: &mut Option<bool>,
) {
    if *last == Some(ok) {
        return;
    }
    let status = if ok {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    reporter.set_service_status(service, status).await;
    *last = Some(ok);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_and_file_system_failures_are_unavailable_and_bad_data_is_not() {
        let full = || std::io::Error::from(std::io::ErrorKind::StorageFull);
        let e = StoreError::Backend {
            source: ::sled::Error::Io(full()),
        };
        assert!(matches!(storage_failure(&e), Some(CaError::Unavailable(_))));
        let e = StoreError::Io {
            path: "/x".into(),
            source: full(),
        };
        assert!(matches!(storage_failure(&e), Some(CaError::Unavailable(_))));
        let e = StoreError::Corrupt {
            kind: "ticket",
            key: "1".into(),
            detail: "bad".into(),
        };
        assert!(storage_failure(&e).is_none());
        let e = StoreError::Backend {
            source: ::sled::Error::Unsupported("x".into()),
        };
        assert!(storage_failure(&e).is_none());
        // An unreachable database is UNAVAILABLE but not a failed write (no restart).
        let e = StoreError::Unavailable {
            detail: "connection refused".into(),
        };
        assert!(matches!(storage_failure(&e), Some(CaError::Unavailable(_))));
        assert!(!is_failed());
        let e = StoreError::Database {
            detail: "syntax".into(),
        };
        assert!(storage_failure(&e).is_none());
    }

    #[test]
    fn free_space_and_sizes_are_measured() {
        let dir = tempfile::tempdir().expect("tmp");
        assert!(free_bytes_at(dir.path()).is_some_and(|f| f > 0));
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("a"), [0u8; 1000]).expect("write");
        std::fs::write(dir.path().join("sub/b"), [0u8; 24]).expect("write");
        assert_eq!(dir_size(dir.path()), 1024);
    }
}
