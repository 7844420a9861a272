//! The command line: `serve`, `init`, and the operator commands, which talk to the running
//! daemon over gRPC with the ops client certificate (sled allows one process per store, so
//! operators never open the store behind a running daemon's back).
//!
//! Output is for people by default and JSON with `--json`.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use pki_proto::v1;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::config::{FileConfig, LogFormat};

/// Hardened internal PKI daemon of the care network.
#[derive(Debug, Parser)]
#[command(name = "ca-daemon", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (gRPC over mTLS, HTTP for CRL/OCSP).
    #[command(
        after_help = "Example:\n  ca-daemon serve --dev\n  ca-daemon serve --config /etc/ca-daemon/ca-daemon.toml"
    )]
    Serve(Box<ServeArgs>),
    /// Create a new PKI (root, first issuer, OCSP responder, service CA, server and client certificates, pepper).
    #[command(
        after_help = "Example:\n  ca-daemon init --data-dir /var/lib/ca-daemon --passphrase-file /etc/ca-daemon/passphrase --url-base http://pki.internal\n  ca-daemon init --dev --data-dir ./var"
    )]
    Init(InitArgs),
    /// Enrollment tickets (operators and demos).
    #[command(
        subcommand,
        after_help = "Example:\n  ca-daemon ticket get --number 12345678\n  ca-daemon ticket create --help"
    )]
    Ticket(TicketCommand),
    /// Revoke a certificate, a device, a person or a whole facility.
    #[command(
        after_help = "Example:\n  ca-daemon revoke --serial 3fa4... --reason key_compromise\n  ca-daemon revoke --facility F001 --reason cessation_of_operation"
    )]
    Revoke(RevokeArgs),
    /// CRL operations.
    #[command(subcommand, after_help = "Example:\n  ca-daemon crl publish")]
    Crl(CrlCommand),
    /// Issuing CA operations.
    #[command(subcommand, after_help = "Example:\n  ca-daemon issuer list")]
    Issuer(IssuerCommand),
    /// Audit log operations.
    #[command(subcommand, after_help = "Example:\n  ca-daemon audit verify --json")]
    Audit(AuditCommand),
    /// Service client certificates: issue, revoke (the service CA's CRL).
    #[command(
        subcommand,
        after_help = "Example:\n  ca-daemon service issue --role portal --name portal-2 --out ./portal-2\n  ca-daemon service revoke --cert ./portal-1.crt"
    )]
    Service(crate::service_ca::cli::ServiceCommand),
    /// Authentication record of pki.toml, service-ca.crt and server.crt: seal, verify.
    #[command(
        subcommand,
        after_help = "Example:\n  ca-daemon integrity verify --data-dir /var/lib/ca-daemon --passphrase-file /etc/ca-daemon/passphrase"
    )]
    Integrity(crate::integrity::cli::IntegrityCommand),
    /// Issuers, certificate counts, CRL numbers and ages, tickets by state.
    #[command(after_help = "Example:\n  ca-daemon status --json")]
    Status(ClientArgs),
    /// Write a consistent snapshot of the running daemon's store to a file.
    #[command(after_help = "Example:\n  ca-daemon backup --out /backup/ca-$(date +%F).snapshot")]
    Backup(BackupArgs),
    /// Restore a snapshot into a new data directory's store (the daemon must not be running on it).
    #[command(
        after_help = "Example:\n  ca-daemon restore --from /backup/ca-2026-11-24.snapshot --data-dir /var/lib/ca-daemon"
    )]
    Restore(RestoreArgs),
    /// Store maintenance on a stopped daemon: create an empty store, reconcile a restored one.
    #[command(
        subcommand,
        after_help = "Example:\n  ca-daemon store reconcile --data-dir /var/lib/ca-daemon --passphrase-file /etc/ca-daemon/passphrase"
    )]
    Store(StoreCommand),
}

/// `store` subcommands (offline: the daemon must not be running on the data directory).
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Create an empty store where none exists (after a total loss with no backup; follow it
    /// with `store reconcile`). The daemon never creates one silently.
    #[command(after_help = "Example:\n  ca-daemon store create --data-dir /var/lib/ca-daemon")]
    Create(StoreCreateArgs),
    /// Re-apply the revocations the CA has published (its last CRLs, kept in
    /// DATA_DIR/checkpoint/crls, plus any --crl given) that the store lacks, audit it, report
    /// serials unknown to the store, and sign a new checkpoint so the daemon starts again.
    #[command(
        after_help = "Example:\n  ca-daemon store reconcile --data-dir /var/lib/ca-daemon --passphrase-file /etc/ca-daemon/passphrase\n  ca-daemon store reconcile --data-dir ./var --crl iss-0a1b2c3d4e5f6a7b=gateway-copy.crl"
    )]
    Reconcile(StoreReconcileArgs),
    /// Copy DATA_DIR's sled store (the daemon stopped) into an EMPTY PostgreSQL schema, with
    /// the audit chain intact (same sequence numbers and hashes), then verify the chain there.
    /// Refuses a target with any row in any table. Also restores a PostgreSQL store from a
    /// `ca-daemon backup` archive (unpacked into a data dir's store/).
    #[command(
        after_help = "Example:\n  ca-daemon store copy --from /var/lib/ca-daemon --to postgresql://ca@db.internal:5432/ca --store-password-file /etc/ca-daemon/store-password"
    )]
    Copy(StoreCopyArgs),
}

/// `store copy`.
#[derive(Debug, Args)]
pub struct StoreCopyArgs {
    /// Data directory whose store/ is copied (no daemon may be running on it).
    #[arg(long)]
    pub from: PathBuf,
    /// Target database: postgresql://user@host:port/database (no password in it).
    #[arg(long)]
    pub to: String,
    /// File with the database password (its first line).
    #[arg(long)]
    pub store_password_file: Option<PathBuf>,
    /// Print a progress line every this many rows.
    #[arg(long, default_value_t = 10_000)]
    pub progress_every: u64,
}

/// `store create`.
#[derive(Debug, Args)]
pub struct StoreCreateArgs {
    /// Data directory (its keys/ must exist).
    #[arg(long, default_value = "./var")]
    pub data_dir: PathBuf,
}

/// `store reconcile`.
#[derive(Debug, Args)]
pub struct StoreReconcileArgs {
    /// Data directory.
    #[arg(long, default_value = "./var")]
    pub data_dir: PathBuf,
    /// File with the keys' passphrase [default: $CREDENTIALS_DIRECTORY/passphrase, else DATA_DIR/dev/passphrase].
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// A published CRL to re-apply as well, as ISSUER_ID=FILE (DER or PEM), e.g. a copy from a
    /// gateway or web cache when DATA_DIR/checkpoint was lost with the disk; repeatable.
    /// Its signature is checked against the issuer certificate.
    #[arg(long = "crl")]
    pub crls: Vec<String>,
    /// The PostgreSQL store to reconcile (`postgresql://user@host:port/db`, or
    /// `CA_DAEMON_STORE`) [default: sled in DATA_DIR/store].
    #[arg(long, env = "CA_DAEMON_STORE")]
    pub store: Option<String>,
    /// File with the PostgreSQL password.
    #[arg(long)]
    pub store_password_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `audit checkpoint`.
#[derive(Debug, Args)]
pub struct AuditCheckpointArgs {
    /// Data directory whose checkpoint/latest.json to export.
    #[arg(long, default_value = "./var")]
    pub data_dir: PathBuf,
    /// Write it to this file instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `audit verify`.
#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    #[command(flatten)]
    /// Connection.
    pub client: ClientArgs,
    /// Also check that the log still holds what this checkpoint (from `audit checkpoint`)
    /// records: reports a log truncated or rewritten since then.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
}

/// `serve` flags (each overrides the config file).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Config file (TOML); see keys.example/ca-daemon.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./var].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long)]
    pub grpc_listen: Option<std::net::SocketAddr>,
    /// HTTP listen address [default: 127.0.0.1:8080].
    #[arg(long)]
    pub http_listen: Option<std::net::SocketAddr>,
    /// Prometheus metrics listen address [default: off].
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Policy file [default: built-in policy].
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// File with the keys' passphrase.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// Create a throw-away dev PKI on first run, reuse it afterwards.
    #[arg(long)]
    pub dev: bool,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Name (DNS or IP) the gRPC server certificate must carry; repeat for several (the
    /// certificate is re-issued at start when one is missing) [default: the config's
    /// server_names].
    #[arg(long = "server-name")]
    pub server_names: Vec<String>,
    /// sled page cache of the store, in MiB [default: the config's store_cache_mib, else 128].
    #[arg(long)]
    pub store_cache_mib: Option<u64>,
    /// Store: `postgresql://user@host:port/db` for several daemons on one PostgreSQL
    /// (docs/cluster.md; TLS: `?sslmode=verify-full&sslrootcert=CA.pem`)
    /// [default: the config's `store`, else sled in DATA_DIR/store].
    #[arg(long, env = "CA_DAEMON_STORE")]
    pub store: Option<String>,
    /// File with the PostgreSQL password [default: the config's store_password_file, else
    /// $CREDENTIALS_DIRECTORY/store-password if present].
    #[arg(long)]
    pub store_password_file: Option<PathBuf>,
}

/// `init` flags.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Data directory to create the PKI in.
    #[arg(long, default_value = "./var")]
    pub data_dir: PathBuf,
    /// File with the passphrase that seals the keys (required unless --dev).
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// Separate passphrase for the root key [default: the same].
    #[arg(long)]
    pub root_passphrase_file: Option<PathBuf>,
    /// Dev PKI: generated passphrase inside DATA_DIR, plaintext client keys in DATA_DIR/dev.
    #[arg(long)]
    pub dev: bool,
    /// Public base URL for CRL and OCSP in certificates.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url_base: String,
    /// Policy file (validity periods) [default: built-in policy].
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Name (DNS or IP) of the gRPC server certificate; repeat for several
    /// [default: localhost, 127.0.0.1, ::1].
    #[arg(long = "server-name")]
    pub server_names: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// How a client command reaches the daemon.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// gRPC endpoint [default: the address the daemon running on DATA_DIR recorded in
    /// DATA_DIR/run/daemon.json, else https://127.0.0.1:50051].
    #[arg(long, env = "CA_DAEMON_SERVER")]
    pub server: Option<String>,
    /// Data directory whose dev/ holds the certificates (used for defaults below).
    #[arg(long, default_value = "./var")]
    pub data_dir: PathBuf,
    /// Trust anchor of the server certificate [default: DATA_DIR/dev/service-ca.crt].
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) [default: DATA_DIR/dev/ops.crt].
    #[arg(long)]
    pub client_cert: Option<PathBuf>,
    /// Client key (PEM PKCS#8) [default: DATA_DIR/dev/ops.key].
    #[arg(long)]
    pub client_key: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Ticket subcommands.
#[derive(Debug, Subcommand)]
pub enum TicketCommand {
    /// Create a ticket; prints the number and the password (shown once).
    #[command(
        after_help = "Example:\n  ca-daemon ticket create --facility-id F001 --facility-name 'みよし訪問看護ステーション' \\\n    --person-id P001 --family-name 山田 --given-name 花子 --job 看護師 --email hanako@example.jp \\\n    --device-id D001 --os ios"
    )]
    Create(Box<TicketCreateArgs>),
    /// Redeem a ticket and write the bundle files.
    #[command(
        after_help = "Example:\n  ca-daemon ticket redeem --number 12345678 --password-file pw.txt --os ios --out ./bundle"
    )]
    Redeem(TicketRedeemArgs),
    /// Show a ticket (never its password).
    #[command(after_help = "Example:\n  ca-daemon ticket get --number 12345678 --json")]
    Get(TicketNumberArgs),
    /// Cancel an active ticket.
    #[command(after_help = "Example:\n  ca-daemon ticket cancel --number 12345678")]
    Cancel(TicketNumberArgs),
}

/// `ticket create`.
#[derive(Debug, Args)]
pub struct TicketCreateArgs {
    #[command(flatten)]
    /// Connection.
    pub client: ClientArgs,
    /// Facility id.
    #[arg(long)]
    pub facility_id: String,
    /// Facility name (Japanese allowed).
    #[arg(long)]
    pub facility_name: String,
    /// Prefecture.
    #[arg(long, default_value = "愛知県")]
    pub prefecture: String,
    /// City.
    #[arg(long, default_value = "豊田市")]
    pub city: String,
    /// Facility kind.
    #[arg(long, default_value = "clinic")]
    pub facility_kind: String,
    /// Person id.
    #[arg(long)]
    pub person_id: String,
    /// Family name (kanji).
    #[arg(long)]
    pub family_name: String,
    /// Given name (kanji).
    #[arg(long, default_value = "")]
    pub given_name: String,
    /// Family name (kana).
    #[arg(long, default_value = "")]
    pub family_name_kana: String,
    /// Given name (kana).
    #[arg(long, default_value = "")]
    pub given_name_kana: String,
    /// Job (becomes OU).
    #[arg(long, default_value = "")]
    pub job: String,
    /// E-mail the ticket goes to.
    #[arg(long)]
    pub email: String,
    /// Device id.
    #[arg(long)]
    pub device_id: String,
    /// Device OS: windows, macos, android, ios.
    #[arg(long)]
    pub os: String,
    /// Certificate profile [default: policy default].
    #[arg(long, default_value = "")]
    pub profile: String,
    /// Who approved the registration.
    #[arg(long, default_value = "ops-cli")]
    pub approved_by: String,
    /// Renewal: serial of the certificate this ticket renews (same facility, person, device;
    /// no new approval needed).
    #[arg(long, default_value = "")]
    pub renews_serial: String,
}

/// `ticket redeem`.
#[derive(Debug, Args)]
pub struct TicketRedeemArgs {
    #[command(flatten)]
    /// Connection.
    pub client: ClientArgs,
    /// Ticket number (8 digits).
    #[arg(long)]
    pub number: String,
    /// File holding the ticket password (never on the command line).
    #[arg(long)]
    pub password_file: PathBuf,
    /// Target OS: windows, macos, android, ios [default: the ticket's device OS].
    #[arg(long)]
    pub os: Option<String>,
    /// Keystore profile, e.g. windows-legacy [default: the OS default].
    #[arg(long, default_value = "")]
    pub keystore_profile: String,
    /// Output directory for the bundle files.
    #[arg(long)]
    pub out: PathBuf,
}

/// A ticket number.
#[derive(Debug, Args)]
pub struct TicketNumberArgs {
    #[command(flatten)]
    /// Connection.
    pub client: ClientArgs,
    /// Ticket number.
    #[arg(long)]
    pub number: String,
}

/// `revoke`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["serial", "device", "person", "facility"])))]
pub struct RevokeArgs {
    #[command(flatten)]
    /// Connection.
    pub client: ClientArgs,
    /// Serial (lowercase hex).
    #[arg(long)]
    pub serial: Option<String>,
    /// Device id.
    #[arg(long)]
    pub device: Option<String>,
    /// Person id.
    #[arg(long)]
    pub person: Option<String>,
    /// Facility id (usage termination).
    #[arg(long)]
    pub facility: Option<String>,
    /// Reason: unspecified, key_compromise, affiliation_changed, superseded, cessation_of_operation, certificate_hold, privilege_withdrawn.
    #[arg(long, default_value = "unspecified")]
    pub reason: String,
}

/// CRL subcommands.
#[derive(Debug, Subcommand)]
pub enum CrlCommand {
    /// Re-sign the root's CRL over its issuers (needs the root key; do it before its nextUpdate,
    /// one year after the last signing). Run on the CA host; the daemon serves the new file at once.
    #[command(
        after_help = "Example:\n  ca-daemon crl root --data-dir /var/lib/ca-daemon --root-passphrase-file /root/root-pass"
    )]
    Root(CrlRootArgs),
    /// Publish a new CRL now.
    #[command(
        after_help = "Example:\n  ca-daemon crl publish\n  ca-daemon crl publish --issuer iss-0a1b2c3d4e5f6a7b"
    )]
    Publish(CrlPublishArgs),
    /// Keep a CRL bundle file (every live issuer's CRL and the root's, PEM) up to date for
    /// nginx / HAProxy: follows the daemon's CRL stream, writes atomically, runs a reload command.
    #[command(
        after_help = "Example:\n  ca-daemon crl sync --out /etc/nginx/care-crl.pem --exec 'nginx -s reload' \\\n    --client-cert /etc/ca-daemon/gateway.crt --client-key /etc/ca-daemon/gateway.key --ca-cert /etc/ca-daemon/service-ca.crt"
    )]
    Sync(crate::crl_sync::CrlSyncArgs),
}

/// `crl root`.
#[derive(Debug, Args)]
pub struct CrlRootArgs {
    /// Data directory.
    #[arg(long, default_value = "./var")]
    pub data_dir: PathBuf,
    /// File with the root key's passphrase [default: DATA_DIR/dev/passphrase].
    #[arg(long)]
    pub root_passphrase_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `crl publish`.
#[derive(Debug, Args)]
pub struct CrlPublishArgs {
    #[command(flatten)]
    /// Connection.
    pub client: ClientArgs,
    /// Issuer id [default: all issuers].
    #[arg(long, default_value = "")]
    pub issuer: String,
}

/// Issuer subcommands.
#[derive(Debug, Subcommand)]
pub enum IssuerCommand {
    /// List issuers: id, state, validity, certificate count, CRL number.
    #[command(after_help = "Example:\n  ca-daemon issuer list --json")]
    List(ClientArgs),
    /// Create a new issuing CA signed by the root and switch the running daemon to it.
    #[command(
        after_help = "Example:\n  ca-daemon issuer rotate --data-dir /var/lib/ca-daemon --root-passphrase-file /root/root-pass --passphrase-file /etc/ca-daemon/passphrase"
    )]
    Rotate(RotateArgs),
}

/// `issuer rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    #[command(flatten)]
    /// Connection (to tell the running daemon).
    pub client: ClientArgs,
    /// File with the root key's passphrase.
    #[arg(long)]
    pub root_passphrase_file: Option<PathBuf>,
    /// File with the keys' passphrase [default: DATA_DIR/dev/passphrase].
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// Policy file (validity periods) [default: built-in].
    #[arg(long)]
    pub policy: Option<PathBuf>,
}

/// Audit subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain; exits non-zero and names the first bad entry on a broken chain.
    #[command(
        after_help = "Example:\n  ca-daemon audit verify\n  ca-daemon audit verify --checkpoint /backup/checkpoint-2026-11-24.json"
    )]
    Verify(AuditVerifyArgs),
    /// Export the latest signed checkpoint of the audit log (sequence number, head hash, last
    /// CRL numbers), after checking its signature; keep copies off-host.
    #[command(
        after_help = "Example:\n  ca-daemon audit checkpoint --data-dir /var/lib/ca-daemon --out /backup/checkpoint-$(date +%F).json"
    )]
    Checkpoint(AuditCheckpointArgs),
}

/// `backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    /// Connection.
    pub client: ClientArgs,
    /// Output file.
    #[arg(long)]
    pub out: PathBuf,
}

/// `restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot written by `backup`.
    #[arg(long)]
    pub from: PathBuf,
    /// Data directory (its keys/ must already be in place; store/ must not exist).
    #[arg(long)]
    pub data_dir: PathBuf,
}

/// A failed command: message for the operator, exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// What went wrong.
    pub message: String,
    /// Process exit code.
    pub code: i32,
}

impl CliError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError::new(format!("{:?}: {}", s.code(), s.message()))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::new(format!("cannot read {}: {e}", path.display())))
}

/// The endpoint to call: `--server`, else what the daemon on `--data-dir` recorded, else the
/// default port on loopback.
pub fn server_endpoint(args: &ClientArgs) -> String {
    if let Some(s) = &args.server {
        return s.clone();
    }
    crate::discovery::read(&args.data_dir).map_or_else(
        || "https://127.0.0.1:50051".to_owned(),
        |a| crate::discovery::grpc_endpoint(a.grpc),
    )
}

/// Connects to the daemon with the client certificate (each call limited to 120 s).
pub async fn connect(args: &ClientArgs) -> Result<Channel, CliError> {
    connect_with(args, Some(std::time::Duration::from_secs(120))).await
}

/// [`connect`] with a per-call time limit of `timeout` (None = none: a backup of a large store
/// streams for minutes).
pub async fn connect_with(
    args: &ClientArgs,
    timeout: Option<std::time::Duration>,
) -> Result<Channel, CliError> {
    let server = server_endpoint(args);
    let dev = args.data_dir.join("dev");
    let ca = read(
        &args
            .ca_cert
            .clone()
            .unwrap_or_else(|| dev.join("service-ca.crt")),
    )?;
    let cert = read(
        &args
            .client_cert
            .clone()
            .unwrap_or_else(|| dev.join("ops.crt")),
    )?;
    let key = read(
        &args
            .client_key
            .clone()
            .unwrap_or_else(|| dev.join("ops.key")),
    )?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name("localhost");
    let mut endpoint = Channel::from_shared(server.clone())
        .map_err(|e| CliError::new(format!("bad --server: {e}")))?
        .tls_config(tls)
        .map_err(|e| CliError::new(format!("TLS setup: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(5));
    if let Some(t) = timeout {
        endpoint = endpoint.timeout(t);
    }
    endpoint
        .connect()
        .await
        .map_err(|e| CliError::new(format!("cannot reach {server}: {e}")))
}

fn target_os(s: &str) -> Result<v1::TargetOs, CliError> {
    pki_policy::domain::TargetOs::parse(s)
        .map(v1::TargetOs::from)
        .ok_or_else(|| {
            CliError::new(format!(
                "unknown OS '{s}': use windows, macos, android or ios"
            ))
        })
}

fn fmt_ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| pki_proto::convert::time_from_timestamp("t", t).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
}

fn print_json(v: serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

fn write_file(dir: &Path, name: &str, data: &[u8], private: bool) -> Result<PathBuf, CliError> {
    use std::io::Write as _;
    let path = dir.join(name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&path)
        .map_err(|e| CliError::new(format!("cannot write {}: {e}", path.display())))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| CliError::new(format!("cannot write {}: {e}", path.display())))?;
    Ok(path)
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(a) => serve(*a).await,
        Command::Init(a) => init(a).await,
        Command::Ticket(t) => ticket(t).await,
        Command::Revoke(a) => revoke(a).await,
        Command::Service(c) => tokio::task::spawn_blocking(move || crate::service_ca::cli::run(c))
            .await
            .map_err(|e| CliError::new(e.to_string()))?
            .map_err(CliError::new),
        Command::Integrity(c) => tokio::task::spawn_blocking(move || crate::integrity::cli::run(c))
            .await
            .map_err(|e| CliError::new(e.to_string()))?
            .map_err(CliError::new),
        Command::Crl(CrlCommand::Root(a)) => {
            let pf = a
                .root_passphrase_file
                .clone()
                .unwrap_or_else(|| crate::pki::dev_passphrase_path(&a.data_dir));
            let dir = a.data_dir.clone();
            let number = tokio::task::spawn_blocking(move || -> Result<u64, CliError> {
                let pass = crate::keys::Passphrase::from_file(&pf)
                    .map_err(|e| CliError::new(e.to_string()))?;
                crate::pki::refresh_root_crl(&dir, &pass)
                    .map_err(|e| CliError::new(format!("root CRL: {e}")))
            })
            .await
            .map_err(|e| CliError::new(e.to_string()))??;
            if a.json {
                print_json(serde_json::json!({"root_crl_number": number}));
            } else {
                println!(
                    "root CRL #{number} signed into {}",
                    crate::pki::Layout::new(&a.data_dir).root_crl().display()
                );
            }
            Ok(())
        }
        Command::Crl(CrlCommand::Sync(a)) => crate::crl_sync::run(a).await,
        Command::Crl(CrlCommand::Publish(a)) => {
            let mut c = v1::admin_client::AdminClient::new(connect(&a.client).await?);
            let crl = c
                .publish_crl(v1::PublishCrlRequest {
                    issuer_id: a.issuer.clone(),
                })
                .await?
                .into_inner();
            if a.client.json {
                print_json(
                    serde_json::json!({"issuer_id": crl.issuer_id, "number": crl.number,
                    "this_update": fmt_ts(&crl.this_update), "next_update": fmt_ts(&crl.next_update)}),
                );
            } else {
                println!(
                    "published CRL #{} for {} (next update {})",
                    crl.number,
                    crl.issuer_id,
                    fmt_ts(&crl.next_update)
                );
            }
            Ok(())
        }
        Command::Issuer(IssuerCommand::List(a)) => {
            let mut c = v1::admin_client::AdminClient::new(connect(&a).await?);
            let list = c
                .list_issuers(v1::ListIssuersRequest {})
                .await?
                .into_inner();
            print_issuers(&list.issuers, a.json);
            Ok(())
        }
        Command::Issuer(IssuerCommand::Rotate(a)) => rotate(a).await,
        Command::Audit(AuditCommand::Checkpoint(a)) => audit_checkpoint(&a),
        Command::Store(StoreCommand::Create(a)) => {
            let layout = crate::pki::Layout::new(&a.data_dir);
            if !layout.is_initialized() {
                return Err(CliError::new(format!(
                    "no PKI in {} (run `ca-daemon init` first)",
                    a.data_dir.display()
                )));
            }
            crate::promises::create_empty_store(&layout.store_dir())
                .map_err(|e| CliError::new(e.to_string()))?;
            println!(
                "created an empty store in {}; run `ca-daemon store reconcile --data-dir {}` before starting the daemon",
                layout.store_dir().display(),
                a.data_dir.display()
            );
            Ok(())
        }
        Command::Store(StoreCommand::Copy(a)) => {
            tokio::task::spawn_blocking(move || store_copy(&a))
                .await
                .map_err(|e| CliError::new(e.to_string()))?
        }
        Command::Store(StoreCommand::Reconcile(a)) => {
            tokio::task::spawn_blocking(move || store_reconcile(&a))
                .await
                .map_err(|e| CliError::new(e.to_string()))?
        }
        Command::Audit(AuditCommand::Verify(args)) => {
            let a = &args.client;
            let checkpoint = match &args.checkpoint {
                Some(p) => read(p)?,
                None => Vec::new(),
            };
            let mut c = v1::admin_client::AdminClient::new(connect(a).await?);
            let v = c
                .verify_audit(v1::VerifyAuditRequest { checkpoint })
                .await?
                .into_inner();
            if a.json {
                print_json(serde_json::json!({"ok": v.ok, "entries": v.entries,
                    "first_bad_entry": if v.ok { None } else { Some(v.first_bad_entry) }, "problem": v.problem}));
            } else if v.ok {
                println!("audit log OK: {} entries, hash chain intact", v.entries);
            } else {
                println!(
                    "audit log BROKEN at entry {}: {} ({} entries checked)",
                    v.first_bad_entry, v.problem, v.entries
                );
            }
            if v.ok {
                Ok(())
            } else {
                Err(CliError {
                    message: format!("audit chain broken at entry {}", v.first_bad_entry),
                    code: 2,
                })
            }
        }
        Command::Status(a) => status(a).await,
        Command::Backup(a) => {
            let mut c = v1::admin_client::AdminClient::new(connect_with(&a.client, None).await?);
            let mut stream = c.backup(v1::BackupRequest {}).await?.into_inner();
            let mut data = Vec::new();
            while let Some(chunk) = stream.message().await? {
                data.extend_from_slice(&chunk.data);
            }
            let dir = a
                .out
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            let name = a
                .out
                .file_name()
                .ok_or_else(|| CliError::new("--out must name a file"))?
                .to_string_lossy()
                .to_string();
            write_file(&dir, &name, &data, true)?;
            if a.client.json {
                print_json(serde_json::json!({"out": a.out, "bytes": data.len()}));
            } else {
                println!(
                    "backup written to {} ({} bytes)",
                    a.out.display(),
                    data.len()
                );
            }
            Ok(())
        }
        Command::Restore(a) => {
            let store_dir = crate::pki::Layout::new(&a.data_dir).store_dir();
            restore(&a.from, &a.data_dir, &store_dir)?;
            println!("restored {} into {}", a.from.display(), store_dir.display());
            if crate::promises::PromiseLayout::new(&a.data_dir).exists() {
                println!(
                    "this data directory has published since: run `ca-daemon store reconcile --data-dir {}` before starting the daemon",
                    a.data_dir.display()
                );
            }
            Ok(())
        }
    }
}

/// `audit checkpoint`: prints (or writes) the latest checkpoint after checking its signature
/// against the pinned public key in DATA_DIR/checkpoint/checkpoint.pub.
fn audit_checkpoint(a: &AuditCheckpointArgs) -> Result<(), CliError> {
    let layout = crate::promises::PromiseLayout::new(&a.data_dir);
    let cp = layout
        .read_checkpoint()
        .map_err(|e| CliError::new(e.to_string()))?
        .ok_or_else(|| {
            CliError::new(format!(
                "no checkpoint in {} (the daemon writes one on every CRL publication, every 30 s and at shutdown)",
                layout.dir().display()
            ))
        })?;
    let pk = std::fs::read_to_string(layout.public_key()).map_err(|e| {
        CliError::new(format!(
            "cannot read {}: {e}",
            layout.public_key().display()
        ))
    })?;
    cp.verify(pk.trim())
        .map_err(|p| CliError::new(format!("{}: {p}", layout.checkpoint().display())))?;
    match &a.out {
        Some(out) => {
            let dir = out
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            let name = out
                .file_name()
                .ok_or_else(|| CliError::new("--out must name a file"))?
                .to_string_lossy()
                .to_string();
            write_file(&dir, &name, cp.to_json().as_bytes(), false)?;
            eprintln!(
                "checkpoint of {} (entry {}) written to {}",
                cp.time,
                cp.seq,
                out.display()
            );
        }
        None => print!("{}", cp.to_json()),
    }
    Ok(())
}

/// `store reconcile`, offline.
fn store_reconcile(a: &StoreReconcileArgs) -> Result<(), CliError> {
    let layout = crate::pki::Layout::new(&a.data_dir);
    let store_dir = layout.store_dir();
    let location =
        crate::server::StoreLocation::resolve(a.store.as_deref(), a.store_password_file.clone())
            .map_err(|e| CliError::new(e.to_string()))?;
    if !location.is_shared() && !crate::promises::store_present(&store_dir) {
        return Err(CliError::new(format!(
            "no store in {}: restore a backup (`ca-daemon restore`) or create an empty one (`ca-daemon store create`) first",
            store_dir.display()
        )));
    }
    let pass = crate::server::resolve_passphrase(&a.data_dir, a.passphrase_file.as_deref(), true)
        .map_err(|e| CliError::new(e.to_string()))?;
    let pki = crate::pki::load(&a.data_dir, &pass).map_err(|e| CliError::new(e.to_string()))?;
    let key = crate::promises::CheckpointKey::from_pepper(&pki.pepper)
        .map_err(|e| CliError::new(e.to_string()))?;
    let issuers = pki
        .issuers
        .iter()
        .map(|i| (i.id.clone(), (i.cert_der.clone(), i.not_after)))
        .collect();
    let mut extra = Vec::new();
    for spec in &a.crls {
        let (id, file) = spec
            .split_once('=')
            .ok_or_else(|| CliError::new(format!("--crl {spec}: expected ISSUER_ID=FILE")))?;
        let bytes = read(Path::new(file))?;
        let der = match x509_parser::pem::parse_x509_pem(&bytes) {
            Ok((_, pem)) if pem.label == "X509 CRL" => pem.contents,
            _ => bytes,
        };
        extra.push((id.to_owned(), der));
    }
    let store: Box<dyn crate::store::Store> = match &location {
        crate::server::StoreLocation::Sled => {
            Box::new(crate::store::SledStore::open(&store_dir).map_err(|e| {
                CliError::new(format!(
                    "cannot open {} (is the daemon still running on it?): {e}",
                    store_dir.display()
                ))
            })?)
        }
        crate::server::StoreLocation::Postgres { url, password_file } => {
            let store = crate::cluster::connect_store_blocking(url, password_file.as_deref())
                .map_err(|e| CliError::new(e.to_string()))?;
            Box::new(store)
        }
    };
    let actor = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "operator".into())
    );
    let report =
        crate::promises::reconcile(&a.data_dir, store.as_ref(), &key, &issuers, &extra, &actor)
            .map_err(|e| CliError::new(format!("reconcile failed: {e}")))?;
    let unknown = report.unknown_serials();
    let applied: Vec<serde_json::Value> = report
        .reinstated
        .iter()
        .flat_map(|(issuer, r)| {
            r.iter().map(move |x| {
                let (what, serial) = match x {
                    crate::store::Reinstated::Revoked(s) => ("revoked", s),
                    crate::store::Reinstated::Indexed(s) => ("index_restored", s),
                    crate::store::Reinstated::Unknown(s) => ("unknown_to_store", s),
                    crate::store::Reinstated::Present(s) => ("present", s),
                };
                serde_json::json!({"issuer_id": issuer, "serial": serial, "action": what})
            })
        })
        .collect();
    let lost_entries = match (&report.before.checkpoint, report.before.head) {
        (Some(cp), Some(h)) if cp.seq > h.seq => cp.seq - h.seq,
        _ => 0,
    };
    if a.json {
        print_json(serde_json::json!({
            "was_behind": !report.before.is_ok(),
            "problem": report.before.describe(),
            "lost_audit_entries": lost_entries,
            "reinstated": applied,
            "unknown_serials": unknown.iter().map(|(i, s)| serde_json::json!({"issuer_id": i, "serial": s})).collect::<Vec<_>>(),
            "checkpoint": report.checkpoint.as_ref().map(|c| serde_json::json!({"seq": c.seq, "head_hash": c.head_hash})),
        }));
    } else {
        if report.before.is_ok() {
            println!("the store already held every published revocation");
        } else {
            println!("the store was behind: {}", report.before.describe());
        }
        println!("re-applied {} revocation(s):", applied.len());
        for v in &applied {
            println!(
                "  {} {} ({})",
                v["issuer_id"].as_str().unwrap_or(""),
                v["serial"].as_str().unwrap_or(""),
                v["action"].as_str().unwrap_or("")
            );
        }
        if !unknown.is_empty() {
            println!(
                "{} revoked serial(s) are unknown to the store (issued after the backup); they stay on the CRL:",
                unknown.len()
            );
            for (i, s) in &unknown {
                println!("  {i} {s}");
            }
        }
        if lost_entries > 0 {
            println!(
                "{lost_entries} audit entries recorded after the backup are lost: certificates issued then and never revoked are unknown to the store; find them in the audit lines your log shipper kept (target audit, action certificate.issued) and revoke or re-enroll those devices"
            );
        }
        if let Some(c) = &report.checkpoint {
            println!("new checkpoint at entry {}; the daemon can start", c.seq);
        }
    }
    Ok(())
}

/// Unpacks a `backup` archive next to the store and restores it (verifying its audit chain).
fn restore(archive: &Path, data_dir: &Path, store_dir: &Path) -> Result<(), CliError> {
    let file = std::fs::File::open(archive)
        .map_err(|e| CliError::new(format!("cannot open {}: {e}", archive.display())))?;
    let unpack = data_dir.join("tmp").join("restore");
    let _ = std::fs::remove_dir_all(&unpack);
    std::fs::create_dir_all(&unpack)
        .map_err(|e| CliError::new(format!("cannot create {}: {e}", unpack.display())))?;
    tar::Archive::new(file).unpack(&unpack).map_err(|e| {
        CliError::new(format!(
            "{} is not a backup archive: {e}",
            archive.display()
        ))
    })?;
    let result = crate::store::SledStore::restore_from(&unpack.join("store"), store_dir)
        .map_err(|e| CliError::new(format!("restore failed: {e}")));
    let _ = std::fs::remove_dir_all(&unpack);
    result
}

fn print_issuers(issuers: &[v1::Issuer], json: bool) {
    let state = |s: i32| {
        v1::IssuerState::try_from(s)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("ISSUER_STATE_")
                    .to_lowercase()
            })
            .unwrap_or_else(|_| "?".into())
    };
    if json {
        print_json(serde_json::Value::Array(
            issuers
                .iter()
                .map(|i| {
                    serde_json::json!({"id": i.id, "state": state(i.state),
                        "not_before": fmt_ts(&i.not_before), "not_after": fmt_ts(&i.not_after),
                        "certificate_count": i.certificate_count, "crl_number": i.crl_number})
                })
                .collect(),
        ));
        return;
    }
    println!(
        "{:<24} {:<9} {:<22} {:<22} {:>8} {:>6}",
        "ID", "STATE", "NOT BEFORE", "NOT AFTER", "CERTS", "CRL#"
    );
    for i in issuers {
        println!(
            "{:<24} {:<9} {:<22} {:<22} {:>8} {:>6}",
            i.id,
            state(i.state),
            fmt_ts(&i.not_before),
            fmt_ts(&i.not_after),
            i.certificate_count,
            i.crl_number
        );
    }
}

async fn serve(a: ServeArgs) -> Result<(), CliError> {
    let file = match &a.config {
        Some(p) => FileConfig::load(p).map_err(|e| CliError::new(e.to_string()))?,
        None => FileConfig::default(),
    };
    let log_format = a.log_format.or(file.log_format).unwrap_or_default();
    crate::logging::init(log_format);
    let data_dir = a
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("./var"));
    let opts = crate::server::ServeOptions {
        data_dir,
        grpc_listen: a
            .grpc_listen
            .or(file.grpc_listen)
            .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 50051))),
        http_listen: a
            .http_listen
            .or(file.http_listen)
            .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 8080))),
        metrics_listen: a.metrics_listen.or(file.metrics_listen),
        policy_file: a.policy.or(file.policy),
        passphrase_file: a.passphrase_file.or(file.passphrase_file),
        dev: a.dev,
        url_base: file.url_base,
        store_cache_mib: a.store_cache_mib.or(file.store_cache_mib).unwrap_or(128),
        store: crate::server::StoreLocation::resolve(
            a.store.or(file.store).as_deref(),
            a.store_password_file.or(file.store_password_file),
        )
        .map_err(|e| CliError::new(e.to_string()))?,
        server_names: if a.server_names.is_empty() {
            file.server_names.unwrap_or_default()
        } else {
            a.server_names
        },
    };
    crate::server::serve(opts).await.map_err(|e| match e {
        crate::server::ServeError::RestartRequested => CliError {
            message: e.to_string(),
            code: crate::storage::RESTART_EXIT_CODE,
        },
        e => {
            tracing::error!(error = %e, "ca-daemon failed to start");
            CliError::new(e.to_string())
        }
    })
}

async fn init(a: InitArgs) -> Result<(), CliError> {
    let policy = crate::server::load_policy(a.policy.as_deref())
        .map_err(|e| CliError::new(e.to_string()))?;
    let report = tokio::task::spawn_blocking(move || -> Result<_, CliError> {
        let mut opts = if a.dev && a.passphrase_file.is_none() {
            crate::pki::InitOptions::dev(&a.data_dir, &a.url_base)
                .map_err(|e| CliError::new(e.to_string()))?
        } else {
            let pf = a.passphrase_file.as_deref().ok_or_else(|| {
                CliError::new(
                    "--passphrase-file is required (or use --dev for a throw-away dev PKI)",
                )
            })?;
            let passphrase =
                crate::keys::Passphrase::from_file(pf).map_err(|e| CliError::new(e.to_string()))?;
            let mut o = crate::pki::InitOptions::new(&a.data_dir, passphrase, &a.url_base);
            o.dev = a.dev;
            o
        };
        if let Some(rp) = &a.root_passphrase_file {
            opts.root_passphrase = Some(
                crate::keys::Passphrase::from_file(rp).map_err(|e| CliError::new(e.to_string()))?,
            );
        }
        if !a.server_names.is_empty() {
            opts.server_names = a.server_names.clone();
        }
        opts.root_validity_days = policy.ca.root_validity_days;
        opts.issuer_validity_days = policy.ca.issuer_validity_days;
        opts.ocsp_validity_days = policy.ca.ocsp_responder_validity_days;
        opts.service_validity_days = policy.ca.service_cert_validity_days;
        let report = crate::pki::init(&opts).map_err(|e| CliError::new(e.to_string()))?;
        // The store belongs to the PKI from the start: `serve` never creates one silently.
        crate::promises::create_empty_store(&crate::pki::Layout::new(&a.data_dir).store_dir())
            .map_err(|e| CliError::new(e.to_string()))?;
        Ok((report, a.json))
    })
    .await
    .map_err(|e| CliError::new(e.to_string()))??;
    let (report, json) = report;
    if json {
        print_json(
            serde_json::json!({"data_dir": report.data_dir, "issuer_id": report.issuer_id,
            "root_fingerprint_sha256": report.root_fingerprint_sha256,
            "dev_passphrase_file": report.dev_passphrase_file}),
        );
    } else {
        println!("PKI created in {}", report.data_dir.display());
        println!(
            "  root CA SHA-256 fingerprint: {}",
            report.root_fingerprint_sha256
        );
        println!("  active issuer: {}", report.issuer_id);
        if let Some(p) = &report.dev_passphrase_file {
            println!(
                "  DEV ONLY: the key passphrase was generated into {} and the client keys in dev/ are unencrypted. Never use this PKI in production.",
                p.display()
            );
        }
    }
    Ok(())
}

async fn ticket(t: TicketCommand) -> Result<(), CliError> {
    match t {
        TicketCommand::Create(a) => {
            let a = *a;
            let os = target_os(&a.os)?;
            let mut c = v1::enrollment_client::EnrollmentClient::new(connect(&a.client).await?);
            let r = c
                .create_ticket(v1::CreateTicketRequest {
                    facility: Some(v1::Facility {
                        id: a.facility_id,
                        name: a.facility_name,
                        prefecture: a.prefecture,
                        city: a.city,
                        kind: a.facility_kind,
                    }),
                    person: Some(v1::Person {
                        id: a.person_id,
                        family_name: a.family_name,
                        given_name: a.given_name,
                        family_name_kana: a.family_name_kana,
                        given_name_kana: a.given_name_kana,
                        job: a.job,
                        email: a.email,
                    }),
                    device: Some(v1::Device {
                        id: a.device_id,
                        os: os as i32,
                        remark: String::new(),
                    }),
                    profile: a.profile,
                    approved_by: a.approved_by,
                    renews_serial: a.renews_serial,
                })
                .await?
                .into_inner();
            if a.client.json {
                print_json(
                    serde_json::json!({"number": r.number, "password": r.password,
                    "expires_at": fmt_ts(&r.expires_at)}),
                );
            } else {
                println!("number:   {}", r.number);
                println!("password: {}", r.password);
                println!("expires:  {}", fmt_ts(&r.expires_at));
            }
            Ok(())
        }
        TicketCommand::Redeem(a) => {
            let password = zeroize::Zeroizing::new(
                String::from_utf8(read(&a.password_file)?)
                    .map_err(|_| CliError::new("the password file is not UTF-8"))?
                    .trim()
                    .to_string(),
            );
            let os = match &a.os {
                Some(s) => target_os(s)?,
                None => v1::TargetOs::Unspecified,
            };
            let mut c = v1::enrollment_client::EnrollmentClient::new(connect(&a.client).await?);
            let r = c
                .redeem_ticket(v1::RedeemTicketRequest {
                    number: a.number,
                    password: password.to_string(),
                    os: os as i32,
                    keystore_profile: a.keystore_profile,
                })
                .await?
                .into_inner();
            std::fs::create_dir_all(&a.out)
                .map_err(|e| CliError::new(format!("cannot create {}: {e}", a.out.display())))?;
            let mut written = vec![write_file(&a.out, &r.file_name, &r.pkcs12, true)?];
            if !r.mobileconfig.is_empty() {
                written.push(write_file(
                    &a.out,
                    &r.mobileconfig_file_name,
                    &r.mobileconfig,
                    true,
                )?);
            }
            written.push(write_file(
                &a.out,
                "certificate.pem",
                crate::pki::pem_encode("CERTIFICATE", &r.certificate_der).as_bytes(),
                false,
            )?);
            let chain: String = r
                .chain_der
                .iter()
                .map(|d| crate::pki::pem_encode("CERTIFICATE", d))
                .collect();
            written.push(write_file(&a.out, "chain.pem", chain.as_bytes(), false)?);
            if a.client.json {
                print_json(
                    serde_json::json!({"serial": r.serial, "not_after": fmt_ts(&r.not_after),
                    "files": written, "media_type": r.media_type}),
                );
            } else {
                println!(
                    "certificate {} (valid until {})",
                    r.serial,
                    fmt_ts(&r.not_after)
                );
                for w in written {
                    println!("  wrote {}", w.display());
                }
            }
            Ok(())
        }
        TicketCommand::Get(a) => {
            let mut c = v1::enrollment_client::EnrollmentClient::new(connect(&a.client).await?);
            let t = c
                .get_ticket(v1::GetTicketRequest { number: a.number })
                .await?
                .into_inner();
            print_ticket(&t, a.client.json);
            Ok(())
        }
        TicketCommand::Cancel(a) => {
            let mut c = v1::enrollment_client::EnrollmentClient::new(connect(&a.client).await?);
            let t = c
                .cancel_ticket(v1::CancelTicketRequest { number: a.number })
                .await?
                .into_inner();
            print_ticket(&t, a.client.json);
            Ok(())
        }
    }
}

fn print_ticket(t: &v1::Ticket, json: bool) {
    let state = v1::TicketState::try_from(t.state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("TICKET_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "?".into());
    if json {
        print_json(serde_json::json!({"number": t.number, "state": state,
            "expires_at": fmt_ts(&t.expires_at), "failed_attempts": t.failed_attempts,
            "facility_id": t.facility_id, "person_id": t.person_id, "device_id": t.device_id}));
    } else {
        println!(
            "ticket {}: {state}, expires {}, {} failed attempts, facility {} person {} device {}",
            t.number,
            fmt_ts(&t.expires_at),
            t.failed_attempts,
            t.facility_id,
            t.person_id,
            t.device_id
        );
    }
}

async fn revoke(a: RevokeArgs) -> Result<(), CliError> {
    use v1::revoke_request::Target;
    let target = match (a.serial, a.device, a.person, a.facility) {
        (Some(s), None, None, None) => Target::Serial(s),
        (None, Some(d), None, None) => Target::DeviceId(d),
        (None, None, Some(p), None) => Target::PersonId(p),
        (None, None, None, Some(f)) => Target::FacilityId(f),
        _ => {
            return Err(CliError::new(
                "give exactly one of --serial, --device, --person, --facility",
            ));
        }
    };
    let reason = pki_policy::domain::RevocationReason::parse(&a.reason)
        .ok_or_else(|| CliError::new(format!("unknown reason '{}'", a.reason)))?;
    let mut c = v1::certificates_client::CertificatesClient::new(connect(&a.client).await?);
    let r = c
        .revoke(v1::RevokeRequest {
            target: Some(target),
            reason: v1::RevocationReason::from(reason) as i32,
            invalidity_date: None,
        })
        .await?
        .into_inner();
    if a.client.json {
        print_json(serde_json::json!({"revoked_serials": r.revoked_serials,
            "cancelled_tickets": r.cancelled_tickets}));
    } else {
        println!("revoked {} certificate(s):", r.revoked_serials.len());
        for s in r.revoked_serials {
            println!("  {s}");
        }
        if r.cancelled_tickets > 0 {
            println!("cancelled {} active ticket(s)", r.cancelled_tickets);
        }
    }
    Ok(())
}

async fn status(a: ClientArgs) -> Result<(), CliError> {
    let mut c = v1::admin_client::AdminClient::new(connect(&a).await?);
    let s = c.get_status(v1::GetStatusRequest {}).await?.into_inner();
    if a.json {
        print_json(serde_json::json!({
            "certificates_total": s.certificates_total,
            "certificates_revoked": s.certificates_revoked,
            "certificates_expiring_within_30_days": s.certificates_expiring_within_30_days,
            "tickets_by_state": s.tickets_by_state,
            "crls": s.crls.iter().map(|c| serde_json::json!({"issuer_id": c.issuer_id, "number": c.number,
                "this_update": fmt_ts(&c.this_update), "next_update": fmt_ts(&c.next_update), "age_seconds": c.age_seconds})).collect::<Vec<_>>(),
            "issuers": s.issuers.iter().map(|i| serde_json::json!({"id": i.id, "certificate_count": i.certificate_count})).collect::<Vec<_>>(),
            "root_crl": s.root_crl.as_ref().map(|c| serde_json::json!({"number": c.number,
                "this_update": fmt_ts(&c.this_update), "next_update": fmt_ts(&c.next_update)})),
            "warnings": status_warnings(&s),
        }));
        return Ok(());
    }
    print_issuers(&s.issuers, false);
    println!();
    println!(
        "certificates: {} issued, {} revoked, {} expiring within 30 days (not renewed)",
        s.certificates_total, s.certificates_revoked, s.certificates_expiring_within_30_days
    );
    let mut states: Vec<_> = s.tickets_by_state.iter().collect();
    states.sort();
    println!(
        "tickets: {}",
        states
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for c in &s.crls {
        println!(
            "CRL {}: #{} published {} ({} s ago), next update {}",
            c.issuer_id,
            c.number,
            fmt_ts(&c.this_update),
            c.age_seconds,
            fmt_ts(&c.next_update)
        );
    }
    if let Some(c) = &s.root_crl {
        println!(
            "root CRL: #{} published {}, next update {}",
            c.number,
            fmt_ts(&c.this_update),
            fmt_ts(&c.next_update)
        );
    }
    for w in status_warnings(&s) {
        println!("WARNING: {w}");
    }
    Ok(())
}

/// What `status` warns about: the root CRL from 30 days before it runs out (or when the
/// daemon has none).
fn status_warnings(s: &v1::StatusResponse) -> Vec<String> {
    let next = s
        .root_crl
        .as_ref()
        .and_then(|c| c.next_update.as_ref())
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok());
    match next {
        Some(n) => crate::root_crl::warning(n, time::OffsetDateTime::now_utc())
            .into_iter()
            .collect(),
        None => vec!["the daemon serves no readable root CRL (keys/root.crl)".into()],
    }
}

async fn rotate(a: RotateArgs) -> Result<(), CliError> {
    let policy = crate::server::load_policy(a.policy.as_deref())
        .map_err(|e| CliError::new(e.to_string()))?;
    let data_dir = a.client.data_dir.clone();
    let pf = a
        .passphrase_file
        .clone()
        .unwrap_or_else(|| crate::pki::dev_passphrase_path(&data_dir));
    let rpf = a.root_passphrase_file.clone().unwrap_or_else(|| pf.clone());
    let new_id = tokio::task::spawn_blocking(move || -> Result<String, CliError> {
        let pass =
            crate::keys::Passphrase::from_file(&pf).map_err(|e| CliError::new(e.to_string()))?;
        let root_pass =
            crate::keys::Passphrase::from_file(&rpf).map_err(|e| CliError::new(e.to_string()))?;
        crate::pki::rotate_issuer(
            &data_dir,
            &root_pass,
            &pass,
            policy.ca.issuer_validity_days,
            policy.ca.ocsp_responder_validity_days,
        )
        .map_err(|e| CliError::new(format!("rotation failed: {e}")))
    })
    .await
    .map_err(|e| CliError::new(e.to_string()))??;
    eprintln!("new issuer {new_id} written; telling the running daemon to switch");
    let mut c = v1::admin_client::AdminClient::new(connect(&a.client).await?);
    let list = c
        .reload_issuers(v1::ReloadIssuersRequest {})
        .await?
        .into_inner();
    print_issuers(&list.issuers, a.client.json);
    Ok(())
}

/// Reads a password file: its first line, without the line end.
pub fn read_password_file(path: &Path) -> Result<zeroize::Zeroizing<String>, CliError> {
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        CliError::new(format!(
            "cannot read the password file {}: {e}",
            path.display()
        ))
    })?);
    Ok(zeroize::Zeroizing::new(
        text.lines().next().unwrap_or_default().to_owned(),
    ))
}

/// `store copy`: sled (a stopped daemon's data dir) into an empty PostgreSQL schema.
fn store_copy(a: &StoreCopyArgs) -> Result<(), CliError> {
    use crate::store::{PgOptions, PgStore, SledStore, Store};
    let store_dir = crate::pki::Layout::new(&a.from).store_dir();
    if !store_dir.join("conf").is_file() {
        return Err(CliError::new(format!(
            "no store in {} (expected the data dir of a ca-daemon, or an unpacked backup there)",
            store_dir.display()
        )));
    }
    let source = SledStore::open(&store_dir).map_err(|e| {
        CliError::new(format!(
            "cannot open {} (is the daemon still running on it?): {e}",
            store_dir.display()
        ))
    })?;
    let checked = source
        .verify_audit()
        .map_err(|e| CliError::new(format!("cannot verify the source's audit log: {e}")))?;
    if !checked.ok {
        return Err(CliError::new(format!(
            "the source's audit chain is broken at entry {}: {}; nothing copied",
            checked.first_bad_entry.unwrap_or_default(),
            checked.problem.unwrap_or_default()
        )));
    }
    let password = a
        .store_password_file
        .as_deref()
        .map(read_password_file)
        .transpose()?;
    let opts = PgOptions::from_url(&a.to, password).map_err(|e| CliError::new(e.to_string()))?;
    let target = PgStore::connect(&opts).map_err(|e| {
        CliError::new(format!(
            "cannot open the target {}: {e}",
            opts.display_url()
        ))
    })?;
    if let Some(table) = target
        .first_nonempty_table()
        .map_err(|e| CliError::new(e.to_string()))?
    {
        return Err(CliError::new(format!(
            "the target {} is not empty (table {table} has rows); store copy only fills an empty schema",
            opts.display_url()
        )));
    }
    println!(
        "copying {} ({} audit entries) into {}",
        store_dir.display(),
        checked.entries,
        opts.display_url()
    );
    let every = a.progress_every.max(1);
    let summary = target
        .import_image(
            |sink| source.export_image(sink),
            |kind, n| {
                if n % every == 0 {
                    println!("  {n} rows copied (now: {kind})");
                }
            },
        )
        .map_err(|e| CliError::new(format!("copy failed, nothing was written: {e}")))?;
    let verified = target
        .verify_audit()
        .map_err(|e| CliError::new(format!("cannot verify the copy's audit log: {e}")))?;
    if !verified.ok || verified.entries != checked.entries {
        return Err(CliError::new(format!(
            "the copy's audit chain does not verify: {}",
            verified.problem.unwrap_or_default()
        )));
    }
    for (kind, n) in &summary.rows {
        println!("  {kind}: {n}");
    }
    println!(
        "copied; audit chain intact on the target: {} entries, head {}",
        verified.entries,
        hex::encode(summary.audit_head.hash)
    );
    Ok(())
}
