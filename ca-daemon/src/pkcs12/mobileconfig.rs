//! The Apple configuration profile (`.mobileconfig`) for macOS and iOS devices.
//!
//! An XML property list of `PayloadType` `Configuration` holding these payloads:
//! - `com.apple.security.pkcs12`: the PFX as `<data>`, with **no** `Password` key, so the device
//!   asks for the ticket password while installing (the profile file itself then carries no
//!   secret beyond the password-encrypted PFX);
//! - `com.apple.security.pkcs1`: the issuing CA certificate (DER), when the keystore profile's
//!   `include_chain` (as the PFX's issuer bag). Not a trust anchor (it is not self-signed): it
//!   puts the intermediate in the keychain so that the system can build and send leaf + issuing
//!   CA when a server asks for a client certificate, as Apple's certificate payload guidance
//!   asks ("also install the intermediate certificates");
//! - `com.apple.security.root`: the root CA certificate, **only** with the profile's
//!   `include_root` (default off; issue #12 item 7): a root payload makes the device trust
//!   *servers* under the root, and no client authentication needs it (see
//!   `docs/threat-model.md` §4.8).
//!
//! Every `PayloadUUID` is a UUID v5 of the certificate serial (and the payload's role), so two
//! certificates never share one. Every `PayloadIdentifier` is
//! [`PAYLOAD_IDENTIFIER_PREFIX`]`.<facility>.<person>.<device>[.role]`, derived from the device
//! identity and not from the serial: Apple replaces an installed profile only when the
//! identifier matches, so the profile of a renewed certificate replaces the old identity
//! instead of installing a second one beside it (ids are escaped so the mapping is one-to-one).
//!
//! The profile is unsigned (see the [module doc](crate::pkcs12)).

use base64::Engine as _;
use uuid::Uuid;

use super::{KeystoreProfile, Pkcs12Error};

/// Reverse-DNS prefix of every `PayloadIdentifier` this daemon writes.
pub const PAYLOAD_IDENTIFIER_PREFIX: &str = "jp.care-network.pki.device-certificate";

/// Namespace of the payload UUIDs (a UUID v5 of the identifier prefix in the URL namespace, so
/// it is fixed forever and derivable by anyone).
fn uuid_namespace() -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_URL, PAYLOAD_IDENTIFIER_PREFIX.as_bytes())
}

/// Product name shown at the start of the profile's display name.
const PRODUCT_NAME: &str = "電子@連絡帳";

/// Longest serial accepted, in hex digits (RFC 5280: at most 20 octets).
const MAX_SERIAL_HEX: usize = 40;
/// Longest text field accepted, in characters.
const MAX_TEXT_CHARS: usize = 256;

/// What goes into a `.mobileconfig`.
#[derive(Debug, Clone, Copy)]
pub struct MobileconfigInput<'a> {
    /// The PFX built by [`super::build_pfx`] for an Apple profile (password-encrypted).
    pub pfx: &'a [u8],
    /// File name of the PFX shown by the device (`PayloadCertificateFileName`), e.g. `yamada.p12`.
    pub pfx_file_name: &'a str,
    /// The keystore profile the PFX was built with: its `include_chain` adds the issuing CA as a
    /// `com.apple.security.pkcs1` payload, its `include_root` the root as a
    /// `com.apple.security.root` payload, the same certificates as the PFX's bags.
    pub profile: &'a KeystoreProfile,
    /// DER of the issuing CA certificate (the leaf's issuer; used only with `include_chain`);
    /// the payload's display name is its CN.
    pub issuer_der: &'a [u8],
    /// DER of the root CA certificate (used only with `include_root`).
    pub root_der: &'a [u8],
    /// Display name of the root CA certificate (its CN, for instance; used only with
    /// `include_root`).
    pub root_name: &'a str,
    /// The name in the profile's title (Japanese allowed; e.g. the person's name): the profile is
    /// shown as `電子@連絡帳 端末証明書 (<display_name>)`.
    pub display_name: &'a str,
    /// `PayloadOrganization` (the operating organisation, Japanese allowed).
    pub organization: &'a str,
    /// The certificate serial in hex (upper or lower case, no separators); the UUIDs are
    /// derived from it.
    pub serial_hex: &'a str,
    /// The device identity, `facility/person/device` ids
    /// ([`crate::renewal::device_identity`]); the `PayloadIdentifier`s are derived from it.
    pub device_identity: &'a str,
}

/// Builds the `.mobileconfig` (UTF-8 XML property list) for one certificate.
///
/// `PayloadType` `Configuration`, titled `電子@連絡帳 端末証明書 (<display_name>)`, holding a
/// `com.apple.security.pkcs12` payload (the PFX, **no** `Password` key: the device asks for the
/// ticket password on install), a `com.apple.security.pkcs1` payload (the issuing CA; with the
/// profile's `include_chain`) and, only with the profile's `include_root`, a
/// `com.apple.security.root` payload (the root CA). Payload UUIDs are
/// UUID v5 of the serial and identifiers are
/// `<PAYLOAD_IDENTIFIER_PREFIX>.<facility>.<person>.<device>[.pkcs12|.issuer|.root]`. The
/// profile is unsigned.
///
/// # Errors
///
/// [`Pkcs12Error::InvalidMobileconfigInput`] when a field is empty, too long, contains a
/// character XML 1.0 cannot carry, or the serial is not hex.
pub fn build_mobileconfig(input: &MobileconfigInput<'_>) -> Result<Vec<u8>, Pkcs12Error> {
    let invalid = |field, reason| Pkcs12Error::InvalidMobileconfigInput { field, reason };
    if input.pfx.is_empty() {
        return Err(invalid("pfx", "it is empty"));
    }
    let with_issuer = input.profile.include_chain;
    let with_root = input.profile.include_chain && input.profile.include_root;
    let issuer_name = if with_issuer {
        if input.issuer_der.is_empty() {
            return Err(invalid("issuer_der", "it is empty"));
        }
        let name = common_name(input.issuer_der)
            .ok_or_else(|| invalid("issuer_der", "it is not a certificate with a subject CN"))?;
        check_text("issuer_der", &name)?;
        name
    } else {
        String::new()
    };
    if with_root {
        if input.root_der.is_empty() {
            return Err(invalid("root_der", "it is empty"));
        }
        check_text("root_name", input.root_name)?;
    }
    check_text("pfx_file_name", input.pfx_file_name)?;
    check_text("display_name", input.display_name)?;
    check_text("organization", input.organization)?;
    let serial = normalize_serial(input.serial_hex)?;

    let namespace = uuid_namespace();
    let uuid = |role: &str| {
        Uuid::new_v5(&namespace, format!("{serial}/{role}").as_bytes())
            .hyphenated()
            .to_string()
            .to_uppercase()
    };
    let identifier = payload_identifier(input.device_identity)?;
    let title = format!("{PRODUCT_NAME} 端末証明書 ({})", input.display_name);
    let installs = match (with_issuer, with_root) {
        (true, true) => "端末証明書と、それを発行した CA およびルート CA の証明書",
        (true, false) => "端末証明書と、それを発行した CA の証明書",
        (false, _) => "端末証明書",
    };
    let description = format!(
        "{} の{installs}をインストールします。\
         インストールの途中で、証明書と一緒にお知らせした 8 桁のパスワードを入力してください。",
        input.organization
    );

    let ca_len = usize::from(with_issuer) * input.issuer_der.len()
        + usize::from(with_root) * input.root_der.len();
    let mut x = String::with_capacity(4096 + (input.pfx.len() + ca_len) * 14 / 10);
    x.push_str(concat!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
        "<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" ",
        "\"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n",
        "<plist version=\"1.0\">\n",
        "<dict>\n",
        "\t<key>PayloadContent</key>\n",
        "\t<array>\n",
    ));

    // The PKCS#12 payload: no Password key, so the device asks for it.
    x.push_str("\t\t<dict>\n");
    string(&mut x, 3, "PayloadCertificateFileName", input.pfx_file_name);
    data(&mut x, 3, "PayloadContent", input.pfx);
    string(
        &mut x,
        3,
        "PayloadDescription",
        "端末証明書と秘密鍵 (PKCS#12)",
    );
    string(
        &mut x,
        3,
        "PayloadDisplayName",
        &format!("端末証明書 ({})", input.display_name),
    );
    string(
        &mut x,
        3,
        "PayloadIdentifier",
        &format!("{identifier}.pkcs12"),
    );
    string(&mut x, 3, "PayloadType", "com.apple.security.pkcs12");
    string(&mut x, 3, "PayloadUUID", &uuid("pkcs12"));
    integer(&mut x, 3, "PayloadVersion", 1);
    x.push_str("\t\t</dict>\n");

    // The issuing CA: a certificate payload (pkcs1), not a trust anchor (it is not self-signed);
    // it lets the device build and send leaf + issuing CA.
    if with_issuer {
        x.push_str("\t\t<dict>\n");
        string(&mut x, 3, "PayloadCertificateFileName", "issuing-ca.cer");
        data(&mut x, 3, "PayloadContent", input.issuer_der);
        string(
            &mut x,
            3,
            "PayloadDescription",
            "端末証明書を発行した CA の証明書",
        );
        string(&mut x, 3, "PayloadDisplayName", &issuer_name);
        string(
            &mut x,
            3,
            "PayloadIdentifier",
            &format!("{identifier}.issuer"),
        );
        string(&mut x, 3, "PayloadType", "com.apple.security.pkcs1");
        string(&mut x, 3, "PayloadUUID", &uuid("issuer"));
        integer(&mut x, 3, "PayloadVersion", 1);
        x.push_str("\t\t</dict>\n");
    }

    // The root CA payload: only when the keystore profile asks for it (issue #12 item 7).
    if with_root {
        x.push_str("\t\t<dict>\n");
        string(&mut x, 3, "PayloadCertificateFileName", "root-ca.cer");
        data(&mut x, 3, "PayloadContent", input.root_der);
        string(&mut x, 3, "PayloadDescription", "ルート CA 証明書");
        string(&mut x, 3, "PayloadDisplayName", input.root_name);
        string(
            &mut x,
            3,
            "PayloadIdentifier",
            &format!("{identifier}.root"),
        );
        string(&mut x, 3, "PayloadType", "com.apple.security.root");
        string(&mut x, 3, "PayloadUUID", &uuid("root"));
        integer(&mut x, 3, "PayloadVersion", 1);
        x.push_str("\t\t</dict>\n");
    }

    x.push_str("\t</array>\n");
    string(&mut x, 1, "PayloadDescription", &description);
    string(&mut x, 1, "PayloadDisplayName", &title);
    string(&mut x, 1, "PayloadIdentifier", &identifier);
    string(&mut x, 1, "PayloadOrganization", input.organization);
    key(&mut x, 1, "PayloadRemovalDisallowed");
    x.push_str("<false/>\n");
    string(&mut x, 1, "PayloadType", "Configuration");
    string(&mut x, 1, "PayloadUUID", &uuid("configuration"));
    integer(&mut x, 1, "PayloadVersion", 1);
    x.push_str("</dict>\n</plist>\n");

    tracing::debug!(serial = %serial, bytes = x.len(), include_root = with_root,
        "mobileconfig built");
    Ok(x.into_bytes())
}

/// The subject CN of a DER certificate (UTF8String or PrintableString), if it has one.
fn common_name(der: &[u8]) -> Option<String> {
    use der::{Decode as _, Tag, Tagged as _};
    const OID_CN: const_oid::ObjectIdentifier = const_oid::ObjectIdentifier::new_unwrap("2.5.4.3");
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    cert.tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == OID_CN)
        .and_then(|atv| match atv.value.tag() {
            Tag::Utf8String | Tag::PrintableString => std::str::from_utf8(atv.value.value())
                .ok()
                .map(str::to_owned),
            _ => None,
        })
}

/// `PREFIX.<facility>.<person>.<device>` from `facility/person/device`. Ids are ASCII
/// `[A-Za-z0-9._:-]`; `_`, `.` and `:` are written `_5f`, `_2e`, `_3a`, so the identifier
/// names exactly one identity and stays a valid reverse-DNS style string.
fn payload_identifier(device_identity: &str) -> Result<String, Pkcs12Error> {
    let invalid = |reason| Pkcs12Error::InvalidMobileconfigInput {
        field: "device_identity",
        reason,
    };
    let parts: Vec<&str> = device_identity.split('/').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty() || p.len() > 64) {
        return Err(invalid("it is not facility/person/device"));
    }
    let mut out = PAYLOAD_IDENTIFIER_PREFIX.to_owned();
    for part in parts {
        out.push('.');
        for c in part.chars() {
            match c {
                'A'..='Z' | 'a'..='z' | '0'..='9' | '-' => out.push(c),
                '_' | '.' | ':' => out.push_str(&format!("_{:02x}", c as u32)),
                _ => return Err(invalid("an id holds a character outside [A-Za-z0-9._:-]")),
            }
        }
    }
    Ok(out)
}

/// Lowercase hex without leading zeros (so `00AB` and `ab` name the same certificate).
fn normalize_serial(serial_hex: &str) -> Result<String, Pkcs12Error> {
    let invalid = |reason| Pkcs12Error::InvalidMobileconfigInput {
        field: "serial_hex",
        reason,
    };
    if serial_hex.is_empty() {
        return Err(invalid("it is empty"));
    }
    if serial_hex.len() > MAX_SERIAL_HEX + 2 {
        return Err(invalid("it is longer than 20 octets"));
    }
    if !serial_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid("it is not hexadecimal"));
    }
    let trimmed = serial_hex.trim_start_matches('0');
    if trimmed.len() > MAX_SERIAL_HEX {
        return Err(invalid("it is longer than 20 octets"));
    }
    if trimmed.is_empty() {
        return Err(invalid("it is zero"));
    }
    Ok(trimmed.to_ascii_lowercase())
}

/// Non-empty, bounded, and only characters XML 1.0 can carry (no C0 controls except tab, LF,
/// CR; no U+FFFE / U+FFFF). Rust strings hold no lone surrogates.
fn check_text(field: &'static str, value: &str) -> Result<(), Pkcs12Error> {
    let invalid = |reason| Pkcs12Error::InvalidMobileconfigInput { field, reason };
    if value.trim().is_empty() {
        return Err(invalid("it is empty"));
    }
    if value.chars().count() > MAX_TEXT_CHARS {
        return Err(invalid("it is longer than 256 characters"));
    }
    if value
        .chars()
        .any(|c| c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}')
    {
        return Err(invalid("it contains control characters"));
    }
    Ok(())
}

/// Escapes the characters XML gives a meaning to.
fn escape(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

fn key(out: &mut String, depth: usize, name: &str) {
    indent(out, depth);
    out.push_str("<key>");
    escape(out, name);
    out.push_str("</key>\n");
    indent(out, depth);
}

fn string(out: &mut String, depth: usize, name: &str, value: &str) {
    key(out, depth, name);
    out.push_str("<string>");
    escape(out, value);
    out.push_str("</string>\n");
}

fn integer(out: &mut String, depth: usize, name: &str, value: u64) {
    key(out, depth, name);
    out.push_str(&format!("<integer>{value}</integer>\n"));
}

/// `<data>` as base64 in lines of 52 characters (what Apple's tools write).
fn data(out: &mut String, depth: usize, name: &str, bytes: &[u8]) {
    key(out, depth, name);
    out.push_str("<data>\n");
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    for line in encoded.as_bytes().chunks(52) {
        indent(out, depth);
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    indent(out, depth);
    out.push_str("</data>\n");
}

fn indent(out: &mut String, depth: usize) {
    for _ in 0..depth {
        out.push('\t');
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use proptest::prelude::*;

    use super::*;

    /// The `ios` profile of the pfx tests (include_chain, no include_root), and variants.
    fn profile(include_chain: bool, include_root: bool) -> &'static KeystoreProfile {
        use std::sync::OnceLock;
        static PROFILES: OnceLock<Vec<KeystoreProfile>> = OnceLock::new();
        let all = PROFILES.get_or_init(|| {
            let ios = crate::pkcs12::pfx::tests::default_profiles()
                .into_iter()
                .find(|p| p.name == "ios")
                .expect("the ios profile");
            [(true, false), (true, true), (false, false)]
                .into_iter()
                .map(|(include_chain, include_root)| KeystoreProfile {
                    include_chain,
                    include_root,
                    ..ios.clone()
                })
                .collect()
        });
        all.iter()
            .find(|p| p.include_chain == include_chain && p.include_root == include_root)
            .expect("a sample profile")
    }

    fn sample<'a>(serial: &'a str, display_name: &'a str) -> MobileconfigInput<'a> {
        let f = crate::pkcs12::pfx::tests::fixture();
        MobileconfigInput {
            pfx: b"\x30\x03\x02\x01\x03 not really a pfx",
            pfx_file_name: "yamada-hanako.p12",
            profile: profile(true, false),
            issuer_der: &f.issuer,
            root_der: &f.root,
            root_name: "電子@連絡帳 ルート CA",
            display_name,
            organization: "訪問看護ステーションさくら",
            serial_hex: serial,
            device_identity: "F001/P001/D001",
        }
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).expect("UTF-8")
    }

    /// The values of every `<key>name</key>` followed by `<string>`, in order.
    fn strings_of(doc: &str, name: &str) -> Vec<String> {
        let marker = format!("<key>{name}</key>");
        doc.match_indices(&marker)
            .filter_map(|(i, _)| {
                let rest = doc[i + marker.len()..].trim_start();
                let rest = rest.strip_prefix("<string>")?;
                Some(unescape(&rest[..rest.find("</string>")?]))
            })
            .collect()
    }

    fn unescape(s: &str) -> String {
        s.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&")
    }

    fn datas(doc: &str) -> Vec<Vec<u8>> {
        doc.split("<data>")
            .skip(1)
            .map(|s| {
                let b64: String = s[..s.find("</data>").expect("closed")]
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .expect("base64")
            })
            .collect()
    }

    /// Issue #12 item 7: the identity and its issuing CA (as a plain certificate payload), no
    /// root payload, no password.
    #[test]
    fn has_identity_and_issuing_ca_payloads_no_root_and_no_password() {
        let input = sample("0A1B2C", "山田 花子");
        let doc = text(&build_mobileconfig(&input).expect("build"));
        assert!(doc.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist"));
        assert_eq!(
            strings_of(&doc, "PayloadType"),
            [
                "com.apple.security.pkcs12",
                "com.apple.security.pkcs1",
                "Configuration"
            ]
        );
        assert!(!doc.contains("com.apple.security.root"));
        assert_eq!(datas(&doc), [input.pfx.to_vec(), input.issuer_der.to_vec()]);
        assert!(
            !datas(&doc).contains(&input.root_der.to_vec()),
            "the root is nowhere in the profile"
        );
        assert_eq!(strings_of(&doc, "PayloadDisplayName")[1], "テスト 発行 CA");
        assert!(!doc.contains("<key>Password</key>"));
        assert_eq!(
            strings_of(&doc, "PayloadDisplayName")
                .last()
                .map(String::as_str),
            Some("電子@連絡帳 端末証明書 (山田 花子)")
        );
        assert_eq!(
            strings_of(&doc, "PayloadIdentifier"),
            [
                format!("{PAYLOAD_IDENTIFIER_PREFIX}.F001.P001.D001.pkcs12"),
                format!("{PAYLOAD_IDENTIFIER_PREFIX}.F001.P001.D001.issuer"),
                format!("{PAYLOAD_IDENTIFIER_PREFIX}.F001.P001.D001"),
            ]
        );
        assert_eq!(
            strings_of(&doc, "PayloadOrganization"),
            [input.organization]
        );
        assert_eq!(
            strings_of(&doc, "PayloadCertificateFileName")[0],
            "yamada-hanako.p12"
        );
    }

    /// With the profile's `include_root = true` the root payload comes back (the legacy layout),
    /// beside the issuing CA.
    #[test]
    fn include_root_adds_the_root_payload() {
        let input = MobileconfigInput {
            profile: profile(true, true),
            ..sample("0A1B2C", "山田 花子")
        };
        let doc = text(&build_mobileconfig(&input).expect("build"));
        assert_eq!(
            strings_of(&doc, "PayloadType"),
            [
                "com.apple.security.pkcs12",
                "com.apple.security.pkcs1",
                "com.apple.security.root",
                "Configuration"
            ]
        );
        assert_eq!(
            datas(&doc),
            [
                input.pfx.to_vec(),
                input.issuer_der.to_vec(),
                input.root_der.to_vec()
            ]
        );
        let uuids = strings_of(&doc, "PayloadUUID");
        assert_eq!(uuids.len(), 4);
        let unique: std::collections::BTreeSet<_> = uuids.iter().collect();
        assert_eq!(unique.len(), 4, "every payload has its own UUID");
        assert_eq!(
            strings_of(&doc, "PayloadIdentifier")[2],
            format!("{PAYLOAD_IDENTIFIER_PREFIX}.F001.P001.D001.root")
        );

        // include_chain = false: the identity alone, as in the PFX.
        let input = MobileconfigInput {
            profile: profile(false, false),
            issuer_der: b"",
            ..sample("0A1B2C", "山田 花子")
        };
        let doc = text(&build_mobileconfig(&input).expect("build"));
        assert_eq!(
            strings_of(&doc, "PayloadType"),
            ["com.apple.security.pkcs12", "Configuration"]
        );
        assert_eq!(datas(&doc), [input.pfx.to_vec()]);
    }

    #[test]
    fn identifiers_follow_the_device_not_the_serial() {
        // A renewal (new serial, same device) gets the same identifiers, so iOS and macOS
        // replace the installed profile; other devices never share them.
        let old = text(&build_mobileconfig(&sample("0a", "a")).expect("build"));
        let renewed = text(&build_mobileconfig(&sample("0b", "a")).expect("build"));
        assert_eq!(
            strings_of(&old, "PayloadIdentifier"),
            strings_of(&renewed, "PayloadIdentifier")
        );
        assert_ne!(
            strings_of(&old, "PayloadUUID"),
            strings_of(&renewed, "PayloadUUID")
        );
        let id = |identity: &str| {
            let input = MobileconfigInput {
                device_identity: identity,
                ..sample("0a", "a")
            };
            strings_of(
                &text(&build_mobileconfig(&input).expect("build")),
                "PayloadIdentifier",
            )
            .pop()
            .unwrap_or_default()
        };
        // Escaping keeps ids containing `.` from colliding with other splits.
        assert_ne!(id("F.1/P/D"), id("F/1.P/D"));
        assert_eq!(
            id("F.1/p:2/d_3"),
            format!("{PAYLOAD_IDENTIFIER_PREFIX}.F_2e1.p_3a2.d_5f3")
        );
        let bad = MobileconfigInput {
            device_identity: "F/P",
            ..sample("0a", "a")
        };
        assert!(matches!(
            build_mobileconfig(&bad),
            Err(Pkcs12Error::InvalidMobileconfigInput {
                field: "device_identity",
                ..
            })
        ));
    }

    #[test]
    fn uuids_are_stable_per_serial_and_distinct() {
        let a = text(&build_mobileconfig(&sample("00AB12", "a")).expect("build"));
        let b = text(&build_mobileconfig(&sample("ab12", "b")).expect("build"));
        let c = text(&build_mobileconfig(&sample("ab13", "a")).expect("build"));
        let ua = strings_of(&a, "PayloadUUID");
        assert_eq!(ua.len(), 3);
        for u in &ua {
            let parsed = Uuid::parse_str(u).expect("uuid");
            assert_eq!(parsed.get_version_num(), 5);
        }
        assert_ne!(ua[0], ua[1]);
        assert_ne!(ua[1], ua[2]);
        assert_eq!(ua, strings_of(&b, "PayloadUUID"), "same serial, same UUIDs");
        let uc = strings_of(&c, "PayloadUUID");
        assert!(
            ua.iter().all(|u| !uc.contains(u)),
            "other serial, other UUIDs"
        );
    }

    #[test]
    fn rejects_bad_fields() {
        let bad = |i: MobileconfigInput<'_>| match build_mobileconfig(&i) {
            Err(Pkcs12Error::InvalidMobileconfigInput { field, .. }) => field,
            other => panic!("expected an error, got {other:?}"),
        };
        let ok = sample("01", "n");
        assert_eq!(
            bad(MobileconfigInput {
                serial_hex: "",
                ..ok
            }),
            "serial_hex"
        );
        assert_eq!(
            bad(MobileconfigInput {
                serial_hex: "00",
                ..ok
            }),
            "serial_hex"
        );
        assert_eq!(
            bad(MobileconfigInput {
                serial_hex: "0x12",
                ..ok
            }),
            "serial_hex"
        );
        assert_eq!(
            bad(MobileconfigInput {
                serial_hex: &"a".repeat(41),
                ..ok
            }),
            "serial_hex"
        );
        assert_eq!(
            bad(MobileconfigInput {
                display_name: "a\u{1}b",
                ..ok
            }),
            "display_name"
        );
        assert_eq!(
            bad(MobileconfigInput {
                organization: " ",
                ..ok
            }),
            "organization"
        );
        assert_eq!(
            bad(MobileconfigInput {
                root_name: "\u{FFFF}",
                profile: profile(true, true),
                ..ok
            }),
            "root_name"
        );
        assert_eq!(bad(MobileconfigInput { pfx: b"", ..ok }), "pfx");
        assert_eq!(
            bad(MobileconfigInput {
                root_der: b"",
                profile: profile(true, true),
                ..ok
            }),
            "root_der"
        );
        // Without include_root the root fields are not used, so not checked.
        assert!(
            build_mobileconfig(&MobileconfigInput {
                root_der: b"",
                ..ok
            })
            .is_ok()
        );
        for issuer in [&b""[..], b"\x30\x00 not a certificate"] {
            assert_eq!(
                bad(MobileconfigInput {
                    issuer_der: issuer,
                    ..ok
                }),
                "issuer_der"
            );
        }
        assert!(
            build_mobileconfig(&MobileconfigInput {
                serial_hex: &"f".repeat(40),
                ..ok
            })
            .is_ok()
        );
    }

    proptest! {
        /// Whatever printable text the names hold, it comes back intact and the markup stays
        /// balanced (no unescaped `<` or `&` inside a string).
        #[test]
        fn names_are_escaped(name in "[^\\p{Cc}\u{FFFE}\u{FFFF}]{1,64}") {
            prop_assume!(!name.trim().is_empty());
            let doc = text(&build_mobileconfig(&sample("1f", &name)).expect("build"));
            let names = strings_of(&doc, "PayloadDisplayName");
            prop_assert_eq!(names.last().cloned(), Some(format!("{PRODUCT_NAME} 端末証明書 ({name})")));
            prop_assert_eq!(doc.matches("<string>").count(), doc.matches("</string>").count());
            for s in doc.split("<string>").skip(1) {
                let inner = &s[..s.find("</string>").expect("closed")];
                prop_assert!(!inner.contains('<'));
                prop_assert!(inner.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "")
                    .replace("&quot;", "").replace("&apos;", "").find('&').is_none());
            }
        }
    }
}
