//! The example mutual-TLS gateway: a rustls server in front of a (trivial) service that admits
//! only devices holding a valid, unrevoked certificate of the care network, and that learns about
//! revocations from the daemon's `WatchCrl` stream within a second, without polling and without
//! restarting (DESIGN.md §1, §5, §8 "Other facts").
//!
//! # How it works
//!
//! 1. At start the gateway connects to the daemon over gRPC with its `gateway` service client
//!    certificate, fetches the device CA chain (`GetCaChain`: root first, then the issuers) and
//!    opens one `WatchCrl` stream with `all_issuers`: the daemon streams the CRLs of every live
//!    issuer (active and retiring), the first CRL of an issuer created later by `issuer rotate`,
//!    and the root's CRL; each message names the live issuers. (With
//!    [`GatewayConfig::issuer_ids`] set it opens one stream per listed issuer instead.)
//! 2. It waits for a CRL of every live issuer before it binds its port, so it never serves a
//!    single handshake without revocation data.
//! 3. For every CRL it receives it builds a new [`rustls::ServerConfig`] whose client verifier is
//!    `WebPkiClientVerifier` with the CRLs of all followed issuers, and swaps it in. Each accepted
//!    TCP connection takes the config that is current at that moment; connections already
//!    established keep the config they were accepted with, so a swap drops no one. (In rustls the
//!    CRLs are fixed per verifier, hence one new config per CRL.) When an issuer leaves the live
//!    set (retired: its last certificate has expired) its CRL is dropped and a new config swapped
//!    in, so its certificates are refused ("unknown revocation status").
//! 4. The service behind the gateway is an echo: after the handshake it writes
//!    `hello <CN of the client certificate>\n`, then echoes every line back.
//!
//! # Revocation policy (read this before copying)
//!
//! - **Trust anchor**: the device root only. Issuer certificates are intermediates.
//! - **End entity only**: `only_check_end_entity_revocation()`. The root's CRL is loaded too (the
//!   all-issuers stream carries it), so whole-chain checking works as well (see the revocation
//!   profile in `ca_daemon::pki` and the test `gateway_profile.rs`); end entity only keeps
//!   the gateway working against an older daemon that does not stream the root's CRL.
//! - **Unknown status is refused** (`allow_unknown_revocation_status()` is deliberately not set):
//!   a device certificate whose issuer has no CRL loaded here is rejected. With the default
//!   all-issuers stream that is a certificate of an unknown or retired issuer; after
//!   `ca-daemon issuer rotate` the new issuer's CRL arrives on the open stream (no restart, no
//!   flag). With a fixed [`GatewayConfig::issuer_ids`] list only those issuers get in.
//! - **Matching distribution point**: webpki uses a CRL for an end entity only if the CRL's
//!   issuing distribution point URI equals the certificate's CRL distribution point URI. The
//!   daemon signs its CRLs that way; a CRL without it makes every handshake fail with "unknown
//!   status".
//! - **Checked before use**: a CRL is applied only if it parses, is signed by a known issuer and
//!   its CRL number is higher than the one applied (no rollback; an equal number, as sent when a
//!   stream reconnects, is skipped). A CRL that fails keeps the previous config in place.
//! - **`nextUpdate` is not enforced**: if the daemon is unreachable for longer than a CRL's
//!   lifetime the gateway keeps the last CRL rather than locking every device out, and keeps
//!   reconnecting. Call `enforce_revocation_expiration()` on the builder if you prefer to fail
//!   closed.
//! - **Cost of big CRLs**: webpki checks the CRL signature on every handshake that uses it
//!   (rustls/webpki#81), i.e. hashes the whole CRL; with very large CRLs prefer OCSP or sharded
//!   CRLs.
//!
//! # Client chains
//!
//! Webpki builds the path from the certificates the client sends. The PKCS#12 bundles of the
//! daemon contain leaf and issuer (the root only with a profile's `include_root`), and clients
//! send leaf + issuer. For clients that send only
//! their leaf, the verifier here also offers the issuer certificates it got from `GetCaChain` as
//! path candidates (`WithKnownIssuers`); every signature is still checked by webpki.
//!
//! # gRPC and CRL size
//!
//! The daemon's CRLs can be tens of MB (about 40 bytes per revoked certificate), so the revocation
//! client raises its decoding limit to [`MAX_CRL_MESSAGE`]. If a stream drops, the follower
//! reconnects with exponential backoff; the current CRL comes first on each new stream.
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use pki_proto::v1::revocation_client::RevocationClient;
use pki_proto::v1::{Crl, GetCaChainRequest, WatchCrlRequest};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
    UnixTime,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tracing::{debug, info, warn};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;
use zeroize::Zeroizing;

/// Decoding limit of the revocation client: room for a CRL of several million entries.
pub const MAX_CRL_MESSAGE: usize = 256 << 20;
/// How long [`Gateway::start`] waits for the first CRL of each followed issuer.
const FIRST_CRL_TIMEOUT: Duration = Duration::from_secs(30);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect backoff of a dropped `WatchCrl` stream: first wait, and the cap.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The echo service reads at most this much before it writes back (bounds memory per client).
const MAX_LINE: u64 = 64 * 1024;

/// What the gateway needs to run.
pub struct GatewayConfig {
    /// Address the gateway listens on for device connections.
    pub listen: SocketAddr,
    /// gRPC URL of the daemon, e.g. `https://127.0.0.1:50051`.
    pub daemon_url: String,
    /// Name checked in the daemon's server certificate (the dev daemon's certificate names
    /// `localhost`).
    pub daemon_server_name: String,
    /// Trust anchor of the daemon's gRPC server certificate (the service CA), PEM.
    pub service_ca_pem: Vec<u8>,
    /// The gateway's service client certificate (role `gateway`), PEM.
    pub client_cert_pem: Vec<u8>,
    /// Its private key, PEM (PKCS#8).
    pub client_key_pem: Zeroizing<Vec<u8>>,
    /// The gateway's own TLS server certificate; `None` = a self-signed one for `localhost`
    /// generated at start (demos and tests; read it with [`Gateway::server_cert_der`]).
    pub server_identity: Option<ServerIdentity>,
    /// Issuers whose CRLs to follow; empty = every live issuer, following rotations.
    pub issuer_ids: Vec<String>,
}

impl GatewayConfig {
    /// A config with a self-signed server certificate, following every live issuer, checking the
    /// daemon's certificate for `localhost`.
    pub fn new(
        listen: SocketAddr,
        daemon_url: impl Into<String>,
        service_ca_pem: Vec<u8>,
        client_cert_pem: Vec<u8>,
        client_key_pem: Zeroizing<Vec<u8>>,
    ) -> Self {
        Self {
            listen,
            daemon_url: daemon_url.into(),
            daemon_server_name: "localhost".into(),
            service_ca_pem,
            client_cert_pem,
            client_key_pem,
            server_identity: None,
            issuer_ids: Vec::new(),
        }
    }
}

impl fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("listen", &self.listen)
            .field("daemon_url", &self.daemon_url)
            .field("daemon_server_name", &self.daemon_server_name)
            .field("client_key_pem", &"<redacted>")
            .field("server_identity", &self.server_identity)
            .field("issuer_ids", &self.issuer_ids)
            .finish_non_exhaustive()
    }
}

/// A TLS server certificate chain and its key.
pub struct ServerIdentity {
    /// Certificate chain, PEM, leaf first.
    pub cert_chain_pem: Vec<u8>,
    /// Private key, PEM (PKCS#8, SEC1 or PKCS#1).
    pub key_pem: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIdentity")
            .field(
                "cert_chain_pem",
                &format_args!("<{} bytes>", self.cert_chain_pem.len()),
            )
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Errors of the gateway.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// A certificate or key given to the gateway could not be used.
    #[error("{what}: {reason}")]
    BadInput {
        /// Which input.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The daemon could not be reached.
    #[error("cannot connect to the daemon at {url}: {reason}")]
    Connect {
        /// The daemon URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A gRPC call to the daemon failed.
    #[error("{rpc} failed: {code:?}: {message}")]
    Rpc {
        /// The RPC.
        rpc: &'static str,
        /// gRPC status code.
        code: tonic::Code,
        /// Status message from the daemon.
        message: String,
    },
    /// `GetCaChain` returned no certificate, so there is no root to trust.
    #[error("the daemon returned an empty CA chain")]
    EmptyChain,
    /// No CRL arrived in time for a followed issuer at start.
    #[error("no CRL for issuer {issuer_id:?} within {waited:?}")]
    NoFirstCrl {
        /// The issuer as configured (empty = active).
        issuer_id: String,
        /// How long the gateway waited.
        waited: Duration,
    },
    /// A CRL is not well-formed DER or lacks a CRL number.
    #[error("CRL of issuer {issuer_id} is malformed: {reason}")]
    CrlMalformed {
        /// The issuer it claims to be from.
        issuer_id: String,
        /// Why.
        reason: String,
    },
    /// A CRL is not signed by any issuer certificate the gateway knows.
    #[error("CRL of issuer {issuer_id} is not signed by a known issuer certificate")]
    CrlUnknownSigner {
        /// The issuer it claims to be from.
        issuer_id: String,
    },
    /// A CRL is older than the one already applied (a rollback).
    #[error("CRL {number} of issuer {issuer_id} is older than the applied CRL {applied}")]
    CrlRollback {
        /// The issuer.
        issuer_id: String,
        /// Number of the refused CRL.
        number: u64,
        /// Number of the applied CRL.
        applied: u64,
    },
    /// rustls refused the certificates, key or CRLs of a config.
    #[error("building the TLS config failed: {reason}")]
    Tls {
        /// Why.
        reason: String,
    },
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

fn rpc_err(rpc: &'static str) -> impl FnOnce(tonic::Status) -> GatewayError {
    move |s| GatewayError::Rpc {
        rpc,
        code: s.code(),
        message: s.message().to_string(),
    }
}

fn tls_err(e: impl fmt::Display) -> GatewayError {
    GatewayError::Tls {
        reason: e.to_string(),
    }
}

/// A running gateway. Dropping it stops it too; [`Gateway::shutdown`] also waits for the tasks.
pub struct Gateway {
    local_addr: SocketAddr,
    state: Arc<TlsState>,
    /// (issuer id as configured, issuer id the daemon resolved it to).
    followed: Vec<(String, String)>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Connects to the daemon, fetches the CA chain, waits for the first CRL of each followed
    /// issuer, binds [`GatewayConfig::listen`] and spawns the accept loop and one CRL follower
    /// per issuer (each reconnects with backoff when its stream drops).
    pub async fn start(cfg: GatewayConfig) -> Result<Gateway, GatewayError> {
        let (server_chain, server_key) = server_identity(cfg.server_identity.as_ref())?;
        let mut client = connect(&cfg).await?;
        let (root, issuers) = fetch_chain(&mut client).await?;
        let state = Arc::new(TlsState::new(root, issuers, server_chain, server_key)?);

        let mut followed = Vec::new();
        let mut streams = Vec::new();
        if cfg.issuer_ids.is_empty() {
            // Every live issuer, on one stream: wait until each has a CRL applied.
            let mut stream = open_watch(&mut client, Follow::All).await?;
            let no_first = || GatewayError::NoFirstCrl {
                issuer_id: "(all live issuers)".into(),
                waited: FIRST_CRL_TIMEOUT,
            };
            let deadline = tokio::time::Instant::now() + FIRST_CRL_TIMEOUT;
            loop {
                let msg = tokio::time::timeout_at(deadline, stream.message())
                    .await
                    .map_err(|_| no_first())?
                    .map_err(rpc_err("WatchCrl"))?
                    .ok_or_else(no_first)?;
                let live = msg.live_issuer_ids.clone();
                let id = msg.issuer_id.clone();
                apply_from_daemon(&state, &mut client, msg).await?;
                // An older daemon ignores all_issuers and streams the active issuer only.
                let ready = if live.is_empty() {
                    state.set_active(&id);
                    true
                } else {
                    follow_live_set(&state, &live);
                    live.iter().all(|id| state.crl_number(id).is_some())
                };
                if ready {
                    break;
                }
            }
            streams.push((Follow::All, stream));
        } else {
            for wanted_id in cfg.issuer_ids.clone() {
                let mut stream = open_watch(&mut client, Follow::Issuer(wanted_id.clone())).await?;
                let first = tokio::time::timeout(FIRST_CRL_TIMEOUT, stream.message())
                    .await
                    .map_err(|_| GatewayError::NoFirstCrl {
                        issuer_id: wanted_id.clone(),
                        waited: FIRST_CRL_TIMEOUT,
                    })?
                    .map_err(rpc_err("WatchCrl"))?
                    .ok_or_else(|| GatewayError::NoFirstCrl {
                        issuer_id: wanted_id.clone(),
                        waited: FIRST_CRL_TIMEOUT,
                    })?;
                let resolved = first.issuer_id.clone();
                apply_from_daemon(&state, &mut client, first).await?;
                followed.push((wanted_id.clone(), resolved));
                streams.push((Follow::Issuer(wanted_id), stream));
            }
        }

        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| GatewayError::Bind {
                    addr: cfg.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| GatewayError::Bind {
            addr: cfg.listen,
            source,
        })?;
        info!(%local_addr, issuers = ?followed, "gateway listening");

        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(accept_loop(
            listener,
            state.clone(),
            stop_rx.clone(),
        ))];
        for (what, stream) in streams {
            tasks.push(tokio::spawn(follow(
                client.clone(),
                what,
                stream,
                state.clone(),
                stop_rx.clone(),
            )));
        }
        Ok(Gateway {
            local_addr,
            state,
            followed,
            stop,
            tasks,
        })
    }

    /// The address the gateway listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The gateway's TLS server certificate, DER (a test client trusts it).
    pub fn server_cert_der(&self) -> Vec<u8> {
        // The chain is never empty (checked when the identity is loaded or generated).
        self.state
            .server_chain
            .first()
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }

    /// Number of the latest CRL applied for an issuer; the id as configured (empty = the active
    /// issuer: at start when following fixed issuers, the current one when following all) or as
    /// the daemon names it (`root` for the root's CRL).
    pub fn crl_number(&self, issuer_id: &str) -> Option<u64> {
        if issuer_id.is_empty() && self.followed.is_empty() {
            return self.state.crl_number(&self.state.active());
        }
        let id = self
            .followed
            .iter()
            .find(|(wanted, _)| wanted == issuer_id)
            .map_or(issuer_id, |(_, resolved)| resolved.as_str());
        self.state.crl_number(id)
    }

    /// The issuers whose CRLs are applied now (and `root` once the root's CRL arrived).
    pub fn applied_issuers(&self) -> Vec<String> {
        let crls = self
            .state
            .crls
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        crls.keys().cloned().collect()
    }

    /// A counter bumped after each applied CRL, once new handshakes use it.
    pub fn crl_updates(&self) -> watch::Receiver<u64> {
        self.state.updates.subscribe()
    }

    /// Stops accepting, closes the CRL streams and the open connections, and waits for the tasks.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

// ---------------------------------------------------------------------------------------------
// The core: the current ServerConfig, rebuilt for each CRL. No gRPC in here, so tests feed it.

/// The CRL last applied for one issuer.
#[derive(Clone)]
struct AppliedCrl {
    number: u64,
    der: CertificateRevocationListDer<'static>,
}

/// Issuer id of the root's CRL in the daemon's all-issuers stream.
const ROOT_CRL_ID: &str = "root";

/// What one CRL stream follows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Follow {
    /// Every live issuer of the daemon (WatchCrl `all_issuers`).
    All,
    /// One issuer (empty = the active one when the stream opens).
    Issuer(String),
}

/// Everything a new `ServerConfig` is built from, and the current one. A new connection only
/// clones the `Arc` in `current` (a short read lock), so handshakes never wait for a rebuild.
struct TlsState {
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    /// The device root (signer of the root's CRL).
    root: CertificateDer<'static>,
    /// The active issuer as the daemon last named it (all-issuers mode).
    active: RwLock<String>,
    /// Issuer certificates known from `GetCaChain` (CRL signers and path candidates).
    issuers: RwLock<Arc<[CertificateDer<'static>]>>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    /// Latest CRL per issuer id. Held while a config is built, so configs are built in order.
    crls: Mutex<BTreeMap<String, AppliedCrl>>,
    /// The config new connections get; `None` until the first CRL is applied (fail closed).
    current: RwLock<Option<Arc<ServerConfig>>>,
    /// Bumped after each applied CRL.
    updates: watch::Sender<u64>,
}

/// What [`TlsState::apply_crl`] did with a valid CRL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrlOutcome {
    /// Swapped in a config with this CRL.
    Applied {
        /// CRL number.
        number: u64,
        /// Revoked entries in it.
        entries: usize,
    },
    /// The same number is already applied (a reconnected stream resends the current CRL).
    AlreadyApplied,
}

impl TlsState {
    fn new(
        root: CertificateDer<'static>,
        issuers: Vec<CertificateDer<'static>>,
        server_chain: Vec<CertificateDer<'static>>,
        server_key: PrivateKeyDer<'static>,
    ) -> Result<Self, GatewayError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(root.clone())
            .map_err(|e| GatewayError::BadInput {
                what: "device root certificate",
                reason: e.to_string(),
            })?;
        Ok(Self {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            roots: Arc::new(roots),
            root,
            active: RwLock::new(String::new()),
            issuers: RwLock::new(issuers.into()),
            server_chain,
            server_key,
            crls: Mutex::new(BTreeMap::new()),
            current: RwLock::new(None),
            updates: watch::channel(0).0,
        })
    }

    /// Replaces the known issuer certificates (after a rotation).
    fn set_issuers(&self, issuers: Vec<CertificateDer<'static>>) {
        *self.issuers.write().unwrap_or_else(PoisonError::into_inner) = issuers.into();
    }

    fn set_active(&self, id: &str) {
        *self.active.write().unwrap_or_else(PoisonError::into_inner) = id.to_string();
    }

    fn active(&self) -> String {
        self.active
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Drops the CRLs of issuers that left the daemon's live set (retired: their last
    /// certificate expired), so their certificates are refused from now on; the root's CRL
    /// stays. Returns the ids dropped.
    fn retain_live(&self, live: &[String]) -> Result<Vec<String>, GatewayError> {
        let issuers = self
            .issuers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut crls = self.crls.lock().unwrap_or_else(PoisonError::into_inner);
        let gone: Vec<String> = crls
            .keys()
            .filter(|id| id.as_str() != ROOT_CRL_ID && !live.contains(id))
            .cloned()
            .collect();
        if gone.is_empty() {
            return Ok(gone);
        }
        let mut kept = (*crls).clone();
        kept.retain(|id, _| !gone.contains(id));
        let config = self.build_config(kept.values().map(|c| c.der.clone()), issuers)?;
        *crls = kept;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(config);
        drop(crls);
        self.updates.send_modify(|n| *n += 1);
        info!(issuers = ?gone, "issuers retired by the daemon; their CRLs dropped");
        Ok(gone)
    }

    /// An acceptor with the current config, or `None` before the first CRL.
    fn acceptor(&self) -> Option<TlsAcceptor> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current.clone().map(TlsAcceptor::from)
    }

    fn crl_number(&self, issuer_id: &str) -> Option<u64> {
        let crls = self.crls.lock().unwrap_or_else(PoisonError::into_inner);
        crls.get(issuer_id).map(|c| c.number)
    }

    /// Checks a CRL of `issuer_id` and, if it is newer than the applied one, swaps in a
    /// `ServerConfig` that checks client certificates against it (and the other issuers' CRLs).
    /// On error the previous config stays.
    fn apply_crl(&self, issuer_id: &str, der: Vec<u8>) -> Result<CrlOutcome, GatewayError> {
        let issuers = self
            .issuers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // The root's CRL is signed by the root; every other one by a known issuer.
        let signers: &[CertificateDer<'static>] = if issuer_id == ROOT_CRL_ID {
            std::slice::from_ref(&self.root)
        } else {
            &issuers
        };
        let (number, entries) = check_crl(issuer_id, &der, signers)?;

        // Locks: `crls` then `current`, always in this order.
        let mut crls = self.crls.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(applied) = crls.get(issuer_id) {
            if number == applied.number {
                return Ok(CrlOutcome::AlreadyApplied);
            }
            if number < applied.number {
                return Err(GatewayError::CrlRollback {
                    issuer_id: issuer_id.to_string(),
                    number,
                    applied: applied.number,
                });
            }
        }
        let new = AppliedCrl {
            number,
            der: CertificateRevocationListDer::from(der),
        };
        let previous = crls.insert(issuer_id.to_string(), new);
        let config = match self.build_config(crls.values().map(|c| c.der.clone()), issuers) {
            Ok(c) => c,
            Err(e) => {
                // Put the previous CRL back, so the map matches the config in use.
                match previous {
                    Some(p) => crls.insert(issuer_id.to_string(), p),
                    None => crls.remove(issuer_id),
                };
                return Err(e);
            }
        };
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(config);
        drop(crls);
        self.updates.send_modify(|n| *n += 1);
        info!(
            issuer = issuer_id,
            number, entries, "CRL applied; new handshakes use it"
        );
        Ok(CrlOutcome::Applied { number, entries })
    }

    /// A server config whose client verifier trusts the device root, requires a client
    /// certificate and checks the end entity against `crls`.
    fn build_config(
        &self,
        crls: impl IntoIterator<Item = CertificateRevocationListDer<'static>>,
        issuers: Arc<[CertificateDer<'static>]>,
    ) -> Result<Arc<ServerConfig>, GatewayError> {
        let webpki =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .with_crls(crls)
                .only_check_end_entity_revocation()
                .build()
                .map_err(tls_err)?;
        let verifier = Arc::new(WithKnownIssuers {
            inner: webpki,
            issuers,
        });
        let config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())
            .map_err(tls_err)?;
        Ok(Arc::new(config))
    }
}

/// Parses a CRL, checks that a known issuer certificate signed it, and returns its number and
/// entry count. Webpki checks the signature again at each handshake; checking here means a bad
/// CRL is refused up front instead of failing every handshake.
fn check_crl(
    issuer_id: &str,
    der: &[u8],
    issuers: &[CertificateDer<'static>],
) -> Result<(u64, usize), GatewayError> {
    let malformed = |reason: String| GatewayError::CrlMalformed {
        issuer_id: issuer_id.to_string(),
        reason,
    };
    let (_, crl) =
        CertificateRevocationList::from_der(der).map_err(|e| malformed(e.to_string()))?;
    let signed_by_known = issuers.iter().any(|cert| {
        X509Certificate::from_der(cert).is_ok_and(|(_, cert)| {
            cert.subject().as_raw() == crl.issuer().as_raw()
                && crl.verify_signature(cert.public_key()).is_ok()
        })
    });
    if !signed_by_known {
        return Err(GatewayError::CrlUnknownSigner {
            issuer_id: issuer_id.to_string(),
        });
    }
    let digits = crl
        .crl_number()
        .ok_or_else(|| malformed("no CRL number".into()))?
        .to_u64_digits();
    let number = match digits.as_slice() {
        [] => 0,
        [n] => *n,
        _ => return Err(malformed("CRL number above 2^64".into())),
    };
    Ok((number, crl.iter_revoked_certificates().count()))
}

/// A client verifier that offers the known issuer certificates to webpki as path candidates
/// after the ones the client sent, so a client that sends only its leaf still gets in. It only
/// adds candidates: chain building, signatures, validity and revocation stay webpki's.
#[derive(Debug)]
struct WithKnownIssuers {
    inner: Arc<dyn ClientCertVerifier>,
    issuers: Arc<[CertificateDer<'static>]>,
}

impl ClientCertVerifier for WithKnownIssuers {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let mut candidates = intermediates.to_vec();
        candidates.extend(self.issuers.iter().cloned());
        self.inner.verify_client_cert(end_entity, &candidates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

// ---------------------------------------------------------------------------------------------
// Talking to the daemon.

async fn connect(cfg: &GatewayConfig) -> Result<RevocationClient<Channel>, GatewayError> {
    let connect_err = |reason: String| GatewayError::Connect {
        url: cfg.daemon_url.clone(),
        reason,
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&cfg.service_ca_pem))
        .identity(Identity::from_pem(
            &cfg.client_cert_pem,
            cfg.client_key_pem.as_slice(),
        ))
        .domain_name(cfg.daemon_server_name.clone());
    let channel = Channel::from_shared(cfg.daemon_url.clone())
        .map_err(|e| connect_err(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| connect_err(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        // HTTP/2 keepalive notices a dead daemon on an idle stream, so the follower reconnects.
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| connect_err(format!("{e:?}")))?;
    Ok(RevocationClient::new(channel).max_decoding_message_size(MAX_CRL_MESSAGE))
}

/// The device root and the issuer certificates, from `GetCaChain`.
async fn fetch_chain(
    client: &mut RevocationClient<Channel>,
) -> Result<(CertificateDer<'static>, Vec<CertificateDer<'static>>), GatewayError> {
    let chain = client
        .get_ca_chain(GetCaChainRequest {})
        .await
        .map_err(rpc_err("GetCaChain"))?
        .into_inner()
        .certificates_der;
    let mut certs = chain.into_iter().map(CertificateDer::from);
    let root = certs.next().ok_or(GatewayError::EmptyChain)?;
    Ok((root, certs.collect()))
}

async fn open_watch(
    client: &mut RevocationClient<Channel>,
    what: Follow,
) -> Result<tonic::Streaming<Crl>, GatewayError> {
    let request = match what {
        Follow::All => WatchCrlRequest {
            issuer_id: String::new(),
            all_issuers: true,
        },
        Follow::Issuer(issuer_id) => WatchCrlRequest {
            issuer_id,
            all_issuers: false,
        },
    };
    Ok(client
        .watch_crl(request)
        .await
        .map_err(rpc_err("WatchCrl"))?
        .into_inner())
}

/// Applies a CRL from the daemon off the async reactor (big CRLs take a while to parse). A CRL
/// signed by an issuer not yet known (a rotation since start) triggers one refetch of the chain.
async fn apply_from_daemon(
    state: &Arc<TlsState>,
    client: &mut RevocationClient<Channel>,
    crl: Crl,
) -> Result<CrlOutcome, GatewayError> {
    let apply = |state: Arc<TlsState>, id: String, der: Vec<u8>| async move {
        tokio::task::spawn_blocking(move || state.apply_crl(&id, der))
            .await
            .unwrap_or_else(|e| Err(tls_err(format!("CRL task failed: {e}"))))
    };
    match apply(state.clone(), crl.issuer_id.clone(), crl.der.to_vec()).await {
        Err(GatewayError::CrlUnknownSigner { issuer_id }) => {
            info!(issuer = %issuer_id, "CRL from an unknown issuer; refetching the CA chain");
            let (_root, issuers) = fetch_chain(client).await?;
            state.set_issuers(issuers);
            apply(state.clone(), crl.issuer_id, crl.der.into()).await
        }
        other => other,
    }
}

/// Applies the daemon's live issuer set: notes the active issuer and drops the CRLs of issuers
/// that left the set. (A new issuer's certificate is fetched by [`apply_from_daemon`] when its
/// first CRL arrives signed by an issuer not yet known.)
fn follow_live_set(state: &TlsState, live: &[String]) {
    if let Some(active) = live.first() {
        state.set_active(active);
    }
    if let Err(e) = state.retain_live(live) {
        warn!(error = %e, "dropping retired issuers failed; keeping the previous config");
    }
}

/// Follows the CRLs of one issuer until stopped, reconnecting with backoff when the stream ends.
async fn follow(
    mut client: RevocationClient<Channel>,
    what: Follow,
    first_stream: tonic::Streaming<Crl>,
    state: Arc<TlsState>,
    mut stop: watch::Receiver<bool>,
) {
    let label = match &what {
        Follow::All => "(all live issuers)",
        Follow::Issuer(id) if id.is_empty() => "(active)",
        Follow::Issuer(id) => id.as_str(),
    };
    let mut stream = Some(first_stream);
    let mut backoff = BACKOFF_MIN;
    loop {
        while let Some(s) = stream.as_mut() {
            let msg = tokio::select! {
                _ = stop.changed() => return,
                m = s.message() => m,
            };
            let crl = match msg {
                Ok(Some(crl)) => crl,
                Ok(None) => {
                    warn!(issuer = label, "WatchCrl stream ended; reconnecting");
                    stream = None;
                    continue;
                }
                Err(status) => {
                    warn!(issuer = label, code = ?status.code(), message = status.message(),
                        "WatchCrl stream failed; reconnecting");
                    stream = None;
                    continue;
                }
            };
            backoff = BACKOFF_MIN;
            let (id, number) = (crl.issuer_id.clone(), crl.number);
            let live = crl.live_issuer_ids.clone();
            match apply_from_daemon(&state, &mut client, crl).await {
                Ok(CrlOutcome::Applied { .. }) => {}
                Ok(CrlOutcome::AlreadyApplied) => {
                    debug!(issuer = %id, number, "CRL already applied")
                }
                Err(e) => warn!(issuer = %id, number, error = %e, "CRL refused"),
            }
            if what == Follow::All {
                if live.is_empty() {
                    state.set_active(&id);
                } else {
                    follow_live_set(&state, &live);
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
        match open_watch(&mut client, what.clone()).await {
            Ok(s) => {
                info!(issuer = label, "WatchCrl stream reopened");
                stream = Some(s);
            }
            Err(e) => warn!(issuer = label, error = %e, "WatchCrl reconnect failed"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Serving devices.

/// Accepts connections until stopped; each one gets the config current at its accept.
/// Open connections are aborted when the loop ends (the `JoinSet` is dropped).
async fn accept_loop(listener: TcpListener, state: Arc<TlsState>, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = connections.join_next() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => match state.acceptor() {
                    Some(acceptor) => {
                        // Without it, Nagle + delayed ACK add ~40 ms to every TLS 1.3 handshake.
                        let _ = tcp.set_nodelay(true);
                        connections.spawn(serve_connection(acceptor, tcp, peer));
                    }
                    None => warn!(%peer, "connection refused: no CRL applied yet"),
                },
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Handshake, then the echo service: `hello <CN>\n`, then every line back.
async fn serve_connection(acceptor: TlsAcceptor, tcp: TcpStream, peer: SocketAddr) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            warn!(%peer, reason = %e, "handshake refused");
            return;
        }
        Err(_) => {
            warn!(%peer, reason = "timeout", "handshake refused");
            return;
        }
    };
    let cn = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|der| common_name(der))
        .unwrap_or_default();
    info!(%peer, client = %cn, "client connected");
    let (read, mut write) = tokio::io::split(tls);
    let mut read = BufReader::new(read);
    let result = async {
        write.write_all(format!("hello {cn}\n").as_bytes()).await?;
        let mut line = Vec::new();
        loop {
            line.clear();
            if (&mut read)
                .take(MAX_LINE)
                .read_until(b'\n', &mut line)
                .await?
                == 0
            {
                return write.shutdown().await;
            }
            write.write_all(&line).await?;
        }
    }
    .await;
    if let Err(e) = result {
        debug!(%peer, error = %e, "connection closed");
    }
}

/// The first common name of a certificate's subject.
fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The configured server certificate and key, or a fresh self-signed one for `localhost`.
fn server_identity(
    given: Option<&ServerIdentity>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), GatewayError> {
    let bad = |what: &'static str| {
        move |e: rustls_pki_types::pem::Error| GatewayError::BadInput {
            what,
            reason: e.to_string(),
        }
    };
    if let Some(id) = given {
        let chain = CertificateDer::pem_slice_iter(&id.cert_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad("server certificate"))?;
        if chain.is_empty() {
            return Err(GatewayError::BadInput {
                what: "server certificate",
                reason: "no CERTIFICATE in the PEM".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(&id.key_pem).map_err(bad("server key"))?;
        return Ok((chain, key));
    }
    let rcgen_err = |e: rcgen::Error| GatewayError::BadInput {
        what: "self-signed server certificate",
        reason: e.to_string(),
    };
    let key = rcgen::KeyPair::generate().map_err(rcgen_err)?;
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(rcgen_err)?;
    // Never rcgen's defaults (a key-derived serial, validity 1975-4096).
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "example gateway (self-signed)");
    let cert = params.self_signed(&key).map_err(rcgen_err)?;
    let key_der = PrivatePkcs8KeyDer::from(key.serialize_der());
    Ok((vec![cert.der().clone()], PrivateKeyDer::Pkcs8(key_der)))
}

/// A client config for tests: presents a device identity (`leaf_der` plus `intermediates_der`,
/// normally the issuer; empty sends the leaf alone) with its PKCS#8 key, and trusts only the
/// gateway's certificate (`gateway_cert_der`, e.g. [`Gateway::server_cert_der`]; connect with
/// server name `localhost`). The device root is not needed: a client never sends its anchor.
pub fn client_config_for_device(
    gateway_cert_der: &[u8],
    leaf_der: &[u8],
    intermediates_der: &[Vec<u8>],
    key_pkcs8_der: &[u8],
) -> Result<rustls::ClientConfig, GatewayError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(gateway_cert_der.to_vec()))
        .map_err(tls_err)?;
    let mut chain = vec![CertificateDer::from(leaf_der.to_vec())];
    chain.extend(intermediates_der.iter().cloned().map(CertificateDer::from));
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8_der.to_vec()));
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(tls_err)
}

/// The server name a [`client_config_for_device`] client connects with.
pub fn gateway_server_name() -> ServerName<'static> {
    // A constant that is a valid DNS name, so this cannot fail.
    ServerName::try_from("localhost").expect("\"localhost\" is a valid DNS name")
}

/// A test client's connection to the gateway, after the greeting was read.
pub type GatewayClient = BufReader<tokio_rustls::client::TlsStream<TcpStream>>;

/// For tests: connects to the gateway at `addr` as `cfg` and reads the greeting, all within
/// `limit`. With TLS 1.3 the server checks the client certificate after the client has
/// finished, so a refusal shows up on the first read.
pub async fn hello(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    limit: Duration,
) -> std::io::Result<(GatewayClient, String)> {
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(gateway_server_name(), tcp)
            .await?;
        let mut client = BufReader::new(tls);
        let mut line = String::new();
        if client.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok((client, line))
    };
    tokio::time::timeout(limit, attempt).await?
}

/// For tests: the TLS alert a refused attempt ended with.
pub fn refusal_alert<T>(result: &std::io::Result<T>) -> Option<rustls::AlertDescription> {
    let e = result
        .as_ref()
        .err()?
        .get_ref()?
        .downcast_ref::<rustls::Error>()?;
    match e {
        rustls::Error::AlertReceived(a) => Some(*a),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    //! The config-swap core against a tiny rcgen PKI, no daemon: root (P-384) → issuer (P-256,
    //! pathLen 0) → leaves (P-256, CRL DP = the CRL's issuing distribution point).
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
        CrlDistributionPoint, CrlIssuingDistributionPoint, DnType, ExtendedKeyUsagePurpose, IsCa,
        KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber,
        date_time_ymd,
    };
    use rustls::AlertDescription;
    use tokio::io::AsyncBufReadExt;

    type TestResult = Result<(), Box<dyn std::error::Error>>;
    type Ca = CertifiedIssuer<'static, KeyPair>;
    type Client = GatewayClient;

    const CDP: &str = "http://127.0.0.1/crl/x.crl";
    const STEP: Duration = Duration::from_secs(10);

    fn ca(cn: &str, alg: &'static rcgen::SignatureAlgorithm, parent: Option<&Ca>) -> Ca {
        let key = KeyPair::generate_for(alg).expect("generate CA key");
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.serial_number = Some(SerialNumber::from_slice(&[0x01, cn.len() as u8]));
        p.not_before = date_time_ymd(2024, 1, 1);
        p.not_after = date_time_ymd(2045, 1, 1);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        match parent {
            None => {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                CertifiedIssuer::self_signed(p, key).expect("self-sign root")
            }
            Some(parent) => {
                p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                p.use_authority_key_identifier_extension = true;
                CertifiedIssuer::signed_by(p, key, parent).expect("sign issuer")
            }
        }
    }

    /// A device leaf: (certificate DER, PKCS#8 key DER).
    fn leaf(cn: &str, serial: u8, issuer: &Ca) -> (Vec<u8>, Vec<u8>) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("leaf key");
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.serial_number = Some(SerialNumber::from_slice(&[0x42, serial]));
        p.not_before = date_time_ymd(2024, 1, 1);
        p.not_after = date_time_ymd(2044, 1, 1);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![CDP.into()],
        }];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, issuer).expect("sign leaf");
        (cert.der().to_vec(), key.serialize_der())
    }

    /// A CRL of `issuer` with `number`, revoking the leaves with the given serials.
    fn crl(issuer: &Ca, number: u64, revoked: &[u8]) -> Vec<u8> {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2025, 1, 1),
            next_update: date_time_ymd(2040, 1, 1),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: Some(CrlIssuingDistributionPoint {
                distribution_point: CrlDistributionPoint {
                    uris: vec![CDP.into()],
                },
                scope: None,
            }),
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&[0x42, *s]),
                    revocation_time: date_time_ymd(2025, 1, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(issuer).expect("sign CRL").der().to_vec()
    }

    struct Pki {
        root: Ca,
        issuer: Ca,
    }

    fn test_pki() -> Pki {
        let root = ca("Test Device Root", &rcgen::PKCS_ECDSA_P384_SHA384, None);
        let issuer = ca("Test Issuer 1", &rcgen::PKCS_ECDSA_P256_SHA256, Some(&root));
        Pki { root, issuer }
    }

    /// The core plus the accept loop on a loopback port, as `Gateway::start` wires them.
    struct TestGateway {
        addr: SocketAddr,
        state: Arc<TlsState>,
        server_cert: Vec<u8>,
        _stop: watch::Sender<bool>,
    }

    async fn test_gateway(
        root: &Ca,
        issuers: &[&Ca],
    ) -> Result<TestGateway, Box<dyn std::error::Error>> {
        let (chain, key) = server_identity(None)?;
        let server_cert = chain[0].to_vec();
        let issuers = issuers.iter().map(|i| i.der().clone()).collect();
        let state = Arc::new(TlsState::new(root.der().clone(), issuers, chain, key)?);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(accept_loop(listener, state.clone(), stop_rx));
        Ok(TestGateway {
            addr,
            state,
            server_cert,
            _stop: stop,
        })
    }

    impl TestGateway {
        fn device(&self, leaf: &(Vec<u8>, Vec<u8>), issuer: Option<&Ca>) -> rustls::ClientConfig {
            let chain: Vec<Vec<u8>> = issuer.iter().map(|i| i.der().to_vec()).collect();
            client_config_for_device(&self.server_cert, &leaf.0, &chain, &leaf.1)
                .expect("client config")
        }

        /// Connects and reads the greeting. With TLS 1.3 the server checks the client
        /// certificate after the client has finished, so a refusal shows up on the first read.
        async fn hello(&self, cfg: rustls::ClientConfig) -> std::io::Result<(Client, String)> {
            super::hello(self.addr, Arc::new(cfg), STEP).await
        }

        fn apply(&self, issuer_id: &str, der: Vec<u8>) -> Result<CrlOutcome, GatewayError> {
            self.state.apply_crl(issuer_id, der)
        }
    }

    async fn echo(client: &mut Client, msg: &str) -> std::io::Result<String> {
        client.get_mut().write_all(msg.as_bytes()).await?;
        let mut line = String::new();
        tokio::time::timeout(STEP, client.read_line(&mut line)).await??;
        Ok(line)
    }

    #[tokio::test]
    async fn revocation_reaches_new_handshakes_and_spares_open_connections() -> TestResult {
        let pki = test_pki();
        let a = leaf("山田 花子", 1, &pki.issuer);
        let b = leaf("佐藤 太郎", 2, &pki.issuer);
        let gw = test_gateway(&pki.root, &[&pki.issuer]).await?;
        let mut updates = gw.state.updates.subscribe();

        let first = gw.apply("i1", crl(&pki.issuer, 1, &[]))?;
        assert_eq!(
            first,
            CrlOutcome::Applied {
                number: 1,
                entries: 0
            }
        );
        assert_eq!(*updates.borrow_and_update(), 1);

        let (mut open_a, hello) = gw.hello(gw.device(&a, Some(&pki.issuer))).await?;
        assert_eq!(hello, "hello 山田 花子\n");
        assert_eq!(echo(&mut open_a, "ping\n").await?, "ping\n");

        let second = gw.apply("i1", crl(&pki.issuer, 2, &[1]))?;
        assert_eq!(
            second,
            CrlOutcome::Applied {
                number: 2,
                entries: 1
            }
        );
        assert!(updates.has_changed()?);
        assert_eq!(gw.state.crl_number("i1"), Some(2));

        let refused = gw.hello(gw.device(&a, Some(&pki.issuer))).await;
        assert_eq!(
            refusal_alert(&refused),
            Some(AlertDescription::CertificateRevoked)
        );
        let (_b, hello) = gw.hello(gw.device(&b, Some(&pki.issuer))).await?;
        assert_eq!(hello, "hello 佐藤 太郎\n");
        // The connection accepted before the swap keeps its config and keeps working.
        assert_eq!(echo(&mut open_a, "still here\n").await?, "still here\n");
        Ok(())
    }

    #[tokio::test]
    async fn leaf_only_client_gets_in_through_the_known_issuers() -> TestResult {
        let pki = test_pki();
        let a = leaf("A", 1, &pki.issuer);
        let gw = test_gateway(&pki.root, &[&pki.issuer]).await?;
        gw.apply("i1", crl(&pki.issuer, 1, &[]))?;
        let (_c, hello) = gw.hello(gw.device(&a, None)).await?;
        assert_eq!(hello, "hello A\n");
        // Revocation is checked for leaf-only clients too.
        gw.apply("i1", crl(&pki.issuer, 2, &[1]))?;
        let refused = gw.hello(gw.device(&a, None)).await;
        assert_eq!(
            refusal_alert(&refused),
            Some(AlertDescription::CertificateRevoked)
        );
        Ok(())
    }

    #[tokio::test]
    async fn refuses_before_the_first_crl_without_a_client_cert_and_from_other_roots() -> TestResult
    {
        let pki = test_pki();
        let a = leaf("A", 1, &pki.issuer);
        let gw = test_gateway(&pki.root, &[&pki.issuer]).await?;
        // No CRL yet: no config, connections are dropped (fail closed).
        assert!(gw.state.acceptor().is_none());
        assert!(gw.hello(gw.device(&a, Some(&pki.issuer))).await.is_err());

        gw.apply("i1", crl(&pki.issuer, 1, &[]))?;
        assert!(gw.hello(gw.device(&a, Some(&pki.issuer))).await.is_ok());

        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(gw.server_cert.clone()))?;
        let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let refused = gw.hello(anonymous).await;
        assert_eq!(
            refusal_alert(&refused),
            Some(AlertDescription::CertificateRequired)
        );

        // Same names, other keys: a look-alike PKI does not get in.
        let fake = test_pki();
        let f = leaf("A", 1, &fake.issuer);
        let refused = gw.hello(gw.device(&f, Some(&fake.issuer))).await;
        // rustls reports a bad signature in the chain as decrypt_error.
        assert_eq!(
            refusal_alert(&refused),
            Some(AlertDescription::DecryptError)
        );
        Ok(())
    }

    #[tokio::test]
    async fn bad_crls_leave_the_applied_one_in_place() -> TestResult {
        let pki = test_pki();
        let a = leaf("A", 1, &pki.issuer);
        let gw = test_gateway(&pki.root, &[&pki.issuer]).await?;
        gw.apply("i1", crl(&pki.issuer, 5, &[1]))?;
        let updates = gw.state.updates.subscribe();

        // The same number again (a reconnected stream): skipped, no swap.
        assert_eq!(
            gw.apply("i1", crl(&pki.issuer, 5, &[1]))?,
            CrlOutcome::AlreadyApplied
        );
        // An older CRL that would un-revoke A: refused.
        let rollback = gw.apply("i1", crl(&pki.issuer, 4, &[]));
        assert!(
            matches!(
                rollback,
                Err(GatewayError::CrlRollback {
                    number: 4,
                    applied: 5,
                    ..
                })
            ),
            "{rollback:?}"
        );
        // Signed by a key that only borrows the issuer's name.
        let fake = test_pki();
        let forged = gw.apply("i1", crl(&fake.issuer, 6, &[]));
        assert!(
            matches!(forged, Err(GatewayError::CrlUnknownSigner { .. })),
            "{forged:?}"
        );
        // Not a CRL at all.
        let garbage = gw.apply("i1", b"not a CRL".to_vec());
        assert!(
            matches!(garbage, Err(GatewayError::CrlMalformed { .. })),
            "{garbage:?}"
        );

        assert!(!updates.has_changed()?);
        assert_eq!(gw.state.crl_number("i1"), Some(5));
        let refused = gw.hello(gw.device(&a, Some(&pki.issuer))).await;
        assert_eq!(
            refusal_alert(&refused),
            Some(AlertDescription::CertificateRevoked)
        );
        Ok(())
    }

    #[tokio::test]
    async fn an_issuer_without_a_crl_is_refused_until_its_crl_arrives() -> TestResult {
        let pki = test_pki();
        let issuer2 = ca(
            "Test Issuer 2",
            &rcgen::PKCS_ECDSA_P256_SHA256,
            Some(&pki.root),
        );
        let a = leaf("A", 1, &pki.issuer);
        let c = leaf("C", 3, &issuer2);
        let gw = test_gateway(&pki.root, &[&pki.issuer, &issuer2]).await?;
        gw.apply("i1", crl(&pki.issuer, 1, &[]))?;
        assert!(gw.hello(gw.device(&a, Some(&pki.issuer))).await.is_ok());
        // Unknown revocation status is an error: C's issuer is not followed yet.
        let unknown = gw.hello(gw.device(&c, Some(&issuer2))).await;
        assert_eq!(refusal_alert(&unknown), Some(AlertDescription::UnknownCA));

        gw.apply("i2", crl(&issuer2, 1, &[]))?;
        let (_c, hello) = gw.hello(gw.device(&c, Some(&issuer2))).await?;
        assert_eq!(hello, "hello C\n");
        assert!(gw.hello(gw.device(&a, Some(&pki.issuer))).await.is_ok());
        Ok(())
    }

    #[tokio::test]
    async fn an_issuer_that_leaves_the_live_set_is_dropped_and_its_devices_refused() -> TestResult {
        let pki = test_pki();
        let issuer2 = ca(
            "Test Issuer 2",
            &rcgen::PKCS_ECDSA_P256_SHA256,
            Some(&pki.root),
        );
        let a = leaf("A", 1, &pki.issuer);
        let c = leaf("C", 3, &issuer2);
        let gw = test_gateway(&pki.root, &[&pki.issuer, &issuer2]).await?;
        gw.apply("i1", crl(&pki.issuer, 1, &[]))?;
        gw.apply("i2", crl(&issuer2, 1, &[]))?;
        let live = ["i2".to_string(), "i1".to_string()];
        assert!(gw.state.retain_live(&live)?.is_empty(), "nothing to drop");
        assert!(gw.hello(gw.device(&a, Some(&pki.issuer))).await.is_ok());

        // The daemon retired i1 (its last certificate expired): its CRL goes, A is refused.
        let dropped = gw.state.retain_live(&live[..1])?;
        assert_eq!(dropped, vec!["i1".to_string()]);
        assert_eq!(gw.state.crl_number("i1"), None);
        let refused = gw.hello(gw.device(&a, Some(&pki.issuer))).await;
        assert_eq!(refusal_alert(&refused), Some(AlertDescription::UnknownCA));
        let (_c, hello) = gw.hello(gw.device(&c, Some(&issuer2))).await?;
        assert_eq!(hello, "hello C\n");
        Ok(())
    }

    #[test]
    fn config_debug_hides_the_keys() {
        let mut cfg = GatewayConfig::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            "https://127.0.0.1:50051",
            Vec::new(),
            Vec::new(),
            b"SECRET-CLIENT-KEY".to_vec().into(),
        );
        cfg.server_identity = Some(ServerIdentity {
            cert_chain_pem: Vec::new(),
            key_pem: b"SECRET-SERVER-KEY".to_vec().into(),
        });
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(!shown.contains("83, 69, 67"), "{shown}");
    }
}
