//! `ca-daemon serve`: wires keys, store, policy and the authority to the gRPC and HTTP
//! listeners, runs the background publisher, and shuts down gracefully on SIGTERM/SIGINT
//! (listeners close, in-flight calls finish).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pki_policy::Policy;
use pki_proto::v1;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::authority::Authority;
use crate::grpc::auth::AuthzLayer;
use crate::grpc::services::{
    AdminService, CertificatesService, EnrollmentService, RevocationService,
};
use crate::keys::Passphrase;
use crate::store::Store;

/// Everything `serve` needs, resolved from flags and the config file.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Data directory.
    pub data_dir: PathBuf,
    /// gRPC listen address.
    pub grpc_listen: SocketAddr,
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// Metrics listen address.
    pub metrics_listen: Option<SocketAddr>,
    /// Policy file (None = built-in default).
    pub policy_file: Option<PathBuf>,
    /// Passphrase file (None = systemd credential or dev passphrase).
    pub passphrase_file: Option<PathBuf>,
    /// Create a dev PKI on first run.
    pub dev: bool,
    /// Base URL for CRL/OCSP in certificates (init only).
    pub url_base: Option<String>,
    /// Names the gRPC server certificate must carry (re-issued at start if one is missing).
    pub server_names: Vec<String>,
    /// sled page cache, MiB.
    pub store_cache_mib: u64,
    /// Where the store lives.
    pub store: StoreLocation,
}

/// Where the daemon's store lives (`--store`, `CA_DAEMON_STORE`, `store =` in the config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreLocation {
    /// sled in `DATA_DIR/store` (the embedded default: one daemon).
    #[default]
    Sled,
    /// A PostgreSQL database shared by several daemons (docs/cluster.md).
    Postgres {
        /// `postgresql://user@host:port/db` (no password in it).
        url: String,
        /// File holding the password, if any.
        password_file: Option<PathBuf>,
    },
}

impl StoreLocation {
    /// From the flag / environment / config value and the password file. `None` or `sled`
    /// is sled; `postgresql://` and `postgres://` URLs are PostgreSQL; anything else is an
    /// error naming the accepted forms. The password file defaults to the systemd credential
    /// `store-password` when it exists.
    pub fn resolve(
        value: Option<&str>,
        password_file: Option<PathBuf>,
    ) -> Result<Self, ServeError> {
        let value = value.map(str::trim).filter(|v| !v.is_empty());
        match value {
            None | Some("sled") => {
                if password_file.is_some() {
                    return Err(ServeError::Store(
                        "--store-password-file given without a postgresql:// --store".into(),
                    ));
                }
                Ok(Self::Sled)
            }
            Some(v) if v.starts_with("postgresql://") || v.starts_with("postgres://") => {
                let password_file = password_file.or_else(|| {
                    std::env::var_os("CREDENTIALS_DIRECTORY")
                        .map(|d| PathBuf::from(d).join("store-password"))
                        .filter(|p| p.is_file())
                });
                Ok(Self::Postgres {
                    url: v.to_owned(),
                    password_file,
                })
            }
            Some(_) => Err(ServeError::Store(
                "--store must be `postgresql://user@host:port/database` (or `sled`, the default)"
                    .into(),
            )),
        }
    }

    /// Whether several daemons may share this store.
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Postgres { .. })
    }
}

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The policy file is invalid.
    #[error("policy: {0}")]
    Policy(String),
    /// Keys could not be created or loaded.
    #[error("keys: {0}")]
    Keys(String),
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Startup of a component failed.
    #[error("{0}")]
    Startup(String),
    /// The store is missing or behind what the CA has promised (see [`crate::promises`]).
    #[error("{0}")]
    Refused(String),
    /// A store write failed and space is back: the daemon stopped to be restarted on a fresh
    /// store handle (exit code [`crate::storage::RESTART_EXIT_CODE`]).
    #[error(
        "stopped after a failed storage write to get a fresh store handle; start again (systemd does)"
    )]
    RestartRequested,
}

/// Loads the policy file or the built-in default.
pub fn load_policy(path: Option<&std::path::Path>) -> Result<Policy, ServeError> {
    match path {
        None => Ok(Policy::default_policy()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| ServeError::Policy(format!("cannot read {}: {e}", p.display())))?;
            Policy::from_toml_str(&text)
                .map_err(|e| ServeError::Policy(format!("{}: {e}", p.display())))
        }
    }
}

/// Resolves the passphrase: explicit file, systemd credential, or the dev passphrase.
pub fn resolve_passphrase(
    data_dir: &std::path::Path,
    file: Option<&std::path::Path>,
    dev: bool,
) -> Result<Passphrase, ServeError> {
    let path = if let Some(f) = file {
        f.to_path_buf()
    } else if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        PathBuf::from(dir).join("passphrase")
    } else if dev {
        crate::pki::dev_passphrase_path(data_dir)
    } else {
        return Err(ServeError::Keys(
            "no passphrase: give --passphrase-file, or run under systemd with LoadCredential=passphrase:..., or use --dev".into(),
        ));
    };
    Passphrase::from_file(&path).map_err(|e| ServeError::Keys(e.to_string()))
}

/// Creates the dev PKI under `data_dir` if there is none yet, with an empty sled store when
/// `sled_store` (a PostgreSQL store gets its schema when the daemon connects).
pub fn ensure_dev_pki(
    data_dir: &std::path::Path,
    url_base: &str,
    sled_store: bool,
) -> Result<(), ServeError> {
    if crate::pki::Layout::new(data_dir).is_initialized() {
        return Ok(());
    }
    let opts = crate::pki::InitOptions::dev(data_dir, url_base)
        .map_err(|e| ServeError::Keys(e.to_string()))?;
    let report = crate::pki::init(&opts).map_err(|e| ServeError::Keys(e.to_string()))?;
    if sled_store {
        crate::promises::create_empty_store(&crate::pki::Layout::new(data_dir).store_dir())
            .map_err(|e| ServeError::Store(e.to_string()))?;
    }
    tracing::warn!(data_dir = %data_dir.display(), issuer = %report.issuer_id,
        "created a DEV PKI (generated passphrase in dev/passphrase, plaintext client keys in dev/): not for production");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        _ = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// Runs the daemon until a shutdown signal.
pub async fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    let policy = Arc::new(load_policy(opts.policy_file.as_deref())?);
    let url_base = opts
        .url_base
        .clone()
        .unwrap_or_else(|| format!("http://{}", opts.http_listen));
    if opts.dev {
        let dir = opts.data_dir.clone();
        let base = url_base.clone();
        let sled_store = !opts.store.is_shared();
        tokio::task::spawn_blocking(move || ensure_dev_pki(&dir, &base, sled_store))
            .await
            .map_err(|e| ServeError::Startup(e.to_string()))??;
    }
    let passphrase = resolve_passphrase(&opts.data_dir, opts.passphrase_file.as_deref(), opts.dev)?;
    let passphrase = Arc::new(passphrase);
    // The server certificate names the configured host names and the listen address.
    let mut wanted = opts.server_names.clone();
    if !opts.grpc_listen.ip().is_unspecified() {
        wanted.push(opts.grpc_listen.ip().to_string());
    }
    let (dir, pass, days) = (
        opts.data_dir.clone(),
        passphrase.clone(),
        policy.ca.service_cert_validity_days,
    );
    tokio::task::spawn_blocking(move || {
        crate::pki::ensure_server_names(&dir, &pass, &wanted, days)
    })
    .await
    .map_err(|e| ServeError::Startup(e.to_string()))?
    .map_err(|e| ServeError::Keys(format!("gRPC server certificate: {e}")))?;
    let dir = opts.data_dir.clone();
    let pass = passphrase.clone();
    let pki = tokio::task::spawn_blocking(move || crate::pki::load(&dir, &pass))
        .await
        .map_err(|e| ServeError::Startup(e.to_string()))?
        .map_err(|e| ServeError::Keys(e.to_string()))?;

    // Issue #12 item 8: client certificates are checked against the service CA's CRL,
    // reloaded when `ca-daemon service revoke` rewrites it.
    let tls = crate::grpc::service_crl::server_tls_config_with_crl(
        &pki.service_ca_der,
        &pki.server_cert_der,
        &pki.server_key_pkcs8,
        crate::service_ca::crl_path(&crate::pki::Layout::new(&opts.data_dir)),
    )
    .map_err(|e| ServeError::Keys(e.to_string()))?;

    let refused = |e: crate::promises::PromiseError| match e {
        crate::promises::PromiseError::Refused(m) => ServeError::Refused(m),
        e => ServeError::Store(e.to_string()),
    };
    let dir = opts.data_dir.clone();
    let (pki, store, promises): (_, Arc<dyn Store>, _) = match &opts.store {
        StoreLocation::Sled => {
            let store_dir = crate::pki::Layout::new(&opts.data_dir).store_dir();
            crate::storage::configure(&store_dir, policy.storage.low_water_bytes());
            let cache_bytes = opts.store_cache_mib.saturating_mul(1 << 20);
            let (pki, store, promises) = tokio::task::spawn_blocking(move || {
                crate::promises::open_checked_store(&dir, &pki, cache_bytes)
                    .map(|(s, p)| (pki, s, p))
            })
            .await
            .map_err(|e| ServeError::Startup(e.to_string()))?
            .map_err(refused)?;
            (pki, Arc::new(store), promises)
        }
        StoreLocation::Postgres { url, password_file } => {
            let store = crate::cluster::connect_store(url, password_file.as_deref()).await?;
            let (s, pass, url) = (store.clone(), passphrase.clone(), url.clone());
            let (pki, promises) = tokio::task::spawn_blocking(move || {
                // Issuers rotated on another node while this one was down come first.
                let pki = match crate::cluster::adopt_keys(&dir, s.as_ref()) {
                    Ok(false) => pki,
                    Ok(true) => crate::pki::load(&dir, &pass)
                        .map_err(|e| crate::promises::PromiseError::Refused(e.to_string()))?,
                    Err(e) => {
                        return Err(crate::promises::PromiseError::Refused(format!(
                            "refusing to start: adopting the other nodes' issuers: {e}"
                        )));
                    }
                };
                crate::promises::check_opened_store(&dir, &pki, s.as_ref(), Some(&url))
                    .map(|p| (pki, p))
            })
            .await
            .map_err(|e| ServeError::Startup(e.to_string()))?
            .map_err(refused)?;
            (pki, store, promises)
        }
    };
    let shared = store.clone();
    let (authority, crl_rx) = Authority::new(
        pki,
        store,
        policy.clone(),
        opts.data_dir.clone(),
        passphrase.clone(),
    )
    .map_err(|e| ServeError::Startup(e.to_string()))?;
    authority.set_promises(Arc::new(promises));
    authority.scheduled_maintenance().await;
    tokio::spawn(authority.clone().run_crl_publisher(crl_rx));
    tokio::spawn(authority.clone().run_supersessions());
    // Several nodes: follow the others' revocations, CRLs and issuers (authority/cluster.rs).
    tokio::spawn(authority.clone().run_cluster_sync());

    let grpc_listener = TcpListener::bind(opts.grpc_listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: opts.grpc_listen,
            source,
        })?;
    let http_listener = TcpListener::bind(opts.http_listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: opts.http_listen,
            source,
        })?;
    let grpc_addr = grpc_listener.local_addr().unwrap_or(opts.grpc_listen);
    let http_addr = http_listener.local_addr().unwrap_or(opts.http_listen);

    let (stop_tx, stop_rx) = watch::channel(false);
    let limits = &policy.limits;
    let incoming = crate::grpc::tls::accept_loop(
        grpc_listener,
        Arc::new(tls),
        limits.max_connections as usize,
        crate::grpc::tls::HANDSHAKE_TIMEOUT,
    );

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<v1::enrollment_server::EnrollmentServer<EnrollmentService>>()
        .await;
    health_reporter
        .set_serving::<v1::revocation_server::RevocationServer<RevocationService>>()
        .await;
    // The root CRL's own health name, gauges and warnings (crate::root_crl).
    tokio::spawn(crate::root_crl::run_monitor(
        authority.clone(),
        health_reporter.clone(),
    ));
    // Storage room and the CRL guard move these two to NOT_SERVING and back.
    let (restart_tx, mut restart_rx) = watch::channel(false);
    if opts.store.is_shared() {
        // The database is PostgreSQL's to keep available; a node only reports it.
        let a = authority.clone();
        tokio::spawn(crate::cluster::run_db_health(
            health_reporter.clone(),
            shared.clone(),
            move || a.crl_guard_blocked(),
        ));
        drop(restart_tx);
    } else {
        let a = authority.clone();
        tokio::spawn(crate::storage::health_monitor(
            health_reporter.clone(),
            move || a.crl_guard_blocked(),
            restart_tx,
        ));
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pki_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Startup(format!("reflection: {e}")))?;
    // v1alpha as well: Python's grpcio-reflection, older grpcurl and GUI clients speak only it.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pki_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServeError::Startup(format!("reflection v1alpha: {e}")))?;

    let max_req = limits.max_request_bytes;
    let max_crl = limits.max_crl_message_bytes;
    let enrollment = v1::enrollment_server::EnrollmentServer::new(EnrollmentService {
        authority: authority.clone(),
    })
    .max_decoding_message_size(max_req)
    .max_encoding_message_size(16 << 20);
    let certificates = v1::certificates_server::CertificatesServer::new(CertificatesService {
        authority: authority.clone(),
    })
    .max_decoding_message_size(max_req)
    .max_encoding_message_size(max_crl);
    let revocation = v1::revocation_server::RevocationServer::new(RevocationService {
        authority: authority.clone(),
        stopping: stop_rx.clone(),
    })
    .max_decoding_message_size(max_req)
    .max_encoding_message_size(max_crl);
    let admin = v1::admin_server::AdminServer::new(AdminService {
        authority: authority.clone(),
    })
    .max_decoding_message_size(max_req)
    .max_encoding_message_size(max_crl);

    let mut stop = stop_rx.clone();
    let grpc = tonic::transport::Server::builder()
        .timeout(limits.request_timeout())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(crate::metrics::LatencyLayer)
        .layer(AuthzLayer::new(policy.clone(), authority.rate_limits()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(enrollment)
        .add_service(certificates)
        .add_service(revocation)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
        });

    // HTTP/1.1 only, bounded connections and timeouts (crate::http_serve).
    let http = crate::http_serve::serve(
        http_listener,
        crate::http::router(authority.clone()).layer(crate::metrics::LatencyLayer),
        crate::http_serve::HttpLimits::default(),
        stop_rx.clone(),
    );

    let metrics = match opts.metrics_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?;
            let mut stop = stop_rx.clone();
            tracing::info!(metrics = %addr, "metrics listening");
            Some(tokio::spawn(async move {
                axum::serve(l, crate::metrics::router())
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await
            }))
        }
        None => None,
    };

    tracing::info!(grpc = %grpc_addr, http = %http_addr, active_issuer = %authority.active_issuer_id(),
        data_dir = %opts.data_dir.display(), dev = opts.dev, "ca-daemon listening");
    // Operator commands find this daemon through its data dir (no --server needed).
    let recorded = crate::discovery::Addresses {
        pid: std::process::id(),
        grpc: grpc_addr,
        http: http_addr,
        metrics: opts.metrics_listen,
    };
    if let Err(e) = crate::discovery::record(&opts.data_dir, &recorded) {
        tracing::warn!(error = %e, "cannot record the listen addresses in the data dir; operator commands need --server");
    }

    let grpc_task = tokio::spawn(grpc);
    let http_task = tokio::spawn(http);
    // SIGHUP: re-read the keys directory (after `issuer rotate` or a responder renewal).
    #[cfg(unix)]
    {
        let authority = authority.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP received, reloading issuers");
                if let Err(e) = authority.reload().await {
                    tracing::error!(error = %e, "reload failed");
                }
            }
        });
    }
    let restart = tokio::select! {
        () = shutdown_signal() => false,
        () = async {
            // A monitor that ended without asking for a restart never stops the daemon.
            if restart_rx.wait_for(|r| *r).await.is_err() {
                std::future::pending::<()>().await;
            }
        } => true,
    };
    crate::discovery::forget(&opts.data_dir);
    let _ = stop_tx.send(true);
    // In-flight calls finish; a peer that never lets go does not keep us alive forever.
    let drained = tokio::time::timeout(Duration::from_secs(25), async {
        tokio::join!(grpc_task, http_task)
    })
    .await;
    // What was acknowledged is promised: a last checkpoint on the way out.
    authority.checkpoint("shutdown", true).await;
    let Ok((g, h)) = drained else {
        tracing::warn!("connections did not drain within 25 s; exiting anyway");
        return if restart {
            Err(ServeError::RestartRequested)
        } else {
            Ok(())
        };
    };
    if let Some(m) = metrics {
        let _ = m.await;
    }
    if let Ok(Err(e)) = g {
        tracing::error!(error = %e, "gRPC server ended with an error");
    }
    if let Ok(Err(e)) = h {
        tracing::error!(error = %e, "HTTP server ended with an error");
    }
    if restart {
        tracing::warn!("ca-daemon stopped for a restart on a fresh store handle");
        return Err(ServeError::RestartRequested);
    }
    tracing::info!("ca-daemon stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_location_from_flag_env_or_config_value() {
        assert_eq!(
            StoreLocation::resolve(None, None).ok(),
            Some(StoreLocation::Sled)
        );
        assert_eq!(
            StoreLocation::resolve(Some("sled"), None).ok(),
            Some(StoreLocation::Sled)
        );
        let pg = StoreLocation::resolve(
            Some("postgresql://ca@127.0.0.1:5432/ca"),
            Some(PathBuf::from("/etc/pw")),
        )
        .expect("postgresql URL");
        assert!(pg.is_shared());
        assert_eq!(
            pg,
            StoreLocation::Postgres {
                url: "postgresql://ca@127.0.0.1:5432/ca".into(),
                password_file: Some(PathBuf::from("/etc/pw")),
            }
        );
        assert!(StoreLocation::resolve(Some("postgres://ca@h/db"), None).is_ok());
        let e = StoreLocation::resolve(Some("mysql://x"), None).expect_err("unknown scheme");
        assert!(e.to_string().contains("postgresql://"), "{e}");
        let e = StoreLocation::resolve(None, Some(PathBuf::from("/etc/pw")))
            .expect_err("a password file without a URL");
        assert!(e.to_string().contains("--store-password-file"), "{e}");
    }

    #[test]
    fn config_file_names_the_store() {
        let c = crate::config::FileConfig::parse(
            std::path::Path::new("c.toml"),
            "store = \"postgresql://ca@db/ca\"\nstore_password_file = \"/etc/pw\"\n",
        )
        .expect("parses");
        assert_eq!(c.store.as_deref(), Some("postgresql://ca@db/ca"));
        assert_eq!(c.store_password_file, Some(PathBuf::from("/etc/pw")));
    }
}
