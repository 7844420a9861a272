//! Per-OS PKCS#12 keystore profiles (DESIGN §8).
//!
//! Importers that cannot read an algorithm report "wrong password", so these choices are made
//! per OS, in policy, and never left to a library default.
//!
//! **No RC2.** OpenSSL's historical default encrypts certificate bags with RC2-40; Android's
//! importer rejects RC2 certificate bags and OpenSSL 3 needs `-legacy` to read them. There is
//! deliberately no RC2 variant of [`BagEncryption`], and a policy naming RC2 (or anything
//! else) is refused when loaded; [`BagEncryption::android_can_import`] is the exhaustive
//! check that a future variant must pass before an Android profile may use it.

use std::fmt;

use crate::domain::TargetOs;
use crate::error::PolicyError;
use crate::raw::{RawKeystore, check_name, parse_enum, ranged, require};

/// Media type of a PKCS#12 bundle (`.p12` / `.pfx`).
pub const PKCS12_MEDIA_TYPE: &str = "application/x-pkcs12";

/// Media type of an Apple configuration profile (`.mobileconfig`).
pub const MOBILECONFIG_MEDIA_TYPE: &str = "application/x-apple-aspen-config";

/// Allowed KDF iteration counts (bag encryption and MAC).
pub const ITERATIONS_RANGE: std::ops::RangeInclusive<u32> = 1000..=1_000_000;

/// Allowed MAC salt lengths, in bytes.
pub const MAC_SALT_LEN_RANGE: std::ops::RangeInclusive<usize> = 8..=64;

/// How a PKCS#12 bag (the shrouded key bag, or the encrypted certificate SafeContents) is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BagEncryption {
    /// PBES2: PBKDF2-HMAC-SHA256 + AES-256-CBC (RFC 8018).
    Pbes2Aes256,
    /// pbeWithSHAAnd3-KeyTripleDES-CBC (PKCS#12 v1 PBE, RFC 7292 appendix C).
    ///
    /// Spelled `pbe-sha1-3des` (serde's kebab-case would give the unreadable `pbe3-des`).
    #[serde(rename = "pbe-sha1-3des")]
    Pbe3Des,
}

/// The integrity MAC of the PFX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MacAlgorithm {
    /// HMAC-SHA256, key from the PKCS#12 KDF with SHA-256.
    HmacSha256,
    /// HMAC-SHA1, key from the PKCS#12 KDF with SHA-1.
    HmacSha1,
}

/// A keystore profile: everything that decides how a bundle is built for one kind of importer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeystoreProfile {
    /// Profile name (`windows`, `windows-legacy`, `macos`, `ios`, `android`, or a custom one).
    pub name: String,
    /// The OS this profile is for.
    pub os: TargetOs,
    /// Encryption of the shrouded key bag.
    pub key_encryption: BagEncryption,
    /// Encryption of the certificate bags' SafeContents.
    pub cert_encryption: BagEncryption,
    /// The PFX MAC.
    pub mac: MacAlgorithm,
    /// Length of the MAC salt in bytes (8 for Apple importers).
    pub mac_salt_len: usize,
    /// Iteration count for the KDFs (bag encryption and MAC).
    pub iterations: u32,
    /// Whether the issuing CA certificate is included as a certificate bag (the device needs it
    /// to send its chain: the gateway trusts only the root).
    pub include_chain: bool,
    /// Whether the self-signed device root is included as well (in the PFX and, for Apple, as a
    /// `com.apple.security.root` payload). Default `false` (issue #12 item 7): no device needs the
    /// root to authenticate as a client, and installing it makes the device trust *servers*
    /// under it (see `docs/threat-model.md`, "Which certificates a bundle installs"). Only
    /// with `include_chain`.
    pub include_root: bool,
    /// Also produce an Apple `.mobileconfig` (PKCS#12 payload + issuing CA payload, + root CA
    /// payload with `include_root`).
    pub mobileconfig: bool,
    /// File extension of the bundle file (`p12` or `pfx`).
    pub file_extension: String,
}

impl BagEncryption {
    /// Every bag encryption this CA can write.
    pub const ALL: [BagEncryption; 2] = [Self::Pbes2Aes256, Self::Pbe3Des];

    /// The name used in policy files (`pbes2-aes256`, `pbe-sha1-3des`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pbes2Aes256 => "pbes2-aes256",
            Self::Pbe3Des => "pbe-sha1-3des",
        }
    }

    /// Parses the name used in policy files.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// Whether Android's PKCS#12 importer reads bags encrypted this way. Exhaustive on
    /// purpose: a new variant must be decided here (RC2 would be `false`).
    pub fn android_can_import(self) -> bool {
        match self {
            Self::Pbes2Aes256 | Self::Pbe3Des => true,
        }
    }
}

impl fmt::Display for BagEncryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl MacAlgorithm {
    /// Every MAC this CA can write.
    pub const ALL: [MacAlgorithm; 2] = [Self::HmacSha256, Self::HmacSha1];

    /// The name used in policy files (`hmac-sha256`, `hmac-sha1`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HmacSha256 => "hmac-sha256",
            Self::HmacSha1 => "hmac-sha1",
        }
    }

    /// Parses the name used in policy files.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl fmt::Display for MacAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl KeystoreProfile {
    /// Media type of the PKCS#12 bundle: [`PKCS12_MEDIA_TYPE`].
    pub fn media_type(&self) -> &'static str {
        PKCS12_MEDIA_TYPE
    }

    /// Media type of the `.mobileconfig` ([`MOBILECONFIG_MEDIA_TYPE`]) when this profile
    /// produces one.
    pub fn mobileconfig_media_type(&self) -> Option<&'static str> {
        self.mobileconfig.then_some(MOBILECONFIG_MEDIA_TYPE)
    }

    /// File name of the bundle: `<stem>.<file_extension>`.
    pub fn file_name(&self, stem: &str) -> String {
        format!("{stem}.{}", self.file_extension)
    }

    /// File name of the `.mobileconfig` (`<stem>.mobileconfig`) when this profile produces one.
    pub fn mobileconfig_file_name(&self, stem: &str) -> Option<String> {
        self.mobileconfig.then(|| format!("{stem}.mobileconfig"))
    }

    /// Checks the profile against the rules of DESIGN §8: iterations within
    /// [`ITERATIONS_RANGE`], MAC salt within [`MAC_SALT_LEN_RANGE`], extension `p12` or `pfx`,
    /// `include_root` only with `include_chain`, `.mobileconfig` only for macOS and iOS, and for Android only encryptions its importer
    /// reads. Errors name `keystore.<name>.<key>`.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let path = format!("keystore.{}", self.name);
        check_name(&self.name, &path)?;
        if !ITERATIONS_RANGE.contains(&self.iterations) {
            return Err(PolicyError::OutOfRange {
                field: format!("{path}.iterations"),
                value: i64::from(self.iterations),
                min: i64::from(*ITERATIONS_RANGE.start()),
                max: i64::from(*ITERATIONS_RANGE.end()),
            });
        }
        if !MAC_SALT_LEN_RANGE.contains(&self.mac_salt_len) {
            return Err(PolicyError::OutOfRange {
                field: format!("{path}.mac_salt_len"),
                value: i64::try_from(self.mac_salt_len).unwrap_or(i64::MAX),
                min: 8,
                max: 64,
            });
        }
        if !matches!(self.file_extension.as_str(), "p12" | "pfx") {
            return Err(PolicyError::invalid(
                format!("{path}.file_extension"),
                format!(
                    "`{}` must be `p12` or `pfx`",
                    self.file_extension.escape_debug()
                ),
            ));
        }
        if self.include_root && !self.include_chain {
            return Err(PolicyError::invalid(
                format!("{path}.include_root"),
                "include_root = true needs include_chain = true (the root is part of the chain)",
            ));
        }
        if self.mobileconfig && !matches!(self.os, TargetOs::Macos | TargetOs::Ios) {
            return Err(PolicyError::invalid(
                format!("{path}.mobileconfig"),
                format!("a .mobileconfig is for macOS and iOS only, not {}", self.os),
            ));
        }
        if self.os == TargetOs::Android {
            for (key, enc) in [
                ("key_encryption", self.key_encryption),
                ("cert_encryption", self.cert_encryption),
            ] {
                if !enc.android_can_import() {
                    return Err(PolicyError::UnsupportedEncryption {
                        field: format!("{path}.{key}"),
                        value: enc.as_str().to_owned(),
                        reason: "Android's importer cannot read it".into(),
                    });
                }
            }
        }
        Ok(())
    }

    pub(crate) fn from_raw(name: &str, raw: RawKeystore) -> Result<Self, PolicyError> {
        let path = format!("keystore.{name}");
        check_name(name, &path)?;
        let os_field = format!("{path}.os");
        let os_name = require(raw.os, &os_field)?;
        let os = TargetOs::parse(&os_name).ok_or(PolicyError::UnknownOs {
            field: os_field,
            value: os_name,
        })?;
        let encryption = |value: Option<String>, key: &str| {
            let field = format!("{path}.{key}");
            let value = require(value, &field)?;
            if let Some(enc) = BagEncryption::parse(&value) {
                return Ok(enc);
            }
            if value.to_ascii_lowercase().contains("rc2") {
                let reason = if os == TargetOs::Android {
                    "Android's importer rejects RC2 certificate bags; \
                     use pbe-sha1-3des or pbes2-aes256"
                } else {
                    "RC2 (40-bit) is broken and not offered; use pbe-sha1-3des or pbes2-aes256"
                };
                return Err(PolicyError::UnsupportedEncryption {
                    field,
                    value,
                    reason: reason.into(),
                });
            }
            let table: Vec<_> = BagEncryption::ALL
                .iter()
                .map(|e| (e.as_str(), *e))
                .collect();
            parse_enum(&value, &field, &table)
        };
        let key_encryption = encryption(raw.key_encryption, "key_encryption")?;
        let cert_encryption = encryption(raw.cert_encryption, "cert_encryption")?;
        let mac_field = format!("{path}.mac");
        let mac_table: Vec<_> = MacAlgorithm::ALL.iter().map(|m| (m.as_str(), *m)).collect();
        let mac = parse_enum(&require(raw.mac, &mac_field)?, &mac_field, &mac_table)?;
        let profile = Self {
            name: name.to_owned(),
            os,
            key_encryption,
            cert_encryption,
            mac,
            mac_salt_len: ranged(raw.mac_salt_len, &format!("{path}.mac_salt_len"), 8, 64)?,
            iterations: ranged(
                raw.iterations,
                &format!("{path}.iterations"),
                i64::from(*ITERATIONS_RANGE.start()),
                i64::from(*ITERATIONS_RANGE.end()),
            )?,
            include_chain: require(raw.include_chain, &format!("{path}.include_chain"))?,
            // Optional, so that custom profiles written before it existed keep loading; absent
            // means the safe default (no root on the device).
            include_root: raw.include_root.unwrap_or(false),
            mobileconfig: require(raw.mobileconfig, &format!("{path}.mobileconfig"))?,
            file_extension: require(raw.file_extension, &format!("{path}.file_extension"))?,
        };
        profile.validate()?;
        Ok(profile)
    }
}
