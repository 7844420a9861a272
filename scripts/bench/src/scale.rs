//! Benchmark 5: redemption rate and restart time with a small and a large store. The store is
//! seeded offline (daemon stopped) through `ca_daemon::store::SledStore` with synthetic
//! tickets redeemed for synthetic certificate records, within a time budget.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ca_daemon::storage::dir_size;
use ca_daemon::store::{
    AuditEvent, CertRecord, RECORD_VERSION, SledStore, Store, TicketRecord, TicketState,
};
use integration::{Daemon, DaemonOptions};
use pki_policy::Policy;
use pki_policy::domain::TargetOs;
use pki_proto::v1;

use crate::common::{self, KillOnDrop};
use crate::error::{BenchError, Result, failed, io};
use crate::stats;
use crate::{Mode, Section};

/// Writer threads while seeding: the store serialises transactions and the bulk load does not
/// wait for flushes, so a few threads (building records while one commits) are enough.
pub const SEED_THREADS: usize = 4;

/// Seeds up to `n` redeemed certificates into the stopped daemon's store in `data_dir`, with
/// `threads` writers (bulk load: one flush at the end), stopping at `budget`. Returns how many were written.
pub fn seed(
    data_dir: &Path,
    n: usize,
    budget: Duration,
    threads: usize,
) -> Result<(usize, Duration)> {
    let pki = common::load_pki(data_dir)?;
    let issuer_id = pki.active_issuer_id.clone();
    let policy = Policy::default_policy();
    // One real leaf; its DER is reused by every record (only the record's serial differs).
    let template = crate::redemption::floor_leaf(&pki, &policy)?;
    drop(pki);
    // Offline bulk load: each record is still one transaction, but writers do not wait for a
    // flush each; one flush at the end makes the whole seed durable before the daemon starts.
    let store = SledStore::open_for_bulk_load(&ca_daemon::pki::Layout::new(data_dir).store_dir())
        .map_err(failed("open store"))?;
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut rng_state: u64 = rand::random();
                    loop {
                        if start.elapsed() > budget {
                            return Ok(());
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(());
                        }
                        if i.is_multiple_of(50_000) && i > 0 {
                            eprintln!(
                                "scale: seeded {i} certificates in {:.0} s",
                                start.elapsed().as_secs_f64()
                            );
                        }
                        rng_state = rng_state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        seed_one(&store, &issuer_id, &template, i, rng_state)?;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(BenchError::Failed("seed thread panicked".into())))
            })
            .collect()
    });
    for r in results {
        r?;
    }
    store.flush_all().map_err(failed("flush seeded store"))?;
    let took = start.elapsed();
    let counts = store
        .certificate_counts(&issuer_id, time::OffsetDateTime::now_utc())
        .map_err(failed("count certificates"))?;
    drop(store);
    Ok((counts.0 as usize, took))
}

fn seed_one(
    store: &SledStore,
    issuer_id: &str,
    t: &crate::redemption::LeafTemplate,
    i: usize,
    r: u64,
) -> Result<()> {
    let ticket = seed_ticket(store, i, r)?;
    let mut serial = [0u8; 16];
    serial[..8].copy_from_slice(&r.to_be_bytes());
    serial[8..].copy_from_slice(&(i as u64).to_be_bytes());
    serial[0] = (serial[0] & 0x7f).max(1);
    let serial = hex::encode(serial);
    redeem_seeded(
        store,
        &ticket,
        CertParts {
            serial: &serial,
            issuer_id,
            der: &t.der,
            not_before: t.not_before,
            not_after: t.not_after,
            os: TargetOs::Ios,
            keystore_profile: "ios",
        },
    )
}

/// What a synthetic certificate record is made of.
pub struct CertParts<'a> {
    /// Serial, lowercase hex.
    pub serial: &'a str,
    /// Issuer id.
    pub issuer_id: &'a str,
    /// Certificate DER.
    pub der: &'a [u8],
    /// notBefore.
    pub not_before: time::OffsetDateTime,
    /// notAfter.
    pub not_after: time::OffsetDateTime,
    /// Device OS.
    pub os: TargetOs,
    /// Keystore profile name.
    pub keystore_profile: &'a str,
}

fn event(action: &str, target: String) -> AuditEvent {
    AuditEvent {
        actor: "bench:seed".into(),
        action: action.into(),
        target,
        detail: "synthetic record for the benchmarks".into(),
    }
}

/// Creates and returns the synthetic ticket number `10_000_000 + i` (enrollee `i`, MAC from
/// `r`).
pub fn seed_ticket(store: &dyn Store, i: usize, r: u64) -> Result<TicketRecord> {
    let now = time::OffsetDateTime::now_utc();
    let number = format!("{:08}", 10_000_000 + i);
    let mut mac = [0u8; 32];
    mac[..8].copy_from_slice(&r.to_le_bytes());
    let ticket = TicketRecord {
        version: RECORD_VERSION,
        number: number.clone(),
        password_mac: mac,
        state: TicketState::Active,
        created_at: now,
        expires_at: now + time::Duration::days(14),
        failed_attempts: 0,
        enrollee: crate::redemption::enrollee(i, TargetOs::Ios),
        cert_profile: "default".into(),
        approved_by: "bench".into(),
        created_by: "bench:seed".into(),
        redeemed_serial: None,
    };
    store
        .create_ticket(&ticket, event("ticket.created", format!("ticket:{number}")))
        .map_err(failed("seed ticket"))?;
    Ok(ticket)
}

/// Redeems `ticket` (made by [`seed_ticket`]) for the certificate `c`: the daemon's
/// redemption transaction (ticket state, certificate, indexes, audit entry).
pub fn redeem_seeded(store: &dyn Store, ticket: &TicketRecord, c: CertParts<'_>) -> Result<()> {
    let now = time::OffsetDateTime::now_utc();
    let enrollee = &ticket.enrollee;
    let cert = CertRecord {
        version: RECORD_VERSION,
        serial: c.serial.to_owned(),
        issuer_id: c.issuer_id.to_owned(),
        der: c.der.to_vec(),
        facility_id: enrollee.facility.id.clone(),
        person_id: enrollee.person.id.clone(),
        device_id: enrollee.device.id.clone(),
        os: c.os,
        keystore_profile: c.keystore_profile.into(),
        ticket_number: ticket.number.clone(),
        not_before: c.not_before,
        not_after: c.not_after,
        issued_at: now,
        revocation: None,
    };
    store
        .redeem_ticket(
            &ticket.number,
            &ticket.password_mac,
            now,
            &cert,
            event("certificate.issued", format!("serial:{}", c.serial)),
        )
        .map_err(failed("seed certificate"))?;
    Ok(())
}

/// Spawn → `/healthz` answers 200, polled every 5 ms; then SIGTERM. `extra`: more `serve`
/// arguments (the cluster benchmark's `--store`).
pub(crate) fn restart_time(data_dir: &Path, policy: &Path, extra: &[String]) -> Result<Duration> {
    let bin = std::env::var_os("CA_DAEMON_BIN")
        .map(PathBuf::from)
        .ok_or_else(|| BenchError::Failed("CA_DAEMON_BIN is not set".into()))?;
    let grpc = common::free_addr()?;
    let http = common::free_addr()?;
    let log = std::fs::File::create(data_dir.with_extension("restart.log")).map_err(io("log"))?;
    let start = Instant::now();
    let child = Command::new(bin)
        .arg("serve")
        .arg("--dev")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--grpc-listen")
        .arg(grpc.to_string())
        .arg("--http-listen")
        .arg(http.to_string())
        .arg("--policy")
        .arg(policy)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(io("spawn ca-daemon"))?;
    let mut guard = KillOnDrop(child);
    loop {
        if integration::http_get(http, "/healthz").is_ok_and(|(c, _)| c == 200) {
            break;
        }
        if let Ok(Some(st)) = guard.0.try_wait() {
            return Err(BenchError::Failed(format!(
                "daemon exited during restart: {st}"
            )));
        }
        if start.elapsed() > Duration::from_secs(120) {
            return Err(BenchError::Failed("daemon not healthy within 120 s".into()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = start.elapsed();
    drop(guard);
    Ok(took)
}

struct Row {
    wanted: usize,
    certs: usize,
    seed_s: f64,
    restart_ms: f64,
    rate: stats::Summary,
    store_mib: f64,
}

/// Runs the scale benchmark.
pub async fn run(mode: Mode, work: &Path) -> Result<Section> {
    let (sizes, budget, rounds, clients, secs) = match mode {
        Mode::Full => (
            vec![1_000usize, 1_000_000],
            Duration::from_secs(480),
            3,
            16,
            3.0,
        ),
        Mode::Smoke => (vec![100usize, 1_000], Duration::from_secs(20), 1, 4, 0.0),
    };
    let mut rows = Vec::new();
    for &n in &sizes {
        let data_dir = work.join(format!("scale-{n}")).join("var");
        // First start creates the dev PKI; stop it to seed the store offline.
        let mut d = common::start_daemon(work, Some(data_dir.clone()))?;
        d.stop();
        drop(d);
        let (certs, took) =
            tokio::task::block_in_place(|| seed(&data_dir, n, budget, SEED_THREADS))?;
        let policy = work.join("bench-policy.toml");
        let mut restarts = Vec::new();
        for _ in 0..rounds.max(1) {
            let dd = data_dir.clone();
            let pp = policy.clone();
            let t = tokio::task::block_in_place(|| restart_time(&dd, &pp, &[]))?;
            restarts.push(t.as_secs_f64() * 1e3);
        }
        let d = Daemon::start_with(DaemonOptions {
            data_dir: Some(data_dir.clone()),
            policy: Some(policy),
            ..Default::default()
        })?;
        let cl = common::enrollment_clients(&d, clients).await?;
        let warm = common::create_tickets(&d, v1::TargetOs::Ios, 3_000_000, 2 * clients, 8).await?;
        let warm = common::redeem_all(&cl, Arc::new(warm)).await?;
        let per = ((warm.rate() * secs) as usize).clamp(2 * clients, 5000);
        let mut rr = Vec::new();
        for k in 0..rounds {
            let t = common::create_tickets(
                &d,
                v1::TargetOs::Ios,
                3_100_000 + (k as u32) * 10_000,
                per,
                8,
            )
            .await?;
            rr.push(common::redeem_all(&cl, Arc::new(t)).await?);
        }
        drop(d);
        rows.push(Row {
            wanted: n,
            certs,
            seed_s: took.as_secs_f64(),
            restart_ms: stats::median(&restarts),
            rate: stats::summarize(&rr),
            store_mib: dir_size(&ca_daemon::pki::Layout::new(&data_dir).store_dir()) as f64
                / (1024.0 * 1024.0),
        });
        let _ = std::fs::remove_dir_all(work.join(format!("scale-{n}")));
    }
    let mut t = format!(
        "Each store is seeded offline through `SledStore` opened for a bulk load ({SEED_THREADS} \
         writer threads; one transaction per write as in the daemon, but no flush per write, one \
         flush at the end; \
         every certificate is a ticket created and redeemed, with its audit entries, exactly \
         the writes a redemption makes), within a {:.0} s budget. Restart = spawn of \
         `ca-daemon serve` → `GET /healthz` answers 200 (polled every 5 ms), median of {rounds}. \
         Redemption: ios profile, {clients} clients, median of {rounds} rounds.\n\n\
         | certificates in the store | seeding (s) | store on disk (MiB) | restart (ms) | redemptions/s | p50 ms | p99 ms |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        budget.as_secs_f64()
    );
    for r in &rows {
        let note = if r.certs < r.wanted {
            format!(" (budget hit; {} wanted)", r.wanted)
        } else {
            String::new()
        };
        t.push_str(&format!(
            "| {}{note} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |\n",
            r.certs, r.seed_s, r.store_mib, r.restart_ms, r.rate.rate, r.rate.p50_ms, r.rate.p99_ms
        ));
    }
    let mut ok = true;
    if let (Some(small), Some(big)) = (rows.first(), rows.last()) {
        let within = big.rate.rate >= 0.8 * small.rate.rate;
        let restart = big.restart_ms <= 2000.0;
        ok = within && restart && big.certs >= big.wanted;
        t.push_str(&format!(
            "\nTargets (DESIGN.md §9), {} vs {} certificates:\n\n\
             - redemption rate {} of the small store's (target: within 20 %): {}\n\
             - restart {:.0} ms (target ≤ 2 s): {}\n",
            big.certs,
            small.certs,
            stats::percent(big.rate.rate, small.rate.rate),
            stats::verdict(within),
            big.restart_ms,
            stats::verdict(restart),
        ));
        if big.certs < big.wanted {
            let rate = big.certs as f64 / big.seed_s.max(1e-9);
            t.push_str(&format!(
                "- the store reached {} certificates, not 1,000,000: seeding ran at {rate:.0} \
                 certificates/s, so 1M would take ≈{:.0} min here; the targets hold only for \
                 the size measured.\n",
                big.certs,
                1_000_000.0 / rate / 60.0
            ));
        }
    }
    Ok(Section {
        name: "scale",
        title: "5. Scale: small vs large store",
        body: t,
        targets_met: ok,
    })
}
