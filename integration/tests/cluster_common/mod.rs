//! Helpers shared by the cluster tests (`cluster.rs`, `cluster_faults.rs`): a real PostgreSQL
//! started by the harness, two or three real daemons on one database, OCSP through openssl.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use integration::pg::{PgCluster, PgDatabase};
use integration::tools::{self, run};
use integration::{Daemon, DaemonOptions};
use pki_proto::v1;

/// A PostgreSQL cluster, one database, and the daemons on it.
pub struct Nodes {
    pub nodes: Vec<Daemon>,
    pub db: PgDatabase,
    pub pg: PgCluster,
    pub dir: tempfile::TempDir,
}

/// `serve` arguments that put a daemon on `db`.
pub fn store_args(db: &PgDatabase) -> Vec<String> {
    vec![
        "--store".into(),
        db.url.clone(),
        "--store-password-file".into(),
        db.password_file.display().to_string(),
    ]
}

/// Copies a data directory for another node (what docs/cluster.md says a node needs: the
/// keys and the dev client certificates; not the node's own run/ and checkpoint/).
pub fn copy_data_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create data dir");
    for entry in ["keys", "dev"] {
        let src = from.join(entry);
        if src.exists() {
            let st = Command::new("cp")
                .arg("-a")
                .arg(&src)
                .arg(to)
                .status()
                .expect("cp");
            assert!(st.success(), "cp -a {}", src.display());
        }
    }
}

/// Starts PostgreSQL and `n` daemons on one new database: the first creates the dev PKI and the
/// schema; the others join on the same data dir (`shared_dir`, what `serve --dev --store`
/// promises) or on copies of it.
pub fn start_nodes(n: usize, shared_dir: bool) -> Nodes {
    let pg = PgCluster::start_new().expect("start PostgreSQL");
    let db = pg.create_database().expect("create database");
    let dir = tempfile::tempdir().expect("tempdir");
    let first_dir = dir.path().join("node0").join("var");
    let mut nodes = vec![
        Daemon::start_with(DaemonOptions {
            data_dir: Some(first_dir.clone()),
            extra_args: store_args(&db),
            ..DaemonOptions::default()
        })
        .expect("start node 0"),
    ];
    for i in 1..n {
        let data_dir = if shared_dir {
            first_dir.clone()
        } else {
            let d = dir.path().join(format!("node{i}")).join("var");
            copy_data_dir(&first_dir, &d);
            d
        };
        nodes.push(
            Daemon::start_with(DaemonOptions {
                data_dir: Some(data_dir),
                extra_args: store_args(&db),
                ..DaemonOptions::default()
            })
            .unwrap_or_else(|e| panic!("start node {i}: {e}")),
        );
    }
    Nodes { nodes, db, pg, dir }
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `limit`; the value and the time
/// it took.
pub async fn until<T, F, Fut>(limit: Duration, mut f: F) -> Option<(T, Duration)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Some((v, start.elapsed()));
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Files for openssl ocsp: the leaf, its issuer and the root (PEM).
pub struct OcspFiles {
    pub leaf: PathBuf,
    pub issuer: PathBuf,
    pub ca: PathBuf,
}

/// Writes the OCSP files of a redeemed certificate into `dir`.
pub fn ocsp_files(dir: &Path, leaf_der: &[u8], issuer_der: &[u8], root_der: &[u8]) -> OcspFiles {
    let leaf = dir.join(format!("leaf-{}.pem", hex_prefix(leaf_der)));
    std::fs::write(&leaf, tools::pem("CERTIFICATE", leaf_der)).expect("write leaf");
    let issuer = dir.join(format!("issuer-{}.pem", hex_prefix(issuer_der)));
    std::fs::write(&issuer, tools::pem("CERTIFICATE", issuer_der)).expect("write issuer");
    let ca = dir.join(format!("ca-{}.pem", hex_prefix(issuer_der)));
    std::fs::write(
        &ca,
        format!(
            "{}{}",
            tools::pem("CERTIFICATE", root_der),
            tools::pem("CERTIFICATE", issuer_der)
        ),
    )
    .expect("write ca");
    OcspFiles { leaf, issuer, ca }
}

fn hex_prefix(der: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    der.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// `openssl ocsp` (no nonce: the cached answer is what a gateway gets) against `http`; the
/// status word (`good`, `revoked`, `unknown`) once the response verified, else `None`.
pub fn ocsp_status(http: std::net::SocketAddr, f: &OcspFiles) -> Option<String> {
    let out = run(Command::new("openssl").args([
        "ocsp",
        "-no_nonce",
        "-issuer",
        &f.issuer.display().to_string(),
        "-cert",
        &f.leaf.display().to_string(),
        "-url",
        &format!("http://{http}/ocsp"),
        "-CAfile",
        &f.ca.display().to_string(),
        "-timeout",
        "5",
    ]));
    let t = tools::text(&out);
    if !out.status.success() || !t.contains("Response verify OK") {
        return None;
    }
    let leaf = f.leaf.display().to_string();
    t.lines()
        .find_map(|l| l.strip_prefix(&format!("{leaf}: ")))
        .map(|s| s.trim().to_owned())
}

/// The serials (lowercase hex) on a DER CRL, parsed by openssl.
pub fn crl_serials(dir: &Path, der: &[u8]) -> Vec<String> {
    let p = dir.join(format!("crl-{}.der", hex_prefix(der)));
    std::fs::write(&p, der).expect("write crl");
    let out = run(Command::new("openssl").args([
        "crl",
        "-inform",
        "DER",
        "-noout",
        "-text",
        "-in",
        &p.display().to_string(),
    ]));
    let _ = std::fs::remove_file(&p);
    assert!(out.status.success(), "openssl crl: {}", tools::text(&out));
    tools::text(&out)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Serial Number: "))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect()
}

/// The CRL of the active issuer over plain HTTP (DER), if it answers 200.
pub fn http_crl(d: &Daemon, issuer_id: &str) -> Option<Vec<u8>> {
    match integration::http_get(d.http, &format!("/crl/{issuer_id}.crl")) {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

/// Creates a ticket on `d` (sample `n`); (number, password).
pub async fn create_ticket(d: &Daemon, n: u32) -> (String, String) {
    let t = d
        .enrollment("portal")
        .await
        .expect("enrollment client")
        .create_ticket(integration::sample_ticket_request(n, v1::TargetOs::Android))
        .await
        .expect("CreateTicket")
        .into_inner();
    (t.number, t.password)
}

/// Redeems on `d`.
pub async fn redeem(
    d: &Daemon,
    number: &str,
    password: &str,
) -> Result<v1::RedeemTicketResponse, tonic::Status> {
    let mut e = d
        .enrollment("portal")
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    e.redeem_ticket(v1::RedeemTicketRequest {
        number: number.to_owned(),
        password: password.to_owned(),
        os: v1::TargetOs::Unspecified as i32,
        keystore_profile: String::new(),
    })
    .await
    .map(tonic::Response::into_inner)
}

/// Revokes one serial on `d`.
pub async fn revoke(d: &Daemon, serial: &str) -> Result<Vec<String>, tonic::Status> {
    let mut c = d
        .certificates("portal")
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    c.revoke(v1::RevokeRequest {
        target: Some(v1::revoke_request::Target::Serial(serial.to_owned())),
        reason: v1::RevocationReason::KeyCompromise as i32,
        invalidity_date: None,
    })
    .await
    .map(|r| r.into_inner().revoked_serials)
}

/// The certificate chain of a redemption's bundle is not needed: the issuer and root DER come
/// from `GetCaChain`.
pub async fn chain(d: &Daemon) -> Vec<Vec<u8>> {
    d.revocation("gateway")
        .await
        .expect("revocation client")
        .get_ca_chain(v1::GetCaChainRequest {})
        .await
        .expect("GetCaChain")
        .into_inner()
        .certificates_der
}

/// Whether openssl can run (panics unless missing tools are allowed).
pub fn have_openssl() -> bool {
    if tools::require_openssl() {
        return true;
    }
    eprintln!("SKIPPED: openssl not found (PKI_ALLOW_MISSING_TOOLS=1)");
    false
}
