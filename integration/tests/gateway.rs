//! End-to-end test of the example mTLS gateway ([`integration::gateway`]) following the real
//! daemon's `WatchCrl` stream (DESIGN §5, §9 "revocation → gateway rejects the cert"): a device
//! certificate from a redeemed bundle gets in, an open connection survives a CRL swap, and after
//! `Revoke` new handshakes with that certificate are refused; the time from the Revoke ack to the
//! first refused handshake is measured and printed.
//!
//! The device key is taken out of the PKCS#12 bundle with `openssl pkcs12` (the password goes in
//! a file, never on the command line). A missing openssl fails the test with what to install,
//! unless `PKI_ALLOW_MISSING_TOOLS=1` is set (then the test is skipped with a message).
#![forbid(unsafe_code)]

mod edge_common;

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use edge_common::revoke;
use integration::gateway::{
    self, Gateway, GatewayClient, GatewayConfig, client_config_for_device, refusal_alert,
};
use integration::tools::{self, run};
use integration::{Daemon, sample_ticket_request};
use pki_proto::v1;
use rustls::AlertDescription;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use zeroize::Zeroizing;

/// Target of DESIGN §9 (p99 ≤ 500 ms; one sample here is held to a second, printed).
const REACH_TARGET: Duration = Duration::from_secs(1);
/// What the test asserts: generous, for a loaded CI machine.
const REACH_LIMIT: Duration = Duration::from_secs(5);
/// Interval between handshakes while waiting for the refusal.
const POLL: Duration = Duration::from_millis(20);
/// Bound of one connection attempt (connect + handshake + greeting).
const STEP: Duration = Duration::from_secs(5);

type Client = GatewayClient;

/// A redeemed device: its bundle's leaf and issuer, the PKCS#8 key, the serial, the name.
struct DeviceIdentity {
    serial: String,
    leaf_der: Vec<u8>,
    issuer_der: Vec<u8>,
    key_pkcs8: Zeroizing<Vec<u8>>,
}

/// Whether openssl can run; panics unless missing tools are allowed.
fn have_openssl() -> bool {
    match Command::new("openssl").arg("version").output() {
        Ok(o) if o.status.success() => true,
        _ if tools::allow_missing() => {
            eprintln!(
                "SKIPPED: openssl not found (PKI_ALLOW_MISSING_TOOLS=1); it is needed to read the device key out of the PKCS#12 bundle"
            );
            false
        }
        _ => panic!(
            "openssl not found: install it (apt-get install openssl); it reads the device key out of the PKCS#12 bundle"
        ),
    }
}

/// The device key from the PKCS#12 bundle, via `openssl pkcs12 -nodes -passin file:`.
fn key_from_pkcs12(dir: &Path, name: &str, pkcs12: &[u8], password: &str) -> Zeroizing<Vec<u8>> {
    let p12 = dir.join(format!("{name}.p12"));
    std::fs::write(&p12, pkcs12).unwrap_or_else(|e| panic!("write {}: {e}", p12.display()));
    let pw = dir.join(format!("{name}.pw"));
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&pw)
        .unwrap_or_else(|e| panic!("create {}: {e}", pw.display()));
    f.write_all(password.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", pw.display()));
    drop(f);
    let out = run(Command::new("openssl")
        .arg("pkcs12")
        .arg("-in")
        .arg(&p12)
        .arg("-passin")
        .arg(format!("file:{}", pw.display()))
        .args(["-nodes", "-nocerts"]));
    // stdout holds the key: keep it out of panic messages, show only stderr.
    let stdout = Zeroizing::new(out.stdout);
    assert!(
        out.status.success(),
        "openssl pkcs12 -nodes -nocerts failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    match PrivateKeyDer::from_pem_slice(&stdout) {
        Ok(PrivateKeyDer::Pkcs8(k)) => Zeroizing::new(k.secret_pkcs8_der().to_vec()),
        Ok(_) => panic!("openssl pkcs12 printed a key that is not PKCS#8"),
        Err(e) => panic!("no private key in the output of openssl pkcs12: {e}"),
    }
}

/// Creates and redeems ticket `n` (Android bundle) and extracts the device identity.
async fn enroll(d: &Daemon, dir: &Path, n: u32) -> DeviceIdentity {
    let mut e = d.enrollment("portal").await.expect("enrollment client");
    let t = e
        .create_ticket(sample_ticket_request(n, v1::TargetOs::Android))
        .await
        .expect("CreateTicket")
        .into_inner();
    let password = Zeroizing::new(t.password);
    let b = e
        .redeem_ticket(v1::RedeemTicketRequest {
            number: t.number,
            password: password.to_string(),
            os: v1::TargetOs::Unspecified as i32,
            keystore_profile: String::new(),
        })
        .await
        .expect("RedeemTicket")
        .into_inner();
    let key_pkcs8 = key_from_pkcs12(dir, &format!("device{n}"), &b.pkcs12, &password);
    DeviceIdentity {
        serial: b.serial,
        leaf_der: b.certificate_der,
        issuer_der: b
            .chain_der
            .first()
            .cloned()
            .expect("RedeemTicket returns the chain, issuer first"),
        key_pkcs8,
    }
}

fn device_config(gw: &Gateway, dev: &DeviceIdentity) -> Arc<rustls::ClientConfig> {
    Arc::new(
        client_config_for_device(
            &gw.server_cert_der(),
            &dev.leaf_der,
            std::slice::from_ref(&dev.issuer_der),
            &dev.key_pkcs8,
        )
        .expect("client config for the device"),
    )
}

/// Connects and reads the greeting; a refusal shows up on the first read (TLS 1.3).
async fn hello(gw: &Gateway, cfg: Arc<rustls::ClientConfig>) -> std::io::Result<(Client, String)> {
    gateway::hello(gw.local_addr(), cfg, STEP).await
}

async fn echo(client: &mut Client, msg: &str) -> std::io::Result<String> {
    client.get_mut().write_all(msg.as_bytes()).await?;
    let mut line = String::new();
    tokio::time::timeout(STEP, client.read_line(&mut line)).await??;
    Ok(line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_follows_watch_crl_and_refuses_a_revoked_device() {
    if !have_openssl() {
        return;
    }
    let d = Daemon::start().expect("daemon starts");
    let tmp = tempfile::tempdir().expect("temp dir");
    let alice = enroll(&d, tmp.path(), 1).await;
    let bob = enroll(&d, tmp.path(), 2).await;

    let dev = d.dev_dir();
    let read = |name: &str| {
        std::fs::read(dev.join(name)).unwrap_or_else(|e| panic!("read dev/{name}: {e}"))
    };
    let gw = Gateway::start(GatewayConfig::new(
        "127.0.0.1:0".parse().expect("a socket address"),
        format!("https://{}", d.grpc),
        read("service-ca.crt"),
        read("gateway.crt"),
        Zeroizing::new(read("gateway.key")),
    ))
    .await
    .unwrap_or_else(|e| panic!("gateway starts: {e}\ndaemon log:\n{}", d.log()));
    let mut updates = gw.crl_updates();
    let crl_at_start = gw.crl_number("").expect("a CRL applied at start");

    // A valid device gets in and is echoed.
    let alice_cfg = device_config(&gw, &alice);
    let first = hello(&gw, alice_cfg.clone()).await;
    let first_alert = refusal_alert(&first);
    let (mut open, greeting) = first.unwrap_or_else(|e| {
        panic!("handshake with a valid certificate: {e} (alert {first_alert:?})")
    });
    assert_eq!(greeting, "hello 山田 花子\n", "greeting");
    assert_eq!(echo(&mut open, "ping\n").await.expect("echo"), "ping\n");

    // A CRL swap (Bob revoked): the open connection keeps echoing, Alice still gets in, Bob not.
    updates.borrow_and_update();
    revoke(&d, &bob.serial).await;
    tokio::time::timeout(REACH_LIMIT, updates.changed())
        .await
        .expect("the gateway applies the new CRL")
        .expect("the gateway is running");
    let after_swap = gw.crl_number("").expect("a CRL applied");
    assert!(
        after_swap > crl_at_start,
        "CRL number after the swap {after_swap} not above {crl_at_start}"
    );
    assert_eq!(
        echo(&mut open, "across the swap\n")
            .await
            .expect("echo across a CRL swap"),
        "across the swap\n"
    );
    let (_again, greeting) = hello(&gw, alice_cfg.clone())
        .await
        .expect("a valid certificate still gets in after the swap");
    assert_eq!(greeting, "hello 山田 花子\n");
    let refused = hello(&gw, device_config(&gw, &bob)).await;
    assert_eq!(
        refusal_alert(&refused),
        Some(AlertDescription::CertificateRevoked),
        "Bob after his revocation: {:?}",
        refused.as_ref().map(|(_, g)| g)
    );

    // Revoke Alice and poll handshakes until the gateway refuses her.
    let acked = revoke(&d, &alice.serial).await;
    let mut attempts = 0u32;
    let reach = loop {
        attempts += 1;
        let r = hello(&gw, alice_cfg.clone()).await;
        match r {
            Ok(_) => {}
            Err(_) => {
                assert_eq!(
                    refusal_alert(&r),
                    Some(AlertDescription::CertificateRevoked),
                    "refused, but not for revocation: {:?}",
                    r.as_ref().err()
                );
                break acked.elapsed();
            }
        }
        assert!(
            acked.elapsed() < REACH_LIMIT,
            "Alice still gets in {REACH_LIMIT:?} after the Revoke ack ({attempts} handshakes)"
        );
        tokio::time::sleep(POLL).await;
    };
    println!(
        "revocation reach: {} ms (Revoke ack → first refused handshake, {attempts} handshakes; target < {} ms)",
        reach.as_millis(),
        REACH_TARGET.as_millis()
    );
    if reach >= REACH_TARGET {
        println!("WARNING: revocation reach above the {REACH_TARGET:?} target");
    }
    // Documented behaviour: a connection established before the revocation keeps its config.
    let still = echo(&mut open, "after my revocation\n").await;
    println!(
        "connection opened before the revocation: {}",
        match &still {
            Ok(_) =>
                "still echoes (as documented: connections keep the config they were accepted with)"
                    .to_string(),
            Err(e) => format!("closed ({e})"),
        }
    );
    gw.shutdown().await;
}
