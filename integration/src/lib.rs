//! Harness for end-to-end tests: starts the real `ca-daemon` binary in dev mode on loopback
//! ports, waits until it answers, and gives mTLS gRPC clients with the dev certificates.
//!
//! Also: [`tools`] for the independent checkers (openssl, keytool, Python, pkilint), and
//! [`gateway`] — the example rustls mTLS gateway that follows the CRL stream.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod gateway;
pub mod pg;
pub mod tools;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pki_proto::v1;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The daemon did not come up.
    #[error("daemon did not become ready: {0}")]
    NotReady(String),
    /// Building the binary failed.
    #[error("building ca-daemon failed")]
    Build,
    /// A gRPC connection failed.
    #[error("gRPC connect: {0}")]
    Connect(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Path of the `ca-daemon` binary: `$CA_DAEMON_BIN`, else `target/debug/ca-daemon`, built on
/// first use if missing (once per process).
pub fn daemon_bin() -> Result<PathBuf, HarnessError> {
    if let Some(p) = std::env::var_os("CA_DAEMON_BIN") {
        return Ok(PathBuf::from(p));
    }
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = workspace_root();
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| root.join("target"), PathBuf::from);
            // Always ask cargo: a no-op when the binary is fresh, a rebuild when it is stale.
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "-q", "-p", "ca-daemon", "--bin", "ca-daemon"])
                .current_dir(&root)
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err("cargo build failed".into());
            }
            Ok(target.join("debug").join("ca-daemon"))
        })
        .clone()
        .map_err(|_| HarnessError::Build)
}

/// A free loopback port (bound and released; the daemon binds it right after).
pub fn free_port() -> Result<u16, HarnessError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("bind a free port"))?;
    Ok(l.local_addr().map_err(io("local addr"))?.port())
}

/// A running daemon; killed when dropped.
pub struct Daemon {
    child: Option<Child>,
    /// Data directory (a temp dir unless given).
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    /// gRPC address.
    pub grpc: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
    /// Metrics address, if enabled.
    pub metrics: Option<SocketAddr>,
    /// File collecting the daemon's stdout and stderr.
    pub log_path: PathBuf,
    extra_args: Vec<String>,
}

/// Options for starting a daemon.
#[derive(Debug, Default, Clone)]
pub struct DaemonOptions {
    /// Reuse this data directory instead of a fresh temp dir.
    pub data_dir: Option<PathBuf>,
    /// Policy file.
    pub policy: Option<PathBuf>,
    /// Enable metrics.
    pub metrics: bool,
    /// Extra arguments to `serve`.
    pub extra_args: Vec<String>,
}

impl Daemon {
    /// Starts `ca-daemon serve --dev` on fresh loopback ports in a fresh temp dir.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with(DaemonOptions::default())
    }

    /// Starts with options.
    pub fn start_with(opts: DaemonOptions) -> Result<Self, HarnessError> {
        let (temp, data_dir) = match opts.data_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir().map_err(io("temp dir"))?;
                let d = t.path().join("var");
                (Some(t), d)
            }
        };
        let mut extra = opts.extra_args.clone();
        if let Some(p) = &opts.policy {
            extra.push("--policy".into());
            extra.push(p.display().to_string());
        }
        let mut d = Daemon {
            child: None,
            data_dir,
            _temp: temp,
            grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: None,
            log_path: PathBuf::new(),
            extra_args: extra,
        };
        // A port found free can be taken by a parallel test before the daemon binds it: then
        // the daemon exits with "Address already in use" and we try again on new ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            d.grpc = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            d.http = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            d.metrics = if opts.metrics {
                Some(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
            } else {
                None
            };
            d.log_path = d
                .data_dir
                .parent()
                .unwrap_or(&d.data_dir)
                .join(format!("daemon-{}.log", d.grpc.port()));
            match d.spawn() {
                Ok(()) => return Ok(d),
                Err(HarnessError::NotReady(log))
                    if attempt < 5 && log.contains("Address already in use") =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        std::fs::create_dir_all(self.data_dir.parent().unwrap_or(&self.data_dir))
            .map_err(io("create data dir parent"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(io("open daemon log"))?;
        let log2 = log.try_clone().map_err(io("clone log handle"))?;
        let mut cmd = Command::new(daemon_bin()?);
        cmd.arg("serve")
            .arg("--dev")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--grpc-listen")
            .arg(self.grpc.to_string())
            .arg("--http-listen")
            .arg(self.http.to_string());
        if let Some(m) = self.metrics {
            cmd.arg("--metrics-listen").arg(m.to_string());
        }
        cmd.args(&self.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("CA_DAEMON_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let child = cmd.spawn().map_err(io("spawn ca-daemon"))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60))
    }

    /// Waits until `/healthz` answers and the gRPC port accepts connections.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(HarnessError::NotReady(format!(
                    "exited with {status}; log:\n{}",
                    self.log()
                )));
            }
            // 503 is a daemon that is up but degraded (failed storage write, CRL guard).
            let http_ok =
                http_get(self.http, "/healthz").is_ok_and(|(code, _)| code == 200 || code == 503);
            let grpc_ok =
                std::net::TcpStream::connect_timeout(&self.grpc, Duration::from_millis(200))
                    .is_ok();
            if http_ok && grpc_ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(HarnessError::NotReady(format!(
            "timeout; log:\n{}",
            self.log()
        )))
    }

    /// Process id of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Waits up to `timeout` for the daemon to exit by itself; its exit code, if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same data dir and ports.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop();
        self.spawn()
    }

    /// Starts again after a kill (same data dir and ports).
    pub fn start_again(&mut self) -> Result<(), HarnessError> {
        self.spawn()
    }

    /// The dev directory with the client certificates.
    pub fn dev_dir(&self) -> PathBuf {
        self.data_dir.join("dev")
    }

    /// An mTLS channel with the dev certificate of `role` (portal, gateway, ops).
    pub async fn channel(&self, role: &str) -> Result<Channel, HarnessError> {
        let dev = self.dev_dir();
        let read = |p: PathBuf| std::fs::read(&p).map_err(io(format!("read {}", p.display())));
        let ca = read(dev.join("service-ca.crt"))?;
        let cert = read(dev.join(format!("{role}.crt")))?;
        let key = read(dev.join(format!("{role}.key")))?;
        self.channel_with(Some((cert, key)), ca).await
    }

    /// An mTLS channel with an arbitrary identity (PEM cert, PEM key), or none.
    pub async fn channel_with(
        &self,
        identity: Option<(Vec<u8>, Vec<u8>)>,
        ca_pem: Vec<u8>,
    ) -> Result<Channel, HarnessError> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name("localhost");
        if let Some((c, k)) = identity {
            tls = tls.identity(Identity::from_pem(c, k));
        }
        Channel::from_shared(format!("https://{}", self.grpc))
            .map_err(|e| HarnessError::Connect(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| HarnessError::Connect(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .connect()
            .await
            .map_err(|e| HarnessError::Connect(format!("{e:?}")))
    }

    /// Enrollment client as `role`.
    pub async fn enrollment(
        &self,
        role: &str,
    ) -> Result<v1::enrollment_client::EnrollmentClient<Channel>, HarnessError> {
        Ok(v1::enrollment_client::EnrollmentClient::new(
            self.channel(role).await?,
        ))
    }

    /// Certificates client as `role`.
    pub async fn certificates(
        &self,
        role: &str,
    ) -> Result<v1::certificates_client::CertificatesClient<Channel>, HarnessError> {
        Ok(
            v1::certificates_client::CertificatesClient::new(self.channel(role).await?)
                .max_decoding_message_size(64 << 20),
        )
    }

    /// Revocation client as `role`.
    pub async fn revocation(
        &self,
        role: &str,
    ) -> Result<v1::revocation_client::RevocationClient<Channel>, HarnessError> {
        Ok(
            v1::revocation_client::RevocationClient::new(self.channel(role).await?)
                .max_decoding_message_size(256 << 20),
        )
    }

    /// Admin client as `role`.
    pub async fn admin(
        &self,
        role: &str,
    ) -> Result<v1::admin_client::AdminClient<Channel>, HarnessError> {
        Ok(
            v1::admin_client::AdminClient::new(self.channel(role).await?)
                .max_decoding_message_size(1 << 30),
        )
    }

    /// Runs the CLI against this daemon (with the ops certificate); returns (status, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> Result<(i32, String, String), HarnessError> {
        let out = Command::new(daemon_bin()?)
            .args(args)
            .env("CA_DAEMON_SERVER", format!("https://{}", self.grpc))
            .stdin(Stdio::null())
            .output()
            .map_err(io("run ca-daemon CLI"))?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP/1.1 GET over loopback: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    http_request(addr, "GET", path, None, &[])
}

/// A minimal HTTP/1.1 request (Connection: close): (status, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(ct) = content_type {
        req.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    let mut body = buf[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((code, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(pos) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..pos]).trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < pos + 2 + size {
            return out;
        }
        out.extend_from_slice(&b[pos + 2..pos + 2 + size]);
        b = &b[(pos + 4 + size).min(b.len())..];
    }
}

/// The `grpc.health.v1` status of `service` (as `gateway`); panics when the check fails.
pub async fn health_status(d: &Daemon, service: &str) -> i32 {
    let ch = d.channel("gateway").await.expect("channel");
    tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("Health.Check")
        .into_inner()
        .status
}

/// The daemon's issuers (`ListIssuers` as `ops`); panics when the call fails.
pub async fn list_issuers(d: &Daemon) -> Vec<v1::Issuer> {
    d.admin("ops")
        .await
        .expect("admin client")
        .list_issuers(v1::ListIssuersRequest {})
        .await
        .expect("ListIssuers")
        .into_inner()
        .issuers
}

/// The daemon's active issuer; panics when there is none.
pub async fn active_issuer(d: &Daemon) -> v1::Issuer {
    list_issuers(d)
        .await
        .into_iter()
        .find(|i| i.state == v1::IssuerState::Active as i32)
        .expect("an active issuer")
}

/// Creates the ticket `req` as `portal` and redeems it (OS and keystore profile from the
/// ticket); panics when either call fails.
pub async fn create_and_redeem(
    d: &Daemon,
    req: v1::CreateTicketRequest,
) -> v1::RedeemTicketResponse {
    let mut e = d.enrollment("portal").await.expect("enrollment client");
    let t = e
        .create_ticket(req)
        .await
        .expect("CreateTicket")
        .into_inner();
    e.redeem_ticket(v1::RedeemTicketRequest {
        number: t.number,
        password: t.password,
        os: v1::TargetOs::Unspecified as i32,
        keystore_profile: String::new(),
    })
    .await
    .expect("RedeemTicket")
    .into_inner()
}

/// Creates and redeems the sample ticket `n` for an Android device (3DES bundle: the cheapest
/// profile).
pub async fn redeem_sample(d: &Daemon, n: u32) -> v1::RedeemTicketResponse {
    create_and_redeem(d, sample_ticket_request(n, v1::TargetOs::Android)).await
}

/// A sample enrollee with Japanese names.
pub fn sample_ticket_request(n: u32, os: v1::TargetOs) -> v1::CreateTicketRequest {
    v1::CreateTicketRequest {
        facility: Some(v1::Facility {
            id: format!("F{:03}", n % 7),
            name: "みよし訪問看護ステーション".into(),
            prefecture: "愛知県".into(),
            city: "みよし市".into(),
            kind: "訪問看護".into(),
        }),
        person: Some(v1::Person {
            id: format!("P{n:05}"),
            family_name: "山田".into(),
            given_name: "花子".into(),
            family_name_kana: "ヤマダ".into(),
            given_name_kana: "ハナコ".into(),
            job: "看護師".into(),
            email: "hanako@example.jp".into(),
        }),
        device: Some(v1::Device {
            id: format!("D{n:05}"),
            os: os as i32,
            remark: "個人端末".into(),
        }),
        profile: String::new(),
        approved_by: "事務局".into(),
        renews_serial: String::new(),
    }
}
