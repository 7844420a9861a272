//! Issuers: the loaded issuer set and the records kept of it, reloads (after `issuer rotate`),
//! OCSP responder certificate renewal, the CA chain and issuer certificates.

use std::collections::HashMap;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::error::CaError;
use crate::issue::CertUrls;
use crate::ocsp::ResponderIssuer;
use crate::pki::{self, LoadedIssuer};
use crate::store::{AuditEvent, IssuerRecord, IssuerState};

use super::{Authority, IssuerView, blocking, store_err};

pub(super) struct IssuerSet {
    pub(super) active: String,
    pub(super) by_id: HashMap<String, Arc<LoadedIssuer>>,
}

impl IssuerSet {
    /// The loaded issuers, checking that the active one is among them.
    pub(super) fn from_loaded(active: String, issuers: Vec<LoadedIssuer>) -> Result<Self, CaError> {
        let by_id: HashMap<_, _> = issuers
            .into_iter()
            .map(|i| (i.id.clone(), Arc::new(i)))
            .collect();
        if !by_id.contains_key(&active) {
            return Err(CaError::Unavailable(format!(
                "active issuer {active} has no keys"
            )));
        }
        Ok(Self { active, by_id })
    }
}

pub(super) fn responder_issuers(set: &IssuerSet) -> Result<Vec<ResponderIssuer>, CaError> {
    set.by_id
        .values()
        .map(|i| {
            Ok(ResponderIssuer {
                issuer_id: i.id.clone(),
                issuer_cert_der: i.cert_der.clone(),
                responder_cert_der: i.responder_cert_der.clone(),
                responder_key: crate::keys::key_pair_from_pkcs8(i.responder_key.serialized_der())
                    .map_err(CaError::internal)?,
            })
        })
        .collect()
}

/// The cluster-wide lock held while a node records issuer states (not an issuer id: those
/// start with `iss-`).
const ISSUER_STATES_LOCK: &str = "issuer-states";

impl Authority {
    pub(super) fn issuer_set(&self) -> Arc<IssuerSet> {
        match self.issuers.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The active issuer's id.
    pub fn active_issuer_id(&self) -> String {
        self.issuer_set().active.clone()
    }

    /// Writes issuer records for loaded issuers: the active one `Active`, others `Retiring`
    /// (or `Retired` once their last certificate has expired), and announces the live set.
    pub(super) fn sync_issuer_records(&self) -> Result<(), CaError> {
        let set = self.issuer_set();
        let now = OffsetDateTime::now_utc();
        // Several nodes: reading the records and writing this node's states is one step
        // across the cluster. Without the lock a node that had not adopted a rotation yet
        // could read the records between the rotating node's two writes (old issuer
        // `Retiring`, new one `Active`) and write its stale `Active` back: two active issuers.
        let _states = if self.shared_store() {
            Some(
                self.store
                    .publication_lock(ISSUER_STATES_LOCK)
                    .map_err(store_err)?,
            )
        } else {
            None
        };
        let existing: HashMap<String, IssuerRecord> = self
            .store
            .issuers()
            .map_err(store_err)?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        // Several nodes: another node may have rotated to a newer issuer that this node has
        // not adopted yet; then this node's older view must not overwrite the store's
        // (authority/cluster.rs adopts the new issuer and reloads, and its sync writes then).
        let behind = self.shared_store()
            && set.by_id.get(&set.active).is_some_and(|mine| {
                existing.values().any(|r| {
                    r.state == IssuerState::Active
                        && r.id != mine.id
                        && (r.not_before, &r.id) > (mine.not_before, &mine.id)
                })
            });
        if behind {
            tracing::info!(active_issuer = %set.active,
                "another node made a newer issuer active; adopting it before recording states");
        }
        let mut states = Vec::with_capacity(set.by_id.len());
        for issuer in set.by_id.values() {
            let state = if issuer.id == set.active {
                IssuerState::Active
            } else {
                let (_, _, live) = self
                    .store
                    .certificate_counts(&issuer.id, now)
                    .map_err(store_err)?;
                super::edge::retiring_state(live)
            };
            states.push((issuer.clone(), state));
            if behind || existing.get(&issuer.id).map(|r| r.state) == Some(state) {
                continue;
            }
            // Nor does it record a state for an issuer newer than its own active one (one
            // another node just rotated to): that node records it as active.
            if self.shared_store()
                && set.by_id.get(&set.active).is_some_and(|mine| {
                    (issuer.not_before, &issuer.id) > (mine.not_before, &mine.id)
                })
            {
                continue;
            }
            let record = IssuerRecord {
                version: 1,
                id: issuer.id.clone(),
                state,
                cert_der: issuer.cert_der.clone(),
                not_before: issuer.not_before,
                not_after: issuer.not_after,
                created_at: existing.get(&issuer.id).map_or(now, |r| r.created_at),
            };
            self.store
                .put_issuer(
                    &record,
                    AuditEvent {
                        actor: "daemon".into(),
                        action: "issuer.state".into(),
                        target: issuer.id.clone(),
                        detail: format!("{state:?}"),
                    },
                )
                .map_err(store_err)?;
        }
        self.announce_live(states);
        Ok(())
    }

    pub(super) fn urls_for(&self, issuer_id: &str) -> CertUrls {
        CertUrls {
            crl: pki::crl_url(&self.url_base, issuer_id),
            ocsp: pki::ocsp_url(&self.url_base),
            ca_issuers: pki::ca_issuers_url(&self.url_base, issuer_id),
        }
    }

    /// Root first, then every issuer that is not retired.
    pub async fn ca_chain(&self) -> Result<Vec<Vec<u8>>, CaError> {
        let store = self.store.clone();
        let records = blocking(move || store.issuers().map_err(store_err)).await?;
        let mut out = vec![self.root_cert_der.clone()];
        let set = self.issuer_set();
        // Active first, then retiring ones.
        if let Some(a) = set.by_id.get(&set.active) {
            out.push(a.cert_der.clone());
        }
        for r in records {
            if r.id != set.active && r.state != IssuerState::Retired {
                out.push(r.cert_der);
            }
        }
        Ok(out)
    }

    /// The DER of one issuer certificate (for `/ca/<id>.crt`), or the root (`root`).
    pub fn issuer_cert(&self, id: &str) -> Option<Vec<u8>> {
        if id == "root" {
            return Some(self.root_cert_der.clone());
        }
        self.issuer_set().by_id.get(id).map(|i| i.cert_der.clone())
    }

    pub(super) fn resolve_issuer(&self, issuer_id: &str) -> Result<String, CaError> {
        let set = self.issuer_set();
        if issuer_id.is_empty() || issuer_id == "active" {
            return Ok(set.active.clone());
        }
        if set.by_id.contains_key(issuer_id) {
            Ok(issuer_id.to_string())
        } else {
            Err(CaError::NotFound {
                what: "issuer",
                id: issuer_id.to_string(),
            })
        }
    }

    /// Renews OCSP responder certificates that are within the policy's renewal window, then
    /// reloads the keys so the responder signs with the new certificate.
    pub(super) async fn renew_responders(self: &Arc<Self>) {
        let now = OffsetDateTime::now_utc();
        let renew_before = self.policy.ca.ocsp_responder_renew_before();
        let days = self.policy.ca.ocsp_responder_validity_days;
        let due: Vec<String> = self
            .issuer_set()
            .by_id
            .values()
            .filter(|i| i.not_after > now)
            .filter(|i| {
                i.responder_not_after()
                    .map(|t| t - now < renew_before)
                    .unwrap_or(true)
            })
            .map(|i| i.id.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        for id in &due {
            let dir = self.data_dir.clone();
            let pass = self.passphrase.clone();
            let id2 = id.clone();
            let r = blocking(move || {
                pki::renew_responder(&dir, &id2, &pass, days).map_err(CaError::internal)
            })
            .await;
            match r {
                Ok(_) => tracing::info!(issuer = %id, days, "OCSP responder certificate renewed"),
                Err(e) => {
                    tracing::error!(issuer = %id, error = %e, "OCSP responder renewal failed")
                }
            }
        }
        let pass = self.passphrase.clone();
        if let Err(e) = self.reload_issuers(&pass).await {
            tracing::error!(error = %e, "reload after responder renewal failed");
        }
    }

    /// Issuers with counts and CRL numbers.
    pub async fn list_issuers(&self) -> Result<Vec<IssuerView>, CaError> {
        let store = self.store.clone();
        blocking(move || {
            let now = OffsetDateTime::now_utc();
            let mut out = Vec::new();
            for record in store.issuers().map_err(store_err)? {
                let (total, _, _) = store
                    .certificate_counts(&record.id, now)
                    .map_err(store_err)?;
                let crl_number = store
                    .latest_crl(&record.id)
                    .map_err(store_err)?
                    .map_or(0, |c| c.number);
                out.push(IssuerView {
                    record,
                    certificate_count: total,
                    crl_number,
                });
            }
            Ok(out)
        })
        .await
    }

    /// [`reload_issuers`](Self::reload_issuers) with the daemon's own passphrase (SIGHUP).
    pub async fn reload(self: &Arc<Self>) -> Result<String, CaError> {
        let pass = self.passphrase.clone();
        self.reload_issuers(&pass).await
    }

    /// Re-reads the keys directory (after `issuer rotate`), switches the active issuer, and
    /// marks the others retiring. In-flight redemptions finish with the issuer they started
    /// with.
    pub async fn reload_issuers(
        self: &Arc<Self>,
        passphrase: &Arc<crate::keys::Passphrase>,
    ) -> Result<String, CaError> {
        let dir = self.data_dir.clone();
        let pass = Arc::clone(passphrase);
        let this = self.clone();
        let pki = blocking(move || {
            // Several nodes: share a rotation made here, take one made elsewhere.
            this.exchange_cluster_keys()?;
            pki::load(&dir, &pass).map_err(CaError::internal)
        })
        .await?;
        let set = IssuerSet::from_loaded(pki.active_issuer_id, pki.issuers)?;
        self.ocsp
            .set_issuers(responder_issuers(&set)?)
            .map_err(CaError::internal)?;
        let active = set.active.clone();
        match self.issuers.write() {
            Ok(mut g) => *g = Arc::new(set),
            Err(p) => *p.into_inner() = Arc::new(set),
        }
        let this = self.clone();
        blocking(move || this.sync_issuer_records()).await?;
        tracing::info!(active_issuer = %active, "issuers reloaded");
        let _ = self.crl_dirty.send(active.clone());
        Ok(active)
    }
}
