//! Property tests of the two encoders whose output other software must read back exactly:
//! PKCS#12 bundles ([`ca_daemon::pkcs12::build_pfx`]) and CRLs ([`ca_daemon::crl::build_crl`]).
//! Each is checked by parsers that share no code with our encoders.
//!
//! - `pkcs12_bundles_open_in_independent_parsers`: per proptest case, 20 bundles for each of
//!   the five default keystore profiles of `Policy::default_policy()`, with random friendly
//!   names (ASCII, Japanese, emoji, exactly 64 characters) and random 8-digit passwords, all
//!   for one P-256 key and certificate. Every bundle is opened by Python `cryptography` (one
//!   interpreter for the whole batch: a JSON manifest in a temp dir, one script printing the
//!   fingerprints of what it found) and the 3DES ones also by the `p12` crate in-process; both
//!   must find our key, our leaf, the chain and the friendly name, and reject a wrong password.
//! - `crl_keeps_every_entry`: random revoked entries (serials of 1 to 16 octets given in any
//!   hex case and with leading zeros, every reason, optional invalidity dates, times on both
//!   sides of the UTCTime/GeneralizedTime boundary) are encoded by `build_crl` and parsed by
//!   x509-parser; the multisets of (serial, reason, invalidity date, revocation date) match and
//!   the signature verifies.
//!
//! Python comes from the venv in `PKI_VENV`, else `<workspace>/.venv`; if it (or its
//! `cryptography`) is missing the test fails with what to install, unless
//! `PKI_ALLOW_MISSING_TOOLS=1`. Case counts are bounded so the file runs in well under a
//! minute in a debug build on two cores.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ca_daemon::crl::{CrlParams, RevokedEntry, build_crl};
use ca_daemon::pkcs12::{BundleInput, KeystoreProfile, build_pfx, bundle_friendly_name};
use pki_policy::Policy;
use pki_policy::domain::RevocationReason;
use pki_policy::keystore::BagEncryption;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use time::macros::datetime;
use x509_parser::prelude::FromDer as _;

/// Bundles per profile and proptest case.
const BUNDLES_PER_PROFILE: usize = 20;

// --- fixtures ----------------------------------------------------------------------------------

/// A root, an issuer and a P-256 leaf with its key.
struct Pki {
    root: Vec<u8>,
    issuer: Vec<u8>,
    leaf: Vec<u8>,
    leaf_key: Vec<u8>,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CountryName, "JP");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x11, 0x22]));
    p.not_before = datetime!(2025-01-01 0:00 UTC);
    p.not_after = datetime!(2045-01-01 0:00 UTC);
    p
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
        let root_key = KeyPair::generate_for(alg).expect("root key");
        let root_params = ca_params("プロパティ テスト ルート CA");
        let root = root_params.self_signed(&root_key).expect("root");
        let root_issuer = Issuer::new(root_params, &root_key);
        let issuer_key = KeyPair::generate_for(alg).expect("issuer key");
        let issuer_params = ca_params("プロパティ テスト 発行 CA");
        let issuer = issuer_params
            .signed_by(&issuer_key, &root_issuer)
            .expect("issuer");
        let issuer_issuer = Issuer::new(issuer_params, &issuer_key);
        let leaf_key = KeyPair::generate_for(alg).expect("leaf key");
        let mut leaf_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        leaf_params
            .distinguished_name
            .push(DnType::OrganizationName, "訪問看護ステーションさくら");
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "山田 花子");
        leaf_params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x5a, 0x17]));
        leaf_params.not_before = datetime!(2026-01-01 0:00 UTC);
        leaf_params.not_after = datetime!(2027-01-01 0:00 UTC);
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer_issuer)
            .expect("leaf");
        Pki {
            root: root.der().to_vec(),
            issuer: issuer.der().to_vec(),
            leaf: leaf.der().to_vec(),
            leaf_key: leaf_key.serialize_der(),
        }
    })
}

fn profiles() -> Vec<KeystoreProfile> {
    let profiles: Vec<KeystoreProfile> = Policy::default_policy().keystore.into_values().collect();
    let mut names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["android", "ios", "macos", "windows", "windows-legacy"],
        "the five default keystore profiles"
    );
    profiles
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// --- external tools ----------------------------------------------------------------------------

fn allow_missing() -> bool {
    std::env::var("PKI_ALLOW_MISSING_TOOLS").as_deref() == Ok("1")
}

fn venv_python() -> PathBuf {
    std::env::var_os("PKI_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("the crate lives in the workspace")
                .join(".venv")
        })
        .join("bin")
        .join("python")
}

/// The venv's Python when it runs and imports `cryptography`; panics (or, with
/// `PKI_ALLOW_MISSING_TOOLS=1`, returns `None`) otherwise.
fn python_with_cryptography() -> Option<PathBuf> {
    static PYTHON: OnceLock<Option<PathBuf>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let python = venv_python();
            let ok = Command::new(&python)
                .args(["-c", "import cryptography"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return Some(python);
            }
            assert!(
                allow_missing(),
                "{} with the `cryptography` package is required by this test: run \
                 scripts/setup-venv.sh (or `python3 -m venv .venv && .venv/bin/pip install \
                 cryptography`), or point PKI_VENV at such a venv (or set \
                 PKI_ALLOW_MISSING_TOOLS=1 to skip)",
                python.display()
            );
            eprintln!("SKIPPED (Python part): {} is missing", python.display());
            None
        })
        .clone()
}

/// Loads every bundle of the manifest and prints, per bundle, SHA-256 fingerprints of what it
/// found (the private key re-serialised as unencrypted PKCS#8, the public key of the private
/// key and of the certificate as SPKI, the certificate, the additional certificates) plus the
/// friendly name, and whether a wrong password is refused. The reference key file is loaded
/// and re-serialised the same way, so key fingerprints compare like with like.
const PYTHON_FINGERPRINTS: &str = r#"
import hashlib, json, sys
from cryptography.hazmat.primitives.serialization import (
    Encoding, NoEncryption, PrivateFormat, PublicFormat, load_der_private_key, pkcs12)

DER = Encoding.DER
fp = lambda b: hashlib.sha256(b).hexdigest()
pkcs8 = lambda k: k.private_bytes(DER, PrivateFormat.PKCS8, NoEncryption())
spki = lambda k: k.public_bytes(DER, PublicFormat.SubjectPublicKeyInfo)

manifest = json.load(open(sys.argv[1]))
reference = load_der_private_key(open(manifest["reference_key"], "rb").read(), None)
out = {"reference_key": fp(pkcs8(reference)), "bundles": {}}
for b in manifest["bundles"]:
    data = open(b["file"], "rb").read()
    pw = b["password"].encode()
    r = {}
    try:
        p = pkcs12.load_pkcs12(data, pw)
        c = p.cert.certificate
        r = {
            "key": fp(pkcs8(p.key)),
            "key_spki": fp(spki(p.key.public_key())),
            "cert_spki": fp(spki(c.public_key())),
            "cert": fp(c.public_bytes(DER)),
            "chain": [fp(x.certificate.public_bytes(DER)) for x in p.additional_certs],
            "friendly_name_hex": (p.cert.friendly_name or b"").hex(),
        }
    except Exception as e:
        r = {"error": "%s: %s" % (type(e).__name__, e)}
    try:
        pkcs12.load_pkcs12(data, pw + b"0")
        r["wrong_password_refused"] = False
    except ValueError:
        r["wrong_password_refused"] = True
    out["bundles"][b["label"]] = r
print(json.dumps(out))
"#;

// --- PKCS#12 -----------------------------------------------------------------------------------

/// Friendly names of the four kinds the brief asks for, tagged with the kind.
fn friendly_name() -> impl Strategy<Value = (&'static str, String)> {
    prop_oneof![
        // Printable ASCII, not blank (a blank name is refused by design).
        "[!-~][ -~]{0,63}".prop_map(|s| ("ascii", s)),
        "[ぁ-んァ-ヶ一-龥ー・]{1,16}( [ぁ-んァ-ヶ一-龥]{1,15})?".prop_map(|s| ("japanese", s)),
        "[😀-🙏🚀-🛿]{1,16}".prop_map(|s| ("emoji", s)),
        "[a-zA-Z0-9ぁ-ん一-龥😀-🙏]{31} [a-zA-Z0-9ぁ-ん一-龥😀-🙏]{32}"
            .prop_map(|s| ("64-chars", s)),
    ]
}

/// One bundle to build: friendly name (with its kind) and password.
type Spec = ((&'static str, String), String);

fn batch() -> impl Strategy<Value = Vec<Spec>> {
    prop::collection::vec((friendly_name(), "[0-9]{8}"), 5 * BUNDLES_PER_PROFILE)
}

/// The second, in-process parser for the 3DES profiles: the `p12` crate (0.6.3; it reads only
/// pbeWithSHAAnd3-KeyTripleDES-CBC / RC2 bags with a SHA-1 MAC).
fn check_with_p12(label: &str, pfx: &[u8], name: &str, pw: &str) -> Result<(), TestCaseError> {
    let f = pki();
    let parsed = p12::PFX::parse(pfx)
        .map_err(|e| TestCaseError::fail(format!("{label}: p12 cannot parse: {e:?}")))?;
    prop_assert!(
        parsed.verify_mac(pw),
        "{label}: p12: MAC with the right password"
    );
    prop_assert!(
        !parsed.verify_mac(&format!("{pw}0")),
        "{label}: p12: wrong password"
    );
    let keys = parsed
        .key_bags(pw)
        .map_err(|e| TestCaseError::fail(format!("{label}: p12 key bags: {e:?}")))?;
    prop_assert_eq!(keys, vec![f.leaf_key.clone()], "{}: p12 key", label);
    let certs = parsed
        .cert_x509_bags(pw)
        .map_err(|e| TestCaseError::fail(format!("{label}: p12 cert bags: {e:?}")))?;
    // Issue #12 item 7: the default profiles leave the root out.
    prop_assert_eq!(
        certs,
        vec![f.leaf.clone(), f.issuer.clone()],
        "{}: p12 certificates",
        label
    );
    let expected = bundle_friendly_name(name);
    let mut names = 0;
    for bag in parsed
        .bags(pw)
        .map_err(|e| TestCaseError::fail(format!("{label}: p12 bags: {e:?}")))?
    {
        for attr in bag.attributes {
            if let p12::PKCS12Attribute::FriendlyName(n) = attr {
                prop_assert_eq!(&n, &expected, "{}: p12 friendlyName", label);
                names += 1;
            }
        }
    }
    prop_assert_eq!(
        names,
        2,
        "{}: friendlyName on the key and the leaf bag",
        label
    );
    Ok(())
}

fn check_pkcs12_batch(specs: &[Spec]) -> Result<(), TestCaseError> {
    let f = pki();
    let chain = vec![f.issuer.clone(), f.root.clone()];
    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("reference-key.der");
    std::fs::write(&key_file, &f.leaf_key).expect("write key");

    let profiles = profiles();
    let mut manifest = Vec::with_capacity(specs.len());
    // label -> (friendly name as written, fingerprints of the CA certificates in the bundle)
    let mut expected: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for (i, ((kind, name), pw)) in specs.iter().enumerate() {
        let profile = &profiles[i % profiles.len()];
        let label = format!("{}-{i:03}-{kind}", profile.name);
        let pfx = build_pfx(
            profile,
            &BundleInput {
                key_pkcs8: &f.leaf_key,
                leaf_der: &f.leaf,
                chain_der: &chain,
                friendly_name: name,
                password: pw,
            },
        )
        .map_err(|e| TestCaseError::fail(format!("{label}: build_pfx: {e}")))?;
        if profile.key_encryption == BagEncryption::Pbe3Des
            && profile.cert_encryption == BagEncryption::Pbe3Des
        {
            check_with_p12(&label, &pfx, name, pw)?;
        }
        let file = dir.path().join(format!("{label}.p12"));
        std::fs::write(&file, &pfx[..]).expect("write bundle");
        manifest.push(serde_json::json!({ "label": label, "file": file, "password": pw }));
        // Issue #12 item 7: the issuing CA with the chain, the root only with include_root.
        let want_chain = match (profile.include_chain, profile.include_root) {
            (false, _) => Vec::new(),
            (true, false) => vec![sha256_hex(&f.issuer)],
            (true, true) => vec![sha256_hex(&f.issuer), sha256_hex(&f.root)],
        };
        expected.insert(label, (bundle_friendly_name(name), want_chain));
    }

    let Some(python) = python_with_cryptography() else {
        return Ok(());
    };
    let manifest_file = dir.path().join("manifest.json");
    let manifest = serde_json::json!({ "reference_key": key_file, "bundles": manifest });
    std::fs::write(&manifest_file, manifest.to_string()).expect("write manifest");
    let script = dir.path().join("fingerprints.py");
    std::fs::write(&script, PYTHON_FINGERPRINTS).expect("write script");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&manifest_file)
        .output()
        .expect("run python");
    prop_assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("python JSON");
    let reference_key = report["reference_key"].as_str().expect("reference key");
    let leaf_fp = sha256_hex(&f.leaf);
    let bundles = report["bundles"].as_object().expect("bundles");
    prop_assert_eq!(bundles.len(), expected.len());
    for (label, (friendly, want_chain)) in &expected {
        let r = &bundles[label];
        prop_assert!(
            r.get("error").is_none(),
            "{}: python: {}",
            label,
            r["error"]
        );
        prop_assert_eq!(&r["key"], reference_key, "{}: private key", label);
        prop_assert_eq!(
            &r["key_spki"],
            &r["cert_spki"],
            "{}: key belongs to cert",
            label
        );
        prop_assert_eq!(&r["cert"], &leaf_fp, "{}: leaf certificate", label);
        prop_assert_eq!(
            &r["chain"],
            &serde_json::json!(want_chain),
            "{}: chain",
            label
        );
        prop_assert_eq!(
            &r["friendly_name_hex"],
            &hex::encode(friendly),
            "{}: friendly name {:?}",
            label,
            friendly
        );
        prop_assert_eq!(&r["wrong_password_refused"], true, "{}", label);
    }
    Ok(())
}

proptest! {
    // Each case builds 100 bundles and runs one Python process (a few seconds); shrinking is
    // capped because every step repeats that.
    #![proptest_config(ProptestConfig {
        cases: 2,
        max_shrink_iters: 16,
        ..ProptestConfig::default()
    })]

    #[test]
    fn pkcs12_bundles_open_in_independent_parsers(specs in batch()) {
        check_pkcs12_batch(&specs)?;
    }
}

// --- CRL ---------------------------------------------------------------------------------------

/// The CRL issuer: a P-256 CA and its key.
struct CrlIssuer {
    cert: Vec<u8>,
    key: KeyPair,
}

fn crl_issuer() -> &'static CrlIssuer {
    static ISSUER: OnceLock<CrlIssuer> = OnceLock::new();
    ISSUER.get_or_init(|| {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = ca_params("CRL プロパティ 発行 CA")
            .self_signed(&key)
            .expect("issuer")
            .der()
            .to_vec();
        CrlIssuer { cert, key }
    })
}

/// A whole-second time: mostly in the UTCTime years (1950..2050), sometimes anywhere in
/// 1900..=9999 (GeneralizedTime on both sides).
fn crl_time() -> impl Strategy<Value = OffsetDateTime> {
    let utc_time = datetime!(1950-01-01 0:00 UTC).unix_timestamp()
        ..datetime!(2050-01-01 0:00 UTC).unix_timestamp();
    let any = datetime!(1900-01-01 0:00 UTC).unix_timestamp()
        ..=datetime!(9999-12-31 23:59:59 UTC).unix_timestamp();
    prop_oneof![3 => utc_time, 1 => any]
        .prop_map(|s| OffsetDateTime::from_unix_timestamp(s).expect("in range by construction"))
}

/// A positive serial of 1 to 16 octets, as hex in either case with up to two extra leading
/// zero digits, and its canonical form (lowercase, no leading zero octet).
fn serial() -> impl Strategy<Value = (String, String)> {
    (
        prop::collection::vec(any::<u8>(), 1..=16),
        any::<bool>(),
        0usize..=2,
    )
        .prop_filter("zero is not a serial", |(b, _, _)| {
            b.iter().any(|&x| x != 0)
        })
        .prop_map(|(bytes, upper, zeros)| {
            let start = bytes.iter().position(|&b| b != 0).unwrap_or(0);
            let canonical = hex::encode(&bytes[start..]);
            let mut given = "0".repeat(zeros) + &hex::encode(&bytes);
            if upper {
                given = given.to_uppercase();
            }
            (given, canonical)
        })
}

fn entry() -> impl Strategy<Value = (RevokedEntry, String)> {
    (
        serial(),
        crl_time(),
        prop::sample::select(RevocationReason::ALL.to_vec()),
        prop::option::of(crl_time()),
    )
        .prop_map(
            |((given, canonical), revoked_at, reason, invalidity_date)| {
                (
                    RevokedEntry {
                        serial_hex: given,
                        revoked_at,
                        reason,
                        invalidity_date,
                    },
                    canonical,
                )
            },
        )
}

/// (canonical serial, reason code if encoded, invalidity date, revocation date)
type Row = (String, Option<u8>, Option<OffsetDateTime>, OffsetDateTime);

fn check_crl(entries: &[(RevokedEntry, String)], number: u64) -> Result<(), TestCaseError> {
    let issuer = crl_issuer();
    let this_update = datetime!(2026-11-01 0:00 UTC);
    let next_update = datetime!(2026-11-08 0:00 UTC);
    let revoked: Vec<RevokedEntry> = entries.iter().map(|(e, _)| e.clone()).collect();
    let der = build_crl(
        &issuer.cert,
        &issuer.key,
        &CrlParams {
            number,
            this_update,
            next_update,
            idp_uri: "http://localhost:8080/crl/property.crl",
            entries: &revoked,
        },
    )
    .map_err(|e| TestCaseError::fail(format!("build_crl: {e}")))?;

    let (rest, crl) = x509_parser::parse_x509_crl(&der)
        .map_err(|e| TestCaseError::fail(format!("x509-parser: {e}")))?;
    prop_assert!(rest.is_empty(), "trailing bytes");
    let (_, cert) =
        x509_parser::certificate::X509Certificate::from_der(&issuer.cert).expect("issuer");
    prop_assert!(
        crl.verify_signature(cert.public_key()).is_ok(),
        "CRL signature verifies under the issuer key"
    );
    prop_assert_eq!(crl.last_update().to_datetime(), this_update);
    prop_assert_eq!(
        crl.next_update().map(|t| t.to_datetime()),
        Some(next_update)
    );
    let parsed_number = crl.crl_number().map(|n| {
        n.to_bytes_be()
            .iter()
            .fold(0u128, |a, b| (a << 8) | u128::from(*b))
    });
    prop_assert_eq!(parsed_number, Some(u128::from(number)));

    let mut want: Vec<Row> = entries
        .iter()
        .map(|(e, canonical)| {
            let code = match e.reason {
                // RFC 5280 §5.3.1: unspecified is encoded by leaving the extension out.
                RevocationReason::Unspecified => None,
                r => Some(r as u8),
            };
            (canonical.clone(), code, e.invalidity_date, e.revoked_at)
        })
        .collect();
    let mut got: Vec<Row> = crl
        .iter_revoked_certificates()
        .map(|rc| {
            let raw = rc.raw_serial();
            let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
            (
                hex::encode(&raw[start..]),
                rc.reason_code().map(|(_, code)| code.0),
                rc.invalidity_date().map(|(_, t)| t.to_datetime()),
                rc.revocation_date.to_datetime(),
            )
        })
        .collect();
    prop_assert_eq!(got.len(), want.len(), "entry count");
    // Every serial is positive on the wire (a 0x00 is prepended when the top bit is set).
    for rc in crl.iter_revoked_certificates() {
        prop_assert!(
            rc.raw_serial()[0] & 0x80 == 0,
            "negative serial on the wire"
        );
    }
    want.sort();
    got.sort();
    prop_assert_eq!(got, want);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn crl_keeps_every_entry(
        entries in prop::collection::vec(entry(), 0..40),
        number in any::<u64>(),
    ) {
        check_crl(&entries, number)?;
    }
}
