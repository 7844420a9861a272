//! End-to-end tests of enrollment against the real `ca-daemon` binary on loopback (DESIGN §3, §4,
//! §6, §8, §10): every keystore profile's bundle read by openssl, keytool, Python `cryptography`
//! and `plistlib`, the leaf verified by openssl and linted by pkilint; the ticket life cycle
//! (single use under concurrency, lockout, expiry, cancel, one answer for unknown number and wrong
//! password); the mTLS edge and argument validation; no password in the daemon log; and a client
//! written in Python from the `.proto` files.
//!
//! Each test starts its own daemon (about a second) and checks its log for passwords at the end.
//! External tools are required: a missing one fails the test, naming what to install, unless
//! `PKI_ALLOW_MISSING_TOOLS=1` (then that check is skipped with a notice).

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::Command;

use integration::{Daemon, sample_ticket_request, tools};
use pki_proto::v1;
use tonic::transport::Channel;
use tonic::{Code, Status};

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Enrollment = v1::enrollment_client::EnrollmentClient<Channel>;

/// Subject CN the daemon must build from the sample person: "family given".
const SAMPLE_CN: &str = "山田 花子";
const SAMPLE_JOB: &str = "看護師";

/// Every (number, password) a test was given, to check the daemon log at the end.
#[derive(Default)]
struct Issued(Vec<(String, String)>);

impl Issued {
    fn add(&mut self, number: &str, password: &str) {
        self.0.push((number.to_string(), password.to_string()));
    }

    /// DESIGN §3/§6: the password is shown once, in the response; it must never reach the log.
    fn assert_not_in_log(&self, d: &Daemon) {
        let log = d.log();
        assert!(
            !log.trim().is_empty(),
            "the daemon log {} is empty: cannot check it for passwords",
            d.log_path.display()
        );
        assert!(!self.0.is_empty(), "no password was collected");
        for (number, password) in &self.0 {
            assert!(
                !log.contains(password.as_str()),
                "the daemon log {} contains the password of ticket {number}",
                d.log_path.display()
            );
        }
    }
}

async fn create_ticket(
    enr: &mut Enrollment,
    issued: &mut Issued,
    n: u32,
    os: v1::TargetOs,
) -> Result<v1::CreateTicketResponse, Status> {
    let r = enr
        .create_ticket(sample_ticket_request(n, os))
        .await?
        .into_inner();
    issued.add(&r.number, &r.password);
    assert_eq!(r.number.len(), 8, "ticket number {:?}", r.number);
    assert!(r.number.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(r.password.len(), 8, "ticket password is not 8 characters");
    assert!(r.password.bytes().all(|b| b.is_ascii_digit()));
    Ok(r)
}

fn redeem_req(
    number: &str,
    password: &str,
    os: v1::TargetOs,
    profile: &str,
) -> v1::RedeemTicketRequest {
    v1::RedeemTicketRequest {
        number: number.to_string(),
        password: password.to_string(),
        os: os as i32,
        keystore_profile: profile.to_string(),
    }
}

/// A different 8-digit password.
fn wrong(password: &str) -> String {
    let p: u32 = password.parse().unwrap_or(0);
    format!("{:08}", (p + 1) % 100_000_000)
}

/// The error of a call that must fail.
fn refused<T: Debug>(r: Result<tonic::Response<T>, Status>, what: &str) -> Status {
    match r {
        Ok(resp) => panic!("{what}: expected an error, got OK: {:?}", resp.get_ref()),
        Err(s) => s,
    }
}

fn assert_code(s: &Status, code: Code, what: &str) {
    assert_eq!(
        s.code(),
        code,
        "{what}: expected {code:?}, got {:?}: {}",
        s.code(),
        s.message()
    );
}

fn hex_utf8(s: &str) -> String {
    hex::encode(s.as_bytes())
}

fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn run_text(cmd: &mut Command) -> (bool, String) {
    let out = tools::run(cmd);
    (out.status.success(), tools::text(&out))
}

// =============================================================================================
// 1. Keystore profiles
// =============================================================================================

/// One keystore profile of DESIGN §8 and what its bundle must look like.
struct Case {
    profile: &'static str,
    os: v1::TargetOs,
    ext: &'static str,
    /// PBES2/AES-256 + HMAC-SHA256 (windows) rather than 3DES + HMAC-SHA1.
    aes: bool,
    apple: bool,
}

const CASES: [Case; 5] = [
    Case {
        profile: "windows",
        os: v1::TargetOs::Windows,
        ext: "pfx",
        aes: true,
        apple: false,
    },
    Case {
        profile: "windows-legacy",
        os: v1::TargetOs::Windows,
        ext: "pfx",
        aes: false,
        apple: false,
    },
    Case {
        profile: "macos",
        os: v1::TargetOs::Macos,
        ext: "p12",
        aes: false,
        apple: true,
    },
    Case {
        profile: "ios",
        os: v1::TargetOs::Ios,
        ext: "p12",
        aes: false,
        apple: true,
    },
    Case {
        profile: "android",
        os: v1::TargetOs::Android,
        ext: "p12",
        aes: false,
        apple: false,
    },
];

/// What the bundle checks need, written to files in `dir`.
struct Written {
    dir: PathBuf,
    p12: PathBuf,
    password_file: PathBuf,
    wrong_password_file: PathBuf,
    mobileconfig: Option<PathBuf>,
    leaf_pem: PathBuf,
    issuer_pem: PathBuf,
    response_root_pem: PathBuf,
}

fn write_bundle(
    dir: &Path,
    resp: &v1::RedeemTicketResponse,
    password: &str,
) -> std::io::Result<Written> {
    std::fs::create_dir_all(dir)?;
    let p12 = dir.join(&resp.file_name);
    std::fs::write(&p12, &resp.pkcs12)?;
    let password_file = dir.join("password");
    tools::write_secret(&password_file, password.as_bytes())?;
    let wrong_password_file = dir.join("wrong-password");
    tools::write_secret(&wrong_password_file, wrong(password).as_bytes())?;
    let mobileconfig = if resp.mobileconfig.is_empty() {
        None
    } else {
        let p = dir.join(&resp.mobileconfig_file_name);
        std::fs::write(&p, &resp.mobileconfig)?;
        Some(p)
    };
    let leaf_pem = dir.join("leaf.pem");
    std::fs::write(&leaf_pem, tools::pem("CERTIFICATE", &resp.certificate_der))?;
    let issuer_pem = dir.join("issuer.pem");
    let response_root_pem = dir.join("root-from-response.pem");
    if let [issuer, root] = resp.chain_der.as_slice() {
        std::fs::write(&issuer_pem, tools::pem("CERTIFICATE", issuer))?;
        std::fs::write(&response_root_pem, tools::pem("CERTIFICATE", root))?;
    }
    Ok(Written {
        dir: dir.to_path_buf(),
        p12,
        password_file,
        wrong_password_file,
        mobileconfig,
        leaf_pem,
        issuer_pem,
        response_root_pem,
    })
}

/// Everything checked on one redeemed bundle. Panics with the tool output on a failure.
fn check_bundle(
    case: &Case,
    req: &v1::CreateTicketRequest,
    resp: &v1::RedeemTicketResponse,
    w: &Written,
    root_file: &Path,
    root_der: &[u8],
) {
    let label = format!("profile {}", case.profile);
    let facility = req
        .facility
        .as_ref()
        .map(|f| f.name.clone())
        .unwrap_or_default();

    // --- the response itself
    assert!(
        resp.file_name.ends_with(&format!(".{}", case.ext)),
        "{label}: file_name {:?} should end with .{}",
        resp.file_name,
        case.ext
    );
    assert_eq!(
        resp.media_type, "application/x-pkcs12",
        "{label}: media_type"
    );
    assert_eq!(
        !resp.mobileconfig.is_empty(),
        case.apple,
        "{label}: mobileconfig present iff Apple"
    );
    if case.apple {
        assert!(
            resp.mobileconfig_file_name.ends_with(".mobileconfig"),
            "{label}: mobileconfig_file_name {:?}",
            resp.mobileconfig_file_name
        );
    } else {
        assert!(
            resp.mobileconfig_file_name.is_empty(),
            "{label}: mobileconfig_file_name"
        );
    }
    assert_eq!(
        resp.chain_der.len(),
        2,
        "{label}: chain_der must be [issuer, root]"
    );
    assert_eq!(
        resp.chain_der.last().map(Vec::as_slice),
        Some(root_der),
        "{label}: the last chain certificate must be DATA_DIR/dev/root-ca.crt"
    );
    assert!(!resp.serial.is_empty(), "{label}: serial");
    // Byte-identical Japanese names: the UTF-8 of the request is in the DER as is (UTF8String).
    for (what, s) in [("O", facility.as_str()), ("CN", SAMPLE_CN)] {
        assert!(
            contains_bytes(&resp.certificate_der, s.as_bytes()),
            "{label}: the certificate DER does not contain the UTF-8 bytes of {what} {s:?}"
        );
    }

    // --- openssl pkcs12 -info
    if tools::require_openssl() {
        let (ok, text) = run_text(
            Command::new("openssl")
                .args(["pkcs12", "-info", "-nodes", "-in"])
                .arg(&w.p12)
                .arg("-passin")
                .arg(format!("file:{}", w.password_file.display())),
        );
        assert!(ok, "{label}: openssl pkcs12 -info failed:\n{text}");
        let expected: Vec<String> = if case.aes {
            vec![
                "MAC: sha256, Iteration 100000".into(),
                "MAC length: 32".into(),
                "PKCS7 Encrypted data: PBES2, PBKDF2, AES-256-CBC, Iteration 100000, PRF hmacWithSHA256".into(),
                "Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC, Iteration 100000, PRF hmacWithSHA256".into(),
            ]
        } else {
            vec![
                "MAC: sha1, Iteration 100000".into(),
                "MAC length: 20, salt length: 8".into(),
                "PKCS7 Encrypted data: pbeWithSHA1And3-KeyTripleDES-CBC, Iteration 100000".into(),
                "Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC, Iteration 100000".into(),
            ]
        };
        for e in &expected {
            assert!(
                text.contains(e.as_str()),
                "{label}: openssl output lacks {e:?}:\n{text}"
            );
        }
        assert!(!text.contains("RC2"), "{label}: RC2 in the bundle:\n{text}");
        // Issue #12 item 7: leaf + issuing CA, no root (include_root is off by default).
        assert_eq!(
            text.matches("-----BEGIN CERTIFICATE-----").count(),
            2,
            "{label}: leaf + issuer expected (no root):\n{text}"
        );
        assert_eq!(
            text.matches("-----BEGIN PRIVATE KEY-----").count(),
            1,
            "{label}: one private key expected:\n{text}"
        );
        assert!(
            text.contains("friendlyName"),
            "{label}: no friendlyName:\n{text}"
        );

        let (ok, text) = run_text(
            Command::new("openssl")
                .args(["pkcs12", "-info", "-nodes", "-in"])
                .arg(&w.p12)
                .arg("-passin")
                .arg(format!("file:{}", w.wrong_password_file.display())),
        );
        assert!(
            !ok,
            "{label}: openssl opened the bundle with a wrong password:\n{text}"
        );

        // --- openssl verify, with the root of the response and the root of the dev dir
        for root in [w.response_root_pem.as_path(), root_file] {
            let (ok, text) = run_text(
                Command::new("openssl")
                    .args(["verify", "-purpose", "sslclient", "-CAfile"])
                    .arg(root)
                    .arg("-untrusted")
                    .arg(&w.issuer_pem)
                    .arg(&w.leaf_pem),
            );
            assert!(
                ok && text.contains(": OK"),
                "{label}: openssl verify with root {} failed:\n{text}",
                root.display()
            );
        }
    }

    // --- keytool
    if tools::require_keytool() {
        let (ok, text) = run_text(
            Command::new("keytool")
                .args(["-list", "-v", "-storetype", "PKCS12", "-keystore"])
                .arg(&w.p12)
                .arg("-storepass:file")
                .arg(&w.password_file),
        );
        assert!(ok, "{label}: keytool -list failed:\n{text}");
        assert!(
            text.contains("Your keystore contains 1 entry"),
            "{label}: keytool: one entry expected:\n{text}"
        );
        assert_eq!(
            text.matches("Entry type: PrivateKeyEntry").count(),
            1,
            "{label}: keytool: one PrivateKeyEntry expected:\n{text}"
        );
        assert!(
            text.contains("Certificate chain length: 2"),
            "{label}: keytool: chain length 2 (leaf, issuing CA; no root) expected:\n{text}"
        );
    }

    // --- Python cryptography (+ plistlib for the mobileconfig)
    if tools::require_python() {
        let mut cmd = Command::new(tools::venv_bin("python"));
        cmd.arg(tools::python_script("check_bundle.py"))
            .arg(&w.p12)
            .arg(&w.password_file);
        if let Some(mc) = &w.mobileconfig {
            cmd.arg(mc);
        }
        let out = tools::run(&mut cmd);
        let text = tools::text(&out);
        assert!(
            out.status.success(),
            "{label}: check_bundle.py failed:\n{text}"
        );
        let facts: serde_json::Value = match serde_json::from_slice(&out.stdout) {
            Ok(v) => v,
            Err(e) => panic!("{label}: check_bundle.py printed no JSON ({e}):\n{text}"),
        };
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        assert_eq!(
            s(&facts["leaf_der"]),
            hex::encode(&resp.certificate_der),
            "{label}: the bundle's leaf is not certificate_der"
        );
        assert_eq!(s(&facts["key_type"]), "EC", "{label}: key type: {text}");
        assert_eq!(
            s(&facts["key_curve"]),
            "secp256r1",
            "{label}: curve: {text}"
        );
        assert_eq!(
            facts["key_matches_leaf"], true,
            "{label}: the key does not match the leaf"
        );
        let subject = &facts["subject"];
        for (attr, want) in [
            ("C", "JP"),
            ("O", facility.as_str()),
            ("OU", SAMPLE_JOB),
            ("CN", SAMPLE_CN),
        ] {
            assert_eq!(
                subject[attr],
                serde_json::json!([hex_utf8(want)]),
                "{label}: subject {attr} is not byte-identical to {want:?} (hex of UTF-8): {text}"
            );
        }
        let friendly = hex::decode(s(&facts["friendly_name"])).unwrap_or_default();
        let friendly = String::from_utf8_lossy(&friendly);
        assert!(
            friendly.contains("山田") && friendly.contains("花子"),
            "{label}: the leaf's friendlyName {friendly:?} should name the person in Japanese"
        );
        let additional: Vec<String> = facts["additional"]
            .as_array()
            .map(|a| a.iter().map(|c| s(&c["der"])).collect())
            .unwrap_or_default();
        // Issue #12 item 7: the issuing CA (chain_der's first) and no self-signed certificate;
        // chain_der itself still ends with the root (the API is unchanged).
        let issuer: Vec<String> = resp.chain_der.iter().take(1).map(hex::encode).collect();
        assert_eq!(
            additional, issuer,
            "{label}: the bundle's CA certificates should be the issuing CA alone"
        );
        assert!(
            !additional.contains(&hex::encode(root_der)),
            "{label}: the device root is in the bundle"
        );
        let self_signed = facts["additional"]
            .as_array()
            .map(|a| a.iter().filter(|c| c["self_signed"] == true).count())
            .unwrap_or(usize::MAX);
        assert_eq!(
            self_signed, 0,
            "{label}: a self-signed certificate in the bundle"
        );

        if case.apple {
            let mc = &facts["mobileconfig"];
            assert_eq!(
                s(&mc["payload_type"]),
                "Configuration",
                "{label}: mobileconfig: {mc}"
            );
            let types: Vec<String> = mc["payloads"]
                .as_array()
                .map(|a| a.iter().map(|p| s(&p["type"])).collect())
                .unwrap_or_default();
            assert_eq!(
                types,
                ["com.apple.security.pkcs12", "com.apple.security.pkcs1"],
                "{label}: the mobileconfig holds the identity and the issuing CA, no root: {mc}"
            );
            assert_eq!(mc["pkcs12_opened"], true, "{label}: {mc}");
            assert_eq!(
                s(&mc["pkcs12_leaf_der"]),
                hex::encode(&resp.certificate_der),
                "{label}: the mobileconfig's PKCS#12 holds another leaf"
            );
            assert_eq!(
                mc["pkcs12_additional"],
                serde_json::json!(issuer),
                "{label}: the mobileconfig's PKCS#12 should carry the issuing CA alone"
            );
            assert_eq!(
                s(&mc["issuer_der"]),
                hex::encode(&resp.chain_der[0]),
                "{label}: the mobileconfig's pkcs1 payload is not the issuing CA"
            );
            assert!(
                mc["root_der"].is_null(),
                "{label}: the mobileconfig installs the root: {mc}"
            );
            // The profile carries no secret beyond the encrypted PFX (the device asks for it).
            let password = std::fs::read_to_string(&w.password_file).unwrap_or_default();
            assert!(
                !contains_bytes(&resp.mobileconfig, password.as_bytes()),
                "{label}: the mobileconfig contains the password in clear"
            );
        }
    }

    // --- pkilint
    if tools::require_pkilint("lint_pkix_cert") {
        let findings = tools::pkilint("lint_pkix_cert", &[], &w.leaf_pem);
        assert!(
            findings.is_empty(),
            "{label}: lint_pkix_cert findings beyond the allowed ones ({}):\n{}",
            w.dir.display(),
            findings.join("\n")
        );
    }
}

#[tokio::test]
async fn every_keystore_profile_is_read_by_openssl_keytool_and_python() -> TestResult {
    let d = Daemon::start()?;
    let mut enr = d.enrollment("portal").await?;
    let mut issued = Issued::default();
    let root_file = d.dev_dir().join("root-ca.crt");
    let root_der = tools::cert_der_from_pem_file(&root_file)?;
    let tmp = tempfile::tempdir()?;

    let mut redeemed = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let n = 100 + u32::try_from(i)?;
        let req = sample_ticket_request(n, case.os);
        let t = create_ticket(&mut enr, &mut issued, n, case.os).await?;
        let resp = enr
            .redeem_ticket(redeem_req(&t.number, &t.password, case.os, case.profile))
            .await
            .map_err(|s| {
                format!(
                    "redeem for {}: {:?}: {}",
                    case.profile,
                    s.code(),
                    s.message()
                )
            })?
            .into_inner();
        let w = write_bundle(&tmp.path().join(case.profile), &resp, &t.password)?;
        redeemed.push((case, req, resp, w));
    }
    // The external tools are slow to start (JVM, Python): check the five bundles in parallel.
    std::thread::scope(|scope| {
        for (case, req, resp, w) in &redeemed {
            let (root_file, root_der) = (&root_file, &root_der);
            scope.spawn(move || check_bundle(case, req, resp, w, root_file, root_der));
        }
    });
    issued.assert_not_in_log(&d);
    Ok(())
}

// =============================================================================================
// 2. Ticket life cycle
// =============================================================================================

/// Writes an ACTIVE ticket whose `expires_at` has passed into the (stopped) daemon's store,
/// through the library, as the daemon would have written it 15 days ago.
fn insert_expired_ticket(d: &Daemon) -> Result<(String, String), Box<dyn std::error::Error>> {
    use ca_daemon::store::{AuditEvent, RECORD_VERSION, TicketRecord, TicketState};
    let data_dir = d.data_dir.as_path();
    let passphrase =
        ca_daemon::keys::Passphrase::from_file(&ca_daemon::pki::dev_passphrase_path(data_dir))?;
    let pki = ca_daemon::pki::load(data_dir, &passphrase)?;
    let mac = ca_daemon::tickets::TicketMac::new(&pki.pepper)?;
    let number = ca_daemon::tickets::random_digits(8)?;
    let password = ca_daemon::tickets::random_digits(8)?;
    let req = pki_proto::convert::CreateTicket::try_from(sample_ticket_request(
        900,
        v1::TargetOs::Android,
    ))?;
    let now = time::OffsetDateTime::now_utc();
    let record = TicketRecord {
        version: RECORD_VERSION,
        number: number.clone(),
        password_mac: mac.mac(&number, &password),
        state: TicketState::Active,
        created_at: now - time::Duration::days(15),
        expires_at: now - time::Duration::days(1),
        failed_attempts: 0,
        enrollee: req.enrollee,
        cert_profile: "default".into(),
        approved_by: "事務局".into(),
        created_by: "test:integration".into(),
        redeemed_serial: None,
    };
    let store = d.open_store()?;
    store.create_ticket(
        &record,
        AuditEvent::new(
            "test:integration",
            "ticket.created",
            format!("ticket:{number}"),
            "expired ticket written by the integration test",
        ),
    )?;
    drop(store);
    Ok((number, password))
}

async fn ticket_state(enr: &mut Enrollment, number: &str) -> Result<v1::Ticket, Status> {
    Ok(enr
        .get_ticket(v1::GetTicketRequest {
            number: number.to_string(),
        })
        .await?
        .into_inner())
}

#[tokio::test]
async fn tickets_are_single_use_lock_expire_and_cancel() -> TestResult {
    // --- expired: write the ticket while the daemon is stopped, then start it again
    let mut d = Daemon::start()?;
    assert!(d.stop(), "the daemon did not stop cleanly:\n{}", d.log());
    let (exp_number, exp_password) = insert_expired_ticket(&d)?;
    d.start_again()?;
    let mut enr = d.enrollment("portal").await?;
    let mut issued = Issued::default();
    issued.add(&exp_number, &exp_password);

    let s = refused(
        enr.redeem_ticket(redeem_req(
            &exp_number,
            &exp_password,
            v1::TargetOs::Android,
            "",
        ))
        .await,
        "redeeming an expired ticket",
    );
    // Issue #12 item 4: every bad credential gets the one answer, an expired ticket too.
    assert_code(&s, Code::Unauthenticated, "expired ticket");
    assert_eq!(s.message(), "ticket number or password is incorrect");
    let t = ticket_state(&mut enr, &exp_number).await?;
    assert_eq!(
        t.state(),
        v1::TicketState::Expired,
        "GetTicket of the expired ticket"
    );

    // --- redeems once
    let t = create_ticket(&mut enr, &mut issued, 1, v1::TargetOs::Android).await?;
    let first = enr
        .redeem_ticket(redeem_req(
            &t.number,
            &t.password,
            v1::TargetOs::Unspecified,
            "",
        ))
        .await?
        .into_inner();
    assert!(
        first.file_name.ends_with(".p12"),
        "device OS (android) used: {}",
        first.file_name
    );
    let s = refused(
        enr.redeem_ticket(redeem_req(
            &t.number,
            &t.password,
            v1::TargetOs::Unspecified,
            "",
        ))
        .await,
        "second redemption",
    );
    assert_code(&s, Code::Unauthenticated, "second redemption");
    assert_eq!(
        ticket_state(&mut enr, &t.number).await?.state(),
        v1::TicketState::Redeemed
    );

    // --- 32 concurrent redemptions of one fresh ticket: exactly one certificate
    let t = create_ticket(&mut enr, &mut issued, 32, v1::TargetOs::Android).await?;
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let mut c = enr.clone();
        let req = redeem_req(&t.number, &t.password, v1::TargetOs::Android, "");
        tasks.push(tokio::spawn(async move { c.redeem_ticket(req).await }));
    }
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for task in tasks {
        match task.await? {
            Ok(r) => ok.push(r.into_inner()),
            Err(s) => errors.push(s),
        }
    }
    let summary: Vec<String> = errors
        .iter()
        .map(|s| format!("{:?}: {}", s.code(), s.message()))
        .collect();
    assert_eq!(
        ok.len(),
        1,
        "32 concurrent redemptions: exactly one must succeed; errors:\n{}",
        summary.join("\n")
    );
    // Losers: the ticket is redeemed (the one bad-credential answer, UNAUTHENTICATED), or the
    // per-ticket attempt limit of the policy (RESOURCE_EXHAUSTED).
    assert!(
        errors
            .iter()
            .all(|s| matches!(s.code(), Code::Unauthenticated | Code::ResourceExhausted)),
        "the losers must get UNAUTHENTICATED or RESOURCE_EXHAUSTED:\n{}",
        summary.join("\n")
    );
    let device_id = sample_ticket_request(32, v1::TargetOs::Android)
        .device
        .map(|d| d.id)
        .unwrap_or_default();
    let list = d
        .certificates("portal")
        .await?
        .list_certificates(v1::ListCertificatesRequest {
            device_id: device_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let serials: Vec<&str> = list
        .certificates
        .iter()
        .map(|c| c.serial.as_str())
        .collect();
    assert_eq!(
        serials,
        vec![ok[0].serial.as_str()],
        "device {device_id} must have exactly the one certificate that was returned"
    );

    // --- five wrong passwords lock the ticket; then the right one fails too
    let t = create_ticket(&mut enr, &mut issued, 5, v1::TargetOs::Ios).await?;
    for i in 1..=5 {
        let s = refused(
            enr.redeem_ticket(redeem_req(
                &t.number,
                &wrong(&t.password),
                v1::TargetOs::Ios,
                "",
            ))
            .await,
            "wrong password",
        );
        assert_code(&s, Code::Unauthenticated, &format!("wrong password #{i}"));
    }
    let s = refused(
        enr.redeem_ticket(redeem_req(&t.number, &t.password, v1::TargetOs::Ios, ""))
            .await,
        "right password on a locked ticket",
    );
    assert_ne!(s.code(), Code::Ok);
    let locked = ticket_state(&mut enr, &t.number).await?;
    assert_eq!(
        locked.state(),
        v1::TicketState::Locked,
        "after 5 wrong passwords: {locked:?}"
    );
    // 5 wrong passwords, then the right one after the lockout: every refusal is counted
    // (issue #12 item 4).
    assert_eq!(locked.failed_attempts, 6, "{locked:?}");

    // --- unknown number and wrong password: the same answer
    let t = create_ticket(&mut enr, &mut issued, 7, v1::TargetOs::Android).await?;
    let known: BTreeSet<&str> = issued.0.iter().map(|(n, _)| n.as_str()).collect();
    let mut unknown = ca_daemon::tickets::random_digits(8)?;
    while known.contains(unknown.as_str()) {
        unknown = ca_daemon::tickets::random_digits(8)?;
    }
    let by_unknown = refused(
        enr.redeem_ticket(redeem_req(&unknown, &t.password, v1::TargetOs::Android, ""))
            .await,
        "unknown number",
    );
    let by_wrong = refused(
        enr.redeem_ticket(redeem_req(
            &t.number,
            &wrong(&t.password),
            v1::TargetOs::Android,
            "",
        ))
        .await,
        "wrong password",
    );
    assert_eq!(
        (by_unknown.code(), by_unknown.message()),
        (by_wrong.code(), by_wrong.message()),
        "unknown number and wrong password must get the identical code and message"
    );
    assert!(
        !by_wrong.message().contains(&t.number),
        "the answer names the ticket: {}",
        by_wrong.message()
    );

    // --- cancelled
    let t = create_ticket(&mut enr, &mut issued, 8, v1::TargetOs::Android).await?;
    let c = enr
        .cancel_ticket(v1::CancelTicketRequest {
            number: t.number.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(c.state(), v1::TicketState::Cancelled, "{c:?}");
    let s = refused(
        enr.redeem_ticket(redeem_req(
            &t.number,
            &t.password,
            v1::TargetOs::Android,
            "",
        ))
        .await,
        "redeeming a cancelled ticket",
    );
    assert_code(&s, Code::Unauthenticated, "cancelled ticket");

    issued.assert_not_in_log(&d);
    Ok(())
}

// =============================================================================================
// 3. The mTLS edge and argument validation
// =============================================================================================

/// How a call with some client identity ended.
#[derive(Debug)]
enum Outcome {
    /// A handler answered (OK).
    Answered,
    /// The TLS connection could not be set up.
    ConnectFailed(String),
    /// The RPC failed; `transport` says whether the error came from the transport (connection
    /// closed or reset by the peer) rather than from a status the server sent.
    Failed { status: Status, transport: bool },
}

/// Calls `Revocation.GetCaChain` (allowed to every role) with `identity`.
async fn call_with(d: &Daemon, identity: Option<(Vec<u8>, Vec<u8>)>, ca: &[u8]) -> Outcome {
    let channel = match d.channel_with(identity, ca.to_vec()).await {
        Ok(c) => c,
        Err(e) => return Outcome::ConnectFailed(e.to_string()),
    };
    match v1::revocation_client::RevocationClient::new(channel)
        .get_ca_chain(v1::GetCaChainRequest::default())
        .await
    {
        Ok(_) => Outcome::Answered,
        Err(status) => {
            let transport = std::error::Error::source(&status)
                .is_some_and(|e| e.is::<tonic::transport::Error>());
            Outcome::Failed { status, transport }
        }
    }
}

/// A refusal at the TLS handshake: the connection fails, or the RPC fails with a transport
/// error (UNAVAILABLE, or a connection the server closed) — never a status a handler or the
/// role check sent (OK, PERMISSION_DENIED, UNAUTHENTICATED, ...).
fn assert_handshake_refused(outcome: Outcome, what: &str) {
    match outcome {
        Outcome::ConnectFailed(e) => eprintln!("{what}: refused at connect: {e}"),
        Outcome::Failed { status, transport }
            if transport || status.code() == Code::Unavailable => {}
        other => panic!("{what}: expected the TLS handshake to be refused, got {other:?}"),
    }
}

/// A client certificate from a CA the daemon does not know, claiming the `ops` role.
fn foreign_ops_identity() -> Result<(Vec<u8>, Vec<u8>), rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let now = time::OffsetDateTime::now_utc();
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "Rogue service CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + time::Duration::days(30);
    let ca_key = KeyPair::generate()?;
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(Vec::<String>::new())?;
    leaf.distinguished_name.push(DnType::CommonName, "ops");
    leaf.subject_alt_names = vec![SanType::URI("urn:pki:role:ops".try_into()?)];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    leaf.not_before = now - time::Duration::hours(1);
    leaf.not_after = now + time::Duration::days(30);
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok((cert.pem().into_bytes(), key.serialize_pem().into_bytes()))
}

/// Leaf and key (PEM) of a redeemed bundle, extracted with openssl.
fn device_identity(w: &Written) -> Result<(Vec<u8>, Vec<u8>), Box<dyn std::error::Error>> {
    let cert = w.dir.join("device-cert.pem");
    let key = w.dir.join("device-key.pem");
    for (extra, out) in [
        (&["-nokeys", "-clcerts"][..], &cert),
        (&["-nocerts", "-nodes"][..], &key),
    ] {
        let (ok, text) = run_text(
            Command::new("openssl")
                .args(["pkcs12", "-in"])
                .arg(&w.p12)
                .arg("-passin")
                .arg(format!("file:{}", w.password_file.display()))
                .args(extra)
                .arg("-out")
                .arg(out),
        );
        assert!(ok, "openssl pkcs12 {extra:?} failed:\n{text}");
    }
    Ok((std::fs::read(cert)?, std::fs::read(key)?))
}

fn assert_invalid<T: Debug>(
    r: Result<tonic::Response<T>, Status>,
    field: &str,
    secret: Option<&str>,
) {
    let s = refused(r, &format!("invalid {field}"));
    assert_code(&s, Code::InvalidArgument, &format!("invalid {field}"));
    assert!(
        s.message().contains(field),
        "the INVALID_ARGUMENT message should name {field:?}: {}",
        s.message()
    );
    if let Some(secret) = secret {
        assert!(
            !s.message().contains(secret),
            "the message echoes the value: {}",
            s.message()
        );
    }
}

#[tokio::test]
async fn mtls_edge_refuses_strangers_and_roles_and_validates_fields() -> TestResult {
    let d = Daemon::start()?;
    let dev = d.dev_dir();
    let ca = std::fs::read(dev.join("service-ca.crt"))?;
    let mut issued = Issued::default();

    // Control: the dev portal certificate through the same path is answered.
    let portal = (
        std::fs::read(dev.join("portal.crt"))?,
        std::fs::read(dev.join("portal.key"))?,
    );
    let control = call_with(&d, Some(portal), &ca).await;
    assert!(
        matches!(control, Outcome::Answered),
        "control call as portal failed: {control:?}"
    );

    assert_handshake_refused(call_with(&d, None, &ca).await, "no client certificate");
    assert_handshake_refused(
        call_with(&d, Some(foreign_ops_identity()?), &ca).await,
        "a client certificate from another CA (urn:pki:role:ops)",
    );

    // A device certificate (device CA, not the service-client CA) is no service identity.
    let mut enr = d.enrollment("portal").await?;
    let t = create_ticket(&mut enr, &mut issued, 40, v1::TargetOs::Android).await?;
    let resp = enr
        .redeem_ticket(redeem_req(
            &t.number,
            &t.password,
            v1::TargetOs::Android,
            "",
        ))
        .await?
        .into_inner();
    let tmp = tempfile::tempdir()?;
    let w = write_bundle(tmp.path(), &resp, &t.password)?;
    if tools::require_openssl() {
        let device = device_identity(&w)?;
        assert_handshake_refused(
            call_with(&d, Some(device), &ca).await,
            "a device certificate",
        );
    }

    // Roles: the gateway may read CRLs but not create tickets.
    let s = refused(
        d.enrollment("gateway")
            .await?
            .create_ticket(sample_ticket_request(41, v1::TargetOs::Android))
            .await,
        "gateway CreateTicket",
    );
    assert_code(&s, Code::PermissionDenied, "gateway CreateTicket");
    let crl = d
        .revocation("gateway")
        .await?
        .get_crl(v1::GetCrlRequest::default())
        .await
        .map_err(|s| format!("gateway GetCrl: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    assert!(!crl.der.is_empty(), "gateway GetCrl returned an empty CRL");

    // Oversized and malformed fields.
    let mut req = sample_ticket_request(42, v1::TargetOs::Android);
    if let Some(f) = req.facility.as_mut() {
        f.name = "あ".repeat(300);
    }
    assert_invalid(enr.create_ticket(req).await, "facility.name", None);

    let mut req = sample_ticket_request(43, v1::TargetOs::Android);
    if let Some(dev) = req.device.as_mut() {
        dev.os = 99;
    }
    assert_invalid(enr.create_ticket(req).await, "device.os", None);

    let mut req = sample_ticket_request(44, v1::TargetOs::Android);
    req.person = None;
    assert_invalid(enr.create_ticket(req).await, "person", None);

    assert_invalid(
        enr.redeem_ticket(redeem_req("12ab", "12345678", v1::TargetOs::Android, ""))
            .await,
        "number",
        None,
    );
    assert_invalid(
        enr.get_ticket(v1::GetTicketRequest {
            number: "12ab".into(),
        })
        .await,
        "number",
        None,
    );
    let mut req = redeem_req("12345678", "12345678", v1::TargetOs::Android, "");
    req.os = 99;
    assert_invalid(enr.redeem_ticket(req).await, "os", None);
    assert_invalid(
        enr.redeem_ticket(redeem_req(
            "12345678",
            "pw-Geheim9",
            v1::TargetOs::Android,
            "",
        ))
        .await,
        "password",
        Some("Geheim9"),
    );

    issued.assert_not_in_log(&d);
    Ok(())
}

// =============================================================================================
// 5. A client outside Rust
// =============================================================================================

#[test]
fn python_client_from_the_protos_creates_and_redeems() -> TestResult {
    if !tools::require_python() {
        return Ok(());
    }
    let d = Daemon::start()?;
    let out = tools::run(
        Command::new(tools::venv_bin("python"))
            .arg(tools::python_script("grpc_client.py"))
            .arg(d.grpc.to_string())
            .arg(d.dev_dir())
            .arg(integration::workspace_root().join("proto")),
    );
    let text = tools::text(&out);
    assert!(out.status.success(), "grpc_client.py failed:\n{text}");
    let facts: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("grpc_client.py printed no JSON ({e}):\n{text}"))?;
    assert_eq!(facts["ok"], true, "{text}");
    assert_eq!(facts["subject_o"], "みよし訪問看護ステーション", "{text}");
    assert_eq!(facts["subject_cn"], SAMPLE_CN, "{text}");
    let mut issued = Issued::default();
    issued.add(
        facts["number"].as_str().unwrap_or_default(),
        facts["password"].as_str().unwrap_or_default(),
    );
    assert!(
        issued.0.iter().all(|(n, p)| n.len() == 8 && p.len() == 8),
        "grpc_client.py output lacks number/password: {text}"
    );
    issued.assert_not_in_log(&d);
    Ok(())
}
