//! The certificate authority as the gRPC and HTTP edges see it: domain operations over the
//! store, the loaded keys, the policy, the CRL publisher and the OCSP responder.
//!
//! Handlers translate proto ⇄ domain and call these methods; nothing here knows about tonic
//! or HTTP, and no handler calls the store or signs, builds or parses certificates, CRLs or
//! OCSP itself. CPU-heavy work (key generation, signing, PKCS#12 KDFs) runs on the blocking
//! pool, bounded by a semaphore sized to the core count, so OCSP, CRL and health answers stay
//! fast while redemptions saturate the CPU (DESIGN §9). Store calls run on the blocking pool
//! too: every acknowledged write is flushed before the method returns.
//!
//! One type, [`Authority`], with one `impl` block per concern:
//!
//! | file | concern |
//! |---|---|
//! | `mod.rs` | the struct, [`Authority::new`], the request/answer types ([`Caller`], [`NewTicket`], [`Redemption`], [`Bundle`], [`StatusAnswer`], [`IssuerView`]), `blocking` and `store_err` |
//! | `enrollment.rs` | tickets (create, get, cancel, renewal tickets), admission of a redemption attempt, redemption |
//! | `certificates.rs` | reading issued certificates (one, a page) |
//! | `revocation.rs` | revoke, `CheckStatus`, OCSP answers, supersession of renewed certificates |
//! | `publication.rs` | CRLs: publication, the guard, the publisher loop and scheduled maintenance, catch-up after a crash, watches, checkpoints and the other promises hooks, the root CRL |
//! | `issuers.rs` | the loaded issuer set, issuer records, reloads (rotation), OCSP responder renewal, the CA chain and issuer certificates |
//! | `admin.rs` | audit verification, backups, counts |
//! | `edge.rs` | what TLS gateways follow: live issuers, the all-issuers CRL stream, the CRL bundle |
//! | `cluster.rs` | several daemons on one PostgreSQL store |
//!
//! Cross-node coordination (several daemons on one database: reacting to the store's change
//! notifications, re-reading the issuer set, invalidating the CRL watches and the pre-signed
//! OCSP cache, catching up after a reconnect) has one home: `cluster.rs`. It calls into
//! `issuers.rs` (`reload_issuers`), `publication.rs` and the OCSP responder rather than growing
//! its own copies of them; the one cross-node step inside publication is the store's
//! publication lock around numbering, building and saving a CRL.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use pki_policy::Policy;
use pki_policy::domain::{Enrollee, TargetOs};
use time::{Duration, OffsetDateTime};
use tokio::sync::{Semaphore, mpsc, watch};
use zeroize::Zeroizing;

use crate::error::CaError;
use crate::ocsp::OcspResponder;
use crate::pki::LoadedPki;
use crate::promises::Promises;
use crate::store::{CrlRecord, IssuerRecord, Revocation, Store, StoreError};
use crate::tickets::TicketMac;

mod admin;
mod certificates;
mod cluster;
mod edge;
mod enrollment;
mod issuers;
mod publication;
mod revocation;
#[cfg(test)]
mod tests;

pub use admin::{CrlFigures, StatusFigures};
pub use edge::{CrlBundle, LiveCrl, LiveIssuer, ROOT_CRL_ID};
use issuers::{IssuerSet, responder_issuers};

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

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The rate limiters (shared with the gRPC edge).
    pub fn rate_limits(&self) -> Arc<crate::limits::RateLimits> {
        self.limits.clone()
    }
}
