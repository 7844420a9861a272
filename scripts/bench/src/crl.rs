//! Benchmark 3: building and signing a CRL with 10k / 100k / 1M revoked entries with the
//! library (`ca_daemon::crl::build_crl`, each build in its own process so its peak RSS stands
//! alone), beside `openssl ca -gencrl` on the same entries.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ca_daemon::crl::{CrlParams, RevokedEntry};
use pki_policy::domain::RevocationReason;
use rand::{Rng, SeedableRng};
use time::OffsetDateTime;

use crate::common;
use crate::error::{BenchError, Result, failed, io};
use crate::stats;
use crate::{Mode, Section};

/// The reasons cycled through (all of them known to `openssl ca`), and openssl's names.
const REASONS: [(RevocationReason, &str); 5] = [
    (RevocationReason::Unspecified, ""),
    (RevocationReason::KeyCompromise, "keyCompromise"),
    (RevocationReason::AffiliationChanged, "affiliationChanged"),
    (RevocationReason::Superseded, "superseded"),
    (
        RevocationReason::CessationOfOperation,
        "cessationOfOperation",
    ),
];

/// `n` deterministic entries, sorted by serial (as the store's revoked index returns them):
/// random positive 128-bit serials, one revocation a second from 2026-01-01, reasons cycled
/// (unspecified = no reasonCode), an invalidityDate on every keyCompromise entry.
pub fn entries(n: usize) -> Vec<RevokedEntry> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed ^ n as u64);
    let base = time::macros::datetime!(2026-01-01 00:00:00 UTC);
    let mut serials: Vec<[u8; 16]> = (0..n)
        .map(|_| {
            let mut s: [u8; 16] = rng.r#gen();
            s[0] = (s[0] & 0x7f).max(1);
            s
        })
        .collect();
    serials.sort_unstable();
    serials
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let (reason, _) = REASONS[i % REASONS.len()];
            let revoked_at = base + time::Duration::seconds(i as i64);
            RevokedEntry {
                serial_hex: hex::encode(s),
                revoked_at,
                reason,
                invalidity_date: (reason == RevocationReason::KeyCompromise)
                    .then(|| revoked_at - time::Duration::days(1)),
            }
        })
        .collect()
}

fn utc_time(t: OffsetDateTime) -> String {
    format!(
        "{:02}{:02}{:02}{:02}{:02}{:02}Z",
        t.year() % 100,
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn generalized_time(t: OffsetDateTime) -> String {
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Writes the entries of [`entries`]`(n)` as an openssl CA database (`index.txt`).
pub fn write_index(n: usize, out: &Path) -> Result<()> {
    let f = std::fs::File::create(out).map_err(io(format!("create {}", out.display())))?;
    let mut w = std::io::BufWriter::new(f);
    let expiry = "301231000000Z";
    for (i, e) in entries(n).iter().enumerate() {
        let (_, name) = REASONS[i % REASONS.len()];
        let mut rev = utc_time(e.revoked_at);
        // openssl's index: "keyTime,<GeneralizedTime>" is keyCompromise with an invalidityDate.
        match e.invalidity_date {
            Some(inv) => {
                rev.push_str(",keyTime,");
                rev.push_str(&generalized_time(inv));
            }
            None if !name.is_empty() => {
                rev.push(',');
                rev.push_str(name);
            }
            None => {}
        }
        writeln!(
            w,
            "R\t{expiry}\t{rev}\t{}\tunknown\t/CN=x",
            e.serial_hex.to_uppercase()
        )
        .map_err(io("write index.txt"))?;
    }
    w.flush().map_err(io("write index.txt"))
}

/// The child: loads the dev PKI, makes the entries, resets VmHWM, builds and signs, prints
/// `{"secs":…, "hwm_kib":…, "rss_before_kib":…, "der_bytes":…}`.
pub fn child(data_dir: &Path, n: usize, der_out: &Path) -> Result<()> {
    let pki = common::load_pki(data_dir)?;
    let issuer = pki
        .active_issuer()
        .ok_or_else(|| BenchError::Failed("no active issuer".into()))?;
    let idp = ca_daemon::pki::crl_url(&pki.url_base, &issuer.id);
    let entries = entries(n);
    let now = OffsetDateTime::now_utc();
    // Reset VmHWM to the current RSS (Linux ≥ 4.0): the peak below is that of the build, with
    // the entries (the input, as the daemon would hold it) already in memory.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before = common::status_kib("self", "VmRSS:");
    let t0 = Instant::now();
    let der = ca_daemon::crl::build_crl(
        &issuer.cert_der,
        &issuer.key,
        &CrlParams {
            number: 1,
            this_update: now,
            next_update: now + time::Duration::hours(24),
            idp_uri: &idp,
            entries: &entries,
        },
    )
    .map_err(failed("build_crl"))?;
    let secs = t0.elapsed().as_secs_f64();
    let hwm = common::status_kib("self", "VmHWM:");
    std::fs::write(der_out, &der).map_err(io("write CRL"))?;
    println!(
        "{{\"secs\":{secs},\"hwm_kib\":{hwm},\"rss_before_kib\":{rss_before},\"der_bytes\":{}}}",
        der.len()
    );
    Ok(())
}

/// Wall seconds and max RSS (KiB) of a command under `/usr/bin/time -f "%e %M"`, and its stdout.
fn timed(tool: &str, args: &[&std::ffi::OsStr], limit: Duration) -> Result<(f64, u64, String)> {
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "TIME %e %M"]).args(args);
    let start = Instant::now();
    let o = common::run_tool(tool, &mut cmd, limit)?;
    let wall = start.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&o.stderr);
    let rss = err
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("TIME "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| BenchError::Tool {
            tool: "/usr/bin/time".into(),
            detail: format!("no TIME line: {err}"),
        })?;
    Ok((wall, rss, String::from_utf8_lossy(&o.stdout).to_string()))
}

struct Row {
    n: usize,
    build_s: f64,
    child_wall_s: f64,
    hwm_mib: f64,
    rss_before_mib: f64,
    child_max_rss_mib: f64,
    der_mib: f64,
    openssl_s: f64,
    openssl_rss_mib: f64,
}

/// Runs the CRL benchmark.
pub async fn run(mode: Mode, work: &Path) -> Result<Section> {
    let (sizes, rounds): (Vec<usize>, usize) = match mode {
        Mode::Full => (vec![10_000, 100_000, 1_000_000], 3),
        Mode::Smoke => (vec![1_000], 1),
    };
    tokio::task::block_in_place(|| run_blocking(&sizes, rounds, work))
}

fn run_blocking(sizes: &[usize], rounds: usize, work: &Path) -> Result<Section> {
    // A dev PKI made in-process: the same kind of issuer (P-256) the daemon signs with.
    let data_dir = work.join("crl-pki");
    let url_base = "http://127.0.0.1:8080";
    let opts = ca_daemon::pki::InitOptions::dev(&data_dir, url_base).map_err(failed("init"))?;
    ca_daemon::pki::init(&opts).map_err(failed("init dev PKI"))?;
    let pki = common::load_pki(&data_dir)?;
    let pem = common::export_pem(&pki, &work.join("pem"))?;
    let idp = ca_daemon::pki::crl_url(&pki.url_base, &pem.issuer_id);
    let exe = std::env::current_exe().map_err(io("current exe"))?;
    let cnf = work.join("openssl-ca.cnf");
    let db = work.join("index.txt");
    let crlnumber = work.join("crlnumber");
    std::fs::write(
        &cnf,
        format!(
            "[ca]\ndefault_ca = bench\n\n[bench]\ndatabase = {db}\ncrlnumber = {num}\n\
             default_md = sha256\ndefault_crl_days = 1\nunique_subject = no\n\
             crl_extensions = crl_ext\n\n[crl_ext]\nauthorityKeyIdentifier = keyid:always\n\
             issuingDistributionPoint = critical, @idp\n\n[idp]\nfullname = URI:{idp}\n",
            db = db.display(),
            num = crlnumber.display(),
        ),
    )
    .map_err(io("write openssl.cnf"))?;
    std::fs::write(work.join("index.txt.attr"), "unique_subject = no\n")
        .map_err(io("write index.txt.attr"))?;

    let mut rows = Vec::new();
    let mut checks = Vec::new();
    for (k, &n) in sizes.iter().enumerate() {
        write_index(n, &db)?;
        let der = work.join(format!("crl-{n}.der"));
        let mut build = Vec::new();
        let mut child_wall = Vec::new();
        let mut hwm = Vec::new();
        let mut before = Vec::new();
        let mut child_rss = Vec::new();
        let mut der_bytes = 0.0;
        for _ in 0..rounds {
            let n_s = n.to_string();
            let args: Vec<&std::ffi::OsStr> = vec![
                exe.as_os_str(),
                "crl-child".as_ref(),
                "--data-dir".as_ref(),
                data_dir.as_os_str(),
                "--n".as_ref(),
                n_s.as_ref(),
                "--der-out".as_ref(),
                der.as_os_str(),
            ];
            let (wall, rss, out) = timed("pki-bench crl-child", &args, Duration::from_secs(300))?;
            let v: serde_json::Value =
                serde_json::from_str(out.trim()).map_err(failed("crl-child output"))?;
            let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
            build.push(num("secs"));
            hwm.push(num("hwm_kib") / 1024.0);
            before.push(num("rss_before_kib") / 1024.0);
            der_bytes = num("der_bytes");
            child_wall.push(wall);
            child_rss.push(rss as f64 / 1024.0);
        }
        let mut o_secs = Vec::new();
        let mut o_rss = Vec::new();
        let out_pem = work.join(format!("openssl-crl-{n}.pem"));
        for _ in 0..rounds {
            std::fs::write(&crlnumber, "01\n").map_err(io("write crlnumber"))?;
            let (key, cert) = (pem.path("issuer.key"), pem.path("issuer.pem"));
            let args: Vec<&std::ffi::OsStr> = vec![
                "openssl".as_ref(),
                "ca".as_ref(),
                "-batch".as_ref(),
                "-gencrl".as_ref(),
                "-config".as_ref(),
                cnf.as_os_str(),
                "-keyfile".as_ref(),
                key.as_os_str(),
                "-cert".as_ref(),
                cert.as_os_str(),
                "-out".as_ref(),
                out_pem.as_os_str(),
            ];
            let (wall, rss, _) = timed("openssl ca -gencrl", &args, Duration::from_secs(600))?;
            o_secs.push(wall);
            o_rss.push(rss as f64 / 1024.0);
        }
        if k == 0 {
            checks.push(check_both(&der, &out_pem, &pem, n)?);
        }
        rows.push(Row {
            n,
            build_s: stats::median(&build),
            child_wall_s: stats::median(&child_wall),
            hwm_mib: stats::median(&hwm),
            rss_before_mib: stats::median(&before),
            child_max_rss_mib: stats::median(&child_rss),
            der_mib: der_bytes / (1024.0 * 1024.0),
            openssl_s: stats::median(&o_secs),
            openssl_rss_mib: stats::median(&o_rss),
        });
        let _ = std::fs::remove_file(&der);
        let _ = std::fs::remove_file(&out_pem);
    }

    let mut t = format!(
        "Entries: random positive 128-bit serials in serial order, reasons cycled over \
         unspecified (no reasonCode) / keyCompromise (+ invalidityDate) / affiliationChanged / \
         superseded / cessationOfOperation; the same entries written as an openssl `index.txt` \
         (`R` lines). Both CRLs carry AKI, CRL number and a critical IDP, signed by the same P-256 \
         issuer key. Medians of {rounds} runs, each in a fresh process. **build + sign** is \
         `build_crl` alone, timed inside the child, entries already in memory (as the daemon \
         holds them when it reads the revoked index); **peak RSS** is that child's `VmHWM` \
         after resetting it just before the build (so: entries + output + the rest of the \
         process); the child's lifetime max RSS (`/usr/bin/time`, including unsealing the \
         issuer key with Argon2id) is given too. openssl is timed as the whole `openssl ca \
         -gencrl` process (parse `index.txt`, sort, sign, write PEM) under `/usr/bin/time`.\n\n\
         | entries | CRL DER | build + sign (s) | peak RSS during build (MiB; before: entries in memory) | child process wall (s) / max RSS (MiB) | `openssl ca -gencrl` (s) / max RSS (MiB) | openssl ÷ build |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    );
    for r in &rows {
        t.push_str(&format!(
            "| {} | {:.2} MiB | {:.3} | {:.0} (before {:.0}) | {:.2} / {:.0} | {:.2} / {:.0} | {} |\n",
            r.n,
            r.der_mib,
            r.build_s,
            r.hwm_mib,
            r.rss_before_mib,
            r.child_wall_s,
            r.child_max_rss_mib,
            r.openssl_s,
            r.openssl_rss_mib,
            stats::ratio(r.openssl_s, r.build_s),
        ));
    }
    t.push('\n');
    for c in &checks {
        t.push_str(c);
        t.push('\n');
    }
    let mut ok = true;
    if let Some(r) = rows.iter().find(|r| r.n == 1_000_000) {
        let a = r.build_s <= 3.0;
        let b = r.hwm_mib <= 512.0;
        let c = r.openssl_s >= 2.0 * r.build_s;
        let c2 = r.openssl_s >= 2.0 * r.child_wall_s;
        ok = a && b && c;
        t.push_str(&format!(
            "\nTargets (DESIGN.md §9), 1,000,000 entries:\n\n\
             - build + sign {:.2} s (target ≤ 3 s): {}\n\
             - peak RSS {:.0} MiB (target ≤ 512 MiB): {}\n\
             - openssl ÷ build = {} (target ≥ 2×): {}; against our whole child process \
             (making the entries, unsealing the key, writing the DER): {}, {}\n",
            r.build_s,
            stats::verdict(a),
            r.hwm_mib,
            stats::verdict(b),
            stats::ratio(r.openssl_s, r.build_s),
            stats::verdict(c),
            stats::ratio(r.openssl_s, r.child_wall_s),
            stats::verdict(c2),
        ));
    } else {
        t.push_str("\n(The 1,000,000-entry targets are checked in the full run only.)\n");
    }
    Ok(Section {
        name: "crl",
        title: "3. CRL build + sign",
        body: t,
        targets_met: ok,
    })
}

/// Both CRLs verify against the issuer with openssl and list `n` serials.
fn check_both(der: &Path, openssl_pem: &Path, pem: &common::PemPki, n: usize) -> Result<String> {
    let mut counts = Vec::new();
    for (path, form) in [(der, "DER"), (openssl_pem, "PEM")] {
        let o = common::run_tool(
            "openssl crl",
            Command::new("openssl")
                .args(["crl", "-inform", form, "-noout", "-text", "-CAfile"])
                .arg(pem.path("chain.pem"))
                .arg("-in")
                .arg(path),
            Duration::from_secs(120),
        )?;
        let text = String::from_utf8_lossy(&o.stdout);
        let err = String::from_utf8_lossy(&o.stderr);
        if !err.contains("verify OK") {
            return Err(BenchError::Failed(format!(
                "{} does not verify: {err}",
                path.display()
            )));
        }
        counts.push(text.matches("Serial Number:").count());
    }
    if counts.iter().any(|&c| c != n) {
        return Err(BenchError::Failed(format!(
            "CRL entry counts {counts:?}, expected {n}"
        )));
    }
    Ok(format!(
        "Checked at {n} entries: both CRLs verify with `openssl crl -CAfile` and list {n} serials."
    ))
}
