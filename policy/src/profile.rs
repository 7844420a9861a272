//! `[certificate]`: end-entity certificate profiles (DESIGN §4).

use std::collections::BTreeMap;
use std::fmt;

use crate::error::PolicyError;
use crate::raw::{RawCertProfile, RawCertificate, check_name, parse_enum, require};
use crate::sections::{CaPolicy, check_leaf_validity};
use crate::subject::SubjectTemplate;

/// Generates `ALL`, `as_str`, `parse`, `Display` for a fieldless enum spelled in snake_case
/// in the policy file.
macro_rules! named_enum {
    ($ty:ident { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$(Self::$variant),*];

            /// The name used in the policy file.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name),* }
            }

            /// Parses the name used in the policy file.
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }

            fn table() -> Vec<(&'static str, Self)> {
                Self::ALL.iter().map(|v| (v.as_str(), *v)).collect()
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// The key pair generated for an end-entity certificate. No Ed25519 or P-521: Apple's
/// importers refuse them (DESIGN §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// ECDSA P-256 (works for TLS client auth on all four OSes): `p256`.
    P256,
    /// RSA 2048 for legacy clients (VPN, 802.1X): `rsa2048`.
    Rsa2048,
    /// RSA 3072: `rsa3072`.
    Rsa3072,
}
named_enum!(KeyType { P256 => "p256", Rsa2048 => "rsa2048", Rsa3072 => "rsa3072" });

impl KeyType {
    /// Whether this is an RSA key.
    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa2048 | Self::Rsa3072)
    }

    /// RSA modulus size in bits, `None` for EC keys.
    pub fn rsa_bits(self) -> Option<usize> {
        match self {
            Self::P256 => None,
            Self::Rsa2048 => Some(2048),
            Self::Rsa3072 => Some(3072),
        }
    }
}

/// X.509 keyUsage bits an end-entity profile may set (never keyCertSign or cRLSign).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyUsage {
    /// digitalSignature: `digital_signature`.
    DigitalSignature,
    /// nonRepudiation / contentCommitment: `content_commitment`.
    ContentCommitment,
    /// keyEncipherment (RSA only): `key_encipherment`.
    KeyEncipherment,
    /// dataEncipherment (RSA only): `data_encipherment`.
    DataEncipherment,
    /// keyAgreement (EC only): `key_agreement`.
    KeyAgreement,
}
named_enum!(KeyUsage {
    DigitalSignature => "digital_signature",
    ContentCommitment => "content_commitment",
    KeyEncipherment => "key_encipherment",
    DataEncipherment => "data_encipherment",
    KeyAgreement => "key_agreement",
});

impl KeyUsage {
    /// Whether a key of this type can have this usage (encipherment needs RSA, key agreement
    /// needs EC).
    pub fn fits(self, key: KeyType) -> bool {
        match self {
            Self::DigitalSignature | Self::ContentCommitment => true,
            Self::KeyEncipherment | Self::DataEncipherment => key.is_rsa(),
            Self::KeyAgreement => !key.is_rsa(),
        }
    }
}

/// X.509 extendedKeyUsage purposes an end-entity profile may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExtKeyUsage {
    /// id-kp-clientAuth: `client_auth`.
    ClientAuth,
    /// id-kp-serverAuth: `server_auth`.
    ServerAuth,
    /// id-kp-emailProtection: `email_protection`.
    EmailProtection,
}
named_enum!(ExtKeyUsage {
    ClientAuth => "client_auth",
    ServerAuth => "server_auth",
    EmailProtection => "email_protection",
});

/// An end-entity certificate profile (`[certificate.profiles.<name>]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertProfile {
    /// Profile name.
    pub name: String,
    /// Key pair generated in the daemon.
    pub key: KeyType,
    /// Validity in days; never beyond the issuer's (the daemon also clamps `notAfter` to the
    /// issuer certificate's).
    pub validity_days: u32,
    /// keyUsage bits (non-empty, no duplicates, fitting the key type).
    pub key_usage: Vec<KeyUsage>,
    /// extendedKeyUsage purposes (non-empty, no duplicates).
    pub extended_key_usage: Vec<ExtKeyUsage>,
    /// Subject DN template.
    pub subject: SubjectTemplate,
}

impl CertProfile {
    fn from_raw(name: &str, raw: RawCertProfile, ca: &CaPolicy) -> Result<Self, PolicyError> {
        let path = format!("certificate.profiles.{name}");
        check_name(name, &path)?;
        let key_field = format!("{path}.key");
        let key = parse_enum(
            &require(raw.key, &key_field)?,
            &key_field,
            &KeyType::table(),
        )?;

        let validity_field = format!("{path}.validity_days");
        let validity = require(raw.validity_days, &validity_field)?;
        check_leaf_validity(&validity_field, validity, ca.issuer_validity_days)?;
        let validity_days = u32::try_from(validity).map_err(|_| PolicyError::OutOfRange {
            field: validity_field.clone(),
            value: validity,
            min: 1,
            max: i64::from(ca.issuer_validity_days),
        })?;

        let ku_field = format!("{path}.key_usage");
        let key_usage = parse_list(
            require(raw.key_usage, &ku_field)?,
            &ku_field,
            &KeyUsage::table(),
        )?;
        if let Some(ku) = key_usage.iter().find(|ku| !ku.fits(key)) {
            return Err(PolicyError::invalid(
                ku_field,
                format!("`{ku}` does not fit a {key} key"),
            ));
        }
        let eku_field = format!("{path}.extended_key_usage");
        let extended_key_usage = parse_list(
            require(raw.extended_key_usage, &eku_field)?,
            &eku_field,
            &ExtKeyUsage::table(),
        )?;
        // Issue #12 item 7: the issuing CA's extendedKeyUsage is clientAuth only (verifiers
        // that enforce EKU down the chain would refuse anything else), so that its key cannot
        // mint TLS server certificates that enrolled devices trust. A device profile asking for
        // another purpose is an error here, not a certificate that silently fails to validate.
        if let Some((i, eku)) = extended_key_usage
            .iter()
            .enumerate()
            .find(|(_, e)| **e != ExtKeyUsage::ClientAuth)
        {
            return Err(PolicyError::invalid(
                format!("{eku_field}[{i}]"),
                format!(
                    "`{eku}` is not allowed: device certificates are TLS client certificates \
                     only (the issuing CA's extendedKeyUsage is clientAuth)"
                ),
            ));
        }
        let subject_field = format!("{path}.subject");
        let subject =
            SubjectTemplate::from_raw(require(raw.subject, &subject_field)?, &subject_field)?;
        Ok(Self {
            name: name.to_owned(),
            key,
            validity_days,
            key_usage,
            extended_key_usage,
            subject,
        })
    }

    /// Validity of a certificate of this profile.
    pub fn validity(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.validity_days) * 24 * 60 * 60)
    }
}

/// Parses a non-empty list of enumeration values without duplicates; errors name `field[i]`.
fn parse_list<T: Copy + PartialEq>(
    values: Vec<String>,
    field: &str,
    table: &[(&str, T)],
) -> Result<Vec<T>, PolicyError> {
    if values.is_empty() {
        return Err(PolicyError::invalid(field, "must not be empty"));
    }
    let mut out = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        let item_field = format!("{field}[{i}]");
        let v = parse_enum(value, &item_field, table)?;
        if out.contains(&v) {
            return Err(PolicyError::invalid(
                item_field,
                format!("`{value}` is listed twice"),
            ));
        }
        out.push(v);
    }
    Ok(out)
}

/// `[certificate]`: the profiles and which one is used when a request names none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePolicy {
    /// Name of the profile used when a request leaves the profile empty.
    pub default_profile: String,
    /// Every profile, by name.
    pub profiles: BTreeMap<String, CertProfile>,
}

impl CertificatePolicy {
    pub(crate) fn from_raw(raw: RawCertificate, ca: &CaPolicy) -> Result<Self, PolicyError> {
        let mut profiles = BTreeMap::new();
        for (name, raw_profile) in require(raw.profiles, "certificate.profiles")? {
            let profile = CertProfile::from_raw(&name, raw_profile, ca)?;
            profiles.insert(name, profile);
        }
        let default_profile = require(raw.default_profile, "certificate.default_profile")?;
        if !profiles.contains_key(&default_profile) {
            return Err(PolicyError::UnknownProfile {
                field: "certificate.default_profile".into(),
                name: default_profile,
            });
        }
        Ok(Self {
            default_profile,
            profiles,
        })
    }
}
