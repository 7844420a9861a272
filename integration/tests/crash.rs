//! Crash safety of the real `ca-daemon` binary (DESIGN §3, §6 "Durability"): under a load of
//! redemptions and revocations from several client tasks the daemon is SIGKILLed at random
//! moments (a seeded RNG; the seed is printed, `CRASH_SEED=<n>` replays it) and restarted on
//! the same data directory, at least [`KILLS`] times. Every call the *client* saw succeed is
//! recorded; after each restart and at the end the test checks that
//!
//! - every acknowledged ticket still exists, and every acknowledged redemption is in the store
//!   (`GetCertificate` returns the same DER) and its ticket says REDEEMED;
//! - no serial appears twice in a full `ListCertificates` scan, no device (one per ticket) has
//!   two certificates, and redeeming an acknowledged ticket again fails FAILED_PRECONDITION;
//! - the CRL number never goes back (`GetCrl` after a restart ≥ the highest number seen);
//! - every acknowledged revocation says REVOKED (`GetCertificate`, `CheckStatus`) and is on the
//!   CRL — the one the daemon republishes by itself (DESIGN §5: within a second, also when the
//!   crash fell inside the batching window) and the one `PublishCrl` makes;
//! - at the end: `openssl verify` of every acknowledged certificate against the chain,
//!   `openssl crl` (signature and entries), `openssl ocsp` of a revoked certificate over HTTP,
//!   and `ca-daemon audit verify`.
//!
//! Client errors are excused only when the daemon was down (or restarting) at some point
//! during the call, or the call used a connection made before the last restart; any other
//! failure is a test failure. Bounded: about a minute on two busy cores.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use integration::tools::{self, run, text};
use integration::{Daemon, DaemonOptions, sample_ticket_request};
use pki_proto::v1;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

/// SIGKILLs per run.
const KILLS: usize = 22;
/// Client tasks redeeming fresh tickets.
const REDEEMERS: usize = 2;
/// Older redeemed tickets re-tried (must fail) after each restart, besides the new ones.
const RETRY_SAMPLE: usize = 10;

// ------------------------------------------------------------------------------------------
// Connections

/// What a client needs to connect as a role.
#[derive(Clone)]
struct Creds {
    addr: SocketAddr,
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Creds {
    fn of(d: &Daemon, role: &str) -> Self {
        let dev = d.dev_dir();
        let read = |name: String| {
            std::fs::read(dev.join(&name)).unwrap_or_else(|e| panic!("read dev/{name}: {e}"))
        };
        Creds {
            addr: d.grpc,
            ca: read("service-ca.crt".into()),
            cert: read(format!("{role}.crt")),
            key: read(format!("{role}.key")),
        }
    }

    async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
            .domain_name("localhost");
        Endpoint::from_shared(format!("https://{}", self.addr))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
    }
}

// ------------------------------------------------------------------------------------------
// What the clients saw

/// A ticket whose creation was acknowledged.
#[derive(Clone)]
struct Ticket {
    password: String,
    device: String,
}

/// A redemption that was acknowledged.
#[derive(Clone)]
struct Issued {
    ticket: String,
    device: String,
    der: Vec<u8>,
}

/// Everything the clients saw succeed, and what went wrong.
#[derive(Default)]
struct Ledger {
    tickets: HashMap<String, Ticket>,
    issued: BTreeMap<String, Issued>,
    /// Serials of acknowledged redemptions not yet re-tried by a check.
    new_redeemed: Vec<String>,
    revoked: HashSet<String>,
    /// Tickets whose redemption failed in a kill window and that a retry found already
    /// redeemed (a certificate the client never saw; allowed).
    redeemed_unseen: u64,
    /// Calls that failed in a kill window (not counted as successes).
    excused_errors: u64,
    /// Failures that must not happen.
    unexpected: Vec<String>,
}

/// Whether the daemon is up, and a counter bumped at every kill and every restart.
struct Liveness {
    up: AtomicBool,
    epoch: AtomicU64,
}

impl Liveness {
    /// The epoch, if the daemon is up now.
    fn stable(&self) -> Option<u64> {
        let e = self.epoch.load(Ordering::SeqCst);
        self.up.load(Ordering::SeqCst).then_some(e)
    }
}

/// Shared by the client tasks.
struct Shared {
    ledger: Mutex<Ledger>,
    live: Liveness,
    stop: AtomicBool,
}

impl Shared {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a failed call: excused if the daemon was not up and stable through the whole
    /// call on a connection made in the current epoch, unexpected otherwise.
    fn failed(&self, what: &str, conn_epoch: u64, before: Option<u64>, status: &Status) {
        let after = self.live.stable();
        let stable = before.is_some() && before == after && before == Some(conn_epoch);
        let mut l = self.ledger();
        if stable {
            l.unexpected.push(format!(
                "{what}: {:?} {} (daemon up)",
                status.code(),
                status.message()
            ));
        } else {
            l.excused_errors += 1;
        }
    }
}

/// A connected client with the epoch its connection was made in.
struct Conn {
    channel: Channel,
    epoch: u64,
}

async fn reconnect(creds: &Creds, shared: &Shared) -> Option<Conn> {
    while !shared.stop.load(Ordering::SeqCst) {
        let epoch = shared.live.epoch.load(Ordering::SeqCst);
        if let Ok(channel) = creds.connect().await {
            return Some(Conn { channel, epoch });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn enroll(c: &Conn) -> v1::enrollment_client::EnrollmentClient<Channel> {
    v1::enrollment_client::EnrollmentClient::new(c.channel.clone())
}

/// Codes that a dying or restarting daemon produces (the connection breaks); anything else is
/// an answer of the daemon's own and never excused.
fn transport_failure(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::Internal
            | Code::DeadlineExceeded
    )
}

/// Creates fresh tickets (a device each) and redeems them; re-tries redemptions that failed in
/// a kill window.
async fn redeemer(id: usize, creds: Creds, shared: Arc<Shared>) {
    let mut conn: Option<Conn> = None;
    let mut pending: Vec<(String, Ticket)> = Vec::new();
    let mut n: u32 = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let c = match conn.take() {
            Some(c) => c,
            None => match reconnect(&creds, &shared).await {
                Some(c) => c,
                None => return,
            },
        };
        let (number, ticket, retry) = match pending.pop() {
            Some((number, t)) => (number, t, true),
            None => {
                n += 1;
                let device = format!("D{id}-{n:05}");
                let mut req = sample_ticket_request(n, v1::TargetOs::Android);
                if let Some(d) = req.device.as_mut() {
                    d.id = device.clone();
                }
                if let Some(p) = req.person.as_mut() {
                    p.id = format!("P{id}-{n:05}");
                }
                let before = shared.live.stable();
                match enroll(&c).create_ticket(req).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        let t = Ticket {
                            password: r.password,
                            device,
                        };
                        shared.ledger().tickets.insert(r.number.clone(), t.clone());
                        (r.number, t, false)
                    }
                    Err(s) => {
                        if transport_failure(&s) {
                            shared.failed("CreateTicket", c.epoch, before, &s);
                        } else {
                            shared.ledger().unexpected.push(format!(
                                "CreateTicket: {:?} {}",
                                s.code(),
                                s.message()
                            ));
                        }
                        continue; // drop the connection, make a new one
                    }
                }
            }
        };
        let before = shared.live.stable();
        let result = enroll(&c)
            .redeem_ticket(v1::RedeemTicketRequest {
                number: number.clone(),
                password: ticket.password.clone(),
                os: 0,
                keystore_profile: String::new(),
            })
            .await;
        match result {
            Ok(r) => {
                let r = r.into_inner();
                let mut l = shared.ledger();
                if let Some(prev) = l.issued.insert(
                    r.serial.clone(),
                    Issued {
                        ticket: number.clone(),
                        device: ticket.device.clone(),
                        der: r.certificate_der,
                    },
                ) {
                    l.unexpected.push(format!(
                        "serial {} acknowledged twice (tickets {} and {number})",
                        r.serial, prev.ticket
                    ));
                }
                l.new_redeemed.push(r.serial);
                drop(l);
                conn = Some(c);
            }
            Err(s) if retry && s.code() == Code::Unauthenticated => {
                // Redeemed before the crash, but the answer never reached us (a redeemed
                // ticket answers like any bad credential, issue #12 item 4).
                shared.ledger().redeemed_unseen += 1;
                conn = Some(c);
            }
            Err(s) if transport_failure(&s) => {
                shared.failed("RedeemTicket", c.epoch, before, &s);
                pending.push((number, ticket));
            }
            Err(s) => {
                shared.ledger().unexpected.push(format!(
                    "RedeemTicket {number} (retry: {retry}): {:?} {}",
                    s.code(),
                    s.message()
                ));
                conn = Some(c);
            }
        }
    }
}

/// Revokes already issued serials (acknowledged ones), re-trying those whose revocation failed
/// in a kill window.
async fn revoker(creds: Creds, shared: Arc<Shared>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut conn: Option<Conn> = None;
    let mut pending: Vec<String> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        let c = match conn.take() {
            Some(c) => c,
            None => match reconnect(&creds, &shared).await {
                Some(c) => c,
                None => return,
            },
        };
        let serial = match pending.pop() {
            Some(s) => s,
            None => {
                let candidates: Vec<String> = {
                    let l = shared.ledger();
                    l.issued
                        .keys()
                        .filter(|s| !l.revoked.contains(*s))
                        .cloned()
                        .collect()
                };
                // Keep about a third of the certificates valid.
                if candidates.len() < 3 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    conn = Some(c);
                    continue;
                }
                candidates[rng.gen_range(0..candidates.len())].clone()
            }
        };
        let before = shared.live.stable();
        let result = v1::certificates_client::CertificatesClient::new(c.channel.clone())
            .revoke(v1::RevokeRequest {
                reason: v1::RevocationReason::KeyCompromise as i32,
                invalidity_date: None,
                target: Some(v1::revoke_request::Target::Serial(serial.clone())),
            })
            .await;
        match result {
            Ok(r) => {
                let r = r.into_inner();
                {
                    let mut l = shared.ledger();
                    if r.revoked_serials != [serial.clone()] {
                        l.unexpected
                            .push(format!("Revoke {serial} answered {:?}", r.revoked_serials));
                    }
                    l.revoked.insert(serial);
                }
                conn = Some(c);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(5..40))).await;
            }
            Err(s) if transport_failure(&s) => {
                shared.failed("Revoke", c.epoch, before, &s);
                pending.push(serial);
            }
            Err(s) => {
                shared.ledger().unexpected.push(format!(
                    "Revoke {serial}: {:?} {}",
                    s.code(),
                    s.message()
                ));
                conn = Some(c);
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Checks

/// What the checks carry from one restart to the next.
#[derive(Default)]
struct CheckState {
    max_crl_number: u64,
    /// Restarts after which the daemon's own CRL lacked an acknowledged revocation for longer
    /// than the wait (each with the missing serials).
    crl_lagging: Vec<String>,
}

/// A snapshot of the acknowledged facts.
#[derive(Clone)]
struct Snapshot {
    tickets: HashMap<String, Ticket>,
    issued: BTreeMap<String, Issued>,
    revoked: HashSet<String>,
    retry: Vec<String>,
}

fn snapshot(shared: &Shared, all_retries: bool, rng: &mut StdRng) -> Snapshot {
    let mut l = shared.ledger();
    let mut retry: Vec<String> = std::mem::take(&mut l.new_redeemed);
    if all_retries {
        retry = l.issued.keys().cloned().collect();
    } else {
        let older: Vec<&String> = l.issued.keys().collect();
        for _ in 0..RETRY_SAMPLE.min(older.len()) {
            retry.push(older[rng.gen_range(0..older.len())].clone());
        }
    }
    Snapshot {
        tickets: l.tickets.clone(),
        issued: l.issued.clone(),
        revoked: l.revoked.clone(),
        retry,
    }
}

fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    hex::encode(&raw[start..])
}

/// Serials and number of a DER CRL (parsed with x509-parser).
fn crl_contents(der: &[u8]) -> (HashSet<String>, u64) {
    let (_, crl) = x509_parser::parse_x509_crl(der).expect("the daemon's CRL parses");
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| serial_hex(r.raw_serial()))
        .collect();
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n.clone()).ok())
        .expect("CRL has a CRL number");
    (serials, number)
}

/// Runs `f` over `items` with 16 calls in flight; returns the failures.
async fn for_all<T, F, Fut>(items: Vec<T>, f: F) -> Vec<String>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    futures::stream::iter(items.into_iter().map(f))
        .buffer_unordered(16)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await
}

/// Every check of the module doc, against the running daemon; `last` adds the re-try of every
/// redeemed ticket. Panics with what broke.
async fn check(d: &Daemon, ops: &Creds, shared: &Shared, state: &mut CheckState, snap: Snapshot) {
    let ch = ops.connect().await.expect("ops connects after restart");
    let enr = v1::enrollment_client::EnrollmentClient::new(ch.clone());
    let certs = v1::certificates_client::CertificatesClient::new(ch.clone())
        .max_decoding_message_size(64 << 20);
    let rev = v1::revocation_client::RevocationClient::new(ch.clone())
        .max_decoding_message_size(64 << 20);
    let mut admin =
        v1::admin_client::AdminClient::new(ch.clone()).max_decoding_message_size(64 << 20);
    let mut problems: Vec<String> = Vec::new();

    // The CRL number survived the restart (first thing after it, before anything publishes).
    let crl = rev
        .clone()
        .get_crl(v1::GetCrlRequest::default())
        .await
        .expect("GetCrl")
        .into_inner();
    if crl.number < state.max_crl_number {
        problems.push(format!(
            "CRL number went back: {} after a restart, {} seen before",
            crl.number, state.max_crl_number
        ));
    }
    state.max_crl_number = state.max_crl_number.max(crl.number);

    // Acknowledged tickets exist; redeemed ones say so.
    let redeemed_tickets: HashSet<&String> = snap.issued.values().map(|i| &i.ticket).collect();
    let items: Vec<(String, bool)> = snap
        .tickets
        .keys()
        .map(|n| (n.clone(), redeemed_tickets.contains(n)))
        .collect();
    problems.extend(
        for_all(items, |(number, redeemed)| {
            let mut enr = enr.clone();
            async move {
                let t = enr
                    .get_ticket(v1::GetTicketRequest {
                        number: number.clone(),
                    })
                    .await
                    .map_err(|s| format!("acknowledged ticket {number}: {s:?}"))?
                    .into_inner();
                if redeemed && t.state != v1::TicketState::Redeemed as i32 {
                    return Err(format!(
                        "ticket {number} was redeemed (acknowledged) but is in state {}",
                        t.state
                    ));
                }
                Ok(())
            }
        })
        .await,
    );

    // Acknowledged redemptions are stored with the same DER; revoked ones say so.
    let items: Vec<(String, Issued, bool)> = snap
        .issued
        .iter()
        .map(|(s, i)| (s.clone(), i.clone(), snap.revoked.contains(s)))
        .collect();
    problems.extend(
        for_all(items, |(serial, issued, revoked)| {
            let mut certs = certs.clone();
            let mut rev = rev.clone();
            async move {
                let c = certs
                    .get_certificate(v1::GetCertificateRequest {
                        serial: serial.clone(),
                    })
                    .await
                    .map_err(|s| format!("acknowledged certificate {serial}: {s:?}"))?
                    .into_inner();
                if c.der != issued.der {
                    return Err(format!("certificate {serial}: stored DER differs"));
                }
                if c.device_id != issued.device {
                    return Err(format!("certificate {serial}: device {}", c.device_id));
                }
                if revoked {
                    if c.state != v1::CertificateState::Revoked as i32 {
                        return Err(format!(
                            "revocation of {serial} acknowledged, state {}",
                            c.state
                        ));
                    }
                    let st = rev
                        .check_status(v1::CheckStatusRequest {
                            serial: serial.clone(),
                        })
                        .await
                        .map_err(|s| format!("CheckStatus {serial}: {s:?}"))?
                        .into_inner();
                    if st.status != v1::certificate_status::Status::Revoked as i32 {
                        return Err(format!("CheckStatus {serial}: status {}", st.status));
                    }
                }
                Ok(())
            }
        })
        .await,
    );

    // Full scan: no serial twice, at most one certificate per device (one ticket per device).
    let mut seen: HashSet<String> = HashSet::new();
    let mut per_device: HashMap<String, u32> = HashMap::new();
    let mut token = String::new();
    loop {
        let page = certs
            .clone()
            .list_certificates(v1::ListCertificatesRequest {
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("ListCertificates")
            .into_inner();
        for c in &page.certificates {
            if !seen.insert(c.serial.clone()) {
                problems.push(format!("serial {} listed twice", c.serial));
            }
            *per_device.entry(c.device_id.clone()).or_default() += 1;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    for (device, n) in &per_device {
        if *n > 1 {
            problems.push(format!("device {device} (one ticket) has {n} certificates"));
        }
    }
    for serial in snap.issued.keys() {
        if !seen.contains(serial) {
            problems.push(format!(
                "acknowledged serial {serial} missing from the listing"
            ));
        }
    }

    // Redeemed tickets stay redeemed: a second redemption fails FAILED_PRECONDITION.
    let items: Vec<(String, String)> = snap
        .retry
        .iter()
        .filter_map(|s| snap.issued.get(s))
        .filter_map(|i| {
            snap.tickets
                .get(&i.ticket)
                .map(|t| (i.ticket.clone(), t.password.clone()))
        })
        .collect();
    problems.extend(
        for_all(items, |(number, password)| {
            let mut enr = enr.clone();
            async move {
                match enr
                    .redeem_ticket(v1::RedeemTicketRequest {
                        number: number.clone(),
                        password,
                        os: 0,
                        keystore_profile: String::new(),
                    })
                    .await
                {
                    Ok(r) => Err(format!(
                        "ticket {number} redeemed a second time: serial {}",
                        r.into_inner().serial
                    )),
                    Err(s) if s.code() == Code::Unauthenticated => Ok(()),
                    Err(s) => Err(format!("second redemption of {number}: {s:?}")),
                }
            }
        })
        .await,
    );

    // The daemon's own CRL catches up with every acknowledged revocation (batched, DESIGN §5:
    // within a second; two allowed here for a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let crl = rev
            .clone()
            .get_crl(v1::GetCrlRequest::default())
            .await
            .expect("GetCrl")
            .into_inner();
        let (on_crl, number) = crl_contents(&crl.der);
        assert_eq!(number, crl.number, "Crl.number equals the CRL's cRLNumber");
        state.max_crl_number = state.max_crl_number.max(crl.number);
        let missing: Vec<&String> = snap
            .revoked
            .iter()
            .filter(|s| !on_crl.contains(*s))
            .collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            state
                .crl_lagging
                .push(format!("CRL {} lacks {missing:?}", crl.number));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A forced CRL has every acknowledged revocation and a higher number.
    let published = admin
        .publish_crl(v1::PublishCrlRequest::default())
        .await
        .expect("PublishCrl")
        .into_inner();
    let (on_crl, number) = crl_contents(&published.der);
    if number <= state.max_crl_number && state.max_crl_number > 0 {
        problems.push(format!(
            "PublishCrl made number {number}, not above {}",
            state.max_crl_number
        ));
    }
    state.max_crl_number = state.max_crl_number.max(number);
    for s in &snap.revoked {
        if !on_crl.contains(s) {
            problems.push(format!("acknowledged revocation {s} not on CRL {number}"));
        }
    }

    if !problems.is_empty() {
        let unexpected = shared.ledger().unexpected.clone();
        panic!(
            "{} problem(s) after restart:\n{}\nclient failures: {unexpected:?}\ndaemon log tail:\n{}",
            problems.len(),
            problems.join("\n"),
            tail(&d.log(), 60)
        );
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

// ------------------------------------------------------------------------------------------
// External checks at the end

fn openssl(dir: &Path, args: &[&str]) -> std::process::Output {
    run(Command::new("openssl").current_dir(dir).args(args))
}

/// `openssl verify` of every acknowledged certificate, `openssl crl` of a fresh CRL (signature,
/// every acknowledged revocation), `openssl ocsp` of one revoked certificate over HTTP.
async fn openssl_checks(d: &Daemon, ops: &Creds, snap: &Snapshot) {
    if !tools::require_openssl() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let ch = ops.connect().await.expect("ops connects");
    let chain = v1::revocation_client::RevocationClient::new(ch.clone())
        .get_ca_chain(v1::GetCaChainRequest {})
        .await
        .expect("GetCaChain")
        .into_inner()
        .certificates_der;
    assert!(chain.len() >= 2, "chain has root and issuer");
    let write = |name: &str, data: String| {
        std::fs::write(dir.path().join(name), data).expect("write temp file");
    };
    write("root.pem", tools::pem("CERTIFICATE", &chain[0]));
    write("issuer.pem", tools::pem("CERTIFICATE", &chain[1]));
    write(
        "ca.pem",
        tools::pem("CERTIFICATE", &chain[0]) + &tools::pem("CERTIFICATE", &chain[1]),
    );
    let mut files = Vec::new();
    for (serial, issued) in &snap.issued {
        let name = format!("{serial}.pem");
        write(&name, tools::pem("CERTIFICATE", &issued.der));
        files.push(name);
    }
    let mut args = vec!["verify", "-CAfile", "root.pem", "-untrusted", "issuer.pem"];
    args.extend(files.iter().map(String::as_str));
    let out = openssl(dir.path(), &args);
    let t = text(&out);
    assert!(
        out.status.success(),
        "openssl verify failed:\n{}",
        tail(&t, 40)
    );
    let ok = t.lines().filter(|l| l.ends_with(": OK")).count();
    assert_eq!(ok, files.len(), "openssl verify: {}", tail(&t, 40));

    // A fresh CRL: signed by the issuer, every acknowledged revocation on it.
    let crl = v1::admin_client::AdminClient::new(ch.clone())
        .max_decoding_message_size(64 << 20)
        .publish_crl(v1::PublishCrlRequest::default())
        .await
        .expect("PublishCrl")
        .into_inner();
    std::fs::write(dir.path().join("crl.der"), &crl.der).expect("write CRL");
    let out = openssl(
        dir.path(),
        &[
            "crl", "-inform", "DER", "-in", "crl.der", "-CAfile", "ca.pem", "-text", "-noout",
        ],
    );
    let t = text(&out);
    assert!(
        out.status.success() && t.contains("verify OK"),
        "openssl crl:\n{}",
        tail(&t, 40)
    );
    let listed: HashSet<String> = t
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Serial Number:"))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    for s in &snap.revoked {
        assert!(listed.contains(s), "openssl crl: revoked {s} not listed");
    }

    // OCSP over HTTP for one revoked certificate.
    if let Some(serial) = snap.revoked.iter().next() {
        let url = format!("http://{}/ocsp", d.http);
        let leaf = format!("{serial}.pem");
        let out = openssl(
            dir.path(),
            &[
                "ocsp",
                "-issuer",
                "issuer.pem",
                "-cert",
                &leaf,
                "-url",
                &url,
                "-CAfile",
                "ca.pem",
            ],
        );
        let t = text(&out);
        assert!(
            out.status.success()
                && t.contains("Response verify OK")
                && t.contains(&format!("{leaf}: revoked")),
            "openssl ocsp:\n{t}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// The test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_write() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("crash test seed: {seed} (replay with CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    // The checks make hundreds of calls per restart as one caller: lift the per-caller rate.
    // This test is about durability, not bundle strength: the PKCS#12 KDFs at the default
    // 100,000 iterations would dominate each redemption and leave too little load between
    // kills on a busy CI machine, so its bundles use the former 2,048.
    let policy_dir = tempfile::tempdir().expect("temp dir");
    let policy = policy_dir.path().join("policy.toml");
    let mut text =
        String::from("[limits]\nrate_per_caller_per_second = 100000\nrate_burst = 100000\n");
    for profile in ["windows", "windows-legacy", "macos", "ios", "android"] {
        text.push_str(&format!("[keystore.{profile}]\niterations = 2048\n"));
    }
    std::fs::write(&policy, text).expect("write policy");
    let mut d = tokio::task::block_in_place(|| {
        Daemon::start_with(DaemonOptions {
            policy: Some(policy),
            ..Default::default()
        })
    })
    .expect("daemon starts");
    let portal = Creds::of(&d, "portal");
    let ops = Creds::of(&d, "ops");

    let shared = Arc::new(Shared {
        ledger: Mutex::new(Ledger::default()),
        live: Liveness {
            up: AtomicBool::new(true),
            epoch: AtomicU64::new(0),
        },
        stop: AtomicBool::new(false),
    });
    let mut tasks = Vec::new();
    for id in 0..REDEEMERS {
        tasks.push(tokio::spawn(redeemer(id, portal.clone(), shared.clone())));
    }
    tasks.push(tokio::spawn(revoker(portal.clone(), shared.clone(), seed)));

    let mut state = CheckState::default();
    for kill in 0..KILLS {
        let delay = rng.gen_range(100..=600);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        shared.live.up.store(false, Ordering::SeqCst);
        shared.live.epoch.fetch_add(1, Ordering::SeqCst);
        tokio::task::block_in_place(|| {
            d.kill();
            d.start_again()
        })
        .unwrap_or_else(|e| panic!("restart after kill {kill} failed: {e}"));
        shared.live.epoch.fetch_add(1, Ordering::SeqCst);
        shared.live.up.store(true, Ordering::SeqCst);
        let snap = snapshot(&shared, false, &mut rng);
        let counts = (snap.issued.len(), snap.revoked.len());
        check(&d, &ops, &shared, &mut state, snap).await;
        println!(
            "kill {:2} after {delay} ms: {} certificates, {} revocations acknowledged, CRL {} ({:.1} s)",
            kill + 1,
            counts.0,
            counts.1,
            state.max_crl_number,
            started.elapsed().as_secs_f64()
        );
    }

    shared.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("client task");
    }
    let snap = snapshot(&shared, true, &mut rng);
    check(&d, &ops, &shared, &mut state, snap.clone()).await;
    openssl_checks(&d, &ops, &snap).await;

    let data_dir = d.data_dir.display().to_string();
    let (code, out, err) =
        tokio::task::block_in_place(|| d.cli(&["audit", "verify", "--data-dir", &data_dir]))
            .expect("run audit verify");
    assert_eq!(code, 0, "audit verify: {out}{err}");
    assert!(out.contains("audit log OK"), "audit verify: {out}{err}");

    let l = shared.ledger();
    println!(
        "seed {seed}: {KILLS} SIGKILLs, {} tickets, {} redemptions, {} revocations acknowledged; \
         {} redeemed but unacknowledged; {} calls failed in kill windows; {:.1} s",
        l.tickets.len(),
        l.issued.len(),
        l.revoked.len(),
        l.redeemed_unseen,
        l.excused_errors,
        started.elapsed().as_secs_f64()
    );
    assert!(
        l.unexpected.is_empty(),
        "client calls failed while the daemon was up:\n{}",
        l.unexpected.join("\n")
    );
    assert!(
        l.issued.len() >= 2 * KILLS,
        "too little load: {} redemptions",
        l.issued.len()
    );
    assert!(
        l.revoked.len() >= KILLS,
        "too few revocations: {}",
        l.revoked.len()
    );
    assert!(
        state.crl_lagging.is_empty(),
        "the daemon's own CRL missed acknowledged revocations after a restart (DESIGN §5: \
         republished within a second of each revocation):\n{}",
        state.crl_lagging.join("\n")
    );
}

/// DESIGN §5 promises a revocation reaches the CRL within a second (batched). A SIGKILL right
/// after an acknowledged revocation, inside the batching window, must not leave the CRL behind
/// for good: after the restart the daemon's own CRL (no `PublishCrl`) lists it within a second
/// or two, with no further revocation to nudge it. (The load test above cannot see this: its
/// next revocation republishes anyway.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_acknowledged_inside_the_batch_window_reaches_the_crl_after_a_crash() {
    let policy_dir = tempfile::tempdir().expect("temp dir");
    let policy = policy_dir.path().join("policy.toml");
    // The longest window the policy allows, so the kill surely lands inside it.
    std::fs::write(&policy, "[crl]\nbatch_window_ms = 999\n").expect("write policy");
    let mut d = tokio::task::block_in_place(|| {
        Daemon::start_with(DaemonOptions {
            policy: Some(policy),
            ..Default::default()
        })
    })
    .expect("daemon starts");
    let mut enr = d.enrollment("portal").await.expect("portal connects");
    let mut serials = Vec::new();
    for n in 0..2 {
        let t = enr
            .create_ticket(sample_ticket_request(900 + n, v1::TargetOs::Windows))
            .await
            .expect("CreateTicket")
            .into_inner();
        let r = enr
            .redeem_ticket(v1::RedeemTicketRequest {
                number: t.number,
                password: t.password,
                os: 0,
                keystore_profile: String::new(),
            })
            .await
            .expect("RedeemTicket")
            .into_inner();
        serials.push(r.serial);
    }
    let mut rev = d.revocation("portal").await.expect("portal connects");
    let before = rev
        .get_crl(v1::GetCrlRequest::default())
        .await
        .expect("GetCrl")
        .into_inner();
    let mut certs = d.certificates("portal").await.expect("portal connects");
    certs
        .revoke(v1::RevokeRequest {
            reason: v1::RevocationReason::Superseded as i32,
            invalidity_date: None,
            target: Some(v1::revoke_request::Target::Serial(serials[0].clone())),
        })
        .await
        .expect("Revoke");
    // Acknowledged; the batched republication is still waiting out its window.
    tokio::task::block_in_place(|| {
        d.kill();
        d.start_again()
    })
    .expect("restart");

    let mut rev = d.revocation("gateway").await.expect("gateway connects");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let crl = rev
            .get_crl(v1::GetCrlRequest::default())
            .await
            .expect("GetCrl after restart")
            .into_inner();
        assert!(crl.number >= before.number, "CRL number went back");
        let (on_crl, _) = crl_contents(&crl.der);
        if on_crl.contains(&serials[0]) {
            assert!(
                !on_crl.contains(&serials[1]),
                "only the revoked serial is listed"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "3 s after the restart CRL {} still lacks the revocation acknowledged before the \
             crash; log:\n{}",
            crl.number,
            tail(&d.log(), 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publications race: the background publisher (after revocations) and `PublishCrl` calls
/// reserve CRL numbers and save CRLs concurrently. None may fail, every answer must carry a
/// distinct number, and the saved CRL never goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_crl_publications_all_succeed() {
    let d = tokio::task::block_in_place(Daemon::start).expect("daemon starts");
    let admin = d.admin("ops").await.expect("ops connects");
    let calls = (0..24).map(|_| {
        let mut a = admin.clone();
        async move { a.publish_crl(v1::PublishCrlRequest::default()).await }
    });
    let mut numbers = Vec::new();
    for r in futures::future::join_all(calls).await {
        match r {
            Ok(c) => numbers.push(c.into_inner().number),
            Err(e) => panic!(
                "concurrent PublishCrl failed: {e:?}\nlog:\n{}",
                tail(&d.log(), 20)
            ),
        }
    }
    let distinct: HashSet<u64> = numbers.iter().copied().collect();
    assert_eq!(distinct.len(), numbers.len(), "numbers {numbers:?}");
    let latest = d
        .revocation("gateway")
        .await
        .expect("gateway connects")
        .get_crl(v1::GetCrlRequest::default())
        .await
        .expect("GetCrl")
        .into_inner();
    assert_eq!(
        Some(&latest.number),
        numbers.iter().max(),
        "the newest CRL is served"
    );
}
