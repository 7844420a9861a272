//! Issue #11, "A CA never forgets a revocation": lost, damaged, restored and full stores, each
//! against the real binary on loopback.
//!
//! - the store deleted → the daemon refuses to start and serves nothing; `store create` then
//!   `store reconcile` bring every revocation back;
//! - the sled file damaged (4 KB overwritten in the middle) → refused, or started only with
//!   every acknowledged revocation on the CRL;
//! - an older backup restored → refused, then `store reconcile` → every revocation back on the
//!   CRL and OCSP (`openssl ocsp`) `revoked`, serials unknown to the store reported, the
//!   audit log verifies against an exported checkpoint;
//! - a CRL that would drop an unexpired entry is never published (health, metric, last good
//!   CRL still served);
//! - disk full on a 40 MB tmpfs (root only; skipped with a message otherwise): RESOURCE_EXHAUSTED
//!   below the low-water mark while revocations go on, UNAVAILABLE for a failed write, health
//!   NOT_SERVING, and an automatic restart (exit 75) once space is back, with nothing
//!   acknowledged lost.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration::{
    Daemon, DaemonOptions, HarnessError, health_status, http_get, redeem_sample,
    sample_ticket_request,
};
use pki_proto::v1;
use tonic::Code;

// ------------------------------------------------------------------------------------------
// helpers

async fn revoke(d: &Daemon, serial: &str) {
    d.certificates("ops")
        .await
        .expect("certificates client")
        .revoke(v1::RevokeRequest {
            target: Some(v1::revoke_request::Target::Serial(serial.to_owned())),
            reason: v1::RevocationReason::KeyCompromise as i32,
            invalidity_date: None,
        })
        .await
        .unwrap_or_else(|e| panic!("Revoke {serial}: {e}"));
}

async fn active_issuer(d: &Daemon) -> String {
    integration::active_issuer(d).await.id
}

/// (CRL number, serials) of a CRL's DER.
fn crl_contents(der: &[u8]) -> (u64, BTreeSet<String>) {
    let (_, crl) = x509_parser::parse_x509_crl(der).expect("a CRL");
    let number = crl
        .crl_number()
        .map(|n| {
            n.to_bytes_be()
                .iter()
                .fold(0u64, |a, b| (a << 8) | u64::from(*b))
        })
        .unwrap_or(0);
    let serials = crl
        .iter_revoked_certificates()
        .map(|rc| {
            let raw = rc.raw_serial();
            let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
            hex::encode(&raw[start..])
        })
        .collect();
    (number, serials)
}

/// The CRL served over HTTP.
fn served_crl(d: &Daemon, issuer: &str) -> (u64, BTreeSet<String>) {
    let (code, body) = http_get(d.http, &format!("/crl/{issuer}.crl")).expect("GET CRL");
    assert_eq!(code, 200, "GET /crl/{issuer}.crl");
    crl_contents(&body)
}

/// Waits until the served CRL lists every serial of `want`.
fn wait_crl_lists(d: &Daemon, issuer: &str, want: &BTreeSet<String>) -> (u64, BTreeSet<String>) {
    let start = Instant::now();
    loop {
        let (n, s) = served_crl(d, issuer);
        if want.is_subset(&s) {
            return (n, s);
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "CRL #{n} never listed {want:?}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a daemon on `data_dir` and expects it to refuse: returns its log.
fn start_refused(data_dir: &Path) -> String {
    match Daemon::start_with(DaemonOptions {
        data_dir: Some(data_dir.to_path_buf()),
        ..DaemonOptions::default()
    }) {
        Ok(d) => panic!(
            "the daemon started on {} but must refuse; log:\n{}",
            data_dir.display(),
            d.log()
        ),
        Err(HarnessError::NotReady(log)) => {
            assert!(log.contains("exited with"), "it exits:\n{log}");
            log
        }
        Err(e) => panic!("unexpected harness error: {e}"),
    }
}

fn start_on(data_dir: &Path, metrics: bool) -> Daemon {
    Daemon::start_with(DaemonOptions {
        data_dir: Some(data_dir.to_path_buf()),
        metrics,
        ..DaemonOptions::default()
    })
    .unwrap_or_else(|e| panic!("daemon starts on {}: {e}", data_dir.display()))
}

/// Runs the CLI (offline commands) and returns (code, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(integration::daemon_bin().expect("daemon binary"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ca-daemon");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cli_ok(args: &[&str]) -> String {
    let (code, out, err) = cli(args);
    assert_eq!(
        code, 0,
        "ca-daemon {args:?}\nstdout:\n{out}\nstderr:\n{err}"
    );
    out
}

fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("store")
}

/// `openssl ocsp` for `serial` against the daemon's responder: "good", "revoked" or "unknown".
fn openssl_ocsp(d: &Daemon, issuer: &str, serial: &str, dir: &Path) -> Option<String> {
    if !integration::tools::require_openssl() {
        return None;
    }
    let (_, issuer_der) = http_get(d.http, &format!("/ca/{issuer}.crt")).expect("issuer cert");
    std::fs::write(
        dir.join("issuer.pem"),
        integration::tools::pem("CERTIFICATE", &issuer_der),
    )
    .expect("write issuer.pem");
    let root = std::fs::read(d.dev_dir().join("root-ca.crt")).expect("root");
    let mut ca = root;
    ca.extend_from_slice(integration::tools::pem("CERTIFICATE", &issuer_der).as_bytes());
    std::fs::write(dir.join("ca.pem"), ca).expect("write ca.pem");
    let out = Command::new("openssl")
        .current_dir(dir)
        .args([
            "ocsp",
            "-issuer",
            "issuer.pem",
            "-serial",
            &format!("0x{serial}"),
            "-url",
            &format!("http://{}/ocsp", d.http),
            "-CAfile",
            "ca.pem",
            "-no_nonce",
        ])
        .output()
        .expect("run openssl ocsp");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "openssl ocsp: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = text
        .lines()
        .find_map(|l| l.split_once(": ").map(|(_, s)| s.trim().to_owned()))
        .unwrap_or_default();
    Some(status)
}

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

// ------------------------------------------------------------------------------------------
// 1. the store deleted

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_store_is_refused_until_reconciled() {
    let mut d = Daemon::start().expect("daemon starts");
    let issuer = active_issuer(&d).await;
    let a = redeem_sample(&d, 1).await;
    revoke(&d, &a.serial).await;
    let want = BTreeSet::from([a.serial.clone()]);
    let (number, _) = wait_crl_lists(&d, &issuer, &want);
    assert!(d.stop(), "daemon stops cleanly");
    let data_dir = d.data_dir.clone();

    std::fs::remove_dir_all(store_dir(&data_dir)).expect("delete the store");
    let log = start_refused(&data_dir);
    assert!(
        log.contains("there is no store") && log.contains("store create"),
        "the refusal says what is missing and how to recover:\n{log}"
    );
    assert!(
        !store_dir(&data_dir).exists(),
        "no silent new empty store was created"
    );

    // The explicit way: an empty store, which is behind the checkpoint, then reconcile.
    let dd = data_dir.display().to_string();
    cli_ok(&["store", "create", "--data-dir", &dd]);
    let log = start_refused(&data_dir);
    assert!(
        log.contains("behind what this CA has already promised")
            && log.contains(&a.serial)
            && log.contains("store reconcile"),
        "the refusal names the missing revocation:\n{log}"
    );
    let out = cli_ok(&["store", "reconcile", "--data-dir", &dd, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["was_behind"], true, "{v}");
    assert_eq!(v["unknown_serials"][0]["serial"], a.serial.as_str(), "{v}");

    let d2 = start_on(&data_dir, false);
    let (n2, s2) = served_crl(&d2, &issuer);
    assert!(s2.contains(&a.serial), "the revocation is back: {s2:?}");
    assert!(n2 >= number, "CRL number never goes back: {n2} < {number}");
    let tmp = tempfile::tempdir().expect("tmp");
    if let Some(status) = openssl_ocsp(&d2, &issuer, &a.serial, tmp.path()) {
        assert_eq!(status, "revoked", "OCSP for a serial the store lost");
    }
}

// ------------------------------------------------------------------------------------------
// 2. the sled file damaged

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_store_is_refused_or_holds_every_revocation() {
    let t0 = Instant::now();
    let mut d = Daemon::start().expect("daemon starts");
    let issuer = active_issuer(&d).await;
    let mut revoked = BTreeSet::new();
    for n in 0..6 {
        let b = redeem_sample(&d, 10 + n).await;
        if n % 2 == 0 {
            revoke(&d, &b.serial).await;
            revoked.insert(b.serial);
        }
    }
    wait_crl_lists(&d, &issuer, &revoked);
    assert!(d.stop(), "daemon stops cleanly");
    eprintln!("issued and revoked in {:?}", t0.elapsed());
    let data_dir = d.data_dir.clone();

    // Overwrite 4 KB in the middle of the sled file's written part (its segments are
    // preallocated: the file's middle may be zeros nobody reads).
    let db = store_dir(&data_dir).join("db");
    let mut bytes = std::fs::read(&db).expect("read db");
    let used = bytes.iter().rposition(|&b| b != 0).unwrap_or(bytes.len());
    let mid = used / 2;
    let end = (mid + 4096).min(bytes.len());
    for (i, b) in bytes[mid..end].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31) ^ 0xa5;
    }
    std::fs::write(&db, &bytes).expect("damage db");

    let started = Instant::now();
    match Daemon::start_with(DaemonOptions {
        data_dir: Some(data_dir.clone()),
        ..DaemonOptions::default()
    }) {
        Err(HarnessError::NotReady(log)) => {
            eprintln!(
                "damaged store refused after {:?}: {}",
                started.elapsed(),
                log.lines()
                    .rev()
                    .find(|l| l.starts_with("error:"))
                    .unwrap_or("")
            );
            assert!(
                log.contains("exited with")
                    && (log.contains("refusing to start") || log.contains("error: store:")),
                "a clear refusal:\n{log}"
            );
            // Recovery as the message says: reconcile (on the damaged store itself here, when
            // it still opens), then every revocation is back.
            let dd = data_dir.display().to_string();
            if log.contains("behind what this CA has already promised") {
                cli_ok(&["store", "reconcile", "--data-dir", &dd]);
                let d2 = start_on(&data_dir, false);
                let (_, s) = served_crl(&d2, &issuer);
                assert!(revoked.is_subset(&s), "after reconcile: {s:?}");
            }
        }
        Err(e) => panic!("harness: {e}"),
        // Started: only because every promise checked out, so the CRL still lists all.
        Ok(d2) => {
            eprintln!(
                "damaged store passed every check after {:?}",
                started.elapsed()
            );
            let (_, s) = wait_crl_lists(&d2, &issuer, &revoked);
            assert!(revoked.is_subset(&s), "{s:?}");
        }
    }
}

// ------------------------------------------------------------------------------------------
// 3. an older backup restored

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_backup_is_refused_then_reconcile_brings_every_revocation_back() {
    let mut d = Daemon::start().expect("daemon starts");
    let issuer = active_issuer(&d).await;
    let tmp = tempfile::tempdir().expect("tmp");
    let a = redeem_sample(&d, 21).await;
    let snapshot = tmp.path().join("ca.snapshot");
    let (code, out, err) = d
        .cli(&[
            "backup",
            "--data-dir",
            &d.data_dir.display().to_string(),
            "--out",
            &snapshot.display().to_string(),
        ])
        .expect("backup");
    assert_eq!(code, 0, "backup: {out}{err}");
    // After the backup: a new certificate, and both revoked.
    let b = redeem_sample(&d, 22).await;
    revoke(&d, &a.serial).await;
    revoke(&d, &b.serial).await;
    let want = BTreeSet::from([a.serial.clone(), b.serial.clone()]);
    let (number, _) = wait_crl_lists(&d, &issuer, &want);
    assert!(d.stop(), "daemon stops cleanly");
    let data_dir = d.data_dir.clone();
    let dd = data_dir.display().to_string();
    let checkpoint = tmp.path().join("checkpoint.json");
    cli_ok(&[
        "audit",
        "checkpoint",
        "--data-dir",
        &dd,
        "--out",
        &checkpoint.display().to_string(),
    ]);

    // The disk died; the backup comes back.
    std::fs::remove_dir_all(store_dir(&data_dir)).expect("lose the store");
    cli_ok(&[
        "restore",
        "--from",
        &snapshot.display().to_string(),
        "--data-dir",
        &dd,
    ]);
    let log = start_refused(&data_dir);
    assert!(
        log.contains("behind what this CA has already promised")
            && log.contains("acknowledged change(s) are missing")
            && log.contains("store reconcile"),
        "refused with what is missing and how to recover:\n{log}"
    );

    let out = cli_ok(&["store", "reconcile", "--data-dir", &dd, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let actions: BTreeSet<(String, String)> = v["reinstated"]
        .as_array()
        .expect("reinstated")
        .iter()
        .map(|x| {
            (
                x["serial"].as_str().unwrap_or_default().to_owned(),
                x["action"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        BTreeSet::from([
            (a.serial.clone(), "revoked".to_owned()),
            (b.serial.clone(), "unknown_to_store".to_owned())
        ]),
        "{v}"
    );
    assert!(v["lost_audit_entries"].as_u64().unwrap_or(0) > 0, "{v}");

    let d2 = start_on(&data_dir, false);
    let (n2, s2) = served_crl(&d2, &issuer);
    assert!(want.is_subset(&s2), "every revocation is back: {s2:?}");
    assert!(n2 >= number, "CRL number {n2} < {number}");
    // A new publication keeps them too.
    let crl = d2
        .admin("ops")
        .await
        .expect("admin")
        .publish_crl(v1::PublishCrlRequest {
            issuer_id: issuer.clone(),
        })
        .await
        .expect("PublishCrl after reconcile")
        .into_inner();
    let (n3, s3) = crl_contents(&crl.der);
    assert!(n3 > number && want.is_subset(&s3), "#{n3}: {s3:?}");
    let st = d2
        .revocation("gateway")
        .await
        .expect("revocation client")
        .check_status(v1::CheckStatusRequest {
            serial: a.serial.clone(),
        })
        .await
        .expect("CheckStatus")
        .into_inner();
    assert_eq!(st.status, v1::certificate_status::Status::Revoked as i32);
    // The serial issued after the backup is unknown to the store, but published as revoked.
    let st = d2
        .revocation("gateway")
        .await
        .expect("revocation client")
        .check_status(v1::CheckStatusRequest {
            serial: b.serial.clone(),
        })
        .await
        .expect("CheckStatus")
        .into_inner();
    assert_eq!(
        st.status,
        v1::certificate_status::Status::Revoked as i32,
        "{st:?}"
    );
    for serial in [&a.serial, &b.serial] {
        if let Some(status) = openssl_ocsp(&d2, &issuer, serial, tmp.path()) {
            assert_eq!(status, "revoked", "OCSP for {serial}");
        }
    }
    // The audit log records the reconciliation; the old checkpoint shows the rewrite.
    let entries = d2
        .admin("ops")
        .await
        .expect("admin")
        .verify_audit(v1::VerifyAuditRequest {
            checkpoint: Vec::new(),
        })
        .await
        .expect("VerifyAudit")
        .into_inner();
    assert!(entries.ok, "{entries:?}");
    let (code, out, err) = d2
        .cli(&[
            "audit",
            "verify",
            "--data-dir",
            &dd,
            "--checkpoint",
            &checkpoint.display().to_string(),
        ])
        .expect("audit verify");
    assert_eq!(
        code, 2,
        "the restored log is not the one the old checkpoint saw:\n{out}{err}"
    );
    assert!(out.contains("checkpoint"), "{out}");
    let fresh = tmp.path().join("fresh.json");
    cli_ok(&[
        "audit",
        "checkpoint",
        "--data-dir",
        &dd,
        "--out",
        &fresh.display().to_string(),
    ]);
    let (code, out, err) = d2
        .cli(&[
            "audit",
            "verify",
            "--data-dir",
            &dd,
            "--checkpoint",
            &fresh.display().to_string(),
        ])
        .expect("audit verify");
    assert_eq!(code, 0, "the current checkpoint verifies:\n{out}{err}");
    let store_log = std::fs::read_to_string(&d2.log_path).unwrap_or_default();
    assert!(
        store_log.contains("audit checkpoint"),
        "checkpoints on the audit target"
    );
}

// ------------------------------------------------------------------------------------------
// 4. the CRL guard

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_that_would_drop_an_unexpired_entry_is_never_published() {
    let mut d = Daemon::start().expect("daemon starts");
    let issuer = active_issuer(&d).await;
    let a = redeem_sample(&d, 31).await;
    revoke(&d, &a.serial).await;
    let want = BTreeSet::from([a.serial.clone()]);
    let (number, _) = wait_crl_lists(&d, &issuer, &want);
    assert!(d.stop(), "daemon stops cleanly");
    let data_dir = d.data_dir.clone();

    // Damage the revocation index only: the certificate still says revoked, so the store
    // passes the start-up check, but a CRL built from it would not list the serial.
    {
        let store =
            ca_daemon::store::SledStore::open(&store_dir(&data_dir)).expect("open stopped store");
        assert!(
            store
                .tamper_remove_revoked_index(&issuer, &a.serial)
                .expect("tamper"),
            "the index entry existed"
        );
    }
    // ...and the CRL kept outside the store is lost too (so the start-up check, which reads
    // the kept CRLs, has nothing to compare with): the store's own last CRL is the promise.
    std::fs::remove_file(
        data_dir
            .join("checkpoint/crls")
            .join(format!("{issuer}.crl")),
    )
    .expect("lose the kept CRL");
    let d2 = start_on(&data_dir, true);
    // The publisher notices the gap at start and tries to republish: refused.
    let start = Instant::now();
    while health_status(&d2, "pki.ca.v1.Revocation").await != NOT_SERVING {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "revocation health never went NOT_SERVING; log:\n{}",
            d2.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let err = d2
        .admin("ops")
        .await
        .expect("admin")
        .publish_crl(v1::PublishCrlRequest {
            issuer_id: issuer.clone(),
        })
        .await
        .expect_err("a CRL without the entry is refused");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&a.serial), "{err:?}");
    let (n2, s2) = served_crl(&d2, &issuer);
    assert_eq!(n2, number, "the last good CRL is still served");
    assert!(s2.contains(&a.serial));
    let (code, _) = http_get(d2.http, "/healthz").expect("healthz");
    assert_eq!(code, 503, "/healthz reports the held-back CRL");
    let (_, metrics) = http_get(d2.metrics.expect("metrics"), "/metrics").expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ca_crl_guard_refusals_total")
                && l.contains(&issuer)
                && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(d2.log().contains("CRL publication refused"));
    // OCSP never says good for it (the store's certificate says revoked anyway).
    let tmp = tempfile::tempdir().expect("tmp");
    if let Some(status) = openssl_ocsp(&d2, &issuer, &a.serial, tmp.path()) {
        assert_eq!(status, "revoked");
    }
    drop(d2);

    // reconcile restores the index entry; then publication works again.
    let dd = data_dir.display().to_string();
    let out = cli_ok(&["store", "reconcile", "--data-dir", &dd, "--json"]);
    assert!(out.contains("index_restored"), "{out}");
    let d3 = start_on(&data_dir, false);
    assert_eq!(health_status(&d3, "pki.ca.v1.Revocation").await, SERVING);
    let crl = d3
        .admin("ops")
        .await
        .expect("admin")
        .publish_crl(v1::PublishCrlRequest {
            issuer_id: issuer.clone(),
        })
        .await
        .expect("PublishCrl")
        .into_inner();
    let (n3, s3) = crl_contents(&crl.der);
    assert!(n3 > number && s3.contains(&a.serial), "#{n3} {s3:?}");
}

// ------------------------------------------------------------------------------------------
// 5. disk full

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

/// Fills the file system of `dir` until `leave` bytes are free (0: until ENOSPC).
fn fill(dir: &Path, name: &str, leave: u64) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(dir.join(name)).expect("filler");
    let chunk = vec![0x5au8; 64 * 1024];
    loop {
        let free = free_bytes(dir);
        if free <= leave || free == 0 {
            break;
        }
        let n = ((free - leave) as usize).min(chunk.len());
        if f.write_all(&chunk[..n])
            .and_then(|()| f.sync_data())
            .is_err()
        {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_is_a_state_and_recovers_by_itself() {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if uid.as_deref().ok() != Some("0") {
        eprintln!(
            "SKIPPED disk_full_is_a_state_and_recovers_by_itself: mounting a tmpfs needs root (run as root, e.g. in .ci/run)"
        );
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "SKIPPED disk_full_is_a_state_and_recovers_by_itself: cannot mount a tmpfs here (no CAP_SYS_ADMIN?)"
        );
        return;
    }
    let _mount = Tmpfs(mnt.clone());
    let policy = tmp.path().join("policy.toml");
    std::fs::write(&policy, "[storage]\nlow_water_mib = 8\n").expect("policy");
    let data_dir = mnt.join("var");
    let mut d = Daemon::start_with(DaemonOptions {
        data_dir: Some(data_dir.clone()),
        policy: Some(policy.clone()),
        metrics: true,
        ..DaemonOptions::default()
    })
    .expect("daemon starts on the tmpfs");
    let issuer = active_issuer(&d).await;
    let mut issued = Vec::new();
    for n in 0..4 {
        issued.push(redeem_sample(&d, 40 + n).await.serial);
    }
    assert_eq!(health_status(&d, "pki.ca.v1.Enrollment").await, SERVING);
    let mut c = d.enrollment("portal").await.expect("portal");
    let pending = c
        .create_ticket(sample_ticket_request(49, v1::TargetOs::Ios))
        .await
        .expect("CreateTicket")
        .into_inner();

    // Below the low-water mark: no new tickets, but revocation and CRLs still work.
    fill(&mnt, "filler-1", 4 << 20);
    let err = c
        .redeem_ticket(v1::RedeemTicketRequest {
            number: pending.number.clone(),
            password: pending.password.clone(),
            os: v1::TargetOs::Unspecified as i32,
            keystore_profile: String::new(),
        })
        .await
        .expect_err("no redemption below the low-water mark");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let err = c
        .create_ticket(sample_ticket_request(50, v1::TargetOs::Ios))
        .await
        .expect_err("refused below the low-water mark");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("storage nearly full"), "{err:?}");
    revoke(&d, &issued[0]).await;
    let mut revoked = BTreeSet::from([issued[0].clone()]);
    wait_crl_lists(&d, &issuer, &revoked);
    let start = Instant::now();
    while health_status(&d, "pki.ca.v1.Enrollment").await != NOT_SERVING {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "enrollment health"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, m) = http_get(d.metrics.expect("metrics"), "/metrics").expect("metrics");
    let m = String::from_utf8_lossy(&m);
    assert!(
        m.contains("ca_storage_free_bytes") && m.contains("ca_store_size_bytes"),
        "{m}"
    );
    assert!(
        m.contains(r#"ca_redemptions_total{value="storage_full"} 1"#),
        "a refusal for room is not counted as a rate limit: {m}"
    );

    // Completely full: a write that fails is UNAVAILABLE, never INTERNAL.
    fill(&mnt, "filler-2", 0);
    let mut failed = false;
    let mut admin = d.admin("ops").await.expect("admin");
    let mut certs = d.certificates("ops").await.expect("certificates");
    for serial in issued.iter().skip(1) {
        let r = certs
            .revoke(v1::RevokeRequest {
                target: Some(v1::revoke_request::Target::Serial(serial.clone())),
                reason: v1::RevocationReason::Superseded as i32,
                invalidity_date: None,
            })
            .await;
        match r {
            // Acknowledged: it must survive.
            Ok(_) => {
                revoked.insert(serial.clone());
            }
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                failed = true;
                break;
            }
        }
    }
    if !failed {
        for _ in 0..50 {
            match admin
                .publish_crl(v1::PublishCrlRequest {
                    issuer_id: issuer.clone(),
                })
                .await
            {
                Ok(_) => continue,
                Err(e) => {
                    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                    failed = true;
                    break;
                }
            }
        }
    }
    assert!(failed, "some write failed on a full disk");
    let start = Instant::now();
    loop {
        let (code, _) = http_get(d.http, "/healthz").expect("healthz");
        if code == 503 && health_status(&d, "pki.ca.v1.Enrollment").await == NOT_SERVING {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "health after the failed write"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let err = c
        .create_ticket(sample_ticket_request(51, v1::TargetOs::Ios))
        .await
        .expect_err("no writes after a failed one");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // CRLs are still served from memory.
    let (code, _) = http_get(d.http, &format!("/crl/{issuer}.crl")).expect("CRL");
    assert_eq!(code, 200);

    // Space back: the daemon restarts by itself (exit 75, systemd's Restart=on-failure).
    std::fs::remove_file(mnt.join("filler-2")).expect("free");
    std::fs::remove_file(mnt.join("filler-1")).expect("free");
    let code = d.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(75), "exit code for a restart; log:\n{}", d.log());
    d.start_again().expect("started again, as systemd would");
    // Nothing acknowledged is lost, and writes work again.
    let mut certs = d.certificates("ops").await.expect("certificates");
    for serial in &issued {
        let c = certs
            .get_certificate(v1::GetCertificateRequest {
                serial: serial.clone(),
            })
            .await
            .expect("acknowledged certificate survives")
            .into_inner();
        assert_eq!(
            c.state == v1::CertificateState::Revoked as i32,
            revoked.contains(serial),
            "{serial}"
        );
    }
    wait_crl_lists(&d, &issuer, &revoked);
    let b = redeem_sample(&d, 52).await;
    assert!(!b.serial.is_empty());
    let r = d
        .enrollment("portal")
        .await
        .expect("portal")
        .redeem_ticket(v1::RedeemTicketRequest {
            number: pending.number,
            password: pending.password,
            os: v1::TargetOs::Unspecified as i32,
            keystore_profile: String::new(),
        })
        .await
        .expect("the refused ticket is still redeemable once space is back");
    assert!(!r.into_inner().serial.is_empty());
    let v = d
        .admin("ops")
        .await
        .expect("admin")
        .verify_audit(v1::VerifyAuditRequest {
            checkpoint: Vec::new(),
        })
        .await
        .expect("VerifyAudit")
        .into_inner();
    assert!(v.ok, "audit chain intact: {v:?}");
    drop(d);
}
