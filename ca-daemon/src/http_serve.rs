//! The plain-HTTP listener (CRL, OCSP, CA chain): HTTP/1.1 only, a bounded number of
//! connections (in all and per source address), and timeouts on every way a peer can hold a
//! connection without doing anything: reading the request head, sending nothing at all, and not
//! reading the response.
//!
//! Why HTTP/1.1 only: the clients of this port (OpenSSL, CryptoAPI, NSS, rustls gateways, CRL
//! fetchers, CDNs in front of it) speak HTTP/1.1 to a CDP or AIA URL (RFC 5019 §5 is written for
//! it, and an `http://` URL never negotiates HTTP/2 except by prior knowledge). Cleartext HTTP/2
//! (h2c) would only add an attack surface nobody uses: per-stream flow-control windows a peer
//! can hold at zero, rapid reset, CONTINUATION floods. gRPC, where HTTP/2 is meant, has its own
//! mTLS port.
//!
//! `axum::serve` has none of these knobs, so this module drives hyper's HTTP/1 connection
//! directly with the axum router as its service.

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

use crate::metrics;

/// Limits of the HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections open at once, in all. Further ones are closed on accept.
    pub max_connections: usize,
    /// Connections open at once from one source address.
    pub max_per_source: usize,
    /// Time a client has to send a complete request head, from the moment the server waits
    /// for one (a new connection, or a kept-alive one after its last response).
    pub header_read_timeout: Duration,
    /// A connection on which no byte moves in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// A response write that makes no progress for this long (the peer does not read) closes
    /// the connection.
    pub write_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_per_source: 256,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(15),
        }
    }
}

/// Counts connections per source address; a slot is given back when its guard drops.
#[derive(Debug, Default)]
struct PerSource {
    open: Mutex<HashMap<IpAddr, usize>>,
}

struct SourceSlot {
    table: Arc<PerSource>,
    ip: IpAddr,
}

impl PerSource {
    fn try_take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self
            .table
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// What a live connection holds; dropping it gives the slots back and updates the gauge.
struct ConnSlots {
    _total: OwnedSemaphorePermit,
    _source: SourceSlot,
}

impl Drop for ConnSlots {
    fn drop(&mut self) {
        metrics::metrics().http_connections.dec();
    }
}

/// Serves `router` on `listener` until `stop` becomes true; then stops accepting, lets
/// in-flight requests finish (kept-alive connections close after their current response) and
/// returns once every connection is gone.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let total = Arc::new(Semaphore::new(limits.max_connections));
    let per_source = Arc::new(PerSource::default());
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        // Reap finished connection tasks so the set does not grow with the history.
        while tasks.try_join_next().is_some() {}
        let Some(slots) = take_slots(&total, &per_source, remote.ip(), &limits) else {
            metrics::inc(&metrics::metrics().http_refused, "connection_limit");
            tracing::debug!(remote = %remote, "HTTP connection refused: connection limit");
            drop(tcp);
            continue;
        };
        metrics::metrics().http_connections.inc();
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let stop = stop.clone();
        tasks.spawn(serve_connection(tcp, remote, router, limits, stop, slots));
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

fn take_slots(
    total: &Arc<Semaphore>,
    per_source: &Arc<PerSource>,
    ip: IpAddr,
    limits: &HttpLimits,
) -> Option<ConnSlots> {
    let source = per_source.try_take(ip, limits.max_per_source)?;
    let total = total.clone().try_acquire_owned().ok()?;
    Some(ConnSlots {
        _total: total,
        _source: source,
    })
}

async fn serve_connection(
    tcp: TcpStream,
    remote: SocketAddr,
    router: Router,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
    slots: ConnSlots,
) {
    let io = TokioIo::new(TimedIo::new(tcp, limits.idle_timeout, limits.write_timeout));
    // Handlers see the peer address as `ConnectInfo` (per-source OCSP signing limit).
    let service = router.map_request(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(remote));
        req
    });
    let service = TowerToHyperService::new(service);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = result {
        let reason = if e.is_timeout() {
            "timeout"
        } else if is_timed_out(&e) {
            "stalled"
        } else {
            "error"
        };
        if reason != "error" {
            metrics::inc(&metrics::metrics().http_refused, reason);
        }
        tracing::debug!(remote = %remote, reason, error = %e, "HTTP connection closed");
    }
    drop(slots);
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // A closed channel means the daemon is going away as well.
    let _ = stop.wait_for(|s| *s).await;
}

/// Whether hyper's error comes from [`TimedIo`] giving up on the peer.
fn is_timed_out(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::TimedOut;
        }
        source = s.source();
    }
    false
}

/// A stream that fails with `TimedOut` when nothing moves for `idle` or a write stays blocked
/// for `write_timeout`. It forwards vectored writes, so hyper queues a shared response body
/// (a CRL) instead of copying it into a flat buffer.
pub struct TimedIo<T> {
    inner: T,
    idle: Duration,
    write_timeout: Duration,
    /// Last time a byte moved in either direction.
    last_progress: Instant,
    idle_sleep: Pin<Box<Sleep>>,
    /// Set while a write is blocked: when it started.
    write_blocked_since: Option<Instant>,
    write_sleep: Pin<Box<Sleep>>,
}

impl<T> TimedIo<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, idle: Duration, write_timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            inner,
            idle,
            write_timeout,
            last_progress: now,
            idle_sleep: Box::pin(tokio::time::sleep_until(now + idle)),
            write_blocked_since: None,
            write_sleep: Box::pin(tokio::time::sleep_until(now + write_timeout)),
        }
    }

    fn progress(&mut self) {
        self.last_progress = Instant::now();
    }

    /// `Pending`, or `TimedOut` once the connection has been idle for too long. The sleep is
    /// re-armed lazily from `last_progress`, so progress costs a clock read, not a timer reset.
    fn idle_check(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let deadline = self.last_progress + self.idle;
            if self.idle_sleep.deadline() != deadline {
                self.idle_sleep.as_mut().reset(deadline);
            }
            if self.idle_sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.last_progress + self.idle <= Instant::now() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle",
                )));
            }
        }
    }

    fn write_blocked(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let since = *self.write_blocked_since.get_or_insert_with(Instant::now);
        let deadline = since + self.write_timeout;
        if self.write_sleep.deadline() != deadline {
            self.write_sleep.as_mut().reset(deadline);
        }
        if self.write_sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "peer does not read the response",
            )));
        }
        match self.idle_check(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Pending,
        }
    }

    fn written(&mut self, r: io::Result<usize>) -> io::Result<usize> {
        if let Ok(n) = &r {
            self.write_blocked_since = None;
            if *n > 0 {
                self.progress();
            }
        }
        r
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.idle_check(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(r) => Poll::Ready(self.written(r)),
            Poll::Pending => self.write_blocked(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => Poll::Ready(self.written(r)),
            Poll::Pending => self.write_blocked(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Real time, short timeouts: `elapsed` is at least the timeout and not much more.
    fn about(elapsed: Duration, expected: Duration) -> bool {
        elapsed >= expected && elapsed < expected + Duration::from_millis(900)
    }

    #[tokio::test]
    async fn idle_read_times_out_and_progress_resets_it() {
        let (a, mut b) = tokio::io::duplex(64);
        let idle = Duration::from_millis(500);
        let mut t = TimedIo::new(a, idle, Duration::from_millis(300));
        let mut buf = [0u8; 8];
        b.write_all(b"x").await.expect("write");
        assert_eq!(t.read(&mut buf).await.expect("read"), 1);
        tokio::time::sleep(Duration::from_millis(350)).await;
        b.write_all(b"y").await.expect("write");
        // 350 ms after the last byte: still alive, and the new byte resets the clock.
        assert_eq!(t.read(&mut buf).await.expect("read"), 1);
        let started = Instant::now();
        let e = t.read(&mut buf).await.expect_err("idle");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(about(started.elapsed(), idle), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn blocked_write_times_out() {
        let (a, _b) = tokio::io::duplex(16);
        let write_timeout = Duration::from_millis(300);
        let mut t = TimedIo::new(a, Duration::from_secs(60), write_timeout);
        t.write_all(&[0u8; 16]).await.expect("fits the pipe");
        let started = Instant::now();
        let e = t.write_all(&[0u8; 16]).await.expect_err("peer never reads");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(
            about(started.elapsed(), write_timeout),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn per_source_slots_are_bounded_and_given_back() {
        let t = Arc::new(PerSource::default());
        let ip: IpAddr = [192, 0, 2, 1].into();
        let other: IpAddr = [192, 0, 2, 2].into();
        let a = t.try_take(ip, 2).expect("first");
        let _b = t.try_take(ip, 2).expect("second");
        assert!(t.try_take(ip, 2).is_none(), "third from the same source");
        assert!(
            t.try_take(other, 2).is_some(),
            "another source is not affected"
        );
        drop(a);
        assert!(
            t.try_take(ip, 2).is_some(),
            "a closed connection frees its slot"
        );
    }
}
