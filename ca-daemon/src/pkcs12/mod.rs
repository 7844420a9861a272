//! Per-OS PKCS#12 bundles and the Apple `.mobileconfig` that wraps them (DESIGN §4, §8).
//!
//! [`build_pfx`] turns a leaf key, its certificate and the chain into a PFX whose algorithms are
//! chosen by a [`KeystoreProfile`]; [`build_mobileconfig`] wraps such a PFX and the issuing CA
//! certificate into an (unsigned) Apple configuration profile.
//!
//! # Which CA certificates a device receives (issue #12 item 7)
//!
//! Leaf + issuing CA; the self-signed root only with the profile's `include_root` (default
//! off). A client sends leaf + intermediates and the *server* (our gateway) holds the root as
//! its trust anchor (RFC 8446 §4.4.2: the root "MAY be omitted from the chain"); a root on the
//! device only serves to trust servers under it, which is what a stolen issuing key would abuse.
//! [`bundle_chain`] is the one place that decides; the per-OS reasoning and its sources are in
//! `docs/threat-model.md`, "Which certificates a bundle installs".
//!
//! # What a bundle looks like
//!
//! ```text
//! PFX v3
//!   authSafe = data(AuthenticatedSafe):
//!     [0] encryptedData  (profile.cert_encryption)  SafeContents:
//!           certBag leaf    { friendlyName, localKeyId }
//!           certBag issuer                          (when profile.include_chain)
//!           certBag root                            (when profile.include_root as well)
//!     [1] data                                       SafeContents:
//!           pkcs8ShroudedKeyBag (profile.key_encryption) { friendlyName, localKeyId }
//!   macData = HMAC-SHA256 or HMAC-SHA1 (profile.mac), key from the RFC 7292 appendix B KDF,
//!             salt of profile.mac_salt_len random bytes, profile.iterations
//! ```
//!
//! - `pbeWithSHAAnd3-KeyTripleDES-CBC` (RFC 7292 appendix C): 8-byte random salt, key and IV from
//!   the appendix B KDF with SHA-1 over the BMPString password. Never RC2, for any bag.
//! - PBES2 (RFC 8018): PBKDF2-HMAC-SHA256 with a 16-byte random salt over the UTF-8 password
//!   (what OpenSSL and .NET do; only ASCII digits are used in practice), AES-256-CBC with a
//!   random IV.
//!   `keyLength` is omitted, as OpenSSL does for ciphers with a fixed key size.
//! - `localKeyId` is the SHA-1 of the leaf certificate (OpenSSL's and Windows' convention), equal on
//!   the key bag and the leaf certificate bag. `friendlyName` sits on both, as a strict
//!   BMPString (UCS-2): Japanese names are in the BMP and pass unchanged; a character beyond it
//!   (an emoji, a rare kanji such as `𠮷`) becomes `〓` (see [`bundle_friendly_name`]), because
//!   OpenSSL refuses to write a surrogate pair there and Python `cryptography` reads one back as
//!   no name. The chain certificates carry no attributes (as `openssl pkcs12 -export` writes
//!   them).
//! - Salts and IVs come from ring's `SystemRandom`. Derived keys, IVs and the encoded passwords
//!   live in `Zeroizing` buffers; so does the returned PFX.
//! - Inputs are checked before any KDF runs: non-empty password, a key that matches the leaf
//!   certificate (ECDSA P-256/P-384 or RSA 2048–4096, as ring accepts them), chain in issuer
//!   order, profile parameters in range.
//!
//! # Crate choice (required by the issue)
//!
//! The encoder is written here on the RustCrypto crates of the workspace's generation (`der` 0.7
//! with derive, the ASN.1 types of `pkcs12` 0.1 and `cms` 0.2, the `pkcs12` 0.1 appendix B KDF
//! (feature `kdf`), `des` 0.8, `aes` 0.8, `cbc` 0.1, `hmac` 0.12, `sha1`/`sha2` 0.10, `pbkdf2`
//! 0.12), plus ring for randomness and the key/certificate match. The alternatives fail the
//! profile table of DESIGN §8:
//! - `p12` 0.6.3 hard-codes RC2-40 certificate bags, 3DES keys and a SHA-1 MAC and has no PBES2:
//!   it can build neither the android profile (Android rejects RC2) nor the windows one (AES).
//!   It is kept as a dev-dependency: the tests use it as an independent reader of 3DES bundles.
//! - `p12-keystore` 0.4 writes PBES2 and 3DES, but with one algorithm for both bags (our
//!   profiles set them independently), puts the subject DN in the certificate bag's
//!   `friendlyName` (we need the person's Japanese name on both bags), does not zeroize, and
//!   pulls a second, pre-release RustCrypto generation into the build.
//! - `pkcs5` 0.7 (PBES2) would save only the PBKDF2+AES call (about 15 lines) and still leave the
//!   PKCS#12 PBE, the MAC and every structure to us, so it is not added.
//!
//! # The `.mobileconfig`
//!
//! Written by hand as an XML property list (no `plist` crate: the document is a fixed shape of
//! a few strings, one integer, one to three `<data>` blobs and a boolean, so escaping five
//! characters and rejecting the characters XML 1.0 forbids is all it needs). It is **unsigned**: iOS and macOS
//! show it as "not verified" but install it; signing would need an Apple-trusted or MDM key,
//! which this daemon does not hold. See [`build_mobileconfig`] for the payloads.

mod mobileconfig;
mod pfx;

pub use mobileconfig::{MobileconfigInput, PAYLOAD_IDENTIFIER_PREFIX, build_mobileconfig};
pub use pfx::{BundleInput, NON_BMP_SUBSTITUTE, build_pfx, bundle_chain, bundle_friendly_name};

/// Re-exported so callers need not reach into `pki-policy` for the profile type.
pub use pki_policy::keystore::KeystoreProfile;

/// Why a PKCS#12 bundle or a `.mobileconfig` could not be built.
///
/// Messages never contain the password, key bytes or bundle bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Pkcs12Error {
    /// The bundle password is empty; importers treat an empty and an absent password
    /// inconsistently, so it is never allowed.
    #[error("the bundle password is empty")]
    EmptyPassword,
    /// The bundle password cannot be used (it contains a NUL character or is too long).
    #[error("the bundle password is unusable: {reason}")]
    InvalidPassword {
        /// What is wrong with it (never the password itself).
        reason: &'static str,
    },
    /// The friendly name is empty, too long, or contains control characters.
    #[error("invalid friendly name: {reason}")]
    InvalidFriendlyName {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The keystore profile has a parameter outside the ranges of `pki_policy::keystore`
    /// (`ITERATIONS_RANGE`, `MAC_SALT_LEN_RANGE`).
    #[error("keystore profile {profile:?}: {field} = {value} is out of range")]
    InvalidProfile {
        /// Profile name.
        profile: String,
        /// The profile field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The private key is not a PKCS#8 structure this module can read.
    #[error("the private key is not valid PKCS#8: {reason}")]
    MalformedKey {
        /// What failed (no key material).
        reason: &'static str,
    },
    /// The private key's algorithm is not one every target OS imports (ECDSA P-256/P-384, RSA).
    #[error("unsupported private key algorithm {algorithm}")]
    UnsupportedKey {
        /// The algorithm OID (and curve OID for EC keys).
        algorithm: String,
    },
    /// ring rejected the private key (inconsistent, or an RSA size outside 2048–4096 bits).
    #[error("the private key was rejected: {reason}")]
    KeyRejected {
        /// ring's reason.
        reason: String,
    },
    /// A certificate is not valid DER X.509.
    #[error("certificate {index} (0 = leaf, then the chain) is not valid DER X.509: {source}")]
    MalformedCertificate {
        /// Position: 0 for the leaf, 1.. for the chain in the given order.
        index: usize,
        /// The decoding error.
        source: der::Error,
    },
    /// The private key does not belong to the leaf certificate.
    #[error("the private key does not match the leaf certificate's public key")]
    KeyCertificateMismatch,
    /// The chain is not in issuer order (leaf's issuer first, root last).
    #[error("chain certificate {index} is not the issuer of the certificate before it")]
    ChainOrder {
        /// Position in `chain_der` (0-based) of the certificate that does not fit.
        index: usize,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// DER encoding of a structure failed (a size limit of the encoder was hit).
    #[error("DER encoding of {what} failed: {source}")]
    Encoding {
        /// Which structure.
        what: &'static str,
        /// The encoder's error.
        source: der::Error,
    },
    /// A cipher rejected a key or IV length (an internal invariant was broken).
    #[error("internal error: {what}")]
    Internal {
        /// What went wrong.
        what: &'static str,
    },
    /// A `.mobileconfig` input field is unusable.
    #[error("invalid mobileconfig field {field}: {reason}")]
    InvalidMobileconfigInput {
        /// The field of [`MobileconfigInput`].
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}
