//! Interop of the per-OS PKCS#12 bundles and the `.mobileconfig` with independent readers:
//! `openssl pkcs12 -info`, `keytool -list`, Python `cryptography` and `plistlib` (DESIGN §4, §8).
//!
//! A missing tool fails the test (with what to install) unless `PKI_ALLOW_MISSING_TOOLS=1`.
//! Passwords go to the tools in files, never on a command line.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ca_daemon::pkcs12::{
    BundleInput, MobileconfigInput, build_mobileconfig, build_pfx, bundle_friendly_name,
};
use der::Decode as _;
use pki_policy::domain::TargetOs;
use pki_policy::keystore::{BagEncryption, KeystoreProfile, MacAlgorithm};
use rand::Rng as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rsa::pkcs8::EncodePrivateKey as _;
use sha1::{Digest as _, Sha1};

const ORGANIZATION: &str = "訪問看護ステーションさくら";
const PERSON: &str = "山田 花子";
/// The friendly name of the main bundles.
const FRIENDLY: &str = "山田 花子 (iPhone)";

// --- tools -------------------------------------------------------------------------------------

fn allow_missing() -> bool {
    std::env::var("PKI_ALLOW_MISSING_TOOLS").as_deref() == Ok("1")
}

/// `true` when the tool runs; panics (or, with `PKI_ALLOW_MISSING_TOOLS=1`, returns `false`)
/// when it does not.
fn have(program: &Path, probe: &[&str], install: &str) -> bool {
    let ok = Command::new(program)
        .args(probe)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            allow_missing(),
            "{} is required by this test: {install} (or set PKI_ALLOW_MISSING_TOOLS=1 to skip)",
            program.display()
        );
        eprintln!("SKIPPED: {} is missing", program.display());
    }
    ok
}

fn venv_python() -> PathBuf {
    let venv = std::env::var_os("PKI_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("the crate lives in the workspace")
                .join(".venv")
        });
    venv.join("bin").join("python")
}

fn run(cmd: &mut Command) -> Output {
    cmd.env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn combined(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    s
}

// --- fixtures ----------------------------------------------------------------------------------

struct Chain {
    root: Vec<u8>,
    issuer: Vec<u8>,
    /// (label, PKCS#8 key, leaf DER)
    leaves: Vec<(&'static str, Vec<u8>, Vec<u8>)>,
}

/// A P-384 root, a P-256 issuer, a P-256 leaf and an RSA-2048 leaf (key from the `rsa`
/// crate as PKCS#8), both leaves with a Japanese O and CN.
fn chain() -> Chain {
    let ca = |cn: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(DnType::CountryName, "JP");
        p.distinguished_name
            .push(DnType::OrganizationName, "電子@連絡帳 ネットワーク");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p
    };
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("root key");
    let root_params = ca("電子@連絡帳 ルート CA");
    let root = root_params.self_signed(&root_key).expect("root");
    let root_issuer = Issuer::new(root_params, &root_key);
    let issuer_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("issuer key");
    let issuer_params = ca("電子@連絡帳 発行 CA 1");
    let issuer = issuer_params
        .signed_by(&issuer_key, &root_issuer)
        .expect("issuer");
    let issuer_issuer = Issuer::new(issuer_params, &issuer_key);

    let leaf = |key: &KeyPair| {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(DnType::CountryName, "JP");
        p.distinguished_name
            .push(DnType::OrganizationName, ORGANIZATION);
        p.distinguished_name
            .push(DnType::OrganizationalUnitName, "看護師");
        p.distinguished_name.push(DnType::CommonName, PERSON);
        p.signed_by(key, &issuer_issuer)
            .expect("leaf")
            .der()
            .to_vec()
    };
    let ec_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("leaf key");
    let ec_leaf = leaf(&ec_key);
    let rsa_key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("RSA key");
    let rsa_pkcs8 = rsa_key.to_pkcs8_der().expect("PKCS#8").as_bytes().to_vec();
    let rsa_pair = KeyPair::try_from(rsa_pkcs8.as_slice()).expect("rcgen loads the RSA key");
    let rsa_leaf = leaf(&rsa_pair);
    Chain {
        root: root.der().to_vec(),
        issuer: issuer.der().to_vec(),
        leaves: vec![
            ("p256", ec_key.serialize_der(), ec_leaf),
            ("rsa2048", rsa_pkcs8, rsa_leaf),
        ],
    }
}

/// The five default profiles of DESIGN §8, written out here (the root left out, issue #12
/// item 7), and `ios` with `include_root = true` (the legacy layout, root payload and bag back).
fn profiles() -> Vec<KeystoreProfile> {
    let des = |name: &str, os, ext: &str| KeystoreProfile {
        name: name.into(),
        os,
        key_encryption: BagEncryption::Pbe3Des,
        cert_encryption: BagEncryption::Pbe3Des,
        mac: MacAlgorithm::HmacSha1,
        mac_salt_len: 8,
        iterations: 2048,
        include_chain: true,
        include_root: false,
        mobileconfig: matches!(os, TargetOs::Macos | TargetOs::Ios),
        file_extension: ext.into(),
    };
    vec![
        KeystoreProfile {
            name: "windows".into(),
            os: TargetOs::Windows,
            key_encryption: BagEncryption::Pbes2Aes256,
            cert_encryption: BagEncryption::Pbes2Aes256,
            mac: MacAlgorithm::HmacSha256,
            mac_salt_len: 16,
            iterations: 10_000,
            include_chain: true,
            include_root: false,
            mobileconfig: false,
            file_extension: "pfx".into(),
        },
        des("windows-legacy", TargetOs::Windows, "pfx"),
        des("macos", TargetOs::Macos, "p12"),
        des("ios", TargetOs::Ios, "p12"),
        des("android", TargetOs::Android, "p12"),
        KeystoreProfile {
            include_root: true,
            ..des("ios-with-root", TargetOs::Ios, "p12")
        },
    ]
}

/// The CA certificates a bundle of `profile` holds after the leaf, in order.
fn expected_chain(profile: &KeystoreProfile, chain: &Chain) -> Vec<Vec<u8>> {
    if profile.include_root {
        vec![chain.issuer.clone(), chain.root.clone()]
    } else {
        vec![chain.issuer.clone()]
    }
}

fn write_file(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    f.write_all(bytes).expect("write");
}

fn serial_hex(cert_der: &[u8]) -> String {
    let cert = x509_cert::Certificate::from_der(cert_der).expect("certificate");
    hex::encode(cert.tbs_certificate.serial_number.as_bytes())
}

/// One bundle written to disk, with what the tools must find in it.
struct Case {
    label: String,
    profile: KeystoreProfile,
    /// The name given to `build_pfx` (and shown in the `.mobileconfig` title).
    name: String,
    /// The friendlyName expected in the bundle (`bundle_friendly_name(name)`).
    friendly: String,
    leaf: Vec<u8>,
    p12: PathBuf,
    password_file: PathBuf,
    mobileconfig: Option<PathBuf>,
}

fn build_cases(dir: &Path, chain: &Chain) -> Vec<Case> {
    let chain_der = vec![chain.issuer.clone(), chain.root.clone()];
    let mut names = vec![FRIENDLY.to_string()];
    // More names for the P-256 leaf: ASCII, emoji (a surrogate pair in the BMPString) and
    // exactly 64 characters mixing all of them.
    let extra = [
        "Tanaka Ichiro's phone".to_string(),
        "𠮷田 絵文字😀テスト🚀".to_string(),
        "あいうえお😀ABC漢字かな🚀 "
            .chars()
            .cycle()
            .take(64)
            .collect(),
    ];
    assert_eq!(extra[2].chars().count(), 64);
    let mut cases = Vec::new();
    for (leaf_label, key, leaf) in &chain.leaves {
        if *leaf_label == "p256" {
            names.extend(extra.iter().cloned());
        } else {
            names.truncate(1);
        }
        for (n, name) in names.iter().enumerate() {
            for profile in profiles() {
                let label = format!("{leaf_label}-{}-{n}", profile.name);
                let password = format!("{:08}", rand::thread_rng().gen_range(0..100_000_000u32));
                let pfx = build_pfx(
                    &profile,
                    &BundleInput {
                        key_pkcs8: key,
                        leaf_der: leaf,
                        chain_der: &chain_der,
                        friendly_name: name,
                        password: &password,
                    },
                )
                .unwrap_or_else(|e| panic!("{label}: {e}"));
                let p12 = dir.join(format!("{label}.{}", profile.file_extension));
                let password_file = dir.join(format!("{label}.pw"));
                write_file(&p12, &pfx);
                write_file(&password_file, format!("{password}\n").as_bytes());
                let mobileconfig = profile.mobileconfig.then(|| {
                    let file_name = p12
                        .file_name()
                        .and_then(|f| f.to_str())
                        .expect("ASCII file name");
                    let doc = build_mobileconfig(&MobileconfigInput {
                        pfx: &pfx,
                        pfx_file_name: file_name,
                        profile: &profile,
                        issuer_der: &chain.issuer,
                        root_der: &chain.root,
                        root_name: "電子@連絡帳 ルート CA",
                        display_name: name,
                        organization: ORGANIZATION,
                        serial_hex: &serial_hex(leaf),
                        device_identity: "F001/P001/D001",
                    })
                    .unwrap_or_else(|e| panic!("{label}: {e}"));
                    let path = dir.join(format!("{label}.mobileconfig"));
                    write_file(&path, &doc);
                    path
                });
                cases.push(Case {
                    label,
                    profile,
                    name: name.clone(),
                    friendly: bundle_friendly_name(name),
                    leaf: leaf.clone(),
                    p12,
                    password_file,
                    mobileconfig,
                });
            }
        }
    }
    cases
}

fn local_key_id_hex(leaf: &[u8]) -> String {
    Sha1::digest(leaf)
        .iter()
        .map(|b| format!("{b:02X} "))
        .collect::<String>()
}

// --- the test ----------------------------------------------------------------------------------

#[test]
fn bundles_are_read_by_openssl_keytool_and_python() {
    let openssl = PathBuf::from("openssl");
    let keytool = PathBuf::from("keytool");
    let python = venv_python();
    let have_openssl = have(
        &openssl,
        &["version"],
        "install OpenSSL 3 (apt-get install openssl)",
    );
    let have_keytool = have(
        &keytool,
        &["-help"],
        "install a Java 17 JDK/JRE (apt-get install openjdk-17-jre-headless)",
    );
    let have_python = have(
        &python,
        &[
            "-c",
            "import cryptography.hazmat.primitives.serialization.pkcs12, plistlib",
        ],
        "create the venv with `python3 -m venv .venv && .venv/bin/pip install cryptography` \
         (or point PKI_VENV at one)",
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let chain = chain();
    let cases = build_cases(dir.path(), &chain);
    assert_eq!(cases.len(), 6 * 4 + 6);

    if have_openssl {
        let wrong = dir.path().join("wrong.pw");
        write_file(&wrong, b"wrong-password\n");
        for case in &cases {
            check_openssl(&openssl, case, &chain, &wrong);
        }
    }
    if have_keytool {
        for case in cases.iter().filter(|c| c.label.ends_with("-0")) {
            check_keytool(&keytool, case);
        }
    }
    if have_python {
        check_python(&python, dir.path(), &cases, &chain);
    }
}

fn check_openssl(openssl: &Path, case: &Case, chain: &Chain, wrong_password: &Path) {
    let label = &case.label;
    let out = run(Command::new(openssl)
        .args(["pkcs12", "-info", "-nodes", "-in"])
        .arg(&case.p12)
        .arg("-passin")
        .arg(format!("file:{}", case.password_file.display())));
    let text = combined(&out);
    assert!(out.status.success(), "{label}: openssl failed:\n{text}");
    let it = case.profile.iterations;
    let expected: Vec<String> = match case.profile.key_encryption {
        BagEncryption::Pbes2Aes256 => vec![
            format!("MAC: sha256, Iteration {it}"),
            format!("MAC length: 32, salt length: {}", case.profile.mac_salt_len),
            format!(
                "PKCS7 Encrypted data: PBES2, PBKDF2, AES-256-CBC, Iteration {it}, PRF hmacWithSHA256"
            ),
            format!(
                "Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC, Iteration {it}, PRF hmacWithSHA256"
            ),
        ],
        BagEncryption::Pbe3Des => vec![
            format!("MAC: sha1, Iteration {it}"),
            format!("MAC length: 20, salt length: {}", case.profile.mac_salt_len),
            format!("PKCS7 Encrypted data: pbeWithSHA1And3-KeyTripleDES-CBC, Iteration {it}"),
            format!("Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC, Iteration {it}"),
        ],
    };
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    for line in &expected {
        assert!(
            lines.contains(&line.as_str()),
            "{label}: missing {line:?} in:\n{text}"
        );
    }
    assert!(!text.contains("RC2"), "{label}: RC2 in:\n{text}");
    // OpenSSL 3.0 prints a BMPString attribute with OPENSSL_uni2asc: the low byte of each
    // UTF-16 unit, up to the first zero byte (its own bundles print the same way; 3.2+ prints
    // UTF-8). Compare those bytes; Python below checks the full UTF-8 round trip.
    let mut friendly = b"    friendlyName: ".to_vec();
    friendly.extend(
        case.friendly
            .encode_utf16()
            .map(|u| u.to_be_bytes()[1])
            .take_while(|&b| b != 0),
    );
    assert_eq!(
        out.stdout
            .split(|&b| b == b'\n')
            .filter(|l| *l == friendly.as_slice())
            .count(),
        2,
        "{label}: friendlyName on key and leaf bags:\n{text}"
    );
    let key_id = format!("localKeyID: {}", local_key_id_hex(&case.leaf));
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.trim_start() == key_id.trim_end())
            .count(),
        2,
        "{label}: localKeyID (SHA-1 of the leaf) on key and leaf bags:\n{text}"
    );
    assert_eq!(
        text.matches("-----BEGIN CERTIFICATE-----").count(),
        1 + expected_chain(&case.profile, chain).len(),
        "{label}"
    );
    assert_eq!(
        text.matches("-----BEGIN PRIVATE KEY-----").count(),
        1,
        "{label}"
    );

    // The certificates come back byte-identical, leaf first.
    let out = run(Command::new(openssl)
        .args(["pkcs12", "-nokeys", "-in"])
        .arg(&case.p12)
        .arg("-passin")
        .arg(format!("file:{}", case.password_file.display())));
    assert!(out.status.success(), "{label}");
    let pems = String::from_utf8_lossy(&out.stdout);
    let ders: Vec<Vec<u8>> = pems
        .split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .map(|s| {
            use base64::Engine as _;
            let b64: String = s[..s.find("-----END").expect("END")]
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64")
        })
        .collect();
    let mut want = vec![case.leaf.clone()];
    want.extend(expected_chain(&case.profile, chain));
    assert_eq!(ders, want, "{label}");

    // A wrong password fails.
    let out = run(Command::new(openssl)
        .args(["pkcs12", "-info", "-nodes", "-in"])
        .arg(&case.p12)
        .arg("-passin")
        .arg(format!("file:{}", wrong_password.display())));
    assert!(
        !out.status.success(),
        "{label}: openssl accepted a wrong password"
    );
    let text = combined(&out);
    assert!(text.contains("Mac verify error"), "{label}: {text}");
}

fn check_keytool(keytool: &Path, case: &Case) {
    // keytool lists the entry's chain as stored: leaf + issuing CA, + root with include_root.
    let length = if case.profile.include_root { 3 } else { 2 };
    let label = &case.label;
    let out = run(Command::new(keytool)
        .args([
            "-J-Duser.language=en",
            "-J-Duser.country=US",
            "-J-Dsun.stdout.encoding=UTF-8",
        ])
        .args(["-list", "-v", "-storetype", "PKCS12", "-keystore"])
        .arg(&case.p12)
        .arg("-storepass:file")
        .arg(&case.password_file));
    let text = combined(&out);
    assert!(out.status.success(), "{label}: keytool failed:\n{text}");
    assert!(
        text.contains("Your keystore contains 1 entry"),
        "{label}:\n{text}"
    );
    assert_eq!(
        text.matches("Entry type: PrivateKeyEntry").count(),
        1,
        "{label}:\n{text}"
    );
    assert!(
        text.contains(&format!("Certificate chain length: {length}")),
        "{label}:\n{text}"
    );
    assert!(
        text.contains(&format!("Alias name: {}", case.friendly.to_lowercase())),
        "{label}: the alias is the friendlyName (Java lowercases it):\n{text}"
    );
}

const PYTHON_CHECK: &str = r#"
import json, plistlib, sys
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, pkcs12
from cryptography.x509.oid import NameOID

DER = Encoding.DER

def summary(data, pw):
    b = pkcs12.load_pkcs12(data, pw)
    c = b.cert.certificate
    attr = lambda oid: c.subject.get_attributes_for_oid(oid)[0].value.encode("utf-8").hex()
    spki = lambda k: k.public_bytes(DER, PublicFormat.SubjectPublicKeyInfo)
    return {
        "o_hex": attr(NameOID.ORGANIZATION_NAME),
        "cn_hex": attr(NameOID.COMMON_NAME),
        "friendly_hex": (b.cert.friendly_name or b"").hex(),
        "leaf_hex": c.public_bytes(DER).hex(),
        "additional_hex": [x.certificate.public_bytes(DER).hex() for x in b.additional_certs],
        "additional_self_signed": sum(
            1 for x in b.additional_certs if x.certificate.subject == x.certificate.issuer
        ),
        "key_matches": spki(b.key.public_key()) == spki(c.public_key()),
    }

out = {}
for job in json.load(open(sys.argv[1])):
    pw = open(job["pw"], "rb").read().strip()
    data = open(job["p12"], "rb").read()
    r = summary(data, pw)
    try:
        pkcs12.load_pkcs12(data, b"wrong-password")
        r["wrong_password_rejected"] = False
    except ValueError:
        r["wrong_password_rejected"] = True
    if job.get("mobileconfig"):
        with open(job["mobileconfig"], "rb") as f:
            pl = plistlib.load(f)
        payloads = pl["PayloadContent"]
        by_type = {p["PayloadType"]: p for p in payloads}
        r["mobileconfig"] = {
            "type": pl["PayloadType"],
            "display_name": pl["PayloadDisplayName"],
            "identifier": pl["PayloadIdentifier"],
            "organization": pl["PayloadOrganization"],
            "uuids": [pl["PayloadUUID"]] + [p["PayloadUUID"] for p in payloads],
            "payload_types": [p["PayloadType"] for p in payloads],
            "has_password": any("Password" in p for p in payloads),
            "pkcs12": summary(by_type["com.apple.security.pkcs12"]["PayloadContent"], pw),
            "issuer_hex": by_type["com.apple.security.pkcs1"]["PayloadContent"].hex(),
            "root_hex": by_type.get("com.apple.security.root", {}).get("PayloadContent", b"").hex(),
        }
    out[job["label"]] = r
print(json.dumps(out))
"#;

fn check_python(python: &Path, dir: &Path, cases: &[Case], chain: &Chain) {
    let script = dir.join("check.py");
    write_file(&script, PYTHON_CHECK.as_bytes());
    let jobs: Vec<serde_json::Value> = cases
        .iter()
        .map(|c| {
            serde_json::json!({
                "label": c.label,
                "p12": c.p12,
                "pw": c.password_file,
                "mobileconfig": c.mobileconfig,
            })
        })
        .collect();
    let jobs_file = dir.join("jobs.json");
    write_file(
        &jobs_file,
        serde_json::to_string(&jobs).expect("json").as_bytes(),
    );
    let out = run(Command::new(python).arg(&script).arg(&jobs_file));
    assert!(out.status.success(), "python failed:\n{}", combined(&out));
    let results: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("python prints JSON");
    assert_eq!(results.len(), cases.len());

    let check_summary = |label: &str, s: &serde_json::Value, case: &Case| {
        let chain_hex: Vec<String> = expected_chain(&case.profile, chain)
            .iter()
            .map(hex::encode)
            .collect();
        assert_eq!(s["o_hex"], hex::encode(ORGANIZATION), "{label}: subject O");
        assert_eq!(s["cn_hex"], hex::encode(PERSON), "{label}: subject CN");
        assert_eq!(
            s["friendly_hex"],
            hex::encode(&case.friendly),
            "{label}: friendlyName"
        );
        assert_eq!(s["leaf_hex"], hex::encode(&case.leaf), "{label}: leaf");
        assert_eq!(
            s["additional_hex"],
            serde_json::json!(chain_hex),
            "{label}: chain"
        );
        assert_eq!(
            s["additional_self_signed"],
            u8::from(case.profile.include_root),
            "{label}: self-signed certificates in the bundle"
        );
        assert_eq!(s["key_matches"], true, "{label}: key matches the leaf");
    };
    let mut mobileconfigs = 0;
    for case in cases {
        let label = &case.label;
        let r = &results[label];
        check_summary(label, r, case);
        assert_eq!(r["wrong_password_rejected"], true, "{label}");
        if case.mobileconfig.is_some() {
            mobileconfigs += 1;
            let m = &r["mobileconfig"];
            assert_eq!(m["type"], "Configuration", "{label}");
            assert_eq!(
                m["display_name"],
                format!("電子@連絡帳 端末証明書 ({})", case.name),
                "{label}"
            );
            assert_eq!(m["organization"], ORGANIZATION, "{label}");
            let (types, root_hex) = if case.profile.include_root {
                (
                    serde_json::json!([
                        "com.apple.security.pkcs12",
                        "com.apple.security.pkcs1",
                        "com.apple.security.root"
                    ]),
                    hex::encode(&chain.root),
                )
            } else {
                (
                    serde_json::json!(["com.apple.security.pkcs12", "com.apple.security.pkcs1"]),
                    String::new(),
                )
            };
            assert_eq!(m["payload_types"], types, "{label}");
            assert_eq!(m["has_password"], false, "{label}: no Password key");
            assert_eq!(m["issuer_hex"], hex::encode(&chain.issuer), "{label}");
            assert_eq!(m["root_hex"], root_hex, "{label}");
            check_summary(label, &m["pkcs12"], case);
            // Derived from the device identity (a renewal replaces the installed profile),
            // not from the serial.
            let identifier = m["identifier"].as_str().expect("identifier");
            assert!(
                identifier.ends_with(".F001.P001.D001"),
                "{label}: {identifier}"
            );
        }
    }
    assert_eq!(mobileconfigs, 3 * 4 + 3);

    // UUIDs are stable per certificate: the macos and ios profiles of one leaf share them,
    // and the two leaves differ.
    let uuids = |label: &str| results[label]["mobileconfig"]["uuids"].clone();
    assert_eq!(uuids("p256-macos-0"), uuids("p256-ios-0"));
    assert_eq!(uuids("p256-macos-0"), uuids("p256-macos-1"));
    assert_ne!(uuids("p256-macos-0"), uuids("rsa2048-macos-0"));
}
