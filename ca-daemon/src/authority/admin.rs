//! Administration: audit verification, backups, the counts and figures of `GetStatus` and
//! the metrics.

use std::path::PathBuf;
use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use crate::error::CaError;
use crate::store::{AuditEvent, TicketState};

use super::{Authority, Caller, IssuerView, ROOT_CRL_ID, blocking, store_err};

/// A fresh private directory under DATA_DIR/tmp for snapshots.
pub(super) fn tempfile_dir(data_dir: &std::path::Path) -> Result<PathBuf, CaError> {
    let dir = data_dir
        .join("tmp")
        .join(uuid::Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&dir).map_err(|e| CaError::internal(format!("temp dir: {e}")))?;
    Ok(dir)
}

/// The figures `GetStatus` answers with.
pub struct StatusFigures {
    /// Issuers with counts and CRL numbers.
    pub issuers: Vec<IssuerView>,
    /// Ticket counts by state.
    pub tickets_by_state: Vec<(TicketState, u64)>,
    /// Certificates issued, all issuers.
    pub certificates_total: u64,
    /// Certificates revoked, all issuers.
    pub certificates_revoked: u64,
    /// The latest stored CRL of each issuer that has one.
    pub crls: Vec<CrlFigures>,
    /// The root's CRL over its issuers (issuer id [`ROOT_CRL_ID`]), if it exists and parses.
    pub root_crl: Option<CrlFigures>,
    /// Certificates neither revoked nor renewed whose notAfter lies within 30 days.
    pub certificates_expiring_within_30_days: u64,
}

/// Number and times of one CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlFigures {
    /// Issuer id ([`ROOT_CRL_ID`] for the root's CRL).
    pub issuer_id: String,
    /// CRL number.
    pub number: u64,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate.
    pub next_update: OffsetDateTime,
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

    /// Everything `GetStatus` reports: issuers, ticket and certificate counts, the latest CRL
    /// of each issuer and the root's CRL, certificates expiring within 30 days.
    pub async fn status_figures(self: &Arc<Self>) -> Result<StatusFigures, CaError> {
        let issuers = self.list_issuers().await?;
        let tickets_by_state = self.ticket_counts().await?;
        let mut certificates_total = 0;
        let mut certificates_revoked = 0;
        let mut crls = Vec::new();
        for i in &issuers {
            let (t, r, _) = self.certificate_counts(&i.record.id).await?;
            certificates_total += t;
            certificates_revoked += r;
            if let Some(c) = self.latest_crl(&i.record.id).await? {
                crls.push(CrlFigures {
                    issuer_id: c.issuer_id,
                    number: c.number,
                    this_update: c.this_update,
                    next_update: c.next_update,
                });
            }
        }
        let root_crl = self.root_crl_info().await.map(|r| CrlFigures {
            issuer_id: ROOT_CRL_ID.into(),
            number: r.number,
            this_update: r.this_update,
            next_update: r.next_update,
        });
        let certificates_expiring_within_30_days = self.expiring_within_days(30).await?;
        Ok(StatusFigures {
            issuers,
            tickets_by_state,
            certificates_total,
            certificates_revoked,
            crls,
            root_crl,
            certificates_expiring_within_30_days,
        })
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
