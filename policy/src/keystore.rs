//! Per-OS PKCS#12 keystore profiles (DESIGN §8).
//!
//! Importers that cannot read an algorithm report "wrong password", so these choices are made
//! per OS, in policy, and never left to a library default.

use crate::domain::TargetOs;

/// How a PKCS#12 bag (the shrouded key bag, or the encrypted certificate SafeContents) is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BagEncryption {
    /// PBES2: PBKDF2-HMAC-SHA256 + AES-256-CBC (RFC 8018).
    Pbes2Aes256,
    /// pbeWithSHAAnd3-KeyTripleDES-CBC (PKCS#12 v1 PBE, RFC 7292 appendix C).
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
    /// Whether the issuer and root certificates are included as certificate bags.
    pub include_chain: bool,
    /// Also produce an Apple `.mobileconfig` (PKCS#12 payload + root CA payload).
    pub mobileconfig: bool,
    /// File extension of the bundle file (`p12` or `pfx`).
    pub file_extension: String,
}
