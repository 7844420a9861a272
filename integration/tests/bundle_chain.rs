//! Issue #12 item 7: which CA certificates a bundle installs on the device.
//!
//! - Every default keystore profile's bundle holds the leaf and the issuing CA and no
//!   self-signed certificate (read back with `openssl pkcs12`), and the device gets through the
//!   example mTLS gateway (`integration::gateway`, following the daemon's CRLs) presenting
//!   exactly what its bundle holds. That gateway also knows the issuers from `GetCaChain`, so a
//!   second, strict verifier (rustls `WebPkiClientVerifier` whose only anchor is the device root
//!   and which knows no issuer, as an nginx `ssl_client_certificate root.pem` gateway) shows that
//!   the bundle's chain is enough without the root on the device, and that the leaf alone is
//!   refused: the issuing CA in the bundle is what makes the chain.
//! - A policy with `include_root = true` on a profile brings the root back in the PFX (last, after
//!   the issuer) and, for Apple, as a `com.apple.security.root` payload (checked with Python
//!   `cryptography` and `plistlib`).
//!
//! `RedeemTicketResponse.chain_der` (issuer, root) is not changed by either.
//!
//! A missing openssl (or Python venv) fails the test with what to install, unless
//! `PKI_ALLOW_MISSING_TOOLS=1` (then it is skipped with a message). Passwords go to the tools in
//! files, never on a command line.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use integration::gateway::{self, Gateway, GatewayConfig, client_config_for_device};
use integration::tools::{self, run};
use integration::{Daemon, DaemonOptions, sample_ticket_request};
use pki_proto::v1;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

/// Bound of one gateway connection attempt.
const STEP: Duration = Duration::from_secs(10);

/// A strict mTLS server on loopback: the device root is its only trust anchor and it knows no
/// issuer (the client must send it); greets every client whose certificate verifies.
async fn strict_server(
    root_der: &[u8],
) -> (std::net::SocketAddr, Vec<u8>, tokio::task::JoinHandle<()>) {
    use rustls::server::WebPkiClientVerifier;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(root_der.to_vec()))
        .expect("the device root is a valid anchor");
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .expect("client verifier");
    let key = rcgen::KeyPair::generate().expect("server key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("server certificate");
    let cert_der = cert.der().to_vec();
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.write_all(b"hello\n").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    (addr, cert_der, task)
}

/// The default profiles, by (OS, keystore profile name).
const PROFILES: [(v1::TargetOs, &str); 5] = [
    (v1::TargetOs::Windows, "windows"),
    (v1::TargetOs::Windows, "windows-legacy"),
    (v1::TargetOs::Macos, "macos"),
    (v1::TargetOs::Ios, "ios"),
    (v1::TargetOs::Android, "android"),
];

/// What a device gets out of its bundle file (and only out of it).
struct FromBundle {
    /// The certificates of the PFX, as `openssl pkcs12 -nokeys` prints them (leaf first).
    certs: Vec<Vec<u8>>,
    key_pkcs8: Zeroizing<Vec<u8>>,
}

fn write_bundle(dir: &Path, name: &str, pkcs12: &[u8], password: &str) -> (String, String) {
    let p12 = dir.join(format!("{name}.p12"));
    std::fs::write(&p12, pkcs12).unwrap_or_else(|e| panic!("write {}: {e}", p12.display()));
    let pw = dir.join(format!("{name}.pw"));
    tools::write_secret(&pw, password.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", pw.display()));
    (p12.display().to_string(), format!("file:{}", pw.display()))
}

/// Leaf, chain and key out of the PKCS#12 with `openssl pkcs12`.
fn open_bundle(dir: &Path, name: &str, pkcs12: &[u8], password: &str) -> FromBundle {
    let (p12, passin) = write_bundle(dir, name, pkcs12, password);
    let out =
        run(Command::new("openssl").args(["pkcs12", "-nokeys", "-in", &p12, "-passin", &passin]));
    assert!(
        out.status.success(),
        "{name}: openssl pkcs12 -nokeys failed:\n{}",
        tools::text(&out)
    );
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&out.stdout)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{name}: PEM from openssl: {e}"));
    let out = run(Command::new("openssl").args([
        "pkcs12", "-nocerts", "-nodes", "-in", &p12, "-passin", &passin,
    ]));
    // stdout holds the key: keep it out of panic messages.
    let stdout = Zeroizing::new(out.stdout);
    assert!(
        out.status.success(),
        "{name}: openssl pkcs12 -nocerts failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key_pkcs8 = match PrivateKeyDer::from_pem_slice(&stdout) {
        Ok(PrivateKeyDer::Pkcs8(k)) => Zeroizing::new(k.secret_pkcs8_der().to_vec()),
        Ok(_) => panic!("{name}: the bundle's key is not PKCS#8"),
        Err(e) => panic!("{name}: no private key from openssl pkcs12: {e}"),
    };
    FromBundle { certs, key_pkcs8 }
}

fn self_signed(der: &[u8]) -> bool {
    let (_, c) = x509_parser::parse_x509_certificate(der).expect("a certificate");
    c.subject().as_raw() == c.issuer().as_raw()
}

async fn redeem(
    d: &Daemon,
    n: u32,
    os: v1::TargetOs,
    profile: &str,
) -> (v1::RedeemTicketResponse, Zeroizing<String>) {
    let mut e = d.enrollment("portal").await.expect("enrollment client");
    let t = e
        .create_ticket(sample_ticket_request(n, os))
        .await
        .expect("CreateTicket")
        .into_inner();
    let password = Zeroizing::new(t.password);
    let r = e
        .redeem_ticket(v1::RedeemTicketRequest {
            number: t.number,
            password: password.to_string(),
            os: os as i32,
            keystore_profile: profile.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("RedeemTicket {profile}: {:?}: {}", s.code(), s.message()))
        .into_inner();
    (r, password)
}

async fn start_gateway(d: &Daemon) -> Gateway {
    let dev = d.dev_dir();
    let read = |name: &str| {
        std::fs::read(dev.join(name)).unwrap_or_else(|e| panic!("read dev/{name}: {e}"))
    };
    Gateway::start(GatewayConfig::new(
        "127.0.0.1:0".parse().expect("a socket address"),
        format!("https://{}", d.grpc),
        read("service-ca.crt"),
        read("gateway.crt"),
        Zeroizing::new(read("gateway.key")),
    ))
    .await
    .unwrap_or_else(|e| panic!("gateway starts: {e}\ndaemon log:\n{}", d.log()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_carry_the_issuing_ca_not_the_root_and_get_through_the_gateway() {
    if !tools::require_openssl() {
        return;
    }
    let d = Daemon::start().expect("daemon starts");
    let root_der =
        tools::cert_der_from_pem_file(&d.dev_dir().join("root-ca.crt")).expect("dev root");
    let tmp = tempfile::tempdir().expect("temp dir");
    let gw = start_gateway(&d).await;
    let (strict, strict_cert, strict_task) = strict_server(&root_der).await;

    for (i, (os, profile)) in PROFILES.into_iter().enumerate() {
        let n = 700 + u32::try_from(i).expect("small");
        let (r, password) = redeem(&d, n, os, profile).await;
        // The API keeps returning the whole chain: GetCaChain and chain_der are for gateways.
        assert_eq!(
            r.chain_der.len(),
            2,
            "{profile}: chain_der is [issuer, root]"
        );
        assert_eq!(
            r.chain_der[1], root_der,
            "{profile}: chain_der ends with the root"
        );

        let b = open_bundle(tmp.path(), profile, &r.pkcs12, &password);
        assert_eq!(
            b.certs,
            vec![r.certificate_der.clone(), r.chain_der[0].clone()],
            "{profile}: the bundle holds the leaf and the issuing CA"
        );
        assert!(
            !b.certs.iter().any(|c| self_signed(c)),
            "{profile}: a self-signed certificate in the bundle"
        );
        assert!(
            !b.certs.contains(&root_der),
            "{profile}: the root is in the bundle"
        );

        // The device presents exactly what its bundle holds: leaf + issuing CA.
        let cfg = client_config_for_device(
            &gw.server_cert_der(),
            &b.certs[0],
            &b.certs[1..],
            &b.key_pkcs8,
        )
        .expect("client config");
        let got = gateway::hello(gw.local_addr(), Arc::new(cfg), STEP).await;
        let alert = gateway::refusal_alert(&got);
        let (_conn, greeting) = got.unwrap_or_else(|e| {
            panic!(
                "{profile}: the gateway refused the bundle's leaf + chain: {e} (alert {alert:?})"
            )
        });
        assert_eq!(greeting, "hello 山田 花子\n", "{profile}: greeting");

        // The strict verifier (root only, no known issuers) accepts the bundle's chain...
        let cfg = client_config_for_device(&strict_cert, &b.certs[0], &b.certs[1..], &b.key_pkcs8)
            .expect("client config");
        let got = gateway::hello(strict, Arc::new(cfg), STEP).await;
        match got {
            Ok((_, line)) => assert_eq!(line, "hello\n", "{profile}"),
            Err(e) => panic!("{profile}: the strict verifier refused the bundle's chain: {e}"),
        }
        // ...and refuses the leaf alone: the issuing CA in the bundle is needed, the root not.
        let cfg = client_config_for_device(&strict_cert, &b.certs[0], &[], &b.key_pkcs8)
            .expect("client config");
        let got = gateway::hello(strict, Arc::new(cfg), STEP).await;
        assert!(
            got.is_err(),
            "{profile}: the strict verifier accepted a leaf without its issuing CA"
        );
    }
    strict_task.abort();
    gw.shutdown().await;
}

#[tokio::test]
async fn include_root_true_brings_the_root_back() {
    if !tools::require_openssl() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let policy = tmp.path().join("policy.toml");
    std::fs::write(
        &policy,
        "# a legacy fleet that needs the root on the device\n\
         [keystore.android]\ninclude_root = true\n\n[keystore.ios]\ninclude_root = true\n",
    )
    .expect("write policy");
    let d = Daemon::start_with(DaemonOptions {
        policy: Some(policy),
        ..DaemonOptions::default()
    })
    .expect("daemon starts");
    let root_der =
        tools::cert_der_from_pem_file(&d.dev_dir().join("root-ca.crt")).expect("dev root");

    for (n, os, profile) in [
        (801, v1::TargetOs::Android, "android"),
        (802, v1::TargetOs::Ios, "ios"),
        (803, v1::TargetOs::Macos, "macos"),
    ] {
        let (r, password) = redeem(&d, n, os, profile).await;
        let b = open_bundle(tmp.path(), profile, &r.pkcs12, &password);
        let want = if profile == "macos" {
            // Not turned on for macos: still leaf + issuer.
            vec![r.certificate_der.clone(), r.chain_der[0].clone()]
        } else {
            vec![
                r.certificate_der.clone(),
                r.chain_der[0].clone(),
                root_der.clone(),
            ]
        };
        assert_eq!(b.certs, want, "{profile}: certificates in the bundle");

        if os != v1::TargetOs::Android && tools::require_python() {
            let mc = tmp.path().join(format!("{profile}.mobileconfig"));
            std::fs::write(&mc, &r.mobileconfig).expect("write mobileconfig");
            let (p12, _) = write_bundle(tmp.path(), &format!("{profile}-py"), &r.pkcs12, &password);
            let pw = tmp.path().join(format!("{profile}-py.pw"));
            let out = run(Command::new(tools::venv_bin("python"))
                .arg(tools::python_script("check_bundle.py"))
                .arg(&p12)
                .arg(&pw)
                .arg(&mc));
            let text = tools::text(&out);
            assert!(out.status.success(), "{profile}: check_bundle.py:\n{text}");
            let facts: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{profile}: JSON ({e}):\n{text}"));
            let m = &facts["mobileconfig"];
            let types: Vec<&str> = m["payloads"]
                .as_array()
                .map(|a| a.iter().filter_map(|p| p["type"].as_str()).collect())
                .unwrap_or_default();
            let with_root = profile == "ios";
            let mut want_types = vec!["com.apple.security.pkcs12", "com.apple.security.pkcs1"];
            if with_root {
                want_types.push("com.apple.security.root");
            }
            assert_eq!(types, want_types, "{profile}: payloads: {m}");
            assert_eq!(
                m["issuer_der"],
                hex::encode(&r.chain_der[0]),
                "{profile}: {m}"
            );
            if with_root {
                assert_eq!(m["root_der"], hex::encode(&root_der), "{profile}: {m}");
            } else {
                assert!(m["root_der"].is_null(), "{profile}: {m}");
            }
        }
    }
}
