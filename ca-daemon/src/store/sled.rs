//! [`Store`] on sled 0.34, the embedded default.
//!
//! # Layout
//! One sled tree per kind of record, and index trees whose keys carry everything a lookup
//! needs (values are empty unless said otherwise):
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `tickets` | number | [`TicketRecord`] |
//! | `certs` | serial | [`CertRecord`] |
//! | `idx_facility`, `idx_person`, `idx_device`, `idx_issuer` | id¹ ‖ serial | — |
//! | `idx_expiry` | issuer id¹ ‖ notAfter (u64 BE, order-preserving) ‖ serial | — |
//! | `idx_revoked` | issuer id¹ ‖ serial | [`RevokedEntry`] |
//! | `issuers` | id | [`IssuerRecord`] |
//! | `crls` | issuer id | newest [`CrlRecord`] |
//! | `audit` | seq (u64 BE) | `(version, AuditEntry)` |
//! | `meta` | see the `meta_*` functions | schema version, audit chain head, CRL numbers, counters |
//! | `renewals` | ticket number | `(version, serial it renews)` |
//! | `renewed_by` | renewed serial | `(version, serial of the renewing certificate)` |
//! | `supersede_due` | due (u64 BE, order-preserving) ‖ renewed serial | `(version, renewing serial)` |
//! | `key_blobs` | relative file name | sealed or public file of the keys directory |
//!
//! ¹ `u32 BE length ‖ bytes`, so that one id is never a prefix of another's keys.
//!
//! # Atomicity and durability
//! Every change runs as one sled transaction over all trees, with its audit entry appended
//! inside it (the chain head lives in `meta` and is read and written in the same transaction),
//! so a crash leaves all of a change or none of it. Writers are serialised by a mutex around
//! the transaction (sled 0.34 serialises transactions process-wide anyway); holding it also
//! makes the index scans of a bulk revocation and the copy of a backup see a stable state.
//!
//! sled transactions are not fsynced, so after the commit, and outside the mutex, each
//! writer waits for a flush that started after its commit ([`FlushCoordinator`]): the first
//! writer to arrive runs `Db::flush`, the writers that committed before that flush started
//! return when it completes, so one fsync serves every write that waits on it (group commit).

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use ::sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError, Transactional,
    TransactionalTree,
};
use ::sled::{Batch, Db, IVec, Tree};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use super::{
    AuditEntry, AuditEvent, AuditVerification, CertFilter, CertRecord, CrlRecord, IssuerRecord,
    Record, Reinstated, Revocation, RevokeTarget, RevokedEntry, Store, StoreError, Supersession,
    TicketRecord, TicketState, decode, decode_versioned, encode, encode_versioned,
};
use crate::audit::{self, ChainHead};

mod image;
mod multi;

const TICKETS: usize = 0;
const CERTS: usize = 1;
const IDX_FACILITY: usize = 2;
const IDX_PERSON: usize = 3;
const IDX_DEVICE: usize = 4;
const IDX_ISSUER: usize = 5;
const IDX_EXPIRY: usize = 6;
const IDX_REVOKED: usize = 7;
const ISSUERS: usize = 8;
const CRLS: usize = 9;
const AUDIT: usize = 10;
const META: usize = 11;
const RENEWALS: usize = 12;
const RENEWED_BY: usize = 13;
const SUPERSEDE_DUE: usize = 14;
const KEY_BLOBS: usize = 15;

/// Every tree of the store, by the index constants above. (Trees added later are simply
/// empty in a store written before them, so the layout version stays.)
const TREE_NAMES: [&str; 16] = [
    "tickets",
    "certs",
    "idx_facility",
    "idx_person",
    "idx_device",
    "idx_issuer",
    "idx_expiry",
    "idx_revoked",
    "issuers",
    "crls",
    "audit",
    "meta",
    "renewals",
    "renewed_by",
    "supersede_due",
    "key_blobs",
];

/// Version of the tree layout, kept in `meta` under `schema`.
const SCHEMA_VERSION: u16 = 1;

const AUDIT_KIND: &str = "audit entry";
const REVOKED_KIND: &str = "revoked entry";
const RENEWAL_KIND: &str = "renewal";

/// sled page cache when the caller names none: 128 MiB (sled's own default is 1 GiB).
pub const DEFAULT_CACHE_BYTES: u64 = 128 << 20;

/// Entries per batch when copying trees for a backup.
const COPY_BATCH: usize = 10_000;

type TxResult<T> = ConflictableTransactionResult<T, StoreError>;

/// The sled store. Cheap to clone (an `Arc` inside); all clones share one database.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    trees: Vec<Tree>,
    /// Serialises writers (see the module doc).
    writer: Mutex<()>,
    flush: FlushCoordinator,
    path: PathBuf,
    /// False only for [`SledStore::open_for_bulk_load`]: writes return before they are durable.
    durable_writes: bool,
    /// Per-issuer publication locks (one process).
    publication: multi::PublicationLocks,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// The view of every tree inside one transaction.
struct Tx<'a>(&'a [TransactionalTree]);

impl Tx<'_> {
    fn tree(&self, i: usize) -> &TransactionalTree {
        &self.0[i]
    }
}

/// zstd level of a compressed store: 1, the fastest. It takes a store of 200,000 seeded
/// certificates from 1,350 to 497 MiB on disk for ~0.26 ms of CPU per redemption (which costs
/// tens of milliseconds of PKCS#12 key derivation); higher levels gain little on records this
/// small (docs/benchmarks.md, Footprint).
const ZSTD_LEVEL: i32 = 1;

/// Whether the sled store at `path` is (or, when new, will be) zstd-compressed. sled records
/// the choice in the store's `conf` file and refuses to open a store with the other one, so a
/// store made before compression (issue #13 item 4) stays uncompressed; `backup` + `restore`
/// turns it into a compressed one (a backup is always written compressed).
fn compressed_store(path: &Path) -> bool {
    match std::fs::read(path.join("conf")) {
        Ok(conf) => conf
            .split(|b| *b == b'\n')
            .any(|line| line == b"use_compression: true"),
        // A new store (or none yet): compressed. An unreadable `conf` is sled's to report.
        Err(_) => true,
    }
}

/// How much more memory a cached compressed page takes than sled counts for it (measured, see
/// [`sled_cache_capacity`]).
const COMPRESSED_CACHE_FACTOR: u64 = 5;

/// sled's `cache_capacity` for a page cache meant to take about `cache_bytes` of memory. sled
/// counts a cached page by its size in the log, which for a compressed store is the compressed
/// size. The footprint benchmark (1,000,000 certificates under load) measured what that costs:
/// uncompressed, the "128 MiB" cache took ~175 MiB (1.4× what sled counts: its in-memory nodes
/// carry more than the serialized bytes); compressed and given a third of the budget (43 MiB
/// counted) it took ~200 MiB, 4.7× what sled counted (the pages compress ~3.4×). So a
/// compressed store's sled gets a fifth of the budget.
fn sled_cache_capacity(cache_bytes: u64, compressed: bool) -> u64 {
    if compressed {
        cache_bytes / COMPRESSED_CACHE_FACTOR
    } else {
        cache_bytes
    }
}

impl SledStore {
    /// Opens (creating if needed) the store in directory `path`. Fails if another process
    /// has it open, or if it was written by a newer layout.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, true, DEFAULT_CACHE_BYTES)
    }

    /// [`Self::open`] with sled's page cache bounded to `cache_bytes` (the daemon takes it
    /// from its config, `store_cache_mib`). sled's own default is 1 GiB, which a store of a
    /// million certificates fills.
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        Self::open_with(path, true, cache_bytes)
    }

    /// Bytes of every tree, for footprint measurements: (tree, entries, key bytes, value
    /// bytes). Reads the whole store.
    #[doc(hidden)]
    pub fn tree_stats(&self) -> Result<Vec<(&'static str, u64, u64, u64)>, StoreError> {
        let mut out = Vec::with_capacity(TREE_NAMES.len());
        for (i, name) in TREE_NAMES.iter().enumerate() {
            let (mut n, mut k, mut v) = (0u64, 0u64, 0u64);
            for kv in self.tree(i).iter() {
                let (key, value) = kv?;
                n += 1;
                k += key.len() as u64;
                v += value.len() as u64;
            }
            out.push((*name, n, k, v));
        }
        Ok(out)
    }

    /// Opens the store for an offline bulk load (seeding a benchmark, a migration): writes
    /// return once committed, without waiting for a flush, and the data is made durable by
    /// [`Self::flush_all`] (call it before dropping the store) or sled's periodic flush. A
    /// crash before that loses the writes since the last flush, never consistency (each
    /// write is still one transaction). Never use it for a serving daemon.
    #[doc(hidden)]
    pub fn open_for_bulk_load(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, false, DEFAULT_CACHE_BYTES)
    }

    /// Makes every committed write durable (one flush).
    pub fn flush_all(&self) -> Result<(), StoreError> {
        self.inner.db.flush()?;
        Ok(())
    }

    fn open_with(path: &Path, durable_writes: bool, cache_bytes: u64) -> Result<Self, StoreError> {
        let compressed = compressed_store(path);
        let db = ::sled::Config::new()
            .path(path)
            .cache_capacity(sled_cache_capacity(cache_bytes, compressed))
            .use_compression(compressed)
            .compression_factor(ZSTD_LEVEL)
            .open()?;
        let trees = TREE_NAMES
            .iter()
            .map(|name| db.open_tree(name))
            .collect::<Result<Vec<_>, _>>()?;
        let meta = &trees[META];
        match meta.get(META_SCHEMA)? {
            None => {
                meta.insert(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
                db.flush()?;
            }
            Some(v) if v.as_ref() == SCHEMA_VERSION.to_be_bytes() => {}
            Some(v) => {
                return Err(StoreError::Corrupt {
                    kind: "store",
                    key: path.display().to_string(),
                    detail: format!("unsupported store layout version {:?}", v.as_ref()),
                });
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                trees,
                writer: Mutex::new(()),
                flush: FlushCoordinator::default(),
                path: path.to_owned(),
                durable_writes,
                publication: multi::PublicationLocks::default(),
            }),
        })
    }

    /// Restores the backup in directory `backup` (written by [`Store::backup_to`]) into a new
    /// store at `into`, which must not exist. The backup's audit chain is verified first; a
    /// backup whose chain is broken is refused.
    pub fn restore_from(backup: &Path, into: &Path) -> Result<(), StoreError> {
        if into.exists() {
            return Err(StoreError::TargetExists {
                path: into.to_owned(),
            });
        }
        // Opening a missing directory would create an empty store and "restore" nothing.
        if !backup.join("conf").is_file() || !backup.join("db").is_file() {
            return Err(not_found("backup", &backup.display().to_string()));
        }
        let source = Self::open(backup)?;
        let verification = source.verify_audit()?;
        if !verification.ok {
            return Err(StoreError::Corrupt {
                kind: "backup",
                key: backup.display().to_string(),
                detail: verification
                    .problem
                    .unwrap_or_else(|| "audit chain broken".to_owned()),
            });
        }
        source.backup_to(into)
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// How many flushes (fsyncs) the store has run for writers since it was opened; with
    /// group commit this grows slower than the number of writes under concurrency.
    pub fn flush_count(&self) -> u64 {
        self.inner.flush.flushes.load(Ordering::Relaxed)
    }

    /// Test hook for the tamper tests: XORs byte `offset % len` of the stored audit entry
    /// `seq` with `mask` and returns the entry's stored length. Not durable, not audited.
    #[doc(hidden)]
    pub fn tamper_audit_entry(
        &self,
        seq: u64,
        offset: usize,
        mask: u8,
    ) -> Result<usize, StoreError> {
        let tree = self.tree(AUDIT);
        let key = seq.to_be_bytes();
        let mut value = tree
            .get(key)?
            .ok_or_else(|| not_found(AUDIT_KIND, &seq.to_string()))?
            .to_vec();
        let len = value.len();
        if len > 0 {
            value[offset % len] ^= mask;
        }
        tree.insert(key, value)?;
        Ok(len)
    }

    /// Test hook for the CRL-guard tests: removes the revocation-index entry of `serial`
    /// (what a damaged index looks like: the certificate still says revoked, the next CRL
    /// would not list it). Not audited; flushed.
    #[doc(hidden)]
    pub fn tamper_remove_revoked_index(
        &self,
        issuer_id: &str,
        serial: &str,
    ) -> Result<bool, StoreError> {
        let removed = self
            .tree(IDX_REVOKED)
            .remove(idx_key(issuer_id, serial))?
            .is_some();
        self.inner.db.flush()?;
        Ok(removed)
    }

    fn tree(&self, i: usize) -> &Tree {
        &self.inner.trees[i]
    }

    /// Revokes `target` (see [`Store::revoke`]); with `cancel`, also cancels the target's
    /// live tickets in the same transaction (see [`Store::revoke_and_cancel_tickets`]).
    fn revoke_inner(
        &self,
        target: &RevokeTarget,
        revocation: &Revocation,
        event: AuditEvent,
        cancel: Option<(AuditEvent, OffsetDateTime)>,
    ) -> Result<(Vec<CertRecord>, Vec<String>), StoreError> {
        self.mutate(|| {
            // Under the writer mutex: no certificate can be added between scan and commit.
            let serials: Vec<String> = match target {
                RevokeTarget::Serial(s) => vec![s.clone()],
                RevokeTarget::Device(id) => self
                    .index_serials(IDX_DEVICE, id, None)
                    .collect::<Result<_, _>>()?,
                RevokeTarget::Person(id) => self
                    .index_serials(IDX_PERSON, id, None)
                    .collect::<Result<_, _>>()?,
                RevokeTarget::Facility(id) => self
                    .index_serials(IDX_FACILITY, id, None)
                    .collect::<Result<_, _>>()?,
            };
            let bulk = !matches!(target, RevokeTarget::Serial(_));
            // Also under the writer mutex: no ticket can be created between scan and commit.
            let live_tickets = match &cancel {
                Some((_, now)) if bulk => self.live_tickets_of(target, *now)?,
                _ => Vec::new(),
            };
            self.transact(|tx| {
                let certs = tx.tree(CERTS);
                let mut out = Vec::with_capacity(serials.len());
                let mut entries = Vec::new();
                for serial in &serials {
                    let Some(mut cert) = tx_get::<CertRecord>(certs, serial)? else {
                        return abort(StoreError::NotFound {
                            kind: "certificate",
                            key: serial.clone(),
                        });
                    };
                    if cert.revocation.is_none() {
                        cert.revocation = Some(revocation.clone());
                        certs.insert(serial.as_bytes(), encode(&cert).or_else(abort)?)?;
                        let entry = RevokedEntry {
                            serial: serial.clone(),
                            not_after: cert.not_after,
                            revocation: revocation.clone(),
                        };
                        tx.tree(IDX_REVOKED).insert(
                            idx_key(&cert.issuer_id, serial),
                            encode_versioned(REVOKED_KIND, &entry).or_else(abort)?,
                        )?;
                        bump_tx(tx, &meta_key(META_REVOKED, &cert.issuer_id))?;
                        let per_cert = AuditEvent {
                            target: serial.clone(),
                            detail: if bulk {
                                format!("{} (revoking {target})", event.detail)
                            } else {
                                event.detail.clone()
                            },
                            ..event.clone()
                        };
                        entries.push(append_audit_tx(tx, &per_cert)?);
                    }
                    out.push(cert);
                }
                let mut cancelled = Vec::new();
                if let Some((cancel_event, now)) = &cancel {
                    let tickets = tx.tree(TICKETS);
                    for number in &live_tickets {
                        let mut t = tx_ticket(tickets, number)?;
                        if t.effective_state(*now) != TicketState::Active {
                            continue;
                        }
                        t.state = TicketState::Cancelled;
                        tickets.insert(number.as_bytes(), encode(&t).or_else(abort)?)?;
                        let per_ticket = AuditEvent {
                            target: format!("ticket:{number}"),
                            detail: format!("{} (revoking {target})", cancel_event.detail),
                            ..cancel_event.clone()
                        };
                        entries.push(append_audit_tx(tx, &per_ticket)?);
                        cancelled.push(number.clone());
                    }
                    if bulk {
                        // One entry with the count, also when it is 0: the record shows the
                        // revocation left no live ticket behind.
                        let summary = AuditEvent {
                            action: "revocation.tickets_cancelled".into(),
                            target: target.to_string(),
                            detail: format!(
                                "{} active tickets cancelled (revoking {target})",
                                cancelled.len()
                            ),
                            ..cancel_event.clone()
                        };
                        entries.push(append_audit_tx(tx, &summary)?);
                    }
                }
                Ok(((out, cancelled), entries))
            })
        })
    }

    /// Numbers of the tickets `Active` at `now` whose enrollee is the device, person or
    /// facility `target` names (none for a serial). A scan of the ticket tree: tickets are
    /// few (live ones expire within the policy's lifetime) and revocation is rare.
    fn live_tickets_of(
        &self,
        target: &RevokeTarget,
        now: OffsetDateTime,
    ) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree(TICKETS).iter() {
            let (k, v) = kv?;
            let t: TicketRecord = decode(&v, &String::from_utf8_lossy(&k))?;
            if t.effective_state(now) != TicketState::Active {
                continue;
            }
            let e = &t.enrollee;
            let hit = match target {
                RevokeTarget::Serial(_) => false,
                RevokeTarget::Device(id) => e.device.id == *id,
                RevokeTarget::Person(id) => e.person.id == *id,
                RevokeTarget::Facility(id) => e.facility.id == *id,
            };
            if hit {
                out.push(t.number);
            }
        }
        Ok(out)
    }

    /// Whether `filter` asks for the reminder list and `cert` has been renewed already.
    fn renewed_excluded(&self, filter: &CertFilter, cert: &CertRecord) -> Result<bool, StoreError> {
        Ok(filter.expiring_before.is_some()
            && self.tree(RENEWED_BY).contains_key(cert.serial.as_bytes())?)
    }

    /// Runs `body` (scans plus one [`Self::transact`]) under the writer mutex, then waits
    /// until the change is durable and logs the audit entries it appended.
    fn mutate<A>(
        &self,
        body: impl FnOnce() -> Result<(A, Vec<AuditEntry>), StoreError>,
    ) -> Result<A, StoreError> {
        let (value, entries) = {
            let _writer = lock(&self.inner.writer);
            body()?
        };
        if self.inner.durable_writes {
            self.inner
                .flush
                .wait_durable(|| self.inner.db.flush().map(drop).map_err(StoreError::from))?;
        }
        for entry in &entries {
            audit::log_entry(entry);
        }
        Ok(value)
    }

    /// One sled transaction over every tree. Call only inside [`Self::mutate`].
    fn transact<A>(&self, f: impl Fn(&Tx<'_>) -> TxResult<A>) -> Result<A, StoreError> {
        self.inner
            .trees
            .as_slice()
            .transaction(|view| f(&Tx(view)))
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => StoreError::Backend { source: e },
            })
    }

    fn get<T: Record>(&self, tree: usize, key: &str) -> Result<Option<T>, StoreError> {
        self.tree(tree)
            .get(key.as_bytes())?
            .map(|v| decode(&v, key))
            .transpose()
    }

    /// Serials in index `tree` under `id`, in order, after `after` if given.
    fn index_serials<'a>(
        &'a self,
        tree: usize,
        id: &str,
        after: Option<&str>,
    ) -> impl Iterator<Item = Result<String, StoreError>> + 'a {
        let prefix = id_prefix(id);
        let start = match after {
            Some(a) => Bound::Excluded(concat(&prefix, a.as_bytes())),
            None => Bound::Included(prefix.clone()),
        };
        let plen = prefix.len();
        self.tree(tree)
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .keys()
            .take_while(move |k| k.as_ref().map_or(true, |k| k.starts_with(&prefix)))
            .map(move |k| {
                let k = k?;
                String::from_utf8(k[plen..].to_vec()).map_err(|_| StoreError::Corrupt {
                    kind: "index",
                    key: TREE_NAMES[tree].to_owned(),
                    detail: "serial is not UTF-8".to_owned(),
                })
            })
    }

    fn audit_iter(
        &self,
        from_seq: u64,
        to_seq: Bound<u64>,
    ) -> impl Iterator<Item = Result<AuditEntry, StoreError>> {
        let end = match to_seq {
            Bound::Included(s) => Bound::Included(s.to_be_bytes()),
            Bound::Excluded(s) => Bound::Excluded(s.to_be_bytes()),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.tree(AUDIT)
            .range((Bound::Included(from_seq.to_be_bytes()), end))
            .map(|kv| {
                let (k, v) = kv?;
                let seq = <[u8; 8]>::try_from(k.as_ref())
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        kind: AUDIT_KIND,
                        key: hex::encode(&k),
                        detail: "key is not a sequence number".to_owned(),
                    })?;
                let entry: AuditEntry = decode_versioned(&v, AUDIT_KIND, &seq.to_string())?;
                if entry.seq != seq {
                    return Err(StoreError::Corrupt {
                        kind: AUDIT_KIND,
                        key: seq.to_string(),
                        detail: format!("stored under {seq} but numbered {}", entry.seq),
                    });
                }
                Ok(entry)
            })
    }

    fn audit_head(&self) -> Result<ChainHead, StoreError> {
        match self.tree(META).get(META_AUDIT_HEAD)? {
            None => Ok(ChainHead::GENESIS),
            Some(v) => ChainHead::from_bytes(&v).ok_or_else(bad_head),
        }
    }

    fn meta_u64(&self, key: &[u8]) -> Result<u64, StoreError> {
        self.tree(META)
            .get(key)?
            .map(|v| parse_u64(&v, key))
            .transpose()
            .map(Option::unwrap_or_default)
    }
}

impl SledStore {
    /// Stores a new ticket and, for a renewal, the serial it renews; a dead ticket of the
    /// same number is replaced together with its renewal entry.
    fn create_ticket_with(
        &self,
        ticket: &TicketRecord,
        renews: Option<&str>,
        event: AuditEvent,
    ) -> Result<(), StoreError> {
        let renewal = renews
            .map(|serial| encode_versioned(RENEWAL_KIND, &serial))
            .transpose()?;
        let value = encode(ticket)?;
        let key = ticket.number.as_bytes();
        self.mutate(|| {
            self.transact(|tx| {
                let tickets = tx.tree(TICKETS);
                if let Some(old) = tx_get::<TicketRecord>(tickets, &ticket.number)?
                    && old.effective_state(ticket.created_at) == TicketState::Active
                {
                    return abort(StoreError::Conflict {
                        kind: "ticket",
                        key: ticket.number.clone(),
                    });
                }
                tickets.insert(key, value.as_slice())?;
                match &renewal {
                    Some(r) => tx.tree(RENEWALS).insert(key, r.as_slice())?,
                    None => tx.tree(RENEWALS).remove(key)?,
                };
                let entry = append_audit_tx(tx, &event)?;
                Ok(((), vec![entry]))
            })
        })
    }
}

impl SledStore {
    /// Redeems a ticket; for a renewal also records and schedules the supersession.
    fn redeem_with(
        &self,
        number: &str,
        password_mac: &[u8; 32],
        now: OffsetDateTime,
        cert: &CertRecord,
        supersede: Option<&Supersession>,
        event: AuditEvent,
    ) -> Result<TicketRecord, StoreError> {
        if cert.ticket_number != number {
            return Err(StoreError::Invalid {
                kind: "certificate",
                detail: format!(
                    "certificate {} names ticket {}, not {number}",
                    cert.serial, cert.ticket_number
                ),
            });
        }
        let cert_value = encode(cert)?;
        self.mutate(|| {
            self.transact(|tx| {
                let tickets = tx.tree(TICKETS);
                let mut t = tx_ticket(tickets, number)?;
                let actual = t.effective_state(now);
                if actual != TicketState::Active {
                    return abort(StoreError::StateMismatch { actual });
                }
                if !bool::from(t.password_mac.ct_eq(password_mac)) {
                    return abort(StoreError::PasswordMismatch {
                        number: number.to_owned(),
                    });
                }
                if let Some(sup) = supersede {
                    schedule_supersession_tx(tx, sup)?;
                }
                insert_cert_tx(tx, cert, &cert_value)?;
                t.state = TicketState::Redeemed;
                t.redeemed_serial = Some(cert.serial.clone());
                tickets.insert(number.as_bytes(), encode(&t).or_else(abort)?)?;
                let entry = append_audit_tx(tx, &event)?;
                Ok((t, vec![entry]))
            })
        })
    }
}

impl Store for SledStore {
    fn create_ticket(&self, ticket: &TicketRecord, event: AuditEvent) -> Result<(), StoreError> {
        self.create_ticket_with(ticket, None, event)
    }

    fn ticket(&self, number: &str) -> Result<Option<TicketRecord>, StoreError> {
        self.get(TICKETS, number)
    }

    fn record_failed_attempt(
        &self,
        number: &str,
        max_attempts: u32,
        now: OffsetDateTime,
        event_if_locked: AuditEvent,
    ) -> Result<TicketRecord, StoreError> {
        self.mutate(|| {
            self.transact(|tx| {
                let tickets = tx.tree(TICKETS);
                let mut t = tx_ticket(tickets, number)?;
                let active = t.effective_state(now) == TicketState::Active;
                t.failed_attempts = t.failed_attempts.saturating_add(1);
                let mut entries = Vec::new();
                if active && t.failed_attempts >= max_attempts {
                    t.state = TicketState::Locked;
                    entries.push(append_audit_tx(tx, &event_if_locked)?);
                }
                tickets.insert(number.as_bytes(), encode(&t).or_else(abort)?)?;
                Ok((t, entries))
            })
        })
    }

    fn set_ticket_state(
        &self,
        number: &str,
        from: TicketState,
        to: TicketState,
        event: AuditEvent,
    ) -> Result<TicketRecord, StoreError> {
        self.mutate(|| {
            self.transact(|tx| {
                let tickets = tx.tree(TICKETS);
                let mut t = tx_ticket(tickets, number)?;
                let actual = t.effective_state(OffsetDateTime::now_utc());
                if actual != from {
                    return abort(StoreError::StateMismatch { actual });
                }
                t.state = to;
                tickets.insert(number.as_bytes(), encode(&t).or_else(abort)?)?;
                let entry = append_audit_tx(tx, &event)?;
                Ok((t, vec![entry]))
            })
        })
    }

    fn redeem_ticket(
        &self,
        number: &str,
        password_mac: &[u8; 32],
        now: OffsetDateTime,
        cert: &CertRecord,
        event: AuditEvent,
    ) -> Result<TicketRecord, StoreError> {
        self.redeem_with(number, password_mac, now, cert, None, event)
    }

    fn ticket_counts(&self, now: OffsetDateTime) -> Result<Vec<(TicketState, u64)>, StoreError> {
        let mut counts = TicketState::ALL.map(|s| (s, 0u64));
        for kv in self.tree(TICKETS).iter() {
            let (k, v) = kv?;
            let t: TicketRecord = decode(&v, &String::from_utf8_lossy(&k))?;
            let state = t.effective_state(now);
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == state) {
                c.1 += 1;
            }
        }
        Ok(counts.to_vec())
    }

    fn certificate(&self, serial: &str) -> Result<Option<CertRecord>, StoreError> {
        self.get(CERTS, serial)
    }

    fn list_certificates(
        &self,
        filter: &CertFilter,
        after_serial: Option<&str>,
        limit: usize,
    ) -> Result<Vec<CertRecord>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        // The most selective index a set field allows; the certs tree itself otherwise.
        let index = [
            (IDX_DEVICE, &filter.device_id),
            (IDX_PERSON, &filter.person_id),
            (IDX_FACILITY, &filter.facility_id),
            (IDX_ISSUER, &filter.issuer_id),
        ]
        .into_iter()
        .find_map(|(tree, id)| id.as_deref().map(|id| (tree, id)));
        let index = match (index, filter.revoked, &filter.issuer_id) {
            // Revoked ones of an issuer: the revoked index is smaller still.
            (None | Some((IDX_ISSUER, _)), Some(true), Some(issuer)) => {
                Some((IDX_REVOKED, issuer.as_str()))
            }
            (index, ..) => index,
        };
        match index {
            Some((tree, id)) => {
                for serial in self.index_serials(tree, id, after_serial) {
                    let serial = serial?;
                    let cert = self.get::<CertRecord>(CERTS, &serial)?;
                    // The revoked index also holds serials known only by their revocation
                    // (reinstated after a restore): no certificate to list.
                    if cert.is_none() && tree == IDX_REVOKED {
                        continue;
                    }
                    let cert = cert.ok_or_else(|| StoreError::Corrupt {
                        kind: "index",
                        key: TREE_NAMES[tree].to_owned(),
                        detail: format!("names certificate {serial}, which does not exist"),
                    })?;
                    if filter.matches(&cert) && !self.renewed_excluded(filter, &cert)? {
                        out.push(cert);
                        if out.len() == limit {
                            break;
                        }
                    }
                }
            }
            None => {
                let start = match after_serial {
                    Some(a) => Bound::Excluded(a.as_bytes()),
                    None => Bound::Unbounded,
                };
                for kv in self
                    .tree(CERTS)
                    .range::<&[u8], _>((start, Bound::Unbounded))
                {
                    let (k, v) = kv?;
                    let cert: CertRecord = decode(&v, &String::from_utf8_lossy(&k))?;
                    if filter.matches(&cert) && !self.renewed_excluded(filter, &cert)? {
                        out.push(cert);
                        if out.len() == limit {
                            break;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    fn revoke(
        &self,
        target: &RevokeTarget,
        revocation: &Revocation,
        event: AuditEvent,
    ) -> Result<Vec<CertRecord>, StoreError> {
        self.revoke_inner(target, revocation, event, None)
            .map(|(certs, _)| certs)
    }

    fn revoke_and_cancel_tickets(
        &self,
        target: &RevokeTarget,
        revocation: &Revocation,
        event: AuditEvent,
        cancel_event: AuditEvent,
        now: OffsetDateTime,
    ) -> Result<(Vec<CertRecord>, Vec<String>), StoreError> {
        self.revoke_inner(target, revocation, event, Some((cancel_event, now)))
    }
    fn revoked_certificates(&self, issuer_id: &str) -> Result<Vec<CertRecord>, StoreError> {
        // Serials known only by their revocation (reinstated after a restore) have no
        // certificate to return.
        self.index_serials(IDX_REVOKED, issuer_id, None)
            .filter_map(|serial| match serial {
                Ok(serial) => self.get(CERTS, &serial).transpose(),
                Err(e) => Some(Err(e)),
            })
            .collect()
    }

    fn revocation_entries(&self, issuer_id: &str) -> Result<Vec<RevokedEntry>, StoreError> {
        self.tree(IDX_REVOKED)
            .scan_prefix(id_prefix(issuer_id))
            .values()
            .map(|v| decode_versioned(&v?, REVOKED_KIND, issuer_id))
            .collect()
    }

    fn certificate_counts(
        &self,
        issuer_id: &str,
        now: OffsetDateTime,
    ) -> Result<(u64, u64, u64), StoreError> {
        let total = self.meta_u64(&meta_key(META_TOTAL, issuer_id))?;
        let revoked = self.meta_u64(&meta_key(META_REVOKED, issuer_id))?;
        let prefix = id_prefix(issuer_id);
        let start = concat(&prefix, &time_key(now.unix_timestamp().saturating_add(1)));
        let mut unexpired = 0u64;
        for k in self.tree(IDX_EXPIRY).range(start..).keys() {
            if !k?.starts_with(&prefix) {
                break;
            }
            unexpired += 1;
        }
        Ok((total, revoked, unexpired))
    }

    fn create_renewal_ticket(
        &self,
        ticket: &TicketRecord,
        renews_serial: &str,
        event: AuditEvent,
    ) -> Result<(), StoreError> {
        self.create_ticket_with(ticket, Some(renews_serial), event)
    }

    fn ticket_renews(&self, number: &str) -> Result<Option<String>, StoreError> {
        self.tree(RENEWALS)
            .get(number.as_bytes())?
            .map(|v| decode_versioned(&v, RENEWAL_KIND, number))
            .transpose()
    }

    fn redeem_renewal(
        &self,
        number: &str,
        password_mac: &[u8; 32],
        now: OffsetDateTime,
        cert: &CertRecord,
        supersede: &Supersession,
        event: AuditEvent,
    ) -> Result<TicketRecord, StoreError> {
        if supersede.renewed_by != cert.serial {
            return Err(StoreError::Invalid {
                kind: "supersession",
                detail: format!(
                    "names {} as the renewing certificate, not {}",
                    supersede.renewed_by, cert.serial
                ),
            });
        }
        self.redeem_with(number, password_mac, now, cert, Some(supersede), event)
    }

    fn renewed_by(&self, serial: &str) -> Result<Option<String>, StoreError> {
        self.tree(RENEWED_BY)
            .get(serial.as_bytes())?
            .map(|v| decode_versioned(&v, RENEWAL_KIND, serial))
            .transpose()
    }

    fn apply_due_supersessions(
        &self,
        now: OffsetDateTime,
        limit: usize,
        revocation: &Revocation,
        event: AuditEvent,
    ) -> Result<Vec<CertRecord>, StoreError> {
        self.mutate(|| {
            // Under the writer mutex: the schedule cannot change between scan and commit.
            let end = time_key(now.unix_timestamp().saturating_add(1));
            let due: Vec<(IVec, String)> = self
                .tree(SUPERSEDE_DUE)
                .range(..end.as_slice())
                .keys()
                .take(limit)
                .map(|k| {
                    let k = k?;
                    let serial = std::str::from_utf8(k.get(8..).unwrap_or_default())
                        .map_err(|_| StoreError::Corrupt {
                            kind: "supersession",
                            key: hex::encode(&k),
                            detail: "serial is not UTF-8".to_owned(),
                        })?
                        .to_owned();
                    Ok((k, serial))
                })
                .collect::<Result<_, StoreError>>()?;
            if due.is_empty() {
                return Ok((Vec::new(), Vec::new()));
            }
            self.transact(|tx| {
                let certs = tx.tree(CERTS);
                let mut out = Vec::new();
                let mut entries = Vec::new();
                for (key, serial) in &due {
                    tx.tree(SUPERSEDE_DUE).remove(key)?;
                    let Some(mut cert) = tx_get::<CertRecord>(certs, serial)? else {
                        continue;
                    };
                    if cert.revocation.is_some() || cert.is_expired(now) {
                        continue;
                    }
                    cert.revocation = Some(revocation.clone());
                    certs.insert(serial.as_bytes(), encode(&cert).or_else(abort)?)?;
                    let entry = RevokedEntry {
                        serial: serial.clone(),
                        not_after: cert.not_after,
                        revocation: revocation.clone(),
                    };
                    tx.tree(IDX_REVOKED).insert(
                        idx_key(&cert.issuer_id, serial),
                        encode_versioned(REVOKED_KIND, &entry).or_else(abort)?,
                    )?;
                    bump_tx(tx, &meta_key(META_REVOKED, &cert.issuer_id))?;
                    entries.push(append_audit_tx(
                        tx,
                        &AuditEvent {
                            target: serial.clone(),
                            ..event.clone()
                        },
                    )?);
                    out.push(cert);
                }
                Ok((out, entries))
            })
        })
    }

    fn next_supersession(&self) -> Result<Option<Supersession>, StoreError> {
        let Some((k, v)) = self.tree(SUPERSEDE_DUE).first()? else {
            return Ok(None);
        };
        let corrupt = |detail: &str| StoreError::Corrupt {
            kind: "supersession",
            key: hex::encode(&k),
            detail: detail.to_owned(),
        };
        let due = k
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(|b| (u64::from_be_bytes(b) ^ (1 << 63)) as i64)
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
            .ok_or_else(|| corrupt("bad due time"))?;
        let serial = std::str::from_utf8(k.get(8..).unwrap_or_default())
            .map_err(|_| corrupt("serial is not UTF-8"))?
            .to_owned();
        let renewed_by = decode_versioned(&v, RENEWAL_KIND, &serial)?;
        Ok(Some(Supersession {
            serial,
            renewed_by,
            due,
        }))
    }

    fn count_expiring(
        &self,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let mut n = 0u64;
        for kv in self.tree(ISSUERS).iter() {
            let (id, _) = kv?;
            let issuer = String::from_utf8_lossy(&id);
            let prefix = id_prefix(&issuer);
            let start = concat(&prefix, &time_key(now.unix_timestamp().saturating_add(1)));
            let end = concat(&prefix, &time_key(until.unix_timestamp().saturating_add(1)));
            let skip = prefix.len() + 8;
            for k in self.tree(IDX_EXPIRY).range(start..end).keys() {
                let k = k?;
                let serial = k.get(skip..).unwrap_or_default();
                if self
                    .tree(IDX_REVOKED)
                    .contains_key(concat(&prefix, serial))?
                    || self.tree(RENEWED_BY).contains_key(serial)?
                {
                    continue;
                }
                n += 1;
            }
        }
        Ok(n)
    }

    fn put_issuer(&self, issuer: &IssuerRecord, event: AuditEvent) -> Result<(), StoreError> {
        let value = encode(issuer)?;
        self.mutate(|| {
            self.transact(|tx| {
                tx.tree(ISSUERS)
                    .insert(issuer.id.as_bytes(), value.as_slice())?;
                Ok(((), vec![append_audit_tx(tx, &event)?]))
            })
        })
    }

    fn issuers(&self) -> Result<Vec<IssuerRecord>, StoreError> {
        self.tree(ISSUERS)
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&v, &String::from_utf8_lossy(&k))
            })
            .collect()
    }

    fn reserve_crl_number(&self, issuer_id: &str) -> Result<u64, StoreError> {
        let key = meta_key(META_CRL_NUMBER, issuer_id);
        self.mutate(|| {
            self.transact(|tx| {
                let reserved = tx_u64(tx.tree(META), &key)?;
                let saved = tx_get::<CrlRecord>(tx.tree(CRLS), issuer_id)?.map_or(0, |c| c.number);
                let next = reserved.max(saved).checked_add(1).ok_or_else(|| {
                    ConflictableTransactionError::Abort(StoreError::Corrupt {
                        kind: "CRL number",
                        key: issuer_id.to_owned(),
                        detail: "exhausted".to_owned(),
                    })
                })?;
                tx.tree(META).insert(key.as_slice(), &next.to_be_bytes())?;
                Ok((next, Vec::new()))
            })
        })
    }

    fn save_crl(&self, crl: &CrlRecord, event: AuditEvent) -> Result<(), StoreError> {
        let value = encode(crl)?;
        let key = meta_key(META_CRL_NUMBER, &crl.issuer_id);
        self.mutate(|| {
            self.transact(|tx| {
                let crls = tx.tree(CRLS);
                if let Some(saved) = tx_get::<CrlRecord>(crls, &crl.issuer_id)? {
                    if saved == *crl {
                        return Ok(((), Vec::new()));
                    }
                    if crl.number <= saved.number {
                        return abort(StoreError::StaleCrl {
                            issuer_id: crl.issuer_id.clone(),
                            number: crl.number,
                            saved: saved.number,
                        });
                    }
                }
                crls.insert(crl.issuer_id.as_bytes(), value.as_slice())?;
                if tx_u64(tx.tree(META), &key)? < crl.number {
                    tx.tree(META)
                        .insert(key.as_slice(), &crl.number.to_be_bytes())?;
                }
                Ok(((), vec![append_audit_tx(tx, &event)?]))
            })
        })
    }

    fn latest_crl(&self, issuer_id: &str) -> Result<Option<CrlRecord>, StoreError> {
        self.get(CRLS, issuer_id)
    }

    fn append_audit(&self, event: AuditEvent) -> Result<AuditEntry, StoreError> {
        self.mutate(|| {
            self.transact(|tx| {
                let entry = append_audit_tx(tx, &event)?;
                Ok((entry.clone(), vec![entry]))
            })
        })
    }

    fn audit_entries(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_iter(from_seq, Bound::Unbounded)
            .take(limit)
            .collect()
    }

    fn verify_audit(&self) -> Result<AuditVerification, StoreError> {
        // The head first: entries appended while we read lie beyond it and are not checked.
        let head = self.audit_head()?;
        let mut last = ChainHead::GENESIS;
        let verification =
            audit::verify_chain(self.audit_iter(1, Bound::Included(head.seq)).inspect(|e| {
                if let Ok(e) = e {
                    last = e.head();
                }
            }));
        Ok(verification.ending_at(last, head))
    }

    fn durable_audit_head(&self) -> Result<ChainHead, StoreError> {
        // Read first, then flush: the flush covers every commit made before it started,
        // including the one that wrote this head.
        let head = self.audit_head()?;
        self.inner.db.flush()?;
        Ok(head)
    }

    fn reinstate_revocations(
        &self,
        issuer_id: &str,
        entries: &[RevokedEntry],
        actor: &str,
    ) -> Result<Vec<Reinstated>, StoreError> {
        self.mutate(|| {
            self.transact(|tx| {
                let certs = tx.tree(CERTS);
                let index = tx.tree(IDX_REVOKED);
                let mut out = Vec::with_capacity(entries.len());
                let mut audited = Vec::new();
                for e in entries {
                    let key = idx_key(issuer_id, &e.serial);
                    let indexed = index.get(key.as_slice())?.is_some();
                    let cert = tx_get::<CertRecord>(certs, &e.serial)?;
                    let (outcome, not_after, revocation) = match cert {
                        Some(mut c) if c.revocation.is_none() => {
                            c.revocation = Some(e.revocation.clone());
                            certs.insert(e.serial.as_bytes(), encode(&c).or_else(abort)?)?;
                            bump_tx(tx, &meta_key(META_REVOKED, issuer_id))?;
                            (
                                Reinstated::Revoked(e.serial.clone()),
                                c.not_after,
                                e.revocation.clone(),
                            )
                        }
                        Some(c) if !indexed => {
                            let r = c.revocation.clone().unwrap_or_else(|| e.revocation.clone());
                            (Reinstated::Indexed(e.serial.clone()), c.not_after, r)
                        }
                        None if !indexed => (
                            Reinstated::Unknown(e.serial.clone()),
                            e.not_after,
                            e.revocation.clone(),
                        ),
                        _ => {
                            out.push(Reinstated::Present(e.serial.clone()));
                            continue;
                        }
                    };
                    let entry = RevokedEntry {
                        serial: e.serial.clone(),
                        not_after,
                        revocation,
                    };
                    index.insert(
                        key.as_slice(),
                        encode_versioned(REVOKED_KIND, &entry).or_else(abort)?,
                    )?;
                    let what = match &outcome {
                        Reinstated::Revoked(_) => "certificate revoked again",
                        Reinstated::Indexed(_) => "revocation index entry restored",
                        _ => "serial unknown to the store (issued after the backup?)",
                    };
                    audited.push(append_audit_tx(
                        tx,
                        &AuditEvent::new(
                            actor,
                            "revocation.reinstated",
                            format!("serial:{}", e.serial),
                            format!(
                                "issuer={issuer_id} reason={} revoked_at={} from the last published CRL: {what}",
                                e.revocation.reason,
                                e.revocation.revoked_at.unix_timestamp()
                            ),
                        ),
                    )?);
                    out.push(outcome);
                }
                Ok((out, audited))
            })
        })
    }

    fn publication_lock(&self, issuer_id: &str) -> Result<super::PublicationLock, StoreError> {
        Ok(self.inner.publication.lock(issuer_id))
    }

    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<super::StoreChange>> {
        None
    }

    fn kind(&self) -> &'static str {
        "sled"
    }

    fn put_key_blob(&self, name: &str, blob: &[u8], event: AuditEvent) -> Result<(), StoreError> {
        self.put_key_blob_inner(name, blob, event)
    }

    fn key_blobs(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.key_blobs_inner()
    }

    fn backup_to(&self, path: &Path) -> Result<(), StoreError> {
        if path.exists() {
            return Err(StoreError::TargetExists {
                path: path.to_owned(),
            });
        }
        // Holding the writer mutex freezes the store's contents (reads go on); the copy is
        // therefore one point in time.
        let _writer = lock(&self.inner.writer);
        // A small cache for the copy: it is written once, in key order (sled's default 1 GiB
        // made a backup of a large store cost a GiB of memory).
        let dest = ::sled::Config::new()
            .path(path)
            .create_new(true)
            .cache_capacity(32 << 20)
            .use_compression(true)
            .compression_factor(ZSTD_LEVEL)
            .open()?;
        for (i, name) in TREE_NAMES.iter().enumerate() {
            let to = dest.open_tree(name)?;
            let mut batch = Batch::default();
            let mut n = 0usize;
            for kv in self.tree(i).iter() {
                let (k, v) = kv?;
                batch.insert(k, v);
                n += 1;
                if n == COPY_BATCH {
                    to.apply_batch(std::mem::take(&mut batch))?;
                    n = 0;
                }
            }
            to.apply_batch(batch)?;
        }
        dest.flush()?;
        Ok(())
    }
}

// ---- transactional helpers

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn tx_get<T: Record>(tree: &TransactionalTree, key: &str) -> TxResult<Option<T>> {
    match tree.get(key.as_bytes())? {
        None => Ok(None),
        Some(v) => decode(&v, key).map(Some).or_else(abort),
    }
}

fn tx_ticket(tickets: &TransactionalTree, number: &str) -> TxResult<TicketRecord> {
    match tx_get(tickets, number)? {
        Some(t) => Ok(t),
        None => abort(not_found("ticket", number)),
    }
}

fn tx_u64(tree: &TransactionalTree, key: &[u8]) -> TxResult<u64> {
    match tree.get(key)? {
        None => Ok(0),
        Some(v) => parse_u64(&v, key).or_else(abort),
    }
}

/// Adds one to the counter at `key` in `meta`.
fn bump_tx(tx: &Tx<'_>, key: &[u8]) -> TxResult<()> {
    let meta = tx.tree(META);
    let n = tx_u64(meta, key)?.saturating_add(1);
    meta.insert(key, &n.to_be_bytes())?;
    Ok(())
}

/// Inserts a new certificate with its indexes and counters; `Conflict` if the serial exists.
fn insert_cert_tx(tx: &Tx<'_>, cert: &CertRecord, value: &[u8]) -> TxResult<()> {
    let certs = tx.tree(CERTS);
    if certs.get(cert.serial.as_bytes())?.is_some() {
        return abort(StoreError::Conflict {
            kind: "certificate",
            key: cert.serial.clone(),
        });
    }
    certs.insert(cert.serial.as_bytes(), value)?;
    let s = &cert.serial;
    tx.tree(IDX_FACILITY)
        .insert(idx_key(&cert.facility_id, s), &[])?;
    tx.tree(IDX_PERSON)
        .insert(idx_key(&cert.person_id, s), &[])?;
    tx.tree(IDX_DEVICE)
        .insert(idx_key(&cert.device_id, s), &[])?;
    tx.tree(IDX_ISSUER)
        .insert(idx_key(&cert.issuer_id, s), &[])?;
    let expiry = concat(
        &concat(
            &id_prefix(&cert.issuer_id),
            &time_key(cert.not_after.unix_timestamp()),
        ),
        s.as_bytes(),
    );
    tx.tree(IDX_EXPIRY).insert(expiry, &[])?;
    bump_tx(tx, &meta_key(META_TOTAL, &cert.issuer_id))?;
    if let Some(revocation) = &cert.revocation {
        let entry = RevokedEntry {
            serial: s.clone(),
            not_after: cert.not_after,
            revocation: revocation.clone(),
        };
        tx.tree(IDX_REVOKED).insert(
            idx_key(&cert.issuer_id, s),
            encode_versioned(REVOKED_KIND, &entry).or_else(abort)?,
        )?;
        bump_tx(tx, &meta_key(META_REVOKED, &cert.issuer_id))?;
    }
    Ok(())
}

/// Records `sup.serial` as renewed by `sup.renewed_by` and schedules its supersession, unless
/// an earlier renewal already did; `Revoked` if the renewed certificate is revoked.
fn schedule_supersession_tx(tx: &Tx<'_>, sup: &Supersession) -> TxResult<()> {
    let Some(old) = tx_get::<CertRecord>(tx.tree(CERTS), &sup.serial)? else {
        return abort(not_found("certificate", &sup.serial));
    };
    if old.revocation.is_some() {
        return abort(StoreError::Revoked {
            serial: sup.serial.clone(),
        });
    }
    let renewed_by = tx.tree(RENEWED_BY);
    if renewed_by.get(sup.serial.as_bytes())?.is_some() {
        return Ok(());
    }
    let value = encode_versioned(RENEWAL_KIND, &sup.renewed_by).or_else(abort)?;
    renewed_by.insert(sup.serial.as_bytes(), value.as_slice())?;
    let key = concat(&time_key(sup.due.unix_timestamp()), sup.serial.as_bytes());
    tx.tree(SUPERSEDE_DUE).insert(key, value)?;
    Ok(())
}

/// Appends the next audit entry and moves the chain head, inside the transaction.
fn append_audit_tx(tx: &Tx<'_>, event: &AuditEvent) -> TxResult<AuditEntry> {
    let meta = tx.tree(META);
    let head = match meta.get(META_AUDIT_HEAD)? {
        None => ChainHead::GENESIS,
        Some(v) => match ChainHead::from_bytes(&v) {
            Some(h) => h,
            None => return abort(bad_head()),
        },
    };
    let entry = head.next_entry(OffsetDateTime::now_utc(), event);
    let value = encode_versioned(AUDIT_KIND, &entry).or_else(abort)?;
    tx.tree(AUDIT).insert(&entry.seq.to_be_bytes(), value)?;
    meta.insert(META_AUDIT_HEAD, &entry.head().to_bytes()[..])?;
    Ok(entry)
}

// ---- keys

const META_SCHEMA: &[u8] = b"schema";
const META_AUDIT_HEAD: &[u8] = b"audit_head";
/// `crl_number\0<issuer>`: the highest CRL number reserved or saved.
const META_CRL_NUMBER: &[u8] = b"crl_number\0";
/// `certs_total\0<issuer>`: certificates issued.
const META_TOTAL: &[u8] = b"certs_total\0";
/// `certs_revoked\0<issuer>`: certificates revoked.
const META_REVOKED: &[u8] = b"certs_revoked\0";

fn meta_key(prefix: &[u8], id: &str) -> Vec<u8> {
    concat(prefix, id.as_bytes())
}

/// `u32 BE length ‖ id`.
fn id_prefix(id: &str) -> Vec<u8> {
    let len = u32::try_from(id.len()).unwrap_or(u32::MAX);
    concat(&len.to_be_bytes(), id.as_bytes())
}

fn idx_key(id: &str, serial: &str) -> Vec<u8> {
    concat(&id_prefix(id), serial.as_bytes())
}

/// Unix seconds as 8 bytes whose byte order is the numeric order (sign bit flipped).
fn time_key(unix_seconds: i64) -> [u8; 8] {
    ((unix_seconds as u64) ^ (1 << 63)).to_be_bytes()
}

fn concat(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(a.len() + b.len());
    v.extend_from_slice(a);
    v.extend_from_slice(b);
    v
}

fn parse_u64(v: &IVec, key: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(v.as_ref())
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt {
            kind: "counter",
            key: String::from_utf8_lossy(key).replace('\0', "/"),
            detail: format!("{} bytes instead of 8", v.len()),
        })
}

fn not_found(kind: &'static str, key: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        key: key.to_owned(),
    }
}

fn bad_head() -> StoreError {
    StoreError::Corrupt {
        kind: "audit chain head",
        key: "meta/audit_head".to_owned(),
        detail: "wrong length".to_owned(),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent across a panic (a unit, or counters updated in one
    // step), so a poisoned lock is safe to use.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---- group commit

/// Shares flushes between concurrent writers (DESIGN §9).
///
/// Flushes are numbered. A writer that has committed notes `needed = started + 1`: any flush
/// numbered `needed` or later started after its commit, so covers it. If such a flush has
/// completed it returns; if none is running it runs one itself; otherwise it waits for the
/// running one to finish and checks again.
#[derive(Default)]
struct FlushCoordinator {
    state: Mutex<FlushState>,
    finished: Condvar,
    flushes: AtomicU64,
}

#[derive(Default)]
struct FlushState {
    /// Number of the most recently started flush.
    started: u64,
    /// Number of the most recent successfully completed flush.
    completed: u64,
    running: bool,
}

impl FlushCoordinator {
    /// Returns once a flush that started after this call began has succeeded, running
    /// `flush` itself if no flush is under way. An error of a flush this writer ran is
    /// returned; writers waiting on a failed flush try again with their own.
    fn wait_durable(
        &self,
        flush: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        let needed = state.started + 1;
        loop {
            if state.completed >= needed {
                return Ok(());
            }
            if !state.running {
                state.running = true;
                state.started += 1;
                let number = state.started;
                drop(state);
                let mut run = RunningFlush {
                    coordinator: self,
                    number,
                    ok: false,
                };
                self.flushes.fetch_add(1, Ordering::Relaxed);
                let result = flush();
                run.ok = result.is_ok();
                drop(run);
                // `number >= needed`: `started` was at least `needed - 1` when we noted it.
                return result;
            }
            state = self
                .finished
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Marks the end of a flush on drop, also when the flush panics.
struct RunningFlush<'a> {
    coordinator: &'a FlushCoordinator,
    number: u64,
    ok: bool,
}

impl Drop for RunningFlush<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.coordinator.state);
        state.running = false;
        if self.ok {
            state.completed = state.completed.max(self.number);
        }
        drop(state);
        self.coordinator.finished.notify_all();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::time::Duration;

    #[test]
    fn group_commit_shares_flushes_and_covers_every_commit() {
        const WRITERS: u64 = 32;
        let coordinator = FlushCoordinator::default();
        // `committed` counts commits; a flush makes durable what was committed when it began.
        let committed = AtomicU64::new(0);
        let durable = AtomicU64::new(0);
        let barrier = Barrier::new(WRITERS as usize);
        std::thread::scope(|s| {
            for _ in 0..WRITERS {
                s.spawn(|| {
                    barrier.wait();
                    let mine = committed.fetch_add(1, Ordering::SeqCst) + 1;
                    coordinator
                        .wait_durable(|| {
                            let covers = committed.load(Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(20));
                            durable.fetch_max(covers, Ordering::SeqCst);
                            Ok(())
                        })
                        .expect("the fake flush does not fail");
                    assert!(
                        durable.load(Ordering::SeqCst) >= mine,
                        "returned before its commit was flushed"
                    );
                });
            }
        });
        let flushes = coordinator.flushes.load(Ordering::Relaxed);
        assert!(
            flushes < WRITERS / 2,
            "{flushes} flushes for {WRITERS} writers"
        );
        assert!(flushes >= 1);
    }

    #[test]
    fn failed_flush_is_retried_by_a_waiter() {
        let coordinator = FlushCoordinator::default();
        let err = coordinator.wait_durable(|| {
            Err(StoreError::Io {
                path: PathBuf::from("/x"),
                source: std::io::Error::other("disk gone"),
            })
        });
        assert!(err.is_err());
        // The next writer is not fooled into thinking the failed flush covered it.
        let ran = AtomicU64::new(0);
        coordinator
            .wait_durable(|| {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .expect("second flush succeeds");
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }

    // ---- store behaviour (durability across reopen is in tests/store_durability.rs)

    use crate::store::{IssuerState, RECORD_VERSION};
    use pki_policy::domain::{Device, Enrollee, Facility, Person, RevocationReason, TargetOs};
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-04-01 09:00 UTC);
    const MAC: [u8; 32] = [7; 32];

    pub(crate) fn store() -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SledStore::open(&dir.path().join("db")).expect("open store");
        (dir, store)
    }

    pub(crate) fn ev(action: &str, target: &str) -> AuditEvent {
        AuditEvent::new("ops:test", action, target, "テスト")
    }

    fn ticket(number: &str) -> TicketRecord {
        TicketRecord {
            version: RECORD_VERSION,
            number: number.into(),
            password_mac: MAC,
            state: TicketState::Active,
            created_at: T0,
            expires_at: T0 + time::Duration::days(14),
            failed_attempts: 0,
            enrollee: Enrollee {
                facility: Facility {
                    id: "fac-1".into(),
                    name: "ひまわり訪問看護ステーション".into(),
                    prefecture: "愛知県".into(),
                    city: "豊田市".into(),
                    kind: "訪問看護".into(),
                },
                person: Person {
                    id: "per-1".into(),
                    family_name: "山田".into(),
                    given_name: "花子".into(),
                    family_name_kana: "ヤマダ".into(),
                    given_name_kana: "ハナコ".into(),
                    job: "看護師".into(),
                    email: "hanako@example.jp".into(),
                },
                device: Device {
                    id: "dev-1".into(),
                    os: TargetOs::Ios,
                    remark: "iPad".into(),
                },
            },
            cert_profile: "default".into(),
            approved_by: "office".into(),
            created_by: "portal:test".into(),
            redeemed_serial: None,
        }
    }

    fn cert(serial: &str, ticket: &str, facility: &str, not_after: OffsetDateTime) -> CertRecord {
        CertRecord {
            version: RECORD_VERSION,
            serial: serial.into(),
            issuer_id: "issuer-1".into(),
            der: vec![0x30, 0x03, 0x02, 0x01, 0x01],
            facility_id: facility.into(),
            person_id: format!("per-{serial}"),
            device_id: format!("dev-{serial}"),
            os: TargetOs::Windows,
            keystore_profile: "windows".into(),
            ticket_number: ticket.into(),
            not_before: T0,
            not_after,
            issued_at: T0,
            revocation: None,
        }
    }

    /// Creates ticket `number` and redeems it for a certificate `serial` of `facility`.
    pub(crate) fn issue(s: &SledStore, number: &str, serial: &str, facility: &str) -> CertRecord {
        s.create_ticket(&ticket(number), ev("ticket.create", number))
            .expect("create ticket");
        let c = cert(serial, number, facility, T0 + time::Duration::days(365));
        s.redeem_ticket(number, &MAC, T0, &c, ev("ticket.redeem", number))
            .expect("redeem");
        c
    }

    #[test]
    fn renewal_schedules_supersession_and_reminders_skip_renewed() {
        let (_d, s) = store();
        let issuer = IssuerRecord {
            version: RECORD_VERSION,
            id: "issuer-1".into(),
            state: IssuerState::Active,
            cert_der: vec![0x30, 0x00],
            not_before: T0,
            not_after: T0 + time::Duration::days(1000),
            created_at: T0,
        };
        s.put_issuer(&issuer, ev("issuer", "issuer-1"))
            .expect("issuer");
        let soon = T0 + time::Duration::days(20);
        s.create_ticket(&ticket("10000001"), ev("ticket.create", "1"))
            .expect("ticket");
        let old = cert("0a", "10000001", "fac-1", soon);
        s.redeem_ticket("10000001", &MAC, T0, &old, ev("redeem", "1"))
            .expect("redeem");
        let month = T0 + time::Duration::days(30);
        assert_eq!(s.count_expiring(T0, month).expect("count"), 1);
        assert_eq!(
            s.count_expiring(T0, T0 + time::Duration::days(10))
                .expect("count"),
            0
        );

        s.create_renewal_ticket(&ticket("10000002"), "0a", ev("ticket.create", "2"))
            .expect("renewal ticket");
        assert_eq!(
            s.ticket_renews("10000002").expect("read").as_deref(),
            Some("0a")
        );
        assert_eq!(s.ticket_renews("10000001").expect("read"), None);
        let mut new = cert("0b", "10000002", "fac-1", soon);
        new.person_id = old.person_id.clone();
        new.device_id = old.device_id.clone();
        let due = T0 + time::Duration::days(7);
        let sup = Supersession {
            serial: "0a".into(),
            renewed_by: "0b".into(),
            due,
        };
        s.redeem_renewal("10000002", &MAC, T0, &new, &sup, ev("redeem", "2"))
            .expect("redeem renewal");
        assert_eq!(s.renewed_by("0a").expect("read").as_deref(), Some("0b"));
        assert_eq!(s.next_supersession().expect("next"), Some(sup));
        // The renewed one is off the reminder list and the count; the new one is on them.
        assert_eq!(s.count_expiring(T0, month).expect("count"), 1);
        let reminders = s
            .list_certificates(
                &CertFilter {
                    expiring_before: Some(month),
                    ..Default::default()
                },
                None,
                10,
            )
            .expect("list");
        assert_eq!(
            reminders
                .iter()
                .map(|c| c.serial.as_str())
                .collect::<Vec<_>>(),
            ["0b"]
        );

        let revocation = Revocation {
            revoked_at: due,
            reason: RevocationReason::Superseded,
            invalidity_date: None,
        };
        let early = s
            .apply_due_supersessions(
                due - time::Duration::seconds(1),
                10,
                &revocation,
                ev("r", ""),
            )
            .expect("apply early");
        assert!(early.is_empty());
        assert!(
            !s.certificate("0a")
                .expect("read")
                .expect("exists")
                .is_revoked()
        );
        let applied = s
            .apply_due_supersessions(due, 10, &revocation, ev("revoke", ""))
            .expect("apply");
        assert_eq!(applied.len(), 1);
        let stored = s.certificate("0a").expect("read").expect("exists");
        assert_eq!(stored.revocation, Some(revocation.clone()));
        assert_eq!(s.next_supersession().expect("next"), None);
        assert_eq!(s.revocation_entries("issuer-1").expect("entries").len(), 1);
        assert_eq!(
            s.certificate_counts("issuer-1", T0).expect("counts").1,
            1,
            "revoked counter"
        );
        let last = s
            .audit_entries(1, 100)
            .expect("audit")
            .pop()
            .expect("entry");
        assert_eq!(last.target, "0a");

        // A revoked certificate cannot be renewed, and nothing of the attempt is stored.
        s.create_renewal_ticket(&ticket("10000003"), "0a", ev("ticket.create", "3"))
            .expect("renewal ticket");
        let third = cert("0c", "10000003", "fac-1", soon);
        let err = s.redeem_renewal(
            "10000003",
            &MAC,
            T0,
            &third,
            &Supersession {
                serial: "0a".into(),
                renewed_by: "0c".into(),
                due,
            },
            ev("redeem", "3"),
        );
        assert!(matches!(err, Err(StoreError::Revoked { .. })), "{err:?}");
        assert_eq!(s.certificate("0c").expect("read"), None);
        // A dead renewal ticket replaced by a new registration forgets what it renewed.
        let mut later = ticket("10000003");
        later.created_at = T0 + time::Duration::days(15);
        later.expires_at = later.created_at + time::Duration::days(14);
        s.create_ticket(&later, ev("ticket.create", "3"))
            .expect("replace dead ticket");
        assert_eq!(s.ticket_renews("10000003").expect("read"), None);
    }

    #[test]
    fn ticket_numbers_conflict_only_while_live() {
        let (_d, s) = store();
        s.create_ticket(&ticket("11111111"), ev("ticket.create", "11111111"))
            .expect("create");
        let err = s.create_ticket(&ticket("11111111"), ev("ticket.create", "11111111"));
        assert!(
            matches!(err, Err(StoreError::Conflict { kind: "ticket", .. })),
            "{err:?}"
        );
        // Once expired, the number may be reused; the new ticket replaces the dead one.
        let mut later = ticket("11111111");
        later.created_at = T0 + time::Duration::days(15);
        later.expires_at = later.created_at + time::Duration::days(14);
        later.cert_profile = "rsa".into();
        s.create_ticket(&later, ev("ticket.create", "11111111"))
            .expect("replace dead ticket");
        let stored = s.ticket("11111111").expect("read").expect("exists");
        assert_eq!(stored.cert_profile, "rsa");
        assert_eq!(s.audit_entries(1, 10).expect("audit").len(), 2);
    }

    #[test]
    fn failed_attempts_lock_the_ticket_at_the_limit() {
        let (_d, s) = store();
        s.create_ticket(&ticket("22222222"), ev("ticket.create", "x"))
            .expect("create");
        for i in 1..5 {
            let t = s
                .record_failed_attempt("22222222", 5, T0, ev("ticket.lock", "x"))
                .expect("attempt");
            assert_eq!((t.failed_attempts, t.state), (i, TicketState::Active));
        }
        let t = s
            .record_failed_attempt("22222222", 5, T0, ev("ticket.lock", "x"))
            .expect("attempt");
        assert_eq!((t.failed_attempts, t.state), (5, TicketState::Locked));
        // Refusals on a ticket that is no longer active are counted too (issue #12 item 4).
        let t = s
            .record_failed_attempt("22222222", 5, T0, ev("ticket.lock", "x"))
            .expect("attempt on a locked ticket");
        assert_eq!((t.failed_attempts, t.state), (6, TicketState::Locked));
        // The lock, not each attempt, is audited: create + lock.
        assert_eq!(s.audit_entries(1, 10).expect("audit").len(), 2);
        let err = s.record_failed_attempt("99999999", 5, T0, ev("ticket.lock", "x"));
        assert!(matches!(err, Err(StoreError::NotFound { .. })));
        // A locked ticket cannot be redeemed, even with the right password.
        let c = cert("aa", "22222222", "fac-1", T0 + time::Duration::days(1));
        let err = s.redeem_ticket("22222222", &MAC, T0, &c, ev("ticket.redeem", "x"));
        assert!(matches!(
            err,
            Err(StoreError::StateMismatch {
                actual: TicketState::Locked
            })
        ));
    }

    #[test]
    fn revoking_a_facility_cancels_its_live_tickets_in_the_same_change() {
        let (_d, s) = store();
        let c = issue(&s, "10000001", "a1", "fac-1");
        // Live tickets: two of fac-1 (one for another person), one of fac-2.
        let mut other_person = ticket("10000002");
        other_person.enrollee.person.id = "per-2".into();
        s.create_ticket(&other_person, ev("ticket.create", "x"))
            .expect("create");
        s.create_ticket(&ticket("10000003"), ev("ticket.create", "x"))
            .expect("create");
        let mut elsewhere = ticket("10000004");
        elsewhere.enrollee.facility.id = "fac-2".into();
        s.create_ticket(&elsewhere, ev("ticket.create", "x"))
            .expect("create");
        let revocation = Revocation {
            revoked_at: T0,
            reason: RevocationReason::CessationOfOperation,
            invalidity_date: None,
        };
        let before = s.audit_entries(1, 100).expect("audit").len();
        let (certs, cancelled) = s
            .revoke_and_cancel_tickets(
                &RevokeTarget::Facility("fac-1".into()),
                &revocation,
                ev("certificate.revoked", "facility:fac-1"),
                ev("ticket.cancelled", "x"),
                T0,
            )
            .expect("revoke");
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0].serial, c.serial);
        assert_eq!(
            cancelled,
            vec!["10000002".to_string(), "10000003".to_string()]
        );
        for n in ["10000002", "10000003"] {
            let t = s.ticket(n).expect("read").expect("exists");
            assert_eq!(t.state, TicketState::Cancelled, "{n}");
        }
        let t = s.ticket("10000004").expect("read").expect("exists");
        assert_eq!(
            t.state,
            TicketState::Active,
            "another facility's ticket is left alone"
        );
        let t = s.ticket("10000001").expect("read").expect("exists");
        assert_eq!(
            t.state,
            TicketState::Redeemed,
            "a redeemed ticket stays redeemed"
        );
        // One entry per revoked certificate, per cancelled ticket, and the count.
        let entries = s.audit_entries(1, 100).expect("audit");
        let new = &entries[before..];
        assert_eq!(new.len(), 4, "{new:?}");
        assert_eq!(new[1].target, "ticket:10000002");
        assert_eq!(new[3].action, "revocation.tickets_cancelled");
        assert!(
            new[3].detail.starts_with("2 active tickets cancelled"),
            "{new:?}"
        );
        // A serial target cancels nothing; the plain revoke never does.
        let (_, none) = s
            .revoke_and_cancel_tickets(
                &RevokeTarget::Serial(c.serial.clone()),
                &revocation,
                ev("certificate.revoked", "serial"),
                ev("ticket.cancelled", "x"),
                T0,
            )
            .expect("revoke serial");
        assert!(none.is_empty());
    }

    #[test]
    fn set_ticket_state_is_compare_and_set() {
        let (_d, s) = store();
        let mut t = ticket("33333333");
        // Valid around the real clock, since set_ticket_state judges expiry at "now".
        t.created_at = OffsetDateTime::now_utc();
        t.expires_at = t.created_at + time::Duration::days(1);
        s.create_ticket(&t, ev("ticket.create", "x"))
            .expect("create");
        let t = s
            .set_ticket_state(
                "33333333",
                TicketState::Active,
                TicketState::Cancelled,
                ev("ticket.cancel", "x"),
            )
            .expect("cancel");
        assert_eq!(t.state, TicketState::Cancelled);
        let err = s.set_ticket_state(
            "33333333",
            TicketState::Active,
            TicketState::Cancelled,
            ev("ticket.cancel", "x"),
        );
        assert!(matches!(
            err,
            Err(StoreError::StateMismatch {
                actual: TicketState::Cancelled
            })
        ));
        // An expired ticket reports Expired, not Active.
        s.create_ticket(&ticket("44444444"), ev("ticket.create", "y"))
            .expect("create");
        let err = s.set_ticket_state(
            "44444444",
            TicketState::Active,
            TicketState::Cancelled,
            ev("ticket.cancel", "y"),
        );
        assert!(matches!(
            err,
            Err(StoreError::StateMismatch {
                actual: TicketState::Expired
            })
        ));
    }

    #[test]
    fn redeem_checks_password_expiry_and_ticket_number() {
        let (_d, s) = store();
        s.create_ticket(&ticket("55555555"), ev("ticket.create", "x"))
            .expect("create");
        let c = cert("bb", "55555555", "fac-1", T0 + time::Duration::days(365));
        let err = s.redeem_ticket("55555555", &[8; 32], T0, &c, ev("ticket.redeem", "x"));
        assert!(
            matches!(err, Err(StoreError::PasswordMismatch { .. })),
            "{err:?}"
        );
        let late = T0 + time::Duration::days(14);
        let err = s.redeem_ticket("55555555", &MAC, late, &c, ev("ticket.redeem", "x"));
        assert!(matches!(
            err,
            Err(StoreError::StateMismatch {
                actual: TicketState::Expired
            })
        ));
        let other = cert("bb", "66666666", "fac-1", T0 + time::Duration::days(365));
        let err = s.redeem_ticket("55555555", &MAC, T0, &other, ev("ticket.redeem", "x"));
        assert!(matches!(err, Err(StoreError::Invalid { .. })));
        assert_eq!(s.certificate("bb").expect("read"), None);
        let t = s
            .redeem_ticket("55555555", &MAC, T0, &c, ev("ticket.redeem", "x"))
            .expect("redeem");
        assert_eq!(
            (t.state, t.redeemed_serial.as_deref()),
            (TicketState::Redeemed, Some("bb"))
        );
        assert_eq!(s.certificate("bb").expect("read"), Some(c));
    }

    #[test]
    fn counts_filters_and_revocation_index() {
        let (_d, s) = store();
        let a = issue(&s, "10000001", "a1", "fac-a");
        issue(&s, "10000002", "a2", "fac-a");
        issue(&s, "10000003", "b1", "fac-b");
        // One that expires early, for the unexpired count.
        s.create_ticket(&ticket("10000004"), ev("ticket.create", "x"))
            .expect("create");
        let short = cert("c1", "10000004", "fac-c", T0 + time::Duration::days(1));
        s.redeem_ticket("10000004", &MAC, T0, &short, ev("ticket.redeem", "x"))
            .expect("redeem");
        let revocation = Revocation {
            revoked_at: T0 + time::Duration::hours(1),
            reason: RevocationReason::KeyCompromise,
            invalidity_date: Some(T0),
        };
        let out = s
            .revoke(
                &RevokeTarget::Serial("a1".into()),
                &revocation,
                ev("certificate.revoke", "a1"),
            )
            .expect("revoke");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].revocation.as_ref(), Some(&revocation));

        let now = T0 + time::Duration::days(2);
        assert_eq!(
            s.certificate_counts("issuer-1", now).expect("counts"),
            (4, 1, 3)
        );
        assert_eq!(
            s.certificate_counts("issuer-2", now).expect("counts"),
            (0, 0, 0)
        );
        let entries = s.revocation_entries("issuer-1").expect("entries");
        assert_eq!(entries.len(), 1);
        assert_eq!(
            (entries[0].serial.as_str(), entries[0].not_after),
            ("a1", a.not_after)
        );
        assert_eq!(
            s.revoked_certificates("issuer-1").expect("revoked")[0].serial,
            "a1"
        );

        let serials = |f: CertFilter| -> Vec<String> {
            s.list_certificates(&f, None, 100)
                .expect("list")
                .into_iter()
                .map(|c| c.serial)
                .collect()
        };
        let fac_a = CertFilter {
            facility_id: Some("fac-a".into()),
            ..Default::default()
        };
        assert_eq!(serials(fac_a.clone()), ["a1", "a2"]);
        assert_eq!(
            serials(CertFilter {
                revoked: Some(false),
                ..fac_a
            }),
            ["a2"]
        );
        let issuer_revoked = CertFilter {
            issuer_id: Some("issuer-1".into()),
            revoked: Some(true),
            ..Default::default()
        };
        assert_eq!(serials(issuer_revoked), ["a1"]);
        assert_eq!(
            serials(CertFilter {
                revoked: Some(false),
                ..Default::default()
            }),
            ["a2", "b1", "c1"]
        );
        assert_eq!(
            serials(CertFilter {
                device_id: Some("dev-b1".into()),
                ..Default::default()
            }),
            ["b1"]
        );
        assert!(
            serials(CertFilter {
                facility_id: Some("fac".into()),
                ..Default::default()
            })
            .is_empty()
        );

        let counts = s.ticket_counts(T0).expect("ticket counts");
        assert_eq!(counts[0], (TicketState::Active, 0));
        assert_eq!(counts[1], (TicketState::Redeemed, 4));
        assert_eq!(counts.len(), TicketState::ALL.len());
    }

    #[test]
    fn crl_numbers_and_saved_crls() {
        let (_d, s) = store();
        assert_eq!(s.reserve_crl_number("issuer-1").expect("reserve"), 1);
        assert_eq!(s.reserve_crl_number("issuer-1").expect("reserve"), 2);
        assert_eq!(s.reserve_crl_number("root").expect("reserve"), 1);
        let crl = |number: u64, der: u8| CrlRecord {
            version: RECORD_VERSION,
            issuer_id: "issuer-1".into(),
            number,
            this_update: T0,
            next_update: T0 + time::Duration::days(1),
            der: vec![der],
        };
        s.save_crl(&crl(2, 1), ev("crl.publish", "issuer-1"))
            .expect("save");
        s.save_crl(&crl(2, 1), ev("crl.publish", "issuer-1"))
            .expect("same CRL again");
        let err = s.save_crl(&crl(2, 9), ev("crl.publish", "issuer-1"));
        assert!(matches!(
            err,
            Err(StoreError::StaleCrl {
                number: 2,
                saved: 2,
                ..
            })
        ));
        let err = s.save_crl(&crl(1, 1), ev("crl.publish", "issuer-1"));
        assert!(matches!(
            err,
            Err(StoreError::StaleCrl {
                number: 1,
                saved: 2,
                ..
            })
        ));
        // A CRL saved with a number above the reservations pushes them up.
        s.save_crl(&crl(10, 1), ev("crl.publish", "issuer-1"))
            .expect("save");
        assert_eq!(s.reserve_crl_number("issuer-1").expect("reserve"), 11);
        assert_eq!(
            s.latest_crl("issuer-1").expect("read").map(|c| c.number),
            Some(10)
        );
        assert_eq!(s.latest_crl("nobody").expect("read"), None);
        // Two saves audited, the no-op and the refusals not.
        assert_eq!(s.audit_entries(1, 100).expect("audit").len(), 2);
    }

    #[test]
    fn issuers_are_stored_and_audited() {
        let (_d, s) = store();
        let mut issuer = IssuerRecord {
            version: RECORD_VERSION,
            id: "issuer-1".into(),
            state: IssuerState::Active,
            cert_der: vec![1, 2, 3],
            not_before: T0,
            not_after: T0 + time::Duration::days(3650),
            created_at: T0,
        };
        s.put_issuer(&issuer, ev("issuer.create", "issuer-1"))
            .expect("put");
        issuer.state = IssuerState::Retiring;
        s.put_issuer(&issuer, ev("issuer.retire", "issuer-1"))
            .expect("put");
        assert_eq!(s.issuers().expect("list"), [issuer.clone()]);
        let bad = IssuerRecord {
            version: 9,
            ..issuer
        };
        assert!(matches!(
            s.put_issuer(&bad, ev("issuer.create", "x")),
            Err(StoreError::Invalid { .. })
        ));
        let log = s.audit_entries(1, 10).expect("audit");
        assert_eq!(
            log.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
            ["issuer.create", "issuer.retire"]
        );
    }

    #[test]
    fn audit_entries_page_and_chain() {
        let (_d, s) = store();
        for i in 0..7 {
            let e = s.append_audit(ev("test", &i.to_string())).expect("append");
            assert_eq!(e.seq, i + 1);
        }
        let page = s.audit_entries(3, 2).expect("page");
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(page[1].prev_hash, page[0].hash);
        assert!(s.audit_entries(8, 10).expect("past the end").is_empty());
        let v = s.verify_audit().expect("verify");
        assert!(v.ok, "{v:?}");
        assert_eq!(v.entries, 7);
    }

    #[test]
    fn removing_the_last_audit_entry_is_detected() {
        let (_d, s) = store();
        for i in 0..3 {
            s.append_audit(ev("test", &i.to_string())).expect("append");
        }
        s.tree(AUDIT).remove(3u64.to_be_bytes()).expect("remove");
        let v = s.verify_audit().expect("verify");
        assert!(!v.ok);
        assert_eq!(v.first_bad_entry, Some(3));
    }

    fn conf_says_compressed(dir: &Path) -> bool {
        let conf = std::fs::read(dir.join("conf")).expect("sled conf");
        compressed_store(dir) && conf.windows(21).any(|w| w == b"use_compression: true")
    }

    #[test]
    fn new_stores_are_compressed_and_old_ones_open_as_they_are() {
        let (dir, s) = store();
        issue(&s, "12121212", "ab12", "fac-1");
        drop(s);
        assert!(conf_says_compressed(&dir.path().join("db")));
        let s = SledStore::open(&dir.path().join("db")).expect("reopen compressed");
        assert!(s.certificate("ab12").expect("read").is_some());
        drop(s);

        // A store written before compression (sled's default): it opens, stays uncompressed
        // (sled refuses to switch), and its backup is compressed and restores.
        let old = dir.path().join("old");
        {
            let db = ::sled::Config::new()
                .path(&old)
                .use_compression(false)
                .open()
                .expect("an uncompressed sled");
            db.flush().expect("flush");
        }
        assert!(!compressed_store(&old));
        let s = SledStore::open(&old).expect("open the uncompressed store");
        issue(&s, "34343434", "cd34", "fac-1");
        let backup = dir.path().join("old-backup");
        s.backup_to(&backup).expect("backup");
        drop(s);
        assert!(!compressed_store(&old));
        let s = SledStore::open(&old).expect("reopen the uncompressed store");
        assert!(s.certificate("cd34").expect("read").is_some());
        assert!(conf_says_compressed(&backup));
        let restored = dir.path().join("old-restored");
        SledStore::restore_from(&backup, &restored).expect("restore");
        assert!(conf_says_compressed(&restored));
        let r = SledStore::open(&restored).expect("open restored");
        assert!(r.certificate("cd34").expect("read").is_some());
        assert!(r.verify_audit().expect("verify").ok);
    }

    #[test]
    fn backup_is_a_complete_copy_and_restores() {
        let (dir, s) = store();
        issue(&s, "12121212", "ab12", "fac-1");
        assert_eq!(s.reserve_crl_number("issuer-1").expect("reserve"), 1);
        let backup = dir.path().join("backup");
        s.backup_to(&backup).expect("backup");
        assert!(matches!(
            s.backup_to(&backup),
            Err(StoreError::TargetExists { .. })
        ));
        let missing = SledStore::restore_from(&dir.path().join("typo"), &dir.path().join("r2"));
        assert!(
            matches!(missing, Err(StoreError::NotFound { kind: "backup", .. })),
            "{missing:?}"
        );
        assert!(!dir.path().join("typo").exists() && !dir.path().join("r2").exists());
        // The live store goes on; the backup does not see later writes.
        s.append_audit(ev("after", "backup")).expect("append");

        let restored = dir.path().join("restored");
        SledStore::restore_from(&backup, &restored).expect("restore");
        let r = SledStore::open(&restored).expect("open restored");
        assert!(r.certificate("ab12").expect("read").is_some());
        assert_eq!(
            r.ticket("12121212").expect("read").map(|t| t.state),
            Some(TicketState::Redeemed)
        );
        assert_eq!(r.audit_entries(1, 10).expect("audit").len(), 2);
        assert!(r.verify_audit().expect("verify").ok);
        assert_eq!(r.reserve_crl_number("issuer-1").expect("reserve"), 2);
        assert_eq!(
            r.list_certificates(
                &CertFilter {
                    facility_id: Some("fac-1".into()),
                    ..Default::default()
                },
                None,
                10
            )
            .expect("list")
            .len(),
            1
        );
    }

    #[test]
    fn index_keys_keep_ids_apart_and_times_ordered() {
        // "ab" ‖ "c..." must not fall under the prefix of "a".
        assert!(!idx_key("ab", "c1").starts_with(&id_prefix("a")));
        assert!(idx_key("a", "bc1").starts_with(&id_prefix("a")));
        let times = [i64::MIN, -5, -1, 0, 1, 1_700_000_000, i64::MAX];
        for w in times.windows(2) {
            assert!(time_key(w[0]) < time_key(w[1]));
        }
    }

    #[test]
    fn bulk_load_skips_the_per_write_flush_and_keeps_the_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        {
            let bulk = SledStore::open_for_bulk_load(&path).expect("open bulk");
            for i in 0..3 {
                bulk.append_audit(AuditEvent {
                    actor: "test".into(),
                    action: "seed".into(),
                    target: format!("n:{i}"),
                    detail: String::new(),
                })
                .expect("append");
            }
            assert_eq!(
                bulk.flush_count(),
                0,
                "bulk writes must not flush one by one"
            );
            bulk.flush_all().expect("flush");
        }
        let store = SledStore::open(&path).expect("reopen");
        assert_eq!(store.audit_entries(1, 10).expect("audit").len(), 3);
        assert!(store.verify_audit().expect("verify").ok);
        store
            .append_audit(AuditEvent {
                actor: "test".into(),
                action: "serve".into(),
                target: "n:3".into(),
                detail: String::new(),
            })
            .expect("append");
        assert_eq!(store.flush_count(), 1, "a normal store flushes each write");
    }

    #[test]
    fn reinstate_revocations_revokes_reindexes_and_records_unknown_serials() {
        let (_d, s) = store();
        let c1 = issue(&s, "10000001", "0a01", "fac-1");
        let c2 = issue(&s, "10000002", "0a02", "fac-1");
        let rev = Revocation {
            revoked_at: T0 + time::Duration::days(1),
            reason: RevocationReason::KeyCompromise,
            invalidity_date: None,
        };
        s.revoke(
            &RevokeTarget::Serial(c1.serial.clone()),
            &rev,
            ev("certificate.revoked", "0a01"),
        )
        .expect("revoke");
        assert!(
            s.tamper_remove_revoked_index("issuer-1", "0a01")
                .expect("tamper")
        );
        let entry = |serial: &str| RevokedEntry {
            serial: serial.into(),
            not_after: T0 + time::Duration::days(365),
            revocation: rev.clone(),
        };
        let before = s.durable_audit_head().expect("head");
        let done = s
            .reinstate_revocations(
                "issuer-1",
                &[entry("0a01"), entry("0a02"), entry("0a03")],
                "cli:test",
            )
            .expect("reinstate");
        assert_eq!(
            done,
            vec![
                Reinstated::Indexed("0a01".into()),
                Reinstated::Revoked("0a02".into()),
                Reinstated::Unknown("0a03".into()),
            ]
        );
        let listed: Vec<String> = s
            .revocation_entries("issuer-1")
            .expect("entries")
            .into_iter()
            .map(|e| e.serial)
            .collect();
        assert_eq!(listed, ["0a01", "0a02", "0a03"]);
        let c2 = s.certificate(&c2.serial).expect("read").expect("exists");
        assert_eq!(
            c2.revocation,
            Some(rev.clone()),
            "revoked with the published time and reason"
        );
        // The index-only serial has no certificate to list.
        assert_eq!(
            s.revoked_certificates("issuer-1").expect("revoked").len(),
            2
        );
        let after = s.durable_audit_head().expect("head");
        assert_eq!(after.seq, before.seq + 3, "one audit entry per change");
        let audited = s.audit_entries(before.seq + 1, 10).expect("audit");
        assert!(
            audited
                .iter()
                .all(|e| e.action == "revocation.reinstated" && e.actor == "cli:test")
        );
        assert!(s.verify_audit().expect("verify").ok);
        // Idempotent: nothing missing any more, nothing written.
        let again = s
            .reinstate_revocations(
                "issuer-1",
                &[entry("0a01"), entry("0a02"), entry("0a03")],
                "cli:test",
            )
            .expect("reinstate");
        assert!(
            again.iter().all(|r| matches!(r, Reinstated::Present(_))),
            "{again:?}"
        );
        assert_eq!(s.durable_audit_head().expect("head"), after);
    }
}
