//! What every benchmark shares: starting the daemon, exporting its dev PKI for the openssl
//! peers, creating and redeeming tickets, running external tools with a time limit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ca_daemon::keys::Passphrase;
use ca_daemon::pki::{self, LoadedPki};
use integration::{Daemon, DaemonOptions};
use pki_proto::v1;
use pki_proto::v1::enrollment_client::EnrollmentClient;
use tonic::transport::Channel;

use crate::error::{BenchError, Result, io, rpc};
use crate::stats::Round;

/// Policy merged over the built-in one for benchmarks: the per-caller rate limit (200/s) would
/// otherwise cap the numbers being measured. Nothing else changes.
pub const BENCH_POLICY: &str = "\
# Benchmarks only: lift the per-caller rate limit, which would cap the rates measured.
[limits]
rate_per_caller_per_second = 1000000
rate_burst = 10000000
";

/// Starts the release daemon (`$CA_DAEMON_BIN`) in dev mode with [`BENCH_POLICY`], in a fresh
/// data dir under `work` (or `data_dir` when given).
pub fn start_daemon(work: &Path, data_dir: Option<PathBuf>) -> Result<Daemon> {
    if std::env::var_os("CA_DAEMON_BIN").is_none() {
        return Err(BenchError::Failed(
            "CA_DAEMON_BIN is not set: run scripts/bench/run.sh (it builds the release binary and sets it)"
                .into(),
        ));
    }
    let policy = work.join("bench-policy.toml");
    std::fs::write(&policy, BENCH_POLICY).map_err(io("write bench policy"))?;
    let d = Daemon::start_with(DaemonOptions {
        data_dir,
        policy: Some(policy),
        metrics: false,
        extra_args: Vec::new(),
        ..DaemonOptions::default()
    })?;
    Ok(d)
}

/// Loads the daemon's dev PKI (issuer keys included) with its dev passphrase.
pub fn load_pki(data_dir: &Path) -> Result<LoadedPki> {
    let pass = Passphrase::from_file(&pki::dev_passphrase_path(data_dir))
        .map_err(|e| BenchError::Failed(format!("dev passphrase: {e}")))?;
    pki::load(data_dir, &pass).map_err(|e| BenchError::Failed(format!("load dev PKI: {e}")))
}

/// The dev PKI as PEM files for openssl: `issuer.pem`, `issuer.key`, `root.pem`, `chain.pem`
/// (issuer + root), `ocsp.pem`, `ocsp.key`.
#[derive(Debug, Clone)]
pub struct PemPki {
    /// Directory holding the files.
    pub dir: PathBuf,
    /// Active issuer id.
    pub issuer_id: String,
    /// Base of the URLs in certificates.
    pub url_base: String,
}

impl PemPki {
    /// A file in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Writes the PEM files of [`PemPki`] into `dir`.
pub fn export_pem(pki: &LoadedPki, dir: &Path) -> Result<PemPki> {
    std::fs::create_dir_all(dir).map_err(io("create PEM dir"))?;
    let issuer = pki
        .active_issuer()
        .ok_or_else(|| BenchError::Failed("dev PKI has no active issuer".into()))?;
    let w = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(io(format!("write {name}")))
    };
    let issuer_pem = pki::pem_encode("CERTIFICATE", &issuer.cert_der);
    let root_pem = pki::pem_encode("CERTIFICATE", &pki.root_cert_der);
    w("issuer.pem", issuer_pem.clone())?;
    w("root.pem", root_pem.clone())?;
    w("chain.pem", format!("{issuer_pem}{root_pem}"))?;
    w(
        "issuer.key",
        pki::pem_encode("PRIVATE KEY", &issuer.key_pkcs8),
    )?;
    w(
        "ocsp.pem",
        pki::pem_encode("CERTIFICATE", &issuer.responder_cert_der),
    )?;
    w(
        "ocsp.key",
        pki::pem_encode("PRIVATE KEY", &issuer.responder_key.serialize_der()),
    )?;
    Ok(PemPki {
        dir: dir.to_path_buf(),
        issuer_id: issuer.id.clone(),
        url_base: pki.url_base.clone(),
    })
}

/// A created, not yet redeemed ticket.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// Number.
    pub number: String,
    /// Password.
    pub password: String,
}

/// Creates `n` tickets for `os` (untimed), with `parallel` concurrent callers, numbering the
/// enrollees from `first`.
pub async fn create_tickets(
    d: &Daemon,
    os: v1::TargetOs,
    first: u32,
    n: usize,
    parallel: usize,
) -> Result<Vec<Ticket>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..parallel.max(1) {
        let mut client = d.enrollment("portal").await?;
        let next = next.clone();
        tasks.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, BenchError>(out);
                }
                let req = integration::sample_ticket_request(first + i as u32, os);
                let t = client
                    .create_ticket(req)
                    .await
                    .map_err(rpc("CreateTicket"))?
                    .into_inner();
                out.push(Ticket {
                    number: t.number,
                    password: t.password,
                });
            }
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        all.extend(r.map_err(|e| BenchError::Failed(format!("ticket task: {e}")))??);
    }
    Ok(all)
}

/// A redeem request for the ticket's own OS and default keystore profile.
pub fn redeem_request(t: &Ticket) -> v1::RedeemTicketRequest {
    v1::RedeemTicketRequest {
        number: t.number.clone(),
        password: t.password.clone(),
        os: v1::TargetOs::Unspecified as i32,
        keystore_profile: String::new(),
    }
}

/// Redeems `tickets` with one client (own mTLS connection) per entry of `clients`, each
/// taking the next ticket until none is left; returns the timed round.
pub async fn redeem_all(
    clients: &[EnrollmentClient<Channel>],
    tickets: Arc<Vec<Ticket>>,
) -> Result<Round> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for c in clients {
        let mut client = c.clone();
        let next = next.clone();
        let tickets = tickets.clone();
        tasks.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(t) = tickets.get(i) else {
                    return Ok::<_, BenchError>(lat);
                };
                let t0 = Instant::now();
                let r = client
                    .redeem_ticket(redeem_request(t))
                    .await
                    .map_err(rpc("RedeemTicket"))?
                    .into_inner();
                lat.push(t0.elapsed());
                if r.pkcs12.is_empty() {
                    return Err(BenchError::Failed(
                        "RedeemTicket returned no PKCS#12".into(),
                    ));
                }
            }
        });
    }
    let mut latencies = Vec::with_capacity(tickets.len());
    while let Some(r) = tasks.join_next().await {
        latencies.extend(r.map_err(|e| BenchError::Failed(format!("redeem task: {e}")))??);
    }
    Ok(Round {
        ops: latencies.len(),
        wall: start.elapsed(),
        latencies,
    })
}

/// `n` enrollment clients, each on its own mTLS connection, as `portal`.
pub async fn enrollment_clients(d: &Daemon, n: usize) -> Result<Vec<EnrollmentClient<Channel>>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(d.enrollment("portal").await?);
    }
    Ok(v)
}

/// Runs a command to completion with a time limit (killing it when over); fails on a non-zero
/// exit with its stderr.
pub fn run_tool(tool: &str, cmd: &mut Command, limit: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .map_err(io(format!("spawn {tool} (is it installed?)")))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out.map_err(io(format!("wait for {tool}")))?,
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            return Err(BenchError::Tool {
                tool: tool.into(),
                detail: format!("no result within {limit:?}; killed"),
            });
        }
    };
    if !out.status.success() {
        return Err(BenchError::Tool {
            tool: tool.into(),
            detail: format!(
                "exit {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(out)
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `addr` accepts TCP connections.
pub fn wait_port(addr: std::net::SocketAddr, limit: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(BenchError::Failed(format!(
        "{addr} did not accept connections within {limit:?}"
    )))
}

/// A loopback address with a free port.
pub fn free_addr() -> Result<std::net::SocketAddr> {
    Ok(std::net::SocketAddr::from((
        [127, 0, 0, 1],
        integration::free_port()?,
    )))
}

/// The number of online CPUs.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// A KiB field (`VmRSS:`, `VmHWM:`) of `/proc/<pid>/status` (`pid` may be `self`); 0 when it
/// cannot be read.
pub fn status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, i.e. 11 and 12 after the ')'.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks()))
}

fn clock_ticks() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The pid of the daemon serving gRPC on `grpc` (found by its command line).
pub fn daemon_pid(grpc: std::net::SocketAddr) -> Option<String> {
    let want = grpc.to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        let serve = args.contains(&b"serve".as_slice());
        let addr = args.contains(&want.as_bytes());
        (serve && addr).then_some(name)
    })
}
