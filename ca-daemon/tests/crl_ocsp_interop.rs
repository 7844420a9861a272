//! Interop checks of the CRL builder and the OCSP responder core against independent
//! implementations: `openssl crl` / `openssl ocsp` (3.0), pkilint (`lint_crl`,
//! `lint_ocsp_response` in the venv) and rustls/webpki client-certificate verification.
//!
//! The chain is made here with rcgen: a P-384 root, a P-256 issuing CA (pathLen 0), a delegated
//! OCSP responder (EKU OCSPSigning + id-pkix-ocsp-nocheck) and P-256 leaves whose CRL
//! distribution point is the CRL's issuing distribution point URI.
//!
//! External tools are required: a missing one fails the test with what to install, unless
//! `PKI_ALLOW_MISSING_TOOLS=1` is set (then that check is skipped with a message).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use base64::Engine as _;
use ca_daemon::crl::{CrlParams, RevokedEntry, build_crl, parse_crl_summary};
use ca_daemon::ocsp::{CertStatus, OcspResponder, ResponderIssuer, StatusLookup, decode_get_path};
use der::Decode;
use pki_policy::domain::RevocationReason;
use rcgen::{
    BasicConstraints, CertificateParams, CrlDistributionPoint, CustomExtension, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

const IDP_URI: &str = "http://ca.care-net.example.jp/crl/issuer-2026.crl";

// ------------------------------------------------------------------------------------------
// Tools

fn allow_missing() -> bool {
    std::env::var("PKI_ALLOW_MISSING_TOOLS").is_ok_and(|v| v == "1")
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("ca-daemon lives in the workspace")
        .to_path_buf()
}

/// `Some(path)` of a pkilint tool; `None` (skip) only with PKI_ALLOW_MISSING_TOOLS=1.
fn venv_tool(name: &str) -> Option<PathBuf> {
    let venv = std::env::var_os("PKI_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv"));
    let path = venv.join("bin").join(name);
    if path.is_file() {
        return Some(path);
    }
    if allow_missing() {
        eprintln!(
            "SKIPPED: {} not found (PKI_ALLOW_MISSING_TOOLS=1)",
            path.display()
        );
        return None;
    }
    panic!(
        "{} not found: create the venv with `python3 -m venv .venv && .venv/bin/pip install \
         pkilint cryptography` in the workspace, or set PKI_VENV (or PKI_ALLOW_MISSING_TOOLS=1)",
        path.display()
    );
}

/// `true` when openssl is on PATH; panics (or returns `false` with PKI_ALLOW_MISSING_TOOLS=1).
fn have_openssl() -> bool {
    if Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    if allow_missing() {
        eprintln!("SKIPPED: openssl not on PATH (PKI_ALLOW_MISSING_TOOLS=1)");
        return false;
    }
    panic!("openssl (3.x) is not on PATH: install it (apt-get install openssl)");
}

fn run(cmd: &mut Command) -> (bool, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("tool starts");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    (status.success(), text)
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    let (ok, text) = run(Command::new("openssl").args(args).current_dir(dir));
    assert!(ok, "openssl {args:?} failed:\n{text}");
    text
}

/// Runs a pkilint tool with `-s WARNING`; fails on any finding at WARNING or above except the
/// two known false positives of DESIGN §4.
fn pkilint(tool: &Path, args: &[&str], file: &Path) {
    const ALLOWED: [&str; 2] = ["pkix.invalid_uri_syntax", "pkix.invalid_domain_name_syntax"];
    let (ok, text) = run(Command::new(tool)
        .arg("lint")
        .args(args)
        .args(["-s", "WARNING"])
        .arg(file));
    if ok {
        return;
    }
    // A non-zero exit must come from findings only, and only from the allowed ones.
    let findings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("(WARNING)") || l.contains("(ERROR)") || l.contains("(FATAL)"))
        .collect();
    assert!(
        !findings.is_empty()
            && findings
                .iter()
                .all(|l| ALLOWED.iter().any(|a| l.contains(a))),
        "{} found problems in {}:\n{text}",
        tool.display(),
        file.display()
    );
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write test file");
    path
}

// ------------------------------------------------------------------------------------------
// The chain

struct Ca {
    der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    key_pkcs8: Vec<u8>,
}

impl Ca {
    fn key(&self) -> KeyPair {
        KeyPair::try_from(&self.key_pkcs8[..]).expect("PKCS#8 of our own key")
    }
}

struct Leaf {
    der: Vec<u8>,
    serial_hex: String,
}

struct Chain {
    root: Ca,
    issuer: Ca,
    responder_der: Vec<u8>,
    responder_key_pkcs8: Vec<u8>,
}

fn random_serial() -> (rcgen::SerialNumber, String) {
    let mut b: [u8; 16] = rand::random();
    // Positive and canonical (no leading zero octet): first octet in 0x01..=0x7f.
    b[0] = (b[0] & 0x7f).max(1);
    (rcgen::SerialNumber::from_slice(&b), hex::encode(b))
}

/// `C=JP` (PrintableString, as X.520 requires) then `O` (if any) and `CN` (UTF8String).
/// Starts from an empty name: `CertificateParams::default()` carries a CN of its own.
fn dn(o: Option<&str>, cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CountryName,
        DnValue::PrintableString("JP".try_into().expect("printable")),
    );
    if let Some(o) = o {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, cn);
    dn
}

fn validity(p: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(days);
}

fn ca(cn: &str, alg: &'static rcgen::SignatureAlgorithm, parent: Option<&Ca>) -> Ca {
    let key = KeyPair::generate_for(alg).expect("keygen");
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(Some("介護ネットワーク"), cn);
    p.is_ca = IsCa::Ca(match parent {
        None => BasicConstraints::Unconstrained,
        Some(_) => BasicConstraints::Constrained(0),
    });
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.serial_number = Some(random_serial().0);
    p.use_authority_key_identifier_extension = parent.is_some();
    validity(&mut p, 3650);
    let cert = match parent {
        None => p.self_signed(&key),
        Some(parent) => p.signed_by(&key, &parent.issuer),
    }
    .expect("CA certificate");
    let key_pkcs8 = key.serialize_der();
    Ca {
        der: cert.der().to_vec(),
        issuer: Issuer::new(p, key),
        key_pkcs8,
    }
}

fn leaf(issuer: &Ca, cn: &str) -> Leaf {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(Some("さくら訪問看護ステーション"), cn);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.crl_distribution_points = vec![CrlDistributionPoint {
        uris: vec![IDP_URI.to_owned()],
    }];
    p.use_authority_key_identifier_extension = true;
    let (serial, serial_hex) = random_serial();
    p.serial_number = Some(serial);
    validity(&mut p, 365);
    let cert = p.signed_by(&key, &issuer.issuer).expect("leaf");
    Leaf {
        der: cert.der().to_vec(),
        serial_hex,
    }
}

fn chain() -> Chain {
    let root = ca("Care-Net Root CA", &rcgen::PKCS_ECDSA_P384_SHA384, None);
    let issuer = ca(
        "Care-Net Issuing CA 2026",
        &rcgen::PKCS_ECDSA_P256_SHA256,
        Some(&root),
    );
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(None, "Care-Net Issuing CA 2026 OCSP Responder");
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
    // id-pkix-ocsp-nocheck (RFC 6960 §4.2.2.2.1): NULL.
    p.custom_extensions = vec![CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 5, 5, 7, 48, 1, 5],
        vec![0x05, 0x00],
    )];
    p.use_authority_key_identifier_extension = true;
    p.serial_number = Some(random_serial().0);
    validity(&mut p, 30);
    let responder = p.signed_by(&key, &issuer.issuer).expect("responder");
    Chain {
        root,
        issuer,
        responder_der: responder.der().to_vec(),
        responder_key_pkcs8: key.serialize_der(),
    }
}

impl Chain {
    fn responder(&self) -> OcspResponder {
        OcspResponder::new(
            vec![ResponderIssuer {
                issuer_id: "issuer-2026".into(),
                issuer_cert_der: self.issuer.der.clone(),
                responder_cert_der: self.responder_der.clone(),
                responder_key: KeyPair::try_from(&self.responder_key_pkcs8[..]).expect("key"),
            }],
            Duration::hours(24),
            Duration::hours(8),
        )
        .expect("responder")
    }

    /// root.pem, issuer.pem and chain.pem (root + issuer) in `dir`.
    fn write_pems(&self, dir: &Path) {
        let root = pem("CERTIFICATE", &self.root.der);
        let issuer = pem("CERTIFICATE", &self.issuer.der);
        write(dir, "root.pem", &root);
        write(dir, "issuer.pem", &issuer);
        write(dir, "chain.pem", format!("{root}{issuer}"));
    }
}

struct Table(HashMap<String, CertStatus>);

impl StatusLookup for Table {
    fn status(&self, issuer_id: &str, serial_hex: &str) -> CertStatus {
        assert_eq!(issuer_id, "issuer-2026");
        self.0
            .get(serial_hex)
            .copied()
            .unwrap_or(CertStatus::Unknown)
    }
}

fn crl_for(chain: &Chain, idp: &str, entries: &[RevokedEntry], number: u64) -> Vec<u8> {
    let now = OffsetDateTime::now_utc();
    build_crl(
        &chain.issuer.der,
        &chain.issuer.key(),
        &CrlParams {
            number,
            this_update: now - Duration::minutes(1),
            next_update: now + Duration::hours(24),
            idp_uri: idp,
            entries,
        },
    )
    .expect("CRL builds")
}

// ------------------------------------------------------------------------------------------
// CRL

#[test]
fn crl_openssl_verify_text_and_pkilint() {
    let chain = chain();
    let now = OffsetDateTime::now_utc();
    let revoked: Vec<Leaf> = (0..3)
        .map(|i| leaf(&chain.issuer, &format!("職員 {i}")))
        .collect();
    let reasons = [
        RevocationReason::KeyCompromise,
        RevocationReason::Unspecified,
        RevocationReason::CessationOfOperation,
    ];
    let entries: Vec<RevokedEntry> = revoked
        .iter()
        .zip(reasons)
        .map(|(l, reason)| RevokedEntry {
            serial_hex: l.serial_hex.clone(),
            revoked_at: now - Duration::minutes(5),
            reason,
            invalidity_date: (reason == RevocationReason::KeyCompromise)
                .then(|| now - Duration::days(2)),
        })
        .collect();
    let der = crl_for(&chain, IDP_URI, &entries, 1234);

    let summary = parse_crl_summary(&der).expect("summary");
    assert_eq!(summary.number, Some(1234));
    assert_eq!(
        summary.serials,
        entries
            .iter()
            .map(|e| (
                e.serial_hex.clone(),
                (e.reason != RevocationReason::Unspecified).then(|| e.reason.code())
            ))
            .collect::<Vec<_>>()
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let crl_path = write(dir.path(), "issuer.crl", &der);
    if have_openssl() {
        chain.write_pems(dir.path());
        let out = openssl(
            dir.path(),
            &[
                "crl",
                "-inform",
                "DER",
                "-in",
                "issuer.crl",
                "-CAfile",
                "chain.pem",
                "-noout",
                "-verify",
            ],
        );
        assert!(out.contains("verify OK"), "{out}");
        let text = openssl(
            dir.path(),
            &[
                "crl",
                "-inform",
                "DER",
                "-in",
                "issuer.crl",
                "-noout",
                "-text",
            ],
        );
        assert!(text.contains("Version 2 (0x1)"), "{text}");
        assert!(text.contains("X509v3 CRL Number"), "{text}");
        assert!(text.contains("1234"), "{text}");
        assert!(
            text.contains("X509v3 Issuing Distribution Point: critical"),
            "{text}"
        );
        assert!(text.contains(&format!("URI:{IDP_URI}")), "{text}");
        assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
        for e in &entries {
            assert!(
                text.contains(&e.serial_hex.to_uppercase()),
                "serial {} missing:\n{text}",
                e.serial_hex
            );
        }
        assert!(text.contains("Key Compromise"), "{text}");
        assert!(text.contains("Cessation Of Operation"), "{text}");
        assert!(
            !text.contains("Unspecified"),
            "unspecified must be omitted:\n{text}"
        );
        assert_eq!(text.matches("X509v3 CRL Reason Code").count(), 2, "{text}");
        assert_eq!(text.matches("Invalidity Date").count(), 1, "{text}");
    }
    if let Some(lint) = venv_tool("lint_crl") {
        pkilint(&lint, &["-t", "CRL", "-p", "PKIX"], &crl_path);
        // Also an empty CRL (no revokedCertificates field at all).
        let empty = write(dir.path(), "empty.crl", crl_for(&chain, IDP_URI, &[], 1));
        pkilint(&lint, &["-t", "CRL", "-p", "PKIX"], &empty);
    }
}

#[test]
fn crl_webpki_accepts_good_rejects_revoked_and_needs_matching_idp() {
    use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
    use rustls::server::WebPkiClientVerifier;
    use rustls::server::danger::ClientCertVerifier;

    let chain = chain();
    let good = leaf(&chain.issuer, "山田 花子");
    let bad = leaf(&chain.issuer, "佐藤 一郎");
    let entries = [RevokedEntry {
        serial_hex: bad.serial_hex.clone(),
        revoked_at: OffsetDateTime::now_utc() - Duration::minutes(1),
        reason: RevocationReason::KeyCompromise,
        invalidity_date: None,
    }];
    let verifier = |crl: Vec<u8>| {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(chain.root.der.clone()))
            .expect("root");
        WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .with_crls(vec![CertificateRevocationListDer::from(crl)])
        .only_check_end_entity_revocation()
        .enforce_revocation_expiration()
        .build()
        .expect("verifier")
    };
    let intermediates = [CertificateDer::from(chain.issuer.der.clone())];
    let check = |v: &Arc<dyn ClientCertVerifier>, l: &Leaf| {
        v.verify_client_cert(
            &CertificateDer::from(l.der.clone()),
            &intermediates,
            UnixTime::now(),
        )
        .map(|_| ())
    };

    let v = verifier(crl_for(&chain, IDP_URI, &entries, 7));
    check(&v, &good).expect("good leaf accepted with the CRL");
    match check(&v, &bad) {
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => {}
        other => panic!("revoked leaf must be rejected as Revoked, got {other:?}"),
    }

    // The same CRL under another IDP URI is not authoritative for these certificates: webpki
    // cannot tell their status, which proves it matched the IDP above.
    let v = verifier(crl_for(
        &chain,
        "http://elsewhere.example.jp/other.crl",
        &entries,
        8,
    ));
    match check(&v, &bad) {
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownRevocationStatus,
        )) => {}
        other => panic!("non-matching IDP must leave the status unknown, got {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------
// OCSP

#[test]
fn ocsp_openssl_good_revoked_unknown_nonce_cache_and_pkilint() {
    if !have_openssl() {
        return;
    }
    let chain = chain();
    let responder = chain.responder();
    let good = leaf(&chain.issuer, "山田 花子");
    let revoked = leaf(&chain.issuer, "佐藤 一郎");
    let unknown = leaf(&chain.issuer, "未登録");
    let now = OffsetDateTime::now_utc();
    let table = Table(HashMap::from([
        (good.serial_hex.clone(), CertStatus::Good),
        (
            revoked.serial_hex.clone(),
            CertStatus::Revoked {
                at: now - Duration::minutes(3),
                reason: RevocationReason::KeyCompromise,
            },
        ),
    ]));
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    chain.write_pems(d);
    let lint = venv_tool("lint_ocsp_response");

    for (name, l, want) in [
        ("good", &good, "good"),
        ("revoked", &revoked, "revoked"),
        ("unknown", &unknown, "unknown"),
    ] {
        let leaf_pem = format!("{name}.pem");
        write(d, &leaf_pem, pem("CERTIFICATE", &l.der));

        // With a nonce (openssl's default): signed fresh, nonce echoed and checked by openssl.
        let req = format!("{name}-req.der");
        openssl(
            d,
            &[
                "ocsp",
                "-issuer",
                "issuer.pem",
                "-cert",
                &leaf_pem,
                "-reqout",
                &req,
            ],
        );
        let resp = responder.respond(&std::fs::read(d.join(&req)).expect("req"), now, &table);
        let resp_file = format!("{name}-resp.der");
        let resp_path = write(d, &resp_file, &resp);
        let out = openssl(
            d,
            &[
                // With -cert, openssl would build a fresh request with its own nonce and
                // ignore -reqin: the nonce is checked against the request file only without.
                "ocsp",
                "-reqin",
                &req,
                "-respin",
                &resp_file,
                "-CAfile",
                "chain.pem",
                "-resp_text",
            ],
        );
        assert!(out.contains("Response verify OK"), "{name}:\n{out}");
        assert!(
            out.contains(&format!("Cert Status: {want}")),
            "{name}:\n{out}"
        );
        assert!(out.contains("OCSP Nonce"), "{name}: nonce echoed:\n{out}");
        assert!(
            !out.to_lowercase().contains("nonce verify error"),
            "{name}:\n{out}"
        );
        assert!(!out.contains("WARNING: no nonce"), "{name}:\n{out}");
        // responderID byKey: openssl prints the key hash in hex (a name would show `CN=`).
        let responder_id = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("Responder Id: "))
            .expect("Responder Id line");
        assert!(
            responder_id.len() == 40 && responder_id.chars().all(|c| c.is_ascii_hexdigit()),
            "responderID byKey:\n{out}"
        );
        assert!(out.contains("ecdsa-with-SHA256"), "{out}");
        assert!(
            out.contains("OCSP Signing"),
            "responder cert included:\n{out}"
        );
        if name == "revoked" {
            assert!(out.contains("Reason: keyCompromise"), "{out}");
        }
        if let Some(lint) = &lint {
            pkilint(lint, &[], &resp_path);
        }

        // Without a nonce (RFC 5019): answered from the cache after the first signature.
        let req = format!("{name}-req-nononce.der");
        openssl(
            d,
            &[
                "ocsp",
                "-issuer",
                "issuer.pem",
                "-cert",
                &leaf_pem,
                "-no_nonce",
                "-reqout",
                &req,
            ],
        );
        let req_der = std::fs::read(d.join(&req)).expect("req");
        let first = responder.respond(&req_der, now, &table);
        let signatures = responder.signature_count();
        let second = responder.respond(&req_der, now + Duration::seconds(30), &table);
        assert_eq!(first, second, "cached response is byte-identical");
        assert_eq!(
            responder.signature_count(),
            signatures,
            "cache hit costs no signature"
        );
        let resp_file = format!("{name}-resp-nononce.der");
        let resp_path = write(d, &resp_file, &second);
        let out = openssl(
            d,
            &[
                "ocsp",
                "-respin",
                &resp_file,
                "-issuer",
                "issuer.pem",
                "-CAfile",
                "chain.pem",
                "-cert",
                &leaf_pem,
                "-no_nonce",
                "-resp_text",
            ],
        );
        assert!(out.contains("Response verify OK"), "{name}:\n{out}");
        assert!(
            out.contains(&format!("{leaf_pem}: {want}")),
            "{name}:\n{out}"
        );
        if let Some(lint) = &lint {
            pkilint(lint, &[], &resp_path);
        }

        // RFC 5019 GET: the base64 of the request decodes back to it.
        let b64 = base64::engine::general_purpose::STANDARD.encode(&req_der);
        let url = b64
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        assert_eq!(decode_get_path(&url).expect("GET path"), req_der);
    }

    // A status change reaches clients after invalidate (and presign warms the cache again).
    let req = std::fs::read(d.join("good-req-nononce.der")).expect("req");
    let at = now + Duration::minutes(1);
    responder.invalidate("issuer-2026", &good.serial_hex);
    responder
        .presign(
            "issuer-2026",
            &good.serial_hex,
            CertStatus::Revoked {
                at,
                reason: RevocationReason::Superseded,
            },
            at,
        )
        .expect("presign");
    let signatures = responder.signature_count();
    let resp = responder.respond(&req, at, &table);
    assert_eq!(
        responder.signature_count(),
        signatures,
        "presigned response served"
    );
    write(d, "good-after.der", &resp);
    let out = openssl(
        d,
        &[
            "ocsp",
            "-respin",
            "good-after.der",
            "-issuer",
            "issuer.pem",
            "-CAfile",
            "chain.pem",
            "-cert",
            "good.pem",
            "-no_nonce",
            "-resp_text",
        ],
    );
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(out.contains("good.pem: revoked"), "{out}");
    assert!(out.contains("Reason: superseded"), "{out}");
}

#[test]
fn ocsp_garbage_is_malformed_and_foreign_issuer_unauthorized() {
    let chain = chain();
    let responder = chain.responder();
    let table = Table(HashMap::new());
    let now = OffsetDateTime::now_utc();
    let status = |der: &[u8]| {
        x509_ocsp::OcspResponse::from_der(der)
            .expect("always a DER OCSPResponse")
            .response_status
    };
    for garbage in [
        &b""[..],
        b"GET / HTTP/1.1\r\n",
        &[0x30, 0x80, 0x00, 0x00],
        &[0xff; 64],
    ] {
        assert_eq!(
            status(&responder.respond(garbage, now, &table)),
            x509_ocsp::OcspResponseStatus::MalformedRequest
        );
    }
    if !have_openssl() {
        return;
    }
    // Another issuing CA under the same root, which this responder does not serve.
    let other = ca(
        "Other Issuing CA",
        &rcgen::PKCS_ECDSA_P256_SHA256,
        Some(&chain.root),
    );
    let foreign = leaf(&other, "他院 職員");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write(d, "other.pem", pem("CERTIFICATE", &other.der));
    write(d, "foreign.pem", pem("CERTIFICATE", &foreign.der));
    openssl(
        d,
        &[
            "ocsp",
            "-issuer",
            "other.pem",
            "-cert",
            "foreign.pem",
            "-reqout",
            "req.der",
        ],
    );
    let resp = responder.respond(&std::fs::read(d.join("req.der")).expect("req"), now, &table);
    assert_eq!(status(&resp), x509_ocsp::OcspResponseStatus::Unauthorized);
    write(d, "resp.der", &resp);
    let (_, out) = run(Command::new("openssl")
        .args(["ocsp", "-respin", "resp.der", "-resp_text"])
        .current_dir(d));
    assert!(out.contains("unauthorized (6)"), "{out}");
    write(d, "garbage.der", responder.respond(b"junk", now, &table));
    let (_, out) = run(Command::new("openssl")
        .args(["ocsp", "-respin", "garbage.der", "-resp_text"])
        .current_dir(d));
    assert!(out.contains("malformedrequest (1)"), "{out}");
    assert_eq!(responder.signature_count(), 0);
}
