//! Benchmark 7: several daemons on one PostgreSQL (issue #15 item 8), each figure beside the
//! same figure with the embedded sled store in the same run. PostgreSQL is a real server
//! started by the harness (`integration::pg`, with `fsync` on: what production does).
//!
//! - redemption rate and p99 at 16 clients, PostgreSQL store vs sled (target ≥ 60 % of sled);
//! - revocation → the gateway of **every** node refuses the certificate (two nodes, each with
//!   the example gateway following its own node's `WatchCrl`), p99 (target ≤ 1 s);
//! - a CRL with 100,000 revoked entries read from the store, built, signed and saved
//!   (`PublishCrl`), PostgreSQL vs sled (target ≤ 2 s);
//! - restart of a node: spawn until `/healthz` answers 200 (target ≤ 2 s), vs sled.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration::gateway;
use integration::pg::{PgCluster, PgClusterOptions, PgDatabase};
use integration::{Daemon, DaemonOptions};
use pki_proto::v1;
use zeroize::Zeroizing;

use crate::common;
use crate::error::{BenchError, Result, failed, io, rpc};
use crate::reach::{Attempt, DeviceCert, attempt, poll_until_refused};
use crate::stats;
use crate::{Mode, Section};

fn store_args(db: &PgDatabase) -> Vec<String> {
    vec![
        "--store".into(),
        db.url.clone(),
        "--store-password-file".into(),
        db.password_file.display().to_string(),
    ]
}

/// A daemon with the bench policy, on `db` when given (else sled), in `data_dir`.
fn start(work: &Path, data_dir: &Path, db: Option<&PgDatabase>) -> Result<Daemon> {
    let policy = work.join("bench-policy.toml");
    std::fs::write(&policy, common::BENCH_POLICY).map_err(io("write bench policy"))?;
    Ok(Daemon::start_with(DaemonOptions {
        data_dir: Some(data_dir.to_path_buf()),
        policy: Some(policy),
        extra_args: db.map(store_args).unwrap_or_default(),
        ..DaemonOptions::default()
    })?)
}

/// Redemption rounds (ios, the cheapest profile: the store's share is largest) at 16 clients.
async fn redemption(d: &Daemon, per_round: usize, rounds: usize) -> Result<stats::Summary> {
    let clients = common::enrollment_clients(d, 16).await?;
    let mut out = Vec::new();
    for r in 0..rounds {
        let tickets = common::create_tickets(
            d,
            v1::TargetOs::Ios,
            10_000 + (r * per_round) as u32,
            per_round,
            8,
        )
        .await?;
        out.push(common::redeem_all(&clients, Arc::new(tickets)).await?);
    }
    Ok(stats::summarize(&out))
}

/// The store's part of a redemption alone, in-process, `threads` threads: the durable
/// redemption transaction (ticket, certificate, indexes or rows, audit entry) over seeded
/// tickets, through the `Store` trait: sled's group commit against PostgreSQL's commit under
/// the one audit chain's head row lock.
fn store_round(
    store: &dyn ca_daemon::store::Store,
    issuer: &ca_daemon::store::IssuerRecord,
    threads: usize,
    n: usize,
    first: usize,
) -> Result<stats::Round> {
    use rand::Rng as _;
    store
        .put_issuer(
            issuer,
            ca_daemon::store::AuditEvent::new(
                "bench:seed",
                "issuer.state",
                issuer.id.clone(),
                "bench",
            ),
        )
        .map_err(failed("seed issuer"))?;
    let mut tickets = Vec::with_capacity(n);
    for i in 0..n {
        tickets.push(crate::scale::seed_ticket(store, first + i, i as u64)?);
    }
    let der = vec![0x30u8; 700];
    let now = time::OffsetDateTime::now_utc();
    crate::redemption::timed_round(threads, n, |i| {
        let serial: [u8; 16] = rand::thread_rng().r#gen();
        crate::scale::redeem_seeded(
            store,
            &tickets[i],
            crate::scale::CertParts {
                serial: &hex::encode(serial),
                issuer_id: &issuer.id,
                der: &der,
                not_before: now,
                not_after: now + time::Duration::days(365),
                os: pki_policy::domain::TargetOs::Ios,
                keystore_profile: "ios",
            },
        )
    })
}

/// Seeds `n` revocation entries of the active issuer into `d`'s store (through the library,
/// as `store reconcile` would; a sled daemon is stopped for it, sled locks its store), then
/// times `PublishCrl` `rounds` times.
async fn crl_publication(
    d: &mut Daemon,
    n: usize,
    rounds: usize,
    sled: bool,
) -> Result<(f64, usize)> {
    let issuer_id = integration::active_issuer(d).await.id;
    if sled && !d.stop() {
        return Err(BenchError::Failed("sled daemon did not stop".into()));
    }
    let store = d.open_store()?;
    let entries: Vec<ca_daemon::store::RevokedEntry> = crate::crl::entries(n)
        .into_iter()
        .map(|e| ca_daemon::store::RevokedEntry {
            serial: e.serial_hex,
            not_after: time::OffsetDateTime::now_utc() + time::Duration::days(365),
            revocation: ca_daemon::store::Revocation {
                revoked_at: e.revoked_at,
                reason: e.reason,
                invalidity_date: e.invalidity_date,
            },
        })
        .collect();
    let id = issuer_id.clone();
    tokio::task::spawn_blocking(move || {
        for chunk in entries.chunks(5_000) {
            store
                .reinstate_revocations(&id, chunk, "bench:seed")
                .map_err(failed("seed revocations"))?;
        }
        Ok::<_, BenchError>(())
    })
    .await
    .map_err(failed("seed task"))??;
    if sled {
        d.start_again()?;
    }
    let mut admin = d.admin("ops").await?;
    let mut times = Vec::new();
    let mut der_len = 0;
    for _ in 0..rounds {
        let t0 = Instant::now();
        let crl = admin
            .publish_crl(v1::PublishCrlRequest {
                issuer_id: issuer_id.clone(),
            })
            .await
            .map_err(rpc("PublishCrl"))?
            .into_inner();
        times.push(t0.elapsed().as_secs_f64());
        der_len = crl.der.len();
    }
    Ok((stats::median(&times), der_len))
}

/// Revocation reach over two nodes, each with its own gateway: time from the Revoke call (on
/// alternating nodes) until **both** gateways refuse.
async fn reach(nodes: &[&Daemon], n: usize) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let mut gateways = Vec::new();
    for d in nodes {
        gateways.push(crate::reach::start_gateway(d).await?);
    }
    let first = nodes[0];
    let tickets = common::create_tickets(first, v1::TargetOs::Android, 600_000, n, 4).await?;
    let mut enroll = first.enrollment("portal").await?;
    // One client configuration per gateway (each gateway has its own server certificate).
    let mut devices: Vec<Vec<DeviceCert>> = (0..gateways.len()).map(|_| Vec::new()).collect();
    for t in &tickets {
        let r = enroll
            .redeem_ticket(common::redeem_request(t))
            .await
            .map_err(rpc("RedeemTicket"))?
            .into_inner();
        let (key, issuer) = crate::reach::bundle_key_and_issuer(&r, &t.password)?;
        for (g, gw) in gateways.iter().enumerate() {
            let config = gateway::client_config_for_device(
                &gw.server_cert_der(),
                &r.certificate_der,
                &issuer,
                &key,
            )
            .map_err(failed("device client config"))?;
            devices[g].push(DeviceCert {
                serial: r.serial.clone(),
                config: Arc::new(config),
            });
        }
    }
    for (g, gw) in gateways.iter().enumerate() {
        for dc in &devices[g] {
            if attempt(gw.local_addr(), dc.config.clone()).await? != Attempt::Accepted {
                return Err(BenchError::Failed(format!(
                    "certificate {} refused before revocation",
                    dc.serial
                )));
            }
        }
    }
    let mut every = Vec::with_capacity(n);
    let mut each = Vec::with_capacity(n * gateways.len());
    for i in 0..n {
        let revoker = nodes[i % nodes.len()];
        let mut certs = revoker.certificates("portal").await?;
        let t0 = Instant::now();
        certs
            .revoke(v1::RevokeRequest {
                target: Some(v1::revoke_request::Target::Serial(
                    devices[0][i].serial.clone(),
                )),
                reason: v1::RevocationReason::KeyCompromise as i32,
                ..Default::default()
            })
            .await
            .map_err(rpc("Revoke"))?;
        let mut polls = tokio::task::JoinSet::new();
        for (g, gw) in gateways.iter().enumerate() {
            let (addr, cfg) = (gw.local_addr(), devices[g][i].config.clone());
            polls.spawn(async move { poll_until_refused(addr, cfg, t0).await });
        }
        let mut worst = Duration::ZERO;
        while let Some(r) = polls.join_next().await {
            let (took, _) = r.map_err(failed("poller"))??;
            each.push(took);
            worst = worst.max(took);
        }
        every.push(worst);
    }
    for gw in gateways {
        gw.shutdown().await;
    }
    Ok((every, each))
}

/// Runs the cluster benchmark.
pub async fn run(mode: Mode, work: &Path) -> Result<Section> {
    let (per_round, rounds, reach_n, crl_n, restarts) = match mode {
        Mode::Full => (1_000, 3, 50, 100_000, 5),
        Mode::Smoke => (16, 1, 2, 1_000, 1),
    };
    let pg =
        tokio::task::block_in_place(|| PgCluster::start_with(PgClusterOptions { fsync: true }))?;
    let db = pg.create_database()?;
    let sled_dir = work.join("sled").join("var");
    let pg_dir = work.join("pg0").join("var");

    // 0. The store alone (in-process, 16 threads).
    let (store_sled, store_pg) = {
        let seed_dir = work.join("seed").join("var");
        let pki_d = start(work, &seed_dir, None)?;
        drop(pki_d);
        let pki = common::load_pki(&seed_dir)?;
        let active = pki
            .active_issuer()
            .ok_or_else(|| BenchError::Failed("no active issuer".into()))?;
        let issuer = ca_daemon::store::IssuerRecord {
            version: ca_daemon::store::RECORD_VERSION,
            id: active.id.clone(),
            state: ca_daemon::store::IssuerState::Active,
            cert_der: active.cert_der.clone(),
            not_before: active.not_before,
            not_after: active.not_after,
            created_at: time::OffsetDateTime::now_utc(),
        };
        let sdb = work.join("store-alone-sled");
        let sled_store =
            ca_daemon::store::SledStore::open(&sdb).map_err(failed("open sled store"))?;
        let pgdb = pg.create_database()?;
        let password = std::fs::read_to_string(&pgdb.password_file).map_err(io("password"))?;
        let opts = ca_daemon::store::PgOptions::from_url(
            &pgdb.url,
            Some(Zeroizing::new(password.trim_end().to_owned())),
        )
        .map_err(failed("store URL"))?;
        let pg_store = ca_daemon::store::PgStore::connect(&opts).map_err(failed("connect"))?;
        let n = per_round * 2;
        let a = tokio::task::block_in_place(|| store_round(&sled_store, &issuer, 16, n, 0))?;
        let b = tokio::task::block_in_place(|| store_round(&pg_store, &issuer, 16, n, 0))?;
        (a, b)
    };

    // 1. Redemption, sled then PostgreSQL (one daemon each, the other stopped).
    let mut sled = start(work, &sled_dir, None)?;
    let sled_rate = redemption(&sled, per_round, rounds).await?;
    let (sled_crl_s, sled_crl_bytes) = crl_publication(&mut sled, crl_n, 3, true).await?;
    drop(sled);
    let mut node0 = start(work, &pg_dir, Some(&db))?;
    let pg_rate = redemption(&node0, per_round, rounds).await?;

    // 2. Reach over two nodes.
    let node1 = start(work, &pg_dir, Some(&db))?;
    let (every, each) = reach(&[&node0, &node1], reach_n).await?;

    // 3. CRL with 100,000 entries read from PostgreSQL.
    let (pg_crl_s, pg_crl_bytes) = crl_publication(&mut node0, crl_n, 3, false).await?;
    drop(node1);
    drop(node0);

    // 4. Restart of a node (the other one down; the store holds everything above).
    let policy = work.join("bench-policy.toml");
    let mut pg_restart = Vec::new();
    let mut sled_restart = Vec::new();
    let args = store_args(&db);
    for _ in 0..restarts {
        let (d, p, a) = (pg_dir.clone(), policy.clone(), args.clone());
        let t = tokio::task::block_in_place(|| crate::scale::restart_time(&d, &p, &a))?;
        pg_restart.push(t.as_secs_f64() * 1e3);
        let (d, p) = (sled_dir.clone(), policy.clone());
        let t = tokio::task::block_in_place(|| crate::scale::restart_time(&d, &p, &[]))?;
        sled_restart.push(t.as_secs_f64() * 1e3);
    }
    let pg_restart_ms = stats::median(&pg_restart);
    let sled_restart_ms = stats::median(&sled_restart);

    let p = |v: &[Duration], q: f64| stats::percentile_ms(v, q);
    let rate_ok = pg_rate.rate >= 0.6 * sled_rate.rate;
    let reach_p99 = p(&every, 99.0);
    let reach_ok = reach_p99 <= 1000.0;
    let crl_ok = pg_crl_s <= 2.0;
    let restart_ok = pg_restart_ms <= 2000.0;
    let body = format!(
        "A real PostgreSQL 15 (the harness's `initdb` + `pg_ctl`, `fsync` on, on the same two \
         cores), one database; each row beside the embedded sled store in the same run.\n\n\
         | | PostgreSQL store | sled store | PostgreSQL ÷ sled |\n| --- | ---: | ---: | ---: |\n\
         | the store's redemption transaction alone (in-process, 16 threads, {} tickets), per s | {:.0} | {:.0} | {} |\n\
         | its p50 / p99 ms | {:.2} / {:.2} | {:.2} / {:.2} | |\n\
         | redemptions/s through the daemon (ios, 16 clients, {rounds} × {per_round}) | {:.0} | {:.0} | {} |\n\
         | redemption p50 / p99 ms | {:.1} / {:.1} | {:.1} / {:.1} | |\n\
         | CRL with {crl_n} revoked: `PublishCrl` (read from the store, build, sign, save), median of 3, s | {:.2} ({} KiB) | {:.2} ({} KiB) | {} |\n\
         | restart of a node (spawn → `/healthz` 200), median of {restarts}, ms | {:.0} | {:.0} | {} |\n\n\
         Through the daemon most of a redemption is its crypto (key generation, signing and \
         the PKCS#12 KDF at the policy's 100,000 iterations, on the cores the benchmark client \
         and PostgreSQL share); the first row is the store's cost alone (PostgreSQL commits \
         one at a time under the audit chain's head-row lock, each waiting for its WAL flush; \
         sled group-commits). Load average before the run is in the footer: PostgreSQL's own \
         processes compete for the same two cores, so this ratio falls when the machine is \
         busy.\n\n\
         Revocation reach over **two nodes** on the database, each followed by its own example \
         gateway (`integration::gateway`, `WatchCrl` of its node): `Revoke` on the nodes in \
         turn, then handshakes to both gateways until both refuse the certificate ({reach_n} \
         certificates):\n\n\
         | | p50 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: |\n\
         | revoke → every node's gateway refuses | {:.1} | {:.1} | {:.1} |\n\
         | revoke → one gateway refuses (each gateway counted) | {:.1} | {:.1} | {:.1} |\n\n\
         Targets (issue #15):\n\n\
         - redemption rate with PostgreSQL ≥ 60 % of sled's at 16 clients: {}: {}\n\
         - revoke → every node's gateway refuses, p99 {:.0} ms (target ≤ 1 s): {}\n\
         - CRL with {crl_n} revoked read from PostgreSQL, built and signed in {:.2} s (target ≤ 2 s): {}\n\
         - restart of a node {:.0} ms (target ≤ 2 s): {}\n",
        store_pg.ops,
        store_pg.rate(),
        store_sled.rate(),
        stats::percent(store_pg.rate(), store_sled.rate()),
        stats::percentile_ms(&store_pg.latencies, 50.0),
        stats::percentile_ms(&store_pg.latencies, 99.0),
        stats::percentile_ms(&store_sled.latencies, 50.0),
        stats::percentile_ms(&store_sled.latencies, 99.0),
        pg_rate.rate,
        sled_rate.rate,
        stats::percent(pg_rate.rate, sled_rate.rate),
        pg_rate.p50_ms,
        pg_rate.p99_ms,
        sled_rate.p50_ms,
        sled_rate.p99_ms,
        pg_crl_s,
        pg_crl_bytes >> 10,
        sled_crl_s,
        sled_crl_bytes >> 10,
        stats::ratio(pg_crl_s, sled_crl_s),
        pg_restart_ms,
        sled_restart_ms,
        stats::ratio(pg_restart_ms, sled_restart_ms),
        p(&every, 50.0),
        reach_p99,
        p(&every, 100.0),
        p(&each, 50.0),
        p(&each, 99.0),
        p(&each, 100.0),
        stats::percent(pg_rate.rate, sled_rate.rate),
        stats::verdict(rate_ok),
        reach_p99,
        stats::verdict(reach_ok),
        pg_crl_s,
        stats::verdict(crl_ok),
        pg_restart_ms,
        stats::verdict(restart_ok),
    );
    drop(pg);
    Ok(Section {
        name: "cluster",
        title: "7. Several daemons on one PostgreSQL",
        body,
        targets_met: rate_ok && reach_ok && crl_ok && restart_ok,
    })
}
