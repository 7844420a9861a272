//! Benchmark 4: how long from a Revoke call until the example gateway (integration::gateway,
//! following `WatchCrl`) refuses the certificate in a new handshake.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration::gateway::{self, Gateway, GatewayConfig};
use pki_proto::v1;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

use crate::common;
use crate::error::{BenchError, Result, failed, io, rpc};
use crate::stats;
use crate::{Mode, Section};

/// A device identity taken from a redeemed bundle.
pub(crate) struct DeviceCert {
    pub(crate) serial: String,
    pub(crate) config: Arc<rustls::ClientConfig>,
}

/// Outcome of one connection attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Attempt {
    Accepted,
    Refused,
}

pub(crate) async fn attempt(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<Attempt> {
    let run = async {
        let tcp = TcpStream::connect(addr).await?;
        // Without it the handshake waits on delayed ACKs (~40 ms a poll).
        tcp.set_nodelay(true)?;
        let tls = TlsConnector::from(cfg)
            .connect(gateway::gateway_server_name(), tcp)
            .await?;
        let mut r = BufReader::new(tls);
        let mut line = String::new();
        let n = r.read_line(&mut line).await?;
        Ok::<_, std::io::Error>((n, line))
    };
    match tokio::time::timeout(Duration::from_secs(5), run).await {
        Err(_) => Err(BenchError::Failed("gateway handshake timed out".into())),
        Ok(Ok((n, line))) if n > 0 && line.starts_with("hello") => Ok(Attempt::Accepted),
        // TLS 1.3: the server checks the client certificate after the client finished, so a
        // refusal arrives as an alert (or a close) on the first read.
        Ok(Ok(_)) => Ok(Attempt::Refused),
        Ok(Err(e)) => {
            let alert = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .is_some_and(|r| matches!(r, rustls::Error::AlertReceived(_)));
            if alert
                || matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                )
            {
                Ok(Attempt::Refused)
            } else {
                Err(BenchError::Failed(format!("gateway connection: {e}")))
            }
        }
    }
}

/// Pollers in flight at once, started [`STAGGER`] apart: one handshake to the gateway takes
/// ~40 ms here (the gateway's accepted sockets wait on delayed ACKs), so a single poller would
/// see the refusal up to 40 ms late.
const POLLERS: usize = 8;
/// Offset between the pollers' starts.
const STAGGER: Duration = Duration::from_millis(5);

/// Handshakes with `cfg` from [`POLLERS`] staggered pollers until one is refused; returns the
/// time from `t0` to that refusal and the number of handshakes made.
pub(crate) async fn poll_until_refused(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    t0: Instant,
) -> Result<(Duration, usize)> {
    let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for k in 0..POLLERS {
        let (cfg, polls) = (cfg.clone(), polls.clone());
        set.spawn(async move {
            tokio::time::sleep(STAGGER * k as u32).await;
            loop {
                polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if attempt(addr, cfg.clone()).await? == Attempt::Refused {
                    return Ok(t0.elapsed());
                }
                if t0.elapsed() > Duration::from_secs(10) {
                    return Err(BenchError::Failed(
                        "certificate still accepted 10 s after its revocation".into(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    }
    let first = set
        .join_next()
        .await
        .ok_or_else(|| BenchError::Failed("no poller".into()))?
        .map_err(failed("poller"))??;
    set.abort_all();
    while set.join_next().await.is_some() {}
    Ok((first, polls.load(std::sync::atomic::Ordering::Relaxed)))
}

/// The device key (PKCS#8, out of the PKCS#12 with the p12 crate) and the issuing CA of a
/// redemption: what the device presents to a gateway.
pub(crate) fn bundle_key_and_issuer(
    r: &v1::RedeemTicketResponse,
    password: &str,
) -> Result<(Vec<u8>, Vec<Vec<u8>>)> {
    let pfx = p12::PFX::parse(&r.pkcs12)
        .map_err(|e| BenchError::Failed(format!("parse bundle: {e:?}")))?;
    let key = pfx
        .key_bags(password)
        .map_err(|e| BenchError::Failed(format!("bundle key: {e:?}")))?
        .into_iter()
        .next()
        .ok_or_else(|| BenchError::Failed("bundle without key".into()))?;
    Ok((key, r.chain_der.first().cloned().into_iter().collect()))
}

/// The example gateway following `d`'s `WatchCrl`, with `d`'s dev gateway identity.
pub(crate) async fn start_gateway(d: &integration::Daemon) -> Result<Gateway> {
    let dev = d.dev_dir();
    let read = |name: &str| std::fs::read(dev.join(name)).map_err(io(format!("read {name}")));
    let cfg = GatewayConfig::new(
        common::free_addr()?,
        format!("https://{}", d.grpc),
        read("service-ca.crt")?,
        read("gateway.crt")?,
        Zeroizing::new(read("gateway.key")?),
    );
    Gateway::start(cfg).await.map_err(failed("start gateway"))
}

/// Runs the revocation-reach benchmark.
pub async fn run(mode: Mode, work: &Path) -> Result<Section> {
    let n = match mode {
        Mode::Full => 100,
        Mode::Smoke => 3,
    };
    let d = common::start_daemon(work, None)?;
    let gw = start_gateway(&d).await?;
    let addr = gw.local_addr();
    let gw_cert = gw.server_cert_der();

    // n certificates (android: 3DES, which the p12 crate reads back), untimed.
    let tickets = common::create_tickets(&d, v1::TargetOs::Android, 500_000, n, 4).await?;
    let mut enroll = d.enrollment("portal").await?;
    let mut devices = Vec::with_capacity(n);
    for t in &tickets {
        let r = enroll
            .redeem_ticket(common::redeem_request(t))
            .await
            .map_err(rpc("RedeemTicket"))?
            .into_inner();
        let (key, issuer) = bundle_key_and_issuer(&r, &t.password)?;
        let config = gateway::client_config_for_device(&gw_cert, &r.certificate_der, &issuer, &key)
            .map_err(failed("device client config"))?;
        devices.push(DeviceCert {
            serial: r.serial,
            config: Arc::new(config),
        });
    }
    for dc in &devices {
        if attempt(addr, dc.config.clone()).await? != Attempt::Accepted {
            return Err(BenchError::Failed(format!(
                "certificate {} refused before revocation",
                dc.serial
            )));
        }
    }

    let mut certs = d.certificates("portal").await?;
    let mut reach = Vec::with_capacity(n);
    let mut revoke_rpc = Vec::with_capacity(n);
    let mut polls = 0usize;
    for dc in &devices {
        let t0 = Instant::now();
        certs
            .revoke(v1::RevokeRequest {
                target: Some(v1::revoke_request::Target::Serial(dc.serial.clone())),
                reason: v1::RevocationReason::KeyCompromise as i32,
                ..Default::default()
            })
            .await
            .map_err(rpc("Revoke"))?;
        revoke_rpc.push(t0.elapsed());
        let (took, n_polls) = poll_until_refused(addr, dc.config.clone(), t0).await?;
        polls += n_polls;
        reach.push(took);
    }
    gw.shutdown().await;
    drop(d);

    let p = |v: &[Duration], q: f64| stats::percentile_ms(v, q);
    let p99 = p(&reach, 99.0);
    let ok = p99 <= 500.0;
    let body = format!(
        "{n} certificates redeemed (android profile), each accepted by the example gateway \
         (`integration::gateway`, rustls, following `WatchCrl`); then one at a time: `Revoke` \
         (serial, as portal) and new handshakes from 8 pollers started 5 ms apart until the \
         gateway refuses that certificate (one handshake takes ~40 ms: the gateway does not set \
         TCP_NODELAY on accepted connections, so its writes wait on delayed ACKs). Reach is measured from just before the Revoke call; it includes the \
         durable revocation, the CRL batch window (policy `crl.batch_window_ms`, default \
         200 ms), building and signing the CRL, the stream to the gateway and its config swap. \
         {polls} handshakes in all.\n\n\
         | | p50 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: |\n\
         | revoke → gateway refuses | {:.1} | {:.1} | {:.1} |\n\
         | the Revoke RPC alone | {:.1} | {:.1} | {:.1} |\n\
         | peer: CRL polled every hour (typical; computed, not measured: uniform over the hour) | 1,800,000 | 3,564,000 | 3,600,000 |\n\n\
         Targets (DESIGN.md §9):\n\n\
         - revoke → gateway refuses, p99 {:.1} ms (target ≤ 500 ms): {}\n",
        p(&reach, 50.0),
        p99,
        p(&reach, 100.0),
        p(&revoke_rpc, 50.0),
        p(&revoke_rpc, 99.0),
        p(&revoke_rpc, 100.0),
        p99,
        stats::verdict(ok),
    );
    Ok(Section {
        name: "reach",
        title: "4. Revocation reach: revoke → the gateway refuses the certificate",
        body,
        targets_met: ok,
    })
}
