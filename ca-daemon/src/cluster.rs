//! Several daemons on one PostgreSQL store (issue #15, `docs/cluster.md`): what a node does
//! beyond what a single daemon does.
//!
//! - **Connecting** ([`connect_store`]): the URL from `--store` / `CA_DAEMON_STORE` / `store =`,
//!   the password from a file (never the command line, never a log line).
//! - **Keys across nodes** ([`publish_keys`], [`adopt_keys`]): `issuer rotate` runs on one node's
//!   data dir. That node puts the new issuer's files into the database as *key blobs* (the two
//!   keys sealed under the daemon passphrase, exactly the bytes of `issuer.key.sealed` and
//!   `ocsp.key.sealed`, and the two certificates), plus the root CRL re-signed at the rotation.
//!   Every other node writes the blobs it lacks into its own `keys/` (checked against its root
//!   first) and reloads. The database never sees an unsealed key, and a blob only unseals with
//!   the passphrase the nodes share, so write access to the database is not enough to plant
//!   an issuer (its certificate must also be signed by the root, which stays offline). This is
//!   how EJBCA keeps soft tokens in its database; it was chosen over a shared file system (one
//!   more thing to make highly available) and over copying files by hand (the issue's ask).
//! - **Health** ([`run_db_health`]): while the database is unreachable, enrollment is
//!   NOT_SERVING (it needs the database) and revocation stays SERVING: CRLs and cached OCSP
//!   answers come from memory until their `nextUpdate`.
//!
//! Reacting to other nodes' changes (revocations, CRLs, issuers) is the authority's job:
//! `authority/cluster.rs`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::audit::AuditEvent;
use crate::pki::{self, PkiError};
use crate::server::ServeError;
use crate::store::{IssuerState, Store, StoreError};

/// Key-blob name of an issuer's file.
fn issuer_blob_name(issuer_id: &str, file: &str) -> String {
    format!("issuers/{issuer_id}/{file}")
}

/// Key-blob name of a root CRL (zero-padded, so names sort by number).
fn root_crl_blob_name(number: u64) -> String {
    format!("root-crl/{number:020}.crl")
}

/// Errors of the cluster helpers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The data dir's keys could not be read or written.
    #[error("keys: {0}")]
    Keys(#[from] PkiError),
    /// A blob from the database is not what it claims to be.
    #[error("key blob {name}: {reason}")]
    BadBlob {
        /// The blob's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Reads the PostgreSQL password file (trailing newline dropped), if one is given.
fn read_password(path: Option<&Path>) -> Result<Option<Zeroizing<String>>, ServeError> {
    let Some(path) = path else { return Ok(None) };
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
        ServeError::Store(format!(
            "cannot read the store password file {}: {e}",
            path.display()
        ))
    })?);
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        ServeError::Store(format!(
            "the store password file {} is not UTF-8",
            path.display()
        ))
    })?;
    let text = text.trim_end_matches(['\n', '\r']);
    if text.is_empty() {
        return Err(ServeError::Store(format!(
            "the store password file {} is empty",
            path.display()
        )));
    }
    Ok(Some(Zeroizing::new(text.to_owned())))
}

/// Connects to the PostgreSQL store (applying migrations under a lock), from a blocking
/// context (operator commands, or inside `spawn_blocking`).
pub fn connect_store_blocking(
    url: &str,
    password_file: Option<&Path>,
) -> Result<crate::store::pg::PgStore, ServeError> {
    let password = read_password(password_file)?;
    let opts = crate::store::pg::PgOptions::from_url(url, password)
        .map_err(|e| ServeError::Store(e.to_string()))?;
    crate::store::pg::PgStore::connect(&opts).map_err(|e| ServeError::Store(e.to_string()))
}

/// Connects to the PostgreSQL store (applying migrations under a lock) for `serve`.
pub async fn connect_store(
    url: &str,
    password_file: Option<&Path>,
) -> Result<Arc<dyn Store>, ServeError> {
    let (url, file) = (url.to_owned(), password_file.map(Path::to_path_buf));
    let store = tokio::task::spawn_blocking(move || connect_store_blocking(&url, file.as_deref()))
        .await
        .map_err(|e| ServeError::Startup(e.to_string()))??;
    tracing::info!(store = store.kind(), "connected to the shared store");
    Ok(Arc::new(store))
}

/// Puts this data dir's issuers (sealed keys and certificates) and its root CRL into the
/// store, so the other nodes can adopt them. Blobs already there are left alone; an OCSP
/// responder renewed on this node differs from the shared one and stays local (each node may
/// sign OCSP with its own responder certificate). Returns how many blobs were new.
pub fn publish_keys(
    data_dir: &Path,
    store: &dyn Store,
    actor: &str,
) -> Result<usize, ClusterError> {
    let have: std::collections::HashMap<String, Vec<u8>> = store.key_blobs()?.into_iter().collect();
    let layout = pki::Layout::new(data_dir);
    let meta = pki::PkiMetadata::read(&layout)?;
    let mut added = 0;
    let mut put = |name: String, bytes: &[u8], what: &str| -> Result<(), ClusterError> {
        match have.get(&name) {
            Some(existing) if existing == bytes => return Ok(()),
            // A locally renewed responder: the first one shared stays the shared one.
            Some(_) if name.contains("/ocsp.") => return Ok(()),
            _ => {}
        }
        let event = AuditEvent::new(actor, "key.share", name.clone(), what);
        match store.put_key_blob(&name, bytes, event) {
            Ok(()) => {
                added += 1;
                Ok(())
            }
            Err(StoreError::Conflict { .. }) if name.contains("/ocsp.") => Ok(()),
            Err(e) => Err(e.into()),
        }
    };
    for id in &meta.issuers {
        if !layout.issuer_dir(id).is_dir() {
            continue;
        }
        let files = pki::issuer_files(data_dir, id)?;
        for (file, bytes) in pki::ISSUER_FILES.iter().zip(&files) {
            let what = if file.ends_with(".sealed") {
                "sealed key (under the daemon passphrase) shared with the other nodes"
            } else {
                "certificate shared with the other nodes"
            };
            put(issuer_blob_name(id, file), bytes, what)?;
        }
    }
    let (number, der) = pki::root_crl_file(data_dir)?;
    if number > 0 {
        put(
            root_crl_blob_name(number),
            &der,
            "root CRL shared with the other nodes",
        )?;
    }
    if added > 0 {
        tracing::info!(
            blobs = added,
            "shared this node's issuer files with the cluster"
        );
    }
    Ok(added)
}

/// Writes into this data dir the issuers and the newest root CRL that other nodes shared
/// (see [`publish_keys`]) and that it lacks, and points `keys/active-issuer` at the store's
/// active issuer when that one is newer than the local one. Returns whether anything changed
/// (then the caller reloads the issuers).
pub fn adopt_keys(data_dir: &Path, store: &dyn Store) -> Result<bool, ClusterError> {
    let blobs = store.key_blobs()?;
    let mut changed = false;
    // Issuers: the four files each, by id.
    let mut by_issuer: std::collections::BTreeMap<String, Vec<(String, Vec<u8>)>> =
        std::collections::BTreeMap::new();
    let mut newest_root_crl: Option<(u64, Vec<u8>)> = None;
    for (name, bytes) in blobs {
        if let Some(rest) = name.strip_prefix("issuers/") {
            if let Some((id, file)) = rest.split_once('/') {
                by_issuer
                    .entry(id.to_owned())
                    .or_default()
                    .push((file.to_owned(), bytes));
            }
        } else if let Some(rest) = name.strip_prefix("root-crl/") {
            let number = rest
                .strip_suffix(".crl")
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| ClusterError::BadBlob {
                    name: name.clone(),
                    reason: "not root-crl/<number>.crl".into(),
                })?;
            if newest_root_crl.as_ref().is_none_or(|(n, _)| number > *n) {
                newest_root_crl = Some((number, bytes));
            }
        }
    }
    let layout = pki::Layout::new(data_dir);
    for (id, mut files) in by_issuer {
        if layout.issuer_dir(&id).is_dir() {
            continue;
        }
        let mut ordered = Vec::with_capacity(pki::ISSUER_FILES.len());
        for want in pki::ISSUER_FILES {
            match files.iter().position(|(f, _)| f == want) {
                Some(i) => ordered.push(files.swap_remove(i).1),
                // Not all there yet (the sharing node is still writing): next time.
                None => break,
            }
        }
        if ordered.len() == pki::ISSUER_FILES.len() {
            changed |= pki::adopt_issuer(data_dir, &id, &ordered)?;
        }
    }
    if let Some((number, der)) = newest_root_crl {
        let root = pki::read_cert_pem(&layout.root_cert())?;
        crate::root_crl::check_signature(&der, &root).map_err(|reason| ClusterError::BadBlob {
            name: root_crl_blob_name(number),
            reason,
        })?;
        changed |= pki::adopt_root_crl(data_dir, number, &der)?;
    }
    // The active issuer: the newer of the local one and the store's.
    let store_active = store
        .issuers()?
        .into_iter()
        .find(|i| i.state == IssuerState::Active)
        .map(|i| i.id);
    if let Some(wanted) = store_active {
        let local = pki::active_issuer_id(data_dir)?;
        if wanted != local && layout.issuer_dir(&wanted).is_dir() {
            let meta = pki::PkiMetadata::read(&layout)?;
            let pos = |id: &str| meta.issuers.iter().position(|i| i == id);
            if pos(&wanted) > pos(&local) {
                pki::set_active_issuer(data_dir, &wanted)?;
                tracing::info!(issuer_id = %wanted, "switching to the issuer another node made active");
                changed = true;
            }
        }
    }
    Ok(changed)
}

/// Health of a node on a shared store: pings the database every second; enrollment is
/// NOT_SERVING while it does not answer, revocation SERVING unless the CRL guard blocks.
pub async fn run_db_health(
    reporter: tonic_health::server::HealthReporter,
    store: Arc<dyn Store>,
    crl_blocked: impl Fn() -> bool + Send + 'static,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last: (Option<bool>, Option<bool>) = (None, None);
    loop {
        tick.tick().await;
        let s = store.clone();
        let reachable = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::task::spawn_blocking(move || s.durable_audit_head()),
        )
        .await
        .is_ok_and(|r| r.is_ok_and(|r| r.is_ok()));
        let revocation_ok = !crl_blocked();
        let m = crate::metrics::metrics();
        m.store_reachable.set(i64::from(reachable));
        if last.0 != Some(reachable) {
            if reachable {
                if last.0.is_some() {
                    tracing::info!("database reachable again: enrollment SERVING");
                }
            } else {
                tracing::error!(
                    "database unreachable: enrollment NOT_SERVING; CRLs and cached OCSP answers are served from memory"
                );
            }
        }
        crate::storage::set_health(
            &reporter,
            crate::storage::ENROLLMENT_SERVICE,
            reachable,
            &mut last.0,
        )
        .await;
        crate::storage::set_health(
            &reporter,
            crate::storage::REVOCATION_SERVICE,
            revocation_ok,
            &mut last.1,
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_names() {
        assert_eq!(
            issuer_blob_name("iss-00", "issuer.crt"),
            "issuers/iss-00/issuer.crt"
        );
        assert_eq!(root_crl_blob_name(7), "root-crl/00000000000000000007.crl");
    }

    #[test]
    fn password_file_is_trimmed_and_never_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").expect("write");
        let pw = read_password(Some(&p)).expect("read").expect("some");
        assert_eq!(pw.as_str(), "s3cret");
        std::fs::write(&p, "\n").expect("write");
        let e = read_password(Some(&p)).expect_err("empty");
        assert!(!e.to_string().contains("s3cret"));
        assert!(read_password(None).expect("none").is_none());
    }
}
