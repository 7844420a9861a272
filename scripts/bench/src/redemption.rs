//! Benchmark 1: ticket redemption (key, certificate, PKCS#12) through gRPC + mTLS, beside the
//! openssl CLI pipeline easy-rsa-style scripts run per bundle and the bare in-process crypto
//! floor of the same bundle.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ca_daemon::issue::{self, CertUrls, LeafRequest};
use ca_daemon::pkcs12::{self, BundleInput, MobileconfigInput};
use ca_daemon::pki::{self, LoadedPki};
use pki_policy::Policy;
use pki_policy::domain::{Device, Enrollee, Facility, Person, TargetOs};
use pki_proto::v1;

use crate::common::{self, PemPki};
use crate::error::{BenchError, Result, io};
use crate::stats::{self, Round, Summary};
use crate::{Mode, Section};

/// A profile measured: the OS whose default keystore profile the bundle uses, and the
/// matching `openssl pkcs12 -export` flags.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    /// Name in the report.
    pub name: &'static str,
    /// The OS (its default keystore profile).
    pub os: TargetOs,
    /// `-keypbe`.
    pub keypbe: &'static str,
    /// `-certpbe`.
    pub certpbe: &'static str,
    /// `-macalg`.
    pub macalg: &'static str,
    /// `-iter` (both bags and the MAC, as the keystore profile has it).
    pub iter: u32,
    /// A 3DES profile (target: ≥ 30× openssl).
    pub triple_des: bool,
}

/// windows = PBES2/AES-256 + HMAC-SHA256, 10,000 iterations; ios = 3DES + HMAC-SHA1, 2048.
pub const PROFILES: [Profile; 2] = [
    Profile {
        name: "windows",
        os: TargetOs::Windows,
        keypbe: "AES-256-CBC",
        certpbe: "AES-256-CBC",
        macalg: "sha256",
        iter: 10_000,
        triple_des: false,
    },
    Profile {
        name: "ios",
        os: TargetOs::Ios,
        keypbe: "PBE-SHA1-3DES",
        certpbe: "PBE-SHA1-3DES",
        macalg: "sha1",
        iter: 2048,
        triple_des: true,
    },
];

impl Profile {
    /// The environment `bundle.sh` reads: the PEM files, where to write, and this profile's
    /// PKCS#12 algorithms and iteration count.
    fn bundle_env(&self, pem: &PemPki, out: &Path) -> [(&'static str, std::ffi::OsString); 6] {
        [
            ("PEMDIR", pem.dir.clone().into_os_string()),
            ("OUTDIR", out.as_os_str().to_owned()),
            ("KEYPBE", self.keypbe.into()),
            ("CERTPBE", self.certpbe.into()),
            ("MACALG", self.macalg.into()),
            ("ITER", self.iter.to_string().into()),
        ]
    }
}

fn proto_os(os: TargetOs) -> v1::TargetOs {
    match os {
        TargetOs::Windows => v1::TargetOs::Windows,
        TargetOs::Macos => v1::TargetOs::Macos,
        TargetOs::Android => v1::TargetOs::Android,
        TargetOs::Ios => v1::TargetOs::Ios,
    }
}

/// The sample enrollee number `n` (same data as `integration::sample_ticket_request`).
pub fn enrollee(n: usize, os: TargetOs) -> Enrollee {
    Enrollee {
        facility: Facility {
            id: format!("F{:03}", n % 7),
            name: "みよし訪問看護ステーション".into(),
            prefecture: "愛知県".into(),
            city: "みよし市".into(),
            kind: "訪問看護".into(),
        },
        person: Person {
            id: format!("P{n:05}"),
            family_name: "山田".into(),
            given_name: "花子".into(),
            family_name_kana: "ヤマダ".into(),
            given_name_kana: "ハナコ".into(),
            job: "看護師".into(),
            email: "hanako@example.jp".into(),
        },
        device: Device {
            id: format!("D{n:05}"),
            os,
            remark: "個人端末".into(),
        },
    }
}

/// A real leaf certificate whose DER stands in for every synthetic record of the scale bench.
#[derive(Debug, Clone)]
pub struct LeafTemplate {
    /// DER.
    pub der: Vec<u8>,
    /// notBefore.
    pub not_before: time::OffsetDateTime,
    /// notAfter.
    pub not_after: time::OffsetDateTime,
}

fn urls(pki: &LoadedPki, issuer_id: &str) -> CertUrls {
    CertUrls {
        crl: pki::crl_url(&pki.url_base, issuer_id),
        ocsp: pki::ocsp_url(&pki.url_base),
        ca_issuers: pki::ca_issuers_url(&pki.url_base, issuer_id),
    }
}

/// Issues one leaf with the active issuer (for [`LeafTemplate`]).
pub fn floor_leaf(pki: &LoadedPki, policy: &Policy) -> Result<LeafTemplate> {
    let issuer = pki
        .active_issuer()
        .ok_or_else(|| BenchError::Failed("no active issuer".into()))?;
    let profile = policy
        .cert_profile(None)
        .map_err(|e| BenchError::Failed(format!("cert profile: {e}")))?;
    let leaf = issue::issue_leaf(&LeafRequest {
        enrollee: &enrollee(0, TargetOs::Ios),
        profile,
        issuer_cert_der: &issuer.cert_der,
        issuer_key: &issuer.key,
        issuer_not_after: issuer.not_after,
        urls: &urls(pki, &issuer.id),
        now: time::OffsetDateTime::now_utc(),
    })
    .map_err(|e| BenchError::Failed(format!("issue_leaf: {e}")))?;
    Ok(LeafTemplate {
        der: leaf.der,
        not_before: leaf.not_before,
        not_after: leaf.not_after,
    })
}

/// One bundle exactly as the daemon's redemption builds it, minus gRPC, the store and the
/// ticket check: P-256 key, signed and linted leaf, PKCS#12 (and the .mobileconfig when the
/// keystore profile asks for one).
pub fn floor_bundle(pki: &LoadedPki, policy: &Policy, os: TargetOs, n: usize) -> Result<usize> {
    floor_bundle_leaf(pki, policy, os, n).map(|(_, size)| size)
}

/// [`floor_bundle`], also returning the leaf (for the store's record) and the keystore profile.
fn floor_bundle_leaf(
    pki: &LoadedPki,
    policy: &Policy,
    os: TargetOs,
    n: usize,
) -> Result<((issue::IssuedLeaf, String), usize)> {
    let issuer = pki
        .active_issuer()
        .ok_or_else(|| BenchError::Failed("no active issuer".into()))?;
    let keystore = policy
        .keystore_for(os, None)
        .map_err(|e| BenchError::Failed(format!("keystore profile: {e}")))?;
    let profile = policy
        .cert_profile(None)
        .map_err(|e| BenchError::Failed(format!("cert profile: {e}")))?;
    let enrollee = enrollee(n, os);
    let urls = urls(pki, &issuer.id);
    let leaf = issue::issue_leaf(&LeafRequest {
        enrollee: &enrollee,
        profile,
        issuer_cert_der: &issuer.cert_der,
        issuer_key: &issuer.key,
        issuer_not_after: issuer.not_after,
        urls: &urls,
        now: time::OffsetDateTime::now_utc(),
    })
    .map_err(|e| BenchError::Failed(format!("issue_leaf: {e}")))?;
    let chain = vec![issuer.cert_der.clone(), pki.root_cert_der.clone()];
    let friendly = format!(
        "{} ({})",
        enrollee.person.display_name(),
        enrollee.facility.name
    );
    let pfx = pkcs12::build_pfx(
        keystore,
        &BundleInput {
            key_pkcs8: &leaf.key_pkcs8,
            leaf_der: &leaf.der,
            chain_der: &chain,
            friendly_name: &friendly,
            password: "12345678",
        },
    )
    .map_err(|e| BenchError::Failed(format!("build_pfx: {e}")))?;
    let mut size = pfx.len();
    if keystore.mobileconfig {
        let mc = pkcs12::build_mobileconfig(&MobileconfigInput {
            pfx: &pfx,
            pfx_file_name: "bundle.p12",
            profile: keystore,
            issuer_der: &issuer.cert_der,
            root_der: &pki.root_cert_der,
            root_name: "ケアネット 端末ルートCA",
            display_name: &enrollee.person.display_name(),
            organization: &enrollee.facility.name,
            serial_hex: &leaf.serial_hex,
            device_identity: &ca_daemon::renewal::device_identity(&enrollee),
        })
        .map_err(|e| BenchError::Failed(format!("build_mobileconfig: {e}")))?;
        size += mc.len();
    }
    Ok(((leaf, keystore.name.clone()), size))
}

/// Runs `op(0..count)` on `threads` threads (each takes the next index) and times each call.
pub(crate) fn timed_round(
    threads: usize,
    count: usize,
    op: impl Fn(usize) -> Result<()> + Sync,
) -> Result<Round> {
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let results: Vec<Result<Vec<Duration>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut lat = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            return Ok(lat);
                        }
                        let t0 = Instant::now();
                        op(i)?;
                        lat.push(t0.elapsed());
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(BenchError::Failed("bench thread panicked".into())))
            })
            .collect()
    });
    let wall = start.elapsed();
    let mut latencies = Vec::with_capacity(count);
    for r in results {
        latencies.extend(r?);
    }
    Ok(Round {
        ops: latencies.len(),
        wall,
        latencies,
    })
}

/// `count` floor bundles on `threads` threads.
pub fn floor_round(
    pki: &LoadedPki,
    policy: &Policy,
    os: TargetOs,
    threads: usize,
    count: usize,
) -> Result<Round> {
    timed_round(threads, count, |i| {
        floor_bundle(pki, policy, os, i).map(drop)
    })
}

/// The floor plus the store's part of a redemption, in-process on `threads` threads: read the
/// ticket, build the same bundle, commit the redemption durably (the daemon's `SledStore`
/// transaction and group commit). What is left between this and the daemon is gRPC, TLS,
/// HTTP/2, tokio hand-offs and the OCSP pre-signing. `tickets` come from
/// [`crate::scale::seed_ticket`]; `first` is the enrollee number of `tickets[0]`.
pub fn floor_store_round(
    pki: &LoadedPki,
    policy: &Policy,
    os: TargetOs,
    threads: usize,
    store: &ca_daemon::store::SledStore,
    tickets: &[ca_daemon::store::TicketRecord],
    first: usize,
) -> Result<Round> {
    use ca_daemon::store::Store as _;
    let issuer_id = pki
        .active_issuer()
        .map(|i| i.id.clone())
        .ok_or_else(|| BenchError::Failed("no active issuer".into()))?;
    timed_round(threads, tickets.len(), |i| {
        // Read back from the store, as the daemon does before it checks the password.
        let ticket = store
            .ticket(&tickets[i].number)
            .map_err(|e| BenchError::Failed(format!("read ticket: {e}")))?
            .ok_or_else(|| BenchError::Failed("seeded ticket missing".into()))?;
        let ((leaf, keystore), _) = floor_bundle_leaf(pki, policy, os, first + i)?;
        crate::scale::redeem_seeded(
            store,
            &ticket,
            crate::scale::CertParts {
                serial: &leaf.serial_hex,
                issuer_id: &issuer_id,
                der: &leaf.der,
                not_before: leaf.not_before,
                not_after: leaf.not_after,
                os,
                keystore_profile: &keystore,
            },
        )
    })
}

const BUNDLE_SH: &str = r#"#!/usr/bin/env bash
# One PKCS#12 bundle the way easy-rsa-style scripts make it (key, CSR, signed cert, PKCS#12).
# Prints "<start> <end>" (bash $EPOCHREALTIME, no extra process) for the latency figures.
set -euo pipefail
t0=$EPOCHREALTIME
d="$OUTDIR/b$1"
mkdir -p "$d"
serial=$(printf '%x%03x%04x%04x%04x%04x%04x%04x%04x' $((RANDOM % 7 + 1)) $((RANDOM % 4096)) \
  $RANDOM $RANDOM $RANDOM $RANDOM $RANDOM $RANDOM $RANDOM)
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/key.pem" 2>/dev/null
openssl req -new -utf8 -key "$d/key.pem" \
  -subj "/C=JP/O=みよし訪問看護ステーション/OU=看護師/CN=山田 花子" -out "$d/req.csr"
openssl x509 -req -in "$d/req.csr" -CA "$PEMDIR/issuer.pem" -CAkey "$PEMDIR/issuer.key" \
  -set_serial "0x$serial" -days 365 -extfile "$PEMDIR/leaf-ext.cnf" -extensions v3 \
  -out "$d/cert.pem" 2>/dev/null
openssl pkcs12 -export -inkey "$d/key.pem" -in "$d/cert.pem" -certfile "$PEMDIR/chain.pem" \
  -name "山田 花子 (みよし訪問看護ステーション)" -keypbe "$KEYPBE" -certpbe "$CERTPBE" \
  -macalg "$MACALG" -iter "$ITER" -passout pass:12345678 -out "$d/bundle.p12"
rm -rf "$d"
echo "$t0 $EPOCHREALTIME"
"#;

/// Writes `bundle.sh` and the leaf extensions file next to the PEM PKI.
pub fn write_openssl_pipeline(pem: &PemPki) -> Result<()> {
    std::fs::write(pem.path("bundle.sh"), BUNDLE_SH).map_err(io("write bundle.sh"))?;
    let ext = format!(
        "[v3]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n\
         extendedKeyUsage = clientAuth\nsubjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid\nsubjectAltName = URI:urn:pki:device:F001/P00001/D00001\n\
         crlDistributionPoints = URI:{crl}\n\
         authorityInfoAccess = OCSP;URI:{ocsp}, caIssuers;URI:{ca}\n",
        crl = pki::crl_url(&pem.url_base, &pem.issuer_id),
        ocsp = pki::ocsp_url(&pem.url_base),
        ca = pki::ca_issuers_url(&pem.url_base, &pem.issuer_id),
    );
    std::fs::write(pem.path("leaf-ext.cnf"), ext).map_err(io("write leaf-ext.cnf"))
}

/// `count` openssl bundles with `parallel` pipelines at once (`xargs -P`).
pub fn openssl_round(
    pem: &PemPki,
    profile: &Profile,
    parallel: usize,
    count: usize,
) -> Result<Round> {
    let out = tempfile::tempdir_in(&pem.dir).map_err(io("openssl out dir"))?;
    let script = format!(
        "seq 1 {count} | xargs -P {parallel} -n 1 bash {}",
        pem.path("bundle.sh").display()
    );
    let start = Instant::now();
    let o = common::run_tool(
        "openssl pipeline (xargs -P)",
        Command::new("bash")
            .arg("-c")
            .arg(&script)
            .envs(profile.bundle_env(pem, out.path())),
        Duration::from_secs(600),
    )?;
    let wall = start.elapsed();
    let mut latencies = Vec::with_capacity(count);
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let mut it = line.split_whitespace().map(str::parse::<f64>);
        if let (Some(Ok(a)), Some(Ok(b))) = (it.next(), it.next()) {
            latencies.push(Duration::from_secs_f64((b - a).max(0.0)));
        }
    }
    if latencies.len() != count {
        return Err(BenchError::Tool {
            tool: "openssl pipeline".into(),
            detail: format!("{} of {count} bundles reported", latencies.len()),
        });
    }
    Ok(Round {
        ops: count,
        wall,
        latencies,
    })
}

/// Checks one openssl bundle of `profile` with `openssl pkcs12 -info` so the peer really
/// builds what it is said to (algorithms and iteration counts); returns the info text.
fn check_openssl_bundle(pem: &PemPki, profile: &Profile) -> Result<String> {
    let dir = tempfile::tempdir_in(&pem.dir).map_err(io("check dir"))?;
    let keep = format!(
        "sed 's/^rm -rf .*$/cp \"$d\\/bundle.p12\" \"$OUTDIR\\/check.p12\"/' {} > {}/keep.sh && bash {}/keep.sh 1",
        pem.path("bundle.sh").display(),
        dir.path().display(),
        dir.path().display()
    );
    common::run_tool(
        "openssl pipeline",
        Command::new("bash")
            .arg("-c")
            .arg(&keep)
            .envs(profile.bundle_env(pem, dir.path())),
        Duration::from_secs(60),
    )?;
    let o = common::run_tool(
        "openssl pkcs12 -info",
        Command::new("openssl")
            .args([
                "pkcs12",
                "-info",
                "-noout",
                "-passin",
                "pass:12345678",
                "-in",
            ])
            .arg(dir.path().join("check.p12")),
        Duration::from_secs(30),
    )?;
    // -info writes its findings to stderr.
    let text = String::from_utf8_lossy(&o.stderr).to_string();
    let want_mac = format!("MAC: {}, Iteration {}", profile.macalg, profile.iter);
    if !text.to_lowercase().contains(&want_mac.to_lowercase()) {
        return Err(BenchError::Failed(format!(
            "openssl peer bundle for {} does not have {want_mac:?}: {text}",
            profile.name
        )));
    }
    Ok(text)
}

/// One openssl bundle at a time under `hyperfine`: (median ms, mean ms, stddev ms).
fn hyperfine_one(pem: &PemPki, profile: &Profile, runs: usize) -> Result<(f64, f64, f64)> {
    let dir = tempfile::tempdir_in(&pem.dir).map_err(io("hyperfine dir"))?;
    let json = dir.path().join("hyperfine.json");
    common::run_tool(
        "hyperfine",
        Command::new("hyperfine")
            .args(["--style", "none", "--warmup", "2", "--runs"])
            .arg(runs.to_string())
            .arg("--export-json")
            .arg(&json)
            .arg(format!("bash {} 1", pem.path("bundle.sh").display()))
            .envs(profile.bundle_env(pem, dir.path())),
        Duration::from_secs(300),
    )?;
    let text = std::fs::read_to_string(&json).map_err(io("read hyperfine json"))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| BenchError::Failed(format!("hyperfine json: {e}")))?;
    let r = &v["results"][0];
    let ms = |k: &str| r[k].as_f64().unwrap_or(0.0) * 1e3;
    Ok((ms("median"), ms("mean"), ms("stddev")))
}

/// The floor plus the store, in-process, at the floor's thread count.
#[derive(Debug, Clone, Copy)]
struct FloorStore {
    rate: f64,
    cpu_ms: f64,
}

/// CPU per redemption of the daemon process and of this benchmark's client side.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    daemon_ms: f64,
    client_ms: f64,
}

struct Sizes {
    clients: Vec<usize>,
    rounds: usize,
    secs: f64,
    min_ops: usize,
    max_ops: usize,
}

fn sizes(mode: Mode) -> Sizes {
    match mode {
        Mode::Full => Sizes {
            clients: vec![1, 4, 16],
            rounds: 3,
            secs: 3.0,
            min_ops: 40,
            max_ops: 5000,
        },
        Mode::Smoke => Sizes {
            clients: vec![1, 4],
            rounds: 1,
            secs: 0.0,
            min_ops: 4,
            max_ops: 8,
        },
    }
}

fn ops_for(rate: f64, s: &Sizes, at_least: usize) -> usize {
    ((rate * s.secs) as usize).clamp(s.min_ops.max(at_least), s.max_ops.max(at_least))
}

/// Runs the redemption benchmark.
pub async fn run(mode: Mode, work: &Path) -> Result<Section> {
    let s = sizes(mode);
    let cores = common::cores();
    let d = common::start_daemon(work, None)?;
    let pki = common::load_pki(&d.data_dir)?;
    let pem = common::export_pem(&pki, &work.join("pem"))?;
    write_openssl_pipeline(&pem)?;
    let policy = Policy::default_policy();
    let daemon_pid = common::daemon_pid(d.grpc);
    let mut md = String::new();
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut infos = Vec::new();
    let mut next_person = 1u32;

    // `PKI_BENCH_PROFILES=ios` (comma-separated) restricts a run while investigating.
    let only = std::env::var("PKI_BENCH_PROFILES").ok();
    for profile in PROFILES.into_iter().filter(|p| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|n| n.trim() == p.name))
    }) {
        infos.push((profile.name, check_openssl_bundle(&pem, &profile)?));
        let runs = if mode == Mode::Full { 20 } else { 3 };
        let (pem2, p2) = (pem.clone(), profile);
        let (med, mean, sd) = tokio::task::block_in_place(|| hyperfine_one(&pem2, &p2, runs))?;
        md.push_str(&format!(
            "\nopenssl pipeline, {}, one bundle at a time (`hyperfine`, {runs} runs): median {med:.1} ms (mean {mean:.1} ± {sd:.1} ms).\n",
            profile.name
        ));
        // Floor: 1 thread .. cores threads.
        let mut floor = std::collections::BTreeMap::new();
        let mut floor_cpu = std::collections::BTreeMap::new();
        for threads in 1..=cores {
            let (pki_ref, pol) = (&pki, &policy);
            let warm = tokio::task::block_in_place(|| {
                floor_round(pki_ref, pol, profile.os, threads, 4 * threads)
            })?;
            let n = ops_for(warm.rate(), &s, 2 * threads);
            let mut rounds = Vec::new();
            let (mut cpu, mut ops) = (0.0, 0usize);
            for _ in 0..s.rounds {
                let c0 = common::cpu_time("self");
                let r = tokio::task::block_in_place(|| {
                    floor_round(pki_ref, pol, profile.os, threads, n)
                })?;
                if let (Some(a), Some(b)) = (c0, common::cpu_time("self")) {
                    cpu += (b - a).as_secs_f64();
                }
                ops += r.ops;
                rounds.push(r);
            }
            floor.insert(threads, stats::summarize(&rounds));
            floor_cpu.insert(threads, 1e3 * cpu / ops.max(1) as f64);
        }
        // Floor + store (in-process, durable SledStore): where the store's share shows.
        let mut floor_store = std::collections::BTreeMap::new();
        let mut floor_store_cpu = std::collections::BTreeMap::new();
        {
            let store = ca_daemon::store::SledStore::open(
                &work.join(format!("floor-store-{}", profile.name)),
            )
            .map_err(|e| BenchError::Failed(format!("open floor store: {e}")))?;
            let mut first = 0usize;
            for threads in 1..=cores {
                let (pki_ref, pol, st) = (&pki, &policy, &store);
                let fl_rate = floor.get(&threads).map(|f| f.rate).unwrap_or(100.0);
                let n = ops_for(fl_rate, &s, 2 * threads);
                let mut rounds = Vec::new();
                let (mut cpu, mut ops) = (0.0, 0usize);
                for round in 0..=s.rounds {
                    let count = if round == 0 { 4 * threads } else { n };
                    let tickets = tokio::task::block_in_place(|| {
                        (first..first + count)
                            .map(|i| crate::scale::seed_ticket(st, i, i as u64))
                            .collect::<Result<Vec<_>>>()
                    })?;
                    let c0 = common::cpu_time("self");
                    let r = tokio::task::block_in_place(|| {
                        floor_store_round(pki_ref, pol, profile.os, threads, st, &tickets, first)
                    })?;
                    first += count;
                    if round == 0 {
                        continue; // warm-up
                    }
                    if let (Some(a), Some(b)) = (c0, common::cpu_time("self")) {
                        cpu += (b - a).as_secs_f64();
                    }
                    ops += r.ops;
                    rounds.push(r);
                }
                floor_store.insert(threads, stats::summarize(&rounds));
                floor_store_cpu.insert(threads, 1e3 * cpu / ops.max(1) as f64);
            }
        }
        for &c in &s.clients {
            let clients = common::enrollment_clients(&d, c).await?;
            // Warm-up (connections, caches) and calibration, untimed.
            let warm_n = (2 * c).max(8);
            let warm_t =
                common::create_tickets(&d, proto_os(profile.os), next_person, warm_n, 8).await?;
            next_person += warm_n as u32;
            let warm = common::redeem_all(&clients, Arc::new(warm_t)).await?;
            let n = ops_for(warm.rate(), &s, 2 * c);
            let mut rounds = Vec::new();
            let (mut d_cpu, mut c_cpu, mut ops) = (0.0, 0.0, 0usize);
            for _ in 0..s.rounds {
                let t = common::create_tickets(&d, proto_os(profile.os), next_person, n, 8).await?;
                next_person += n as u32;
                let d0 = daemon_pid.as_deref().and_then(common::cpu_time);
                let c0 = common::cpu_time("self");
                let r = common::redeem_all(&clients, Arc::new(t)).await?;
                if let (Some(a), Some(b)) = (d0, daemon_pid.as_deref().and_then(common::cpu_time)) {
                    d_cpu += (b - a).as_secs_f64();
                }
                if let (Some(a), Some(b)) = (c0, common::cpu_time("self")) {
                    c_cpu += (b - a).as_secs_f64();
                }
                ops += r.ops;
                rounds.push(r);
            }
            let daemon = stats::summarize(&rounds);
            let cpu = Cpu {
                daemon_ms: 1e3 * d_cpu / ops.max(1) as f64,
                client_ms: 1e3 * c_cpu / ops.max(1) as f64,
            };
            // openssl at the same parallelism: ~40 ms a bundle, so fewer bundles.
            let per_round = match mode {
                Mode::Full => (8 * c).max(30),
                Mode::Smoke => c.max(2),
            };
            let mut o_rounds = Vec::new();
            for _ in 0..s.rounds {
                let (pem2, p2) = (pem.clone(), profile);
                o_rounds.push(tokio::task::block_in_place(|| {
                    openssl_round(&pem2, &p2, c, per_round)
                })?);
            }
            let openssl = stats::summarize(&o_rounds);
            let ft = c.min(cores);
            let fl = floor.get(&ft).copied().unwrap_or_default();
            let fl_cpu = floor_cpu.get(&ft).copied().unwrap_or(0.0);
            let fs = FloorStore {
                rate: floor_store.get(&ft).map(|f| f.rate).unwrap_or(0.0),
                cpu_ms: floor_store_cpu.get(&ft).copied().unwrap_or(0.0),
            };
            rows.push((profile, c, daemon, openssl, ft, fl, cpu, fl_cpu, fs));
        }
        md.push_str(&floor_table(&profile, &floor));
        md.push_str(&format!(
            "Floor + store, {} (in-process, durable `SledStore`, no gRPC): {}\n",
            profile.name,
            floor_store
                .iter()
                .map(|(t, f)| format!(
                    "{t} thread(s) {:.0} bundles/s (p50 {:.2} ms)",
                    f.rate, f.p50_ms
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    let mut table = String::from(
        "| profile | clients | daemon bundles/s | p50 ms | p99 ms | openssl bundles/s (p50 ms) | daemon ÷ openssl | floor bundles/s (threads) | floor + store bundles/s | daemon ÷ floor |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (p, c, dm, op, ft, fl, _, _, fs) in &rows {
        table.push_str(&format!(
            "| {} | {c} | {:.0} | {:.2} | {:.2} | {:.1} ({:.0}) | {} | {:.0} ({ft}) | {:.0} | {} |\n",
            p.name,
            dm.rate,
            dm.p50_ms,
            dm.p99_ms,
            op.rate,
            op.p50_ms,
            stats::ratio(dm.rate, op.rate),
            fl.rate,
            fs.rate,
            stats::percent(dm.rate, fl.rate),
        ));
        if p.triple_des {
            targets.push(format!(
                "- {}, {c} client{}: daemon ÷ openssl = {} (target ≥ 30×): {}",
                p.name,
                if *c == 1 { "" } else { "s" },
                stats::ratio(dm.rate, op.rate),
                stats::verdict(dm.rate >= 30.0 * op.rate)
            ));
        }
        targets.push(format!(
            "- {}, {c} client{}: daemon ÷ floor({ft} thread{}) = {} (target ≥ 70 %): {}",
            p.name,
            if *c == 1 { "" } else { "s" },
            if *ft == 1 { "" } else { "s" },
            stats::percent(dm.rate, fl.rate),
            stats::verdict(dm.rate >= 0.7 * fl.rate)
        ));
    }
    let mut cpu_table = String::from(
        "\nWhere the CPU goes (CPU time per bundle = user + system time of the process over the \
         timed rounds ÷ bundles; the client is this benchmark's own gRPC side, which shares \
         the cores with the daemon):\n\n\
         | profile | clients | floor CPU ms/bundle | floor + store CPU ms/bundle | daemon CPU ms/bundle | client CPU ms/bundle | daemon ÷ floor CPU | ceiling: daemon ÷ floor at 100 % CPU |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (p, c, _, _, ft, _, cpu, fl_cpu, fs) in &rows {
        // If every core did nothing but this work: rate = threads ÷ CPU per bundle, for the
        // daemon counting its client's share too (both run on these cores).
        let ceiling = (*fl_cpu > 0.0 && cpu.daemon_ms > 0.0)
            .then(|| fl_cpu / (cpu.daemon_ms + cpu.client_ms));
        cpu_table.push_str(&format!(
            "| {} | {c} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |\n",
            p.name,
            fl_cpu,
            fs.cpu_ms,
            cpu.daemon_ms,
            cpu.client_ms,
            stats::ratio(cpu.daemon_ms, *fl_cpu),
            ceiling.map_or("–".to_owned(), |x| format!(
                "{:.0} % ({ft} thread{})",
                100.0 * x,
                if *ft == 1 { "" } else { "s" }
            )),
        ));
    }
    let mut out = String::new();
    out.push_str(&format!(
        "Tickets are created first (untimed), then the RedeemTicket calls are timed: each client \
         has its own mTLS connection and takes the next ticket until none is left. Rates are \
         medians of {} rounds (≈{:.0} s each in the full run), p50/p99 the medians of the rounds' \
         percentiles. The openssl peer runs `bundle.sh` (genpkey P-256, req, x509 -req with the \
         daemon's own issuer key and the same extensions, pkcs12 -export with the profile's \
         algorithms and iteration count) under `xargs -P <clients>`. The floor is the daemon's \
         library doing the same bundle in-process (`issue_leaf` + `build_pfx` + \
         `build_mobileconfig` for ios) on min(clients, {cores}) threads. The daemon runs with \
         the built-in policy except the per-caller rate limit, lifted so that it does not cap \
         the rate.\n\n",
        s.rounds, s.secs
    ));
    out.push_str(&table);
    out.push_str(&cpu_table);
    out.push('\n');
    out.push_str(&md);
    out.push_str("\nTargets (DESIGN.md §9):\n\n");
    out.push_str(&targets.join("\n"));
    out.push_str("\n\nopenssl peer bundles checked with `openssl pkcs12 -info`:\n\n");
    for (name, info) in infos {
        let mac = info
            .lines()
            .filter(|l| {
                l.starts_with("MAC")
                    || l.contains("PBES2")
                    || l.contains("3DES")
                    || l.contains("Triple")
            })
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; ");
        out.push_str(&format!("- {name}: {mac}\n"));
    }
    let ok = !out.contains("MISSED");
    drop(d);
    Ok(Section {
        name: "redemption",
        title: "1. Redemption: ticket → P-256 certificate → PKCS#12, gRPC + mTLS",
        body: out,
        targets_met: ok,
    })
}

fn floor_table(profile: &Profile, floor: &std::collections::BTreeMap<usize, Summary>) -> String {
    let mut t = format!(
        "\nCrypto floor, {} (in-process, no gRPC/store): ",
        profile.name
    );
    let parts: Vec<String> = floor
        .iter()
        .map(|(th, s)| {
            format!(
                "{th} thread(s) {:.0} bundles/s (p50 {:.2} ms)",
                s.rate, s.p50_ms
            )
        })
        .collect();
    t.push_str(&parts.join(", "));
    t.push('\n');
    t
}
