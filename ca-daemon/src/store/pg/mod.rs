//! [`Store`] on PostgreSQL, for several daemons on one database (issue #15).
//!
//! # Why a synchronous trait with its own runtime
//! The [`Store`] trait stays synchronous: the daemon calls it from `spawn_blocking`, the CLI
//! outside any runtime, and sled (the embedded default) is synchronous anyway. A [`PgStore`]
//! therefore owns a small tokio runtime of its own (2 worker threads named `pg-store`) on
//! which the connection pool (deadpool-postgres over tokio-postgres) and the notification
//! listener live. Each trait method spawns its future onto that runtime and waits for the
//! answer on a channel: this works from `spawn_blocking` threads and plain threads alike, and
//! never panics when called, wrongly, from inside an async context (it only blocks that
//! thread). Every call is bounded: getting a connection by the connect timeout, the whole
//! call by [`PgOptions::call_timeout`]; a database that cannot be reached is
//! [`StoreError::Unavailable`] (gRPC UNAVAILABLE), other SQL errors [`StoreError::Database`]
//! (INTERNAL). Neither carries query parameters.
//!
//! # Tables
//! Real tables with constraints (`migrations/*.sql`, a comment on every table): tickets,
//! certificates (serial primary key, issuer foreign key, facility / person / device
//! indexes), revocations (the revoked-by-issuer index that also holds serials the store does
//! not know), supersessions, issuers, crls (unique issuer + number), crl_numbers, audit,
//! audit_head and key_blobs. Migrations are versioned (`schema_version`) and applied under
//! `pg_advisory_lock`, so two nodes starting at once cannot race; a binary refuses a database
//! whose schema is newer than it knows, naming both versions.
//!
//! # Transactions and locks
//! Every mutating method is one READ COMMITTED transaction, durable at commit
//! (`synchronous_commit=on` is set on every connection). Conflicts are decided by row locks
//! taken first in each transaction: a redemption locks its ticket (`SELECT ... FOR UPDATE`),
//! so of many concurrent redemptions on different connections and nodes exactly one wins and
//! failed attempts are counted in the row; `save_crl` locks the issuer's `crl_numbers` row, so
//! CRL numbers per issuer strictly increase in commit order. Serialization failures and
//! deadlocks are retried inside the store.
//!
//! # One audit chain for every node
//! The audit append takes the single `audit_head` row `FOR UPDATE` as the last step of the
//! same transaction as the change, computes the next entries with [`crate::audit`]'s hashing
//! and moves the head. Appends are thus one total order across nodes, and
//! [`Store::verify_audit`] and [`Store::durable_audit_head`] behave exactly as sled's (the head
//! row plays the part of sled's `meta/audit_head`). Entry times are kept as Unix nanoseconds
//! plus offset, exactly as hashed.
//!
//! # Publication lock
//! [`Store::publication_lock`] takes a session advisory lock (`pg_try_advisory_lock`, polled,
//! so no blocking lock request is ever left running on a pooled connection after a timeout) on
//! a dedicated pooled connection, held by the returned guard; dropping the guard unlocks it
//! (and a connection that cannot be unlocked is closed rather than returned to the pool). If
//! the node dies, PostgreSQL releases the lock with the session. Waiting is bounded by the
//! call timeout (`Unavailable`).
//!
//! # Notifications
//! Each mutating transaction calls `pg_notify('ca_changes', payload)` inside the transaction,
//! so a notification is delivered only if the change commits. A listener task keeps its own,
//! non-pooled connection (`LISTEN ca_changes`), reconnects with backoff, and sends
//! [`StoreChange::Resync`] after every (re)connect, since notifications sent while it was
//! disconnected are lost. Payloads stay well under PostgreSQL's 8000-byte limit: a revocation
//! of many certificates is one notification per issuer with an empty serial list.
//!
//! # Times
//! Record times are `timestamptz` (microsecond precision, UTC); audit times are exact.

mod backup;
mod ops;
pub mod tls;

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::broadcast;
use tokio_postgres::error::SqlState;
use zeroize::Zeroizing;

use super::{PublicationLock, StoreChange, StoreError};

/// The notification channel every node listens on.
pub const CHANNEL: &str = "ca_changes";

/// The schema version this binary knows (the highest migration).
pub const SCHEMA_VERSION: i32 = 1;

/// The migrations, in order: (version, SQL).
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("migrations/0001_init.sql"))];

/// Advisory-lock key of the migrations (`pg_advisory_lock(bigint)`): "ca-migr" in ASCII.
const MIGRATION_LOCK: i64 = 0x0063_612d_6d69_6772;
/// First key of the publication locks (`pg_advisory_lock(int, int)`), the second being a
/// hash of the issuer id.
const PUBLICATION_LOCK_CLASS: i32 = 0x6361_7075;

/// Serialization failures / deadlocks are retried this many times.
const MAX_RETRIES: u32 = 20;

/// How to reach the database.
#[derive(Clone)]
pub struct PgOptions {
    config: tokio_postgres::Config,
    /// `sslmode` and friends, with the TLS connector built from them (see [`tls`]).
    tls: tls::PgTls,
    /// The URL without secrets, for logs and errors.
    display: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Bound on connecting (a new connection of the pool, the listener's).
    pub connect_timeout: Duration,
    /// Bound on a whole call (connect, statements, commit).
    pub call_timeout: Duration,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &self.display)
            .field("tls", &self.tls)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl PgOptions {
    /// Parses `postgresql://user@host:port/db` (or `postgres://...`, with optional `?`
    /// parameters such as `connect_timeout`). A password inside the URL is refused (it would
    /// end up in shell history, process lists and logs): pass it in `password`, read from
    /// `--store-password-file`. Defaults: pool of 8, connect timeout 5 s, call timeout 30 s,
    /// TCP keepalives after 10 s idle. TLS follows libpq's `sslmode` (default `prefer`),
    /// `sslrootcert`, `sslcert` and `sslkey` ([`tls`]); their files are read here.
    pub fn from_url(url: &str, password: Option<Zeroizing<String>>) -> Result<Self, StoreError> {
        let invalid = |detail: String| StoreError::Invalid {
            kind: "store URL",
            detail,
        };
        let rest = url
            .strip_prefix("postgresql://")
            .or_else(|| url.strip_prefix("postgres://"))
            .ok_or_else(|| invalid("expected postgresql://user@host:port/database".to_owned()))?;
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && userinfo.contains(':')
        {
            return Err(invalid(
                "the URL contains a password; remove it and pass the password with --store-password-file"
                    .to_owned(),
            ));
        }
        let (pg_url, mut tls) = tls::PgTls::from_url(url).map_err(&invalid)?;
        let mut config: tokio_postgres::Config = pg_url
            .parse()
            .map_err(|e: tokio_postgres::Error| invalid(format!("cannot be parsed: {e}")))?;
        if config.get_password().is_some() {
            return Err(invalid(
                "the URL contains a password; pass it with --store-password-file instead"
                    .to_owned(),
            ));
        }
        if config.get_user().is_none() {
            return Err(invalid(
                "names no user (postgresql://USER@host/db)".to_owned(),
            ));
        }
        if config.get_dbname().is_none() {
            return Err(invalid(
                "names no database (postgresql://user@host/DATABASE)".to_owned(),
            ));
        }
        if let Some(p) = &password {
            config.password(p.as_bytes());
        }
        tls.apply(&mut config);
        let connect_timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(5));
        config.connect_timeout(connect_timeout);
        // A connection cut off without a FIN (a partition) is noticed within about 20 s,
        // unless the URL says otherwise (PostgreSQL's own default idle time is 2 hours).
        if !url.contains("keepalives_idle") {
            config.keepalives_idle(Duration::from_secs(10));
        }
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(Duration::from_secs(3));
        }
        if config.get_keepalives_retries().is_none() {
            config.keepalives_retries(3);
        }
        // Durable at commit whatever the database's default; a name in pg_stat_activity.
        config.options("-c synchronous_commit=on");
        config.application_name("ca-daemon");
        let display = url.split('?').next().unwrap_or_default().to_owned();
        Ok(Self {
            config,
            tls,
            display,
            pool_size: 8,
            connect_timeout,
            call_timeout: Duration::from_secs(30),
        })
    }

    /// The URL without parameters (it never holds a password), for logs.
    pub fn display_url(&self) -> &str {
        &self.display
    }

    /// The TLS settings.
    pub fn tls(&self) -> &tls::PgTls {
        &self.tls
    }
}

/// The PostgreSQL store. See the module doc.
pub struct PgStore {
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    changes: broadcast::Sender<StoreChange>,
    opts: PgOptions,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.opts.display)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Also safe inside an async context; closes every connection (and so releases any
        // advisory lock still held by a leaked guard).
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// What can go wrong inside a call, before it becomes a [`StoreError`].
pub(crate) enum Fail {
    Store(StoreError),
    Pg(tokio_postgres::Error),
    Unavailable(String),
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Pg(e)
    }
}

impl From<deadpool_postgres::PoolError> for Fail {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::PoolError as P;
        match e {
            P::Backend(e) => Self::Pg(e),
            P::Timeout(t) => Self::Unavailable(format!("no database connection in time ({t:?})")),
            P::Closed => Self::Unavailable("the connection pool is closed".to_owned()),
            other => Self::Unavailable(format!("cannot get a database connection: {other}")),
        }
    }
}

impl Fail {
    fn retryable(&self) -> bool {
        matches!(self, Self::Pg(e) if matches!(e.code(),
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED))
    }

    /// Whether a unique (or primary key) constraint was violated.
    fn is_unique_violation(&self) -> bool {
        matches!(self, Self::Pg(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION))
    }

    pub(crate) fn into_store(self) -> StoreError {
        match self {
            Self::Store(e) => e,
            Self::Unavailable(detail) => StoreError::Unavailable { detail },
            Self::Pg(e) => pg_error(&e),
        }
    }
}

/// Classifies a client error. Only the server's message (no DETAIL, which can quote row
/// values) and the SQLSTATE are kept.
pub(crate) fn pg_error(e: &tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // Class 08: connection exception; 57P01-57P03: shutdown / cannot connect now; 53:
        // insufficient resources (too many connections); 57014: statement cancelled.
        let unavailable = code.starts_with("08")
            || code.starts_with("57P")
            || code.starts_with("53")
            || code == "57014";
        let detail = format!("{} (SQLSTATE {code})", db.message());
        return if unavailable {
            StoreError::Unavailable { detail }
        } else {
            StoreError::Database { detail }
        };
    }
    if let Some(detail) = tls::explain(e) {
        return StoreError::Unavailable { detail };
    }
    let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io || e.to_string().contains("timed out") {
        StoreError::Unavailable {
            detail: e.to_string(),
        }
    } else {
        StoreError::Database {
            detail: e.to_string(),
        }
    }
}

/// Runs `attempt` until it succeeds or fails for a reason other than a serialization
/// failure or deadlock.
pub(crate) async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Fail>>,
{
    let mut n = 0u32;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if e.retryable() && n < MAX_RETRIES => {
                n += 1;
                let jitter = u64::from(rand::random::<u8>() % 20);
                tokio::time::sleep(Duration::from_millis(u64::from(n.min(10)) * 5 + jitter)).await;
            }
            Err(e) => return Err(e.into_store()),
        }
    }
}

impl PgStore {
    /// Connects, applies the migrations this binary knows (under an advisory lock) and
    /// starts the notification listener. `Unavailable` if the database cannot be reached,
    /// `Invalid` if its schema is newer than this binary's.
    pub fn connect(opts: &PgOptions) -> Result<Self, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pg-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io {
                path: "pg-store runtime".into(),
                source: e,
            })?;
        let handle = rt.handle().clone();
        let manager = Manager::from_config(
            opts.config.clone(),
            opts.tls.connector(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = {
            // Building the pool needs the runtime's context (it spawns nothing yet).
            let _enter = rt.enter();
            Pool::builder(manager)
                .max_size(opts.pool_size.max(1))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                // Waiting for a free connection is load, not an outage: the call's bound.
                .wait_timeout(Some(opts.call_timeout))
                .create_timeout(Some(opts.connect_timeout))
                .recycle_timeout(Some(opts.connect_timeout))
                .build()
                .map_err(|e| StoreError::Database {
                    detail: format!("cannot build the connection pool: {e}"),
                })?
        };
        let (changes, _) = broadcast::channel(1024);
        let store = Self {
            rt: Some(rt),
            handle,
            pool,
            changes,
            opts: opts.clone(),
        };
        // The first connection on its own: a refused certificate, a server without TLS
        // under `require`, a pg_hba.conf rejection or a wrong password is told here, naming
        // the URL (without password) and the TLS mode.
        let pool = store.pool.clone();
        store
            .run(async move {
                pool.get()
                    .await
                    .map(drop)
                    .map_err(|e| Fail::from(e).into_store())
            })
            .map_err(|e| {
                let about = |detail: String| {
                    format!(
                        "cannot connect to {} with {}: {detail}",
                        opts.display,
                        opts.tls.describe()
                    )
                };
                match e {
                    StoreError::Unavailable { detail } => StoreError::Unavailable {
                        detail: about(detail),
                    },
                    StoreError::Database { detail } => StoreError::Database {
                        detail: about(detail),
                    },
                    other => other,
                }
            })?;
        let pool = store.pool.clone();
        store.run(async move { migrate(&pool).await })?;
        store.handle.spawn(listen(
            store.opts.config.clone(),
            store.opts.tls.connector(),
            store.changes.clone(),
        ));
        let link = store.opts.tls.describe();
        tracing::info!(url = %store.opts.display, tls = %link, schema_version = SCHEMA_VERSION, "PostgreSQL store connected");
        if store.opts.tls.verification != tls::Verification::Full
            && !all_hosts_local(&store.opts.config)
        {
            tracing::warn!(url = %store.opts.display, tls = %link, "the link to a database on another machine is not fully verified: use sslmode=verify-full with sslrootcert (docs/cluster.md)");
        }
        Ok(store)
    }

    /// The URL without secrets.
    pub fn display_url(&self) -> &str {
        &self.opts.display
    }

    /// Runs `fut` on the store's runtime and waits for it, bounded by the call timeout.
    pub(crate) fn run<T, Fut>(&self, fut: Fut) -> Result<T, StoreError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let limit = self.opts.call_timeout;
        self.handle.spawn(async move {
            let out = match tokio::time::timeout(limit, fut).await {
                Ok(out) => out,
                Err(_) => Err(StoreError::Unavailable {
                    detail: format!("the database did not answer within {limit:?}"),
                }),
            };
            let _ = tx.send(out);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(StoreError::Unavailable {
                detail: "the store's runtime has stopped".to_owned(),
            })
        })
    }

    /// Takes the publication lock of `issuer_id` (see the module doc).
    fn lock_publication(&self, issuer_id: &str) -> Result<PublicationLock, StoreError> {
        let key = issuer_lock_key(issuer_id);
        let pool = self.pool.clone();
        let handle = self.handle.clone();
        let id = issuer_id.to_owned();
        // Within the call timeout, with a margin so that our own message wins.
        let patience = self
            .opts
            .call_timeout
            .saturating_sub(Duration::from_secs(1));
        // pg_try_advisory_lock, polled: a blocking pg_advisory_lock left running when the
        // call times out would take the lock later on a connection back in the pool. The
        // guard exists as soon as the lock does, so a dropped future unlocks it.
        let guard = self.run(async move {
            let client = pool.get().await.map_err(|e| Fail::from(e).into_store())?;
            let started = tokio::time::Instant::now();
            let mut pause = Duration::from_millis(10);
            loop {
                let got: bool = client
                    .query_one(
                        "SELECT pg_try_advisory_lock($1, $2)",
                        &[&PUBLICATION_LOCK_CLASS, &key],
                    )
                    .await
                    .and_then(|r| r.try_get(0))
                    .map_err(|e| pg_error(&e))?;
                if got {
                    return Ok(PgLockGuard {
                        obj: Some(client),
                        handle,
                        key,
                    });
                }
                if started.elapsed() >= patience {
                    return Err(StoreError::Unavailable {
                        detail: format!(
                            "the publication lock of {id} has been held elsewhere for {patience:?}"
                        ),
                    });
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        })?;
        Ok(PublicationLock::new(issuer_id, Box::new(guard)))
    }
}

/// Holds a pooled connection with a session advisory lock; unlocks on drop.
struct PgLockGuard {
    obj: Option<deadpool_postgres::Object>,
    handle: tokio::runtime::Handle,
    key: i32,
}

impl Drop for PgLockGuard {
    fn drop(&mut self) {
        let Some(obj) = self.obj.take() else { return };
        let key = self.key;
        // If the runtime is gone, so is the connection (and with it the lock).
        drop(self.handle.spawn(async move {
            let unlocked = obj
                .query_one(
                    "SELECT pg_advisory_unlock($1, $2)",
                    &[&PUBLICATION_LOCK_CLASS, &key],
                )
                .await
                .ok()
                .and_then(|r| r.try_get::<_, bool>(0).ok())
                .unwrap_or(false);
            if !unlocked {
                // Never hand a connection that may still hold the lock back to the pool.
                drop(deadpool_postgres::Object::take(obj));
            }
        }));
    }
}

/// Whether every host of `config` is a Unix socket or a loopback address / `localhost`
/// (where an unauthenticated database link warrants no warning).
fn all_hosts_local(config: &tokio_postgres::Config) -> bool {
    // With `hostaddr=`, those are the addresses connected to (one per host).
    if !config.get_hostaddrs().is_empty() {
        return config.get_hostaddrs().iter().all(|ip| ip.is_loopback());
    }
    config.get_hosts().iter().all(|h| match h {
        tokio_postgres::config::Host::Tcp(name) => {
            name == "localhost"
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        tokio_postgres::config::Host::Unix(_) => true,
    })
}

/// The second advisory-lock key of an issuer: a stable 32-bit hash of its id.
fn issuer_lock_key(issuer_id: &str) -> i32 {
    let d = ring::digest::digest(&ring::digest::SHA256, issuer_id.as_bytes());
    let b = d.as_ref();
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Applies the missing migrations under the migration advisory lock.
async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(|e| Fail::from(e).into_store())?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| pg_error(&e))?;
    let result = migrate_locked(&mut client).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    if unlocked.is_err() {
        drop(deadpool_postgres::Object::take(client));
    }
    result
}

async fn migrate_locked(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (
                 version     integer PRIMARY KEY,
                 applied_at  timestamptz NOT NULL DEFAULT now()
             );
             COMMENT ON TABLE schema_version IS
                 'Migrations of the ca-daemon store applied to this database, one row each'",
        )
        .await
        .map_err(|e| pg_error(&e))?;
    let current: i32 = client
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| pg_error(&e))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Invalid {
            kind: "database schema",
            detail: format!(
                "the database has schema version {current}, newer than this binary's schema version {SCHEMA_VERSION}; upgrade ca-daemon on this node"
            ),
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let tx = client.transaction().await.map_err(|e| pg_error(&e))?;
        tx.batch_execute(sql).await.map_err(|e| pg_error(&e))?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(|e| pg_error(&e))?;
        tx.commit().await.map_err(|e| pg_error(&e))?;
        tracing::info!(version, "applied store schema migration");
    }
    Ok(())
}

/// The listener: its own connection, `LISTEN`, reconnect with backoff, `Resync` after each
/// (re)connect. Ends with the runtime.
async fn listen(
    config: tokio_postgres::Config,
    connector: tls::PgConnector,
    changes: broadcast::Sender<StoreChange>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match config.connect(connector.clone()).await {
            Ok((client, mut conn)) => {
                let (msg_tx, mut msg_rx) = tokio::sync::mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    loop {
                        let msg = std::future::poll_fn(|cx| conn.poll_message(cx)).await;
                        match msg {
                            Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                                if msg_tx.send(n.payload().to_owned()).is_err() {
                                    return;
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => return,
                        }
                    }
                });
                if client
                    .batch_execute(&format!("LISTEN {CHANNEL}"))
                    .await
                    .is_ok()
                {
                    backoff = Duration::from_millis(100);
                    let _ = changes.send(StoreChange::Resync);
                    while let Some(payload) = msg_rx.recv().await {
                        if let Some(change) = parse_change(&payload) {
                            let _ = changes.send(change);
                        }
                    }
                    tracing::warn!("lost the store's notification connection; reconnecting");
                }
                driver.abort();
            }
            Err(e) => {
                tracing::debug!(error = %e, "store notification listener cannot connect yet");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// The most serial bytes a `Revoked` notification lists before it says "many".
const MAX_PAYLOAD_SERIALS: usize = 6000;

/// Encodes a change as a notification payload (JSON, well under 8000 bytes).
pub(crate) fn encode_change(change: &StoreChange) -> String {
    use serde_json::json;
    let v = match change {
        StoreChange::Revoked { issuer_id, serials } => {
            let total: usize = serials.iter().map(|s| s.len() + 3).sum();
            let serials: &[String] = if total + issuer_id.len() > MAX_PAYLOAD_SERIALS {
                &[]
            } else {
                serials
            };
            json!({"t": "revoked", "i": issuer_id, "s": serials})
        }
        StoreChange::Crl { issuer_id, number } => json!({"t": "crl", "i": issuer_id, "n": number}),
        StoreChange::Issuers => json!({"t": "issuers"}),
        StoreChange::KeyBlobs => json!({"t": "key_blobs"}),
        StoreChange::Tickets => json!({"t": "tickets"}),
        StoreChange::Resync => json!({"t": "resync"}),
    };
    v.to_string()
}

/// Decodes [`encode_change`]; `None` for anything else.
pub(crate) fn parse_change(payload: &str) -> Option<StoreChange> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    let issuer = || v.get("i").and_then(|i| i.as_str()).map(str::to_owned);
    Some(match v.get("t")?.as_str()? {
        "revoked" => StoreChange::Revoked {
            issuer_id: issuer()?,
            serials: v
                .get("s")?
                .as_array()?
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect(),
        },
        "crl" => StoreChange::Crl {
            issuer_id: issuer()?,
            number: v.get("n")?.as_u64()?,
        },
        "issuers" => StoreChange::Issuers,
        "key_blobs" => StoreChange::KeyBlobs,
        "tickets" => StoreChange::Tickets,
        "resync" => StoreChange::Resync,
        _ => return None,
    })
}

/// Sends `change` to every node when the transaction of `client` commits.
pub(crate) async fn notify(
    client: &deadpool_postgres::Transaction<'_>,
    change: &StoreChange,
) -> Result<(), Fail> {
    let st = client.prepare_cached("SELECT pg_notify($1, $2)").await?;
    client
        .execute(&st, &[&CHANNEL, &encode_change(change)])
        .await?;
    Ok(())
}

/// The broadcast side, for [`ops`].
impl PgStore {
    pub(crate) fn pool(&self) -> Pool {
        self.pool.clone()
    }

    pub(crate) fn subscribe_changes(&self) -> broadcast::Receiver<StoreChange> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_and_passwords_refused_without_echo() {
        let o = PgOptions::from_url("postgresql://ca@127.0.0.1:5433/ca", None).expect("url");
        assert_eq!(o.display_url(), "postgresql://ca@127.0.0.1:5433/ca");
        assert!(PgOptions::from_url("postgres://ca@db/ca?connect_timeout=2", None).is_ok());
        let err = PgOptions::from_url("postgresql://ca:s3cret@db/ca", None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--store-password-file"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let err = PgOptions::from_url("postgresql://ca@db/ca?password=s3cret", None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("--store-password-file") && !err.contains("s3cret"),
            "{err}"
        );
        assert!(PgOptions::from_url("mysql://ca@db/ca", None).is_err());
        assert!(PgOptions::from_url("postgresql://db/ca", None).is_err());
        let o = PgOptions::from_url(
            "postgresql://ca@db/ca",
            Some(Zeroizing::new("pw-xyz".to_owned())),
        )
        .expect("url");
        assert!(!format!("{o:?}").contains("pw-xyz"));
    }

    #[test]
    fn store_urls_carry_their_tls_mode() {
        use tokio_postgres::config::SslMode as Wire;
        let o = PgOptions::from_url("postgresql://ca@db/ca", None).expect("url");
        assert_eq!(o.config.get_ssl_mode(), Wire::Prefer, "libpq's default");
        let o = PgOptions::from_url("postgresql://ca@db/ca?sslmode=disable", None).expect("url");
        assert_eq!(o.config.get_ssl_mode(), Wire::Disable);
        let o = PgOptions::from_url("postgresql://ca@db/ca?sslmode=require", None).expect("url");
        assert_eq!(o.config.get_ssl_mode(), Wire::Require);
        assert_eq!(o.display_url(), "postgresql://ca@db/ca");
        // libpq ignores sslmode on a Unix socket (PostgreSQL offers no TLS there).
        let o = PgOptions::from_url(
            "postgresql://ca@%2Frun%2Fpostgresql/ca?sslmode=require",
            None,
        )
        .expect("url");
        assert_eq!(o.config.get_ssl_mode(), Wire::Disable);
        assert!(o.tls().unix_socket && o.tls().describe().contains("Unix socket"));
        let o = PgOptions::from_url(
            "postgresql://ca@/ca?host=/run/postgresql&sslmode=require",
            None,
        )
        .expect("url");
        assert_eq!(o.config.get_ssl_mode(), Wire::Disable);
        // A TCP host among them: the mode stands.
        let o = PgOptions::from_url(
            "postgresql://ca@db/ca?host=/run/postgresql&sslmode=require",
            None,
        )
        .expect("url");
        assert_eq!(o.config.get_ssl_mode(), Wire::Require);
        assert!(!o.tls().unix_socket);
        let err = PgOptions::from_url("postgresql://ca@db/ca?sslmode=bogus", None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("invalid store URL: unknown sslmode"),
            "{err}"
        );
        let err = PgOptions::from_url(
            "postgresql://ca@db/ca?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            None,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            err.contains("cannot read sslrootcert /nonexistent/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn only_remote_databases_count_as_remote() {
        let local = |u: &str| all_hosts_local(&PgOptions::from_url(u, None).expect(u).config);
        assert!(local("postgresql://ca@127.0.0.1/ca"));
        assert!(local("postgresql://ca@localhost:5433/ca"));
        assert!(local("postgresql://ca@[::1]/ca"));
        assert!(local("postgresql://ca@%2Frun%2Fpostgresql/ca"));
        assert!(!local("postgresql://ca@db.internal/ca"));
        assert!(!local("postgresql://ca@10.0.0.5/ca"));
        assert!(!local("postgresql://ca@localhost/ca?hostaddr=10.0.0.5"));
        assert!(local("postgresql://ca@db.internal/ca?hostaddr=127.0.0.1"));
    }

    #[test]
    fn change_payloads_round_trip_and_stay_small() {
        for c in [
            StoreChange::Revoked {
                issuer_id: "iss-1".into(),
                serials: vec!["ab".into(), "cd".into()],
            },
            StoreChange::Crl {
                issuer_id: "root".into(),
                number: 7,
            },
            StoreChange::Issuers,
            StoreChange::KeyBlobs,
            StoreChange::Tickets,
            StoreChange::Resync,
        ] {
            assert_eq!(parse_change(&encode_change(&c)), Some(c));
        }
        let many = StoreChange::Revoked {
            issuer_id: "iss-1".into(),
            serials: (0..10_000).map(|i| format!("{i:040x}")).collect(),
        };
        let p = encode_change(&many);
        assert!(p.len() < 8000);
        assert_eq!(
            parse_change(&p),
            Some(StoreChange::Revoked {
                issuer_id: "iss-1".into(),
                serials: vec![]
            })
        );
        assert!(parse_change("{}").is_none() && parse_change("nope").is_none());
    }

    proptest::proptest! {
        /// Whatever is revoked, a notification stays under PostgreSQL's 8000-byte limit and
        /// tells either exactly the serials or "many" (empty).
        #[test]
        fn revoked_payloads_fit_and_round_trip(
            issuer in "[a-z0-9-]{1,64}",
            serials in proptest::collection::vec("[0-9a-f]{1,40}", 0..600),
        ) {
            let c = StoreChange::Revoked { issuer_id: issuer.clone(), serials: serials.clone() };
            let p = encode_change(&c);
            proptest::prop_assert!(p.len() < 8000, "{} bytes", p.len());
            match parse_change(&p) {
                Some(StoreChange::Revoked { issuer_id, serials: got }) => {
                    proptest::prop_assert_eq!(issuer_id, issuer);
                    proptest::prop_assert!(got == serials || got.is_empty());
                }
                other => proptest::prop_assert!(false, "{other:?}"),
            }
        }
    }

    #[test]
    fn key_hash_is_stable() {
        assert_eq!(issuer_lock_key("a"), issuer_lock_key("a"));
        assert_ne!(issuer_lock_key("a"), issuer_lock_key("b"));
    }
}
