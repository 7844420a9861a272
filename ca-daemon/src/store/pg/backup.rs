//! Whole-store moves: a backup of a PostgreSQL store into a new sled store (one REPEATABLE
//! READ READ ONLY transaction, so the snapshot is consistent while the nodes keep serving), and
//! the import of a store image into an empty schema (`ca-daemon store copy`), in one
//! transaction with the audit chain intact (same sequence numbers and hashes).
//!
//! Rows cross between the caller's thread and the store's runtime on a bounded channel; the
//! runtime side blocks on it with `block_in_place`, so neither side holds everything in memory.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use futures::{StreamExt, pin_mut};
use tokio_postgres::IsolationLevel;

use super::ops::{
    AUDIT_COLS, CERT_COLS, TICKET_COLS, audit_from, cert_from, crl_from, insert_audit, insert_cert,
    insert_crl, issuer_from, revoked_from, set_audit_head, ticket_from, to_i64, upsert_issuer,
    upsert_revoked, upsert_ticket,
};
use super::{Fail, PgStore};
use crate::audit::ChainHead;
use crate::store::image::ImageRow;
use crate::store::{SledStore, StoreError};

/// Rows in flight between the two sides.
const CHANNEL_ROWS: usize = 1024;

/// The tables `store copy` requires empty (audit_head must be at the genesis head).
const TABLES: [&str; 10] = [
    "issuers",
    "tickets",
    "certificates",
    "revocations",
    "supersessions",
    "crls",
    "crl_numbers",
    "audit",
    "key_blobs",
    "audit_head WHERE seq > 0",
];

/// What an import wrote: rows per kind, and the audit head it ended at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    /// Rows per kind ([`ImageRow::kind`]).
    pub rows: BTreeMap<&'static str, u64>,
    /// The chain head of the imported audit log.
    pub audit_head: ChainHead,
}

impl PgStore {
    /// See [`crate::store::Store::backup_to`]: a new sled store at `path`.
    pub(super) fn backup_into_sled(&self, path: &Path) -> Result<(), StoreError> {
        if path.exists() {
            return Err(StoreError::TargetExists {
                path: path.to_owned(),
            });
        }
        let (tx, rx) = sync_channel::<Result<ImageRow, StoreError>>(CHANNEL_ROWS);
        let pool = self.pool();
        self.handle.spawn(async move {
            let result = async {
                let mut c = pool.get().await?;
                let t = c
                    .build_transaction()
                    .isolation_level(IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await?;
                export(&t, &tx).await?;
                t.commit().await?;
                Ok::<(), Fail>(())
            }
            .await;
            if let Err(e) = result {
                send(&tx, Err(e.into_store()));
            }
        });
        let result = SledStore::create_from_image(path, rx.into_iter());
        if result.is_err() && path.exists() {
            // A half-written backup is no backup.
            let _ = std::fs::remove_dir_all(path);
        }
        result
    }

    /// Whether every table is empty (what `store copy` requires of its target); else the
    /// name of a table that has rows.
    pub fn first_nonempty_table(&self) -> Result<Option<&'static str>, StoreError> {
        self.read_any(|c| async move {
            for table in TABLES {
                let found = c
                    .query_opt(&format!("SELECT 1 FROM {table} LIMIT 1"), &[])
                    .await?
                    .is_some();
                if found {
                    return Ok(Some(table.split(' ').next().unwrap_or(table)));
                }
            }
            Ok(None)
        })
    }

    /// Imports an image into this (empty) store in one transaction: `source` hands rows to
    /// the sink it gets (e.g. [`SledStore::export_image`]); `progress` is called with each
    /// row's kind and the running count of all rows. Refuses a target with any row in any
    /// table. The audit entries arrive as they were (same sequence numbers and hashes); the
    /// chain must be gapless from entry 1. Call from a plain or `spawn_blocking` thread.
    pub fn import_image(
        &self,
        source: impl FnOnce(
            &mut dyn FnMut(ImageRow) -> Result<(), StoreError>,
        ) -> Result<(), StoreError>,
        mut progress: impl FnMut(&'static str, u64),
    ) -> Result<ImportSummary, StoreError> {
        // `None` marks the end of a complete image: a source that fails midway drops the
        // channel without it, and the import rolls back.
        let (tx, rx) = sync_channel::<Option<ImageRow>>(CHANNEL_ROWS);
        let (done_tx, done_rx) = sync_channel::<Result<ImportSummary, StoreError>>(1);
        let pool = self.pool();
        self.handle.spawn(async move {
            let result = import(pool, rx).await.map_err(Fail::into_store);
            let _ = done_tx.send(result);
        });
        let mut n = 0u64;
        let mut stopped = false;
        let sent = source(&mut |row: ImageRow| {
            let kind = row.kind();
            if tx.send(Some(row)).is_err() {
                stopped = true;
                return Err(StoreError::Unavailable {
                    detail: "the import stopped".to_owned(),
                });
            }
            n += 1;
            progress(kind, n);
            Ok(())
        });
        if sent.is_ok() {
            let _ = tx.send(None);
        }
        drop(tx);
        let imported = done_rx.recv().unwrap_or_else(|_| {
            Err(StoreError::Unavailable {
                detail: "the store's runtime has stopped".to_owned(),
            })
        });
        match (sent, imported) {
            (Ok(()), result) => result,
            // The import's own error explains why it stopped taking rows.
            (Err(_), Err(e)) if stopped => Err(e),
            (Err(e), _) => Err(e),
        }
    }

    fn read_any<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, Fail>> + Send,
    {
        let pool = self.pool();
        self.run(async move {
            let client = pool.get().await.map_err(|e| Fail::from(e).into_store())?;
            f(client).await.map_err(Fail::into_store)
        })
    }
}

/// Sends from the runtime without stalling its other tasks.
fn send<T>(tx: &SyncSender<T>, v: T) -> bool {
    tokio::task::block_in_place(|| tx.send(v).is_ok())
}

/// Streams every table of the snapshot `t` as image rows.
async fn export(
    t: &tokio_postgres::Transaction<'_>,
    tx: &SyncSender<Result<ImageRow, StoreError>>,
) -> Result<(), Fail> {
    macro_rules! stream {
        ($sql:expr, |$r:ident| $row:expr) => {{
            let rows = t.query_raw($sql, [] as [&str; 0]).await?;
            pin_mut!(rows);
            while let Some(r) = rows.next().await {
                let $r = r?;
                if !send(tx, Ok($row)) {
                    return Ok(());
                }
            }
        }};
    }
    stream!(
        "SELECT id, state, cert_der, not_before, not_after, created_at FROM issuers ORDER BY id",
        |r| ImageRow::Issuer(issuer_from(&r)?)
    );
    stream!(
        &format!("SELECT {TICKET_COLS}, renews_serial FROM tickets ORDER BY number"),
        |r| ImageRow::Ticket(ticket_from(&r)?, r.try_get("renews_serial")?)
    );
    stream!(
        &format!("SELECT {CERT_COLS} FROM certificates ORDER BY serial"),
        |r| ImageRow::Cert(cert_from(&r)?)
    );
    stream!(
        "SELECT issuer_id, serial, not_after, revoked_at, reason, invalidity_date \
         FROM revocations ORDER BY issuer_id, serial",
        |r| ImageRow::Revoked(r.try_get("issuer_id")?, revoked_from(&r)?)
    );
    stream!(
        "SELECT serial, renewed_by, due FROM supersessions ORDER BY serial",
        |r| ImageRow::Supersession(
            r.try_get("serial")?,
            r.try_get("renewed_by")?,
            r.try_get("due")?
        )
    );
    stream!(
        "SELECT issuer_id, number, this_update, next_update, der FROM crls \
         ORDER BY issuer_id, number",
        |r| ImageRow::Crl(crl_from(&r)?)
    );
    stream!(
        "SELECT issuer_id, reserved FROM crl_numbers ORDER BY issuer_id",
        |r| ImageRow::CrlNumber(
            r.try_get("issuer_id")?,
            u64::try_from(r.try_get::<_, i64>("reserved")?).unwrap_or(0)
        )
    );
    stream!(
        &format!("SELECT {AUDIT_COLS} FROM audit ORDER BY seq"),
        |r| ImageRow::Audit(audit_from(&r)?)
    );
    stream!("SELECT name, blob FROM key_blobs ORDER BY name", |r| {
        ImageRow::KeyBlob(r.try_get(0)?, r.try_get(1)?)
    });
    Ok(())
}

/// The runtime side of [`PgStore::import_image`].
async fn import(
    pool: deadpool_postgres::Pool,
    rx: Receiver<Option<ImageRow>>,
) -> Result<ImportSummary, Fail> {
    let mut c = pool.get().await?;
    let t = c.transaction().await?;
    // No node may write while the copy runs (their audit appends wait on this lock).
    t.batch_execute("LOCK TABLE audit_head IN EXCLUSIVE MODE")
        .await?;
    for table in TABLES {
        if t.query_opt(&format!("SELECT 1 FROM {table} LIMIT 1"), &[])
            .await?
            .is_some()
        {
            return Err(Fail::Store(StoreError::Invalid {
                kind: "target database",
                detail: format!(
                    "is not empty (table {} has rows); store copy only fills an empty schema",
                    table.split(' ').next().unwrap_or(table)
                ),
            }));
        }
    }
    let mut rows: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut head = ChainHead::GENESIS;
    loop {
        let row = match tokio::task::block_in_place(|| rx.recv()) {
            Ok(Some(row)) => row,
            Ok(None) => break,
            Err(_) => {
                return Err(Fail::Unavailable(
                    "the source stopped before the end of its image; nothing was imported"
                        .to_owned(),
                ));
            }
        };
        *rows.entry(row.kind()).or_default() += 1;
        match row {
            ImageRow::Issuer(i) => upsert_issuer(&t, &i).await?,
            ImageRow::Ticket(tk, renews) => upsert_ticket(&t, &tk, renews.as_deref()).await?,
            ImageRow::Cert(cert) => insert_cert(&t, &cert, false).await?,
            ImageRow::Revoked(issuer, e) => upsert_revoked(&t, &issuer, &e).await?,
            ImageRow::Supersession(serial, by, due) => {
                t.execute(
                    "INSERT INTO supersessions (serial, renewed_by, due) VALUES ($1, $2, $3)",
                    &[&serial, &by, &due],
                )
                .await?;
            }
            ImageRow::Crl(crl) => insert_crl(&t, &crl).await?,
            ImageRow::CrlNumber(issuer, n) => {
                t.execute(
                    "INSERT INTO crl_numbers (issuer_id, reserved) VALUES ($1, $2)",
                    &[&issuer, &to_i64(n, "CRL number")?],
                )
                .await?;
            }
            ImageRow::Audit(e) => {
                if e.seq != head.seq + 1 || e.prev_hash != head.hash {
                    return Err(Fail::Store(StoreError::Corrupt {
                        kind: "audit entry",
                        key: e.seq.to_string(),
                        detail: format!(
                            "does not continue the chain at entry {} (verify the source with `audit verify`)",
                            head.seq
                        ),
                    }));
                }
                insert_audit(&t, &e).await?;
                head = e.head();
            }
            ImageRow::KeyBlob(name, blob) => {
                t.execute(
                    "INSERT INTO key_blobs (name, blob) VALUES ($1, $2)",
                    &[&name, &blob],
                )
                .await?;
            }
        }
    }
    set_audit_head(&t, &head).await?;
    t.commit().await?;
    Ok(ImportSummary {
        rows,
        audit_head: head,
    })
}
