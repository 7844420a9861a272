//! Tests of the whole policy: the default file, error paths, lookups, and property tests of
//! the validators.

use proptest::prelude::*;

use super::*;
use crate::domain::{Device, Enrollee, Facility, Person};

fn load(doc: &str) -> Policy {
    Policy::from_toml_str(doc).unwrap_or_else(|e| panic!("policy refused: {e}\n{doc}"))
}

fn refuse(doc: &str) -> PolicyError {
    match Policy::from_toml_str(doc) {
        Ok(_) => panic!("policy accepted:\n{doc}"),
        Err(e) => e,
    }
}

/// Asserts the error names `field`, and that its message does too.
#[track_caller]
fn assert_field(err: &PolicyError, field: &str) {
    assert_eq!(err.field(), Some(field), "{err:?}");
    assert!(
        err.to_string().contains(field),
        "message lacks the field: {err}"
    );
}

#[test]
fn bundle_password_mode_is_ticket_by_default_random_on_request_and_checked() {
    assert_eq!(load("").tickets.bundle_password, BundlePassword::Ticket);
    let p = load("[tickets]\nbundle_password = \"random\"\n");
    assert_eq!(p.tickets.bundle_password, BundlePassword::Random);
    let e = refuse("[tickets]\nbundle_password = \"digits\"\n");
    assert_field(&e, "tickets.bundle_password");
}

fn enrollee() -> Enrollee {
    Enrollee {
        facility: Facility {
            id: "fac-0001".into(),
            name: "豊田訪問看護ステーション".into(),
            prefecture: "愛知県".into(),
            city: "豊田市".into(),
            kind: "訪問看護".into(),
        },
        person: Person {
            id: "p-42".into(),
            family_name: "山田".into(),
            given_name: "花子".into(),
            family_name_kana: "ヤマダ".into(),
            given_name_kana: "ハナコ".into(),
            job: "看護師".into(),
            email: "hanako@example.jp".into(),
        },
        device: Device {
            id: "dev_7".into(),
            os: TargetOs::Ios,
            remark: "私用 iPhone\n2台目".into(),
        },
    }
}

// ----- the default file -------------------------------------------------------------------

#[test]
fn default_policy_parses() {
    // Also proves the `expect`s on the built-in document hold.
    let p = load(DEFAULT_POLICY_TOML);
    assert_eq!(p, Policy::default_policy());
    assert_eq!(Policy::default(), p);
}

#[test]
fn empty_document_is_the_default() {
    assert_eq!(load(""), Policy::default_policy());
    assert_eq!(load("# only a comment\n"), Policy::default_policy());
}

#[test]
fn default_file_documents_every_key() {
    // The first `key = value` line of every key is directly under a comment, or the key is
    // named in a comment (the keystore and role tables are documented in a block above them).
    let comments: String = DEFAULT_POLICY_TOML
        .lines()
        .filter(|l| l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let mut seen = std::collections::BTreeSet::new();
    let mut previous = "";
    for line in DEFAULT_POLICY_TOML.lines() {
        let trimmed = line.trim();
        if let Some((key, _)) = trimmed.split_once(" = ")
            && !trimmed.starts_with('#')
            && seen.insert(key.to_owned())
        {
            assert!(
                previous.starts_with('#') || comments.contains(key),
                "`{key}` is not documented in default-policy.toml"
            );
        }
        previous = trimmed;
    }
    assert!(seen.len() > 40, "only {} keys found", seen.len());
    // Each numeric default is stated in a comment, with its unit.
    let p = Policy::default_policy();
    for (needle, what) in [
        ("Default: 7300", "ca.root_validity_days"),
        ("Default: 1825", "ca.issuer_validity_days"),
        ("Default: 30.", "ca.ocsp_responder_validity_days"),
        ("Default: 825", "ca.service_cert_validity_days"),
        ("Default: 14", "tickets.lifetime_days"),
        ("Default: 5.", "tickets.max_attempts"),
        ("Default: 10.", "tickets.rate_per_ticket_per_minute"),
        ("Default: 256", "limits.max_string_len"),
        ("Default: 67108864", "limits.max_crl_message_bytes"),
        ("Default: 200.", "crl.batch_window_ms"),
        ("Unit: milliseconds", "crl.batch_window_ms"),
    ] {
        assert!(
            DEFAULT_POLICY_TOML.contains(needle),
            "{what}: `{needle}` not documented"
        );
    }
    assert_eq!(p.limits.max_crl_message_bytes, 64 * 1024 * 1024);
}

#[test]
fn default_numeric_sections() {
    let p = Policy::default_policy();
    assert_eq!(
        p.ca,
        CaPolicy {
            root_validity_days: 7300,
            issuer_validity_days: 1825,
            ocsp_responder_validity_days: 30,
            service_cert_validity_days: 825,
        }
    );
    assert_eq!(
        p.ca.ocsp_responder_renew_before(),
        std::time::Duration::from_secs(10 * 86_400)
    );
    assert_eq!(
        p.tickets,
        TicketPolicy {
            lifetime_days: 14,
            max_attempts: 5,
            rate_per_ticket_per_minute: 10,
            bundle_password: crate::BundlePassword::Ticket,
        }
    );
    assert_eq!(
        p.limits,
        Limits {
            max_string_len: 256,
            max_remark_len: 1024,
            max_request_bytes: 65_536,
            max_crl_message_bytes: 64 * 1024 * 1024,
            max_page_size: 1000,
            default_page_size: 100,
            request_timeout_secs: 30,
            max_connections: 512,
            max_concurrent_streams: 128,
            rate_per_caller_per_second: 200,
            rate_burst: 400,
        }
    );
    assert_eq!(
        p.crl,
        CrlPolicy {
            next_update_hours: 24,
            republish_before_hours: 8,
            batch_window_ms: 200,
        }
    );
    assert_eq!(
        p.ocsp,
        OcspPolicy {
            validity_hours: 24,
            resign_before_hours: 8,
            cache_entries: 25_000,
        }
    );
    assert_eq!(p.renewal.supersede_after_secs, 7 * 24 * 3600);
    assert_eq!(p.limits.effective_page_size(0), 100);
    assert_eq!(p.limits.effective_page_size(5000), 1000);
    assert_eq!(p.limits.effective_page_size(7), 7);
}

#[test]
fn default_has_the_design_section_8_table() {
    use BagEncryption::{Pbe3Des, Pbes2Aes256};
    use MacAlgorithm::{HmacSha1, HmacSha256};
    let p = Policy::default_policy();
    // (name, os, key enc, cert enc, mac, salt, iterations, mobileconfig, extension)
    let table = [
        (
            "windows",
            TargetOs::Windows,
            Pbes2Aes256,
            Pbes2Aes256,
            HmacSha256,
            16,
            100_000,
            false,
            "pfx",
        ),
        (
            "windows-legacy",
            TargetOs::Windows,
            Pbe3Des,
            Pbe3Des,
            HmacSha1,
            8,
            100_000,
            false,
            "pfx",
        ),
        (
            "macos",
            TargetOs::Macos,
            Pbe3Des,
            Pbe3Des,
            HmacSha1,
            8,
            100_000,
            true,
            "p12",
        ),
        (
            "ios",
            TargetOs::Ios,
            Pbe3Des,
            Pbe3Des,
            HmacSha1,
            8,
            100_000,
            true,
            "p12",
        ),
        (
            "android",
            TargetOs::Android,
            Pbe3Des,
            Pbe3Des,
            HmacSha1,
            8,
            100_000,
            false,
            "p12",
        ),
    ];
    assert_eq!(p.keystore.len(), table.len());
    for (name, os, key_enc, cert_enc, mac, salt, iterations, mobileconfig, ext) in table {
        let expected = KeystoreProfile {
            name: name.into(),
            os,
            key_encryption: key_enc,
            cert_encryption: cert_enc,
            mac,
            mac_salt_len: salt,
            iterations,
            include_chain: true,
            include_root: false,
            mobileconfig,
            file_extension: ext.into(),
        };
        assert_eq!(p.keystore[name], expected, "{name}");
    }
    for os in TargetOs::ALL {
        assert_eq!(p.keystore_default[&os], os.as_str());
        assert_eq!(
            p.keystore_for(os, None).map(|k| k.name.as_str()),
            Ok(os.as_str())
        );
    }
    let ios = &p.keystore["ios"];
    assert_eq!(ios.media_type(), "application/x-pkcs12");
    assert_eq!(
        ios.mobileconfig_media_type(),
        Some("application/x-apple-aspen-config")
    );
    assert_eq!(ios.file_name("山田花子"), "山田花子.p12");
    assert_eq!(
        ios.mobileconfig_file_name("x").as_deref(),
        Some("x.mobileconfig")
    );
    assert_eq!(p.keystore["android"].mobileconfig_media_type(), None);
    assert_eq!(p.keystore["windows"].file_name("a"), "a.pfx");
}

#[test]
fn default_certificate_profiles() {
    let p = Policy::default_policy();
    assert_eq!(p.certificate.default_profile, "default");
    let d = p.cert_profile(None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.name, "default");
    assert_eq!(d.key, KeyType::P256);
    assert_eq!(d.validity_days, 365);
    assert_eq!(d.key_usage, [KeyUsage::DigitalSignature]);
    assert_eq!(d.extended_key_usage, [ExtKeyUsage::ClientAuth]);
    assert_eq!(d.subject.country, "JP");
    assert_eq!(d.subject.organization.as_str(), "{facility.name}");
    assert_eq!(d.subject.organizational_unit.as_str(), "{person.job}");
    assert_eq!(d.subject.common_name.as_str(), "{person.display_name}");
    assert_eq!(p.cert_profile(Some("")).map(|c| &c.name), Ok(&d.name));

    let rsa = p
        .cert_profile(Some("legacy-rsa"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rsa.key, KeyType::Rsa2048);
    assert_eq!(rsa.key.rsa_bits(), Some(2048));
    assert!(rsa.key_usage.contains(&KeyUsage::KeyEncipherment));

    let err = p.cert_profile(Some("nope")).err();
    assert!(
        matches!(err, Some(PolicyError::UnknownProfile { ref field, .. }) if field == "profile")
    );
}

#[test]
fn default_roles() {
    let p = Policy::default_policy();
    let allowed = |role: &str, path: &str| p.role_allows(role, path);
    for path in [
        "/pki.ca.v1.Enrollment/CreateTicket",
        "/pki.ca.v1.Enrollment/RedeemTicket",
        "/pki.ca.v1.Certificates/Revoke",
        "/pki.ca.v1.Revocation/GetCrl",
    ] {
        assert!(allowed("portal", path), "portal {path}");
        assert!(allowed("ops", path), "ops {path}");
    }
    assert!(!allowed("portal", "/pki.ca.v1.Admin/PublishCrl"));
    assert!(allowed("ops", "/pki.ca.v1.Admin/PublishCrl"));
    assert!(allowed("ops", "/pki.ca.v1.Admin/VerifyAudit"));
    assert!(allowed("gateway", "/pki.ca.v1.Revocation/WatchCrl"));
    assert!(allowed("gateway", "/pki.ca.v1.Revocation/Ocsp"));
    assert!(!allowed("gateway", "/pki.ca.v1.Enrollment/CreateTicket"));
    assert!(!allowed(
        "gateway",
        "/pki.ca.v1.Certificates/ListCertificates"
    ));
    // Health and reflection: every known role, no unknown one.
    for role in ["portal", "gateway", "ops"] {
        assert!(allowed(role, "/grpc.health.v1.Health/Check"));
        assert!(allowed(
            role,
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
    }
    assert!(!allowed("root", "/grpc.health.v1.Health/Check"));
    assert!(!allowed("", "/pki.ca.v1.Revocation/GetCrl"));
    // Malformed paths and literal wildcards never match.
    assert!(!allowed("ops", "/pki.ca.v1.Admin/*"));
    assert!(!allowed("ops", "pki.ca.v1.Admin/PublishCrl"));
    assert!(!allowed("ops", "/pki.ca.v1.Admin"));
    assert!(!allowed("ops", "/pki.ca.v1.Admin/PublishCrl/x"));
}

// ----- merging ----------------------------------------------------------------------------

#[test]
fn partial_documents_merge_over_the_default() {
    let p = load(
        "[keystore.windows]\niterations = 20000\n\
         [roles]\ngateway = [\"/pki.ca.v1.Revocation/GetCrl\"]\n\
         [certificate.profiles.default.subject]\norganizational_unit = \"\"\n\
         [renewal]\nsupersede_after_secs = 0\n",
    );
    let d = Policy::default_policy();
    assert_eq!(p.keystore["windows"].iterations, 20_000);
    assert_eq!(p.keystore["windows"].mac, MacAlgorithm::HmacSha256);
    assert_eq!(p.keystore["android"], d.keystore["android"]);
    assert!(p.role_allows("gateway", "/pki.ca.v1.Revocation/GetCrl"));
    assert!(!p.role_allows("gateway", "/pki.ca.v1.Revocation/Ocsp"));
    assert_eq!(p.roles.grants[&Role::Portal], d.roles.grants[&Role::Portal]);
    assert_eq!(p.renewal.supersede_after_secs, 0);
    let subject = p.certificate.profiles["default"]
        .subject
        .render(&enrollee());
    assert_eq!(subject.organizational_unit, None);
    assert_eq!(subject.common_name, "山田 花子");
}

#[test]
fn new_profiles_must_be_complete() {
    let err = refuse("[keystore.custom]\nos = \"windows\"\n");
    assert!(matches!(err, PolicyError::MissingField { .. }), "{err:?}");
    assert_field(&err, "keystore.custom.key_encryption");

    let p = load(
        "[keystore.win-strong]\nos = \"windows\"\nkey_encryption = \"pbes2-aes256\"\n\
         cert_encryption = \"pbes2-aes256\"\nmac = \"hmac-sha256\"\nmac_salt_len = 32\n\
         iterations = 600000\ninclude_chain = false\nmobileconfig = false\nfile_extension = \"pfx\"\n",
    );
    let k = p
        .keystore_for(TargetOs::Windows, Some("win-strong"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(k.iterations, 600_000);
    assert!(!k.include_chain);
    // include_root is optional: a custom profile that leaves it out keeps the root off the device.
    assert!(!k.include_root);
}

/// Issue #12 item 7: no default profile installs the device root; an operator can turn it back
/// on per profile, only together with the chain.
#[test]
fn include_root_is_off_by_default_and_can_be_turned_on() {
    let d = Policy::default_policy();
    for (name, k) in &d.keystore {
        assert!(
            k.include_chain,
            "{name}: the issuing CA stays in the bundle"
        );
        assert!(!k.include_root, "{name}: the root is left out by default");
    }
    let p = load("[keystore.macos]\ninclude_root = true\n");
    assert!(p.keystore["macos"].include_root);
    assert!(!p.keystore["ios"].include_root);

    let err = refuse("[keystore.android]\ninclude_chain = false\ninclude_root = true\n");
    assert!(matches!(err, PolicyError::InvalidValue { .. }), "{err:?}");
    assert_field(&err, "keystore.android.include_root");
    // Only the combination is refused.
    let p = load("[keystore.android]\ninclude_chain = false\n");
    assert!(!p.keystore["android"].include_root);

    let err = refuse("[keystore.android]\ninclude_root = \"yes\"\n");
    assert_field(&err, "keystore.android.include_root");
}

// ----- errors name the field ---------------------------------------------------------------

#[test]
fn unknown_fields_are_named() {
    for (doc, field) in [
        ("bogus = 1\n", "bogus"),
        ("[bogus]\nx = 1\n", "bogus"),
        ("[ca]\nroot_validity_dayz = 1\n", "ca.root_validity_dayz"),
        ("[keystore.android]\nrc2 = true\n", "keystore.android.rc2"),
        (
            "[certificate.profiles.default.subject]\nemail = \"x\"\n",
            "certificate.profiles.default.subject.email",
        ),
        ("[limits]\nmax_strings = 3\n", "limits.max_strings"),
        ("[renewal]\ngrace_days = 7\n", "renewal.grace_days"),
    ] {
        let err = refuse(doc);
        assert!(
            matches!(err, PolicyError::UnknownField { .. }),
            "{doc}: {err:?}"
        );
        assert_field(&err, field);
    }
}

#[test]
fn wrong_types_are_named() {
    for (doc, field) in [
        (
            "[keystore.android]\niterations = \"many\"\n",
            "keystore.android.iterations",
        ),
        (
            "[keystore.android]\ninclude_chain = 1\n",
            "keystore.android.include_chain",
        ),
        ("[roles]\nportal = 3\n", "roles.portal"),
        (
            "[roles]\nportal = [\"/pki.ca.v1.Enrollment/*\", 3]\n",
            "roles.portal[1]",
        ),
        (
            "[ca]\nissuer_validity_days = 1.5\n",
            "ca.issuer_validity_days",
        ),
        ("ca = 3\n", "ca"),
        (
            "[certificate.profiles.default]\nkey_usage = \"digital_signature\"\n",
            "certificate.profiles.default.key_usage",
        ),
    ] {
        let err = refuse(doc);
        assert!(
            matches!(err, PolicyError::InvalidType { .. }),
            "{doc}: {err:?}"
        );
        assert_field(&err, field);
    }
}

#[test]
fn syntax_errors_have_a_position() {
    let err = refuse("[ca]\nroot_validity_days = = 3\n");
    assert!(
        matches!(err, PolicyError::Syntax { line: 2, .. }),
        "{err:?}"
    );
    assert_eq!(err.field(), None);
    let err = refuse("[ca]\n[ca]\n");
    assert!(matches!(err, PolicyError::Syntax { .. }), "{err:?}");
}

#[test]
fn validity_beyond_issuer_is_named() {
    let err = refuse("[certificate.profiles.default]\nvalidity_days = 1826\n");
    assert!(matches!(
        err,
        PolicyError::ValidityBeyondIssuer {
            days: 1826,
            issuer_days: 1825,
            ..
        }
    ));
    assert_field(&err, "certificate.profiles.default.validity_days");

    let err = refuse(
        "[certificate.profiles.long]\nkey = \"p256\"\nvalidity_days = 4000\n\
         key_usage = [\"digital_signature\"]\nextended_key_usage = [\"client_auth\"]\n\
         [certificate.profiles.long.subject]\ncountry = \"JP\"\norganization = \"{facility.name}\"\n\
         organizational_unit = \"\"\ncommon_name = \"{person.display_name}\"\n",
    );
    assert_field(&err, "certificate.profiles.long.validity_days");

    // Lowering the issuer below an existing profile is caught on the profile.
    let err = refuse("[ca]\nissuer_validity_days = 300\nservice_cert_validity_days = 300\n");
    assert_field(&err, "certificate.profiles.default.validity_days");

    let err = refuse("[ca]\nservice_cert_validity_days = 2000\n");
    assert_field(&err, "ca.service_cert_validity_days");

    let err = refuse("[ca]\nissuer_validity_days = 7300\n");
    assert_field(&err, "ca.issuer_validity_days");
}

#[test]
fn unknown_os_is_named() {
    let err = refuse("[keystore_default]\nbeos = \"windows\"\n");
    assert!(matches!(err, PolicyError::UnknownOs { ref value, .. } if value == "beos"));
    assert_field(&err, "keystore_default.beos");

    let err = refuse("[keystore.android]\nos = \"symbian\"\n");
    assert!(matches!(err, PolicyError::UnknownOs { .. }), "{err:?}");
    assert_field(&err, "keystore.android.os");
}

#[test]
fn keystore_default_must_fit_its_os() {
    let err = refuse("[keystore_default]\nwindows = \"macos\"\n");
    assert!(
        matches!(err, PolicyError::ProfileOsMismatch { .. }),
        "{err:?}"
    );
    assert_field(&err, "keystore_default.windows");

    let err = refuse("[keystore_default]\nandroid = \"android-nope\"\n");
    assert!(matches!(err, PolicyError::UnknownProfile { .. }), "{err:?}");
    assert_field(&err, "keystore_default.android");

    // Changing a profile's OS breaks the default that pointed at it.
    let err = refuse("[keystore.android]\nos = \"windows\"\n");
    assert_field(&err, "keystore_default.android");
}

#[test]
fn android_refuses_rc2_and_unknown_encryption() {
    for (doc, field) in [
        (
            "[keystore.android]\ncert_encryption = \"pbe-sha1-rc2-40\"\n",
            "keystore.android.cert_encryption",
        ),
        (
            "[keystore.android]\ncert_encryption = \"RC2-40-CBC\"\n",
            "keystore.android.cert_encryption",
        ),
        (
            "[keystore.android]\nkey_encryption = \"rc2\"\n",
            "keystore.android.key_encryption",
        ),
    ] {
        let err = refuse(doc);
        assert!(
            matches!(&err, PolicyError::UnsupportedEncryption { reason, .. } if reason.contains("Android")),
            "{err:?}"
        );
        assert_field(&err, field);
    }
    // RC2 is refused for every OS, with its own reason elsewhere.
    let err = refuse("[keystore.windows]\ncert_encryption = \"pbe-sha1-rc2-40\"\n");
    assert!(
        matches!(err, PolicyError::UnsupportedEncryption { .. }),
        "{err:?}"
    );
    assert_field(&err, "keystore.windows.cert_encryption");

    let err = refuse("[keystore.android]\ncert_encryption = \"aes-gcm\"\n");
    assert!(matches!(err, PolicyError::UnknownValue { .. }), "{err:?}");
    assert_field(&err, "keystore.android.cert_encryption");

    // Both encryptions the CA offers are fine for Android.
    let p = load("[keystore.android]\ncert_encryption = \"pbes2-aes256\"\n");
    assert_eq!(
        p.keystore["android"].cert_encryption,
        BagEncryption::Pbes2Aes256
    );
    assert!(BagEncryption::ALL.iter().all(|e| e.android_can_import()));
}

#[test]
fn keystore_rules() {
    let err = refuse("[keystore.android]\nmobileconfig = true\n");
    assert_field(&err, "keystore.android.mobileconfig");
    let err = refuse("[keystore.ios]\nfile_extension = \"zip\"\n");
    assert_field(&err, "keystore.ios.file_extension");
    let err = refuse("[keystore.ios]\nmac = \"hmac-md5\"\n");
    assert!(matches!(err, PolicyError::UnknownValue { .. }));
    assert_field(&err, "keystore.ios.mac");
    let err = refuse("[keystore.ios]\nmac_salt_len = 4\n");
    assert!(matches!(
        err,
        PolicyError::OutOfRange {
            value: 4,
            min: 8,
            max: 64,
            ..
        }
    ));
    assert_field(&err, "keystore.ios.mac_salt_len");
    let err = refuse("[keystore.Bad_Name]\nos = \"ios\"\n");
    assert_field(&err, "keystore.Bad_Name");
}

#[test]
fn keystore_lookup() {
    let p = Policy::default_policy();
    let name = |os, n| p.keystore_for(os, n).map(|k| k.name.clone());
    assert_eq!(
        name(TargetOs::Windows, Some("windows-legacy")),
        Ok("windows-legacy".into())
    );
    assert_eq!(name(TargetOs::Windows, Some("")), Ok("windows".into()));
    let err = p.keystore_for(TargetOs::Android, Some("windows")).err();
    assert!(
        matches!(err, Some(PolicyError::ProfileOsMismatch { ref field, .. }) if field == "keystore_profile")
    );
    let err = p.keystore_for(TargetOs::Android, Some("nope")).err();
    assert!(
        matches!(err, Some(PolicyError::UnknownProfile { ref field, .. }) if field == "keystore_profile")
    );
}

#[test]
fn roles_are_checked() {
    let err = refuse("[roles]\nadmin = [\"/pki.ca.v1.Admin/*\"]\n");
    assert!(matches!(err, PolicyError::UnknownRole { .. }), "{err:?}");
    assert_field(&err, "roles.admin");
    let err = refuse(
        "[roles]\nportal = [\"/pki.ca.v1.Enrollment/*\", \"/pki.ca.v1.Enrollment/Redeem\"]\n",
    );
    assert!(matches!(err, PolicyError::UnknownMethod { .. }), "{err:?}");
    assert_field(&err, "roles.portal[1]");
    // An empty list takes every pki.ca.v1 method away (health stays).
    let p = load("[roles]\nportal = []\n");
    assert!(!p.role_allows("portal", "/pki.ca.v1.Enrollment/CreateTicket"));
    assert!(p.role_allows("portal", "/grpc.health.v1.Health/Check"));
}

#[test]
fn templates_are_checked() {
    let err = refuse("[certificate.profiles.default.subject]\ncommon_name = \"{person.age}\"\n");
    assert!(
        matches!(err, PolicyError::UnknownPlaceholder { ref placeholder, .. } if placeholder == "person.age")
    );
    assert_field(&err, "certificate.profiles.default.subject.common_name");
    for bad in ["{facility.name", "x}", "{{facility.name}", "{a{b}"] {
        let doc = format!("[certificate.profiles.default.subject]\norganization = \"{bad}\"\n");
        let err = refuse(&doc);
        assert_field(&err, "certificate.profiles.default.subject.organization");
    }
    // O and CN must not be able to render empty.
    let err = refuse("[certificate.profiles.default.subject]\ncommon_name = \"{person.job} \"\n");
    assert_field(&err, "certificate.profiles.default.subject.common_name");
    let err = refuse("[certificate.profiles.default.subject]\ncountry = \"jp\"\n");
    assert_field(&err, "certificate.profiles.default.subject.country");
    // Escaped braces and literal text are fine.
    let p = load(
        "[certificate.profiles.default.subject]\n\
         common_name = \"{{{person.family_name}}} {device.id} ({device.os})\"\n",
    );
    let s = p.certificate.profiles["default"]
        .subject
        .render(&enrollee());
    assert_eq!(s.common_name, "{山田} dev_7 (ios)");
}

#[test]
fn key_usage_must_fit_the_key() {
    let err = refuse(
        "[certificate.profiles.default]\nkey_usage = [\"digital_signature\", \"key_encipherment\"]\n",
    );
    assert_field(&err, "certificate.profiles.default.key_usage");
    let err = refuse(
        "[certificate.profiles.default]\nkey_usage = [\"digital_signature\", \"digital_signature\"]\n",
    );
    assert_field(&err, "certificate.profiles.default.key_usage[1]");
    let err = refuse("[certificate.profiles.default]\nkey_usage = [\"key_cert_sign\"]\n");
    assert!(matches!(err, PolicyError::UnknownValue { .. }));
    assert_field(&err, "certificate.profiles.default.key_usage[0]");
    let err = refuse("[certificate.profiles.default]\nextended_key_usage = []\n");
    assert_field(&err, "certificate.profiles.default.extended_key_usage");
    // Issue #12 item 7: device certificates are TLS clients only.
    let err = refuse(
        "[certificate.profiles.default]\nextended_key_usage = [\"client_auth\", \"server_auth\"]\n",
    );
    assert_field(&err, "certificate.profiles.default.extended_key_usage[1]");
    assert!(err.to_string().contains("server_auth"), "{err}");
    let err =
        refuse("[certificate.profiles.default]\nextended_key_usage = [\"email_protection\"]\n");
    assert_field(&err, "certificate.profiles.default.extended_key_usage[0]");
    let err = refuse("[certificate.profiles.default]\nkey = \"ed25519\"\n");
    assert_field(&err, "certificate.profiles.default.key");
    let err = refuse("[certificate]\ndefault_profile = \"missing\"\n");
    assert_field(&err, "certificate.default_profile");
}

#[test]
fn section_cross_checks() {
    let err = refuse("[crl]\nrepublish_before_hours = 24\n");
    assert_field(&err, "crl.republish_before_hours");
    let err = refuse("[crl]\nbatch_window_ms = 1000\n");
    assert!(matches!(err, PolicyError::OutOfRange { max: 999, .. }));
    assert_field(&err, "crl.batch_window_ms");
    let err = refuse("[ocsp]\nresign_before_hours = 24\n");
    assert_field(&err, "ocsp.resign_before_hours");
    let err = refuse("[ca]\nocsp_responder_validity_days = 3\n[ocsp]\nvalidity_hours = 48\n");
    assert_field(&err, "ocsp.validity_hours");
    let err = refuse("[limits]\ndefault_page_size = 2000\n");
    assert_field(&err, "limits.default_page_size");
    let err = refuse("[limits]\nmax_string_len = 4096\n");
    assert_field(&err, "limits.max_request_bytes");
    let err = refuse("[tickets]\nmax_attempts = 0\n");
    assert_field(&err, "tickets.max_attempts");
    // [urls] was removed: a document that still sets it is told so instead of being ignored.
    let err = refuse("[urls]\nbase = \"http://x\"\n");
    assert_field(&err, "urls");
    assert!(err.to_string().contains("--url-base"), "{err}");
    let err = refuse("[renewal]\nsupersede_after_secs = 7776001\n");
    assert_field(&err, "renewal.supersede_after_secs");
    let err = refuse("[ca]\nroot_validity_days = -1\n");
    assert!(matches!(err, PolicyError::OutOfRange { value: -1, .. }));
    assert_field(&err, "ca.root_validity_days");
}

// ----- subjects and enrollee limits -------------------------------------------------------

#[test]
fn subject_renders_japanese_names() {
    let p = Policy::default_policy();
    let e = enrollee();
    let s = p.certificate.profiles["default"]
        .subject
        .render_checked(&e)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s,
        Subject {
            country: "JP".into(),
            organization: "豊田訪問看護ステーション".into(),
            organizational_unit: Some("看護師".into()),
            common_name: "山田 花子".into(),
        }
    );
    let mut no_job = e.clone();
    no_job.person.job = String::new();
    no_job.person.given_name = String::new();
    let s = p.certificate.profiles["default"].subject.render(&no_job);
    assert_eq!(s.organizational_unit, None);
    assert_eq!(s.common_name, "山田");

    let mut long = e;
    long.facility.name = "あ".repeat(65);
    let err = p.certificate.profiles["default"]
        .subject
        .render_checked(&long)
        .err();
    assert_eq!(
        err,
        Some(FieldError::new(
            "subject.organization",
            FieldProblem::SubjectTooLong { len: 65, max: 64 }
        ))
    );
}

#[test]
fn enrollee_checks() {
    let limits = Policy::default_policy().limits;
    assert_eq!(limits.check_enrollee(&enrollee()), Ok(()));

    let check = |f: &dyn Fn(&mut Enrollee)| {
        let mut e = enrollee();
        f(&mut e);
        limits.check_enrollee(&e).err()
    };
    let err = check(&|e| e.person.family_name = "山\u{0}田".into());
    assert_eq!(
        err,
        Some(FieldError::new(
            "person.family_name",
            FieldProblem::ControlCharacter { position: 1 }
        ))
    );
    let err = check(&|e| e.person.given_name = "花\u{202E}子".into());
    assert!(
        matches!(err, Some(FieldError { ref field, problem: FieldProblem::BidiControl { .. } }) if field == "person.given_name")
    );
    let err = check(&|e| e.person.job = "看".repeat(257));
    assert_eq!(
        err,
        Some(FieldError::new(
            "person.job",
            FieldProblem::TooLong { len: 257, max: 256 }
        ))
    );
    assert_eq!(check(&|e| e.person.job = "看".repeat(256)), None);
    let err = check(&|e| e.facility.name = "  ".into());
    assert_eq!(
        err,
        Some(FieldError::new("facility.name", FieldProblem::Empty))
    );
    let err = check(&|e| e.device.id = "dev 7".into());
    assert!(
        matches!(err, Some(FieldError { ref field, problem: FieldProblem::InvalidIdCharacter { position: 3, found: ' ' } }) if field == "device.id")
    );
    let err = check(&|e| e.person.id = String::new());
    assert_eq!(err, Some(FieldError::new("person.id", FieldProblem::Empty)));
    // Remarks may break lines but not carry other control characters.
    assert_eq!(check(&|e| e.device.remark = "a\r\nb\tc".into()), None);
    let err = check(&|e| e.device.remark = "a\u{7}".into());
    assert!(matches!(err, Some(FieldError { ref field, .. }) if field == "device.remark"));
    let err = check(&|e| e.person.email = "a\nb@example.jp".into());
    assert!(matches!(err, Some(FieldError { ref field, .. }) if field == "person.email"));
    assert_eq!(
        FieldError::new("person.job", FieldProblem::TooLong { len: 3, max: 2 }).to_string(),
        "`person.job` is 3 characters long; the limit is 2"
    );
}

// ----- property tests ---------------------------------------------------------------------

/// Characters of several widths in UTF-8: ASCII, kana, kanji, emoji.
fn wide_char() -> impl Strategy<Value = char> {
    prop_oneof![
        proptest::char::range('a', 'z'),
        proptest::char::range('ぁ', 'ゖ'),
        proptest::char::range('一', '龥'),
        proptest::char::range('😀', '🙏'),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn validity_within_issuer_accepted_beyond_refused(
        issuer in 30i64..7300,
        delta in 0i64..10_000,
        below in proptest::bool::ANY,
    ) {
        let days = if below { (issuer - delta).max(1) } else { issuer + 1 + delta };
        let doc = format!(
            "[ca]\nissuer_validity_days = {issuer}\nservice_cert_validity_days = {issuer}\n\
             [certificate.profiles.default]\nvalidity_days = {days}\n\
             [certificate.profiles.legacy-rsa]\nvalidity_days = 1\n"
        );
        let result = Policy::from_toml_str(&doc);
        if below {
            let p = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(i64::from(p.certificate.profiles["default"].validity_days), days);
        } else {
            let err = result.err();
            let is_beyond = matches!(
                &err,
                Some(PolicyError::ValidityBeyondIssuer { field, .. })
                    if field == "certificate.profiles.default.validity_days"
            );
            prop_assert!(is_beyond, "{:?}", err);
        }
    }

    #[test]
    fn iteration_bounds(iterations in prop_oneof![0i64..2000, 999_000i64..1_001_000, any::<i64>()]) {
        let doc = format!("[keystore.windows]\niterations = {iterations}\n");
        let result = Policy::from_toml_str(&doc);
        if (1000..=1_000_000).contains(&iterations) {
            let p = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(i64::from(p.keystore["windows"].iterations), iterations);
        } else {
            let err = result.err();
            let named = matches!(
                &err,
                Some(PolicyError::OutOfRange { field, .. }) if field == "keystore.windows.iterations"
            );
            prop_assert!(named, "{:?}", err);
        }
    }

    #[test]
    fn salt_bounds(salt in -10i64..100) {
        let doc = format!("[keystore.macos]\nmac_salt_len = {salt}\n");
        let ok = Policy::from_toml_str(&doc).is_ok();
        prop_assert_eq!(ok, (8..=64).contains(&salt));
    }

    #[test]
    fn string_length_counts_chars(
        chars in proptest::collection::vec(wide_char(), 0..80),
        limit in 1usize..60,
    ) {
        let limits = Limits { max_string_len: limit, ..Policy::default_policy().limits };
        let value: String = chars.iter().collect();
        let result = limits.check_string("person.family_name", &value);
        if chars.len() <= limit {
            prop_assert_eq!(result, Ok(()));
        } else {
            prop_assert_eq!(
                result,
                Err(FieldError::new(
                    "person.family_name",
                    FieldProblem::TooLong { len: chars.len(), max: limit },
                ))
            );
        }
        // Exactly at the limit passes, one more fails.
        let at: String = chars.iter().cycle().take(limit).collect();
        if !chars.is_empty() {
            prop_assert_eq!(limits.check_string("f", &at), Ok(()));
            let over: String = chars.iter().cycle().take(limit + 1).collect();
            prop_assert!(limits.check_string("f", &over).is_err());
        }
    }

    #[test]
    fn unknown_placeholders_are_refused(name in "[a-z_]{1,12}(\\.[a-z_]{1,14})?") {
        let result = Template::parse("t", &format!("x{{{name}}}y"));
        if Placeholder::parse(&name).is_some() {
            prop_assert!(result.is_ok());
        } else {
            let refused = matches!(
                &result,
                Err(PolicyError::UnknownPlaceholder { field, placeholder, .. })
                    if field == "t" && *placeholder == name
            );
            prop_assert!(refused, "{:?}", result);
        }
    }

    #[test]
    fn known_placeholders_render_their_value(index in 0usize..Placeholder::ALL.len()) {
        let p = Placeholder::ALL[index];
        let t = Template::parse("t", &format!("<{p}>")).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let e = enrollee();
        prop_assert_eq!(t.render(&e), format!("<{}>", p.value(&e)));
    }

    #[test]
    fn from_toml_str_never_panics_on_text(input in "\\PC{0,200}") {
        let _ = Policy::from_toml_str(&input);
    }

    #[test]
    fn from_toml_str_never_panics_on_edited_default(
        line in 0usize..400,
        replacement in prop_oneof![
            Just(String::new()),
            "[a-z_.]{1,20} = [0-9-]{1,22}",
            "[a-z_]{1,10} = \"\\PC{0,20}\"",
            "\\[[a-z_.-]{1,30}\\]",
            "\\PC{0,40}",
        ],
    ) {
        let mut lines: Vec<&str> = DEFAULT_POLICY_TOML.lines().collect();
        let i = line % lines.len();
        lines[i] = &replacement;
        let _ = Policy::from_toml_str(&lines.join("\n"));
    }
}

#[test]
fn storage_low_water_mark() {
    let p = Policy::default_policy();
    assert_eq!(p.storage.low_water_mib, 256);
    assert_eq!(p.storage.low_water_bytes(), 256 << 20);
    assert_eq!(
        load("[storage]\nlow_water_mib = 16\n")
            .storage
            .low_water_mib,
        16
    );
    assert_field(
        &refuse("[storage]\nlow_water_mib = 0\n"),
        "storage.low_water_mib",
    );
    assert_field(
        &refuse("[storage]\nlow_water_mib = 2000000\n"),
        "storage.low_water_mib",
    );
    assert_field(&refuse("[storage]\nlow_water = 1\n"), "storage.low_water");
}
