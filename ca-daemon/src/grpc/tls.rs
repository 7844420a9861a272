//! The TLS accept loop that feeds tonic.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use super::auth::{PeerInfo, role_from_cert};
use crate::metrics;

/// Errors building the TLS configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

/// TLS 1.3 only, client certificate required and verified against the service-client CA.
pub fn server_tls_config(
    service_ca_der: &[u8],
    server_cert_der: &[u8],
    server_key_pkcs8: &[u8],
) -> Result<rustls::ServerConfig, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(service_ca_der.to_vec()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsSetupError::Verifier(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key_pkcs8.to_vec()));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![CertificateDer::from(server_cert_der.to_vec())], key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// A TLS connection with its verified peer.
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
    _permit: OwnedSemaphorePermit,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The stream of accepted, authenticated connections handed to tonic.
pub type TlsIncoming = tokio_stream::wrappers::ReceiverStream<Result<TlsConn, io::Error>>;

/// Default bound on the TLS handshake: a service client on the network completes it in
/// milliseconds; a peer that has not done so by then only holds a handshake slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Handshakes in progress at once, from all sources. When full, a new connection evicts the
/// oldest one still in its handshake (a legitimate client needs milliseconds of the slot, a
/// silent socket holds it until its deadline).
pub const MAX_HANDSHAKES: usize = 256;
/// Handshakes in progress at once from one source address; further connections from it are
/// closed on accept (so one host cannot evict everyone else's handshakes).
pub const MAX_HANDSHAKES_PER_SOURCE: usize = 16;

/// Handshakes in progress: per source address, and by age for eviction.
#[derive(Debug, Default)]
struct Pending {
    next_id: u64,
    by_age: BTreeMap<u64, (IpAddr, AbortHandle)>,
    per_source: HashMap<IpAddr, usize>,
}

/// What admitting a new handshake did.
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    /// Admitted under this id.
    Admitted(u64),
    /// Admitted under this id after evicting the oldest pending handshake.
    Evicted(u64),
    /// Refused: its source already has the most handshakes in progress.
    SourceFull,
}

impl Pending {
    /// Admits a handshake from `ip`: refuses it if its source is full, evicts (aborts) the
    /// oldest one if all slots are taken. `abort` is what aborts the new one later.
    fn admit(
        &mut self,
        ip: IpAddr,
        max: usize,
        per_source: usize,
        abort: impl FnOnce(u64) -> AbortHandle,
    ) -> Admission {
        if self.per_source.get(&ip).copied().unwrap_or(0) >= per_source {
            return Admission::SourceFull;
        }
        let mut evicted = false;
        while self.by_age.len() >= max.max(1) {
            let Some((_, (old_ip, handle))) = self.by_age.pop_first() else {
                break;
            };
            handle.abort();
            self.forget_source(old_ip);
            evicted = true;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.by_age.insert(id, (ip, abort(id)));
        *self.per_source.entry(ip).or_insert(0) += 1;
        if evicted {
            Admission::Evicted(id)
        } else {
            Admission::Admitted(id)
        }
    }

    /// The handshake `id` ended (done, failed or timed out); no-op if it was evicted.
    fn done(&mut self, id: u64) {
        if let Some((ip, _)) = self.by_age.remove(&id) {
            self.forget_source(ip);
        }
    }

    fn forget_source(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_source.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&ip);
            }
        }
    }
}

/// Starts the accept loop on `listener`; at most `max_connections` authenticated connections
/// live at once, each handshake bounded by `handshake_timeout`.
///
/// Connection slots go to authenticated peers only: the accept loop never waits, a handshake
/// takes one of [`MAX_HANDSHAKES`] handshake slots (at most [`MAX_HANDSHAKES_PER_SOURCE`] per
/// source address; the oldest pending handshake is evicted when they are all taken), and a
/// connection slot is taken only once the client certificate is verified (waiting up to
/// `handshake_timeout` for one when all are in use). So silent or slow sockets cannot keep a
/// portal or a gateway from connecting.
pub fn accept_loop(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    max_connections: usize,
    handshake_timeout: Duration,
) -> TlsIncoming {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let slots = Arc::new(Semaphore::new(max_connections));
    let pending = Arc::new(Mutex::new(Pending::default()));
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let slots = slots.clone();
            let pending2 = pending.clone();
            let task = async move |id: u64| {
                let result = handshake(acceptor, tcp, remote, handshake_timeout).await;
                pending2
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .done(id);
                match result {
                    Ok((inner, info)) => {
                        // An authenticated peer waits a little for a slot to free up (as long
                        // as a handshake may take), holding no handshake slot meanwhile.
                        let permit =
                            tokio::time::timeout(handshake_timeout, slots.acquire_owned()).await;
                        let Ok(Ok(permit)) = permit else {
                            metrics::inc(&metrics::metrics().grpc_refused, "connection_limit");
                            tracing::warn!(remote = %remote, role = %info.role,
                                "gRPC connection refused: connection limit reached");
                            return;
                        };
                        let conn = TlsConn {
                            inner,
                            info,
                            _permit: permit,
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Err(reason) => {
                        let label = if reason.contains("timed out") {
                            "handshake_timeout"
                        } else {
                            "handshake_failed"
                        };
                        metrics::inc(&metrics::metrics().grpc_refused, label);
                        tracing::info!(remote = %remote, reason = %reason, "gRPC connection refused");
                    }
                }
            };
            // The table is locked while the task is spawned, so the task's `done` (which
            // takes the lock) always comes after its own registration.
            let mut table = pending.lock().unwrap_or_else(PoisonError::into_inner);
            let admission = table.admit(
                remote.ip(),
                MAX_HANDSHAKES,
                MAX_HANDSHAKES_PER_SOURCE,
                |id| tokio::spawn(task(id)).abort_handle(),
            );
            drop(table);
            match admission {
                Admission::Admitted(_) => {}
                Admission::Evicted(_) => {
                    metrics::inc(&metrics::metrics().grpc_refused, "handshake_evicted");
                    tracing::debug!(remote = %remote, "handshake slots full: evicted the oldest");
                }
                Admission::SourceFull => {
                    metrics::inc(&metrics::metrics().grpc_refused, "source_handshakes");
                    tracing::debug!(remote = %remote,
                        "gRPC connection refused: too many handshakes from this source");
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    timeout: Duration,
) -> Result<(TlsStream<TcpStream>, PeerInfo), String> {
    let tls = tokio::time::timeout(timeout, acceptor.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| "no client certificate".to_string())?;
    let (role, name) =
        role_from_cert(leaf).ok_or_else(|| "client certificate names no role".to_string())?;
    Ok((
        tls,
        PeerInfo {
            remote: Some(remote),
            role,
            name,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> AbortHandle {
        tokio::spawn(std::future::pending::<()>()).abort_handle()
    }

    #[tokio::test]
    async fn per_source_cap_and_oldest_first_eviction() {
        let mut p = Pending::default();
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let c: IpAddr = [192, 0, 2, 3].into();
        let mut handles = Vec::new();
        let mut admit = |p: &mut Pending, ip| {
            p.admit(ip, 3, 2, |_| {
                let h = handle();
                handles.push(h.clone());
                h
            })
        };
        assert_eq!(admit(&mut p, a), Admission::Admitted(0));
        assert_eq!(admit(&mut p, a), Admission::Admitted(1));
        assert_eq!(admit(&mut p, a), Admission::SourceFull);
        assert_eq!(admit(&mut p, b), Admission::Admitted(2));
        // All three slots taken: the oldest (a's first) goes, and a may try again.
        assert_eq!(admit(&mut p, c), Admission::Evicted(3));
        assert_eq!(admit(&mut p, a), Admission::Evicted(4));
        assert_eq!(p.by_age.keys().copied().collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(p.per_source.get(&a), Some(&1));
        tokio::task::yield_now().await;
        assert!(
            handles[0].is_finished() && handles[1].is_finished(),
            "evicted ones aborted"
        );
        // A finished handshake gives its slot back; an evicted one's `done` is a no-op.
        p.done(0);
        p.done(3);
        assert_eq!(p.per_source.get(&c), None);
        assert_eq!(p.by_age.len(), 2);
    }
}
