//! OCSP responder core (RFC 6960, with the RFC 5019 lightweight profile): decodes requests,
//! answers them from a cache of pre-signed responses, signs with a delegated responder key.
//!
//! Pure: no HTTP, no store. Status comes from a [`StatusLookup`] the caller implements over the
//! store; the HTTP layer hands in request bytes ([`decode_get_path`] for RFC 5019 GET).
//!
//! # Answers
//! [`OcspResponder::respond`] always returns a DER `OCSPResponse`:
//! - `malformedRequest` for anything that does not decode as an `OCSPRequest`, an empty or
//!   over-long request list, a request larger than [`MAX_REQUEST_LEN`], or a nonce of 0 or more
//!   than 128 octets (RFC 8954 §2.1);
//! - `unauthorized` when a CertID names an issuer we do not serve, uses a hash other than
//!   SHA-1 / SHA-256, or the CertIDs of one request span several issuers (each issuer has its
//!   own delegated responder, and a response has one signer);
//! - `internalError` if signing fails;
//! - otherwise `successful`: a `BasicOCSPResponse` with responderID byKey, producedAt,
//!   per certificate thisUpdate and nextUpdate (= thisUpdate + validity), good /
//!   revoked(revocationTime, reason; no reason for `unspecified`) / unknown, the responder
//!   certificate in `certs`, and the signature of the DER `ResponseData` by the responder key
//!   (ecdsa-with-SHA256 for P-256 keys). A nonce is echoed byte for byte.
//!
//! # Cache: a request costs a lookup, not a signature
//! A request for one certificate without a nonce (the RFC 5019 case, what CDNs and most
//! clients send) is answered from a sharded `RwLock<HashMap>` keyed by (issuer, serial, CertID
//! hash): the stored DER is returned as is, byte-identical until [`OcspResponder::invalidate`],
//! [`OcspResponder::presign`] or [`OcspResponder::refresh_due`] replaces it. Locks are held only
//! to look up or insert, never while signing, so concurrent misses sign in parallel. An entry
//! whose nextUpdate is within `resign_before` is not served from the cache but signed afresh.
//! Requests with a nonce or several certificates are signed fresh and not cached.
//! `unknown` answers are cached up to [`MAX_CACHED_UNKNOWN`] entries so random serials cannot
//! grow the cache without bound. Races between a lookup and a concurrent status change are
//! settled under the shard lock with two counters: a miss or a `presign` that started before
//! an invalidation does not cache its (possibly stale) answer, and of two answers for the same
//! certificate the one whose status was read later wins.
//!
//! # Serials
//! Serials are compared by value. [`StatusLookup::status`] receives the canonical form:
//! lowercase hex of the big-endian magnitude without leading zero octets (a certificate
//! serial `00 9f ...` is passed as `"9f..."`). `presign` and `invalidate` accept any hex form
//! of the same value. Issuance should therefore store serials in that canonical form (a random
//! 128-bit serial whose first octet is in `0x01..=0x7f` is canonical as 32 hex digits).
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use base64::Engine as _;
use const_oid::db::rfc5912::{ID_SHA_1, ID_SHA_256};
use const_oid::db::rfc6960::ID_PKIX_OCSP_NONCE;
use der::asn1::{BitString, GeneralizedTime, Null, OctetString};
use der::{Decode, Encode, Tagged};
use pki_policy::domain::RevocationReason;
use rcgen::SigningKey;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use spki::AlgorithmIdentifierOwned;
use time::OffsetDateTime;
use x509_cert::Certificate;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::CrlReason;
use x509_cert::serial_number::SerialNumber;
use x509_ocsp::{
    BasicOcspResponse, CertId, OcspGeneralizedTime, OcspRequest, OcspResponse, ResponderId,
    ResponseData, RevokedInfo, SingleResponse, Version,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::crl::{
    SerialProblem, canonical_hex_of_integer, serial_magnitude, signature_algorithm_der,
};

/// Largest request accepted (bytes). RFC 5019 requests are about 100 bytes.
pub const MAX_REQUEST_LEN: usize = 16 * 1024;
/// Most certificates accepted in one request.
pub const MAX_CERTS_PER_REQUEST: usize = 16;
/// Most `unknown` responses kept in the cache.
pub const MAX_CACHED_UNKNOWN: usize = 65_536;
/// Longest RFC 5019 GET path accepted by [`decode_get_path`] (characters).
/// (The base64 of a [`MAX_REQUEST_LEN`] request with every character percent-encoded.)
pub const MAX_GET_PATH_LEN: usize = 3 * 4 * MAX_REQUEST_LEN.div_ceil(3);
/// Number of cache shards.
const SHARDS: usize = 32;
/// How far `thisUpdate` lies before the time of signing: relying parties whose clock runs a
/// little behind would otherwise see a response "not yet valid" (certificates are backdated
/// for the same reason). Never before the revocation time of a revoked certificate.
pub const THIS_UPDATE_BACKDATE: time::Duration = time::Duration::minutes(5);

/// Status of one certificate as the store knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    /// Issued by this issuer and not revoked.
    Good,
    /// Revoked.
    Revoked {
        /// When the revocation was processed.
        at: OffsetDateTime,
        /// Why.
        reason: RevocationReason,
    },
    /// Never issued by this issuer (as far as the store knows).
    Unknown,
}

/// An issuer this responder answers for, with its delegated responder.
pub struct ResponderIssuer {
    /// The daemon's issuer id (passed back to [`StatusLookup::status`]).
    pub issuer_id: String,
    /// The issuing CA certificate (DER).
    pub issuer_cert_der: Vec<u8>,
    /// The delegated responder certificate (DER): issued by the issuer, EKU id-kp-OCSPSigning.
    /// The issuer certificate itself is accepted too (the CA signs its own responses).
    pub responder_cert_der: Vec<u8>,
    /// The responder certificate's key.
    pub responder_key: rcgen::KeyPair,
}

impl fmt::Debug for ResponderIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponderIssuer")
            .field("issuer_id", &self.issuer_id)
            .field("issuer_cert_der", &self.issuer_cert_der.len())
            .field("responder_cert_der", &self.responder_cert_der.len())
            .finish_non_exhaustive()
    }
}

/// Where the responder gets certificate status from (the store).
pub trait StatusLookup: Send + Sync {
    /// Status of `serial_hex` (canonical form, see the module doc) under `issuer_id`.
    fn status(&self, issuer_id: &str, serial_hex: &str) -> CertStatus;
}

/// Which certificate of a [`ResponderIssuer`] an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertRole {
    /// The issuing CA certificate.
    Issuer,
    /// The delegated responder certificate.
    Responder,
}

impl fmt::Display for CertRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Issuer => "issuer",
            Self::Responder => "responder",
        })
    }
}

/// Errors of the OCSP responder's set-up and maintenance calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OcspError {
    /// A certificate of an issuer entry cannot be parsed.
    #[error("{role} certificate of issuer {issuer_id:?} cannot be parsed: {reason}")]
    Certificate {
        /// The issuer entry.
        issuer_id: String,
        /// Which certificate.
        role: CertRole,
        /// What the parser said.
        reason: String,
    },
    /// The responder key does not belong to the responder certificate.
    #[error("responder key of issuer {issuer_id:?} does not match its responder certificate")]
    KeyMismatch {
        /// The issuer entry.
        issuer_id: String,
    },
    /// The responder certificate's issuer name is not the issuer certificate's subject.
    #[error("responder certificate of issuer {issuer_id:?} was not issued by that issuer")]
    ResponderNotFromIssuer {
        /// The issuer entry.
        issuer_id: String,
    },
    /// The delegated responder certificate lacks the id-kp-OCSPSigning extended key usage.
    #[error("responder certificate of issuer {issuer_id:?} lacks id-kp-OCSPSigning")]
    NotOcspSigner {
        /// The issuer entry.
        issuer_id: String,
    },
    /// Two entries carry the same issuer id.
    #[error("issuer id {issuer_id:?} given twice")]
    DuplicateIssuer {
        /// The repeated id.
        issuer_id: String,
    },
    /// The responder key's algorithm is not supported.
    #[error("responder key of issuer {issuer_id:?} uses unsupported algorithm {algorithm}")]
    UnsupportedAlgorithm {
        /// The issuer entry.
        issuer_id: String,
        /// The algorithm, as rcgen names it.
        algorithm: String,
    },
    /// `validity` must be positive and longer than `resign_before`, which must not be negative.
    #[error("invalid timing: validity {validity} must be > resign_before {resign_before} >= 0")]
    InvalidTiming {
        /// Requested response validity.
        validity: time::Duration,
        /// Requested re-signing margin.
        resign_before: time::Duration,
    },
    /// The issuer id is not served by this responder.
    #[error("issuer {issuer_id:?} is not served by this OCSP responder")]
    UnknownIssuer {
        /// The id asked for.
        issuer_id: String,
    },
    /// A serial given to `presign` is not a positive hex number of at most 20 octets.
    #[error("invalid serial {serial:?}: {problem}")]
    InvalidSerial {
        /// The serial as given.
        serial: String,
        /// What is wrong with it.
        problem: SerialProblem,
    },
    /// Encoding or signing a response failed.
    #[error("signing an OCSP response for issuer {issuer_id:?} failed")]
    Signing {
        /// The issuer entry.
        issuer_id: String,
    },
    /// An RFC 5019 GET path is longer than [`MAX_GET_PATH_LEN`].
    #[error("OCSP GET path of {len} characters exceeds {max}")]
    GetPathTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An RFC 5019 GET path is not (percent-encoded) base64.
    #[error("OCSP GET path is not base64: {problem}")]
    InvalidGetPath {
        /// What is wrong.
        problem: &'static str,
    },
}

/// Decodes the last path segment of an RFC 5019 GET (`GET /ocsp/<this>`): percent-decoding,
/// then standard base64. Tolerates the URL-safe alphabet (`-`, `_`), missing padding, a
/// leading `/`, and a space where a `+` was turned into one by a form decoder.
pub fn decode_get_path(b64: &str) -> Result<Vec<u8>, OcspError> {
    let s = b64.strip_prefix('/').unwrap_or(b64);
    if s.len() > MAX_GET_PATH_LEN {
        return Err(OcspError::GetPathTooLong {
            len: s.len(),
            max: MAX_GET_PATH_LEN,
        });
    }
    let raw = s.as_bytes();
    let mut text = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = match raw[i] {
            b'%' => {
                let hi = raw.get(i + 1).and_then(|c| (*c as char).to_digit(16));
                let lo = raw.get(i + 2).and_then(|c| (*c as char).to_digit(16));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => {
                        i += 2;
                        (hi * 16 + lo) as u8
                    }
                    _ => {
                        return Err(OcspError::InvalidGetPath {
                            problem: "bad percent-encoding",
                        });
                    }
                }
            }
            c => c,
        };
        text.push(match c {
            b'-' => b'+',
            b'_' => b'/',
            b' ' => b'+',
            c => c,
        });
        i += 1;
    }
    const ENGINE: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let out = ENGINE
        .decode(&text)
        .map_err(|_| OcspError::InvalidGetPath {
            problem: "invalid base64",
        })?;
    if out.is_empty() {
        return Err(OcspError::InvalidGetPath { problem: "empty" });
    }
    Ok(out)
}

/// The CertID hash algorithms we match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum HashAlg {
    Sha1,
    Sha256,
}

impl HashAlg {
    fn of(alg: &AlgorithmIdentifierOwned) -> Option<Self> {
        if alg.oid == ID_SHA_1 {
            Some(Self::Sha1)
        } else if alg.oid == ID_SHA_256 {
            Some(Self::Sha256)
        } else {
            None
        }
    }
}

/// An issuer as served: hashes for CertID matching and the responder's signing material.
struct Served {
    issuer_id: Arc<str>,
    issuer_cert_der: Vec<u8>,
    responder_cert_der: Vec<u8>,
    name_sha1: [u8; 20],
    key_sha1: [u8; 20],
    name_sha256: [u8; 32],
    key_sha256: [u8; 32],
    responder_id: ResponderId,
    responder_cert: Certificate,
    signature_algorithm: AlgorithmIdentifierOwned,
    key: rcgen::KeyPair,
}

impl Served {
    fn new(i: ResponderIssuer) -> Result<Self, OcspError> {
        let id = &i.issuer_id;
        let cert_err = |role, reason: String| OcspError::Certificate {
            issuer_id: id.clone(),
            role,
            reason,
        };
        let (_, issuer) = X509Certificate::from_der(&i.issuer_cert_der)
            .map_err(|e| cert_err(CertRole::Issuer, e.to_string()))?;
        let (_, responder) = X509Certificate::from_der(&i.responder_cert_der)
            .map_err(|e| cert_err(CertRole::Responder, e.to_string()))?;
        let responder_spk = responder.public_key().subject_public_key.data.as_ref();
        if responder_spk != i.responder_key.public_key_raw() {
            return Err(OcspError::KeyMismatch {
                issuer_id: id.clone(),
            });
        }
        if i.responder_cert_der != i.issuer_cert_der {
            // Issued by this issuer: same name and a signature by its key (x509-parser's
            // `verify` feature, which rcgen's `ring` feature turns on).
            if responder.issuer().as_raw() != issuer.subject().as_raw()
                || responder
                    .verify_signature(Some(issuer.public_key()))
                    .is_err()
            {
                return Err(OcspError::ResponderNotFromIssuer {
                    issuer_id: id.clone(),
                });
            }
            let eku = responder
                .extended_key_usage()
                .map_err(|e| cert_err(CertRole::Responder, e.to_string()))?;
            if !eku.is_some_and(|e| e.value.ocsp_signing) {
                return Err(OcspError::NotOcspSigner {
                    issuer_id: id.clone(),
                });
            }
        }
        let alg_der = signature_algorithm_der(i.responder_key.algorithm()).ok_or_else(|| {
            OcspError::UnsupportedAlgorithm {
                issuer_id: id.clone(),
                algorithm: format!("{:?}", i.responder_key.algorithm()),
            }
        })?;
        let signature_algorithm =
            AlgorithmIdentifierOwned::from_der(alg_der).map_err(|_| OcspError::Signing {
                issuer_id: id.clone(),
            })?;
        let responder_cert = Certificate::from_der(&i.responder_cert_der)
            .map_err(|e| cert_err(CertRole::Responder, e.to_string()))?;
        // The certificate is embedded re-encoded: make sure that is the same bytes.
        if responder_cert.to_der().ok().as_deref() != Some(&i.responder_cert_der[..]) {
            return Err(cert_err(
                CertRole::Responder,
                "not in canonical DER (re-encoding differs)".to_owned(),
            ));
        }
        let name = issuer.subject().as_raw();
        let key = issuer.public_key().subject_public_key.data.as_ref();
        let responder_key_hash =
            OctetString::new(Sha1::digest(responder_spk).to_vec()).map_err(|_| {
                OcspError::Signing {
                    issuer_id: id.clone(),
                }
            })?;
        Ok(Self {
            name_sha1: Sha1::digest(name).into(),
            key_sha1: Sha1::digest(key).into(),
            name_sha256: Sha256::digest(name).into(),
            key_sha256: Sha256::digest(key).into(),
            responder_id: ResponderId::ByKey(responder_key_hash),
            responder_cert,
            signature_algorithm,
            issuer_id: Arc::from(i.issuer_id.as_str()),
            issuer_cert_der: i.issuer_cert_der,
            responder_cert_der: i.responder_cert_der,
            key: i.responder_key,
        })
    }

    fn matches(&self, alg: HashAlg, cert_id: &CertId) -> bool {
        let (name, key): (&[u8], &[u8]) = match alg {
            HashAlg::Sha1 => (&self.name_sha1, &self.key_sha1),
            HashAlg::Sha256 => (&self.name_sha256, &self.key_sha256),
        };
        cert_id.issuer_name_hash.as_bytes() == name && cert_id.issuer_key_hash.as_bytes() == key
    }

    fn same_as(&self, other: &Served) -> bool {
        self.issuer_id == other.issuer_id
            && self.issuer_cert_der == other.issuer_cert_der
            && self.responder_cert_der == other.responder_cert_der
    }

    /// The CertID a client computing `alg` hashes sends for `serial`.
    fn cert_id(&self, alg: HashAlg, serial: &[u8]) -> Result<CertId, der::Error> {
        let (oid, name, key): (_, &[u8], &[u8]) = match alg {
            HashAlg::Sha1 => (ID_SHA_1, &self.name_sha1, &self.key_sha1),
            HashAlg::Sha256 => (ID_SHA_256, &self.name_sha256, &self.key_sha256),
        };
        Ok(CertId {
            hash_algorithm: AlgorithmIdentifierOwned {
                oid,
                parameters: Some(der::Any::encode_from(&Null)?),
            },
            issuer_name_hash: OctetString::new(name)?,
            issuer_key_hash: OctetString::new(key)?,
            serial_number: SerialNumber::new(serial)?,
        })
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    issuer: Arc<str>,
    serial: Box<[u8]>,
    alg: HashAlg,
}

struct Cached {
    der: Arc<[u8]>,
    produced_at: OffsetDateTime,
    next_update: OffsetDateTime,
    status: CertStatus,
    generation: u64,
    /// Unix seconds of the last time it was served (or stored): eviction drops the least
    /// recently used of a sample first.
    last_used: AtomicI64,
}

/// Whether an AlgorithmIdentifier carries explicit NULL parameters (`05 00`).
fn has_null_params(alg: &AlgorithmIdentifierOwned) -> bool {
    alg.parameters
        .as_ref()
        .is_some_and(|p| p.tag() == der::Tag::Null && p.value().is_empty())
}

/// What [`OcspResponder::answer`] returns: the DER plus what an HTTP layer needs for
/// RFC 5019 §6 caching headers.
#[derive(Debug, Clone)]
pub struct OcspAnswer {
    /// The DER `OCSPResponse`.
    pub der: Arc<[u8]>,
    /// `producedAt` of a successful response.
    pub produced_at: Option<OffsetDateTime>,
    /// The earliest `nextUpdate` of a successful response.
    pub next_update: Option<OffsetDateTime>,
    /// Whether the answer came from the cache (no signature made).
    pub from_cache: bool,
    /// Whether the request carried a nonce (the response echoes it: never cache it).
    pub nonce: bool,
}

impl OcspAnswer {
    /// `tryLater` (RFC 6960 §4.2.1): what a source over its fresh-signature budget gets.
    pub fn try_later() -> Self {
        Self {
            der: Arc::from(&[0x30, 0x03, 0x0a, 0x01, 0x03][..]),
            produced_at: None,
            next_update: None,
            from_cache: false,
            nonce: false,
        }
    }
}

/// Why a request gets no successful answer.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Malformed,
    Unauthorized,
    Internal,
    /// Not a refusal: the answer needs a fresh signature, which the caller did not allow
    /// ([`OcspResponder::answer_cached`]).
    NeedsSigning,
}

impl Refusal {
    fn der(self) -> &'static [u8] {
        // OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED } with no responseBytes.
        match self {
            Self::Malformed => &[0x30, 0x03, 0x0a, 0x01, 0x01],
            Self::Internal => &[0x30, 0x03, 0x0a, 0x01, 0x02],
            Self::Unauthorized => &[0x30, 0x03, 0x0a, 0x01, 0x06],
            Self::NeedsSigning => &[0x30, 0x03, 0x0a, 0x01, 0x03],
        }
    }
}

/// The OCSP responder: the served issuers and the cache of pre-signed responses.
pub struct OcspResponder {
    issuers: RwLock<Arc<Vec<Arc<Served>>>>,
    validity: time::Duration,
    resign_before: time::Duration,
    shards: Box<[RwLock<HashMap<CacheKey, Cached>>]>,
    hasher: RandomState,
    /// Orders cached answers: bumped by presign, invalidate and set_issuers; an entry carries
    /// the value read before its status was.
    generation: AtomicU64,
    /// Bumped by invalidate and set_issuers: an answer whose status was read before is not
    /// cached.
    invalidations: AtomicU64,
    unknown_cached: AtomicUsize,
    signatures: AtomicU64,
    /// Most entries per shard (the total bound divided by the shard count).
    per_shard: usize,
}

/// Default bound of the cache (entries), when [`OcspResponder::with_capacity`] is not used.
pub const DEFAULT_CACHE_ENTRIES: usize = 25_000;

/// Entries looked at to pick the least recently used one to evict (sampled LRU, as Redis does:
/// no list to maintain on the hot path).
const EVICTION_SAMPLE: usize = 8;

impl fmt::Debug for OcspResponder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let issuers = self.issuers_snapshot();
        f.debug_struct("OcspResponder")
            .field(
                "issuers",
                &issuers.iter().map(|s| &*s.issuer_id).collect::<Vec<_>>(),
            )
            .field("validity", &self.validity)
            .field("resign_before", &self.resign_before)
            .field("cached", &self.cached_responses())
            .field("signatures", &self.signature_count())
            .finish()
    }
}

fn served_list(issuers: Vec<ResponderIssuer>) -> Result<Vec<Arc<Served>>, OcspError> {
    let mut out: Vec<Arc<Served>> = Vec::with_capacity(issuers.len());
    for i in issuers {
        if out.iter().any(|s| *s.issuer_id == *i.issuer_id) {
            return Err(OcspError::DuplicateIssuer {
                issuer_id: i.issuer_id,
            });
        }
        out.push(Arc::new(Served::new(i)?));
    }
    Ok(out)
}

fn generalized(t: OffsetDateTime) -> Option<OcspGeneralizedTime> {
    let secs = u64::try_from(t.unix_timestamp()).ok()?;
    GeneralizedTime::from_unix_duration(std::time::Duration::from_secs(secs))
        .ok()
        .map(OcspGeneralizedTime)
}

fn crl_reason(r: RevocationReason) -> Option<CrlReason> {
    match r {
        RevocationReason::Unspecified => None,
        RevocationReason::KeyCompromise => Some(CrlReason::KeyCompromise),
        RevocationReason::AffiliationChanged => Some(CrlReason::AffiliationChanged),
        RevocationReason::Superseded => Some(CrlReason::Superseded),
        RevocationReason::CessationOfOperation => Some(CrlReason::CessationOfOperation),
        RevocationReason::CertificateHold => Some(CrlReason::CertificateHold),
        RevocationReason::PrivilegeWithdrawn => Some(CrlReason::PrivilegeWithdrawn),
    }
}

impl OcspResponder {
    /// A responder for `issuers`, whose responses are valid for `validity` and re-signed when
    /// their nextUpdate is closer than `resign_before`.
    pub fn new(
        issuers: Vec<ResponderIssuer>,
        validity: time::Duration,
        resign_before: time::Duration,
    ) -> Result<Self, OcspError> {
        if !validity.is_positive() || resign_before.is_negative() || resign_before >= validity {
            return Err(OcspError::InvalidTiming {
                validity,
                resign_before,
            });
        }
        let served = served_list(issuers)?;
        Ok(Self {
            issuers: RwLock::new(Arc::new(served)),
            validity,
            resign_before,
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            generation: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            unknown_cached: AtomicUsize::new(0),
            signatures: AtomicU64::new(0),
            per_shard: DEFAULT_CACHE_ENTRIES.div_ceil(SHARDS),
        })
    }

    /// Bounds the cache to about `entries` responses (policy `[ocsp] cache_entries`): when a
    /// shard is full, the least recently served of a sample of its entries is dropped, and
    /// signed again when next asked for. Hot certificates stay cached.
    #[must_use]
    pub fn with_capacity(mut self, entries: usize) -> Self {
        self.per_shard = entries.div_ceil(SHARDS).max(1);
        self
    }

    /// Number of OCSP signatures made so far (cache misses, nonces, presign, refresh).
    pub fn signature_count(&self) -> u64 {
        self.signatures.load(Ordering::Relaxed)
    }

    /// Number of cached responses.
    pub fn cached_responses(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Ids of the issuers served.
    pub fn issuer_ids(&self) -> Vec<String> {
        self.issuers_snapshot()
            .iter()
            .map(|s| s.issuer_id.to_string())
            .collect()
    }

    fn issuers_snapshot(&self) -> Arc<Vec<Arc<Served>>> {
        self.issuers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn shard(&self, key: &CacheKey) -> &RwLock<HashMap<CacheKey, Cached>> {
        let h = self.hasher.hash_one(key);
        &self.shards[(h as usize) % self.shards.len()]
    }

    /// Answers `request_der` (an `OCSPRequest`) at `now`. Always a DER `OCSPResponse`.
    pub fn respond(
        &self,
        request_der: &[u8],
        now: OffsetDateTime,
        lookup: &dyn StatusLookup,
    ) -> Vec<u8> {
        self.answer(request_der, now, lookup).der.to_vec()
    }

    /// Like [`respond`](Self::respond), with the response times and whether it was cached,
    /// and the DER shared with the cache instead of copied.
    pub fn answer(
        &self,
        request_der: &[u8],
        now: OffsetDateTime,
        lookup: &dyn StatusLookup,
    ) -> OcspAnswer {
        match self.try_answer(request_der, now, Some(lookup)) {
            Ok(a) => a,
            Err(r) => refusal_answer(r),
        }
    }

    /// The answer if it costs no signature and no status lookup (a refusal, or a cache hit);
    /// `None` if it needs [`answer`](Self::answer), which signs. Lets the caller keep the
    /// cheap case on the async reactor and move signing to a bounded pool.
    pub fn answer_cached(&self, request_der: &[u8], now: OffsetDateTime) -> Option<OcspAnswer> {
        match self.try_answer(request_der, now, None) {
            Ok(a) => Some(a),
            Err(Refusal::NeedsSigning) => None,
            Err(r) => Some(refusal_answer(r)),
        }
    }

    /// `lookup: None` answers only what needs neither a lookup nor a signature, and returns
    /// `Refusal::NeedsSigning` for the rest.
    fn try_answer(
        &self,
        request_der: &[u8],
        now: OffsetDateTime,
        lookup: Option<&dyn StatusLookup>,
    ) -> Result<OcspAnswer, Refusal> {
        if request_der.len() > MAX_REQUEST_LEN {
            return Err(Refusal::Malformed);
        }
        let req = OcspRequest::from_der(request_der).map_err(|_| Refusal::Malformed)?;
        let list = &req.tbs_request.request_list;
        if list.is_empty() || list.len() > MAX_CERTS_PER_REQUEST {
            return Err(Refusal::Malformed);
        }
        let nonce = nonce_extension(&req)?;
        // Read the counters before the issuers and the status: a concurrent invalidation or
        // issuer change then keeps this answer out of the cache.
        let generation = self.generation.load(Ordering::SeqCst);
        let invalidations = self.invalidations.load(Ordering::SeqCst);
        let issuers = self.issuers_snapshot();
        let mut served: Option<&Arc<Served>> = None;
        let mut algs = Vec::with_capacity(list.len());
        for r in list {
            let alg = HashAlg::of(&r.req_cert.hash_algorithm).ok_or(Refusal::Unauthorized)?;
            let s = issuers
                .iter()
                .find(|s| s.matches(alg, &r.req_cert))
                .ok_or(Refusal::Unauthorized)?;
            if served.is_some_and(|prev| !Arc::ptr_eq(prev, s)) {
                return Err(Refusal::Unauthorized);
            }
            served = Some(s);
            algs.push(alg);
        }
        let served = served.ok_or(Refusal::Malformed)?;

        // Only the canonical CertID (hash algorithm parameters NULL, as OpenSSL, Go and Java
        // send and as `presign` writes) is cached: a cached answer echoes the CertID it was
        // built for, so any other form is signed fresh rather than poisoning the cache.
        if nonce.is_none()
            && let [r] = &list[..]
            && has_null_params(&r.req_cert.hash_algorithm)
            && let Some(serial_hex) = canonical_hex_of_integer(r.req_cert.serial_number.as_bytes())
        {
            let key = CacheKey {
                issuer: served.issuer_id.clone(),
                serial: strip_zeros(r.req_cert.serial_number.as_bytes()).into(),
                alg: algs[0],
            };
            if let Some(hit) = self.cached(&key, now) {
                return Ok(hit);
            }
            let lookup = lookup.ok_or(Refusal::NeedsSigning)?;
            let status = lookup.status(&served.issuer_id, &serial_hex);
            let single = self
                .single(r.req_cert.clone(), status, now)
                .ok_or(Refusal::Internal)?;
            let der: Arc<[u8]> = self
                .sign(served, vec![single], None, now)
                .ok_or(Refusal::Internal)?
                .into();
            let entry = Cached {
                der: der.clone(),
                produced_at: now,
                next_update: now + self.validity,
                status,
                generation,
                last_used: AtomicI64::new(now.unix_timestamp()),
            };
            self.insert(key, entry, |old| {
                self.invalidations.load(Ordering::SeqCst) == invalidations
                    && old.is_none_or(|o| o.generation <= generation)
            });
            return Ok(OcspAnswer {
                der,
                produced_at: Some(now),
                next_update: Some(now + self.validity),
                from_cache: false,
                nonce: false,
            });
        }

        let lookup = lookup.ok_or(Refusal::NeedsSigning)?;
        let has_nonce = nonce.is_some();
        let mut singles = Vec::with_capacity(list.len());
        for r in list {
            let status = match canonical_hex_of_integer(r.req_cert.serial_number.as_bytes()) {
                Some(hex) => lookup.status(&served.issuer_id, &hex),
                // Zero or negative: we never issue such a serial.
                None => CertStatus::Unknown,
            };
            singles.push(
                self.single(r.req_cert.clone(), status, now)
                    .ok_or(Refusal::Internal)?,
            );
        }
        let der = self
            .sign(served, singles, nonce, now)
            .ok_or(Refusal::Internal)?;
        Ok(OcspAnswer {
            der: der.into(),
            produced_at: Some(now),
            next_update: Some(now + self.validity),
            from_cache: false,
            nonce: has_nonce,
        })
    }

    fn cached(&self, key: &CacheKey, now: OffsetDateTime) -> Option<OcspAnswer> {
        let shard = self
            .shard(key)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let c = shard.get(key)?;
        let secs = now.unix_timestamp();
        if c.last_used.load(Ordering::Relaxed) < secs {
            c.last_used.store(secs, Ordering::Relaxed);
        }
        (now + self.resign_before < c.next_update).then(|| OcspAnswer {
            der: c.der.clone(),
            produced_at: Some(c.produced_at),
            next_update: Some(c.next_update),
            from_cache: true,
            nonce: false,
        })
    }

    /// Inserts `entry` if `admit(current entry)` holds, evaluated under the shard's write
    /// lock (so an invalidation either happens before and is seen, or waits and removes the
    /// new entry); keeps the count of cached `unknown` answers bounded. Returns whether the
    /// entry was inserted.
    fn insert(
        &self,
        key: CacheKey,
        entry: Cached,
        admit: impl FnOnce(Option<&Cached>) -> bool,
    ) -> bool {
        let mut shard = self
            .shard(&key)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let old = shard.get(&key);
        if !admit(old) {
            return false;
        }
        let old_unknown = old.is_some_and(|o| o.status == CertStatus::Unknown);
        if entry.status == CertStatus::Unknown && !old_unknown {
            let n = self.unknown_cached.fetch_add(1, Ordering::Relaxed);
            if n >= MAX_CACHED_UNKNOWN {
                self.unknown_cached.fetch_sub(1, Ordering::Relaxed);
                return false;
            }
        }
        if old_unknown && entry.status != CertStatus::Unknown {
            self.unknown_cached.fetch_sub(1, Ordering::Relaxed);
        }
        if old.is_none() && shard.len() >= self.per_shard {
            Self::evict_one(&mut shard, &self.unknown_cached);
        }
        shard.insert(key, entry);
        true
    }

    /// Drops the least recently used of a few entries of a full shard.
    fn evict_one(shard: &mut HashMap<CacheKey, Cached>, unknown_cached: &AtomicUsize) {
        let victim = shard
            .iter()
            .take(EVICTION_SAMPLE)
            .min_by_key(|(_, c)| c.last_used.load(Ordering::Relaxed))
            .map(|(k, _)| k.clone());
        if let Some(old) = victim.and_then(|k| shard.remove(&k))
            && old.status == CertStatus::Unknown
        {
            unknown_cached.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn remove_where(&self, key: &CacheKey, pred: impl FnOnce(&Cached) -> bool) -> bool {
        let mut shard = self
            .shard(key)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !shard.get(key).is_some_and(pred) {
            return false;
        }
        if let Some(old) = shard.remove(key)
            && old.status == CertStatus::Unknown
        {
            self.unknown_cached.fetch_sub(1, Ordering::Relaxed);
        }
        true
    }

    fn single(
        &self,
        cert_id: CertId,
        status: CertStatus,
        now: OffsetDateTime,
    ) -> Option<SingleResponse> {
        let mut this_update = now - THIS_UPDATE_BACKDATE;
        let cert_status = match status {
            CertStatus::Good => x509_ocsp::CertStatus::good(),
            CertStatus::Unknown => x509_ocsp::CertStatus::unknown(),
            CertStatus::Revoked { at, reason } => {
                // Not "known revoked" at a time before the revocation.
                this_update = this_update.max(at.min(now));
                x509_ocsp::CertStatus::Revoked(RevokedInfo {
                    revocation_time: generalized(at)?,
                    revocation_reason: crl_reason(reason),
                })
            }
        };
        Some(SingleResponse {
            cert_id,
            cert_status,
            this_update: generalized(this_update)?,
            next_update: Some(generalized(now + self.validity)?),
            single_extensions: None,
        })
    }

    /// Signs a `BasicOCSPResponse` and wraps it in a successful `OCSPResponse` (DER).
    fn sign(
        &self,
        served: &Served,
        responses: Vec<SingleResponse>,
        nonce: Option<Extension>,
        now: OffsetDateTime,
    ) -> Option<Vec<u8>> {
        let result = (|| {
            let tbs = ResponseData {
                version: Version::V1,
                responder_id: served.responder_id.clone(),
                produced_at: generalized(now)?,
                responses,
                response_extensions: nonce.map(|n| vec![n]),
            };
            let tbs_der = tbs.to_der().ok()?;
            let signature = served.key.sign(&tbs_der).ok()?;
            self.signatures.fetch_add(1, Ordering::Relaxed);
            let basic = BasicOcspResponse {
                tbs_response_data: tbs,
                signature_algorithm: served.signature_algorithm.clone(),
                signature: BitString::from_bytes(&signature).ok()?,
                certs: Some(vec![served.responder_cert.clone()]),
            };
            OcspResponse::successful(basic).ok()?.to_der().ok()
        })();
        if result.is_none() {
            tracing::warn!(target: "ocsp", issuer_id = %served.issuer_id, "OCSP response signing failed");
        }
        result
    }

    fn served(&self, issuer_id: &str) -> Option<Arc<Served>> {
        self.issuers_snapshot()
            .iter()
            .find(|s| &*s.issuer_id == issuer_id)
            .cloned()
    }

    /// The status of a certificate changed: drops its cached responses, so the next request
    /// asks the [`StatusLookup`] again. Unknown issuers and invalid serials are ignored.
    pub fn invalidate(&self, issuer_id: &str, serial_hex: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        let Ok(serial) = serial_magnitude(serial_hex) else {
            tracing::debug!(target: "ocsp", issuer_id, serial_hex, "invalidate: not a serial");
            return;
        };
        let issuer: Arc<str> = Arc::from(issuer_id);
        for alg in [HashAlg::Sha1, HashAlg::Sha256] {
            let key = CacheKey {
                issuer: issuer.clone(),
                serial: serial.as_slice().into(),
                alg,
            };
            self.remove_where(&key, |_| true);
        }
    }

    /// Drops every cached response (another node changed statuses while this one could not
    /// hear about it: a reconnect to the shared store, or a bulk revocation), so each next
    /// request asks the [`StatusLookup`] again.
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        for shard in &self.shards {
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            let unknown = shard
                .values()
                .filter(|c| c.status == CertStatus::Unknown)
                .count();
            shard.clear();
            self.unknown_cached.fetch_sub(unknown, Ordering::Relaxed);
        }
    }

    /// Signs and caches the response for `serial_hex` with `status` (SHA-1 CertID, the
    /// RFC 5019 form), replacing any cached one; drops a cached SHA-256 variant. Called after
    /// issuance (`Good`) and revocation (`Revoked`).
    pub fn presign(
        &self,
        issuer_id: &str,
        serial_hex: &str,
        status: CertStatus,
        now: OffsetDateTime,
    ) -> Result<(), OcspError> {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let invalidations = self.invalidations.load(Ordering::SeqCst);
        let serial = serial_magnitude(serial_hex).map_err(|problem| OcspError::InvalidSerial {
            serial: serial_hex.to_owned(),
            problem,
        })?;
        let served = self
            .served(issuer_id)
            .ok_or_else(|| OcspError::UnknownIssuer {
                issuer_id: issuer_id.to_owned(),
            })?;
        let signing = || OcspError::Signing {
            issuer_id: issuer_id.to_owned(),
        };
        let cert_id = served
            .cert_id(HashAlg::Sha1, serial.as_slice())
            .map_err(|_| signing())?;
        let single = self.single(cert_id, status, now).ok_or_else(signing)?;
        let der = self
            .sign(&served, vec![single], None, now)
            .ok_or_else(signing)?;
        let sha256 = CacheKey {
            issuer: served.issuer_id.clone(),
            serial: serial.as_slice().into(),
            alg: HashAlg::Sha256,
        };
        self.remove_where(&sha256, |old| old.generation < generation);
        let key = CacheKey {
            alg: HashAlg::Sha1,
            ..sha256
        };
        let entry = Cached {
            der: der.into(),
            produced_at: now,
            next_update: now + self.validity,
            status,
            generation,
            last_used: AtomicI64::new(now.unix_timestamp()),
        };
        self.insert(key, entry, |old| {
            self.invalidations.load(Ordering::SeqCst) == invalidations
                && old.is_none_or(|o| o.generation < generation)
        });
        Ok(())
    }

    /// Re-signs cached responses whose nextUpdate is closer than `resign_before` (asking
    /// `lookup` for the current status); drops due `unknown` answers and answers of issuers no
    /// longer served. Returns the number of responses re-signed.
    pub fn refresh_due(&self, now: OffsetDateTime, lookup: &dyn StatusLookup) -> usize {
        let due: Vec<(CacheKey, u64, CertStatus, i64)> = self
            .shards
            .iter()
            .flat_map(|shard| {
                let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
                shard
                    .iter()
                    .filter(|(_, c)| now + self.resign_before >= c.next_update)
                    .map(|(k, c)| {
                        let used = c.last_used.load(Ordering::Relaxed);
                        (k.clone(), c.generation, c.status, used)
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut resigned = 0;
        for (key, old_generation, old_status, last_used) in due {
            let served = self.served(&key.issuer);
            let Some(served) = served.filter(|_| old_status != CertStatus::Unknown) else {
                self.remove_where(&key, |c| c.generation == old_generation);
                continue;
            };
            let generation = self.generation.load(Ordering::SeqCst);
            let status = lookup.status(&served.issuer_id, &hex::encode(&key.serial));
            let Some(der) = served
                .cert_id(key.alg, &key.serial)
                .ok()
                .and_then(|id| self.single(id, status, now))
                .and_then(|single| self.sign(&served, vec![single], None, now))
            else {
                continue;
            };
            let entry = Cached {
                der: der.into(),
                produced_at: now,
                next_update: now + self.validity,
                status,
                generation: generation.max(old_generation),
                // Re-signing is not a use: a cold entry stays first in line for eviction.
                last_used: AtomicI64::new(last_used),
            };
            // Only over the very entry read above: not if it was invalidated or replaced since.
            if self.insert(key, entry, |old| {
                old.is_some_and(|o| o.generation == old_generation)
            }) {
                resigned += 1;
            }
        }
        if resigned > 0 {
            tracing::debug!(target: "ocsp", resigned, "OCSP responses re-signed");
        }
        resigned
    }

    /// Replaces the served issuers (issuer rotation, responder renewal). Cached responses of
    /// issuers whose id, issuer certificate and responder certificate are unchanged are kept;
    /// the others are dropped.
    pub fn set_issuers(&self, issuers: Vec<ResponderIssuer>) -> Result<(), OcspError> {
        let new = served_list(issuers)?;
        let old = self.issuers_snapshot();
        let kept: Vec<Arc<str>> = new
            .iter()
            .filter(|n| old.iter().any(|o| o.same_as(n)))
            .map(|n| n.issuer_id.clone())
            .collect();
        *self.issuers.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(new);
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        for shard in self.shards.iter() {
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            shard.retain(|k, c| {
                let keep = kept.contains(&k.issuer);
                if !keep && c.status == CertStatus::Unknown {
                    self.unknown_cached.fetch_sub(1, Ordering::Relaxed);
                }
                keep
            });
        }
        Ok(())
    }
}

fn refusal_answer(r: Refusal) -> OcspAnswer {
    tracing::debug!(target: "ocsp", refusal = ?r, "OCSP request refused");
    OcspAnswer {
        der: Arc::from(r.der()),
        produced_at: None,
        next_update: None,
        from_cache: false,
        nonce: false,
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

/// The request's nonce extension, to be echoed as is; refuses nonces RFC 8954 says to refuse.
fn nonce_extension(req: &OcspRequest) -> Result<Option<Extension>, Refusal> {
    let Some(ext) = req
        .tbs_request
        .request_extensions
        .as_ref()
        .and_then(|exts| exts.iter().find(|e| e.extn_id == ID_PKIX_OCSP_NONCE))
    else {
        return Ok(None);
    };
    let value = ext.extn_value.as_bytes();
    // RFC 8954: Nonce ::= OCTET STRING (SIZE(1..32)); some old clients put the raw bytes.
    let len = OctetString::from_der(value).map_or(value.len(), |o| o.as_bytes().len());
    if len == 0 || len > 128 {
        return Err(Refusal::Malformed);
    }
    Ok(Some(Extension {
        extn_id: ID_PKIX_OCSP_NONCE,
        critical: false,
        extn_value: ext.extn_value.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    use std::sync::Mutex;
    use time::macros::datetime;
    use x509_ocsp::{OcspResponseStatus, Request, TbsRequest};

    struct Pki {
        issuer_der: Vec<u8>,
        issuer: Issuer<'static, KeyPair>,
        responder_der: Vec<u8>,
        responder_key_pkcs8: Vec<u8>,
    }

    fn pki(cn: &str) -> Pki {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CountryName, "JP");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&[7]));
        p.not_before = datetime!(2025-01-01 0:00 UTC);
        p.not_after = datetime!(2035-01-01 0:00 UTC);
        let issuer_der = p.self_signed(&key).expect("ca").der().to_vec();
        let issuer = Issuer::new(p, key);
        let rkey = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
        let mut rp = CertificateParams::default();
        rp.distinguished_name
            .push(DnType::CommonName, format!("{cn} OCSP"));
        rp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        rp.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
        rp.serial_number = Some(rcgen::SerialNumber::from_slice(&[8]));
        rp.not_before = datetime!(2025-01-01 0:00 UTC);
        rp.not_after = datetime!(2035-01-01 0:00 UTC);
        let responder_der = rp
            .signed_by(&rkey, &issuer)
            .expect("responder")
            .der()
            .to_vec();
        Pki {
            issuer_der,
            issuer,
            responder_der,
            responder_key_pkcs8: rkey.serialize_der(),
        }
    }

    impl Pki {
        fn served(&self, id: &str) -> ResponderIssuer {
            ResponderIssuer {
                issuer_id: id.to_owned(),
                issuer_cert_der: self.issuer_der.clone(),
                responder_cert_der: self.responder_der.clone(),
                responder_key: KeyPair::try_from(&self.responder_key_pkcs8[..]).expect("key"),
            }
        }
    }

    fn responder(p: &Pki) -> OcspResponder {
        OcspResponder::new(
            vec![p.served("iss-1")],
            time::Duration::hours(24),
            time::Duration::hours(8),
        )
        .expect("responder")
    }

    /// Status table with a call counter.
    #[derive(Default)]
    struct Table {
        map: Mutex<HashMap<String, CertStatus>>,
        calls: AtomicUsize,
    }

    impl Table {
        fn set(&self, serial: &str, s: CertStatus) {
            self.map
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(serial.to_owned(), s);
        }
    }

    impl StatusLookup for Table {
        fn status(&self, issuer_id: &str, serial_hex: &str) -> CertStatus {
            assert_eq!(issuer_id, "iss-1");
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.map
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(serial_hex)
                .copied()
                .unwrap_or(CertStatus::Unknown)
        }
    }

    fn cert_id(p: &Pki, alg: HashAlg, serial_hex: &str) -> CertId {
        let served = Served::new(p.served("x")).expect("served");
        served
            .cert_id(
                alg,
                serial_magnitude(serial_hex).expect("serial").as_slice(),
            )
            .expect("cert id")
    }

    fn request(ids: Vec<CertId>, nonce: Option<&[u8]>) -> Vec<u8> {
        let request_extensions = nonce.map(|n| {
            vec![Extension {
                extn_id: ID_PKIX_OCSP_NONCE,
                critical: false,
                extn_value: OctetString::new(
                    OctetString::new(n).expect("n").to_der().expect("der"),
                )
                .expect("ext"),
            }]
        });
        OcspRequest {
            tbs_request: TbsRequest {
                version: Version::V1,
                requestor_name: None,
                request_list: ids
                    .into_iter()
                    .map(|req_cert| Request {
                        req_cert,
                        single_request_extensions: None,
                    })
                    .collect(),
                request_extensions,
            },
            optional_signature: None,
        }
        .to_der()
        .expect("request der")
    }

    fn basic(der: &[u8]) -> BasicOcspResponse {
        let r = OcspResponse::from_der(der).expect("OCSPResponse");
        assert_eq!(r.response_status, OcspResponseStatus::Successful);
        BasicOcspResponse::from_der(r.response_bytes.expect("bytes").response.as_bytes())
            .expect("basic")
    }

    fn status_of(der: &[u8]) -> OcspResponseStatus {
        OcspResponse::from_der(der)
            .expect("OCSPResponse")
            .response_status
    }

    const S1: &str = "5a1b2c3d4e5f60718293a4b5c6d7e8f9";
    const S2: &str = "7f00000000000000000000000000abcd";
    const NOW: OffsetDateTime = datetime!(2026-04-01 10:00 UTC);

    #[test]
    fn cached_request_costs_a_lookup_not_a_signature() {
        let p = pki("Issuer A");
        let r = responder(&p);
        let table = Table::default();
        table.set(S1, CertStatus::Good);
        r.presign("iss-1", S1, CertStatus::Good, NOW)
            .expect("presign");
        assert_eq!(r.signature_count(), 1);
        let req = request(vec![cert_id(&p, HashAlg::Sha1, S1)], None);
        let a = r.respond(&req, NOW + time::Duration::minutes(1), &table);
        let b = r.respond(&req, NOW + time::Duration::hours(2), &table);
        assert_eq!(a, b, "cached response is byte-identical");
        assert_eq!(r.signature_count(), 1, "no signature for cached requests");
        assert_eq!(table.calls.load(Ordering::SeqCst), 0, "no lookup either");
        assert!(matches!(
            basic(&a).tbs_response_data.responses[0].cert_status,
            x509_ocsp::CertStatus::Good(_)
        ));

        // Revocation: invalidate, then the next request asks the store and signs once.
        table.set(
            S1,
            CertStatus::Revoked {
                at: NOW,
                reason: RevocationReason::KeyCompromise,
            },
        );
        r.invalidate("iss-1", &S1.to_uppercase());
        let c = r.respond(&req, NOW + time::Duration::hours(3), &table);
        assert_eq!(r.signature_count(), 2);
        let d = r.respond(&req, NOW + time::Duration::hours(3), &table);
        assert_eq!(c, d);
        assert_eq!(r.signature_count(), 2);
        match basic(&c).tbs_response_data.responses[0].cert_status {
            x509_ocsp::CertStatus::Revoked(info) => {
                assert_eq!(info.revocation_reason, Some(CrlReason::KeyCompromise));
            }
            other => panic!("expected revoked, got {other:?}"),
        }
    }

    #[test]
    fn cache_is_bounded_keeps_hot_entries_and_re_signs_evicted_ones() {
        let p = pki("Issuer A");
        // 1 entry per shard at most: the bound is what with_capacity says, not one per serial.
        let r = responder(&p).with_capacity(1);
        let table = Table::default();
        let serials: Vec<String> = (1..=200u32).map(|i| format!("5a{i:06x}")).collect();
        for s in &serials {
            table.set(s, CertStatus::Good);
            r.presign("iss-1", s, CertStatus::Good, NOW)
                .expect("presign");
        }
        assert!(r.cached_responses() <= SHARDS, "{}", r.cached_responses());
        // An evicted serial is signed again on demand and answered correctly.
        let cold = request(vec![cert_id(&p, HashAlg::Sha1, &serials[0])], None);
        let a = r.answer(&cold, NOW + time::Duration::minutes(1), &table);
        assert!(matches!(
            basic(&a.der).tbs_response_data.responses[0].cert_status,
            x509_ocsp::CertStatus::Good(_)
        ));

        // With room for a few per shard, a hot entry survives a stream of cold ones.
        let r = responder(&p).with_capacity(SHARDS * 4);
        let hot = request(vec![cert_id(&p, HashAlg::Sha1, &serials[0])], None);
        r.presign("iss-1", &serials[0], CertStatus::Good, NOW)
            .expect("presign");
        for (i, s) in serials.iter().enumerate().skip(1) {
            let t = NOW + time::Duration::seconds(i as i64 + 1);
            assert!(
                r.answer(&hot, t, &table).from_cache,
                "hot entry evicted at {i}"
            );
            r.presign("iss-1", s, CertStatus::Good, t).expect("presign");
        }
        assert!(r.cached_responses() <= SHARDS * 4);
    }

    #[test]
    fn miss_signs_once_then_hits_and_sha256_is_a_separate_entry() {
        let p = pki("Issuer A");
        let r = responder(&p);
        let table = Table::default();
        table.set(S2, CertStatus::Good);
        for alg in [HashAlg::Sha256, HashAlg::Sha1] {
            let req = request(vec![cert_id(&p, alg, S2)], None);
            let before = r.signature_count();
            let a = r.answer(&req, NOW, &table);
            assert!(!a.from_cache);
            let b = r.answer(&req, NOW, &table);
            assert!(b.from_cache);
            assert_eq!(a.der, b.der);
            assert_eq!(r.signature_count(), before + 1);
            let resp = basic(&a.der);
            assert_eq!(
                resp.tbs_response_data.responses[0].cert_id,
                cert_id(&p, alg, S2),
                "CertID echoed with the request's hash"
            );
        }
        assert_eq!(r.cached_responses(), 2);
    }

    #[test]
    fn response_shape_and_signature() {
        let p = pki("Issuer A");
        let r = responder(&p);
        let table = Table::default();
        table.set(S1, CertStatus::Good);
        let req = request(vec![cert_id(&p, HashAlg::Sha1, S1)], None);
        let resp = basic(&r.respond(&req, NOW, &table));
        let tbs = &resp.tbs_response_data;
        let rkey = KeyPair::try_from(&p.responder_key_pkcs8[..]).expect("key");
        assert_eq!(
            tbs.responder_id,
            ResponderId::ByKey(
                OctetString::new(Sha1::digest(rkey.public_key_raw()).to_vec()).expect("hash")
            )
        );
        assert_eq!(tbs.produced_at, generalized(NOW).expect("time"));
        let single = &tbs.responses[0];
        // thisUpdate is backdated; producedAt is the time of signing.
        assert_eq!(
            single.this_update,
            generalized(NOW - THIS_UPDATE_BACKDATE).expect("time")
        );
        assert_eq!(
            single.next_update,
            generalized(NOW + time::Duration::hours(24))
        );
        assert_eq!(
            resp.certs.as_ref().map(|c| c[0].to_der().expect("der")),
            Some(p.responder_der.clone())
        );
        assert_eq!(
            resp.signature_algorithm.oid,
            const_oid::db::rfc5912::ECDSA_WITH_SHA_256
        );
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            rkey.public_key_raw(),
        )
        .verify(&tbs.to_der().expect("tbs"), resp.signature.raw_bytes())
        .expect("signature verifies");
    }

    #[test]
    fn answer_cached_never_signs_nor_looks_up() {
        let p = pki("Issuer A");
        let r = responder(&p);
        let table = Table::default();
        table.set(S1, CertStatus::Good);
        let plain = request(vec![cert_id(&p, HashAlg::Sha1, S1)], None);
        let nonce = request(vec![cert_id(&p, HashAlg::Sha1, S1)], Some(&[7u8; 16]));
        // A miss and a nonce need a signature: not answered here.
        assert!(r.answer_cached(&plain, NOW).is_none());
        assert!(r.answer_cached(&nonce, NOW).is_none());
        // A refusal costs nothing and is answered.
        let bad = r.answer_cached(b"junk", NOW).expect("refusal answered");
        assert_eq!(status_of(&bad.der), OcspResponseStatus::MalformedRequest);
        assert_eq!(r.signature_count(), 0);
        assert_eq!(table.calls.load(Ordering::SeqCst), 0, "no status lookup");
        // Once signed (and cached), the cheap path answers it.
        let signed = r.answer(&plain, NOW, &table);
        let hit = r.answer_cached(&plain, NOW).expect("cache hit");
        assert!(hit.from_cache && !hit.nonce);
        assert_eq!(hit.der, signed.der);
        // A nonce answer says so (the HTTP layer must not let it be cached).
        assert!(r.answer(&nonce, NOW, &table).nonce);
        assert_eq!(
            status_of(&OcspAnswer::try_later().der),
            OcspResponseStatus::TryLater
        );
    }

    #[test]
    fn this_update_is_backdated_but_never_before_the_revocation() {
        let p = pki("Issuer A");
        let r = responder(&p);
        let table = Table::default();
        let revoked_at = NOW - time::Duration::minutes(1);
        table.set(
            S1,
            CertStatus::Revoked {
                at: revoked_at,
                reason: RevocationReason::KeyCompromise,
            },
        );
        table.set(S2, CertStatus::Good);
        let this_update = |serial| {
            let req = request(vec![cert_id(&p, HashAlg::Sha1, serial)], None);
            basic(&r.respond(&req, NOW, &table))
                .tbs_response_data
                .responses[0]
                .this_update
        };
        assert_eq!(
            this_update(S2),
            generalized(NOW - THIS_UPDATE_BACKDATE).expect("t")
        );
        assert_eq!(this_update(S1), generalized(revoked_at).expect("t"));
    }

    #[test]
    fn nonce_is_echoed_and_signed_fresh() {
        let p = pki("Issuer A");
        let r = responder(&p);
        let table = Table::default();
        table.set(S1, CertStatus::Good);
        r.presign("iss-1", S1, CertStatus::Good, NOW)
            .expect("presign");
        let nonce = [0x42u8; 16];
        let req = request(vec![cert_id(&p, HashAlg::Sha1, S1)], Some(&nonce));
        let a = r.respond(&req, NOW, &table);
        let b = r.respond(&req, NOW, &table);
        assert_eq!(r.signature_count(), 3, "every nonce request is signed");
        for der in [&a, &b] {
            let got = basic(der).nonce().expect("nonce echoed");
            assert_eq!(got.0.as_bytes(), &nonce);
        }
        // RFC 8954: empty and > 128-octet nonces are refused.
        for bad in [&[][..], &[1u8; 129][..]] {
            let req = request(vec![cert_id(&p, HashAlg::Sha1, S1)], Some(bad));
            assert_eq!(
                status_of(&r.respond(&req, NOW, &table)),
                OcspResponseStatus::MalformedRequest
            );
        }
    }

    #[test]
    fn refusals() {
        let p = pki("Issuer A");
        let other = pki("Issuer B");
        let r = responder(&p);
        let table = Table::default();
        for garbage in [
            &b""[..],
            b"\x30",
            b"hello world",
            &[0x30, 0x03, 0x02, 0x01, 0x01],
        ] {
            assert_eq!(r.respond(garbage, NOW, &table), Refusal::Malformed.der());
        }
        assert_eq!(
            r.respond(&vec![0x30; MAX_REQUEST_LEN + 1], NOW, &table),
            Refusal::Malformed.der()
        );
        assert_eq!(
            r.respond(&request(vec![], None), NOW, &table),
            Refusal::Malformed.der()
        );
        let too_many = vec![cert_id(&p, HashAlg::Sha1, S1); MAX_CERTS_PER_REQUEST + 1];
        assert_eq!(
            r.respond(&request(too_many, None), NOW, &table),
            Refusal::Malformed.der()
        );
        // Another CA's certificate.
        let foreign = request(vec![cert_id(&other, HashAlg::Sha1, S1)], None);
        assert_eq!(
            r.respond(&foreign, NOW, &table),
            Refusal::Unauthorized.der()
        );
        assert_eq!(
            status_of(&r.respond(&foreign, NOW, &table)),
            OcspResponseStatus::Unauthorized
        );
        // A hash we do not match.
        let mut md5 = cert_id(&p, HashAlg::Sha1, S1);
        md5.hash_algorithm.oid = const_oid::db::rfc5912::ID_MD_5;
        assert_eq!(
            r.respond(&request(vec![md5], None), NOW, &table),
            Refusal::Unauthorized.der()
        );
        assert_eq!(r.signature_count(), 0);
        assert_eq!(
            status_of(Refusal::Internal.der()),
            OcspResponseStatus::InternalError
        );
    }

    #[test]
    fn several_certs_and_unknown() {
        let p = pki("Issuer A");
        let r = responder(&p);
        let table = Table::default();
        table.set(S1, CertStatus::Good);
        let ids = vec![
            cert_id(&p, HashAlg::Sha1, S1),
            cert_id(&p, HashAlg::Sha256, S2),
        ];
        let req = request(ids.clone(), None);
        let a = r.respond(&req, NOW, &table);
        let b = r.respond(&req, NOW, &table);
        assert_eq!(
            r.signature_count(),
            2,
            "multi-certificate requests are not cached"
        );
        assert_eq!(r.cached_responses(), 0);
        let resp = basic(&a);
        assert_eq!(resp.tbs_response_data.responses.len(), 2);
        assert_ne!(a, b);
        assert!(matches!(
            resp.tbs_response_data.responses[0].cert_status,
            x509_ocsp::CertStatus::Good(_)
        ));
        assert!(matches!(
            resp.tbs_response_data.responses[1].cert_status,
            x509_ocsp::CertStatus::Unknown(_)
        ));
    }

    #[test]
    fn stale_entries_are_resigned_and_refresh_due_works() {
        let p = pki("Issuer A");
        let r = responder(&p);
        let table = Table::default();
        table.set(S1, CertStatus::Good);
        r.presign("iss-1", S1, CertStatus::Good, NOW)
            .expect("presign");
        r.presign("iss-1", S2, CertStatus::Unknown, NOW)
            .expect("presign");
        assert_eq!(r.refresh_due(NOW + time::Duration::hours(15), &table), 0);
        assert_eq!(r.signature_count(), 2);
        // 16 h later nextUpdate (24 h) is within resign_before (8 h): S1 re-signed, S2 dropped.
        let later = NOW + time::Duration::hours(16);
        assert_eq!(r.refresh_due(later, &table), 1);
        assert_eq!(r.signature_count(), 3);
        assert_eq!(r.cached_responses(), 1);
        let req = request(vec![cert_id(&p, HashAlg::Sha1, S1)], None);
        let a = r.answer(&req, later, &table);
        assert!(a.from_cache);
        assert_eq!(a.produced_at, Some(later));
        // Without refresh, a request close to nextUpdate is signed afresh, never served stale.
        let much_later = later + time::Duration::hours(20);
        let b = r.answer(&req, much_later, &table);
        assert!(!b.from_cache);
        assert_eq!(b.next_update, Some(much_later + time::Duration::hours(24)));
        assert_eq!(r.signature_count(), 4);
    }

    /// A lookup during which the certificate's status changes (the revocation path calls
    /// `invalidate` while a request is between its lookup and its insert).
    struct RacingLookup<'a> {
        responder: &'a OcspResponder,
        calls: AtomicUsize,
    }

    impl StatusLookup for RacingLookup<'_> {
        fn status(&self, issuer_id: &str, serial_hex: &str) -> CertStatus {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.responder.invalidate(issuer_id, serial_hex);
            CertStatus::Good
        }
    }

    #[test]
    fn answers_read_before_an_invalidation_are_not_cached() {
        let p = pki("Issuer A");
        let r = responder(&p);
        let racing = RacingLookup {
            responder: &r,
            calls: AtomicUsize::new(0),
        };
        let req = request(vec![cert_id(&p, HashAlg::Sha1, S1)], None);
        let a = r.answer(&req, NOW, &racing);
        assert!(!a.from_cache);
        assert_eq!(
            r.cached_responses(),
            0,
            "stale answer kept out of the cache"
        );
        let b = r.answer(&req, NOW, &racing);
        assert!(!b.from_cache);
        assert_eq!(racing.calls.load(Ordering::SeqCst), 2);

        // refresh_due does not resurrect an entry invalidated during its lookup.
        r.presign("iss-1", S1, CertStatus::Good, NOW)
            .expect("presign");
        assert_eq!(r.cached_responses(), 1);
        assert_eq!(r.refresh_due(NOW + time::Duration::hours(20), &racing), 0);
        assert_eq!(r.cached_responses(), 0);

        // An older presign never overwrites a newer one.
        let revoked = CertStatus::Revoked {
            at: NOW,
            reason: RevocationReason::Superseded,
        };
        r.presign("iss-1", S2, revoked, NOW).expect("presign");
        let table = Table::default();
        let req = request(vec![cert_id(&p, HashAlg::Sha1, S2)], None);
        let der = r.respond(&req, NOW, &table);
        assert!(matches!(
            basic(&der).tbs_response_data.responses[0].cert_status,
            x509_ocsp::CertStatus::Revoked(_)
        ));
        assert_eq!(table.calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn set_issuers_keeps_unchanged_and_drops_changed() {
        let a = pki("Issuer A");
        let b = pki("Issuer B");
        let r = responder(&a);
        let table = Table::default();
        r.presign("iss-1", S1, CertStatus::Good, NOW)
            .expect("presign");
        assert!(matches!(
            r.presign("iss-2", S1, CertStatus::Good, NOW),
            Err(OcspError::UnknownIssuer { .. })
        ));
        r.set_issuers(vec![a.served("iss-1"), b.served("iss-2")])
            .expect("set");
        assert_eq!(r.cached_responses(), 1, "unchanged issuer keeps its cache");
        r.presign("iss-2", S1, CertStatus::Good, NOW)
            .expect("presign");
        assert_eq!(r.cached_responses(), 2);
        // Responder renewal for iss-1 (a different responder cert): its cache goes.
        let renewed = pki("Issuer A");
        let mut changed = a.served("iss-1");
        changed.responder_cert_der = renewed.responder_der.clone();
        changed.responder_key = KeyPair::try_from(&renewed.responder_key_pkcs8[..]).expect("k");
        assert!(matches!(
            r.set_issuers(vec![changed, b.served("iss-2")]),
            Err(OcspError::ResponderNotFromIssuer { .. })
        ));
        r.set_issuers(vec![b.served("iss-2")]).expect("set");
        assert_eq!(r.cached_responses(), 1);
        assert_eq!(r.issuer_ids(), vec!["iss-2".to_owned()]);
        let req = request(vec![cert_id(&a, HashAlg::Sha1, S1)], None);
        assert_eq!(r.respond(&req, NOW, &table), Refusal::Unauthorized.der());
        assert!(matches!(
            r.set_issuers(vec![b.served("x"), b.served("x")]),
            Err(OcspError::DuplicateIssuer { .. })
        ));
    }

    #[test]
    fn construction_checks() {
        let p = pki("Issuer A");
        let other = pki("Issuer B");
        let mut wrong_key = p.served("iss-1");
        wrong_key.responder_key = KeyPair::try_from(&other.responder_key_pkcs8[..]).expect("k");
        assert!(matches!(
            OcspResponder::new(
                vec![wrong_key],
                time::Duration::hours(1),
                time::Duration::ZERO
            ),
            Err(OcspError::KeyMismatch { .. })
        ));
        // A responder certificate without id-kp-OCSPSigning.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
        let mut cp = CertificateParams::default();
        cp.distinguished_name
            .push(DnType::CommonName, "not a responder");
        cp.serial_number = Some(rcgen::SerialNumber::from_slice(&[9]));
        let der = cp.signed_by(&key, &p.issuer).expect("cert").der().to_vec();
        let no_eku = ResponderIssuer {
            issuer_id: "iss-1".into(),
            issuer_cert_der: p.issuer_der.clone(),
            responder_cert_der: der,
            responder_key: key,
        };
        assert!(matches!(
            OcspResponder::new(vec![no_eku], time::Duration::hours(1), time::Duration::ZERO),
            Err(OcspError::NotOcspSigner { .. })
        ));
        for (v, rb) in [(0, 0), (1, 1), (1, -1)] {
            assert!(matches!(
                OcspResponder::new(vec![], time::Duration::hours(v), time::Duration::hours(rb)),
                Err(OcspError::InvalidTiming { .. })
            ));
        }
        let r = responder(&p);
        assert!(matches!(
            r.presign("iss-1", "zz", CertStatus::Good, NOW),
            Err(OcspError::InvalidSerial { .. })
        ));
    }

    #[test]
    fn get_path_decoding() {
        let bytes: Vec<u8> = (0u8..=255).collect();
        let std = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert!(std.contains('+') && std.contains('/') && std.ends_with('='));
        assert_eq!(decode_get_path(&std).expect("std"), bytes);
        assert_eq!(decode_get_path(&format!("/{std}")).expect("slash"), bytes);
        let pct = std
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        assert_eq!(decode_get_path(&pct).expect("pct"), bytes);
        let lower = std.replace('+', "%2b").replace('/', "%2f");
        assert_eq!(decode_get_path(&lower).expect("pct lower"), bytes);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
        assert_eq!(decode_get_path(&url).expect("url-safe"), bytes);
        assert_eq!(
            decode_get_path(&std.replace('+', " ")).expect("space"),
            bytes
        );
        assert!(matches!(
            decode_get_path("%zz"),
            Err(OcspError::InvalidGetPath { .. })
        ));
        assert!(matches!(
            decode_get_path("%4"),
            Err(OcspError::InvalidGetPath { .. })
        ));
        assert!(matches!(
            decode_get_path("!!!!"),
            Err(OcspError::InvalidGetPath { .. })
        ));
        assert!(matches!(
            decode_get_path(""),
            Err(OcspError::InvalidGetPath { .. })
        ));
        assert!(matches!(
            decode_get_path(&"A".repeat(MAX_GET_PATH_LEN + 1)),
            Err(OcspError::GetPathTooLong { .. })
        ));
    }

    #[test]
    fn concurrent_requests_share_the_cache() {
        let p = pki("Issuer A");
        let r = Arc::new(responder(&p));
        let table = Arc::new(Table::default());
        let serials: Vec<String> = (1..=8u8)
            .map(|i| format!("{i:02x}{}", "ab".repeat(15)))
            .collect();
        for s in &serials {
            table.set(s, CertStatus::Good);
        }
        let reqs: Arc<Vec<Vec<u8>>> = Arc::new(
            serials
                .iter()
                .map(|s| request(vec![cert_id(&p, HashAlg::Sha1, s)], None))
                .collect(),
        );
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (r, table, reqs) = (r.clone(), table.clone(), reqs.clone());
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let der = r.respond(&reqs[(i + t) % reqs.len()], NOW, &*table);
                        assert_eq!(status_of(&der), OcspResponseStatus::Successful);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(r.cached_responses(), 8);
        // Concurrent first misses may each sign; after that everything is cached.
        assert!(r.signature_count() <= 8 * 4, "{}", r.signature_count());
        let before = r.signature_count();
        for req in reqs.iter() {
            r.respond(req, NOW, &*table);
        }
        assert_eq!(r.signature_count(), before);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Any bytes give a DER OCSPResponse, never a panic.
        #[test]
        fn any_bytes_get_an_ocsp_response(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            static R: std::sync::OnceLock<(OcspResponder, Table)> = std::sync::OnceLock::new();
            let (r, table) = R.get_or_init(|| (responder(&pki("Issuer A")), Table::default()));
            let der = r.respond(&bytes, NOW, table);
            proptest::prop_assert!(OcspResponse::from_der(&der).is_ok());
        }
    }

    /// Fuzzing (ocsp_request): a cached answer must carry the requester's own CertID.
    #[test]
    fn cached_answer_carries_the_requests_own_cert_id() {
        let p = pki("Issuer");
        let now = datetime!(2026-06-01 0:00 UTC);
        let canonical = cert_id(&p, HashAlg::Sha1, "01");
        let mut absent = canonical.clone();
        absent.hash_algorithm.parameters = None;
        for (first, second) in [(&canonical, &absent), (&absent, &canonical)] {
            let r = responder(&p);
            let t = Table::default();
            r.respond(&request(vec![first.clone()], None), now, &t);
            let der = r.respond(&request(vec![second.clone()], None), now, &t);
            assert_eq!(&basic(&der).tbs_response_data.responses[0].cert_id, second);
        }
    }
}
