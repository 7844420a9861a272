//! The certificate authority as the gRPC and HTTP edges see it: domain operations over the
//! store, the loaded keys, the policy, the CRL publisher and the OCSP responder.
//!
//! Handlers translate proto ⇄ domain and call these methods; nothing here knows about tonic
//! or HTTP. CPU-heavy work (key generation, signing, PKCS#12 KDFs) runs on the blocking pool,
//! bounded by a semaphore sized to the core count, so OCSP, CRL and health answers stay fast
//! while redemptions saturate the CPU (DESIGN §9). Store calls run on the blocking pool too:
//! every acknowledged write is flushed before the method returns.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use pki_policy::Policy;
use pki_policy::domain::{Enrollee, RevocationReason, TargetOs};
use time::{Duration, OffsetDateTime};
use tokio::sync::{Semaphore, mpsc, watch};
use zeroize::Zeroizing;

use crate::crl::{self, CrlParams, RevokedEntry};
use crate::error::CaError;
use crate::issue::{self, CertUrls, LeafRequest};
use crate::metrics;
use crate::ocsp::{CertStatus, OcspResponder, ResponderIssuer, StatusLookup};
use crate::pkcs12::{self, BundleInput, MobileconfigInput};
use crate::pki::{self, LoadedIssuer, LoadedPki};
use crate::promises::Promises;
use crate::store::{
    AuditEvent, CertFilter, CertRecord, CrlRecord, IssuerRecord, IssuerState, Revocation,
    RevokeTarget, Store, StoreError, Supersession, TicketRecord, TicketState,
};
use crate::tickets::{TicketMac, TicketPassword, random_digits};

mod edge;
pub use edge::{CrlBundle, LiveCrl, LiveIssuer, ROOT_CRL_ID};

/// Who is calling, from the verified client certificate.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Role from the SAN URI `urn:pki:role:<role>`.
    pub role: String,
    /// Subject CN of the client certificate (or "cli" for local commands).
    pub name: String,
}

impl Caller {
    /// The actor string written to the audit log.
    pub fn actor(&self) -> String {
        format!("{}:{}", self.role, self.name)
    }
}

/// A request to create a ticket, in domain terms.
#[derive(Debug, Clone)]
pub struct NewTicket {
    /// Who the ticket is for.
    pub enrollee: Enrollee,
    /// Certificate profile name (None = policy default).
    pub profile: Option<String>,
    /// Who approved the registration (portal user); may be empty for a renewal.
    pub approved_by: String,
    /// Serial of the certificate this ticket renews (None = a new registration).
    pub renews_serial: Option<String>,
}

/// A request to redeem a ticket.
pub struct Redemption {
    /// Ticket number (8 digits).
    pub number: String,
    /// Ticket password (8 digits).
    pub password: Zeroizing<String>,
    /// Target OS (None = the ticket's device OS).
    pub os: Option<TargetOs>,
    /// Keystore profile name (None = the OS default).
    pub keystore_profile: Option<String>,
}

/// What a redemption returns.
pub struct Bundle {
    /// The PKCS#12 bytes (protected by the ticket password).
    pub pkcs12: Zeroizing<Vec<u8>>,
    /// Suggested file name of the bundle.
    pub file_name: String,
    /// MIME type of the bundle.
    pub media_type: String,
    /// Apple configuration profile (empty for other OSes).
    pub mobileconfig: Vec<u8>,
    /// Suggested file name of the configuration profile.
    pub mobileconfig_file_name: String,
    /// Serial, lowercase hex.
    pub serial: String,
    /// Certificate DER.
    pub certificate_der: Vec<u8>,
    /// Chain, issuer first, root last.
    pub chain_der: Vec<Vec<u8>>,
    /// notAfter of the certificate.
    pub not_after: OffsetDateTime,
    /// The bundle's own random password (policy `[tickets] bundle_password = "random"`),
    /// returned once; `None` when the ticket password protects the bundle.
    pub bundle_password: Option<Zeroizing<String>>,
}

/// Status of a certificate for `CheckStatus`.
#[derive(Debug, Clone)]
pub enum StatusAnswer {
    /// Issued by us and not revoked (may be expired).
    Good,
    /// Revoked.
    Revoked(Revocation),
    /// Never issued by us.
    Unknown,
}

/// An issuer with its runtime state.
pub struct IssuerView {
    /// Stored record.
    pub record: IssuerRecord,
    /// Certificates issued by it.
    pub certificate_count: u64,
    /// Latest CRL number (0 = none yet).
    pub crl_number: u64,
}

struct IssuerSet {
    active: String,
    by_id: HashMap<String, Arc<LoadedIssuer>>,
}

impl IssuerSet {
    /// The loaded issuers, checking that the active one is among them.
    fn from_loaded(active: String, issuers: Vec<LoadedIssuer>) -> Result<Self, CaError> {
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

/// The authority.
pub struct Authority {
    store: Arc<dyn Store>,
    policy: Arc<Policy>,
    mac: TicketMac,
    root_cert_der: Vec<u8>,
    url_base: String,
    issuers: RwLock<Arc<IssuerSet>>,
    ocsp: OcspResponder,
    crl_watch: Mutex<HashMap<String, watch::Sender<Option<Arc<CrlRecord>>>>>,
    crl_dirty: mpsc::UnboundedSender<String>,
    cpu: Arc<Semaphore>,
    redeeming: Mutex<HashSet<String>>,
    ticket_gate: crate::tickets::TicketGate,
    data_dir: PathBuf,
    passphrase: Arc<crate::keys::Passphrase>,
    limits: Arc<crate::limits::RateLimits>,
    /// One CRL publication (reserve, build, save) at a time: two concurrent ones reserve
    /// numbers n < m, and if m is saved first the save of n is refused as stale, failing its
    /// caller (`PublishCrl`). Taken inside the blocking task, so a cancelled caller cannot
    /// release it while its publication is still running.
    crl_publishing: Arc<Mutex<()>>,
    /// The live (active and retiring) issuers, active first; updated by
    /// `sync_issuer_records`. Followed by the all-issuers CRL watch ([`edge`]).
    live: watch::Sender<Arc<[LiveIssuer]>>,
    /// What the CA has promised, kept outside the store (checkpoints, last CRLs); set by
    /// `serve` (see [`crate::promises`]).
    promises: OnceLock<Arc<Promises>>,
    /// Issuers whose CRL the publication guard is holding back.
    crl_blocked: Mutex<HashSet<String>>,
    /// Wakes the supersession task when a renewal scheduled a new supersession.
    supersede_wake: tokio::sync::Notify,
}

/// Runs blocking (store or CPU) work off the reactor.
async fn blocking<T, F>(f: F) -> Result<T, CaError>
where
    F: FnOnce() -> Result<T, CaError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CaError::internal(format!("blocking task failed: {e}")))?
}

fn store_err(e: StoreError) -> CaError {
    if let Some(unavailable) = crate::storage::storage_failure(&e) {
        return unavailable;
    }
    match e {
        StoreError::NotFound { .. } => CaError::NotFound {
            what: "record",
            id: String::new(),
        },
        other => CaError::internal(other),
    }
}

/// Guard that removes a ticket number from the in-flight set.
struct Redeeming<'a> {
    set: &'a Mutex<HashSet<String>>,
    number: String,
}

impl Drop for Redeeming<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.lock() {
            s.remove(&self.number);
        }
    }
}

struct StoreLookup(Arc<dyn Store>, Option<Arc<Promises>>);

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

fn responder_issuers(set: &IssuerSet) -> Result<Vec<ResponderIssuer>, CaError> {
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

impl Authority {
    /// Builds the authority from loaded keys and an opened store, registers the issuers in the
    /// store, and returns it with the receiver the CRL publisher task must drain
    /// (see [`Authority::run_crl_publisher`]).
    pub fn new(
        pki: LoadedPki,
        store: Arc<dyn Store>,
        policy: Arc<Policy>,
        data_dir: PathBuf,
        passphrase: Arc<crate::keys::Passphrase>,
    ) -> Result<(Arc<Self>, mpsc::UnboundedReceiver<String>), CaError> {
        let mac = TicketMac::new(&pki.pepper).map_err(CaError::internal)?;
        let url_base = pki.url_base.clone();
        let set = IssuerSet::from_loaded(pki.active_issuer_id, pki.issuers)?;
        let ocsp = OcspResponder::new(
            responder_issuers(&set)?,
            Duration::hours(i64::from(policy.ocsp.validity_hours)),
            Duration::hours(i64::from(policy.ocsp.resign_before_hours)),
        )
        .map_err(CaError::internal)?
        .with_capacity(policy.ocsp.cache_entries as usize);
        let (tx, rx) = mpsc::unbounded_channel();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let auth = Arc::new(Self {
            store,
            policy: policy.clone(),
            mac,
            root_cert_der: pki.root_cert_der,
            url_base,
            issuers: RwLock::new(Arc::new(set)),
            ocsp,
            crl_watch: Mutex::new(HashMap::new()),
            crl_dirty: tx,
            cpu: Arc::new(Semaphore::new(cores)),
            redeeming: Mutex::new(HashSet::new()),
            ticket_gate: crate::tickets::TicketGate::new(),
            data_dir,
            passphrase,
            limits: Arc::new(crate::limits::RateLimits::new(&policy)),
            crl_publishing: Arc::new(Mutex::new(())),
            live: watch::channel(Arc::from(Vec::new())).0,
            promises: OnceLock::new(),
            crl_blocked: Mutex::new(HashSet::new()),
            supersede_wake: tokio::sync::Notify::new(),
        });
        auth.sync_issuer_records()?;
        Ok((auth, rx))
    }

    /// Hands the authority what the CA has promised (once, at start): from then on every
    /// CRL is checked against the last published one, kept, and checkpointed.
    pub fn set_promises(&self, promises: Arc<Promises>) {
        let _ = self.promises.set(promises);
    }

    fn promises(&self) -> Option<Arc<Promises>> {
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
    fn crl_guard(
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

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The rate limiters (shared with the gRPC edge).
    pub fn rate_limits(&self) -> Arc<crate::limits::RateLimits> {
        self.limits.clone()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn issuer_set(&self) -> Arc<IssuerSet> {
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
    fn sync_issuer_records(&self) -> Result<(), CaError> {
        let set = self.issuer_set();
        let now = OffsetDateTime::now_utc();
        let existing: HashMap<String, IssuerRecord> = self
            .store
            .issuers()
            .map_err(store_err)?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        let mut states = Vec::with_capacity(set.by_id.len());
        for issuer in set.by_id.values() {
            let state = if issuer.id == set.active {
                IssuerState::Active
            } else {
                let (_, _, live) = self
                    .store
                    .certificate_counts(&issuer.id, now)
                    .map_err(store_err)?;
                edge::retiring_state(live)
            };
            states.push((issuer.clone(), state));
            if existing.get(&issuer.id).map(|r| r.state) == Some(state) {
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

    fn urls_for(&self, issuer_id: &str) -> CertUrls {
        CertUrls {
            crl: pki::crl_url(&self.url_base, issuer_id),
            ocsp: pki::ocsp_url(&self.url_base),
            ca_issuers: pki::ca_issuers_url(&self.url_base, issuer_id),
        }
    }

    // ----------------------------------------------------------------------------------------
    // Enrollment

    /// Creates a ticket and returns it with its password (shown once).
    pub async fn create_ticket(
        self: &Arc<Self>,
        caller: &Caller,
        req: NewTicket,
    ) -> Result<(TicketRecord, TicketPassword), CaError> {
        crate::storage::check_room()?;
        self.policy
            .limits
            .check_enrollee(&req.enrollee)
            .map_err(|e| CaError::invalid(e.field.clone(), e.problem.to_string()))?;
        let profile_name = match &req.profile {
            Some(p) => {
                self.policy
                    .cert_profile(Some(p))
                    .map_err(|e| CaError::invalid("profile", e.to_string()))?;
                p.clone()
            }
            None => self.policy.certificate.default_profile.clone(),
        };
        let max = self.policy.limits.max_string_len;
        if req.approved_by.chars().count() > max {
            return Err(CaError::invalid(
                "approved_by",
                format!("longer than {max} characters"),
            ));
        }
        let now = OffsetDateTime::now_utc();
        // A renewal: same identity as a certificate that is still valid; the profile defaults
        // to the renewed certificate's.
        let profile_name = match &req.renews_serial {
            Some(serial) => {
                let old = self.certificate(serial).await?;
                crate::renewal::check_renewable(&old, &req.enrollee, now)?;
                match &req.profile {
                    Some(_) => profile_name,
                    None => self.original_profile(&old).await.unwrap_or(profile_name),
                }
            }
            None => profile_name,
        };
        // A ticket that cannot be redeemed is never created.
        let profile = self
            .policy
            .cert_profile(Some(&profile_name))
            .map_err(|e| CaError::invalid("profile", e.to_string()))?;
        crate::renewal::check_subject(profile, &req.enrollee)?;
        let expires_at = now + Duration::days(i64::from(self.policy.tickets.lifetime_days));
        let password = TicketPassword::generate().map_err(CaError::internal)?;
        let this = self.clone();
        let actor = caller.actor();
        let mut last_err = None;
        // A number collides with a live ticket with probability (live tickets)/10^8: retry.
        for _ in 0..8 {
            let number = random_digits(8).map_err(CaError::internal)?;
            let record = TicketRecord {
                version: 1,
                number: number.clone(),
                password_mac: self.mac.mac(&number, password.expose()),
                state: TicketState::Active,
                created_at: now,
                expires_at,
                failed_attempts: 0,
                enrollee: req.enrollee.clone(),
                cert_profile: profile_name.clone(),
                approved_by: req.approved_by.clone(),
                created_by: actor.clone(),
                redeemed_serial: None,
            };
            let event = AuditEvent {
                actor: actor.clone(),
                action: "ticket.created".into(),
                target: format!("ticket:{number}"),
                detail: format!(
                    "facility={} person={} device={} approved_by={}{}",
                    record.enrollee.facility.id,
                    record.enrollee.person.id,
                    record.enrollee.device.id,
                    record.approved_by,
                    req.renews_serial
                        .as_ref()
                        .map(|s| format!(" renews={s}"))
                        .unwrap_or_default()
                ),
            };
            let this2 = this.clone();
            let rec2 = record.clone();
            let renews = req.renews_serial.clone();
            let result = blocking(move || {
                let stored = match &renews {
                    Some(serial) => this2.store.create_renewal_ticket(&rec2, serial, event),
                    None => this2.store.create_ticket(&rec2, event),
                };
                match stored {
                    Ok(()) => Ok(Ok(())),
                    Err(StoreError::Conflict { .. }) => Ok(Err(())),
                    Err(e) => Err(store_err(e)),
                }
            })
            .await?;
            match result {
                Ok(()) => {
                    metrics::metrics().tickets_created.inc();
                    tracing::info!(ticket = %number, facility = %record.enrollee.facility.id,
                        person = %record.enrollee.person.id, "ticket created");
                    return Ok((record, password));
                }
                Err(()) => last_err = Some(number),
            }
        }
        Err(CaError::internal(format!(
            "could not find a free ticket number (last tried {last_err:?})"
        )))
    }

    /// The certificate profile the renewed certificate was issued with, if its ticket is still
    /// stored and the policy still has the profile.
    async fn original_profile(&self, cert: &CertRecord) -> Option<String> {
        let store = self.store.clone();
        let number = cert.ticket_number.clone();
        let t = blocking(move || store.ticket(&number).map_err(store_err))
            .await
            .ok()??;
        (t.redeemed_serial.as_deref() == Some(cert.serial.as_str())
            && self.policy.cert_profile(Some(&t.cert_profile)).is_ok())
        .then_some(t.cert_profile)
    }

    /// The serial a ticket renews (None = a new registration).
    pub async fn ticket_renews(&self, number: &str) -> Result<Option<String>, CaError> {
        let store = self.store.clone();
        let n = number.to_string();
        blocking(move || store.ticket_renews(&n).map_err(store_err)).await
    }

    /// Reads a ticket (never the password).
    pub async fn get_ticket(&self, number: &str) -> Result<TicketRecord, CaError> {
        let store = self.store.clone();
        let n = number.to_string();
        let t = blocking(move || store.ticket(&n).map_err(store_err)).await?;
        t.ok_or_else(|| CaError::NotFound {
            what: "ticket",
            id: number.to_string(),
        })
    }

    /// Cancels an active ticket.
    pub async fn cancel_ticket(
        &self,
        caller: &Caller,
        number: &str,
    ) -> Result<TicketRecord, CaError> {
        let t = self.get_ticket(number).await?;
        let now = OffsetDateTime::now_utc();
        let state = t.effective_state(now);
        if state != TicketState::Active {
            return Err(CaError::WrongState {
                what: "ticket",
                state: state.to_string(),
                expected: "active",
            });
        }
        let store = self.store.clone();
        let n = number.to_string();
        let event = AuditEvent {
            actor: caller.actor(),
            action: "ticket.cancelled".into(),
            target: format!("ticket:{number}"),
            detail: String::new(),
        };
        blocking(move || {
            store
                .set_ticket_state(&n, TicketState::Active, TicketState::Cancelled, event)
                .map_err(|e| match e {
                    StoreError::StateMismatch { actual } => CaError::WrongState {
                        what: "ticket",
                        state: actual.to_string(),
                        expected: "active",
                    },
                    e => store_err(e),
                })
        })
        .await
    }

    /// Decides a redemption attempt, inside the number's turn: the ticket if it is `Active`,
    /// has attempts left and the password is right; else one answer for every bad credential
    /// (unknown number, wrong password, locked, redeemed, expired, cancelled: issue #12 item 4),
    /// each after the same work, a MAC and a durable write that counts the failure whatever
    /// the ticket's state. Once a ticket's attempts are used up its password is no longer
    /// tested at all, so a redeemed ticket's password (also its bundle's password, in the
    /// default mode) cannot be probed past the lockout either.
    async fn admit(
        &self,
        caller: &Caller,
        req: &Redemption,
        ticket: Option<TicketRecord>,
        now: OffsetDateTime,
    ) -> Result<TicketRecord, CaError> {
        let store = self.store.clone();
        let Some(ticket) = ticket else {
            let _ = self.mac.verify(&req.number, &req.password, &[0u8; 32]);
            // A keyed hash, never the number: it may be a password typed into the wrong field
            // (issue #12 item 5).
            let tag = self.mac.unknown_number_tag(&req.number);
            let event = AuditEvent {
                actor: caller.actor(),
                action: "ticket.unknown_number".into(),
                target: tag.clone(),
                detail: String::new(),
            };
            let _ =
                blocking(move || store.append_audit(event).map(|_| ()).map_err(store_err)).await;
            tracing::info!(ticket = %tag, outcome = "unknown_number", "redemption refused");
            return Err(CaError::BadTicketCredentials);
        };
        let max = self.policy.tickets.max_attempts;
        let state = ticket.effective_state(now);
        let exhausted = ticket.failed_attempts >= max || state == TicketState::Locked;
        let right = if exhausted {
            // Never test a password once the attempts are used up: no oracle after the lockout.
            let _ = self.mac.verify(&req.number, &req.password, &[0u8; 32]);
            false
        } else {
            self.mac
                .verify(&req.number, &req.password, &ticket.password_mac)
        };
        if right && state == TicketState::Active {
            return Ok(ticket);
        }
        let n = req.number.clone();
        let event = AuditEvent {
            actor: caller.actor(),
            action: "ticket.locked".into(),
            target: format!("ticket:{}", req.number),
            detail: format!("{max} wrong passwords"),
        };
        let counted = blocking(move || {
            store
                .record_failed_attempt(&n, max, now, event)
                .map_err(store_err)
        })
        .await;
        // A failure that could not be counted is not answered as one: the count is the lockout.
        let t = counted?;
        tracing::info!(ticket = %req.number, state = %state, failed_attempts = t.failed_attempts,
            locked = (t.state == TicketState::Locked), "redemption refused");
        Err(CaError::BadTicketCredentials)
    }

    /// Redeems a ticket once: key, certificate, PKCS#12 (and .mobileconfig), durably recorded
    /// before this returns.
    pub async fn redeem_ticket(
        self: &Arc<Self>,
        caller: &Caller,
        req: Redemption,
    ) -> Result<Bundle, CaError> {
        let result = self.redeem_inner(caller, req).await;
        let m = metrics::metrics();
        let outcome = match &result {
            Ok(_) => {
                m.issuances.inc();
                "ok"
            }
            Err(CaError::BadTicketCredentials) => "bad_credentials",
            Err(CaError::TicketNotRedeemable { .. }) => "not_redeemable",
            Err(CaError::RedemptionInProgress) => "in_progress",
            Err(CaError::InvalidArgument { .. }) => "invalid_argument",
            Err(CaError::ResourceExhausted(m)) if m.starts_with(crate::storage::NEARLY_FULL) => {
                "storage_full"
            }
            Err(CaError::ResourceExhausted(_)) => "rate_limited",
            Err(_) => "error",
        };
        metrics::inc(&m.redemptions, outcome);
        result
    }

    async fn redeem_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: Redemption,
    ) -> Result<Bundle, CaError> {
        crate::storage::check_room()?;
        if !self.limits.allow_ticket(&req.number) {
            tracing::warn!(ticket = %self.mac.unknown_number_tag(&req.number),
                "ticket redemption rate limit hit");
            return Err(CaError::ResourceExhausted(
                "too many attempts for this ticket; wait a minute".into(),
            ));
        }
        // One attempt at a time per number, up to its durable outcome (issue #12 item 4).
        let _turn = self.ticket_gate.turn(&req.number).await;
        let now = OffsetDateTime::now_utc();
        let ticket = {
            let store = self.store.clone();
            let n = req.number.clone();
            blocking(move || store.ticket(&n).map_err(store_err)).await?
        };
        let ticket = self.admit(caller, &req, ticket, now).await?;
        // A renewal ticket: the renewed certificate must still be valid (revoked or expired
        // since the ticket was created: refused, a new registration is needed).
        let supersede = match self.ticket_renews(&req.number).await? {
            Some(old_serial) => {
                let old = self.certificate(&old_serial).await?;
                crate::renewal::check_renewable(&old, &ticket.enrollee, now)?;
                Some(old_serial)
            }
            None => None,
        };
        let grace = Duration::seconds(i64::from(self.policy.renewal.supersede_after_secs));
        let renewing = supersede.is_some();

        let _guard = {
            let mut set = self
                .redeeming
                .lock()
                .map_err(|_| CaError::internal("redeeming set poisoned"))?;
            if !set.insert(req.number.clone()) {
                return Err(CaError::RedemptionInProgress);
            }
            Redeeming {
                set: &self.redeeming,
                number: req.number.clone(),
            }
        };

        let os = req.os.unwrap_or(ticket.enrollee.device.os);
        let keystore = self
            .policy
            .keystore_for(os, req.keystore_profile.as_deref())
            .map_err(|e| CaError::invalid("keystore_profile", e.to_string()))?
            .clone();
        let cert_profile = self
            .policy
            .cert_profile(Some(&ticket.cert_profile))
            .map_err(|e| CaError::internal(format!("ticket profile vanished: {e}")))?
            .clone();
        let set = self.issuer_set();
        let issuer = set
            .by_id
            .get(&set.active)
            .cloned()
            .ok_or_else(|| CaError::Unavailable("no active issuer".into()))?;
        let urls = self.urls_for(&issuer.id);
        let root = self.root_cert_der.clone();

        // One hand-off to the blocking pool for the whole build → commit → pre-sign: each
        // hand-off costs task switches, and redemption is the hot path (docs/benchmarks.md).
        // The CPU permit bounds the key generation, signing and KDFs to the core count and is
        // released before the (group-committed) durable write.
        let permit = self
            .cpu
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CaError::Unavailable("shutting down".into()))?;
        let this = self.clone();
        let actor = caller.actor();
        // Issue #12 item 10: the bundle's own random password (80 bits) if the policy says so,
        // else the ticket password (the manual's flow).
        let bundle_password = match self.policy.tickets.bundle_password {
            pki_policy::BundlePassword::Ticket => None,
            pki_policy::BundlePassword::Random => {
                Some(crate::tickets::random_bundle_password().map_err(CaError::internal)?)
            }
        };
        let password = bundle_password
            .clone()
            .unwrap_or_else(|| req.password.clone());
        let issuer2 = issuer.clone();
        let built = blocking(move || {
            let enrollee = &ticket.enrollee;
            let leaf = issue::issue_leaf(&LeafRequest {
                enrollee,
                profile: &cert_profile,
                issuer_cert_der: &issuer2.cert_der,
                issuer_key: &issuer2.key,
                issuer_not_after: issuer2.not_after,
                urls: &urls,
                now,
            })
            .map_err(CaError::internal)?;
            let chain = vec![issuer2.cert_der.clone(), root.clone()];
            let friendly = format!(
                "{} ({})",
                enrollee.person.display_name(),
                enrollee.facility.name
            );
            let pfx = pkcs12::build_pfx(
                &keystore,
                &BundleInput {
                    key_pkcs8: &leaf.key_pkcs8,
                    leaf_der: &leaf.der,
                    chain_der: &chain,
                    friendly_name: &friendly,
                    password: &password,
                },
            )
            .map_err(CaError::internal)?;
            let base = format!("{}-{}", enrollee.device.id, &leaf.serial_hex[..8]);
            let file_name = format!("{base}.{}", keystore.file_extension);
            let (mobileconfig, mc_name) = if keystore.mobileconfig {
                let identity = crate::renewal::device_identity(enrollee);
                let mc = pkcs12::build_mobileconfig(&MobileconfigInput {
                    device_identity: &identity,
                    pfx: &pfx,
                    pfx_file_name: &file_name,
                    profile: &keystore,
                    issuer_der: &issuer2.cert_der,
                    root_der: &root,
                    root_name: "ケアネット 端末ルートCA",
                    display_name: &enrollee.person.display_name(),
                    organization: &enrollee.facility.name,
                    serial_hex: &leaf.serial_hex,
                })
                .map_err(CaError::internal)?;
                (mc, format!("{base}.mobileconfig"))
            } else {
                (Vec::new(), String::new())
            };
            drop(permit);

            let record = CertRecord {
                version: 1,
                serial: leaf.serial_hex.clone(),
                issuer_id: issuer2.id.clone(),
                der: leaf.der.clone(),
                facility_id: enrollee.facility.id.clone(),
                person_id: enrollee.person.id.clone(),
                device_id: enrollee.device.id.clone(),
                os,
                keystore_profile: keystore.name.clone(),
                ticket_number: ticket.number.clone(),
                not_before: leaf.not_before,
                not_after: leaf.not_after,
                issued_at: now,
                revocation: None,
            };
            let event = AuditEvent {
                actor,
                action: "certificate.issued".into(),
                target: format!("serial:{}", leaf.serial_hex),
                detail: format!(
                    "ticket={} issuer={} facility={} person={} device={} os={} keystore={}",
                    ticket.number,
                    issuer2.id,
                    record.facility_id,
                    record.person_id,
                    record.device_id,
                    os,
                    keystore.name
                ),
            };
            let stored = match &supersede {
                None => this.store.redeem_ticket(
                    &ticket.number,
                    &ticket.password_mac,
                    now,
                    &record,
                    event,
                ),
                Some(old) => this.store.redeem_renewal(
                    &ticket.number,
                    &ticket.password_mac,
                    now,
                    &record,
                    &Supersession {
                        serial: old.clone(),
                        renewed_by: record.serial.clone(),
                        due: now + grace,
                    },
                    event,
                ),
            };
            stored.map_err(|e| match e {
                // Cancelled (or revoked) while this attempt was building: answered like
                // every other bad credential (issue #12 item 4).
                StoreError::StateMismatch { .. } => CaError::BadTicketCredentials,
                StoreError::Revoked { serial } => CaError::WrongState {
                    what: "the certificate to renew",
                    state: format!(
                        "revoked ({serial}); a revoked certificate cannot be renewed, register the device anew"
                    ),
                    expected: "valid",
                },
                e => store_err(e),
            })?;
            tracing::info!(ticket = %ticket.number, serial = %leaf.serial_hex, issuer = %issuer2.id,
                os = %os, keystore = %keystore.name, "ticket redeemed, certificate issued");
            // Warm the OCSP cache so the first status request costs a lookup.
            if let Err(e) = this.ocsp.presign(
                &issuer2.id,
                &leaf.serial_hex,
                CertStatus::Good,
                OffsetDateTime::now_utc(),
            ) {
                tracing::warn!(serial = %leaf.serial_hex, error = %e, "OCSP pre-signing failed");
            }
            Ok((leaf, chain, pfx, file_name, mobileconfig, mc_name))
        })
        .await?;
        let (leaf, chain, pfx, file_name, mobileconfig, mobileconfig_file_name) = built;
        if renewing {
            // Grace period 0: superseded before the answer; otherwise at its deadline.
            if grace.is_zero() {
                self.apply_due_supersessions().await;
            } else {
                self.supersede_wake.notify_one();
            }
        }

        Ok(Bundle {
            pkcs12: pfx,
            file_name,
            media_type: "application/x-pkcs12".into(),
            mobileconfig,
            mobileconfig_file_name,
            serial: leaf.serial_hex,
            certificate_der: leaf.der,
            chain_der: chain,
            not_after: leaf.not_after,
            bundle_password,
        })
    }

    // ----------------------------------------------------------------------------------------
    // Certificates

    /// One certificate by serial.
    pub async fn certificate(&self, serial: &str) -> Result<CertRecord, CaError> {
        let store = self.store.clone();
        let s = serial.to_string();
        blocking(move || store.certificate(&s).map_err(store_err))
            .await?
            .ok_or_else(|| CaError::NotFound {
                what: "certificate",
                id: serial.to_string(),
            })
    }

    /// A page of certificates matching `filter`, ordered by serial; returns the page and the
    /// token of the next one (empty at the end).
    pub async fn list_certificates(
        &self,
        filter: CertFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<CertRecord>, String), CaError> {
        let limits = &self.policy.limits;
        let size = limits.effective_page_size(page_size) as usize;
        let after = if page_token.is_empty() {
            None
        } else {
            if page_token.len() > 40 || !page_token.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(CaError::invalid("page_token", "not a token from this API"));
            }
            Some(page_token.to_string())
        };
        let store = self.store.clone();
        let mut page = blocking(move || {
            store
                .list_certificates(&filter, after.as_deref(), size + 1)
                .map_err(store_err)
        })
        .await?;
        let next = if page.len() > size {
            page.truncate(size);
            page.last().map(|c| c.serial.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((page, next))
    }

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

    // ----------------------------------------------------------------------------------------
    // CA chain, CRL, OCSP

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

    fn resolve_issuer(&self, issuer_id: &str) -> Result<String, CaError> {
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

    fn crl_sender(&self, issuer_id: &str) -> watch::Sender<Option<Arc<CrlRecord>>> {
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
    async fn republish_if_behind(self: &Arc<Self>) {
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

    /// Renews OCSP responder certificates that are within the policy's renewal window, then
    /// reloads the keys so the responder signs with the new certificate.
    async fn renew_responders(self: &Arc<Self>) {
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

    async fn ocsp_fresh(
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

    // ----------------------------------------------------------------------------------------
    // Renewals: supersession of renewed certificates, expiry reminders

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

    // ----------------------------------------------------------------------------------------
    // Admin

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
        let pki = blocking(move || pki::load(&dir, &pass).map_err(CaError::internal)).await?;
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
    /// The root's CRL over its issuers (signed when the root key was last unsealed: at `init`
    /// and at each rotation), if one exists.
    pub fn root_crl(&self) -> Option<Vec<u8>> {
        std::fs::read(pki::Layout::new(&self.data_dir).root_crl()).ok()
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

    /// The latest stored CRL of an issuer.
    pub async fn latest_crl(&self, issuer_id: &str) -> Result<Option<CrlRecord>, CaError> {
        let store = self.store.clone();
        let id = issuer_id.to_string();
        blocking(move || store.latest_crl(&id).map_err(store_err)).await
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

/// Keeps `record` outside the store before it is saved and served (see [`crate::promises`]):
/// a CRL that cannot be kept (disk full) is not published (UNAVAILABLE), so nothing is served
/// that a lost store could later withdraw. The entries were read from committed state; it is
/// made durable first, so a crash never leaves a kept CRL ahead of the store.
fn keep_crl(
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
fn record_crl_metrics(record: &CrlRecord) {
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

/// A fresh private directory under DATA_DIR/tmp for snapshots.
fn tempfile_dir(data_dir: &std::path::Path) -> Result<PathBuf, CaError> {
    let dir = data_dir
        .join("tmp")
        .join(uuid::Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&dir).map_err(|e| CaError::internal(format!("temp dir: {e}")))?;
    Ok(dir)
}
