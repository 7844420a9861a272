//! Revocation and status: revoke, `CheckStatus`, OCSP answers (cached or freshly signed),
//! and the supersession of renewed certificates once their grace period ends.

use std::collections::HashSet;
use std::sync::Arc;

use pki_policy::domain::RevocationReason;
use time::{Duration, OffsetDateTime};

use crate::error::CaError;
use crate::metrics;
use crate::ocsp::{CertStatus, StatusLookup};
use crate::promises::Promises;
use crate::store::{AuditEvent, CertRecord, Revocation, RevokeTarget, Store, StoreError};

use super::{Authority, Caller, StatusAnswer, blocking, store_err};

pub(super) struct StoreLookup(pub(super) Arc<dyn Store>, pub(super) Option<Arc<Promises>>);

impl StatusLookup for StoreLookup {
    fn status(&self, issuer_id: &str, serial_hex: &str) -> CertStatus {
        let status = match self.0.certificate(serial_hex) {
            Ok(Some(c)) if c.issuer_id == issuer_id => match c.revocation {
                Some(r) => CertStatus::Revoked {
                    at: r.revoked_at,
                    reason: r.reason,
                },
                None => CertStatus::Good,
            },
            Ok(_) => CertStatus::Unknown,
            Err(e) => {
                tracing::error!(error = %e, "OCSP status lookup failed; answering unknown");
                CertStatus::Unknown
            }
        };
        if matches!(status, CertStatus::Revoked { .. }) {
            return status;
        }
        // Never good (nor unknown) for a serial the last published CRL lists.
        match self
            .1
            .as_ref()
            .and_then(|p| p.published_revocation(issuer_id, serial_hex))
        {
            Some(r) => {
                tracing::warn!(issuer = %issuer_id, serial = %serial_hex,
                    "the store does not have a revocation the last published CRL lists; answering revoked");
                CertStatus::Revoked {
                    at: r.revoked_at,
                    reason: r.reason,
                }
            }
            None => status,
        }
    }
}

impl Authority {
    /// Revokes by target; returns every matched certificate (already revoked ones keep their
    /// original revocation) and how many of the target's active tickets were cancelled with
    /// it (device, person and facility targets, in the same transaction: issue #12 item 6).
    /// Durable and audited before it returns; the CRL follows within a second.
    pub async fn revoke(
        self: &Arc<Self>,
        caller: &Caller,
        target: RevokeTarget,
        reason: RevocationReason,
        invalidity_date: Option<OffsetDateTime>,
    ) -> Result<(Vec<CertRecord>, usize), CaError> {
        let now = OffsetDateTime::now_utc();
        if invalidity_date.is_some_and(|d| d > now) {
            return Err(CaError::invalid("invalidity_date", "lies in the future"));
        }
        let revocation = Revocation {
            revoked_at: now.replace_nanosecond(0).unwrap_or(now),
            reason,
            invalidity_date: invalidity_date.map(|d| d.replace_nanosecond(0).unwrap_or(d)),
        };
        let target_s = match &target {
            RevokeTarget::Serial(s) => format!("serial:{s}"),
            RevokeTarget::Device(d) => format!("device:{d}"),
            RevokeTarget::Person(p) => format!("person:{p}"),
            RevokeTarget::Facility(f) => format!("facility:{f}"),
        };
        let event = AuditEvent {
            actor: caller.actor(),
            action: "certificate.revoked".into(),
            target: target_s.clone(),
            detail: format!("reason={reason}"),
        };
        let cancel_event = AuditEvent {
            actor: caller.actor(),
            action: "ticket.cancelled".into(),
            target: String::new(),
            detail: format!("reason={reason}"),
        };
        let store = self.store.clone();
        let t2 = target.clone();
        let (certs, cancelled) = blocking(move || {
            store
                .revoke_and_cancel_tickets(&t2, &revocation, event, cancel_event, now)
                .map_err(|e| match e {
                    StoreError::NotFound { .. } => CaError::NotFound {
                        what: "certificate",
                        id: target_s,
                    },
                    e => store_err(e),
                })
        })
        .await?;
        let mut dirty = HashSet::new();
        for c in &certs {
            self.ocsp.invalidate(&c.issuer_id, &c.serial);
            dirty.insert(c.issuer_id.clone());
        }
        for d in dirty {
            let _ = self.crl_dirty.send(d);
        }
        metrics::metrics().revocations.inc_by(certs.len() as u64);
        tracing::info!(count = certs.len(), cancelled_tickets = cancelled.len(), reason = %reason,
            "revoked");
        Ok((certs, cancelled.len()))
    }

    /// Status of a serial for `CheckStatus`.
    pub async fn check_status(&self, serial: &str) -> Result<StatusAnswer, CaError> {
        let store = self.store.clone();
        let s = serial.to_string();
        let c = blocking(move || store.certificate(&s).map_err(store_err)).await?;
        let published = |issuer: &str| {
            self.promises()
                .and_then(|p| p.published_revocation(issuer, serial))
        };
        Ok(match c {
            // Unknown to the store, but maybe on a published CRL (issued after a backup).
            None => self
                .issuer_set()
                .by_id
                .keys()
                .find_map(|id| published(id))
                .map_or(StatusAnswer::Unknown, StatusAnswer::Revoked),
            Some(c) => match c.revocation {
                Some(r) => StatusAnswer::Revoked(r),
                // Never good for a serial the last published CRL lists.
                None => published(&c.issuer_id).map_or(StatusAnswer::Good, StatusAnswer::Revoked),
            },
        })
    }

    /// Answers a DER OCSP request with a DER OCSP response (never fails: errors are OCSP
    /// error responses), plus the times an HTTP cache needs.
    ///
    /// A cache hit or a refusal is answered at once, on the caller's thread. An answer that
    /// needs a fresh signature (a nonce, several certificates, a serial not cached yet) first
    /// costs the `source` address one unit of its budget
    /// ([`limits::OCSP_FRESH_PER_SOURCE_PER_SECOND`](crate::limits)), `tryLater` when spent,
    /// and is then looked up and signed on the blocking pool under a CPU permit, so a flood of
    /// nonces cannot take the async threads that gRPC and the cached OCSP path share.
    pub async fn ocsp(
        self: &Arc<Self>,
        request_der: &[u8],
        source: Option<std::net::IpAddr>,
    ) -> crate::ocsp::OcspAnswer {
        let now = OffsetDateTime::now_utc();
        let answer = match self.ocsp.answer_cached(request_der, now) {
            Some(a) => a,
            None => self.ocsp_fresh(request_der, source).await,
        };
        let label = match (answer.produced_at.is_some(), answer.from_cache) {
            (true, true) => "successful_cached",
            (true, false) => "successful_signed",
            (false, _) => match answer.der.get(4) {
                Some(1) => "malformed_request",
                Some(3) => "try_later",
                Some(6) => "unauthorized",
                _ => "internal_error",
            },
        };
        metrics::inc(&metrics::metrics().ocsp, label);
        answer
    }

    pub(super) async fn ocsp_fresh(
        self: &Arc<Self>,
        request_der: &[u8],
        source: Option<std::net::IpAddr>,
    ) -> crate::ocsp::OcspAnswer {
        use crate::ocsp::OcspAnswer;
        // A caller without an address (in-process) shares one budget.
        let source = source.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        if !self.limits.allow_fresh_ocsp(source) {
            tracing::debug!(source = %source, "OCSP fresh-signature budget spent: tryLater");
            return OcspAnswer::try_later();
        }
        let Ok(permit) = self.cpu.clone().acquire_owned().await else {
            return OcspAnswer::try_later();
        };
        let this = self.clone();
        let request = request_der.to_vec();
        let answered = tokio::task::spawn_blocking(move || {
            let lookup = StoreLookup(this.store.clone(), this.promises());
            let a = this
                .ocsp
                .answer(&request, OffsetDateTime::now_utc(), &lookup);
            drop(permit);
            a
        })
        .await;
        answered.unwrap_or_else(|e| {
            tracing::error!(error = %e, "OCSP signing task failed");
            OcspAnswer::try_later()
        })
    }

    /// Revokes (reason `superseded`) every renewed certificate whose grace period has ended;
    /// the CRL and OCSP follow as for any revocation. Returns how many were revoked.
    pub async fn apply_due_supersessions(self: &Arc<Self>) -> usize {
        let mut total = 0;
        loop {
            let store = self.store.clone();
            let now = OffsetDateTime::now_utc();
            let revocation = Revocation {
                revoked_at: now.replace_nanosecond(0).unwrap_or(now),
                reason: RevocationReason::Superseded,
                invalidity_date: None,
            };
            let event = AuditEvent {
                actor: "daemon".into(),
                action: "certificate.revoked".into(),
                target: String::new(),
                detail: format!("reason={} (renewed; grace period over)", revocation.reason),
            };
            const BATCH: usize = 1000;
            let applied = blocking(move || {
                store
                    .apply_due_supersessions(now, BATCH, &revocation, event)
                    .map_err(store_err)
            })
            .await;
            let certs = match applied {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "applying due supersessions failed");
                    return total;
                }
            };
            let mut dirty = HashSet::new();
            for c in &certs {
                self.ocsp.invalidate(&c.issuer_id, &c.serial);
                dirty.insert(c.issuer_id.clone());
            }
            for d in dirty {
                let _ = self.crl_dirty.send(d);
            }
            if !certs.is_empty() {
                metrics::metrics().revocations.inc_by(certs.len() as u64);
                tracing::info!(count = certs.len(), "renewed certificates superseded");
            }
            total += certs.len();
            if certs.len() < BATCH {
                return total;
            }
        }
    }

    /// Applies due supersessions at start, at each deadline (woken by new renewals) and at
    /// least once a minute. Runs until the process ends.
    pub async fn run_supersessions(self: Arc<Self>) {
        loop {
            self.apply_due_supersessions().await;
            let store = self.store.clone();
            let next = blocking(move || store.next_supersession().map_err(store_err)).await;
            let mut wait = std::time::Duration::from_secs(60);
            if let Ok(Some(next)) = next {
                let until = next.due - OffsetDateTime::now_utc() + Duration::milliseconds(100);
                wait = wait.min(until.try_into().unwrap_or_default());
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.supersede_wake.notified() => {}
            }
        }
    }
}
