//! CRL publication: building, guarding, keeping and announcing CRLs, the publisher loop and
//! scheduled maintenance, the catch-up after a crash, watches, checkpoints, the root CRL.
//!
//! Cross-node coordination (store change notifications, re-reading issuers, invalidating the
//! CRL and OCSP caches) goes here, beside the publisher loop (see the module map in `mod.rs`).

use std::collections::HashSet;
use std::sync::Arc;

use time::{Duration, OffsetDateTime};
use tokio::sync::{mpsc, watch};

use crate::crl::{self, CrlParams, RevokedEntry};
use crate::error::CaError;
use crate::metrics;
use crate::pki;
use crate::promises::Promises;
use crate::store::{AuditEvent, CrlRecord, IssuerState, Store, StoreError};

use super::revocation::StoreLookup;
use super::{Authority, blocking, store_err};

/// Keeps `record` outside the store before it is saved and served (see [`crate::promises`]):
/// a CRL that cannot be kept (disk full) is not published (UNAVAILABLE), so nothing is served
/// that a lost store could later withdraw. The entries were read from committed state; it is
/// made durable first, so a crash never leaves a kept CRL ahead of the store.
pub(super) fn keep_crl(
    record: &CrlRecord,
    entries: &[RevokedEntry],
    store: &dyn Store,
    promises: Option<&Promises>,
) -> Result<(), CaError> {
    let Some(p) = promises else { return Ok(()) };
    store.durable_audit_head().map_err(store_err)?;
    p.keep_crl(record, entries.iter().map(|e| e.serial_hex.as_str()))
        .map_err(|e| match e {
            crate::promises::PromiseError::Io { path, source } => {
                store_err(StoreError::Io { path, source })
            }
            e => CaError::internal(e),
        })
}

/// Sets the per-issuer CRL gauges (number, thisUpdate) from the latest CRL.
pub(super) fn record_crl_metrics(record: &CrlRecord) {
    let label = metrics::IssuerLabel {
        issuer: record.issuer_id.clone(),
    };
    let m = metrics::metrics();
    m.crl_number
        .get_or_create(&label)
        .set(i64::try_from(record.number).unwrap_or(i64::MAX));
    m.crl_this_update
        .get_or_create(&label)
        .set(record.this_update.unix_timestamp());
}

impl Authority {
    /// Hands the authority what the CA has promised (once, at start): from then on every
    /// CRL is checked against the last published one, kept, and checkpointed.
    pub fn set_promises(&self, promises: Arc<Promises>) {
        let _ = self.promises.set(promises);
    }

    pub(super) fn promises(&self) -> Option<Arc<Promises>> {
        self.promises.get().cloned()
    }

    /// Whether the CRL publication guard is holding back the CRL of some issuer.
    pub fn crl_guard_blocked(&self) -> bool {
        self.crl_blocked
            .lock()
            .map(|s| !s.is_empty())
            .unwrap_or(true)
    }

    /// Signs and writes a checkpoint of the store now (`force`) or if the audit log moved.
    pub async fn checkpoint(&self, reason: &'static str, force: bool) {
        let Some(p) = self.promises() else { return };
        let store = self.store.clone();
        let r =
            tokio::task::spawn_blocking(move || p.checkpoint(store.as_ref(), reason, force)).await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, reason, "writing the audit checkpoint failed")
            }
            Err(e) => tracing::error!(error = %e, reason, "checkpoint task failed"),
        }
    }

    /// The publication guard: `Err` (and an alarm: error log, `ca_crl_guard_refusals_total`,
    /// revocation health NOT_SERVING) when the store's revocation index lacks an unexpired
    /// entry of the previous CRL (the kept one, else the store's own), so the CRL built from
    /// it would withdraw a published revocation. The last good CRL keeps being served.
    pub(super) fn crl_guard(
        &self,
        issuer_id: &str,
        entries: &[RevokedEntry],
        store: &dyn Store,
        promises: Option<&Promises>,
    ) -> Result<(), CaError> {
        let have: HashSet<String> = entries.iter().map(|e| e.serial_hex.clone()).collect();
        let label = metrics::IssuerLabel {
            issuer: issuer_id.to_string(),
        };
        let m = metrics::metrics();
        let missing = crate::promises::guard_missing(
            store,
            issuer_id,
            &have,
            promises,
            OffsetDateTime::now_utc(),
        )
        .map_err(|e| match e {
            crate::promises::PromiseError::Store(e) => store_err(e),
            e => CaError::internal(e),
        })?;
        let mut blocked = self
            .crl_blocked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if missing.is_empty() {
            if blocked.remove(issuer_id) {
                tracing::info!(issuer = %issuer_id, "CRL guard released: the store holds every published revocation again");
            }
            m.crl_guard_blocked.get_or_create(&label).set(0);
            return Ok(());
        }
        blocked.insert(issuer_id.to_string());
        m.crl_guard_refusals.get_or_create(&label).inc();
        m.crl_guard_blocked.get_or_create(&label).set(1);
        let shown: Vec<&str> = missing.iter().take(10).map(String::as_str).collect();
        tracing::error!(issuer = %issuer_id, missing = missing.len(), serials = %shown.join(","),
            "CRL publication refused: it would drop unexpired entries of the last published CRL; serving the last good CRL (run `ca-daemon store reconcile`)");
        Err(CaError::Unavailable(format!(
            "CRL of {issuer_id} not published: the store lacks {} unexpired revocation(s) of the last published CRL ({}); the last good CRL is still served",
            missing.len(),
            shown.join(", ")
        )))
    }

    pub(super) fn crl_sender(&self, issuer_id: &str) -> watch::Sender<Option<Arc<CrlRecord>>> {
        let mut map = match self.crl_watch.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.entry(issuer_id.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .clone()
    }

    /// The latest CRL of an issuer (empty id = active issuer); publishes one if none exists.
    pub async fn crl(self: &Arc<Self>, issuer_id: &str) -> Result<Arc<CrlRecord>, CaError> {
        let id = self.resolve_issuer(issuer_id)?;
        if let Some(c) = self.crl_sender(&id).borrow().clone() {
            return Ok(c);
        }
        let store = self.store.clone();
        let id2 = id.clone();
        if let Some(c) = blocking(move || store.latest_crl(&id2).map_err(store_err)).await? {
            let c = Arc::new(c);
            self.crl_sender(&id).send_replace(Some(c.clone()));
            return Ok(c);
        }
        self.publish_crl(&id, "daemon").await
    }

    /// Follows the CRL of an issuer: the current one first, then each new one.
    pub async fn watch_crl(
        self: &Arc<Self>,
        issuer_id: &str,
    ) -> Result<watch::Receiver<Option<Arc<CrlRecord>>>, CaError> {
        let id = self.resolve_issuer(issuer_id)?;
        self.crl(&id).await?;
        Ok(self.crl_sender(&id).subscribe())
    }

    /// Builds, signs, stores and announces a new CRL for an issuer. The number is reserved
    /// durably first, so a crash can skip a number but never reuse one.
    pub async fn publish_crl(
        self: &Arc<Self>,
        issuer_id: &str,
        actor: &str,
    ) -> Result<Arc<CrlRecord>, CaError> {
        let id = self.resolve_issuer(issuer_id)?;
        let set = self.issuer_set();
        let issuer = set
            .by_id
            .get(&id)
            .cloned()
            .ok_or_else(|| CaError::Unavailable(format!("issuer {id} has no keys")))?;
        let gate = self.crl_publishing.clone();
        let store = self.store.clone();
        let next_update_hours = i64::from(self.policy.crl.next_update_hours);
        let idp = pki::crl_url(&self.url_base, &id);
        let actor = actor.to_string();
        let started = std::time::Instant::now();
        let promises = self.promises();
        let this = self.clone();
        let record = blocking(move || {
            // A poisoned gate only means another publication panicked; the store is consistent.
            let _one_at_a_time = gate
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Several nodes: only one builds this issuer's CRL at a time, so numbers grow in
            // commit order (a PostgreSQL advisory lock; a no-op lock for sled).
            let _one_node_at_a_time = store.publication_lock(&issuer.id).map_err(store_err)?;
            // The number is at least the current Unix time (as Boulder does): it only ever
            // grows, also after a restore from an older backup, which would otherwise reissue
            // numbers already published with different content. The store's counter keeps it
            // strictly increasing when several CRLs fall into one second.
            let reserved = store.reserve_crl_number(&issuer.id).map_err(store_err)?;
            let clock = u64::try_from(OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
            let number = reserved.max(clock);
            let entries: Vec<RevokedEntry> = store
                .revocation_entries(&issuer.id)
                .map_err(store_err)?
                .into_iter()
                .map(|e| RevokedEntry {
                    serial_hex: e.serial,
                    revoked_at: e.revocation.revoked_at,
                    reason: e.revocation.reason,
                    invalidity_date: e.revocation.invalidity_date,
                })
                .collect();
            // Never withdraw a published revocation (see `crl_guard`).
            this.crl_guard(&issuer.id, &entries, store.as_ref(), promises.as_deref())?;
            let now = OffsetDateTime::now_utc();
            let this_update = now.replace_nanosecond(0).unwrap_or(now);
            let next_update = this_update + Duration::hours(next_update_hours);
            let der = crl::build_crl(
                &issuer.cert_der,
                &issuer.key,
                &CrlParams {
                    number,
                    this_update,
                    next_update,
                    idp_uri: &idp,
                    entries: &entries,
                },
            )
            .map_err(CaError::internal)?;
            let record = CrlRecord {
                version: 1,
                issuer_id: issuer.id.clone(),
                number,
                this_update,
                next_update,
                der,
            };
            keep_crl(&record, &entries, store.as_ref(), promises.as_deref())?;
            store
                .save_crl(
                    &record,
                    AuditEvent {
                        actor,
                        action: "crl.published".into(),
                        target: format!("issuer:{}", issuer.id),
                        detail: format!("number={number} entries={}", entries.len()),
                    },
                )
                .map_err(store_err)?;
            if let Some(p) = &promises
                && let Err(e) = p.checkpoint(store.as_ref(), "crl.published", true)
            {
                tracing::error!(error = %e, "writing the audit checkpoint failed");
            }
            Ok(record)
        })
        .await?;
        tracing::info!(issuer = %record.issuer_id, number = record.number,
            elapsed_ms = started.elapsed().as_millis() as u64, "CRL published");
        record_crl_metrics(&record);
        let record = Arc::new(record);
        // Publications finish in number order, but their announcements may not: never let
        // an older CRL replace a newer one for watchers.
        self.crl_sender(&id).send_if_modified(|current| {
            let newer = current.as_ref().is_none_or(|c| c.number < record.number);
            if newer {
                *current = Some(record.clone());
            }
            newer
        });
        Ok(record)
    }

    /// Publishes a CRL for every issuer that is not retired (`PublishCrl` without an issuer
    /// id) and returns the active issuer's.
    pub async fn publish_all_crls(
        self: &Arc<Self>,
        actor: &str,
    ) -> Result<Arc<CrlRecord>, CaError> {
        let mut active = None;
        for v in self.list_issuers().await? {
            if v.record.state == IssuerState::Retired {
                continue;
            }
            let crl = self.publish_crl(&v.record.id, actor).await?;
            if v.record.state == IssuerState::Active {
                active = Some(crl);
            }
        }
        match active {
            Some(c) => Ok(c),
            None => self.publish_crl("", actor).await,
        }
    }

    /// Drains revocation notifications, waits the policy's batch window so revocations that
    /// arrive together share one CRL, and republishes. Also republishes on schedule before
    /// `nextUpdate` and refreshes OCSP responses due for re-signing. Runs until the sender side
    /// (the authority) is dropped.
    pub async fn run_crl_publisher(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<String>) {
        let window = std::time::Duration::from_millis(u64::from(self.policy.crl.batch_window_ms));
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
        self.republish_if_behind().await;
        loop {
            tokio::select! {
                first = rx.recv() => {
                    let Some(first) = first else { return };
                    let mut dirty = HashSet::from([first]);
                    tokio::time::sleep(window).await;
                    while let Ok(more) = rx.try_recv() {
                        dirty.insert(more);
                    }
                    for id in dirty {
                        if let Err(e) = self.publish_crl(&id, "daemon").await {
                            tracing::error!(issuer = %id, error = %e, "CRL publication failed");
                        }
                    }
                }
                _ = tick.tick() => {
                    self.scheduled_maintenance().await;
                }
            }
        }
    }

    /// Republishes the CRL of every issuer whose stored CRL lists fewer revocations than the
    /// store holds. A revocation is acknowledged once durable and reaches the CRL after the
    /// batch window; a crash inside that window leaves the stored CRL behind the store, and
    /// nothing else would republish it before the schedule does (hours later). Runs once when
    /// the publisher starts, off the startup path. Revocations are never undone, so comparing
    /// counts finds every such gap.
    pub(super) async fn republish_if_behind(self: &Arc<Self>) {
        let ids: Vec<String> = self.issuer_set().by_id.keys().cloned().collect();
        for id in ids {
            let store = self.store.clone();
            let id2 = id.clone();
            let gap = blocking(move || {
                let Some(crl) = store.latest_crl(&id2).map_err(store_err)? else {
                    // No CRL yet: scheduled maintenance publishes the first one.
                    return Ok(None);
                };
                let in_store = store.revocation_entries(&id2).map_err(store_err)?.len();
                let on_crl = x509_parser::parse_x509_crl(&crl.der)
                    .map(|(_, c)| c.iter_revoked_certificates().count())
                    // A stored CRL that does not parse is replaced as well.
                    .unwrap_or(usize::MAX);
                Ok((in_store != on_crl).then_some((crl.number, in_store, on_crl)))
            })
            .await;
            match gap {
                Ok(None) => {}
                Ok(Some((number, in_store, on_crl))) => {
                    tracing::warn!(issuer = %id, crl_number = number, revoked = in_store,
                        on_crl, "stored CRL is behind the revocations (crash before republication); republishing");
                    if let Err(e) = self.publish_crl(&id, "daemon").await {
                        tracing::error!(issuer = %id, error = %e, "CRL republication failed");
                    }
                }
                Err(e) => {
                    tracing::error!(issuer = %id, error = %e, "comparing the CRL with the store failed")
                }
            }
        }
    }

    /// Republishes CRLs that are missing or close to `nextUpdate`; re-signs OCSP responses due;
    /// renews OCSP responder certificates; forgets idle rate-limit state.
    pub async fn scheduled_maintenance(self: &Arc<Self>) {
        self.limits.retain_recent();
        self.checkpoint("schedule", false).await;
        match self.expiring_within_days(30).await {
            Ok(n) => {
                metrics::metrics()
                    .certificates_expiring_30d
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            Err(e) => tracing::error!(error = %e, "counting expiring certificates failed"),
        }
        self.renew_responders().await;
        // Retiring issuers whose last certificate expired become retired.
        let this = self.clone();
        if let Err(e) = blocking(move || this.sync_issuer_records()).await {
            tracing::error!(error = %e, "issuer state update failed");
        }
        let before = Duration::hours(i64::from(self.policy.crl.republish_before_hours));
        let ids: Vec<String> = self.issuer_set().by_id.keys().cloned().collect();
        for id in ids {
            let store = self.store.clone();
            let id2 = id.clone();
            let latest = blocking(move || store.latest_crl(&id2).map_err(store_err)).await;
            let due = match &latest {
                Ok(Some(c)) => c.next_update - OffsetDateTime::now_utc() < before,
                Ok(None) => true,
                Err(_) => false,
            };
            if due {
                if let Err(e) = self.publish_crl(&id, "daemon").await {
                    tracing::error!(issuer = %id, error = %e, "scheduled CRL publication failed");
                }
            } else if let Ok(Some(c)) = latest {
                // After a restart the gauges start from the stored CRL, not from nothing.
                record_crl_metrics(&c);
                let sender = self.crl_sender(&id);
                if sender.borrow().is_none() {
                    sender.send_replace(Some(Arc::new(c)));
                }
            }
        }
        let this = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let lookup = StoreLookup(this.store.clone(), this.promises());
            let n = this.ocsp.refresh_due(OffsetDateTime::now_utc(), &lookup);
            if n > 0 {
                tracing::info!(count = n, "OCSP responses re-signed before nextUpdate");
            }
        })
        .await;
    }

    /// The root's CRL over its issuers (signed when the root key was last unsealed: at `init`
    /// and at each rotation), if one exists.
    pub fn root_crl(&self) -> Option<Vec<u8>> {
        std::fs::read(pki::Layout::new(&self.data_dir).root_crl()).ok()
    }

    /// The root CRL's number, thisUpdate and nextUpdate, if it exists and parses (read on the
    /// blocking pool).
    pub async fn root_crl_info(self: &Arc<Self>) -> Option<crate::root_crl::RootCrlInfo> {
        let this = self.clone();
        blocking(move || {
            Ok(this
                .root_crl()
                .as_deref()
                .and_then(crate::root_crl::inspect))
        })
        .await
        .ok()
        .flatten()
    }

    /// The operator warning while the root CRL needs re-signing, is missing or does not parse
    /// ([`crate::root_crl::current_warning`]), read on the blocking pool.
    pub async fn root_crl_warning(self: &Arc<Self>) -> Option<String> {
        let this = self.clone();
        blocking(move || Ok(crate::root_crl::current_warning(&this)))
            .await
            .ok()
            .flatten()
    }

    /// The latest stored CRL of an issuer.
    pub async fn latest_crl(&self, issuer_id: &str) -> Result<Option<CrlRecord>, CaError> {
        let store = self.store.clone();
        let id = issuer_id.to_string();
        blocking(move || store.latest_crl(&id).map_err(store_err)).await
    }
}
