//! The CRL / issuer-certificate profile every mainstream verifier accepts (issue #14 item 1; the
//! rule is in `ca_daemon::pki`'s module doc and docs/gateways.md): with the daemon's CRLs
//! (the issuer's CRL and the root's, as served at `/crl/bundle.pem`) a two-tier chain of a
//! good device verifies and the chain of a revoked device is rejected
//!
//! - by OpenSSL in whole-chain mode (`openssl verify -crl_check_all`, what nginx and HAProxy
//!   do), which wants an in-scope CRL for the root too;
//! - by rustls-webpki in its default whole-chain mode and in end-entity mode;
//! - by Java's PKIX `CertPathValidator` (CRLs from a `CertStore`, no network);
//!
//! and pkilint still finds nothing in the issuer certificate and the root CRL.
#![forbid(unsafe_code)]

mod edge_common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_common::{enroll, have_openssl, revoke, write_pem};
use integration::Daemon;
use integration::tools::{self, run, text};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};

/// The daemon's CRL bundle once it lists `serial` (the CRL is republished within a second).
fn bundle_listing(d: &Daemon, serial: &str) -> Vec<u8> {
    let started = Instant::now();
    loop {
        let (code, body) = integration::http_get(d.http, "/crl/bundle.pem").expect("GET bundle");
        assert_eq!(code, 200, "GET /crl/bundle.pem");
        let pem = String::from_utf8_lossy(&body).to_string();
        let listed = pem_crls(&pem).iter().any(|der| {
            x509_parser::parse_x509_crl(der).is_ok_and(|(_, c)| {
                c.iter_revoked_certificates().any(|r| {
                    hex::encode(r.raw_serial()).trim_start_matches('0')
                        == serial.trim_start_matches('0')
                })
            })
        });
        if listed {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the CRL bundle does not list {serial} after 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pem_crls(pem: &str) -> Vec<Vec<u8>> {
    use rustls_pki_types::pem::PemObject as _;
    CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect()
}

fn openssl_verify(dir: &Path, leaf: &str) -> (bool, String) {
    let out = run(Command::new("openssl").current_dir(dir).args([
        "verify",
        "-crl_check_all",
        "-CAfile",
        "root.pem",
        "-untrusted",
        "issuer.pem",
        "-CRLfile",
        "bundle.pem",
        leaf,
    ]));
    (out.status.success(), text(&out))
}

const JAVA_VERIFY: &str = r#"
import java.io.FileInputStream;
import java.security.cert.*;
import java.util.*;

public class Verify {
    static X509Certificate cert(CertificateFactory cf, String f) throws Exception {
        try (FileInputStream in = new FileInputStream(f)) {
            return (X509Certificate) cf.generateCertificate(in);
        }
    }
    public static void main(String[] a) throws Exception {
        CertificateFactory cf = CertificateFactory.getInstance("X.509");
        X509Certificate root = cert(cf, a[0]), issuer = cert(cf, a[1]), leaf = cert(cf, a[2]);
        Collection<? extends CRL> crls;
        try (FileInputStream in = new FileInputStream(a[3])) { crls = cf.generateCRLs(in); }
        CertPath path = cf.generateCertPath(List.of(leaf, issuer));
        PKIXParameters p = new PKIXParameters(Set.of(new TrustAnchor(root, null)));
        p.setRevocationEnabled(true);
        p.addCertStore(CertStore.getInstance("Collection", new CollectionCertStoreParameters(crls)));
        try {
            CertPathValidator.getInstance("PKIX").validate(path, p);
            System.out.println("VALID (" + crls.size() + " CRLs)");
        } catch (CertPathValidatorException e) {
            System.out.println("REJECTED reason=" + e.getReason() + " index=" + e.getIndex() + ": " + e.getMessage());
            System.exit(3);
        }
    }
}
"#;

/// Java PKIX verdict: Some(valid) or None when Java is not there (and that is allowed).
fn java_verify(dir: &Path, leaf: &str) -> Option<(bool, String)> {
    // `java File.java` compiles the source first: the JDK's compiler must be there (a JRE alone
    // has keytool but not javac).
    if !tools::require(
        Path::new("javac"),
        &["-version"],
        "a JDK 17 (apt-get install openjdk-17-jdk-headless)",
    ) {
        return None;
    }
    let out = run(Command::new("java").current_dir(dir).args([
        "-Dcom.sun.security.enableCRLDP=false",
        "Verify.java",
        "root.pem",
        "issuer.pem",
        leaf,
        "bundle.pem",
    ]));
    let t = text(&out);
    assert!(
        t.contains("VALID") || t.contains("REJECTED"),
        "java Verify.java did not run: {t}"
    );
    Some((out.status.success(), t))
}

fn webpki_verify(
    root: &[u8],
    issuer: &[u8],
    leaf: &[u8],
    crls: &[Vec<u8>],
    end_entity_only: bool,
) -> Result<(), rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(root.to_vec()))
        .expect("root");
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .with_crls(crls.iter().cloned().map(CertificateRevocationListDer::from));
    let builder = if end_entity_only {
        builder.only_check_end_entity_revocation()
    } else {
        builder
    };
    let verifier = builder.build().expect("verifier");
    verifier
        .verify_client_cert(
            &CertificateDer::from(leaf.to_vec()),
            &[CertificateDer::from(issuer.to_vec())],
            UnixTime::now(),
        )
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_crls_verify_in_openssl_whole_chain_webpki_both_modes_and_java_pkix() {
    if !have_openssl() {
        return;
    }
    let d = Daemon::start().expect("daemon starts");
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let good = enroll(&d, dir, 1).await;
    let bad = enroll(&d, dir, 2).await;
    revoke(&d, &bad.serial).await;
    let bundle = bundle_listing(&d, &bad.serial);
    std::fs::write(dir.join("bundle.pem"), &bundle).expect("write bundle");
    let crls = pem_crls(&String::from_utf8_lossy(&bundle));
    assert_eq!(crls.len(), 2, "issuer CRL and root CRL");
    write_pem(&dir.join("root.pem"), "CERTIFICATE", &[&good.root_der]);
    write_pem(&dir.join("issuer.pem"), "CERTIFICATE", &[&good.issuer_der]);
    write_pem(&dir.join("good.pem"), "CERTIFICATE", &[&good.leaf_der]);
    write_pem(&dir.join("bad.pem"), "CERTIFICATE", &[&bad.leaf_der]);

    // OpenSSL, whole chain (root included).
    let (ok, out) = openssl_verify(dir, "good.pem");
    assert!(ok, "openssl verify -crl_check_all, good device: {out}");
    let (ok, out) = openssl_verify(dir, "bad.pem");
    assert!(
        !ok,
        "openssl verify -crl_check_all accepted a revoked device: {out}"
    );
    assert!(out.contains("certificate revoked"), "{out}");

    // webpki, whole chain (default) and end entity only.
    for ee_only in [false, true] {
        let mode = if ee_only { "end-entity" } else { "whole-chain" };
        webpki_verify(
            &good.root_der,
            &good.issuer_der,
            &good.leaf_der,
            &crls,
            ee_only,
        )
        .unwrap_or_else(|e| panic!("webpki {mode}, good device: {e}"));
        let r = webpki_verify(
            &bad.root_der,
            &bad.issuer_der,
            &bad.leaf_der,
            &crls,
            ee_only,
        );
        assert!(
            matches!(
                r,
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Revoked
                ))
            ),
            "webpki {mode}, revoked device: {r:?}"
        );
    }
    // Whole-chain webpki really needs the root CRL (so the check above covered it).
    let issuer_crl_only: Vec<Vec<u8>> = crls
        .iter()
        .filter(|c| {
            x509_parser::parse_x509_crl(c)
                .is_ok_and(|(_, crl)| crl.issuer().as_raw() != crl_issuer_of_root(&good.root_der))
        })
        .cloned()
        .collect();
    assert_eq!(issuer_crl_only.len(), 1);
    assert!(
        webpki_verify(
            &good.root_der,
            &good.issuer_der,
            &good.leaf_der,
            &issuer_crl_only,
            false
        )
        .is_err(),
        "webpki whole-chain mode without the root CRL should not pass"
    );

    // Java PKIX.
    std::fs::write(dir.join("Verify.java"), JAVA_VERIFY).expect("write Verify.java");
    if let Some((ok, out)) = java_verify(dir, "good.pem") {
        assert!(ok, "Java PKIX, good device: {out}");
        let (ok, out) = java_verify(dir, "bad.pem").unwrap_or_default();
        assert!(
            !ok && out.contains("REVOKED"),
            "Java PKIX, revoked device: {out}"
        );
    }

    // pkilint: the issuer certificate and the root CRL stay clean.
    if tools::require_pkilint("lint_pkix_cert") {
        let findings = tools::pkilint("lint_pkix_cert", &[], &dir.join("issuer.pem"));
        assert!(findings.is_empty(), "issuer certificate: {findings:#?}");
        let (code, root_crl) = integration::http_get(d.http, "/crl/root.crl").expect("root CRL");
        assert_eq!(code, 200);
        write_pem(&dir.join("root-crl.pem"), "X509 CRL", &[&root_crl]);
        let findings = tools::pkilint(
            "lint_crl",
            &["-t", "CRL", "-p", "PKIX"],
            &dir.join("root-crl.pem"),
        );
        assert!(findings.is_empty(), "root CRL: {findings:#?}");
    }
}

fn crl_issuer_of_root(root_der: &[u8]) -> Vec<u8> {
    use x509_parser::prelude::FromDer as _;
    x509_parser::certificate::X509Certificate::from_der(root_der)
        .map(|(_, c)| c.subject().as_raw().to_vec())
        .unwrap_or_default()
}
