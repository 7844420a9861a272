//! What the CA has promised, kept outside the store: signed audit checkpoints and the last
//! CRL published per issuer (DESIGN §6: "a published revocation is never withdrawn").
//!
//! A store can be lost, damaged (sled's recovery silently cuts its log at the damage), or
//! replaced by an older backup. The daemon would then happily serve a CRL without the
//! revocations it has already published, and gateways would admit revoked devices again. So
//! the daemon keeps, in `DATA_DIR/checkpoint/` (beside the store, never inside it):
//!
//! - `latest.json`: a **checkpoint** of the audit log, the sequence number and hash of its
//!   last entry plus the number of the last CRL of each issuer, signed with the daemon's
//!   checkpoint key (as certificate-transparency logs sign their tree heads). Written after
//!   each CRL publication, on the 30 s schedule when the log has moved, and at shutdown; each
//!   one is also logged on the `audit` tracing target so log shippers keep a copy off-host.
//! - `crls/<issuer>.crl`: the last CRL published by each issuer, DER, exactly as served.
//! - `checkpoint.pub`: the checkpoint public key (hex), for verifiers without the passphrase.
//!
//! Every file is written atomically (temporary file, fsync, rename, fsync of the directory).
//! A checkpoint is taken from [`Store::durable_audit_head`], which flushes the store first,
//! so after a crash the store is never behind its own checkpoint.
//!
//! At start ([`check_store`]) a store whose audit log ends before the checkpoint, whose entry
//! at the checkpoint differs from it, or whose revocation index lacks an unexpired entry of a
//! kept CRL is refused, with what is missing and how to recover (`ca-daemon store reconcile`,
//! see docs/operations.md "The disk died"). The check uses only [`Store`] trait methods, so
//! any store implementation (a future PostgreSQL one) gets it unchanged.
//!
//! # The checkpoint key
//! An Ed25519 key derived from the sealed pepper (HMAC-SHA256 under the pepper of a fixed
//! label, used as the Ed25519 seed). It is a key of the daemon's own, not a CA key: issuer
//! keys sign only certificates and CRLs (their keyUsage), they rotate, and they may sit in an
//! HSM; the root key is offline. Deriving it from the pepper needs no new key file, and like
//! every daemon key it is unusable without the passphrase. The signed bytes start with a
//! domain-separation tag, so a signature can never be taken for anything else.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ring::signature::{self, Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::audit::{AUDIT_TARGET, ChainHead};
use crate::keys::fsutil::{self, Overwrite};
use crate::store::{CrlRecord, Reinstated, Revocation, RevokedEntry, Store, StoreError};

/// Directory under `DATA_DIR` holding what the CA has promised.
pub const DIR: &str = "checkpoint";

/// Format tag of a checkpoint (also the start of its signed bytes).
pub const FORMAT: &str = "pki-ca-daemon checkpoint v1";

/// Label the checkpoint key is derived under.
const KEY_LABEL: &[u8] = b"pki-ca-daemon checkpoint signing key v1";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PromiseError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A checkpoint file is not a valid checkpoint.
    #[error("checkpoint {path}: {problem}")]
    BadCheckpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A CRL cannot be parsed or verified.
    #[error("CRL {what}: {problem}")]
    BadCrl {
        /// Which CRL.
        what: String,
        /// What is wrong.
        problem: String,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The key could not be derived.
    #[error("checkpoint key: {0}")]
    Key(String),
    /// The daemon must not start on this store: what is missing and how to recover.
    #[error("{0}")]
    Refused(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PromiseError + '_ {
    move |source| PromiseError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Paths under `DATA_DIR/checkpoint`.
#[derive(Debug, Clone)]
pub struct PromiseLayout {
    dir: PathBuf,
}

impl PromiseLayout {
    /// The layout for a data directory.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join(DIR),
        }
    }
    /// `DATA_DIR/checkpoint`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The latest checkpoint.
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join("latest.json")
    }
    /// The checkpoint public key (hex).
    pub fn public_key(&self) -> PathBuf {
        self.dir.join("checkpoint.pub")
    }
    /// Directory of the kept CRLs.
    pub fn crl_dir(&self) -> PathBuf {
        self.dir.join("crls")
    }
    /// The last CRL published by `issuer_id`.
    pub fn crl(&self, issuer_id: &str) -> PathBuf {
        self.crl_dir().join(format!("{issuer_id}.crl"))
    }
    /// Whether the daemon has ever promised anything here.
    pub fn exists(&self) -> bool {
        self.checkpoint().is_file() || self.crl_dir().is_dir()
    }

    /// Every kept CRL: (issuer id, DER), ordered by issuer id.
    pub fn kept_crls(&self) -> Result<Vec<(String, Vec<u8>)>, PromiseError> {
        let dir = self.crl_dir();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".crl") else {
                continue;
            };
            if id.starts_with('.') {
                continue;
            }
            let der = std::fs::read(entry.path()).map_err(io_err(&entry.path()))?;
            out.push((id.to_owned(), der));
        }
        out.sort();
        Ok(out)
    }

    /// The latest checkpoint, if one was written.
    pub fn read_checkpoint(&self) -> Result<Option<Checkpoint>, PromiseError> {
        let path = self.checkpoint();
        match std::fs::read(&path) {
            Ok(bytes) => Checkpoint::parse(&bytes, &path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }
}

/// The daemon's checkpoint signing key (see the module doc).
pub struct CheckpointKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointKey({})", self.public_key_hex())
    }
}

impl CheckpointKey {
    /// Derives the key from the pepper.
    pub fn from_pepper(pepper: &[u8]) -> Result<Self, PromiseError> {
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, pepper),
            KEY_LABEL,
        );
        let pair = Ed25519KeyPair::from_seed_unchecked(mac.as_ref())
            .map_err(|e| PromiseError::Key(e.to_string()))?;
        Ok(Self { pair })
    }

    /// The public key, hex.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    /// Signs a checkpoint of `head` with the given CRL numbers, at `time`.
    pub fn sign(
        &self,
        head: ChainHead,
        crls: BTreeMap<String, u64>,
        time: OffsetDateTime,
    ) -> Checkpoint {
        let mut cp = Checkpoint {
            format: FORMAT.to_owned(),
            seq: head.seq,
            head_hash: hex::encode(head.hash),
            time: time
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            time_unix: time.unix_timestamp(),
            crls,
            public_key: self.public_key_hex(),
            signature: String::new(),
        };
        cp.signature = hex::encode(self.pair.sign(&cp.signed_bytes()).as_ref());
        cp
    }
}

/// A signed checkpoint of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// [`FORMAT`].
    pub format: String,
    /// Sequence number of the last audit entry.
    pub seq: u64,
    /// Hash of that entry, hex.
    pub head_hash: String,
    /// When the checkpoint was taken (RFC 3339, for people; `time_unix` is signed).
    pub time: String,
    /// When the checkpoint was taken, Unix seconds.
    pub time_unix: i64,
    /// Number of the last CRL published by each issuer.
    pub crls: BTreeMap<String, u64>,
    /// The Ed25519 public key that signed it, hex.
    pub public_key: String,
    /// Ed25519 signature over [`Checkpoint::signed_bytes`], hex.
    pub signature: String,
}

impl Checkpoint {
    /// The bytes the signature covers: the format tag and a NUL, then seq (u64 BE), the head
    /// hash (32 bytes), the time (i64 BE), the number of CRLs (u64 BE) and for each, ordered
    /// by issuer id, the id's length (u64 BE), the id and the CRL number (u64 BE).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(FORMAT.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.seq.to_be_bytes());
        let mut hash = [0u8; 32];
        if let Ok(h) = hex::decode(&self.head_hash)
            && h.len() == 32
        {
            hash.copy_from_slice(&h);
        }
        out.extend_from_slice(&hash);
        out.extend_from_slice(&self.time_unix.to_be_bytes());
        out.extend_from_slice(&(self.crls.len() as u64).to_be_bytes());
        for (id, n) in &self.crls {
            out.extend_from_slice(&(id.len() as u64).to_be_bytes());
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(&n.to_be_bytes());
        }
        out
    }

    /// Parses a checkpoint file (JSON).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, PromiseError> {
        let cp: Checkpoint =
            serde_json::from_slice(bytes).map_err(|e| PromiseError::BadCheckpoint {
                path: path.to_path_buf(),
                problem: format!("not a checkpoint: {e}"),
            })?;
        if cp.format != FORMAT {
            return Err(PromiseError::BadCheckpoint {
                path: path.to_path_buf(),
                problem: format!("unknown format {:?}", cp.format),
            });
        }
        Ok(cp)
    }

    /// The head it records.
    pub fn head(&self) -> Option<ChainHead> {
        let h = hex::decode(&self.head_hash).ok()?;
        Some(ChainHead {
            seq: self.seq,
            hash: h.try_into().ok()?,
        })
    }

    /// Checks the signature with `public_key_hex` (the daemon's key, or the key a verifier
    /// pinned); `Err` names what is wrong.
    pub fn verify(&self, public_key_hex: &str) -> Result<(), String> {
        if self.public_key != public_key_hex {
            return Err(format!(
                "signed by key {} but the daemon's checkpoint key is {public_key_hex}",
                self.public_key
            ));
        }
        if self.head().is_none() {
            return Err("head_hash is not 32 bytes of hex".into());
        }
        let key = hex::decode(public_key_hex).map_err(|_| "public key is not hex".to_owned())?;
        let sig = hex::decode(&self.signature).map_err(|_| "signature is not hex".to_owned())?;
        signature::UnparsedPublicKey::new(&signature::ED25519, key)
            .verify(&self.signed_bytes(), &sig)
            .map_err(|_| "the signature does not verify (altered or forged)".to_owned())
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}

/// One entry of a published CRL, as read back from its DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedEntry {
    /// Serial, lowercase hex (the store's form).
    pub serial: String,
    /// The revocation as published.
    pub revocation: Revocation,
}

/// A parsed CRL: its number and entries.
#[derive(Debug, Clone)]
pub struct PublishedCrl {
    /// CRL number (0 if absent).
    pub number: u64,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate (thisUpdate if absent).
    pub next_update: OffsetDateTime,
    /// Every entry.
    pub entries: Vec<PublishedEntry>,
}

/// Parses a CRL's number and entries (serial, time, reason, invalidity date). With
/// `issuer_cert_der`, also verifies its signature.
pub fn parse_crl(
    der: &[u8],
    what: &str,
    issuer_cert_der: Option<&[u8]>,
) -> Result<PublishedCrl, PromiseError> {
    use x509_parser::extensions::ParsedExtension;
    let bad = |problem: String| PromiseError::BadCrl {
        what: what.to_owned(),
        problem,
    };
    let (_, crl) = x509_parser::parse_x509_crl(der).map_err(|e| bad(e.to_string()))?;
    if let Some(cert) = issuer_cert_der {
        let (_, issuer) =
            x509_parser::parse_x509_certificate(cert).map_err(|e| bad(e.to_string()))?;
        crl.verify_signature(issuer.public_key())
            .map_err(|e| bad(format!("not signed by the issuer: {e}")))?;
    }
    let number = crl
        .crl_number()
        .map(|n| {
            n.to_bytes_be()
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
        })
        .unwrap_or(0);
    let mut entries = Vec::new();
    for rc in crl.iter_revoked_certificates() {
        let reason = rc
            .reason_code()
            .and_then(|(_, code)| pki_policy::domain::RevocationReason::from_code(code.0))
            .unwrap_or(pki_policy::domain::RevocationReason::Unspecified);
        let mut invalidity_date = None;
        for ext in rc.extensions() {
            if let ParsedExtension::InvalidityDate(t) = ext.parsed_extension() {
                invalidity_date = Some(t.to_datetime());
            }
        }
        entries.push(PublishedEntry {
            serial: crate::keys::serial_hex(rc.raw_serial()),
            revocation: Revocation {
                revoked_at: rc.revocation_date.to_datetime(),
                reason,
                invalidity_date,
            },
        });
    }
    let this_update = crl.last_update().to_datetime();
    Ok(PublishedCrl {
        number,
        this_update,
        next_update: crl.next_update().map_or(this_update, |t| t.to_datetime()),
        entries,
    })
}

/// Entries of `published` that the store's revocation index (what the next CRL is built
/// from) lacks and whose certificate is not known to have expired at `now`. Serials the
/// store does not know at all count as unexpired and get `fallback_not_after` (the issuer's
/// notAfter: no leaf outlives its issuer).
pub fn missing_revocations(
    store: &dyn Store,
    issuer_id: &str,
    published: &PublishedCrl,
    fallback_not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<Vec<RevokedEntry>, PromiseError> {
    let have: HashSet<String> = store
        .revocation_entries(issuer_id)?
        .into_iter()
        .map(|e| e.serial)
        .collect();
    missing_from(&have, store, published, fallback_not_after, now)
}

/// [`missing_revocations`] against the serials `have` that the next CRL will list.
pub fn missing_from(
    have: &HashSet<String>,
    store: &dyn Store,
    published: &PublishedCrl,
    fallback_not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<Vec<RevokedEntry>, PromiseError> {
    let mut out = Vec::new();
    for e in &published.entries {
        if have.contains(&e.serial) {
            continue;
        }
        let not_after = match store.certificate(&e.serial)? {
            Some(c) if c.not_after < now => continue,
            Some(c) => c.not_after,
            None => fallback_not_after,
        };
        out.push(RevokedEntry {
            serial: e.serial.clone(),
            not_after,
            revocation: e.revocation.clone(),
        });
    }
    Ok(out)
}

/// What [`check_store`] found.
#[derive(Debug, Clone, Default)]
pub struct StoreCheck {
    /// The latest checkpoint, if any.
    pub checkpoint: Option<Checkpoint>,
    /// The store's audit head.
    pub head: Option<ChainHead>,
    /// Why the audit log does not reach the checkpoint, if it does not.
    pub audit_problem: Option<String>,
    /// Per issuer: the kept CRL's number and the unexpired revocations the store lacks.
    pub missing: Vec<(String, u64, Vec<RevokedEntry>)>,
}

impl StoreCheck {
    /// Whether the store holds everything promised.
    pub fn is_ok(&self) -> bool {
        self.audit_problem.is_none() && self.missing.iter().all(|(_, _, m)| m.is_empty())
    }

    /// Number of revocations missing, over all issuers.
    pub fn missing_count(&self) -> usize {
        self.missing.iter().map(|(_, _, m)| m.len()).sum()
    }

    /// What is missing, for the operator (one line per problem, serials abbreviated).
    pub fn describe(&self) -> String {
        let mut lines = Vec::new();
        if let Some(p) = &self.audit_problem {
            lines.push(p.clone());
        }
        for (issuer, number, m) in &self.missing {
            if m.is_empty() {
                continue;
            }
            let shown: Vec<&str> = m.iter().take(10).map(|e| e.serial.as_str()).collect();
            lines.push(format!(
                "{} unexpired revocation(s) listed on CRL #{number} of {issuer}, the last one published, are missing from the store: {}{}",
                m.len(),
                shown.join(", "),
                if m.len() > shown.len() { ", ..." } else { "" }
            ));
        }
        lines.join("; ")
    }

    /// The refusal message at start: what is missing and how to recover.
    pub fn refusal(&self, data_dir: &Path) -> String {
        self.refusal_for(
            data_dir,
            &format!("the store in {}", data_dir.join("store").display()),
            "",
        )
    }

    /// [`StoreCheck::refusal`] naming the store (`store`, e.g. "the database postgresql://…")
    /// and the extra arguments `store reconcile` needs to reach it (`--store URL`).
    pub fn refusal_for(&self, data_dir: &Path, store: &str, reconcile_args: &str) -> String {
        format!(
            "refusing to start: {store} is behind what this CA has already promised: {what}. \
             Serving from it would withdraw published revocations. If the store was restored from a backup \
             or damaged, stop here and run `ca-daemon store reconcile --data-dir {dd}{reconcile_args}` (it re-applies the \
             revocations kept in {cp} and reports certificates unknown to the store); see docs/operations.md, \
             \"The disk died\"",
            what = self.describe(),
            dd = data_dir.display(),
            cp = data_dir.join(DIR).display(),
        )
    }
}

/// Checks `store` against the promises kept in `layout`: the checkpoint (signature with
/// `key_hex`, when given; audit head at or beyond it with the same entry there) and every
/// kept CRL (no unexpired entry missing). `issuer_not_after` gives each issuer's notAfter
/// for serials the store does not know. Uses only [`Store`] methods.
pub fn check_store(
    layout: &PromiseLayout,
    store: &dyn Store,
    key_hex: Option<&str>,
    issuer_not_after: &HashMap<String, OffsetDateTime>,
    now: OffsetDateTime,
) -> Result<StoreCheck, PromiseError> {
    let mut out = StoreCheck::default();
    let head = store.durable_audit_head()?;
    out.head = Some(head);
    if let Some(cp) = layout.read_checkpoint()? {
        if let Some(k) = key_hex {
            cp.verify(k)
                .map_err(|problem| PromiseError::BadCheckpoint {
                    path: layout.checkpoint(),
                    problem,
                })?;
        }
        out.audit_problem = audit_problem(store, &cp, head);
        out.checkpoint = Some(cp);
    }
    for (issuer, der) in layout.kept_crls()? {
        let published = parse_crl(&der, &format!("kept for {issuer}"), None)?;
        let fallback = issuer_not_after
            .get(&issuer)
            .copied()
            .unwrap_or(now + time::Duration::days(36_500));
        let missing = missing_revocations(store, &issuer, &published, fallback, now)?;
        out.missing.push((issuer, published.number, missing));
    }
    Ok(out)
}

/// Why the store's audit log does not reach checkpoint `cp` (None when it does).
pub fn audit_problem(store: &dyn Store, cp: &Checkpoint, head: ChainHead) -> Option<String> {
    if head.seq < cp.seq {
        return Some(format!(
            "its audit log ends at entry {} but the checkpoint of {} records entry {}: {} acknowledged change(s) are missing",
            head.seq,
            cp.time,
            cp.seq,
            cp.seq - head.seq
        ));
    }
    if cp.seq == 0 {
        return None;
    }
    match store.audit_entries(cp.seq, 1) {
        Ok(e)
            if e.first()
                .is_some_and(|e| hex::encode(e.hash) == cp.head_hash) =>
        {
            None
        }
        Ok(_) => Some(format!(
            "its audit entry {} is not the one the checkpoint of {} records: the log was rewritten since",
            cp.seq, cp.time
        )),
        Err(e) => Some(format!(
            "its audit entry {} (recorded by the checkpoint of {}) cannot be read: {e}",
            cp.seq, cp.time
        )),
    }
}

/// A kept CRL's serials, for the OCSP check, sorted for binary search.
#[derive(Debug, Clone, Default)]
struct KeptSerials {
    number: u64,
    short: Vec<u128>,
    long: HashSet<String>,
}

impl KeptSerials {
    fn from_entries(number: u64, entries: &[PublishedEntry]) -> Self {
        Self::from_serials(number, entries.iter().map(|e| e.serial.as_str()))
    }

    fn from_serials<'a>(number: u64, serials: impl Iterator<Item = &'a str>) -> Self {
        let mut s = Self {
            number,
            ..Self::default()
        };
        for serial in serials {
            match u128::from_str_radix(serial, 16) {
                Ok(n) if serial.len() <= 32 => s.short.push(n),
                _ => {
                    s.long.insert(serial.to_owned());
                }
            }
        }
        s.short.sort_unstable();
        s
    }

    fn contains(&self, serial: &str) -> bool {
        match u128::from_str_radix(serial, 16) {
            Ok(n) if serial.len() <= 32 => self.short.binary_search(&n).is_ok(),
            _ => self.long.contains(serial),
        }
    }
}

/// The running daemon's keeper of promises: writes kept CRLs and checkpoints, answers
/// "is this serial on the last published CRL?".
pub struct Promises {
    layout: PromiseLayout,
    key: CheckpointKey,
    /// Last CRL per issuer.
    kept: Mutex<HashMap<String, KeptSerials>>,
    /// Head of the last checkpoint written (to skip rewriting an unchanged one).
    last: Mutex<Option<ChainHead>>,
}

impl std::fmt::Debug for Promises {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Promises")
            .field("dir", &self.layout.dir)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Promises {
    /// Opens (creating) `DATA_DIR/checkpoint`, writes the public key file, loads the kept
    /// CRLs.
    pub fn open(data_dir: &Path, key: CheckpointKey) -> Result<Self, PromiseError> {
        let layout = PromiseLayout::new(data_dir);
        fsutil::create_dir_all_private(&layout.crl_dir()).map_err(io_err(&layout.crl_dir()))?;
        let pk = key.public_key_hex() + "\n";
        if std::fs::read_to_string(layout.public_key()).ok().as_deref() != Some(pk.as_str()) {
            fsutil::write_atomic(
                &layout.public_key(),
                pk.as_bytes(),
                fsutil::PUBLIC_FILE_MODE,
                Overwrite::Replace,
            )
            .map_err(io_err(&layout.public_key()))?;
        }
        let mut kept = HashMap::new();
        for (issuer, der) in layout.kept_crls()? {
            let p = parse_crl(&der, &format!("kept for {issuer}"), None)?;
            kept.insert(issuer, KeptSerials::from_entries(p.number, &p.entries));
        }
        Ok(Self {
            layout,
            key,
            kept: Mutex::new(kept),
            last: Mutex::new(None),
        })
    }

    /// The layout.
    pub fn layout(&self) -> &PromiseLayout {
        &self.layout
    }

    /// The checkpoint public key, hex.
    pub fn public_key_hex(&self) -> String {
        self.key.public_key_hex()
    }

    /// Keeps `crl` as the last published CRL of its issuer (atomic write). Call once it is
    /// saved in the store.
    pub fn keep_crl<'a>(
        &self,
        crl: &CrlRecord,
        serials: impl Iterator<Item = &'a str>,
    ) -> Result<(), PromiseError> {
        let path = self.layout.crl(&crl.issuer_id);
        fsutil::write_atomic(
            &path,
            &crl.der,
            fsutil::PUBLIC_FILE_MODE,
            Overwrite::Replace,
        )
        .map_err(io_err(&path))?;
        lock(&self.kept).insert(
            crl.issuer_id.clone(),
            KeptSerials::from_serials(crl.number, serials),
        );
        Ok(())
    }

    /// The DER of the last CRL published by `issuer_id`, as kept.
    pub fn kept_crl(&self, issuer_id: &str) -> Option<Vec<u8>> {
        std::fs::read(self.layout.crl(issuer_id)).ok()
    }

    /// The revocation of `serial` as the last CRL published by `issuer_id` lists it, if it
    /// does (a lookup in memory; the CRL is read only on a hit).
    pub fn published_revocation(&self, issuer_id: &str, serial: &str) -> Option<Revocation> {
        if !self.listed_on_last_crl(issuer_id, serial) {
            return None;
        }
        let der = self.kept_crl(issuer_id)?;
        let fallback = Revocation {
            revoked_at: OffsetDateTime::now_utc(),
            reason: pki_policy::domain::RevocationReason::Unspecified,
            invalidity_date: None,
        };
        Some(
            parse_crl(&der, issuer_id, None)
                .ok()
                .and_then(|c| c.entries.into_iter().find(|e| e.serial == serial))
                .map_or(fallback, |e| e.revocation),
        )
    }

    /// The serials on the last CRL kept for `issuer_id` that are not in `have` (in the
    /// store's form: lowercase hex, whole octets); `None` when no CRL is kept for it.
    pub fn unlisted_serials(&self, issuer_id: &str, have: &HashSet<String>) -> Option<Vec<String>> {
        let kept = lock(&self.kept);
        let k = kept.get(issuer_id)?;
        let mut out: Vec<String> = k
            .short
            .iter()
            .map(|n| {
                let s = format!("{n:x}");
                if s.len() % 2 == 1 { format!("0{s}") } else { s }
            })
            .filter(|s| !have.contains(s))
            .collect();
        out.extend(k.long.iter().filter(|s| !have.contains(*s)).cloned());
        Some(out)
    }

    /// Whether the last CRL published by `issuer_id` lists `serial`.
    pub fn listed_on_last_crl(&self, issuer_id: &str, serial: &str) -> bool {
        lock(&self.kept)
            .get(issuer_id)
            .is_some_and(|k| k.contains(serial))
    }

    /// Signs and writes a checkpoint of the store's durable audit head (skipped when `force`
    /// is false and the head has not moved since the last one), and logs it on the `audit`
    /// target. Returns the checkpoint written, if any.
    pub fn checkpoint(
        &self,
        store: &dyn Store,
        reason: &str,
        force: bool,
    ) -> Result<Option<Checkpoint>, PromiseError> {
        let head = store.durable_audit_head()?;
        let mut last = lock(&self.last);
        if !force && *last == Some(head) {
            return Ok(None);
        }
        let crls: BTreeMap<String, u64> = lock(&self.kept)
            .iter()
            .map(|(k, v)| (k.clone(), v.number))
            .collect();
        let cp = self.key.sign(head, crls, OffsetDateTime::now_utc());
        write_checkpoint(&self.layout, &cp)?;
        *last = Some(head);
        tracing::info!(target: AUDIT_TARGET, reason, checkpoint_seq = cp.seq,
            head_hash = %cp.head_hash, time = %cp.time, public_key = %cp.public_key,
            signature = %cp.signature, checkpoint = %serde_json::to_string(&cp).unwrap_or_default(),
            "audit checkpoint");
        Ok(Some(cp))
    }
}

/// Writes `cp` as the latest checkpoint, atomically.
pub fn write_checkpoint(layout: &PromiseLayout, cp: &Checkpoint) -> Result<(), PromiseError> {
    fsutil::create_dir_all_private(layout.dir()).map_err(io_err(layout.dir()))?;
    fsutil::write_atomic(
        &layout.checkpoint(),
        cp.to_json().as_bytes(),
        fsutil::PUBLIC_FILE_MODE,
        Overwrite::Replace,
    )
    .map_err(io_err(&layout.checkpoint()))
}

/// Whether a sled store exists in `store_dir`.
pub fn store_present(store_dir: &Path) -> bool {
    store_dir.join("conf").is_file() && store_dir.join("db").is_file()
}

/// Creates an empty store in `store_dir` (the explicit way to get one: `init`, the first dev
/// run, `ca-daemon store create`); refuses if one exists.
pub fn create_empty_store(store_dir: &Path) -> Result<(), PromiseError> {
    if store_dir.exists() {
        return Err(PromiseError::Store(StoreError::TargetExists {
            path: store_dir.to_path_buf(),
        }));
    }
    crate::store::SledStore::open(store_dir)
        .map(drop)
        .map_err(PromiseError::Store)
}

/// Opens the store for `serve`, refusing ([`PromiseError::Refused`], with what is missing and
/// how to recover) a missing one when the PKI exists and one that is behind what the CA has
/// promised; returns it with the promises keeper. `cache_bytes` bounds sled's page cache.
pub fn open_checked_store(
    data_dir: &Path,
    pki: &crate::pki::LoadedPki,
    cache_bytes: u64,
) -> Result<(crate::store::SledStore, Promises), PromiseError> {
    let store_dir = crate::pki::Layout::new(data_dir).store_dir();
    let layout = PromiseLayout::new(data_dir);
    if !store_present(&store_dir) {
        let promised = layout.read_checkpoint().ok().flatten().map_or_else(
            || "this PKI exists".to_owned(),
            |c| {
                format!(
                    "the checkpoint of {} records {} audit entries",
                    c.time, c.seq
                )
            },
        );
        return Err(PromiseError::Refused(format!(
            "refusing to start: there is no store in {store} but {promised}; a new empty store would forget every certificate and revocation. Restore the newest backup (`ca-daemon restore --from FILE --data-dir {dd}`) or, with no backup, create an empty store (`ca-daemon store create --data-dir {dd}`), then run `ca-daemon store reconcile --data-dir {dd}`; see docs/operations.md, \"The disk died\"",
            store = store_dir.display(),
            dd = data_dir.display(),
        )));
    }
    let store = crate::store::SledStore::open_with_cache(&store_dir, cache_bytes).map_err(|e| {
        PromiseError::Refused(format!(
            "refusing to start: store: {e} (if the store is damaged, move it aside, restore the newest backup and run `ca-daemon store reconcile`)"
        ))
    })?;
    let promises = check_opened_store(data_dir, pki, &store, None)?;
    Ok((store, promises))
}

/// The start-up check of [`open_checked_store`] for a store opened by the caller (the
/// PostgreSQL store shared by several nodes: each node keeps its own checkpoint and kept CRLs
/// in its data dir, and the shared log only ever grows past them). An empty database behind a
/// node's checkpoint is refused like a lost sled store (point the node at the right database,
/// or `store copy` the backup into it). `store_url` names a PostgreSQL store in the refusal;
/// `None` is the sled store in the data dir.
pub fn check_opened_store(
    data_dir: &Path,
    pki: &crate::pki::LoadedPki,
    store: &dyn Store,
    store_url: Option<&str>,
) -> Result<Promises, PromiseError> {
    let layout = PromiseLayout::new(data_dir);
    let key = CheckpointKey::from_pepper(&pki.pepper)?;
    let not_after = pki
        .issuers
        .iter()
        .map(|i| (i.id.clone(), i.not_after))
        .collect();
    let check = check_store(
        &layout,
        store,
        Some(&key.public_key_hex()),
        &not_after,
        time::OffsetDateTime::now_utc(),
    )
    .map_err(|e| PromiseError::Refused(format!("refusing to start: {e}")))?;
    if !check.is_ok() {
        return Err(PromiseError::Refused(match store_url {
            None => check.refusal(data_dir),
            Some(url) => check.refusal_for(
                data_dir,
                &format!("the database {url}"),
                &format!(" --store {url} [--store-password-file FILE]"),
            ),
        }));
    }
    Promises::open(data_dir, key)
}

/// The CRL publication guard's question: which unexpired serials of the previous CRL of
/// `issuer_id` (the kept one, from memory; else the store's own last CRL) are not in `have`,
/// the serials the next CRL will list. Empty when the CRL may be published.
pub fn guard_missing(
    store: &dyn Store,
    issuer_id: &str,
    have: &HashSet<String>,
    promises: Option<&Promises>,
    now: OffsetDateTime,
) -> Result<Vec<String>, PromiseError> {
    // Known to have expired: a CRL may drop it.
    let expired = |serial: &str| -> Result<bool, PromiseError> {
        Ok(store
            .certificate(serial)?
            .is_some_and(|c| c.not_after < now))
    };
    let candidates = match promises.and_then(|p| p.unlisted_serials(issuer_id, have)) {
        Some(unlisted) => unlisted,
        None => match store.latest_crl(issuer_id)? {
            None => Vec::new(),
            Some(previous) => parse_crl(&previous.der, issuer_id, None)?
                .entries
                .into_iter()
                .map(|e| e.serial)
                .filter(|s| !have.contains(s))
                .collect(),
        },
    };
    let mut out = Vec::new();
    for serial in candidates {
        if !expired(&serial)? {
            out.push(serial);
        }
    }
    Ok(out)
}

/// Verifies the audit chain of `store` and that it still holds the entry checkpoint `cp`
/// records (the caller checks the checkpoint's signature).
pub fn verify_against_checkpoint(
    store: &dyn Store,
    cp: &Checkpoint,
) -> Result<crate::audit::AuditVerification, StoreError> {
    let v = store.verify_audit()?;
    if !v.ok {
        return Ok(v);
    }
    let head = store.durable_audit_head()?;
    Ok(match audit_problem(store, cp, head) {
        None => v,
        Some(problem) => crate::audit::AuditVerification::bad(
            v.entries.min(cp.seq.saturating_sub(1)),
            cp.seq.min(head.seq + 1),
            format!("since the checkpoint: {problem}"),
        ),
    })
}

/// What [`reconcile`] did.
#[derive(Debug, Clone, Default)]
pub struct ReconcileReport {
    /// The check before reconciling.
    pub before: StoreCheck,
    /// Per issuer, what happened to each missing serial.
    pub reinstated: Vec<(String, Vec<Reinstated>)>,
    /// The new checkpoint.
    pub checkpoint: Option<Checkpoint>,
}

impl ReconcileReport {
    /// Serials the store did not know (issued after the backup).
    pub fn unknown_serials(&self) -> Vec<(String, String)> {
        self.reinstated
            .iter()
            .flat_map(|(i, r)| {
                r.iter().filter_map(move |x| match x {
                    Reinstated::Unknown(s) => Some((i.clone(), s.clone())),
                    _ => None,
                })
            })
            .collect()
    }
}

/// Brings a restored (or damaged, or new empty) store back to what the CA has promised:
/// every unexpired revocation of the kept CRLs (plus `extra_crls`, e.g. copies fetched from a
/// gateway, verified against their issuer) is re-applied and audited, a `store.reconciled`
/// entry records the checkpoint the store was behind, and a new checkpoint is signed at the
/// new head. Run offline (no daemon on the store).
pub fn reconcile(
    data_dir: &Path,
    store: &dyn Store,
    key: &CheckpointKey,
    issuers: &HashMap<String, (Vec<u8>, OffsetDateTime)>,
    extra_crls: &[(String, Vec<u8>)],
    actor: &str,
) -> Result<ReconcileReport, PromiseError> {
    let layout = PromiseLayout::new(data_dir);
    let now = OffsetDateTime::now_utc();
    let not_after: HashMap<String, OffsetDateTime> =
        issuers.iter().map(|(k, (_, t))| (k.clone(), *t)).collect();
    let before = check_store(&layout, store, Some(&key.public_key_hex()), &not_after, now)?;
    let mut report = ReconcileReport {
        before: before.clone(),
        ..ReconcileReport::default()
    };
    // CRLs to re-apply: the kept ones, then the extra ones (newest number per issuer kept).
    let mut crls: BTreeMap<String, Vec<PublishedCrl>> = BTreeMap::new();
    for (issuer, der) in layout.kept_crls()? {
        let cert = issuers.get(&issuer).map(|(c, _)| c.as_slice());
        crls.entry(issuer.clone()).or_default().push(parse_crl(
            &der,
            &format!("kept for {issuer}"),
            cert,
        )?);
    }
    // The store's own last CRL is a promise too (its index may have lost entries).
    for issuer in issuers.keys() {
        if let Some(c) = store.latest_crl(issuer)? {
            crls.entry(issuer.clone()).or_default().push(parse_crl(
                &c.der,
                &format!("saved for {issuer}"),
                None,
            )?);
        }
    }
    for (issuer, der) in extra_crls {
        let cert = issuers
            .get(issuer)
            .map(|(c, _)| c.as_slice())
            .ok_or_else(|| PromiseError::BadCrl {
                what: issuer.clone(),
                problem: "no such issuer in keys/".into(),
            })?;
        crls.entry(issuer.clone()).or_default().push(parse_crl(
            der,
            &format!("given for {issuer}"),
            Some(cert),
        )?);
    }
    for (issuer, list) in &crls {
        let fallback = not_after
            .get(issuer)
            .copied()
            .unwrap_or(now + time::Duration::days(36_500));
        let mut missing: BTreeMap<String, RevokedEntry> = BTreeMap::new();
        for crl in list {
            for e in missing_revocations(store, issuer, crl, fallback, now)? {
                missing.entry(e.serial.clone()).or_insert(e);
            }
        }
        let missing: Vec<RevokedEntry> = missing.into_values().collect();
        if missing.is_empty() {
            continue;
        }
        let done = store.reinstate_revocations(issuer, &missing, actor)?;
        report.reinstated.push((issuer.clone(), done));
    }
    // The store's own "latest CRL" becomes the last published one again, so the daemon serves
    // it (not the older one of the backup) until it publishes the next.
    for (issuer, der) in layout.kept_crls()? {
        let p = parse_crl(&der, &issuer, None)?;
        let stored = store.latest_crl(&issuer)?.map_or(0, |c| c.number);
        if p.number > stored {
            store.save_crl(
                &CrlRecord {
                    version: crate::store::RECORD_VERSION,
                    issuer_id: issuer.clone(),
                    number: p.number,
                    this_update: p.this_update,
                    next_update: p.next_update,
                    der,
                },
                crate::store::AuditEvent::new(
                    actor,
                    "crl.restored",
                    format!("issuer:{issuer}"),
                    format!(
                        "number={} entries={} (the last published CRL, kept outside the store)",
                        p.number,
                        p.entries.len()
                    ),
                ),
            )?;
        }
    }
    let applied: usize = report.reinstated.iter().map(|(_, r)| r.len()).sum();
    let unknown = report.unknown_serials();
    let detail = format!(
        "store was {}; re-applied {applied} revocation(s) from the last published CRLs; {} serial(s) unknown to the store{}",
        if before.is_ok() {
            "complete".to_owned()
        } else {
            before.describe()
        },
        unknown.len(),
        if unknown.is_empty() {
            String::new()
        } else {
            format!(
                ": {}",
                unknown
                    .iter()
                    .map(|(_, s)| s.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }
    );
    let target = before.checkpoint.as_ref().map_or_else(
        || "checkpoint:none".to_owned(),
        |c| format!("checkpoint:{}:{}", c.seq, c.head_hash),
    );
    store.append_audit(crate::store::AuditEvent::new(
        actor,
        "store.reconciled",
        target,
        detail,
    ))?;
    let crl_numbers: BTreeMap<String, u64> = crls
        .iter()
        .map(|(k, v)| (k.clone(), v.iter().map(|c| c.number).max().unwrap_or(0)))
        .collect();
    let cp = key.sign(
        store.durable_audit_head()?,
        crl_numbers,
        OffsetDateTime::now_utc(),
    );
    write_checkpoint(&layout, &cp)?;
    report.checkpoint = Some(cp);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_signature_covers_every_field() {
        let key = CheckpointKey::from_pepper(&[7u8; 32]).expect("key");
        let head = ChainHead {
            seq: 41,
            hash: [9; 32],
        };
        let crls = BTreeMap::from([("iss-a".to_owned(), 1_700_000_000u64)]);
        let cp = key.sign(head, crls, OffsetDateTime::UNIX_EPOCH);
        let pk = key.public_key_hex();
        assert_eq!(cp.verify(&pk), Ok(()));
        assert_eq!(cp.head(), Some(head));
        let json = cp.to_json();
        let back = Checkpoint::parse(json.as_bytes(), Path::new("x")).expect("parse");
        assert_eq!(back, cp);

        let mut c = cp.clone();
        c.seq = 40;
        assert!(c.verify(&pk).is_err(), "seq is signed");
        let mut c = cp.clone();
        c.head_hash = hex::encode([8u8; 32]);
        assert!(c.verify(&pk).is_err(), "hash is signed");
        let mut c = cp.clone();
        c.time_unix += 1;
        assert!(c.verify(&pk).is_err(), "time is signed");
        let mut c = cp.clone();
        c.crls.insert("iss-a".into(), 1);
        assert!(c.verify(&pk).is_err(), "CRL numbers are signed");
        // Another pepper, another key: its checkpoints do not verify under ours.
        let other = CheckpointKey::from_pepper(&[8u8; 32]).expect("key");
        assert_ne!(other.public_key_hex(), pk);
        let forged = other.sign(head, BTreeMap::new(), OffsetDateTime::UNIX_EPOCH);
        assert!(forged.verify(&pk).is_err());
        // The same pepper always gives the same key.
        assert_eq!(
            CheckpointKey::from_pepper(&[7u8; 32])
                .expect("key")
                .public_key_hex(),
            pk
        );
    }

    #[test]
    fn kept_serials_find_short_and_long_serials() {
        let entry = |s: &str| PublishedEntry {
            serial: s.into(),
            revocation: Revocation {
                revoked_at: OffsetDateTime::UNIX_EPOCH,
                reason: pki_policy::domain::RevocationReason::Unspecified,
                invalidity_date: None,
            },
        };
        let long = "ff".repeat(20);
        let k = KeptSerials::from_entries(
            3,
            &[
                entry("0a"),
                entry("6ed3cfe2c977401fb097164a1230f107"),
                entry(&long),
            ],
        );
        assert!(k.contains("0a"));
        assert!(k.contains("6ed3cfe2c977401fb097164a1230f107"));
        assert!(k.contains(&long));
        assert!(!k.contains("0b"));
        assert!(!k.contains("zz"));
    }

    /// A throw-away issuer (rcgen, P-256) that signs real CRLs.
    fn test_issuer() -> (Vec<u8>, rcgen::KeyPair) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "Test Issuer");
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&[1, 2, 3]));
        p.not_before = time::macros::datetime!(2025-01-01 0:00 UTC);
        p.not_after = time::macros::datetime!(2035-01-01 0:00 UTC);
        let cert = p.self_signed(&key).expect("self-signed");
        (cert.der().to_vec(), key)
    }

    /// The CRL the daemon would publish from `store` now.
    fn crl_of(store: &dyn Store, number: u64, cert: &[u8], key: &rcgen::KeyPair) -> CrlRecord {
        let entries: Vec<crate::crl::RevokedEntry> = store
            .revocation_entries("issuer-1")
            .expect("entries")
            .into_iter()
            .map(|e| crate::crl::RevokedEntry {
                serial_hex: e.serial,
                revoked_at: e.revocation.revoked_at,
                reason: e.revocation.reason,
                invalidity_date: e.revocation.invalidity_date,
            })
            .collect();
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).expect("ns");
        let der = crate::crl::build_crl(
            cert,
            key,
            &crate::crl::CrlParams {
                number,
                this_update: now,
                next_update: now + time::Duration::hours(24),
                idp_uri: "http://127.0.0.1:8080/crl/issuer-1.crl",
                entries: &entries,
            },
        )
        .expect("CRL");
        CrlRecord {
            version: crate::store::RECORD_VERSION,
            issuer_id: "issuer-1".into(),
            number,
            this_update: now,
            next_update: now + time::Duration::hours(24),
            der,
        }
    }

    #[test]
    fn a_store_behind_its_promises_is_found_and_reconciled() {
        use crate::store::sled::tests::{ev, issue, store};
        use crate::store::{RevokeTarget, SledStore};
        let data = tempfile::tempdir().expect("tmp");
        let (cert, ikey) = test_issuer();
        let key = CheckpointKey::from_pepper(&[3u8; 32]).expect("key");
        let pk = key.public_key_hex();
        let issuers = HashMap::from([(
            "issuer-1".to_owned(),
            (cert.clone(), time::macros::datetime!(2035-01-01 0:00 UTC)),
        )]);
        let not_after: HashMap<String, OffsetDateTime> =
            issuers.iter().map(|(k, (_, t))| (k.clone(), *t)).collect();
        let now = OffsetDateTime::now_utc();

        // The backup: one certificate, not revoked yet.
        let (_d1, live) = store();
        let c1 = issue(&live, "20000001", "0b01", "fac-1");
        let backup_dir = data.path().join("backup");
        live.backup_to(&backup_dir).expect("backup");
        // After the backup: another certificate, both revoked, a CRL published and kept.
        let c2 = issue(&live, "20000002", "0b02", "fac-1");
        let rev = Revocation {
            revoked_at: now.replace_nanosecond(0).expect("ns"),
            reason: pki_policy::domain::RevocationReason::KeyCompromise,
            invalidity_date: None,
        };
        for c in [&c1, &c2] {
            live.revoke(
                &RevokeTarget::Serial(c.serial.clone()),
                &rev,
                ev("certificate.revoked", &c.serial),
            )
            .expect("revoke");
        }
        let promises = Promises::open(
            data.path(),
            CheckpointKey::from_pepper(&[3u8; 32]).expect("key"),
        )
        .expect("open");
        let crl = crl_of(&live, 7, &cert, &ikey);
        promises
            .keep_crl(&crl, ["0b01", "0b02"].into_iter())
            .expect("keep");
        assert!(promises.listed_on_last_crl("issuer-1", "0b02"));
        assert!(!promises.listed_on_last_crl("issuer-1", "0b03"));
        assert_eq!(
            promises
                .published_revocation("issuer-1", "0b01")
                .map(|r| r.reason),
            Some(rev.reason)
        );
        let cp = promises
            .checkpoint(&live, "test", true)
            .expect("checkpoint")
            .expect("written");
        let layout = PromiseLayout::new(data.path());

        // The live store holds everything promised.
        let ok = check_store(&layout, &live, Some(&pk), &not_after, now).expect("check");
        assert!(ok.is_ok(), "{}", ok.describe());
        // A checkpoint signed by another key is refused outright.
        assert!(check_store(&layout, &live, Some(&"00".repeat(32)), &not_after, now).is_err());

        // The backup is behind: the audit log and both revocations are missing.
        let restored = SledStore::open(&backup_dir).expect("open backup");
        let behind = check_store(&layout, &restored, Some(&pk), &not_after, now).expect("check");
        assert!(!behind.is_ok());
        assert!(
            behind
                .audit_problem
                .as_deref()
                .is_some_and(|p| p.contains(&format!("records entry {}", cp.seq))),
            "{behind:?}"
        );
        assert_eq!(behind.missing_count(), 2, "{}", behind.describe());
        assert!(behind.refusal(data.path()).contains("store reconcile"));

        let report =
            reconcile(data.path(), &restored, &key, &issuers, &[], "cli:test").expect("reconcile");
        assert_eq!(
            report.unknown_serials(),
            vec![("issuer-1".to_owned(), "0b02".to_owned())]
        );
        let after = check_store(&layout, &restored, Some(&pk), &not_after, now).expect("check");
        assert!(after.is_ok(), "{}", after.describe());
        let listed: Vec<String> = restored
            .revocation_entries("issuer-1")
            .expect("entries")
            .into_iter()
            .map(|e| e.serial)
            .collect();
        assert_eq!(listed, ["0b01", "0b02"]);
        assert_eq!(
            restored
                .latest_crl("issuer-1")
                .expect("crl")
                .map(|c| c.number),
            Some(7)
        );
        let log = restored.audit_entries(1, 1000).expect("audit");
        assert!(log.iter().any(|e| e.action == "store.reconciled"));
        assert!(restored.verify_audit().expect("verify").ok);

        // A store whose log was rewritten (same length, other entries) is found too.
        let (_d3, other) = store();
        for i in 0..cp.seq + 2 {
            other
                .append_audit(ev("noise", &i.to_string()))
                .expect("append");
        }
        let rewritten = audit_problem(&other, &cp, other.durable_audit_head().expect("head"));
        assert!(rewritten.is_some_and(|p| p.contains("rewritten")));
    }

    #[test]
    fn unlisted_serials_use_the_store_form() {
        let data = tempfile::tempdir().expect("tmp");
        let p = Promises::open(
            data.path(),
            CheckpointKey::from_pepper(&[1u8; 32]).expect("key"),
        )
        .expect("open");
        assert_eq!(
            p.unlisted_serials("iss", &HashSet::new()),
            None,
            "nothing kept"
        );
        let long = "0f".repeat(20);
        let record = CrlRecord {
            version: crate::store::RECORD_VERSION,
            issuer_id: "iss".into(),
            number: 1,
            this_update: OffsetDateTime::UNIX_EPOCH,
            next_update: OffsetDateTime::UNIX_EPOCH,
            der: vec![0x30, 0x00],
        };
        p.keep_crl(&record, ["0a01", "6ed3cf", long.as_str()].into_iter())
            .expect("keep");
        let have = HashSet::from(["6ed3cf".to_owned()]);
        let mut got = p.unlisted_serials("iss", &have).expect("kept");
        got.sort();
        assert_eq!(got, vec!["0a01".to_owned(), long.clone()]);
        let all: HashSet<String> = ["0a01", "6ed3cf", long.as_str()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(p.unlisted_serials("iss", &all), Some(Vec::new()));
    }
}
