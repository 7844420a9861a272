//! The [`Store`] methods of [`PgStore`]: one transaction each (see the module doc of
//! [`super`]), row locks first, the audit append last.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};

use deadpool_postgres::Pool;
use pki_policy::domain::{RevocationReason, TargetOs};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{Fail, PgStore, notify, retrying};
use crate::audit::{self, ChainHead};
use crate::store::{
    AuditEntry, AuditEvent, AuditVerification, CertFilter, CertRecord, CrlRecord, IssuerRecord,
    IssuerState, PublicationLock, RECORD_VERSION, Reinstated, Revocation, RevokeTarget,
    RevokedEntry, Store, StoreChange, StoreError, Supersession, TicketRecord, TicketState,
    validate_key_blob_name,
};

type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// `execute` with the connection's cached prepared statement (one round trip, not two): for
/// the statements every write runs.
async fn exec(tx: &Tx<'_>, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Fail> {
    let st = tx.prepare_cached(sql).await?;
    Ok(tx.execute(&st, params).await?)
}

/// `query_opt` with a cached prepared statement.
async fn query_opt_cached(
    tx: &Tx<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, Fail> {
    let st = tx.prepare_cached(sql).await?;
    Ok(tx.query_opt(&st, params).await?)
}

/// CRLs kept per issuer (the newest is the one served).
const CRL_HISTORY: i64 = 16;
/// Audit entries read per query by `verify_audit`.
const AUDIT_PAGE: i64 = 5_000;

pub(crate) const TICKET_COLS: &str = "number, password_mac, state, created_at, expires_at, \
    failed_attempts, enrollee, cert_profile, approved_by, created_by, redeemed_serial";
pub(crate) const CERT_COLS: &str = "serial, issuer_id, der, facility_id, person_id, device_id, \
    os, keystore_profile, ticket_number, not_before, not_after, issued_at, revoked_at, reason, \
    invalidity_date";
pub(crate) const AUDIT_COLS: &str =
    "seq, time_ns, time_offset, actor, action, target, detail, prev_hash, hash";

// ---- conversions

pub(crate) fn corrupt(kind: &'static str, key: &str, detail: impl Into<String>) -> Fail {
    Fail::Store(StoreError::Corrupt {
        kind,
        key: key.to_owned(),
        detail: detail.into(),
    })
}

pub(crate) fn to_i64(v: u64, what: &'static str) -> Result<i64, Fail> {
    i64::try_from(v).map_err(|_| {
        Fail::Store(StoreError::Invalid {
            kind: what,
            detail: format!("{v} is out of range"),
        })
    })
}

fn to_u64(v: i64, kind: &'static str, key: &str) -> Result<u64, Fail> {
    u64::try_from(v).map_err(|_| corrupt(kind, key, format!("negative number {v}")))
}

fn hash32(v: Vec<u8>, kind: &'static str, key: &str) -> Result<[u8; 32], Fail> {
    <[u8; 32]>::try_from(v.as_slice())
        .map_err(|_| corrupt(kind, key, format!("{} bytes instead of 32", v.len())))
}

/// Whole seconds (how sled keeps supersession due times).
fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.unix_timestamp()).unwrap_or(t)
}

/// `now` rounded up to the next whole second: `t >= next_second(now)` is sled's
/// "`notAfter` after `now` at one-second precision".
fn next_second(now: OffsetDateTime) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(now.unix_timestamp().saturating_add(1)).unwrap_or(now)
}

pub(crate) fn state_from(s: &str, key: &str) -> Result<TicketState, Fail> {
    TicketState::ALL
        .into_iter()
        .find(|t| t.as_str() == s)
        .ok_or_else(|| corrupt("ticket", key, format!("unknown state {s:?}")))
}

pub(crate) fn issuer_state_from(s: &str, key: &str) -> Result<IssuerState, Fail> {
    [
        IssuerState::Active,
        IssuerState::Retiring,
        IssuerState::Retired,
    ]
    .into_iter()
    .find(|t| t.as_str() == s)
    .ok_or_else(|| corrupt("issuer", key, format!("unknown state {s:?}")))
}

fn reason_from(code: i16, key: &str) -> Result<RevocationReason, Fail> {
    u8::try_from(code)
        .ok()
        .and_then(RevocationReason::from_code)
        .ok_or_else(|| corrupt("certificate", key, format!("unknown reason code {code}")))
}

pub(crate) fn ticket_from(r: &Row) -> Result<TicketRecord, Fail> {
    let number: String = r.try_get("number")?;
    let enrollee: serde_json::Value = r.try_get("enrollee")?;
    Ok(TicketRecord {
        version: RECORD_VERSION,
        password_mac: hash32(r.try_get("password_mac")?, "ticket", &number)?,
        state: state_from(r.try_get("state")?, &number)?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        failed_attempts: u32::try_from(r.try_get::<_, i64>("failed_attempts")?).unwrap_or(u32::MAX),
        enrollee: serde_json::from_value(enrollee)
            .map_err(|e| corrupt("ticket", &number, format!("enrollee: {e}")))?,
        cert_profile: r.try_get("cert_profile")?,
        approved_by: r.try_get("approved_by")?,
        created_by: r.try_get("created_by")?,
        redeemed_serial: r.try_get("redeemed_serial")?,
        number,
    })
}

pub(crate) fn cert_from(r: &Row) -> Result<CertRecord, Fail> {
    let serial: String = r.try_get("serial")?;
    let os: String = r.try_get("os")?;
    let revoked_at: Option<OffsetDateTime> = r.try_get("revoked_at")?;
    let reason: Option<i16> = r.try_get("reason")?;
    let revocation = match (revoked_at, reason) {
        (Some(revoked_at), Some(code)) => Some(Revocation {
            revoked_at,
            reason: reason_from(code, &serial)?,
            invalidity_date: r.try_get("invalidity_date")?,
        }),
        _ => None,
    };
    Ok(CertRecord {
        version: RECORD_VERSION,
        issuer_id: r.try_get("issuer_id")?,
        der: r.try_get("der")?,
        facility_id: r.try_get("facility_id")?,
        person_id: r.try_get("person_id")?,
        device_id: r.try_get("device_id")?,
        os: TargetOs::parse(&os)
            .ok_or_else(|| corrupt("certificate", &serial, format!("unknown OS {os:?}")))?,
        keystore_profile: r.try_get("keystore_profile")?,
        ticket_number: r.try_get("ticket_number")?,
        not_before: r.try_get("not_before")?,
        not_after: r.try_get("not_after")?,
        issued_at: r.try_get("issued_at")?,
        revocation,
        serial,
    })
}

pub(crate) fn revoked_from(r: &Row) -> Result<RevokedEntry, Fail> {
    let serial: String = r.try_get("serial")?;
    Ok(RevokedEntry {
        not_after: r.try_get("not_after")?,
        revocation: Revocation {
            revoked_at: r.try_get("revoked_at")?,
            reason: reason_from(r.try_get("reason")?, &serial)?,
            invalidity_date: r.try_get("invalidity_date")?,
        },
        serial,
    })
}

pub(crate) fn issuer_from(r: &Row) -> Result<IssuerRecord, Fail> {
    let id: String = r.try_get("id")?;
    Ok(IssuerRecord {
        version: RECORD_VERSION,
        state: issuer_state_from(r.try_get("state")?, &id)?,
        cert_der: r.try_get("cert_der")?,
        not_before: r.try_get("not_before")?,
        not_after: r.try_get("not_after")?,
        created_at: r.try_get("created_at")?,
        id,
    })
}

pub(crate) fn crl_from(r: &Row) -> Result<CrlRecord, Fail> {
    let issuer_id: String = r.try_get("issuer_id")?;
    Ok(CrlRecord {
        version: RECORD_VERSION,
        number: to_u64(r.try_get("number")?, "CRL", &issuer_id)?,
        this_update: r.try_get("this_update")?,
        next_update: r.try_get("next_update")?,
        der: r.try_get("der")?,
        issuer_id,
    })
}

pub(crate) fn audit_from(r: &Row) -> Result<AuditEntry, Fail> {
    let seq: i64 = r.try_get("seq")?;
    let key = seq.to_string();
    let ns: i64 = r.try_get("time_ns")?;
    let offset: i32 = r.try_get("time_offset")?;
    let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .zip(time::UtcOffset::from_whole_seconds(offset).ok())
        .map(|(t, o)| t.to_offset(o))
        .ok_or_else(|| corrupt("audit entry", &key, "time out of range"))?;
    Ok(AuditEntry {
        seq: to_u64(seq, "audit entry", &key)?,
        time,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        detail: r.try_get("detail")?,
        prev_hash: hash32(r.try_get("prev_hash")?, "audit entry", &key)?,
        hash: hash32(r.try_get("hash")?, "audit entry", &key)?,
    })
}

// ---- statements shared by several methods (and the import)

/// Advisory-lock class of the enrollee locks (below); the key is a hash of `kind:id`.
const ENROLLEE_LOCK_CLASS: i32 = 0x6361_656e;

/// Ticket creation against a bulk revocation of its facility, person or device (usage
/// termination): the revocation cancels the live tickets it *sees*, and under READ COMMITTED
/// a ticket committed while the revocation runs would be missed, surviving a revocation
/// that the audit log records after it. So a ticket's creation holds a shared transaction
/// lock on each of its three names, taken first in its transaction; a bulk revocation takes
/// the exclusive lock of its target first in its own. A creation in progress then finishes
/// before the revocation reads the tickets (and is cancelled by it); one that starts later
/// waits for the revocation's commit (and is a new ticket after it, as with sled's writer
/// mutex). Always taken in the order facility, person, device, and before any row lock.
async fn lock_enrollee_shared(
    tx: &tokio_postgres::Transaction<'_>,
    t: &TicketRecord,
) -> Result<(), Fail> {
    for (kind, id) in [
        ("facility", &t.enrollee.facility.id),
        ("person", &t.enrollee.person.id),
        ("device", &t.enrollee.device.id),
    ] {
        let key = super::issuer_lock_key(&format!("{kind}:{id}"));
        tx.execute(
            "SELECT pg_advisory_xact_lock_shared($1, $2)",
            &[&ENROLLEE_LOCK_CLASS, &key],
        )
        .await?;
    }
    Ok(())
}

/// The exclusive counterpart of [`lock_enrollee_shared`] for a bulk revocation's target.
async fn lock_enrollee_exclusive(
    tx: &tokio_postgres::Transaction<'_>,
    target: &RevokeTarget,
) -> Result<(), Fail> {
    let (kind, id) = match target {
        RevokeTarget::Facility(id) => ("facility", id),
        RevokeTarget::Person(id) => ("person", id),
        RevokeTarget::Device(id) => ("device", id),
        RevokeTarget::Serial(_) => return Ok(()),
    };
    let key = super::issuer_lock_key(&format!("{kind}:{id}"));
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&ENROLLEE_LOCK_CLASS, &key],
    )
    .await?;
    Ok(())
}

/// Inserts or replaces a ticket row.
pub(crate) async fn upsert_ticket(
    tx: &Tx<'_>,
    t: &TicketRecord,
    renews: Option<&str>,
) -> Result<(), Fail> {
    let enrollee = serde_json::to_value(&t.enrollee).map_err(|e| {
        Fail::Store(StoreError::Invalid {
            kind: "ticket",
            detail: format!("enrollee cannot be encoded: {e}"),
        })
    })?;
    let mac: &[u8] = &t.password_mac;
    let failed = i64::from(t.failed_attempts);
    tx.execute(
        "INSERT INTO tickets (number, password_mac, state, created_at, expires_at, failed_attempts, \
             enrollee, facility_id, person_id, device_id, cert_profile, approved_by, created_by, \
             redeemed_serial, renews_serial) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
         ON CONFLICT (number) DO UPDATE SET password_mac = EXCLUDED.password_mac, \
             state = EXCLUDED.state, created_at = EXCLUDED.created_at, \
             expires_at = EXCLUDED.expires_at, failed_attempts = EXCLUDED.failed_attempts, \
             enrollee = EXCLUDED.enrollee, facility_id = EXCLUDED.facility_id, \
             person_id = EXCLUDED.person_id, device_id = EXCLUDED.device_id, \
             cert_profile = EXCLUDED.cert_profile, approved_by = EXCLUDED.approved_by, \
             created_by = EXCLUDED.created_by, redeemed_serial = EXCLUDED.redeemed_serial, \
             renews_serial = EXCLUDED.renews_serial",
        &[
            &t.number,
            &mac,
            &t.state.as_str(),
            &t.created_at,
            &t.expires_at,
            &failed,
            &enrollee,
            &t.enrollee.facility.id,
            &t.enrollee.person.id,
            &t.enrollee.device.id,
            &t.cert_profile,
            &t.approved_by,
            &t.created_by,
            &t.redeemed_serial,
            &renews,
        ],
    )
    .await?;
    Ok(())
}

/// Inserts a certificate (and its revocation-index row if it is revoked); `Conflict` if the
/// serial exists, `Invalid` if its issuer does not.
pub(crate) async fn insert_cert(tx: &Tx<'_>, c: &CertRecord, index: bool) -> Result<(), Fail> {
    let rev = c.revocation.as_ref();
    let reason = rev.map(|r| i16::from(r.reason.code()));
    let st = tx
        .prepare_cached(
            "INSERT INTO certificates (serial, issuer_id, der, facility_id, person_id, device_id, \
                 os, keystore_profile, ticket_number, not_before, not_after, issued_at, \
                 revoked_at, reason, invalidity_date) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (serial) DO NOTHING",
        )
        .await?;
    let inserted = tx
        .execute(
            &st,
            &[
                &c.serial,
                &c.issuer_id,
                &c.der,
                &c.facility_id,
                &c.person_id,
                &c.device_id,
                &c.os.as_str(),
                &c.keystore_profile,
                &c.ticket_number,
                &c.not_before,
                &c.not_after,
                &c.issued_at,
                &rev.map(|r| r.revoked_at),
                &reason,
                &rev.and_then(|r| r.invalidity_date),
            ],
        )
        .await
        .map_err(|e| {
            if e.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION) {
                Fail::Store(StoreError::Invalid {
                    kind: "certificate",
                    detail: format!(
                        "certificate {} names issuer {}, which the store does not have",
                        c.serial, c.issuer_id
                    ),
                })
            } else {
                Fail::Pg(e)
            }
        })?;
    if inserted == 0 {
        return Err(Fail::Store(StoreError::Conflict {
            kind: "certificate",
            key: c.serial.clone(),
        }));
    }
    if index && let Some(r) = rev {
        upsert_revoked(
            tx,
            &c.issuer_id,
            &RevokedEntry {
                serial: c.serial.clone(),
                not_after: c.not_after,
                revocation: r.clone(),
            },
        )
        .await?;
    }
    Ok(())
}

/// Inserts or replaces a row of the revoked-by-issuer index.
pub(crate) async fn upsert_revoked(
    tx: &Tx<'_>,
    issuer_id: &str,
    e: &RevokedEntry,
) -> Result<(), Fail> {
    let reason = i16::from(e.revocation.reason.code());
    exec(
        tx,
        "INSERT INTO revocations (issuer_id, serial, not_after, revoked_at, reason, invalidity_date) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (issuer_id, serial) DO UPDATE SET not_after = EXCLUDED.not_after, \
             revoked_at = EXCLUDED.revoked_at, reason = EXCLUDED.reason, \
             invalidity_date = EXCLUDED.invalidity_date",
        &[
            &issuer_id,
            &e.serial,
            &e.not_after,
            &e.revocation.revoked_at,
            &reason,
            &e.revocation.invalidity_date,
        ],
    )
    .await?;
    Ok(())
}

/// Marks a locked, unrevoked certificate revoked and indexes it.
async fn revoke_cert(tx: &Tx<'_>, cert: &mut CertRecord, r: &Revocation) -> Result<(), Fail> {
    let reason = i16::from(r.reason.code());
    exec(
        tx,
        "UPDATE certificates SET revoked_at = $2, reason = $3, invalidity_date = $4 \
         WHERE serial = $1",
        &[&cert.serial, &r.revoked_at, &reason, &r.invalidity_date],
    )
    .await?;
    cert.revocation = Some(r.clone());
    upsert_revoked(
        tx,
        &cert.issuer_id,
        &RevokedEntry {
            serial: cert.serial.clone(),
            not_after: cert.not_after,
            revocation: r.clone(),
        },
    )
    .await
}

/// Inserts one audit row exactly as given.
pub(crate) async fn insert_audit(tx: &Tx<'_>, e: &AuditEntry) -> Result<(), Fail> {
    let ns = i64::try_from(e.time.unix_timestamp_nanos()).map_err(|_| {
        Fail::Store(StoreError::Invalid {
            kind: "audit entry",
            detail: format!("entry {} has a time out of range", e.seq),
        })
    })?;
    let offset = e.time.offset().whole_seconds();
    let prev: &[u8] = &e.prev_hash;
    let hash: &[u8] = &e.hash;
    exec(
        tx,
        "INSERT INTO audit (seq, time_ns, time_offset, actor, action, target, detail, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &to_i64(e.seq, "audit entry")?,
            &ns,
            &offset,
            &e.actor,
            &e.action,
            &e.target,
            &e.detail,
            &prev,
            &hash,
        ],
    )
    .await?;
    Ok(())
}

/// Moves the chain head.
pub(crate) async fn set_audit_head(tx: &Tx<'_>, head: &ChainHead) -> Result<(), Fail> {
    let hash: &[u8] = &head.hash;
    exec(
        tx,
        "UPDATE audit_head SET seq = $1, hash = $2 WHERE id",
        &[&to_i64(head.seq, "audit head")?, &hash],
    )
    .await?;
    Ok(())
}

/// Appends `events` to the chain: takes the head row FOR UPDATE (the last lock of the
/// transaction, and its last statements, so the section every node serialises on is short),
/// inserts the entries, moves the head.
async fn append_audit(tx: &Tx<'_>, events: &[AuditEvent]) -> Result<Vec<AuditEntry>, Fail> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let st = tx
        .prepare_cached("SELECT seq, hash FROM audit_head WHERE id FOR UPDATE")
        .await?;
    let row = tx.query_one(&st, &[]).await?;
    let mut head = ChainHead {
        seq: to_u64(row.try_get("seq")?, "audit chain head", "audit_head")?,
        hash: hash32(row.try_get("hash")?, "audit chain head", "audit_head")?,
    };
    let mut out = Vec::with_capacity(events.len());
    for ev in events {
        let entry = head.next_entry(OffsetDateTime::now_utc(), ev);
        insert_audit(tx, &entry).await?;
        head = entry.head();
        out.push(entry);
    }
    set_audit_head(tx, &head).await?;
    Ok(out)
}

async fn lock_ticket(tx: &Tx<'_>, number: &str) -> Result<TicketRecord, Fail> {
    let row = query_opt_cached(
        tx,
        &format!("SELECT {TICKET_COLS} FROM tickets WHERE number = $1 FOR UPDATE"),
        &[&number],
    )
    .await?
    .ok_or_else(|| not_found("ticket", number))?;
    ticket_from(&row)
}

async fn set_ticket(tx: &Tx<'_>, t: &TicketRecord) -> Result<(), Fail> {
    let failed = i64::from(t.failed_attempts);
    exec(
        tx,
        "UPDATE tickets SET state = $2, failed_attempts = $3, redeemed_serial = $4 \
         WHERE number = $1",
        &[&t.number, &t.state.as_str(), &failed, &t.redeemed_serial],
    )
    .await?;
    Ok(())
}

fn not_found(kind: &'static str, key: &str) -> Fail {
    Fail::Store(StoreError::NotFound {
        kind,
        key: key.to_owned(),
    })
}

/// One `Revoked` notification per issuer.
async fn notify_revoked(tx: &Tx<'_>, certs: &[&CertRecord]) -> Result<(), Fail> {
    let mut by_issuer: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for c in certs {
        by_issuer
            .entry(c.issuer_id.as_str())
            .or_default()
            .push(c.serial.clone());
    }
    for (issuer_id, serials) in by_issuer {
        notify(
            tx,
            &StoreChange::Revoked {
                issuer_id: issuer_id.to_owned(),
                serials,
            },
        )
        .await?;
    }
    Ok(())
}

impl PgStore {
    /// A mutating call: `f` runs one whole transaction (retried on serialization failures);
    /// its audit entries are logged once it has committed.
    fn write<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(Pool) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(T, Vec<AuditEntry>), Fail>> + Send,
    {
        let pool = self.pool();
        let (value, entries) = self.run(async move { retrying(|| f(pool.clone())).await })?;
        for entry in &entries {
            audit::log_entry(entry);
        }
        Ok(value)
    }

    /// A read on one pooled connection.
    fn read<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Fail>> + Send,
    {
        let pool = self.pool();
        self.run(async move {
            let client = pool.get().await.map_err(|e| Fail::from(e).into_store())?;
            f(client).await.map_err(Fail::into_store)
        })
    }

    fn create_ticket_with(
        &self,
        ticket: &TicketRecord,
        renews: Option<&str>,
        event: AuditEvent,
    ) -> Result<(), StoreError> {
        if ticket.version != RECORD_VERSION {
            return Err(StoreError::Invalid {
                kind: "ticket",
                detail: format!("record format version {}", ticket.version),
            });
        }
        let args = Arc::new((ticket.clone(), renews.map(str::to_owned), event));
        self.write(move |pool| {
            let args = args.clone();
            async move {
                let (ticket, renews, event) = &*args;
                let mut c = pool.get().await?;
                let tx = c.transaction().await?;
                lock_enrollee_shared(&tx, ticket).await?;
                let old = tx
                    .query_opt(
                        "SELECT state, expires_at FROM tickets WHERE number = $1 FOR UPDATE",
                        &[&ticket.number],
                    )
                    .await?;
                if let Some(old) = old {
                    let state = state_from(old.try_get("state")?, &ticket.number)?;
                    let expires: OffsetDateTime = old.try_get("expires_at")?;
                    if state == TicketState::Active && ticket.created_at < expires {
                        return Err(Fail::Store(StoreError::Conflict {
                            kind: "ticket",
                            key: ticket.number.clone(),
                        }));
                    }
                }
                match upsert_ticket(&tx, ticket, renews.as_deref()).await {
                    Err(e) if e.is_unique_violation() => {
                        return Err(Fail::Store(StoreError::Conflict {
                            kind: "ticket",
                            key: ticket.number.clone(),
                        }));
                    }
                    other => other?,
                }
                notify(&tx, &StoreChange::Tickets).await?;
                let entries = append_audit(&tx, std::slice::from_ref(event)).await?;
                tx.commit().await?;
                Ok(((), entries))
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
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
        if cert.version != RECORD_VERSION {
            return Err(StoreError::Invalid {
                kind: "certificate",
                detail: format!("record format version {}", cert.version),
            });
        }
        let args = Arc::new((
            number.to_owned(),
            zeroize::Zeroizing::new(*password_mac),
            cert.clone(),
            supersede.cloned(),
            event,
        ));
        self.write(move |pool| {
            let args = args.clone();
            async move {
                let (number, mac, cert, supersede, event) = &*args;
                let mut c = pool.get().await?;
                let tx = c.transaction().await?;
                let mut t = lock_ticket(&tx, number).await?;
                let actual = t.effective_state(now);
                if actual != TicketState::Active {
                    return Err(Fail::Store(StoreError::StateMismatch { actual }));
                }
                if !bool::from(t.password_mac.ct_eq(&**mac)) {
                    return Err(Fail::Store(StoreError::PasswordMismatch {
                        number: number.clone(),
                    }));
                }
                if let Some(sup) = supersede {
                    let old = tx
                        .query_opt(
                            "SELECT revoked_at FROM certificates WHERE serial = $1 FOR UPDATE",
                            &[&sup.serial],
                        )
                        .await?
                        .ok_or_else(|| not_found("certificate", &sup.serial))?;
                    if old
                        .try_get::<_, Option<OffsetDateTime>>("revoked_at")?
                        .is_some()
                    {
                        return Err(Fail::Store(StoreError::Revoked {
                            serial: sup.serial.clone(),
                        }));
                    }
                    tx.execute(
                        "INSERT INTO supersessions (serial, renewed_by, due) VALUES ($1, $2, $3) \
                         ON CONFLICT (serial) DO NOTHING",
                        &[&sup.serial, &sup.renewed_by, &whole_seconds(sup.due)],
                    )
                    .await?;
                }
                insert_cert(&tx, cert, true).await?;
                t.state = TicketState::Redeemed;
                t.redeemed_serial = Some(cert.serial.clone());
                set_ticket(&tx, &t).await?;
                notify(&tx, &StoreChange::Tickets).await?;
                let entries = append_audit(&tx, std::slice::from_ref(event)).await?;
                tx.commit().await?;
                Ok((t, entries))
            }
        })
    }

    fn revoke_inner(
        &self,
        target: &RevokeTarget,
        revocation: &Revocation,
        event: AuditEvent,
        cancel: Option<(AuditEvent, OffsetDateTime)>,
    ) -> Result<(Vec<CertRecord>, Vec<String>), StoreError> {
        let args = Arc::new((target.clone(), revocation.clone(), event, cancel));
        self.write(move |pool| {
            let args = args.clone();
            async move {
                let (target, revocation, event, cancel) = &*args;
                let mut c = pool.get().await?;
                let tx = c.transaction().await?;
                let bulk = !matches!(target, RevokeTarget::Serial(_));
                if cancel.is_some() {
                    lock_enrollee_exclusive(&tx, target).await?;
                }
                // Tickets first: a redemption of one of them either committed before (its
                // certificate is then seen below) or waits and finds the ticket cancelled.
                let mut live = Vec::new();
                if let Some((_, now)) = cancel
                    && bulk
                {
                    let (col, id) = match target {
                        RevokeTarget::Device(id) => ("device_id", id),
                        RevokeTarget::Person(id) => ("person_id", id),
                        RevokeTarget::Facility(id) | RevokeTarget::Serial(id) => {
                            ("facility_id", id)
                        }
                    };
                    let rows = tx
                        .query(
                            &format!(
                                "SELECT {TICKET_COLS} FROM tickets WHERE {col} = $1 \
                                 AND state = 'active' AND expires_at > $2 \
                                 ORDER BY number FOR UPDATE"
                            ),
                            &[id, now],
                        )
                        .await?;
                    for r in &rows {
                        let t = ticket_from(r)?;
                        if t.effective_state(*now) == TicketState::Active {
                            live.push(t);
                        }
                    }
                }
                let (col, id) = match target {
                    RevokeTarget::Serial(s) => ("serial", s),
                    RevokeTarget::Device(id) => ("device_id", id),
                    RevokeTarget::Person(id) => ("person_id", id),
                    RevokeTarget::Facility(id) => ("facility_id", id),
                };
                let rows = tx
                    .query(
                        &format!(
                            "SELECT {CERT_COLS} FROM certificates WHERE {col} = $1 \
                             ORDER BY serial FOR UPDATE"
                        ),
                        &[id],
                    )
                    .await?;
                if rows.is_empty()
                    && let RevokeTarget::Serial(s) = target
                {
                    return Err(not_found("certificate", s));
                }
                let mut out = Vec::with_capacity(rows.len());
                let mut events = Vec::new();
                let mut newly = Vec::new();
                for r in &rows {
                    let mut cert = cert_from(r)?;
                    if cert.revocation.is_none() {
                        revoke_cert(&tx, &mut cert, revocation).await?;
                        events.push(AuditEvent {
                            target: cert.serial.clone(),
                            detail: if bulk {
                                format!("{} (revoking {target})", event.detail)
                            } else {
                                event.detail.clone()
                            },
                            ..event.clone()
                        });
                        newly.push(out.len());
                    }
                    out.push(cert);
                }
                let mut cancelled = Vec::new();
                if let Some((cancel_event, _)) = cancel {
                    for mut t in live {
                        t.state = TicketState::Cancelled;
                        set_ticket(&tx, &t).await?;
                        events.push(AuditEvent {
                            target: format!("ticket:{}", t.number),
                            detail: format!("{} (revoking {target})", cancel_event.detail),
                            ..cancel_event.clone()
                        });
                        cancelled.push(t.number);
                    }
                    if bulk {
                        events.push(AuditEvent {
                            action: "revocation.tickets_cancelled".into(),
                            target: target.to_string(),
                            detail: format!(
                                "{} active tickets cancelled (revoking {target})",
                                cancelled.len()
                            ),
                            ..cancel_event.clone()
                        });
                    }
                }
                let revoked: Vec<&CertRecord> = newly.iter().map(|&i| &out[i]).collect();
                notify_revoked(&tx, &revoked).await?;
                if !cancelled.is_empty() {
                    notify(&tx, &StoreChange::Tickets).await?;
                }
                let entries = append_audit(&tx, &events).await?;
                tx.commit().await?;
                Ok(((out, cancelled), entries))
            }
        })
    }
}

impl Store for PgStore {
    fn create_ticket(&self, ticket: &TicketRecord, event: AuditEvent) -> Result<(), StoreError> {
        self.create_ticket_with(ticket, None, event)
    }

    fn ticket(&self, number: &str) -> Result<Option<TicketRecord>, StoreError> {
        let number = number.to_owned();
        self.read(move |c| async move {
            c.query_opt(
                &format!("SELECT {TICKET_COLS} FROM tickets WHERE number = $1"),
                &[&number],
            )
            .await?
            .map(|r| ticket_from(&r))
            .transpose()
        })
    }

    fn record_failed_attempt(
        &self,
        number: &str,
        max_attempts: u32,
        now: OffsetDateTime,
        event_if_locked: AuditEvent,
    ) -> Result<TicketRecord, StoreError> {
        let args = Arc::new((number.to_owned(), event_if_locked));
        self.write(move |pool| {
            let args = args.clone();
            async move {
                let (number, event) = &*args;
                let mut c = pool.get().await?;
                let tx = c.transaction().await?;
                let mut t = lock_ticket(&tx, number).await?;
                let active = t.effective_state(now) == TicketState::Active;
                t.failed_attempts = t.failed_attempts.saturating_add(1);
                let mut events = Vec::new();
                if active && t.failed_attempts >= max_attempts {
                    t.state = TicketState::Locked;
                    events.push(event.clone());
                }
                set_ticket(&tx, &t).await?;
                if !events.is_empty() {
                    notify(&tx, &StoreChange::Tickets).await?;
                }
                let entries = append_audit(&tx, &events).await?;
                tx.commit().await?;
                Ok((t, entries))
            }
        })
    }

    fn set_ticket_state(
        &self,
        number: &str,
        from: TicketState,
        to: TicketState,
        event: AuditEvent,
    ) -> Result<TicketRecord, StoreError> {
        let args = Arc::new((number.to_owned(), event));
        self.write(move |pool| {
            let args = args.clone();
            async move {
                let (number, event) = &*args;
                let mut c = pool.get().await?;
                let tx = c.transaction().await?;
                let mut t = lock_ticket(&tx, number).await?;
                let actual = t.effective_state(OffsetDateTime::now_utc());
                if actual != from {
                    return Err(Fail::Store(StoreError::StateMismatch { actual }));
                }
                t.state = to;
                set_ticket(&tx, &t).await?;
                notify(&tx, &StoreChange::Tickets).await?;
                let entries = append_audit(&tx, std::slice::from_ref(event)).await?;
                tx.commit().await?;
                Ok((t, entries))
            }
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
        self.read(move |c| async move {
            let rows = c
                .query(
                    "SELECT CASE WHEN state = 'active' AND expires_at <= $1 THEN 'expired' \
                         ELSE state END AS s, count(*) AS n \
                     FROM tickets GROUP BY 1",
                    &[&now],
                )
                .await?;
            let mut counts = TicketState::ALL.map(|s| (s, 0u64));
            for r in &rows {
                let state = state_from(r.try_get("s")?, "count")?;
                let n = to_u64(r.try_get("n")?, "ticket count", "count")?;
                if let Some(c) = counts.iter_mut().find(|(s, _)| *s == state) {
                    c.1 += n;
                }
            }
            Ok(counts.to_vec())
        })
    }

    fn certificate(&self, serial: &str) -> Result<Option<CertRecord>, StoreError> {
        let serial = serial.to_owned();
        self.read(move |c| async move {
            c.query_opt(
                &format!("SELECT {CERT_COLS} FROM certificates WHERE serial = $1"),
                &[&serial],
            )
            .await?
            .map(|r| cert_from(&r))
            .transpose()
        })
    }

    fn list_certificates(
        &self,
        filter: &CertFilter,
        after_serial: Option<&str>,
        limit: usize,
    ) -> Result<Vec<CertRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let filter = filter.clone();
        let after = after_serial.map(str::to_owned);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| async move {
            let mut clauses: Vec<String> = Vec::new();
            let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
            type Params = Vec<Box<dyn ToSql + Sync + Send>>;
            fn add(
                clauses: &mut Vec<String>,
                params: &mut Params,
                clause: &str,
                p: Box<dyn ToSql + Sync + Send>,
            ) {
                params.push(p);
                clauses.push(clause.replace('?', &format!("${}", params.len())));
            }
            for (col, v) in [
                ("facility_id", &filter.facility_id),
                ("person_id", &filter.person_id),
                ("device_id", &filter.device_id),
                ("issuer_id", &filter.issuer_id),
            ] {
                if let Some(v) = v {
                    add(
                        &mut clauses,
                        &mut params,
                        &format!("c.{col} = ?"),
                        Box::new(v.clone()),
                    );
                }
            }
            if let Some(r) = filter.revoked {
                clauses.push(if r {
                    "c.revoked_at IS NOT NULL".to_owned()
                } else {
                    "c.revoked_at IS NULL".to_owned()
                });
            }
            if let Some(t) = filter.expiring_before {
                add(
                    &mut clauses,
                    &mut params,
                    "c.not_after < ? AND NOT EXISTS \
                     (SELECT 1 FROM supersessions s WHERE s.serial = c.serial)",
                    Box::new(t),
                );
            }
            if let Some(a) = after {
                add(&mut clauses, &mut params, "c.serial > ?", Box::new(a));
            }
            params.push(Box::new(limit));
            let wh = if clauses.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", clauses.join(" AND "))
            };
            let sql = format!(
                "SELECT {} FROM certificates c {wh} ORDER BY c.serial LIMIT ${}",
                CERT_COLS
                    .split(", ")
                    .map(|col| format!("c.{col}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                params.len()
            );
            let refs: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
            let rows = c.query(&sql, &refs).await?;
            rows.iter().map(cert_from).collect()
        })
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
        let issuer_id = issuer_id.to_owned();
        self.read(move |c| async move {
            let cols = CERT_COLS
                .split(", ")
                .map(|col| format!("c.{col}"))
                .collect::<Vec<_>>()
                .join(", ");
            let rows = c
                .query(
                    &format!(
                        "SELECT {cols} FROM revocations r JOIN certificates c ON c.serial = r.serial \
                         WHERE r.issuer_id = $1 ORDER BY r.serial"
                    ),
                    &[&issuer_id],
                )
                .await?;
            rows.iter().map(cert_from).collect()
        })
    }

    fn revocation_entries(&self, issuer_id: &str) -> Result<Vec<RevokedEntry>, StoreError> {
        let issuer_id = issuer_id.to_owned();
        self.read(move |c| async move {
            let rows = c
                .query(
                    "SELECT serial, not_after, revoked_at, reason, invalidity_date \
                     FROM revocations WHERE issuer_id = $1 ORDER BY serial",
                    &[&issuer_id],
                )
                .await?;
            rows.iter().map(revoked_from).collect()
        })
    }

    fn certificate_counts(
        &self,
        issuer_id: &str,
        now: OffsetDateTime,
    ) -> Result<(u64, u64, u64), StoreError> {
        let issuer_id = issuer_id.to_owned();
        let after = next_second(now);
        self.read(move |c| async move {
            let r = c
                .query_one(
                    "SELECT count(*) AS total, count(revoked_at) AS revoked, \
                         count(*) FILTER (WHERE not_after >= $2) AS unexpired \
                     FROM certificates WHERE issuer_id = $1",
                    &[&issuer_id, &after],
                )
                .await?;
            Ok((
                to_u64(r.try_get("total")?, "count", &issuer_id)?,
                to_u64(r.try_get("revoked")?, "count", &issuer_id)?,
                to_u64(r.try_get("unexpired")?, "count", &issuer_id)?,
            ))
        })
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
        let number = number.to_owned();
        self.read(move |c| async move {
            Ok(c.query_opt(
                "SELECT renews_serial FROM tickets WHERE number = $1",
                &[&number],
            )
            .await?
            .map(|r| r.try_get::<_, Option<String>>(0))
            .transpose()?
            .flatten())
        })
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
        let serial = serial.to_owned();
        self.read(move |c| async move {
            Ok(c.query_opt(
                "SELECT renewed_by FROM supersessions WHERE serial = $1",
                &[&serial],
            )
            .await?
            .map(|r| r.try_get::<_, String>(0))
            .transpose()?)
        })
    }

    fn apply_due_supersessions(
        &self,
        now: OffsetDateTime,
        limit: usize,
        revocation: &Revocation,
        event: AuditEvent,
    ) -> Result<Vec<CertRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let args = Arc::new((revocation.clone(), event));
        self.write(move |pool| {
            let args = args.clone();
            async move {
                let (revocation, event) = &*args;
                let mut c = pool.get().await?;
                let tx = c.transaction().await?;
                let due = tx
                    .query(
                        "SELECT serial FROM supersessions WHERE due IS NOT NULL AND due < $1 \
                         ORDER BY due, serial LIMIT $2 FOR UPDATE",
                        &[&next_second(now), &limit],
                    )
                    .await?;
                let mut out = Vec::new();
                let mut events = Vec::new();
                for r in &due {
                    let serial: String = r.try_get(0)?;
                    tx.execute(
                        "UPDATE supersessions SET due = NULL WHERE serial = $1",
                        &[&serial],
                    )
                    .await?;
                    let Some(row) = tx
                        .query_opt(
                            &format!(
                                "SELECT {CERT_COLS} FROM certificates WHERE serial = $1 FOR UPDATE"
                            ),
                            &[&serial],
                        )
                        .await?
                    else {
                        continue;
                    };
                    let mut cert = cert_from(&row)?;
                    if cert.revocation.is_some() || cert.is_expired(now) {
                        continue;
                    }
                    revoke_cert(&tx, &mut cert, revocation).await?;
                    events.push(AuditEvent {
                        target: serial.clone(),
                        ..event.clone()
                    });
                    out.push(cert);
                }
                notify_revoked(&tx, &out.iter().collect::<Vec<_>>()).await?;
                let entries = append_audit(&tx, &events).await?;
                tx.commit().await?;
                Ok((out, entries))
            }
        })
    }

    fn next_supersession(&self) -> Result<Option<Supersession>, StoreError> {
        self.read(move |c| async move {
            c.query_opt(
                "SELECT serial, renewed_by, due FROM supersessions WHERE due IS NOT NULL \
                 ORDER BY due, serial LIMIT 1",
                &[],
            )
            .await?
            .map(|r| {
                Ok(Supersession {
                    serial: r.try_get("serial")?,
                    renewed_by: r.try_get("renewed_by")?,
                    due: r.try_get("due")?,
                })
            })
            .transpose()
        })
    }

    fn count_expiring(
        &self,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let (from, to) = (next_second(now), next_second(until));
        self.read(move |c| async move {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM certificates c \
                     WHERE c.not_after >= $1 AND c.not_after < $2 AND c.revoked_at IS NULL \
                     AND NOT EXISTS (SELECT 1 FROM revocations r \
                                     WHERE r.issuer_id = c.issuer_id AND r.serial = c.serial) \
                     AND NOT EXISTS (SELECT 1 FROM supersessions s WHERE s.serial = c.serial)",
                    &[&from, &to],
                )
                .await?
                .try_get(0)?;
            to_u64(n, "count", "expiring")
        })
    }

    fn put_issuer(&self, issuer: &IssuerRecord, event: AuditEvent) -> Result<(), StoreError> {
        if issuer.version != RECORD_VERSION {
            return Err(StoreError::Invalid {
                kind: "issuer",
                detail: format!("record format version {}", issuer.version),
            });
        }
        let args = Arc::new((issuer.clone(), event));
        self.write(move |pool| {
            let args = args.clone();
            async move {
                let (issuer, event) = &*args;
                let mut c = pool.get().await?;
                let tx = c.transaction().await?;
                upsert_issuer(&tx, issuer).await?;
                notify(&tx, &StoreChange::Issuers).await?;
                let entries = append_audit(&tx, std::slice::from_ref(event)).await?;
                tx.commit().await?;
                Ok(((), entries))
            }
        })
    }

    fn issuers(&self) -> Result<Vec<IssuerRecord>, StoreError> {
        self.read(move |c| async move {
            let rows = c
                .query(
                    "SELECT id, state, cert_der, not_before, not_after, created_at \
                     FROM issuers ORDER BY id",
                    &[],
                )
                .await?;
            rows.iter().map(issuer_from).collect()
        })
    }

    fn reserve_crl_number(&self, issuer_id: &str) -> Result<u64, StoreError> {
        let issuer_id = Arc::new(issuer_id.to_owned());
        self.write(move |pool| {
            let issuer_id = issuer_id.clone();
            async move {
                let mut c = pool.get().await?;
                let tx = c.transaction().await?;
                let (reserved, saved) = lock_crl_numbers(&tx, &issuer_id).await?;
                let next = reserved.max(saved).checked_add(1).ok_or_else(|| {
                    Fail::Store(StoreError::Corrupt {
                        kind: "CRL number",
                        key: issuer_id.to_string(),
                        detail: "exhausted".to_owned(),
                    })
                })?;
                tx.execute(
                    "UPDATE crl_numbers SET reserved = $2 WHERE issuer_id = $1",
                    &[&*issuer_id, &to_i64(next, "CRL number")?],
                )
                .await?;
                tx.commit().await?;
                Ok((next, Vec::new()))
            }
        })
    }

    fn save_crl(&self, crl: &CrlRecord, event: AuditEvent) -> Result<(), StoreError> {
        if crl.version != RECORD_VERSION {
            return Err(StoreError::Invalid {
                kind: "CRL",
                detail: format!("record format version {}", crl.version),
            });
        }
        let args = Arc::new((crl.clone(), event));
        self.write(move |pool| {
            let args = args.clone();
            async move {
                let (crl, event) = &*args;
                let mut c = pool.get().await?;
                let tx = c.transaction().await?;
                // The issuer's crl_numbers row is the lock: saves of one issuer are serial.
                let (reserved, _) = lock_crl_numbers(&tx, &crl.issuer_id).await?;
                let saved = tx
                    .query_opt(
                        "SELECT issuer_id, number, this_update, next_update, der FROM crls \
                         WHERE issuer_id = $1 ORDER BY number DESC LIMIT 1",
                        &[&crl.issuer_id],
                    )
                    .await?
                    .map(|r| crl_from(&r))
                    .transpose()?;
                if let Some(saved) = saved {
                    if saved.number == crl.number && saved.der == crl.der {
                        return Ok(((), Vec::new()));
                    }
                    if crl.number <= saved.number {
                        return Err(Fail::Store(StoreError::StaleCrl {
                            issuer_id: crl.issuer_id.clone(),
                            number: crl.number,
                            saved: saved.number,
                        }));
                    }
                }
                let number = to_i64(crl.number, "CRL number")?;
                insert_crl(&tx, crl).await?;
                if reserved < crl.number {
                    tx.execute(
                        "UPDATE crl_numbers SET reserved = $2 WHERE issuer_id = $1",
                        &[&crl.issuer_id, &number],
                    )
                    .await?;
                }
                tx.execute(
                    "DELETE FROM crls WHERE issuer_id = $1 AND number <= $2::bigint - $3::bigint",
                    &[&crl.issuer_id, &number, &CRL_HISTORY],
                )
                .await?;
                notify(
                    &tx,
                    &StoreChange::Crl {
                        issuer_id: crl.issuer_id.clone(),
                        number: crl.number,
                    },
                )
                .await?;
                let entries = append_audit(&tx, std::slice::from_ref(event)).await?;
                tx.commit().await?;
                Ok(((), entries))
            }
        })
    }

    fn latest_crl(&self, issuer_id: &str) -> Result<Option<CrlRecord>, StoreError> {
        let issuer_id = issuer_id.to_owned();
        self.read(move |c| async move {
            c.query_opt(
                "SELECT issuer_id, number, this_update, next_update, der FROM crls \
                 WHERE issuer_id = $1 ORDER BY number DESC LIMIT 1",
                &[&issuer_id],
            )
            .await?
            .map(|r| crl_from(&r))
            .transpose()
        })
    }

    fn append_audit(&self, event: AuditEvent) -> Result<AuditEntry, StoreError> {
        let event = Arc::new(event);
        self.write(move |pool| {
            let event = event.clone();
            async move {
                let mut c = pool.get().await?;
                let tx = c.transaction().await?;
                let entries = append_audit(&tx, std::slice::from_ref(&*event)).await?;
                tx.commit().await?;
                let entry = entries.first().cloned().ok_or_else(|| {
                    Fail::Unavailable("the audit append returned no entry".to_owned())
                })?;
                Ok((entry, entries))
            }
        })
    }

    fn audit_entries(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let from = i64::try_from(from_seq).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| async move {
            let rows = c
                .query(
                    &format!(
                        "SELECT {AUDIT_COLS} FROM audit WHERE seq >= $1 ORDER BY seq LIMIT $2"
                    ),
                    &[&from, &limit],
                )
                .await?;
            rows.iter().map(audit_from).collect()
        })
    }

    fn verify_audit(&self) -> Result<AuditVerification, StoreError> {
        // The head first: entries appended while we read lie beyond it and are not checked.
        let head = self.durable_audit_head()?;
        let failure: Arc<Mutex<Option<StoreError>>> = Arc::default();
        let pages = AuditPages {
            store: self,
            next: 1,
            last: head.seq,
            buffer: std::collections::VecDeque::new(),
            failure: failure.clone(),
        };
        let mut last = ChainHead::GENESIS;
        let verification = audit::verify_chain(pages.inspect(|e| {
            if let Ok(e) = e {
                last = e.head();
            }
        }));
        if let Some(e) = failure.lock().ok().and_then(|mut f| f.take()) {
            // The database failed while reading: that says nothing about the chain.
            return Err(e);
        }
        Ok(verification.ending_at(last, head))
    }

    fn durable_audit_head(&self) -> Result<ChainHead, StoreError> {
        // Every committed transaction is durable (synchronous_commit=on).
        self.read(move |c| async move {
            let row = c
                .query_one("SELECT seq, hash FROM audit_head WHERE id", &[])
                .await?;
            Ok(ChainHead {
                seq: to_u64(row.try_get("seq")?, "audit chain head", "audit_head")?,
                hash: hash32(row.try_get("hash")?, "audit chain head", "audit_head")?,
            })
        })
    }

    fn reinstate_revocations(
        &self,
        issuer_id: &str,
        entries: &[RevokedEntry],
        actor: &str,
    ) -> Result<Vec<Reinstated>, StoreError> {
        let args = Arc::new((issuer_id.to_owned(), entries.to_vec(), actor.to_owned()));
        self.write(move |pool| {
            let args = args.clone();
            async move {
                let (issuer_id, entries, actor) = &*args;
                let mut c = pool.get().await?;
                let tx = c.transaction().await?;
                let mut out = Vec::with_capacity(entries.len());
                let mut events = Vec::new();
                let mut changed = Vec::new();
                for e in entries {
                    let indexed = tx
                        .query_opt(
                            "SELECT 1 FROM revocations WHERE issuer_id = $1 AND serial = $2 \
                             FOR UPDATE",
                            &[issuer_id, &e.serial],
                        )
                        .await?
                        .is_some();
                    let cert = tx
                        .query_opt(
                            &format!(
                                "SELECT {CERT_COLS} FROM certificates WHERE serial = $1 FOR UPDATE"
                            ),
                            &[&e.serial],
                        )
                        .await?
                        .map(|r| cert_from(&r))
                        .transpose()?;
                    let (outcome, not_after, revocation) = match cert {
                        Some(mut c) if c.revocation.is_none() => {
                            let reason = i16::from(e.revocation.reason.code());
                            tx.execute(
                                "UPDATE certificates SET revoked_at = $2, reason = $3, \
                                 invalidity_date = $4 WHERE serial = $1",
                                &[
                                    &e.serial,
                                    &e.revocation.revoked_at,
                                    &reason,
                                    &e.revocation.invalidity_date,
                                ],
                            )
                            .await?;
                            c.revocation = Some(e.revocation.clone());
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
                    upsert_revoked(
                        &tx,
                        issuer_id,
                        &RevokedEntry {
                            serial: e.serial.clone(),
                            not_after,
                            revocation,
                        },
                    )
                    .await?;
                    let what = match &outcome {
                        Reinstated::Revoked(_) => "certificate revoked again",
                        Reinstated::Indexed(_) => "revocation index entry restored",
                        _ => "serial unknown to the store (issued after the backup?)",
                    };
                    events.push(AuditEvent::new(
                        actor.as_str(),
                        "revocation.reinstated",
                        format!("serial:{}", e.serial),
                        format!(
                            "issuer={issuer_id} reason={} revoked_at={} from the last published CRL: {what}",
                            e.revocation.reason,
                            e.revocation.revoked_at.unix_timestamp()
                        ),
                    ));
                    changed.push(e.serial.clone());
                    out.push(outcome);
                }
                if !changed.is_empty() {
                    notify(
                        &tx,
                        &StoreChange::Revoked {
                            issuer_id: issuer_id.clone(),
                            serials: changed,
                        },
                    )
                    .await?;
                }
                let audited = append_audit(&tx, &events).await?;
                tx.commit().await?;
                Ok((out, audited))
            }
        })
    }

    fn backup_to(&self, path: &Path) -> Result<(), StoreError> {
        self.backup_into_sled(path)
    }

    fn publication_lock(&self, issuer_id: &str) -> Result<PublicationLock, StoreError> {
        self.lock_publication(issuer_id)
    }

    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<StoreChange>> {
        Some(self.subscribe_changes())
    }

    fn kind(&self) -> &'static str {
        "postgresql"
    }

    fn put_key_blob(&self, name: &str, blob: &[u8], event: AuditEvent) -> Result<(), StoreError> {
        validate_key_blob_name(name)?;
        let args = Arc::new((name.to_owned(), blob.to_vec(), event));
        self.write(move |pool| {
            let args = args.clone();
            async move {
                let (name, blob, event) = &*args;
                let mut c = pool.get().await?;
                let tx = c.transaction().await?;
                let inserted = tx
                    .execute(
                        "INSERT INTO key_blobs (name, blob) VALUES ($1, $2) \
                         ON CONFLICT (name) DO NOTHING",
                        &[name, blob],
                    )
                    .await?;
                if inserted == 0 {
                    let stored: Vec<u8> = tx
                        .query_one("SELECT blob FROM key_blobs WHERE name = $1", &[name])
                        .await?
                        .try_get(0)?;
                    if stored == *blob {
                        return Ok(((), Vec::new()));
                    }
                    return Err(Fail::Store(StoreError::Conflict {
                        kind: "key blob",
                        key: name.clone(),
                    }));
                }
                notify(&tx, &StoreChange::KeyBlobs).await?;
                let entries = append_audit(&tx, std::slice::from_ref(event)).await?;
                tx.commit().await?;
                Ok(((), entries))
            }
        })
    }

    fn key_blobs(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.read(move |c| async move {
            let rows = c
                .query("SELECT name, blob FROM key_blobs ORDER BY name", &[])
                .await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        })
    }
}

/// Inserts or replaces an issuer row.
pub(crate) async fn upsert_issuer(tx: &Tx<'_>, i: &IssuerRecord) -> Result<(), Fail> {
    tx.execute(
        "INSERT INTO issuers (id, state, cert_der, not_before, not_after, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, cert_der = EXCLUDED.cert_der, \
             not_before = EXCLUDED.not_before, not_after = EXCLUDED.not_after, \
             created_at = EXCLUDED.created_at",
        &[
            &i.id,
            &i.state.as_str(),
            &i.cert_der,
            &i.not_before,
            &i.not_after,
            &i.created_at,
        ],
    )
    .await?;
    Ok(())
}

/// Inserts a CRL row.
pub(crate) async fn insert_crl(tx: &Tx<'_>, crl: &CrlRecord) -> Result<(), Fail> {
    tx.execute(
        "INSERT INTO crls (issuer_id, number, this_update, next_update, der) \
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &crl.issuer_id,
            &to_i64(crl.number, "CRL number")?,
            &crl.this_update,
            &crl.next_update,
            &crl.der,
        ],
    )
    .await?;
    Ok(())
}

/// Locks (creating it if needed) the issuer's `crl_numbers` row: (reserved, newest saved).
async fn lock_crl_numbers(tx: &Tx<'_>, issuer_id: &str) -> Result<(u64, u64), Fail> {
    tx.execute(
        "INSERT INTO crl_numbers (issuer_id, reserved) VALUES ($1, 0) \
         ON CONFLICT (issuer_id) DO NOTHING",
        &[&issuer_id],
    )
    .await?;
    let reserved: i64 = tx
        .query_one(
            "SELECT reserved FROM crl_numbers WHERE issuer_id = $1 FOR UPDATE",
            &[&issuer_id],
        )
        .await?
        .try_get(0)?;
    let saved: i64 = tx
        .query_one(
            "SELECT coalesce(max(number), 0) FROM crls WHERE issuer_id = $1",
            &[&issuer_id],
        )
        .await?
        .try_get(0)?;
    Ok((
        to_u64(reserved, "CRL number", issuer_id)?,
        to_u64(saved, "CRL number", issuer_id)?,
    ))
}

/// The audit log read page by page, up to a fixed last entry (for `verify_chain`). A
/// database failure ends the iteration and is kept in `failure`.
struct AuditPages<'a> {
    store: &'a PgStore,
    next: u64,
    last: u64,
    buffer: std::collections::VecDeque<Result<AuditEntry, StoreError>>,
    failure: Arc<Mutex<Option<StoreError>>>,
}

impl Iterator for AuditPages<'_> {
    type Item = Result<AuditEntry, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffer.is_empty() && self.next <= self.last {
            let from = i64::try_from(self.next).unwrap_or(i64::MAX);
            let to = i64::try_from(self.last).unwrap_or(i64::MAX);
            let page = self.store.read(move |c| async move {
                let rows = c
                    .query(
                        &format!(
                            "SELECT {AUDIT_COLS} FROM audit WHERE seq >= $1 AND seq <= $2 \
                             ORDER BY seq LIMIT $3"
                        ),
                        &[&from, &to, &AUDIT_PAGE],
                    )
                    .await?;
                let mut last_seq = None;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    last_seq = r.try_get::<_, i64>("seq").ok();
                    out.push(audit_from(r).map_err(Fail::into_store));
                }
                Ok((out, last_seq))
            });
            match page {
                Ok((rows, Some(last_seq))) => {
                    self.buffer.extend(rows);
                    self.next = u64::try_from(last_seq)
                        .unwrap_or(u64::MAX)
                        .saturating_add(1);
                }
                Ok((_, None)) => self.next = self.last.saturating_add(1),
                Err(e) => {
                    if let Ok(mut f) = self.failure.lock() {
                        *f = Some(e);
                    }
                    self.next = self.last.saturating_add(1);
                    return None;
                }
            }
        }
        self.buffer.pop_front()
    }
}
