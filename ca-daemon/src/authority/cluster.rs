//! Cross-node coordination: several daemons on one shared (PostgreSQL) store, issue #15.
//!
//! Every node serves CRLs, OCSP and the issuer set from memory; what another node changes
//! reaches it as a [`StoreChange`] (PostgreSQL `NOTIFY`, sent in the committing transaction):
//!
//! | change | what this node does |
//! |---|---|
//! | `Revoked` | drops its cached OCSP answers for those serials (all, for a bulk revocation) |
//! | `Crl` | reads the issuer's newest CRL from the store, serves it (HTTP, `GetCrl`, `WatchCrl` streams) and keeps it among its promises |
//! | `Issuers`, `KeyBlobs` | writes the issuers another node shared into its own `keys/` and reloads when anything changed ([`crate::cluster::adopt_keys`]) |
//! | `Resync` (after a reconnect: notifications sent meanwhile are lost) | all of the above for every issuer, and drops the whole OCSP cache |
//! | every 30 s (a slow poll backs the notifications up) | re-reads the issuers and every issuer's newest CRL; a newer CRL found this way drops the OCSP cache |
//!
//! A little after a revocation (or a reconnect), every node also checks that the stored CRL
//! lists every revocation and publishes one if not: the revoking node may have died between
//! acknowledging the revocation and publishing its CRL.
//!
//! The node that changes something does its own part directly (it revokes, publishes and
//! invalidates as a single daemon does); hearing its own notification back is harmless.
//! With sled (`subscribe` returns `None`) nothing here runs.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;

use super::publication::record_crl_metrics;

/// How often a node re-reads the store for changes no notification announced.
const POLL: std::time::Duration = std::time::Duration::from_secs(30);
use super::{Authority, blocking, store_err};
use crate::error::CaError;
use crate::store::{CrlRecord, StoreChange};

impl Authority {
    /// Whether several nodes share this store (PostgreSQL).
    pub(super) fn shared_store(&self) -> bool {
        self.store.kind() != "sled"
    }

    /// Follows the store's change notifications until the store closes them. Spawned by
    /// `serve`; returns at once for a store of one node.
    pub async fn run_cluster_sync(self: Arc<Self>) {
        let Some(mut rx) = self.store.subscribe() else {
            return;
        };
        tracing::info!("following the other nodes' changes");
        // A node that acknowledged a revocation and died inside the batch window never
        // publishes its CRL: a little after each revocation every node checks that the stored
        // CRL lists every revocation and publishes if not (the publication lock and the
        // re-check make one node do it; usually the revoking node already has).
        let catch_up = Arc::new(tokio::sync::Notify::new());
        {
            let this = self.clone();
            let catch_up = catch_up.clone();
            let grace = std::time::Duration::from_millis(
                u64::from(self.policy.crl.batch_window_ms) + 2_000,
            );
            tokio::spawn(async move {
                loop {
                    catch_up.notified().await;
                    tokio::time::sleep(grace).await;
                    this.republish_if_behind().await;
                }
            });
        }
        // A slow poll backs the notifications up (DESIGN §11): a newer CRL found this way
        // means notifications went missing, so the OCSP cache goes too.
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        loop {
            let received = tokio::select! {
                r = rx.recv() => r,
                _ = poll.tick() => {
                    self.poll_store().await;
                    continue;
                }
            };
            let change = match received {
                Ok(c) => c,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "fell behind the change notifications; re-reading everything"
                    );
                    StoreChange::Resync
                }
                Err(RecvError::Closed) => return,
            };
            if matches!(change, StoreChange::Revoked { .. } | StoreChange::Resync) {
                catch_up.notify_one();
            }
            self.apply_change(change).await;
        }
    }

    async fn apply_change(self: &Arc<Self>, change: StoreChange) {
        match change {
            StoreChange::Revoked { issuer_id, serials } => {
                if serials.is_empty() {
                    self.ocsp.invalidate_all();
                } else {
                    for serial in &serials {
                        self.ocsp.invalidate(&issuer_id, serial);
                    }
                }
            }
            StoreChange::Crl { issuer_id, number } => {
                self.adopt_stored_crl(&issuer_id, Some(number)).await;
            }
            StoreChange::Issuers | StoreChange::KeyBlobs => {
                self.adopt_cluster_issuers().await;
            }
            StoreChange::Resync => {
                tracing::info!("re-reading the shared store after a reconnect");
                self.ocsp.invalidate_all();
                self.adopt_cluster_issuers().await;
                let ids: Vec<String> = self.issuer_set().by_id.keys().cloned().collect();
                for id in ids {
                    self.adopt_stored_crl(&id, None).await;
                }
            }
            _ => {}
        }
    }

    /// The periodic check: issuers and CRLs other nodes made that no notification announced.
    async fn poll_store(self: &Arc<Self>) {
        self.adopt_cluster_issuers().await;
        let ids: Vec<String> = self.issuer_set().by_id.keys().cloned().collect();
        let mut missed = false;
        for id in ids {
            missed |= self.adopt_stored_crl(&id, None).await;
        }
        if missed {
            tracing::warn!("found a CRL no notification announced; dropping the OCSP cache");
            self.ocsp.invalidate_all();
        }
    }

    /// Serves the store's newest CRL of `issuer_id` if it is newer than the one this node
    /// serves (`number`: the one announced, to skip the read when it is not newer). Returns
    /// whether it was newer.
    async fn adopt_stored_crl(self: &Arc<Self>, issuer_id: &str, number: Option<u64>) -> bool {
        if !self.issuer_set().by_id.contains_key(issuer_id) {
            // An issuer this node has not adopted yet: its reload reads the CRL.
            return false;
        }
        let sender = self.crl_sender(issuer_id);
        let current = sender.borrow().as_ref().map(|c| c.number);
        if let (Some(n), Some(cur)) = (number, current)
            && cur >= n
        {
            return false;
        }
        let store = self.store.clone();
        let id = issuer_id.to_owned();
        let promises = self.promises();
        let read = blocking(move || -> Result<Option<CrlRecord>, CaError> {
            let Some(record) = store.latest_crl(&id).map_err(store_err)? else {
                return Ok(None);
            };
            // Kept among this node's promises too: a restart on a database that lost it is
            // refused, and the publication guard compares with it.
            if let Some(p) = &promises {
                match crate::promises::parse_crl(&record.der, &id, None) {
                    Ok(parsed) => {
                        if let Err(e) =
                            p.keep_crl(&record, parsed.entries.iter().map(|e| e.serial.as_str()))
                        {
                            tracing::warn!(issuer = %id, error = %e, "keeping another node's CRL failed");
                        }
                    }
                    Err(e) => tracing::warn!(issuer = %id, error = %e, "another node's CRL does not parse"),
                }
            }
            Ok(Some(record))
        })
        .await;
        match read {
            Ok(Some(record)) => {
                let record = Arc::new(record);
                let newer = sender.send_if_modified(|cur| {
                    let newer = cur.as_ref().is_none_or(|c| c.number < record.number);
                    if newer {
                        *cur = Some(record.clone());
                    }
                    newer
                });
                if newer {
                    record_crl_metrics(&record);
                    tracing::info!(issuer = %record.issuer_id, number = record.number, "serving the CRL another node published");
                }
                newer
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(issuer = %issuer_id, error = %e, "reading another node's CRL failed");
                false
            }
        }
    }

    /// Adopts the issuers other nodes shared (rotation) and reloads when anything changed.
    async fn adopt_cluster_issuers(self: &Arc<Self>) {
        let store = self.store.clone();
        let dir = self.data_dir.clone();
        let changed = blocking(move || {
            crate::cluster::adopt_keys(&dir, store.as_ref()).map_err(CaError::internal)
        })
        .await;
        match changed {
            Ok(true) => {
                if let Err(e) = self.reload().await {
                    tracing::error!(error = %e, "reloading the issuers another node made failed");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "adopting the other nodes' issuers failed"),
        }
    }

    /// Before a reload on a shared store: shares this node's issuer files (a rotation made
    /// here) and takes the ones other nodes shared, so every node ends up with the same set.
    pub(super) fn exchange_cluster_keys(&self) -> Result<(), CaError> {
        if !self.shared_store() {
            return Ok(());
        }
        crate::cluster::publish_keys(&self.data_dir, self.store.as_ref(), "daemon")
            .map_err(CaError::internal)?;
        crate::cluster::adopt_keys(&self.data_dir, self.store.as_ref())
            .map_err(CaError::internal)?;
        Ok(())
    }
}
