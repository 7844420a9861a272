//! What the edge (TLS gateways: the example rustls gateway, nginx, HAProxy) needs to follow
//! every issuer by itself: the set of live issuers, one stream of the CRLs of all of them
//! (issuers created later by a rotation included, and the root's CRL over the issuer
//! certificates), and the CRL bundle file-based gateways load.
//!
//! An issuer is *live* while it is active or retiring; it is retired, and leaves the set, once
//! the last certificate it signed has expired (nothing it signed can be presented any more).
//! [`Authority::sync_issuer_records`] decides the states (at start, after each reload and on
//! the maintenance tick) and announces the set here.

use std::collections::HashSet;
use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::StreamMap;
use tokio_stream::wrappers::WatchStream;

use super::{Authority, blocking, store_err};
use crate::error::CaError;
use crate::pki::{self, LoadedIssuer};
use crate::store::{CrlRecord, IssuerState};

/// Issuer id under which the root's CRL travels in the all-issuers stream and the bundle.
pub const ROOT_CRL_ID: &str = "root";

/// How often an all-issuers stream re-reads the root CRL file (it changes when the root key is
/// unsealed: at rotation, which also changes the issuer set, or `ca-daemon crl root`).
const ROOT_CRL_RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// Queue of one all-issuers stream; a slow client blocks its own task, nobody else.
const STREAM_QUEUE: usize = 16;

/// A live issuer as the edge sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveIssuer {
    /// Issuer id.
    pub id: String,
    /// Active (signs new certificates) or retiring.
    pub active: bool,
    /// The issuer certificate, DER.
    pub cert_der: Vec<u8>,
    /// notAfter of the issuer certificate.
    pub not_after: OffsetDateTime,
}

/// One message of the all-issuers stream: a CRL and the live issuer ids when it was sent.
#[derive(Debug, Clone)]
pub struct LiveCrl {
    /// The CRL (issuer id [`ROOT_CRL_ID`] for the root's CRL).
    pub crl: Arc<CrlRecord>,
    /// Ids of the live issuers, the active one first.
    pub live_issuer_ids: Arc<[String]>,
}

/// The CRL bundle served at `/crl/bundle.pem` and written by `ca-daemon crl sync`.
#[derive(Debug, Clone)]
pub struct CrlBundle {
    /// PEM `X509 CRL` blocks: each live issuer's CRL (active first), then the root's.
    pub pem: String,
    /// The CRLs in it.
    pub crls: Vec<Arc<CrlRecord>>,
}

impl CrlBundle {
    /// Assembles a bundle from CRLs, in the order given.
    pub fn from_crls(crls: Vec<Arc<CrlRecord>>) -> Self {
        let pem = crls
            .iter()
            .map(|c| pki::pem_encode("X509 CRL", &c.der))
            .collect();
        Self { pem, crls }
    }

    /// A strong validator of the bundle's content: the issuer ids and CRL numbers in it.
    pub fn etag(&self) -> String {
        let parts: Vec<String> = self
            .crls
            .iter()
            .map(|c| format!("{}-{}", c.issuer_id, c.number))
            .collect();
        format!("\"{}\"", parts.join("."))
    }

    /// The newest `thisUpdate` in the bundle.
    pub fn last_modified(&self) -> Option<OffsetDateTime> {
        self.crls.iter().map(|c| c.this_update).max()
    }

    /// The earliest `nextUpdate` in the bundle.
    pub fn expires(&self) -> Option<OffsetDateTime> {
        self.crls.iter().map(|c| c.next_update).min()
    }
}

/// State of a non-active issuer with `unexpired` certificates not yet expired.
pub(super) fn retiring_state(unexpired: u64) -> IssuerState {
    if unexpired == 0 {
        IssuerState::Retired
    } else {
        IssuerState::Retiring
    }
}

/// An issuer and the state `sync_issuer_records` gave it.
struct Candidate {
    id: String,
    cert_der: Vec<u8>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    state: IssuerState,
}

/// The live issuers among `states`, active first, then the newest retiring ones.
fn live_set(states: Vec<(Arc<LoadedIssuer>, IssuerState)>) -> Vec<LiveIssuer> {
    order_live(
        states
            .into_iter()
            .map(|(i, state)| Candidate {
                id: i.id.clone(),
                cert_der: i.cert_der.clone(),
                not_before: i.not_before,
                not_after: i.not_after,
                state,
            })
            .collect(),
    )
}

fn order_live(mut c: Vec<Candidate>) -> Vec<LiveIssuer> {
    c.retain(|c| c.state != IssuerState::Retired);
    c.sort_by(|a, b| {
        (b.state == IssuerState::Active)
            .cmp(&(a.state == IssuerState::Active))
            .then(b.not_before.cmp(&a.not_before))
            .then(a.id.cmp(&b.id))
    });
    c.into_iter()
        .map(|c| LiveIssuer {
            active: c.state == IssuerState::Active,
            id: c.id,
            cert_der: c.cert_der,
            not_after: c.not_after,
        })
        .collect()
}

/// The root CRL (DER) as a record: number and times from the CRL itself.
fn root_crl_record(der: Vec<u8>) -> Result<CrlRecord, String> {
    let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|e| e.to_string())?;
    let digits = crl
        .crl_number()
        .ok_or("root CRL without a CRL number")?
        .to_u64_digits();
    let number = match digits.as_slice() {
        [] => 0,
        [n] => *n,
        _ => return Err("root CRL number above 2^64".into()),
    };
    let this_update = crl.last_update().to_datetime();
    let next_update = crl
        .next_update()
        .map(|t| t.to_datetime())
        .ok_or("root CRL without nextUpdate")?;
    Ok(CrlRecord {
        version: 1,
        issuer_id: ROOT_CRL_ID.into(),
        number,
        this_update,
        next_update,
        der,
    })
}

impl Authority {
    /// Publishes the live set computed by `sync_issuer_records` (only when it changed).
    pub(super) fn announce_live(&self, states: Vec<(Arc<LoadedIssuer>, IssuerState)>) {
        let live = live_set(states);
        self.live.send_if_modified(|current| {
            let changed = current.as_ref() != live.as_slice();
            if changed {
                *current = Arc::from(live);
            }
            changed
        });
    }

    /// The live issuers (active first).
    pub fn live_issuers(&self) -> Arc<[LiveIssuer]> {
        self.live.borrow().clone()
    }

    /// The root's CRL as a record, if one is in place and parses.
    pub fn root_crl_record(&self) -> Option<Arc<CrlRecord>> {
        let der = self.root_crl()?;
        match root_crl_record(der) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                tracing::error!(error = %e, "root CRL in place does not parse; not served to the edge");
                None
            }
        }
    }

    /// The issuer records of [`Authority::ca_chain`] (root excluded), in its order: which
    /// certificate is which issuer, and its state.
    pub async fn ca_chain_issuers(&self) -> Result<Vec<crate::store::IssuerRecord>, CaError> {
        let chain = self.ca_chain().await?;
        let store = self.store.clone();
        let records = blocking(move || store.issuers().map_err(store_err)).await?;
        Ok(chain
            .iter()
            .skip(1)
            .filter_map(|der| records.iter().find(|r| &r.cert_der == der).cloned())
            .collect())
    }

    /// Every live issuer's current CRL (active first), then the root's.
    pub async fn crl_bundle(self: &Arc<Self>) -> Result<CrlBundle, CaError> {
        let mut crls = Vec::new();
        for issuer in self.live_issuers().iter() {
            crls.push(self.crl(&issuer.id).await?);
        }
        if let Some(root) = self.root_crl_record() {
            crls.push(root);
        }
        Ok(CrlBundle::from_crls(crls))
    }

    /// Follows the CRLs of every live issuer: the current CRL of each, then each new one, the
    /// first CRL of an issuer that becomes live (after a rotation), and the root's CRL when it
    /// changes. When an issuer leaves the set (retired) the active issuer's current CRL is sent
    /// again, so the client learns the new set. The stream ends when the receiver is dropped.
    pub async fn watch_all_crls(
        self: &Arc<Self>,
    ) -> Result<mpsc::Receiver<Result<LiveCrl, CaError>>, CaError> {
        // Make sure every live issuer has a CRL before the stream starts.
        for issuer in self.live_issuers().iter() {
            self.crl(&issuer.id).await?;
        }
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let this = self.clone();
        tokio::spawn(async move { this.run_all_crls(tx).await });
        Ok(rx)
    }

    async fn run_all_crls(self: Arc<Self>, tx: mpsc::Sender<Result<LiveCrl, CaError>>) {
        let mut live_rx = self.live.subscribe();
        let mut streams: StreamMap<String, WatchStream<Option<Arc<CrlRecord>>>> = StreamMap::new();
        let mut root_sent: Option<u64> = None;
        let mut recheck = tokio::time::interval(ROOT_CRL_RECHECK);
        let mut ids: Arc<[String]> = Arc::from(Vec::new());
        let mut reconcile = true;
        loop {
            if reconcile {
                reconcile = false;
                let live = live_rx.borrow_and_update().clone();
                let new_ids: Arc<[String]> = live.iter().map(|i| i.id.clone()).collect();
                let keep: HashSet<&String> = new_ids.iter().collect();
                let gone: Vec<String> = streams
                    .keys()
                    .filter(|k| !keep.contains(k))
                    .cloned()
                    .collect();
                for g in &gone {
                    streams.remove(g);
                    tracing::info!(issuer = %g, "issuer left the live set; dropped from CRL watchers");
                }
                let mut added = false;
                for id in new_ids.iter() {
                    if streams.contains_key(id) {
                        continue;
                    }
                    // A new issuer: make sure it has a CRL, then follow it (the watch yields
                    // the current CRL first).
                    if let Err(e) = self.crl(id).await {
                        tracing::error!(issuer = %id, error = %e, "no CRL for a live issuer");
                        if tx.send(Err(e)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    streams.insert(
                        id.clone(),
                        WatchStream::new(self.crl_sender(id).subscribe()),
                    );
                    added = true;
                }
                ids = new_ids;
                if !gone.is_empty() && !added {
                    // Nothing new to send would carry the new set: resend the active CRL.
                    let current = ids
                        .first()
                        .and_then(|active| self.crl_sender(active).borrow().clone());
                    if let Some(crl) = current {
                        let msg = LiveCrl {
                            crl,
                            live_issuer_ids: ids.clone(),
                        };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                }
                if !self.send_root_if_new(&tx, &ids, &mut root_sent).await {
                    return;
                }
            }
            tokio::select! {
                () = tx.closed() => return,
                changed = live_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    reconcile = true;
                }
                _ = recheck.tick() => {
                    if !self.send_root_if_new(&tx, &ids, &mut root_sent).await {
                        return;
                    }
                }
                Some((_, crl)) = streams.next() => {
                    if let Some(crl) = crl {
                        let msg = LiveCrl { crl, live_issuer_ids: ids.clone() };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Sends the root CRL if its number is above the last one sent; false once the receiver is
    /// gone.
    async fn send_root_if_new(
        &self,
        tx: &mpsc::Sender<Result<LiveCrl, CaError>>,
        ids: &Arc<[String]>,
        sent: &mut Option<u64>,
    ) -> bool {
        let Some(root) = self.root_crl_record() else {
            return true;
        };
        if sent.is_some_and(|n| n >= root.number) {
            return true;
        }
        *sent = Some(root.number);
        tx.send(Ok(LiveCrl {
            crl: root,
            live_issuer_ids: ids.clone(),
        }))
        .await
        .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issuer_retires_when_its_last_certificate_has_expired() {
        assert_eq!(retiring_state(0), IssuerState::Retired);
        assert_eq!(retiring_state(1), IssuerState::Retiring);
    }

    #[test]
    fn the_live_set_is_active_first_then_newest_and_leaves_out_retired_issuers() {
        let at =
            |s: i64| OffsetDateTime::from_unix_timestamp(s).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let c = |id: &str, born: i64, state| Candidate {
            id: id.into(),
            cert_der: vec![1],
            not_before: at(born),
            not_after: at(born + 1000),
            state,
        };
        let live = order_live(vec![
            c("iss-old", 10, IssuerState::Retiring),
            c("iss-gone", 5, IssuerState::Retired),
            c("iss-new", 30, IssuerState::Active),
            c("iss-mid", 20, IssuerState::Retiring),
        ]);
        let ids: Vec<(&str, bool)> = live.iter().map(|l| (l.id.as_str(), l.active)).collect();
        assert_eq!(
            ids,
            vec![("iss-new", true), ("iss-mid", false), ("iss-old", false)]
        );
    }

    #[test]
    fn bundle_validators_follow_the_crls() {
        let at =
            |s: i64| OffsetDateTime::from_unix_timestamp(s).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let rec = |id: &str, n: u64, this: i64, next: i64| {
            Arc::new(CrlRecord {
                version: 1,
                issuer_id: id.into(),
                number: n,
                this_update: at(this),
                next_update: at(next),
                der: vec![0x30, 0x00],
            })
        };
        let b = CrlBundle::from_crls(vec![rec("iss-b", 7, 100, 900), rec("root", 2, 50, 5000)]);
        assert_eq!(b.etag(), "\"iss-b-7.root-2\"");
        assert_eq!(b.last_modified(), Some(at(100)));
        assert_eq!(b.expires(), Some(at(900)));
        assert_eq!(b.pem.matches("-----BEGIN X509 CRL-----").count(), 2);
        let newer = CrlBundle::from_crls(vec![rec("iss-b", 8, 200, 900), rec("root", 2, 50, 5000)]);
        assert_ne!(b.etag(), newer.etag());
    }
}
