//! End-entity certificate issuance (DESIGN §4) and the lint that runs before a certificate
//! leaves the daemon.
//!
//! Issuance policy lives here and in `pki-policy`, never in rcgen defaults: the serial is always
//! 128 random bits, the validity is always set explicitly (policy, capped at the issuer's
//! `notAfter`), the subject uses UTF8String for the Japanese names and PrintableString for `C`.
//!
//! **Lint before release.** Boulder signs a throw-away "lint certificate", lints it, and only
//! then signs the real one. We sign once, parse the result with an independent parser
//! (`x509-parser`) and check it against the profile and the request; a certificate that fails
//! is never stored, returned or logged, and its serial is burnt. The issuance cycle is written
//! down in `docs/issuance-cycle.md`.

use pki_policy::domain::Enrollee;
use rcgen::{
    CertificateParams, CrlDistributionPoint, CustomExtension, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use x509_parser::der_parser::oid::Oid;
use x509_parser::oid_registry;
use x509_parser::prelude::{
    DistributionPointName, FromDer, GeneralName, ParsedExtension, X509Certificate, X509Version,
};
use zeroize::Zeroizing;

use crate::keys::{self, KeyType};

/// Errors of issuance.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// Key generation failed.
    #[error("key generation failed: {0}")]
    Key(#[from] keys::KeyError),
    /// rcgen refused the parameters or failed to sign.
    #[error("certificate construction failed: {0}")]
    Build(#[from] rcgen::Error),
    /// The issuer certificate could not be used.
    #[error("the issuing CA certificate is unusable: {0}")]
    Issuer(String),
    /// The issuer expires before a useful certificate could be issued.
    #[error("the active issuer expires at {not_after}; rotate the issuing CA")]
    IssuerExpiring {
        /// The issuer's notAfter.
        not_after: OffsetDateTime,
    },
    /// The signed certificate does not match its profile; it was not released.
    #[error("issued certificate failed lint: {0}")]
    Lint(String),
}

/// The URLs embedded in a certificate.
#[derive(Debug, Clone)]
pub struct CertUrls {
    /// CRL distribution point (must equal the issuer CRL's IDP URI).
    pub crl: String,
    /// OCSP responder (AIA id-ad-ocsp).
    pub ocsp: String,
    /// Issuer certificate download (AIA id-ad-caIssuers).
    pub ca_issuers: String,
}

/// What a leaf is issued for and by whom.
pub struct LeafRequest<'a> {
    /// The enrollee (facility, person, device).
    pub enrollee: &'a Enrollee,
    /// The certificate profile.
    pub profile: &'a pki_policy::CertProfile,
    /// The issuing CA certificate (DER).
    pub issuer_cert_der: &'a [u8],
    /// The issuing CA key.
    pub issuer_key: &'a KeyPair,
    /// The issuing CA's notAfter: the leaf never outlives it.
    pub issuer_not_after: OffsetDateTime,
    /// Embedded URLs.
    pub urls: &'a CertUrls,
    /// Issuance time.
    pub now: OffsetDateTime,
}

/// A freshly issued leaf and its private key.
pub struct IssuedLeaf {
    /// Serial, lowercase hex.
    pub serial_hex: String,
    /// Certificate DER.
    pub der: Vec<u8>,
    /// Private key, PKCS#8 DER.
    pub key_pkcs8: Zeroizing<Vec<u8>>,
    /// notBefore.
    pub not_before: OffsetDateTime,
    /// notAfter.
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for IssuedLeaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedLeaf")
            .field("serial_hex", &self.serial_hex)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The SAN URI that identifies facility, person and device (ids are `[A-Za-z0-9._:-]`, so `/`
/// separates them unambiguously).
pub fn enrollee_uri(e: &Enrollee) -> String {
    format!(
        "urn:pki:device:{}/{}/{}",
        e.facility.id, e.person.id, e.device.id
    )
}

/// Backdating of notBefore to tolerate device clock skew.
const CLOCK_SKEW: Duration = Duration::minutes(5);

/// Issues a leaf certificate: generates the key, signs, lints.
pub fn issue_leaf(req: &LeafRequest<'_>) -> Result<IssuedLeaf, IssueError> {
    let key_type = match req.profile.key {
        pki_policy::KeyType::P256 => KeyType::P256,
        pki_policy::KeyType::Rsa2048 => KeyType::Rsa2048,
        pki_policy::KeyType::Rsa3072 => KeyType::Rsa3072,
    };
    let generated = keys::generate(key_type)?;

    let not_before = req.now - CLOCK_SKEW;
    let wanted = req.now + Duration::days(i64::from(req.profile.validity_days));
    let not_after = wanted.min(req.issuer_not_after);
    if not_after <= req.now + Duration::days(1) {
        return Err(IssueError::IssuerExpiring {
            not_after: req.issuer_not_after,
        });
    }
    // X.509 time has second precision.
    let not_before = not_before.replace_nanosecond(0).unwrap_or(not_before);
    let not_after = not_after.replace_nanosecond(0).unwrap_or(not_after);

    let subject = req
        .profile
        .subject
        .render_checked(req.enrollee)
        .map_err(|e| IssueError::Lint(format!("subject: {}: {:?}", e.field, e.problem)))?;
    let mut dn = DistinguishedName::new();
    let country = rcgen::string::PrintableString::try_from(subject.country.as_str())
        .map_err(|_| IssueError::Lint("subject country is not a PrintableString".into()))?;
    dn.push(DnType::CountryName, DnValue::PrintableString(country));
    dn.push(
        DnType::OrganizationName,
        DnValue::Utf8String(subject.organization.clone()),
    );
    if let Some(ou) = &subject.organizational_unit {
        dn.push(
            DnType::OrganizationalUnitName,
            DnValue::Utf8String(ou.clone()),
        );
    }
    dn.push(
        DnType::CommonName,
        DnValue::Utf8String(subject.common_name.clone()),
    );

    let serial = keys::random_serial();
    let serial_hex = hex::encode(serial.to_bytes());
    let uri = enrollee_uri(req.enrollee);

    let mut params = CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(serial);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(
        rcgen::string::Ia5String::try_from(uri.clone())
            .map_err(|_| IssueError::Lint("SAN URI is not IA5".into()))?,
    )];
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = req
        .profile
        .key_usage
        .iter()
        .map(|ku| match ku {
            pki_policy::KeyUsage::DigitalSignature => KeyUsagePurpose::DigitalSignature,
            pki_policy::KeyUsage::ContentCommitment => KeyUsagePurpose::ContentCommitment,
            pki_policy::KeyUsage::KeyEncipherment => KeyUsagePurpose::KeyEncipherment,
            pki_policy::KeyUsage::DataEncipherment => KeyUsagePurpose::DataEncipherment,
            pki_policy::KeyUsage::KeyAgreement => KeyUsagePurpose::KeyAgreement,
        })
        .collect();
    params.extended_key_usages = req
        .profile
        .extended_key_usage
        .iter()
        .map(|eku| match eku {
            pki_policy::ExtKeyUsage::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
            pki_policy::ExtKeyUsage::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
            pki_policy::ExtKeyUsage::EmailProtection => ExtendedKeyUsagePurpose::EmailProtection,
        })
        .collect();
    params.crl_distribution_points = vec![CrlDistributionPoint {
        uris: vec![req.urls.crl.clone()],
    }];
    params.custom_extensions = vec![aia_extension(&req.urls.ocsp, &req.urls.ca_issuers)];
    params.use_authority_key_identifier_extension = true;

    // 1. Sign a throw-away lint certificate with a key that is not the CA's, and lint it.
    let lint_key = lint_key(req.issuer_key)?;
    let lint_issuer = Issuer::from_ca_cert_der(&req.issuer_cert_der.into(), &lint_key)
        .map_err(|e| IssueError::Issuer(e.to_string()))?;
    let lint_der = params
        .signed_by(&generated.key_pair, &lint_issuer)?
        .der()
        .to_vec();
    lint_leaf(&lint_der, req, &serial_hex, &uri, &subject)?;

    // 2. Only then sign with the CA key, and check that what was signed is byte for byte what
    //    was linted (the TBSCertificate; the issuer's key identifier comes from its
    //    certificate, so it is the same under both keys).
    let issuer = Issuer::from_ca_cert_der(&req.issuer_cert_der.into(), req.issuer_key)
        .map_err(|e| IssueError::Issuer(e.to_string()))?;
    let der = params
        .signed_by(&generated.key_pair, &issuer)?
        .der()
        .to_vec();
    if tbs_bytes(&der)? != tbs_bytes(&lint_der)? {
        return Err(IssueError::Lint(
            "signed certificate differs from the linted one".into(),
        ));
    }

    Ok(IssuedLeaf {
        serial_hex,
        der,
        key_pkcs8: generated.pkcs8,
        not_before,
        not_after,
    })
}

/// A throw-away key of the issuer's algorithm that signs the lint certificate (never the CA's
/// key, never stored; a lint certificate is never released). EC key generation costs
/// microseconds, so a fresh one per issuance is cheaper than sharing state.
fn lint_key(issuer_key: &KeyPair) -> Result<KeyPair, IssueError> {
    KeyPair::generate_for(issuer_key.algorithm())
        .map_err(|e| IssueError::Issuer(format!("lint key for the issuer's algorithm: {e}")))
}

/// The raw TBSCertificate of a DER certificate.
fn tbs_bytes(der: &[u8]) -> Result<Vec<u8>, IssueError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| IssueError::Lint(format!("does not parse: {e}")))?;
    Ok(cert.tbs_certificate.as_ref().to_vec())
}

/// OID arcs of the AuthorityInfoAccess extension.
const OID_AIA: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 1];

/// Encodes a DER length.
fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 4);
    out.push(tag);
    der_len(content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

/// AuthorityInfoAccess with id-ad-ocsp and id-ad-caIssuers URIs (rcgen has no builder for it).
fn aia_extension(ocsp: &str, ca_issuers: &str) -> CustomExtension {
    // id-ad-ocsp 1.3.6.1.5.5.7.48.1 and id-ad-caIssuers 1.3.6.1.5.5.7.48.2, DER-encoded.
    const AD_OCSP: [u8; 8] = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01];
    const AD_CA_ISSUERS: [u8; 8] = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x02];
    let access = |oid: &[u8], uri: &str| {
        let mut body = der_tlv(0x06, oid);
        body.extend(der_tlv(0x86, uri.as_bytes()));
        der_tlv(0x30, &body)
    };
    let mut seq = access(&AD_OCSP, ocsp);
    seq.extend(access(&AD_CA_ISSUERS, ca_issuers));
    CustomExtension::from_oid_content(OID_AIA, der_tlv(0x30, &seq))
}

/// Checks a signed leaf against its profile and request with an independent parser.
fn lint_leaf(
    der: &[u8],
    req: &LeafRequest<'_>,
    serial_hex: &str,
    uri: &str,
    subject: &pki_policy::Subject,
) -> Result<(), IssueError> {
    let fail = |m: String| Err(IssueError::Lint(m));
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| IssueError::Lint(format!("does not parse: {e}")))?;
    if !rest.is_empty() {
        return fail("trailing bytes after the certificate".into());
    }
    let (_, issuer) = X509Certificate::from_der(req.issuer_cert_der)
        .map_err(|e| IssueError::Issuer(e.to_string()))?;
    if cert.version() != X509Version::V3 {
        return fail("not a v3 certificate".into());
    }
    let raw_serial = cert.raw_serial();
    if raw_serial.len() != 16 || raw_serial[0] & 0x80 != 0 || raw_serial[0] == 0 {
        return fail("serial is not 128 bits, positive, minimal".into());
    }
    if hex::encode(raw_serial) != serial_hex {
        return fail("serial differs from the one drawn".into());
    }
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return fail("issuer name differs from the CA's subject".into());
    }
    if cert.validity().not_after.to_datetime() > issuer.validity().not_after.to_datetime() {
        return fail("validity extends beyond the issuer's".into());
    }
    // Subject: O and CN byte-identical, as UTF8String.
    let check_attr = |oid: &Oid<'_>, want: &str, name: &str| {
        let mut found = false;
        for attr in cert.subject().iter_attributes() {
            if attr.attr_type() == oid {
                if attr.attr_value().header.tag()
                    != x509_parser::der_parser::asn1_rs::Tag::Utf8String
                {
                    return Err(IssueError::Lint(format!("{name} is not a UTF8String")));
                }
                if attr.attr_value().data != want.as_bytes() {
                    return Err(IssueError::Lint(format!("{name} differs from the request")));
                }
                found = true;
            }
        }
        if found {
            Ok(())
        } else {
            Err(IssueError::Lint(format!("{name} missing")))
        }
    };
    check_attr(
        &oid_registry::OID_X509_ORGANIZATION_NAME,
        &subject.organization,
        "O",
    )?;
    check_attr(
        &oid_registry::OID_X509_COMMON_NAME,
        &subject.common_name,
        "CN",
    )?;

    let mut saw = (false, false, false, false, false, false);
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) => {
                if bc.ca {
                    return fail("leaf is marked as CA".into());
                }
                saw.0 = true;
            }
            ParsedExtension::KeyUsage(ku) => {
                use pki_policy::KeyUsage as K;
                let want = |k: K| req.profile.key_usage.contains(&k);
                if ku.digital_signature() != want(K::DigitalSignature)
                    || ku.non_repudiation() != want(K::ContentCommitment)
                    || ku.key_encipherment() != want(K::KeyEncipherment)
                    || ku.data_encipherment() != want(K::DataEncipherment)
                    || ku.key_agreement() != want(K::KeyAgreement)
                    || ku.key_cert_sign()
                    || ku.crl_sign()
                {
                    return fail("key usage differs from the profile".into());
                }
                saw.1 = true;
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                use pki_policy::ExtKeyUsage as E;
                let want = |e: E| req.profile.extended_key_usage.contains(&e);
                if eku.client_auth != want(E::ClientAuth)
                    || eku.server_auth != want(E::ServerAuth)
                    || eku.email_protection != want(E::EmailProtection)
                    || eku.any
                {
                    return fail("extended key usage differs from the profile".into());
                }
                saw.2 = true;
            }
            ParsedExtension::SubjectAlternativeName(san) => {
                let ok = san
                    .general_names
                    .iter()
                    .any(|g| matches!(g, GeneralName::URI(u) if *u == uri));
                if !ok {
                    return fail("SAN URI missing".into());
                }
                saw.3 = true;
            }
            ParsedExtension::CRLDistributionPoints(cdp) => {
                let ok = cdp.iter().any(|dp| {
                    matches!(&dp.distribution_point,
                        Some(DistributionPointName::FullName(names))
                            if names.iter().any(|g| matches!(g, GeneralName::URI(u) if *u == req.urls.crl)))
                });
                if !ok {
                    return fail("CRL distribution point differs from the issuer's CRL URL".into());
                }
                saw.4 = true;
            }
            ParsedExtension::AuthorityInfoAccess(aia) => {
                let ok = aia.accessdescs.iter().any(
                    |d| matches!(&d.access_location, GeneralName::URI(u) if *u == req.urls.ocsp),
                );
                if !ok {
                    return fail("AIA lacks the OCSP URL".into());
                }
                saw.5 = true;
            }
            _ => {}
        }
    }
    if saw != (true, true, true, true, true, true) {
        return fail(format!(
            "missing extension (basicConstraints, KU, EKU, SAN, CDP, AIA present: {saw:?})"
        ));
    }
    if cert
        .get_extension_unique(&oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER)
        .ok()
        .flatten()
        .is_none()
        || cert
            .get_extension_unique(&oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
            .ok()
            .flatten()
            .is_none()
    {
        return fail("AKI or SKI missing".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KdfParams, Passphrase};
    use pki_policy::domain::{Device, Facility, Person, TargetOs};

    fn enrollee() -> Enrollee {
        Enrollee {
            facility: Facility {
                id: "F001".into(),
                name: "豊田みよしケアネット訪問看護".into(),
                prefecture: "愛知県".into(),
                city: "豊田市".into(),
                kind: "訪問看護".into(),
            },
            person: Person {
                id: "P001".into(),
                family_name: "山田".into(),
                given_name: "花子".into(),
                family_name_kana: "ヤマダ".into(),
                given_name_kana: "ハナコ".into(),
                job: "看護師".into(),
                email: "h@example.jp".into(),
            },
            device: Device {
                id: "D001".into(),
                os: TargetOs::Ios,
                remark: String::new(),
            },
        }
    }

    fn pki() -> (tempfile::TempDir, crate::pki::LoadedPki) {
        let dir = tempfile::tempdir().expect("tempdir");
        let pass = Passphrase::from_bytes(b"issue test passphrase").expect("passphrase");
        let mut opts =
            crate::pki::InitOptions::new(dir.path().join("d"), pass, "http://127.0.0.1:8080");
        opts.kdf = KdfParams::PRODUCTION_FLOOR;
        crate::pki::init(&opts).expect("init");
        let pass = Passphrase::from_bytes(b"issue test passphrase").expect("passphrase");
        let loaded = crate::pki::load(&dir.path().join("d"), &pass).expect("load");
        (dir, loaded)
    }

    fn urls() -> CertUrls {
        CertUrls {
            crl: "http://127.0.0.1:8080/crl/x.crl".into(),
            ocsp: "http://127.0.0.1:8080/ocsp".into(),
            ca_issuers: "http://127.0.0.1:8080/ca/x.crt".into(),
        }
    }

    fn request<'a>(
        issuer: &'a crate::pki::LoadedIssuer,
        e: &'a Enrollee,
        profile: &'a pki_policy::CertProfile,
        urls: &'a CertUrls,
    ) -> LeafRequest<'a> {
        LeafRequest {
            enrollee: e,
            profile,
            issuer_cert_der: &issuer.cert_der,
            issuer_key: &issuer.key,
            issuer_not_after: issuer.not_after,
            urls,
            now: OffsetDateTime::now_utc(),
        }
    }

    #[test]
    fn issues_a_linted_leaf_with_utf8_names_capped_at_the_issuer() {
        let (_dir, pki) = pki();
        let issuer = pki.active_issuer().expect("active issuer");
        let policy = pki_policy::Policy::default_policy();
        let mut profile = policy.cert_profile(None).expect("profile").clone();
        let (e, urls) = (enrollee(), urls());
        let leaf = issue_leaf(&request(issuer, &e, &profile, &urls)).expect("issue");
        assert_eq!(leaf.serial_hex.len(), 32);
        let (_, cert) = X509Certificate::from_der(&leaf.der).expect("parse");
        let o = cert
            .subject()
            .iter_organization()
            .next()
            .expect("O")
            .attr_value()
            .data;
        assert_eq!(o, e.facility.name.as_bytes());
        assert!(leaf.not_after <= issuer.not_after);

        // A profile longer than the issuer's remaining life is capped at the issuer.
        profile.validity_days = 100_000;
        let leaf = issue_leaf(&request(issuer, &e, &profile, &urls)).expect("issue");
        assert_eq!(
            leaf.not_after.unix_timestamp(),
            issuer.not_after.unix_timestamp()
        );
    }

    #[test]
    fn lint_refuses_a_certificate_that_does_not_match_the_request() {
        let (_dir, pki) = pki();
        let issuer = pki.active_issuer().expect("active issuer");
        let policy = pki_policy::Policy::default_policy();
        let profile = policy.cert_profile(None).expect("profile").clone();
        let (e, urls) = (enrollee(), urls());
        let req = request(issuer, &e, &profile, &urls);
        let leaf = issue_leaf(&req).expect("issue");
        let subject = profile.subject.render(&e);
        let uri = enrollee_uri(&e);
        // The right request passes ...
        lint_leaf(&leaf.der, &req, &leaf.serial_hex, &uri, &subject).expect("lint");
        // ... a different organisation, serial, SAN or CRL URL does not.
        let mut other = subject.clone();
        other.organization = "別の施設".into();
        assert!(lint_leaf(&leaf.der, &req, &leaf.serial_hex, &uri, &other).is_err());
        assert!(lint_leaf(&leaf.der, &req, &"7f".repeat(16), &uri, &subject).is_err());
        assert!(
            lint_leaf(
                &leaf.der,
                &req,
                &leaf.serial_hex,
                "urn:pki:device:x/y/z",
                &subject
            )
            .is_err()
        );
        let other_urls = CertUrls {
            crl: "http://elsewhere/crl".into(),
            ..urls.clone()
        };
        let req2 = request(issuer, &e, &profile, &other_urls);
        assert!(lint_leaf(&leaf.der, &req2, &leaf.serial_hex, &uri, &subject).is_err());
    }
}
