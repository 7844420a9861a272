//! What sled needs of the several-node methods (issue #15): process-local publication locks
//! and key blobs (a tree, written in one transaction with its audit entry).

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex};

use super::{KEY_BLOBS, SledStore, StoreError, abort, append_audit_tx, lock};
use crate::store::{AuditEvent, PublicationLock, validate_key_blob_name};

/// Issuers whose publication lock is held in this process.
#[derive(Default)]
pub(super) struct PublicationLocks {
    shared: Arc<(Mutex<HashSet<String>>, Condvar)>,
}

/// Releases one issuer's lock on drop.
struct Held {
    shared: Arc<(Mutex<HashSet<String>>, Condvar)>,
    issuer_id: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        let (set, freed) = &*self.shared;
        lock(set).remove(&self.issuer_id);
        freed.notify_all();
    }
}

impl PublicationLocks {
    /// Waits until no one else holds `issuer_id`'s lock, then holds it.
    pub(super) fn lock(&self, issuer_id: &str) -> PublicationLock {
        let (set, freed) = &*self.shared;
        let mut held = lock(set);
        while held.contains(issuer_id) {
            held = freed
                .wait(held)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        held.insert(issuer_id.to_owned());
        PublicationLock::new(
            issuer_id,
            Box::new(Held {
                shared: self.shared.clone(),
                issuer_id: issuer_id.to_owned(),
            }),
        )
    }
}

impl SledStore {
    pub(super) fn put_key_blob_inner(
        &self,
        name: &str,
        blob: &[u8],
        event: AuditEvent,
    ) -> Result<(), StoreError> {
        validate_key_blob_name(name)?;
        self.mutate(|| {
            self.transact(|tx| {
                let tree = tx.tree(KEY_BLOBS);
                if let Some(old) = tree.get(name.as_bytes())? {
                    if old.as_ref() == blob {
                        return Ok(((), Vec::new()));
                    }
                    return abort(StoreError::Conflict {
                        kind: "key blob",
                        key: name.to_owned(),
                    });
                }
                tree.insert(name.as_bytes(), blob)?;
                Ok(((), vec![append_audit_tx(tx, &event)?]))
            })
        })
    }

    pub(super) fn key_blobs_inner(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.tree(KEY_BLOBS)
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let name = String::from_utf8(k.to_vec()).map_err(|_| StoreError::Corrupt {
                    kind: "key blob",
                    key: hex::encode(&k),
                    detail: "name is not UTF-8".to_owned(),
                })?;
                Ok((name, v.to_vec()))
            })
            .collect()
    }
}
