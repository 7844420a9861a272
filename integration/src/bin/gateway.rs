//! The example mTLS gateway as a program: follows the daemon's CRLs and serves an echo service to
//! devices with a valid certificate. See `integration::gateway` for what it does and why.
//!
//! With a dev daemon (`ca-daemon serve --dev --data-dir var`):
//! ```text
//! gateway --service-ca var/dev/service-ca.crt --client-cert var/dev/gateway.crt \
//!         --client-key var/dev/gateway.key --write-server-cert gateway.crt
//! openssl s_client -connect 127.0.0.1:8443 -CAfile gateway.crt -cert device.crt -key device.key
//! ```
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use integration::gateway::{Gateway, GatewayConfig, ServerIdentity};
use zeroize::Zeroizing;

/// Example mutual-TLS gateway that follows the daemon's CRL stream.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on for devices.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// gRPC URL of the daemon.
    #[arg(
        long,
        env = "GATEWAY_DAEMON_URL",
        default_value = "https://127.0.0.1:50051"
    )]
    daemon_url: String,
    /// Name to check in the daemon's server certificate.
    #[arg(long, default_value = "localhost")]
    daemon_server_name: String,
    /// Service CA (trust anchor of the daemon's server certificate), PEM.
    #[arg(long, env = "GATEWAY_SERVICE_CA")]
    service_ca: PathBuf,
    /// The gateway's service client certificate (role gateway), PEM.
    #[arg(long, env = "GATEWAY_CLIENT_CERT")]
    client_cert: PathBuf,
    /// Its private key, PEM.
    #[arg(long, env = "GATEWAY_CLIENT_KEY")]
    client_key: PathBuf,
    /// The gateway's TLS server certificate chain, PEM (default: self-signed for localhost).
    #[arg(long, requires = "server_key")]
    server_cert: Option<PathBuf>,
    /// Its private key, PEM.
    #[arg(long, requires = "server_cert")]
    server_key: Option<PathBuf>,
    /// Writes the server certificate (PEM) here once started, for clients to trust.
    #[arg(long)]
    write_server_cert: Option<PathBuf>,
    /// Follow only this issuer's CRLs; repeat for several (default: every live issuer of the
    /// daemon, including issuers created later by `issuer rotate`).
    #[arg(long = "issuer")]
    issuers: Vec<String>,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let mut cfg = GatewayConfig::new(
        args.listen,
        args.daemon_url,
        read(&args.service_ca)?,
        read(&args.client_cert)?,
        Zeroizing::new(read(&args.client_key)?),
    );
    cfg.daemon_server_name = args.daemon_server_name;
    cfg.issuer_ids = args.issuers;
    if let (Some(cert), Some(key)) = (&args.server_cert, &args.server_key) {
        cfg.server_identity = Some(ServerIdentity {
            cert_chain_pem: read(cert)?,
            key_pem: Zeroizing::new(read(key)?),
        });
    }
    let gateway = Gateway::start(cfg).await.map_err(|e| e.to_string())?;
    if let Some(path) = &args.write_server_cert {
        std::fs::write(path, pem("CERTIFICATE", &gateway.server_cert_der()))
            .map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| format!("waiting for Ctrl-C: {e}"))?;
    tracing::info!("shutting down");
    gateway.shutdown().await;
    Ok(())
}

/// PEM armour (RFC 7468) around DER.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
