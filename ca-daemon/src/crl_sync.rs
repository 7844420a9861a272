//! `ca-daemon crl sync`: keeps a CRL bundle file for file-based gateways (nginx `ssl_crl`,
//! HAProxy `crl-file`) up to date by following the daemon's all-issuers `WatchCrl` stream, and
//! runs a reload command after each write. A push, not a poll: a revocation reaches the file
//! within the daemon's batch window plus one round trip.
//!
//! - **What is written**: every live issuer's CRL (active first), then the root's CRL, PEM,
//!   the same content as `GET /crl/bundle.pem`. An issuer that leaves the live set (retired)
//!   leaves the file.
//! - **Atomic**: a temporary file in the same directory, written, fsynced, renamed over the
//!   target, then the directory fsynced; a reader sees the old or the new file, never a mix.
//! - **Never older**: a CRL is only written if its number is not below the one of the same
//!   issuer (by issuer name) already in the file in place; at start the numbers are read from
//!   the file. So a daemon restored from an old backup cannot roll the gateways back.
//! - **Complete or nothing**: the file is written only once a CRL of every live issuer is at
//!   hand (the daemon sends them all first on every stream).
//! - **Reconnects** with exponential back-off (250 ms doubling to 30 s) when the stream fails or
//!   the daemon is away; the file in place stays as it is meanwhile.
//! - **Reload command** (`--exec`): run through `sh -c` after every write; a failure is logged
//!   and the sync goes on (the file is correct, the gateway will pick it up at its next reload).

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use pki_proto::v1;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::cli::{CliError, ClientArgs};

/// Decoding limit for CRL messages (big CRLs are tens of MB).
const MAX_CRL_MESSAGE: usize = 256 << 20;
/// Reconnect back-off: first wait and cap.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Longest a reload command may run.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// `crl sync` flags.
#[derive(Debug, Args)]
pub struct CrlSyncArgs {
    #[command(flatten)]
    /// Connection (use the gateway's service certificate: `--client-cert`, `--client-key`).
    pub client: ClientArgs,
    /// The bundle file to keep up to date (PEM).
    #[arg(long)]
    pub out: PathBuf,
    /// Command run through `sh -c` after each write, e.g. 'nginx -s reload'.
    #[arg(long)]
    pub exec: Option<String>,
    /// Write the bundle once, then exit (for scripts; the default is to follow forever).
    #[arg(long)]
    pub once: bool,
    /// Name to check in the daemon's gRPC server certificate.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
}

/// Errors of one sync session (the caller retries).
#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("{0}")]
    Connect(String),
    #[error("WatchCrl: {code:?}: {message}")]
    Rpc { code: tonic::Code, message: String },
    #[error("the WatchCrl stream ended")]
    Ended,
    #[error(
        "the daemon does not send the live issuer set (all_issuers unsupported: upgrade the daemon)"
    )]
    Unsupported,
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

impl From<tonic::Status> for SyncError {
    fn from(s: tonic::Status) -> Self {
        SyncError::Rpc {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

/// What a CRL is, for the "never older" rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CrlId {
    /// The CRL's issuer name, DER.
    issuer_name: Vec<u8>,
    number: u64,
}

/// Issuer name and CRL number of a DER CRL.
fn crl_id(der: &[u8]) -> Option<CrlId> {
    let (_, crl) = x509_parser::parse_x509_crl(der).ok()?;
    let digits = crl.crl_number()?.to_u64_digits();
    let number = match digits.as_slice() {
        [] => 0,
        [n] => *n,
        _ => return None,
    };
    Some(CrlId {
        issuer_name: crl.issuer().as_raw().to_vec(),
        number,
    })
}

/// The CRLs of a PEM bundle (blocks that do not parse are ignored).
fn bundle_crls(pem: &str) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let mut out = Vec::new();
    let mut rest = pem;
    const BEGIN: &str = "-----BEGIN X509 CRL-----";
    const END: &str = "-----END X509 CRL-----";
    while let Some(b) = rest.find(BEGIN) {
        let after = &rest[b + BEGIN.len()..];
        let Some(e) = after.find(END) else { break };
        let body: String = after[..e].chars().filter(|c| !c.is_whitespace()).collect();
        if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(body) {
            out.push(der);
        }
        rest = &after[e + END.len()..];
    }
    out
}

/// The highest CRL number per issuer name in a bundle.
fn numbers_in(pem: &str) -> HashMap<Vec<u8>, u64> {
    let mut m = HashMap::new();
    for der in bundle_crls(pem) {
        if let Some(id) = crl_id(&der) {
            let n = m.entry(id.issuer_name).or_insert(id.number);
            *n = (*n).max(id.number);
        }
    }
    m
}

/// The first CRL of `new` that is older than the one of the same issuer in `in_place`.
fn older_than_in_place(new: &[Vec<u8>], in_place: &HashMap<Vec<u8>, u64>) -> Option<(u64, u64)> {
    new.iter().filter_map(|d| crl_id(d)).find_map(|id| {
        in_place
            .get(&id.issuer_name)
            .filter(|&&have| have > id.number)
            .map(|&have| (id.number, have))
    })
}

/// The bundle: live issuers in the order given, then the root CRL if there is one.
fn compose(live: &[String], crls: &BTreeMap<String, v1::Crl>) -> Option<(String, Vec<Vec<u8>>)> {
    let mut ders = Vec::new();
    for id in live {
        ders.push(crls.get(id)?.der.to_vec());
    }
    if let Some(root) = crls.get(crate::authority::ROOT_CRL_ID) {
        ders.push(root.der.to_vec());
    }
    let pem = ders
        .iter()
        .map(|d| crate::pki::pem_encode("X509 CRL", d))
        .collect();
    Some((pem, ders))
}

/// Writes `data` to `path` atomically: temp file beside it, fsync, rename, fsync the directory.
pub fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the output path names no file"))?
        .to_string_lossy()
        .to_string();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

async fn connect(args: &ClientArgs, server_name: &str) -> Result<Channel, SyncError> {
    let dev = args.data_dir.join("dev");
    let read = |p: Option<PathBuf>, default: &str| {
        let p = p.unwrap_or_else(|| dev.join(default));
        std::fs::read(&p)
            .map_err(|e| SyncError::Connect(format!("cannot read {}: {e}", p.display())))
    };
    let ca = read(args.ca_cert.clone(), "service-ca.crt")?;
    let cert = read(args.client_cert.clone(), "ops.crt")?;
    let key = zeroize::Zeroizing::new(read(args.client_key.clone(), "ops.key")?);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key.as_slice()))
        .domain_name(server_name.to_string());
    // Resolved at every (re)connect: a restarted daemon may record other ports.
    let server = crate::cli::server_endpoint(args);
    Channel::from_shared(server.clone())
        .map_err(|e| SyncError::Connect(format!("bad --server: {e}")))?
        .tls_config(tls)
        .map_err(|e| SyncError::Connect(format!("TLS setup: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        // Notices a dead daemon on an idle stream, so we reconnect.
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| SyncError::Connect(format!("cannot reach {server}: {e}")))
}

async fn run_exec(cmd: &str) {
    let c = cmd.to_string();
    // std::process on the blocking pool (tokio's process feature is not enabled here).
    let result = tokio::task::spawn_blocking(
        move || -> std::io::Result<Option<std::process::ExitStatus>> {
            let mut child = std::process::Command::new("sh")
                .arg("-c")
                .arg(&c)
                .stdin(std::process::Stdio::null())
                .spawn()?;
            let started = std::time::Instant::now();
            loop {
                if let Some(s) = child.try_wait()? {
                    return Ok(Some(s));
                }
                if started.elapsed() > EXEC_TIMEOUT {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        },
    )
    .await;
    match result {
        Ok(Ok(Some(s))) if s.success() => tracing::info!(command = cmd, "reload command done"),
        Ok(Ok(Some(s))) => tracing::error!(command = cmd, status = %s, "reload command failed"),
        Ok(Ok(None)) => tracing::error!(command = cmd, "reload command timed out; killed"),
        Ok(Err(e)) => tracing::error!(command = cmd, error = %e, "reload command did not start"),
        Err(e) => tracing::error!(command = cmd, error = %e, "reload command task failed"),
    }
}

/// The state kept across reconnects.
struct Sync {
    /// What the file in place holds (highest number per issuer name).
    in_place: HashMap<Vec<u8>, u64>,
    /// The content last written (or found in place).
    written: Option<String>,
}

/// One session: connect, follow the stream, write on every complete change. `Ok(())` only in
/// `--once` mode after the first write.
async fn session(
    args: &CrlSyncArgs,
    st: &mut Sync,
    backoff: &mut Duration,
) -> Result<(), SyncError> {
    let channel = connect(&args.client, &args.server_name).await?;
    let mut client = v1::revocation_client::RevocationClient::new(channel)
        .max_decoding_message_size(MAX_CRL_MESSAGE);
    let mut stream = client
        .watch_crl(v1::WatchCrlRequest {
            issuer_id: String::new(),
            all_issuers: true,
        })
        .await?
        .into_inner();
    let mut crls: BTreeMap<String, v1::Crl> = BTreeMap::new();
    while let Some(msg) = stream.message().await? {
        *backoff = BACKOFF_MIN;
        if msg.live_issuer_ids.is_empty() {
            return Err(SyncError::Unsupported);
        }
        let live = msg.live_issuer_ids.clone();
        let newer = crls
            .get(&msg.issuer_id)
            .is_none_or(|have| have.number < msg.number);
        if newer {
            crls.insert(msg.issuer_id.clone(), msg);
        }
        crls.retain(|id, _| id == crate::authority::ROOT_CRL_ID || live.contains(id));
        let Some((pem, ders)) = compose(&live, &crls) else {
            continue; // not every live issuer's CRL yet
        };
        if st.written.as_deref() == Some(pem.as_str()) {
            if args.once {
                return Ok(());
            }
            continue;
        }
        if let Some((number, have)) = older_than_in_place(&ders, &st.in_place) {
            tracing::error!(
                number,
                in_place = have,
                "refusing to write a CRL older than the one in place (daemon restored from an old backup?)"
            );
            continue;
        }
        write_atomically(&args.out, pem.as_bytes()).map_err(|source| SyncError::Write {
            path: args.out.display().to_string(),
            source,
        })?;
        st.in_place = numbers_in(&pem);
        st.written = Some(pem);
        let summary: Vec<String> = crls
            .iter()
            .map(|(id, c)| format!("{id}#{}", c.number))
            .collect();
        tracing::info!(out = %args.out.display(), crls = ?summary, "CRL bundle written");
        if let Some(cmd) = &args.exec {
            run_exec(cmd).await;
        }
        if args.once {
            return Ok(());
        }
    }
    Err(SyncError::Ended)
}

/// Runs `crl sync` until stopped (or, with `--once`, until the first write).
pub async fn run(args: CrlSyncArgs) -> Result<(), CliError> {
    crate::logging::init(crate::config::LogFormat::Text);
    let existing = std::fs::read_to_string(&args.out).ok();
    let mut st = Sync {
        in_place: existing.as_deref().map(numbers_in).unwrap_or_default(),
        written: existing,
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        match session(&args, &mut st, &mut backoff).await {
            Ok(()) => return Ok(()),
            Err(e @ SyncError::Write { .. }) => {
                tracing::error!(error = %e, "CRL bundle not written");
            }
            Err(e) => tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                "CRL sync interrupted; reconnecting"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crl_der(number: u64) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "sync test CA");
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = p.self_signed(&key).expect("cert");
        let issuer = rcgen::Issuer::from_ca_cert_der(cert.der(), &key).expect("issuer");
        let now = time::OffsetDateTime::now_utc();
        rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(1),
            crl_number: rcgen::SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .expect("crl")
        .der()
        .to_vec()
    }

    #[test]
    fn a_crl_older_than_the_one_in_place_is_refused() {
        let (old, new) = (crl_der(5), crl_der(9));
        let in_place = numbers_in(&crate::pki::pem_encode("X509 CRL", &new));
        assert_eq!(in_place.values().copied().collect::<Vec<_>>(), vec![9]);
        assert_eq!(older_than_in_place(&[old], &in_place), Some((5, 9)));
        assert_eq!(
            older_than_in_place(std::slice::from_ref(&new), &in_place),
            None
        );
        assert_eq!(older_than_in_place(&[crl_der(10)], &in_place), None);
    }

    #[test]
    fn the_bundle_waits_for_every_live_issuer_and_puts_the_root_last() {
        let msg = |id: &str, n: u64| v1::Crl {
            issuer_id: id.into(),
            der: vec![n as u8].into(),
            number: n,
            ..Default::default()
        };
        let mut crls = BTreeMap::new();
        crls.insert("root".to_string(), msg("root", 1));
        crls.insert("iss-b".to_string(), msg("iss-b", 2));
        let live = vec!["iss-b".to_string(), "iss-a".to_string()];
        assert!(compose(&live, &crls).is_none());
        crls.insert("iss-a".to_string(), msg("iss-a", 3));
        let (_, ders) = compose(&live, &crls).expect("complete");
        assert_eq!(ders, vec![vec![2], vec![3], vec![1]]);
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("crl.pem");
        write_atomically(&p, b"one").expect("write");
        write_atomically(&p, b"two").expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let leftovers = std::fs::read_dir(dir.path()).expect("ls").count();
        assert_eq!(leftovers, 1, "no temp file left behind");
    }
}
