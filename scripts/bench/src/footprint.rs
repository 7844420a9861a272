//! Benchmark 6: footprint. What a certificate costs on disk (encoded records per tree vs
//! sled's files), the daemon's memory with a large store under load (redemptions plus OCSP
//! requests for many distinct certificates, so the pre-signed OCSP cache is exercised), with the
//! former settings (sled page cache 1 GiB, an OCSP cache as large as the load) beside the
//! current defaults, and the size and time of a backup.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ca_daemon::storage::dir_size;
use ca_daemon::store::{CertFilter, SledStore, Store};
use integration::{Daemon, DaemonOptions};
use pki_proto::v1;

use crate::common;
use crate::error::{BenchError, Result, failed, io};
use crate::{Mode, Section};

/// VmRSS / VmHWM of a process, KiB.
fn proc_kib(pid: u32, field: &str) -> u64 {
    common::status_kib(&pid.to_string(), field)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

struct LoadResult {
    label: String,
    rss_start_mib: f64,
    rss_peak_mib: f64,
    rss_end_mib: f64,
    redemptions: usize,
    ocsp: usize,
    secs: f64,
}

/// Starts the daemon on the seeded store with `extra` serve flags and `policy`, then runs
/// `redeem` redemptions (16 clients) while OCSP-asking for every serial of `serials` (2
/// threads, one connection per request), sampling the daemon's RSS every 200 ms.
async fn load(
    label: &str,
    data_dir: &Path,
    policy: &Path,
    extra: Vec<String>,
    redeem: usize,
    request_template: &(Vec<u8>, usize),
    serials: &Arc<Vec<[u8; 16]>>,
) -> Result<LoadResult> {
    let d = Daemon::start_with(DaemonOptions {
        data_dir: Some(data_dir.to_path_buf()),
        policy: Some(policy.to_path_buf()),
        metrics: false,
        extra_args: extra,
        ..DaemonOptions::default()
    })?;
    let pid = d
        .pid()
        .ok_or_else(|| BenchError::Failed("daemon has no pid".into()))?;
    let tickets = common::create_tickets(&d, v1::TargetOs::Ios, 4_000_000, redeem, 8).await?;
    let clients = common::enrollment_clients(&d, 16).await?;
    let rss_start = proc_kib(pid, "VmRSS:");
    let peak = Arc::new(AtomicU64::new(rss_start));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(proc_kib(pid, "VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let start = Instant::now();
    let http = d.http;
    let ocsp_threads: Vec<_> = (0..2)
        .map(|t| {
            let serials = serials.clone();
            let (der, at) = request_template.clone();
            std::thread::spawn(move || -> usize {
                let mut n = 0;
                let mut req = der;
                for s in serials.iter().skip(t).step_by(2) {
                    req[at..at + 16].copy_from_slice(s);
                    if integration::http_request(
                        http,
                        "POST",
                        "/ocsp",
                        Some("application/ocsp-request"),
                        &req,
                    )
                    .is_ok_and(|(c, _)| c == 200)
                    {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let round = common::redeem_all(&clients, Arc::new(tickets)).await?;
    let mut ocsp = 0;
    for t in ocsp_threads {
        ocsp += tokio::task::block_in_place(|| t.join()).unwrap_or(0);
    }
    let secs = start.elapsed().as_secs_f64();
    let rss_end = proc_kib(pid, "VmRSS:");
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    drop(d);
    Ok(LoadResult {
        label: label.to_owned(),
        rss_start_mib: rss_start as f64 / 1024.0,
        rss_peak_mib: peak.load(Ordering::Relaxed).max(rss_end) as f64 / 1024.0,
        rss_end_mib: rss_end as f64 / 1024.0,
        redemptions: round.ops,
        ocsp,
        secs,
    })
}

/// An OCSP request (SHA-1 CertID, no nonce) for a 16-byte serial, and where the serial's bytes
/// sit in it, so other serials of the same length can be patched in.
fn request_template(work: &Path, data_dir: &Path, serial: &[u8; 16]) -> Result<(Vec<u8>, usize)> {
    let pki = common::load_pki(data_dir)?;
    let pem = common::export_pem(&pki, &work.join("footprint-pem"))?;
    drop(pki);
    let out = work.join("footprint-req.der");
    common::run_tool(
        "openssl ocsp -reqout",
        Command::new("openssl")
            .arg("ocsp")
            .arg("-issuer")
            .arg(pem.path("issuer.pem"))
            .arg("-serial")
            .arg(format!("0x{}", hex::encode(serial)))
            .arg("-no_nonce")
            .arg("-reqout")
            .arg(&out),
        Duration::from_secs(30),
    )?;
    let der = std::fs::read(&out).map_err(io("read OCSP request"))?;
    let at = der
        .windows(16)
        .position(|w| w == serial)
        .ok_or_else(|| BenchError::Failed("serial not found in the OCSP request".into()))?;
    Ok((der, at))
}

/// `pki-bench seed`: a dev data dir with `n` seeded certificates, kept (prints its size).
pub fn seed_only(data_dir: &Path, n: usize) -> Result<()> {
    let work = data_dir.with_extension("work");
    std::fs::create_dir_all(&work).map_err(io("create work dir"))?;
    let mut d = common::start_daemon(&work, Some(data_dir.to_path_buf()))?;
    d.stop();
    drop(d);
    let (certs, took) = crate::scale::seed(
        data_dir,
        n,
        Duration::from_secs(3600),
        crate::scale::SEED_THREADS,
    )?;
    // For `PKI_BENCH_FOOTPRINT_FROM` (the footprint benchmark on this data dir).
    std::fs::write(
        data_dir.with_extension("seed-seconds"),
        format!("{:.0}\n", took.as_secs_f64()),
    )
    .map_err(io("write the seed time"))?;
    let store_dir = ca_daemon::pki::Layout::new(data_dir).store_dir();
    println!(
        "seeded {certs} certificates in {:.0} s; store {:.0} MiB",
        took.as_secs_f64(),
        mib(dir_size(&store_dir))
    );
    Ok(())
}

/// Runs the footprint benchmark.
pub async fn run(mode: Mode, work: &Path) -> Result<Section> {
    let (n, budget, redeem, ocsp_serials) = match mode {
        // `PKI_BENCH_FOOTPRINT_CERTS=200000` shrinks the store while investigating (figures
        // per certificate scale; the published run uses the full million).
        Mode::Full => (
            std::env::var("PKI_BENCH_FOOTPRINT_CERTS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1_000_000usize),
            Duration::from_secs(1500),
            20_000,
            100_000,
        ),
        Mode::Smoke => (2_000usize, Duration::from_secs(30), 50, 500),
    };
    let data_dir = work.join("footprint").join("var");
    // `PKI_BENCH_FOOTPRINT_FROM=DIR`: a copy of a data dir made by `pki-bench seed` instead of
    // seeding here (the seed is most of the run's time; the copy is what gets measured).
    let (certs, seed_took) = match std::env::var_os("PKI_BENCH_FOOTPRINT_FROM") {
        Some(from) if mode == Mode::Full => {
            let from = std::path::PathBuf::from(from);
            std::fs::create_dir_all(work.join("footprint")).map_err(io("create work dir"))?;
            let copied = std::process::Command::new("cp")
                .arg("-a")
                .arg(&from)
                .arg(&data_dir)
                .status()
                .map_err(io("cp -a"))?;
            if !copied.success() {
                return Err(BenchError::Failed(format!(
                    "cp -a {} failed",
                    from.display()
                )));
            }
            std::fs::write(work.join("bench-policy.toml"), common::BENCH_POLICY)
                .map_err(io("write bench policy"))?;
            let secs: f64 = std::fs::read_to_string(from.with_extension("seed-seconds"))
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0.0);
            let store = SledStore::open(&ca_daemon::pki::Layout::new(&data_dir).store_dir())
                .map_err(failed("open the copied store"))?;
            let certs = store
                .tree_stats()
                .map_err(failed("tree stats"))?
                .iter()
                .find(|(name, ..)| *name == "certs")
                .map_or(0, |(_, entries, ..)| *entries as usize);
            (certs, Duration::from_secs_f64(secs))
        }
        _ => {
            let mut d = common::start_daemon(work, Some(data_dir.clone()))?;
            d.stop();
            drop(d);
            tokio::task::block_in_place(|| {
                crate::scale::seed(&data_dir, n, budget, crate::scale::SEED_THREADS)
            })?
        }
    };
    let store_dir = ca_daemon::pki::Layout::new(&data_dir).store_dir();
    let disk_before = dir_size(&store_dir);

    // What each tree holds (keys + values as encoded), and serials for the OCSP load.
    let (stats, serials) = tokio::task::block_in_place(|| -> Result<_> {
        let store = SledStore::open(&store_dir).map_err(failed("open store"))?;
        let stats = store.tree_stats().map_err(failed("tree stats"))?;
        let serials: Vec<[u8; 16]> = store
            .list_certificates(&CertFilter::default(), None, ocsp_serials)
            .map_err(failed("list certificates"))?
            .iter()
            .filter_map(|c| hex::decode(&c.serial).ok()?.try_into().ok())
            .collect();
        Ok((stats, serials))
    })?;
    let first = *serials
        .first()
        .ok_or_else(|| BenchError::Failed("no seeded certificate".into()))?;
    let template = tokio::task::block_in_place(|| request_template(work, &data_dir, &first))?;
    let serials = Arc::new(serials);
    let logical: u64 = stats.iter().map(|(_, _, k, v)| k + v).sum();

    let policy_now = work.join("bench-policy.toml");
    let policy_before = work.join("footprint-before-policy.toml");
    std::fs::write(
        &policy_before,
        format!(
            "{}\n[ocsp]\ncache_entries = 10000000\n",
            common::BENCH_POLICY
        ),
    )
    .map_err(io("write policy"))?;
    // `PKI_BENCH_FOOTPRINT_FORMER=0` skips the row with the former settings (its figures are
    // kept in findings.md) when the machine is too busy for two load runs.
    let before = if std::env::var("PKI_BENCH_FOOTPRINT_FORMER").as_deref() == Ok("0") {
        None
    } else {
        Some(
            load(
                "former settings: sled cache 1 GiB, OCSP cache unbounded",
                &data_dir,
                &policy_before,
                vec!["--store-cache-mib".into(), "1024".into()],
                redeem,
                &template,
                &serials,
            )
            .await?,
        )
    };
    let after = load(
        "defaults now: sled cache 128 MiB, OCSP cache 25,000 entries, zstd pages",
        &data_dir,
        &policy_now,
        Vec::new(),
        redeem,
        &template,
        &serials,
    )
    .await?;
    let disk_after_load = dir_size(&store_dir);

    // Backup through the running daemon (the Backup RPC, as `ca-daemon backup` does).
    let d = Daemon::start_with(DaemonOptions {
        data_dir: Some(data_dir.clone()),
        policy: Some(policy_now.clone()),
        ..Default::default()
    })?;
    let out = work.join("footprint.backup");
    let t0 = Instant::now();
    let (code, stdout, stderr) = d.cli(&[
        "backup",
        "--data-dir",
        &data_dir.to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
    ])?;
    let backup_secs = t0.elapsed().as_secs_f64();
    let backup_error = (code != 0).then(|| format!("{stdout}{stderr}").trim().to_owned());
    let backup_bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let daemon_peak_backup = d.pid().map_or(0, |p| proc_kib(p, "VmHWM:")) as f64 / 1024.0;
    drop(d);
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_dir_all(work.join("footprint"));

    let per = |b: u64| b as f64 / certs.max(1) as f64;
    let mut t = format!(
        "A store of {certs} certificates seeded offline as in benchmark 5 ({:.0} s, with zstd \
         pages: the default for new stores): each one a \
         ticket created and redeemed with its audit entries. Bytes per certificate by sled tree \
         (keys + values as encoded, i.e. what the daemon writes), then what sled keeps on \
         disk for them.\n\n\
         | tree | entries | key bytes / cert | value bytes / cert |\n| --- | ---: | ---: | ---: |\n",
        seed_took.as_secs_f64()
    );
    for (name, entries, k, v) in &stats {
        if *entries > 0 {
            t.push_str(&format!(
                "| `{name}` | {entries} | {:.0} | {:.0} |\n",
                per(*k),
                per(*v)
            ));
        }
    }
    t.push_str(&format!(
        "| **all trees** | | | **{:.0}** (keys + values) |\n\n\
         - store on disk after seeding: {:.0} MiB = **{:.0} bytes per certificate, {:.1}× the \
         encoded records** (target ≤ 2×); after the load runs below: {:.0} MiB\n",
        per(logical),
        mib(disk_before),
        per(disk_before),
        disk_before as f64 / logical.max(1) as f64,
        mib(disk_after_load),
    ));
    t.push_str(&format!(
        "\nMemory of the daemon (VmRSS) with this store, under load: {redeem} redemptions (ios, \
         16 clients) while 2 threads send OCSP requests for {} distinct seeded certificates \
         (one connection each; each first request of a serial is a cache miss that signs), \
         the same store and load for every row.\n\n\
         | settings | RSS at start (MiB) | peak RSS (MiB) | RSS at end (MiB) | redemptions | OCSP answers | wall (s) |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        serials.len()
    ));
    if before.is_none() {
        t.push_str(
            "| former settings (sled cache 1 GiB, OCSP cache unbounded) | not re-run here \
             (`PKI_BENCH_FOOTPRINT_FORMER=0`): see the Footprint findings | | | | | |\n",
        );
    }
    for r in before.iter().chain([&after]) {
        t.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {} | {} | {:.0} |\n",
            r.label, r.rss_start_mib, r.rss_peak_mib, r.rss_end_mib, r.redemptions, r.ocsp, r.secs
        ));
    }
    let rss_ok = after.rss_peak_mib <= 512.0;
    let disk_ok = disk_before as f64 <= 2.0 * logical as f64;
    if let Some(e) = &backup_error {
        t.push_str(&format!(
            "\nBackup (`ca-daemon backup`) FAILED after {backup_secs:.1} s: {e}\n"
        ));
    }
    t.push_str(&format!(
        "\nBackup (`ca-daemon backup`, the `Backup` RPC streaming a tar of a consistent \
         snapshot): {:.0} MiB in {backup_secs:.1} s ({:.0} bytes per certificate); daemon peak RSS \
         while serving it: {daemon_peak_backup:.0} MiB.\n\n\
         Targets (issue #13):\n\n\
         - RSS with {certs} certificates under load ≤ 512 MiB: {:.0} MiB peak, {}\n\
         - disk per certificate within 2× of the encoded records: {:.1}×, {}\n",
        mib(backup_bytes),
        per(backup_bytes),
        after.rss_peak_mib,
        crate::stats::verdict(rss_ok),
        disk_before as f64 / logical.max(1) as f64,
        crate::stats::verdict(disk_ok),
    ));
    Ok(Section {
        name: "footprint",
        title: "6. Footprint: disk, memory and backup with a large store",
        body: t,
        targets_met: rss_ok && disk_ok && backup_error.is_none(),
    })
}
