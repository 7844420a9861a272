//! A sled store as an engine-neutral [`ImageRow`] stream, both ways: the source of
//! `store copy` (sled -> PostgreSQL) and the target of a PostgreSQL backup (a new sled store).

use std::collections::HashMap;
use std::path::Path;

use ::sled::Batch;

use super::{
    AUDIT, AUDIT_KIND, CERTS, CRLS, IDX_DEVICE, IDX_EXPIRY, IDX_FACILITY, IDX_ISSUER, IDX_PERSON,
    IDX_REVOKED, ISSUERS, KEY_BLOBS, META, META_AUDIT_HEAD, META_CRL_NUMBER, META_REVOKED,
    META_TOTAL, RENEWAL_KIND, RENEWALS, RENEWED_BY, REVOKED_KIND, SUPERSEDE_DUE, SledStore,
    StoreError, TICKETS, concat, decode, decode_versioned, encode, encode_versioned, id_prefix,
    idx_key, lock, meta_key, parse_u64, time_key,
};
use crate::audit::ChainHead;
use crate::store::image::ImageRow;
use crate::store::{CertRecord, CrlRecord, IssuerRecord, RevokedEntry, TicketRecord};

/// Rows per batch written to the new store.
const BATCH: usize = 10_000;

fn utf8(bytes: &[u8], kind: &'static str) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| StoreError::Corrupt {
        kind,
        key: hex::encode(bytes),
        detail: "key is not UTF-8".to_owned(),
    })
}

/// Splits `u32 BE length ‖ id ‖ rest`.
fn split_prefixed(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(key.get(..4)?.try_into().ok()?) as usize;
    let id = key.get(4..4 + len)?;
    Some((id, key.get(4 + len..)?))
}

impl SledStore {
    /// Hands every record to `f` as [`ImageRow`]s (issuers first, then tickets,
    /// certificates, the revocation index, supersessions, CRLs, CRL numbers, audit entries in
    /// order, key blobs), holding the writer mutex so the image is one point in time.
    pub fn export_image(
        &self,
        mut f: impl FnMut(ImageRow) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let _writer = lock(&self.inner.writer);
        for kv in self.tree(ISSUERS).iter() {
            let (k, v) = kv?;
            f(ImageRow::Issuer(decode::<IssuerRecord>(
                &v,
                &utf8(&k, "issuer")?,
            )?))?;
        }
        for kv in self.tree(TICKETS).iter() {
            let (k, v) = kv?;
            let number = utf8(&k, "ticket")?;
            let t: TicketRecord = decode(&v, &number)?;
            let renews = self
                .tree(RENEWALS)
                .get(&k)?
                .map(|r| decode_versioned::<String>(&r, RENEWAL_KIND, &number))
                .transpose()?;
            f(ImageRow::Ticket(t, renews))?;
        }
        for kv in self.tree(CERTS).iter() {
            let (k, v) = kv?;
            f(ImageRow::Cert(decode::<CertRecord>(
                &v,
                &utf8(&k, "certificate")?,
            )?))?;
        }
        for kv in self.tree(IDX_REVOKED).iter() {
            let (k, v) = kv?;
            let (issuer, _) = split_prefixed(&k).ok_or_else(|| StoreError::Corrupt {
                kind: "index",
                key: "idx_revoked".to_owned(),
                detail: "bad key".to_owned(),
            })?;
            let issuer = utf8(issuer, "index")?;
            let entry: RevokedEntry = decode_versioned(&v, REVOKED_KIND, &issuer)?;
            f(ImageRow::Revoked(issuer, entry))?;
        }
        let mut due = HashMap::new();
        for k in self.tree(SUPERSEDE_DUE).iter().keys() {
            let k = k?;
            let (Some(t), Some(serial)) = (k.get(..8), k.get(8..)) else {
                continue;
            };
            let secs = (u64::from_be_bytes(t.try_into().unwrap_or([0; 8])) ^ (1 << 63)) as i64;
            if let Ok(t) = time::OffsetDateTime::from_unix_timestamp(secs) {
                due.insert(serial.to_vec(), t);
            }
        }
        for kv in self.tree(RENEWED_BY).iter() {
            let (k, v) = kv?;
            let serial = utf8(&k, "renewal")?;
            let by: String = decode_versioned(&v, RENEWAL_KIND, &serial)?;
            let when = due.get(k.as_ref()).copied();
            f(ImageRow::Supersession(serial, by, when))?;
        }
        for kv in self.tree(CRLS).iter() {
            let (k, v) = kv?;
            f(ImageRow::Crl(decode::<CrlRecord>(&v, &utf8(&k, "CRL")?)?))?;
        }
        for kv in self.tree(META).scan_prefix(META_CRL_NUMBER) {
            let (k, v) = kv?;
            let issuer = utf8(&k[META_CRL_NUMBER.len()..], "CRL number")?;
            f(ImageRow::CrlNumber(issuer, parse_u64(&v, &k)?))?;
        }
        let head = self.audit_head()?;
        for e in self.audit_iter(1, std::ops::Bound::Included(head.seq)) {
            f(ImageRow::Audit(e?))?;
        }
        for (name, blob) in self.key_blobs_inner()? {
            f(ImageRow::KeyBlob(name, blob))?;
        }
        Ok(())
    }

    /// Creates a new store at `path` (which must not exist) holding exactly `rows`, and
    /// flushes it. Used for backups of a PostgreSQL store.
    pub fn create_from_image(
        path: &Path,
        rows: impl Iterator<Item = Result<ImageRow, StoreError>>,
    ) -> Result<(), StoreError> {
        if path.exists() {
            return Err(StoreError::TargetExists {
                path: path.to_owned(),
            });
        }
        let store = Self::open_with(path, false, 32 << 20)?;
        let mut batches: Vec<Batch> = (0..store.inner.trees.len())
            .map(|_| Batch::default())
            .collect();
        let mut pending = 0usize;
        let mut counters: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut head = ChainHead::GENESIS;
        let mut crls: HashMap<String, CrlRecord> = HashMap::new();
        for row in rows {
            let row = row?;
            match row {
                ImageRow::Issuer(i) => batches[ISSUERS].insert(i.id.as_bytes(), encode(&i)?),
                ImageRow::Ticket(t, renews) => {
                    if let Some(r) = renews {
                        batches[RENEWALS]
                            .insert(t.number.as_bytes(), encode_versioned(RENEWAL_KIND, &r)?);
                    }
                    batches[TICKETS].insert(t.number.as_bytes(), encode(&t)?);
                }
                ImageRow::Cert(c) => {
                    let s = &c.serial;
                    batches[CERTS].insert(s.as_bytes(), encode(&c)?);
                    batches[IDX_FACILITY].insert(idx_key(&c.facility_id, s), &[]);
                    batches[IDX_PERSON].insert(idx_key(&c.person_id, s), &[]);
                    batches[IDX_DEVICE].insert(idx_key(&c.device_id, s), &[]);
                    batches[IDX_ISSUER].insert(idx_key(&c.issuer_id, s), &[]);
                    let expiry = concat(
                        &concat(
                            &id_prefix(&c.issuer_id),
                            &time_key(c.not_after.unix_timestamp()),
                        ),
                        s.as_bytes(),
                    );
                    batches[IDX_EXPIRY].insert(expiry, &[]);
                    *counters
                        .entry(meta_key(META_TOTAL, &c.issuer_id))
                        .or_default() += 1;
                    if c.revocation.is_some() {
                        *counters
                            .entry(meta_key(META_REVOKED, &c.issuer_id))
                            .or_default() += 1;
                    }
                }
                ImageRow::Revoked(issuer, e) => batches[IDX_REVOKED].insert(
                    idx_key(&issuer, &e.serial),
                    encode_versioned(REVOKED_KIND, &e)?,
                ),
                ImageRow::Supersession(serial, by, due) => {
                    let v = encode_versioned(RENEWAL_KIND, &by)?;
                    if let Some(due) = due {
                        let key = concat(&time_key(due.unix_timestamp()), serial.as_bytes());
                        batches[SUPERSEDE_DUE].insert(key, v.clone());
                    }
                    batches[RENEWED_BY].insert(serial.as_bytes(), v);
                }
                ImageRow::Crl(c) => {
                    // sled keeps the newest CRL of each issuer.
                    if crls
                        .get(&c.issuer_id)
                        .is_none_or(|old| old.number < c.number)
                    {
                        crls.insert(c.issuer_id.clone(), c);
                    }
                }
                ImageRow::CrlNumber(issuer, n) => {
                    let key = meta_key(META_CRL_NUMBER, &issuer);
                    let v = counters.entry(key).or_default();
                    *v = (*v).max(n);
                }
                ImageRow::Audit(e) => {
                    if e.seq != head.seq + 1 {
                        return Err(StoreError::Corrupt {
                            kind: AUDIT_KIND,
                            key: e.seq.to_string(),
                            detail: format!("expected entry {}", head.seq + 1),
                        });
                    }
                    head = e.head();
                    batches[AUDIT].insert(&e.seq.to_be_bytes(), encode_versioned(AUDIT_KIND, &e)?);
                }
                ImageRow::KeyBlob(name, blob) => batches[KEY_BLOBS].insert(name.as_bytes(), blob),
            }
            pending += 1;
            if pending >= BATCH {
                store.apply(&mut batches)?;
                pending = 0;
            }
        }
        for c in crls.into_values() {
            batches[CRLS].insert(c.issuer_id.as_bytes(), encode(&c)?);
        }
        for (k, v) in counters {
            batches[META].insert(k, &v.to_be_bytes());
        }
        batches[META].insert(META_AUDIT_HEAD, &head.to_bytes()[..]);
        store.apply(&mut batches)?;
        store.flush_all()
    }

    fn apply(&self, batches: &mut [Batch]) -> Result<(), StoreError> {
        for (i, b) in batches.iter_mut().enumerate() {
            self.tree(i).apply_batch(std::mem::take(b))?;
        }
        Ok(())
    }
}
