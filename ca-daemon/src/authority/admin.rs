//! Administration: audit verification, backups, counts for status and metrics.

use std::path::PathBuf;

use time::{Duration, OffsetDateTime};

use crate::error::CaError;
use crate::store::{AuditEvent, TicketState};

use super::{Authority, Caller, blocking, store_err};

/// A fresh private directory under DATA_DIR/tmp for snapshots.
pub(super) fn tempfile_dir(data_dir: &std::path::Path) -> Result<PathBuf, CaError> {
    let dir = data_dir
        .join("tmp")
        .join(uuid::Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&dir).map_err(|e| CaError::internal(format!("temp dir: {e}")))?;
    Ok(dir)
}

impl Authority {
    /// Certificates neither revoked nor renewed whose notAfter lies within `days` days.
    pub async fn expiring_within_days(&self, days: i64) -> Result<u64, CaError> {
        let store = self.store.clone();
        blocking(move || {
            let now = OffsetDateTime::now_utc();
            store
                .count_expiring(now, now + Duration::days(days))
                .map_err(store_err)
        })
        .await
    }

    /// Verifies the audit chain.
    pub async fn verify_audit(&self) -> Result<crate::audit::AuditVerification, CaError> {
        let store = self.store.clone();
        blocking(move || store.verify_audit().map_err(store_err)).await
    }

    /// Verifies the audit chain and that it still holds the entry a checkpoint records (the
    /// checkpoint's signature is checked with the daemon's checkpoint key first): a log
    /// truncated or rewritten since the checkpoint is reported as broken.
    pub async fn verify_audit_against_checkpoint(
        &self,
        checkpoint: &[u8],
    ) -> Result<crate::audit::AuditVerification, CaError> {
        use crate::audit::AuditVerification;
        let cp = crate::promises::Checkpoint::parse(checkpoint, std::path::Path::new("request"))
            .map_err(|e| CaError::invalid("checkpoint", e.to_string()))?;
        let promises = self
            .promises()
            .ok_or_else(|| CaError::Unavailable("no checkpoint key loaded".into()))?;
        if let Err(problem) = cp.verify(&promises.public_key_hex()) {
            return Ok(AuditVerification::bad(
                0,
                cp.seq,
                format!("the checkpoint is not one of this daemon's: {problem}"),
            ));
        }
        let store = self.store.clone();
        blocking(move || {
            crate::promises::verify_against_checkpoint(store.as_ref(), &cp).map_err(store_err)
        })
        .await
    }

    /// Ticket counts by state.
    pub async fn ticket_counts(&self) -> Result<Vec<(TicketState, u64)>, CaError> {
        let store = self.store.clone();
        blocking(move || {
            store
                .ticket_counts(OffsetDateTime::now_utc())
                .map_err(store_err)
        })
        .await
    }

    /// Writes a consistent snapshot of the store to `path`.
    pub async fn backup_to(&self, path: PathBuf) -> Result<(), CaError> {
        let store = self.store.clone();
        blocking(move || store.backup_to(&path).map_err(store_err)).await
    }

    /// (total, revoked, unexpired) certificates of an issuer.
    pub async fn certificate_counts(&self, issuer_id: &str) -> Result<(u64, u64, u64), CaError> {
        let store = self.store.clone();
        let id = issuer_id.to_string();
        blocking(move || {
            store
                .certificate_counts(&id, OffsetDateTime::now_utc())
                .map_err(store_err)
        })
        .await
    }

    /// A consistent snapshot of the store as one tar archive on disk (for the `Backup` RPC,
    /// which streams it in chunks: memory stays flat whatever the store's size), audited.
    /// Returns the private temporary directory holding it (remove it when done) and the
    /// archive's path.
    pub async fn backup_archive(&self, caller: &Caller) -> Result<(PathBuf, PathBuf), CaError> {
        let dir = tempfile_dir(&self.data_dir)?;
        let snapshot = dir.join("store");
        if let Err(e) = self.backup_to(snapshot.clone()).await {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(e);
        }
        let archive = dir.join("store.tar");
        let tar_path = archive.clone();
        let packed = blocking(move || {
            let file = std::fs::File::create(&tar_path)
                .map_err(|e| CaError::internal(format!("creating the archive: {e}")))?;
            let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
            builder
                .append_dir_all("store", &snapshot)
                .and_then(|()| builder.into_inner())
                .and_then(|w| w.into_inner().map_err(std::io::IntoInnerError::into_error))
                .map_err(|e| CaError::internal(format!("packing snapshot: {e}")))?;
            // The copied store is in the archive now; only the archive stays.
            let _ = std::fs::remove_dir_all(&snapshot);
            std::fs::metadata(&tar_path)
                .map(|m| m.len())
                .map_err(|e| CaError::internal(format!("archive size: {e}")))
        })
        .await;
        let len = match packed {
            Ok(len) => len,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Err(e);
            }
        };
        let store = self.store.clone();
        let event = AuditEvent {
            actor: caller.actor(),
            action: "store.backup".into(),
            target: "store".into(),
            detail: format!("{len} bytes"),
        };
        if let Err(e) =
            blocking(move || store.append_audit(event).map(|_| ()).map_err(store_err)).await
        {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(e);
        }
        Ok((dir, archive))
    }
}
