//! Faults of a cluster on one PostgreSQL (issue #15 item 4), with a real PostgreSQL and real
//! daemons: the database restarted under load, a node killed with SIGKILL under load, and a
//! node cut off from the database by a network partition (network namespaces; needs root).
//! What must hold in each: calls fail with UNAVAILABLE while the database is away and work
//! again without restarting a node, nothing acknowledged is lost, CRLs and cached OCSP answers
//! keep being served, and health tells enrollment (NOT_SERVING) from revocation (SERVING).

mod cluster_common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_common::*;
use integration::{Daemon, DaemonOptions, health_status};
use pki_proto::v1;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

/// What a load run got acknowledged, and the error codes it saw.
#[derive(Default)]
struct Acked {
    redeemed: BTreeSet<String>,
    revoked: BTreeSet<String>,
    codes: Vec<(Instant, tonic::Code)>,
    ok_at: Vec<(usize, Instant)>,
}

/// Enrollment + revocation load over `clients` (one per node): create on one node, redeem on
/// the next, revoke every other certificate on the third, until `stop`.
fn load(
    clients: Vec<(
        v1::enrollment_client::EnrollmentClient<tonic::transport::Channel>,
        v1::certificates_client::CertificatesClient<tonic::transport::Channel>,
    )>,
    acked: Arc<Mutex<Acked>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let n = clients.len();
        let mut clients = clients;
        let mut i: usize = 0;
        let record_err = |s: &tonic::Status| {
            acked
                .lock()
                .expect("lock")
                .codes
                .push((Instant::now(), s.code()));
        };
        while !*stop.borrow() {
            i += 1;
            let (a, b, c) = (i % n, (i + 1) % n, (i + 2) % n);
            let created = clients[a]
                .0
                .create_ticket(integration::sample_ticket_request(
                    1000 + i as u32,
                    v1::TargetOs::Android,
                ))
                .await;
            let t = match created {
                Ok(t) => t.into_inner(),
                Err(s) => {
                    record_err(&s);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let r = clients[b]
                .0
                .redeem_ticket(v1::RedeemTicketRequest {
                    number: t.number,
                    password: t.password,
                    os: v1::TargetOs::Unspecified as i32,
                    keystore_profile: String::new(),
                })
                .await;
            let serial = match r {
                Ok(r) => {
                    let serial = r.into_inner().serial;
                    let mut g = acked.lock().expect("lock");
                    g.redeemed.insert(serial.clone());
                    g.ok_at.push((b, Instant::now()));
                    serial
                }
                Err(s) => {
                    record_err(&s);
                    continue;
                }
            };
            if i.is_multiple_of(2) {
                let r = clients[c]
                    .1
                    .revoke(v1::RevokeRequest {
                        target: Some(v1::revoke_request::Target::Serial(serial.clone())),
                        reason: v1::RevocationReason::KeyCompromise as i32,
                        invalidity_date: None,
                    })
                    .await;
                match r {
                    Ok(_) => {
                        let mut g = acked.lock().expect("lock");
                        g.revoked.insert(serial);
                        g.ok_at.push((c, Instant::now()));
                    }
                    Err(s) => record_err(&s),
                }
            }
        }
    })
}

async fn clients(
    nodes: &[&Daemon],
) -> Vec<(
    v1::enrollment_client::EnrollmentClient<tonic::transport::Channel>,
    v1::certificates_client::CertificatesClient<tonic::transport::Channel>,
)> {
    let mut out = Vec::new();
    for d in nodes {
        out.push((
            d.enrollment("portal").await.expect("client"),
            d.certificates("portal").await.expect("client"),
        ));
    }
    out
}

/// Every acknowledged certificate is known to `d` and every acknowledged revocation is on the
/// CRL `d` serves (within a few seconds).
async fn nothing_lost(d: &Daemon, acked: &Acked, dir: &std::path::Path, issuer_id: &str) {
    let mut c = d.certificates("portal").await.expect("client");
    for serial in &acked.redeemed {
        let got = c
            .get_certificate(v1::GetCertificateRequest {
                serial: serial.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("acknowledged {serial} lost: {e}"))
            .into_inner();
        if acked.revoked.contains(serial) {
            assert!(
                got.revoked_at.is_some(),
                "acknowledged revocation of {serial} lost"
            );
        }
    }
    let want = acked.revoked.clone();
    until(Duration::from_secs(10), || async {
        let der = http_crl(d, issuer_id)?;
        let on: BTreeSet<String> = crl_serials(dir, &der).into_iter().collect();
        want.is_subset(&on).then_some(())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "acknowledged revocations missing from the CRL:\n{}",
            d.log()
        )
    });
}

/// PostgreSQL restarted during a redemption and revocation load on two nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_restart_under_load() {
    let _one = SERIAL.lock().await;
    if !have_openssl() {
        return;
    }
    let c = start_nodes(2, true);
    let chain = chain(&c.nodes[0]).await;
    let issuer_id = integration::active_issuer(&c.nodes[0]).await.id;
    // A certificate whose OCSP answer both nodes have cached before the outage.
    let (number, password) = create_ticket(&c.nodes[0], 1).await;
    let primed = redeem(&c.nodes[1], &number, &password)
        .await
        .expect("redeem");
    let files = ocsp_files(c.dir.path(), &primed.certificate_der, &chain[1], &chain[0]);
    for d in &c.nodes {
        assert_eq!(ocsp_status(d.http, &files).as_deref(), Some("good"));
    }

    let acked = Arc::new(Mutex::new(Acked::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let nodes: Vec<&Daemon> = c.nodes.iter().collect();
    let task = load(clients(&nodes).await, acked.clone(), stop_rx);
    tokio::time::sleep(Duration::from_secs(2)).await;

    c.pg.stop().expect("stop PostgreSQL");
    let down_at = Instant::now();
    // While it is down: enrollment NOT_SERVING, revocation SERVING, CRL and cached OCSP answer.
    for (i, d) in c.nodes.iter().enumerate() {
        until(Duration::from_secs(5), || async {
            (health_status(d, "pki.ca.v1.Enrollment").await == NOT_SERVING).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("node {i}: enrollment never NOT_SERVING"));
        assert_eq!(
            health_status(d, "pki.ca.v1.Revocation").await,
            SERVING,
            "node {i}"
        );
        let der = http_crl(d, &issuer_id).unwrap_or_else(|| panic!("node {i}: no CRL while down"));
        assert!(!crl_serials(c.dir.path(), &der).contains(&primed.serial));
        assert_eq!(
            ocsp_status(d.http, &files).as_deref(),
            Some("good"),
            "node {i}: cached OCSP while the database is down"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.pg.start().expect("start PostgreSQL");
    let up_at = Instant::now();
    // The nodes come back by themselves.
    for (i, d) in c.nodes.iter().enumerate() {
        until(Duration::from_secs(15), || async {
            (health_status(d, "pki.ca.v1.Enrollment").await == SERVING).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("node {i}: enrollment never SERVING again:\n{}", d.log()));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let _ = stop_tx.send(true);
    task.await.expect("load");

    let acked = std::mem::take(&mut *acked.lock().expect("lock"));
    let during: Vec<tonic::Code> = acked
        .codes
        .iter()
        .filter(|(t, _)| *t >= down_at && *t <= up_at)
        .map(|(_, c)| *c)
        .collect();
    assert!(
        during.contains(&tonic::Code::Unavailable),
        "calls fail with UNAVAILABLE while the database is down: {during:?}"
    );
    for (_, code) in &acked.codes {
        assert!(
            matches!(code, tonic::Code::Unavailable),
            "only UNAVAILABLE from the outage, got {code:?}: {:?}",
            acked.codes
        );
    }
    for i in 0..c.nodes.len() {
        assert!(
            acked.ok_at.iter().any(|(n, t)| *n == i && *t > up_at),
            "node {i} serves again after the restart without being restarted"
        );
    }
    assert!(
        acked.redeemed.len() >= 4,
        "load ran: {}",
        acked.redeemed.len()
    );
    for d in &c.nodes {
        nothing_lost(d, &acked, c.dir.path(), &issuer_id).await;
    }
    eprintln!(
        "database restart: {} redeemed, {} revoked, {} refused while down",
        acked.redeemed.len(),
        acked.revoked.len(),
        during.len()
    );
}

/// A node killed with SIGKILL under load: nothing it acknowledged is lost, the others go on
/// (and publish the CRL it may not have).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_killed_under_load() {
    let _one = SERIAL.lock().await;
    if !have_openssl() {
        return;
    }
    let mut c = start_nodes(3, true);
    let issuer_id = integration::active_issuer(&c.nodes[0]).await.id;
    let acked = Arc::new(Mutex::new(Acked::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let nodes: Vec<&Daemon> = c.nodes.iter().collect();
    let task = load(clients(&nodes).await, acked.clone(), stop_rx);
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.nodes[1].kill();
    let killed_at = Instant::now();
    let _ = stop_tx.send(true);
    task.await.expect("load");
    // The portal's load balancer takes the dead node out; the others go on.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let survivors: Vec<&Daemon> = vec![&c.nodes[0], &c.nodes[2]];
    let task = load(clients(&survivors).await, acked.clone(), stop_rx);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop_tx.send(true);
    task.await.expect("load");
    let mut acked = std::mem::take(&mut *acked.lock().expect("lock"));
    // The second load numbers its nodes 0 and 1 (= nodes 0 and 2).
    for (n, t) in acked.ok_at.iter_mut() {
        if *t > killed_at && *n == 1 {
            *n = 2;
        }
    }
    let acked = &acked;
    for i in [0usize, 2] {
        assert!(
            acked.ok_at.iter().any(|(n, t)| *n == i && *t > killed_at),
            "node {i} goes on after node 1 was killed"
        );
    }
    assert!(
        acked.ok_at.iter().any(|(n, _)| *n == 1),
        "node 1 acknowledged something before it was killed"
    );
    for i in [0usize, 2] {
        nothing_lost(&c.nodes[i], acked, c.dir.path(), &issuer_id).await;
    }
    // It starts again on the same database and knows everything.
    let snapshot = Acked {
        redeemed: acked.redeemed.clone(),
        revoked: acked.revoked.clone(),
        ..Acked::default()
    };
    c.nodes[1].start_again().expect("restart node 1");
    nothing_lost(&c.nodes[1], &snapshot, c.dir.path(), &issuer_id).await;
}

fn ip(args: &[&str]) -> bool {
    std::process::Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

/// Removes the test's network namespace and veth pair.
struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

/// Forwards TCP from `listen` to `to` (the database, as seen from the namespace). While `cut`
/// is set it forwards nothing in either direction (a black hole, as when packets are dropped:
/// connections hang rather than close); when it is cleared the held bytes flow again, as TCP
/// retransmission delivers them after a real partition heals.
async fn forward(
    listen: std::net::SocketAddr,
    to: std::net::SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        cut: Arc<std::sync::atomic::AtomicBool>,
    ) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            while cut.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
    let l = tokio::net::TcpListener::bind(listen)
        .await
        .expect("bind forwarder");
    tokio::spawn(async move {
        while let Ok((a, _)) = l.accept().await {
            let cut = cut.clone();
            tokio::spawn(async move {
                while cut.load(std::sync::atomic::Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if let Ok(b) = tokio::net::TcpStream::connect(to).await {
                    let (ar, aw) = a.into_split();
                    let (br, bw) = b.into_split();
                    tokio::spawn(pump(ar, bw, cut.clone()));
                    tokio::spawn(pump(br, aw, cut));
                }
            });
        }
    });
}

/// A partition: node 1 runs in its own network namespace and reaches PostgreSQL over a veth
/// link; the link goes down, node 0 revokes meanwhile, the link comes back and node 1 catches up
/// (its CRL and OCSP show the revocation). Needs root (namespaces); skipped otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_node_catches_up() {
    let _one = SERIAL.lock().await;
    if !have_openssl() {
        return;
    }
    let ns = format!("capart{}", std::process::id() % 100_000);
    let (veth_host, veth_ns) = (format!("vh{ns}"), format!("vn{ns}"));
    if !ip(&["netns", "add", &ns]) {
        eprintln!("SKIPPED: cannot create a network namespace (needs root and iproute2)");
        return;
    }
    let _guard = Netns(ns.clone());
    let octet = 10 + (std::process::id() % 200) as u8;
    let (host_ip, ns_ip) = (format!("10.231.{octet}.1"), format!("10.231.{octet}.2"));
    assert!(ip(&[
        "link", "add", &veth_host, "type", "veth", "peer", "name", &veth_ns
    ]));
    assert!(ip(&["link", "set", &veth_ns, "netns", &ns]));
    assert!(ip(&[
        "addr",
        "add",
        &format!("{host_ip}/30"),
        "dev",
        &veth_host
    ]));
    assert!(ip(&["link", "set", &veth_host, "up"]));
    assert!(ip(&[
        "netns",
        "exec",
        &ns,
        "ip",
        "addr",
        "add",
        &format!("{ns_ip}/30"),
        "dev",
        &veth_ns
    ]));
    assert!(ip(&[
        "netns", "exec", &ns, "ip", "link", "set", &veth_ns, "up"
    ]));
    assert!(ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]));

    let pg = integration::pg::PgCluster::start_new().expect("start PostgreSQL");
    let db = pg.create_database().expect("database");
    let dir = tempfile::tempdir().expect("tempdir");
    let data0 = dir.path().join("node0").join("var");
    let node0 = Daemon::start_with(DaemonOptions {
        data_dir: Some(data0.clone()),
        extra_args: store_args(&db),
        ..DaemonOptions::default()
    })
    .expect("node 0");
    // Node 1 reaches the database through a forwarder on the host end of the link.
    let pg_addr: std::net::SocketAddr = format!("127.0.0.1:{}", pg.port()).parse().expect("addr");
    let fwd: std::net::SocketAddr = format!("{host_ip}:{}", pg.port()).parse().expect("addr");
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    forward(fwd, pg_addr, cut.clone()).await;
    let data1 = dir.path().join("node1").join("var");
    copy_data_dir(&data0, &data1);
    let mut args1 = store_args(&db);
    args1[1] = db.url.replace("127.0.0.1", &host_ip);
    let node1 = Daemon::start_with(DaemonOptions {
        data_dir: Some(data1),
        extra_args: args1,
        wrapper: vec!["ip".into(), "netns".into(), "exec".into(), ns.clone()],
        listen_ip: Some(ns_ip.parse().expect("ip")),
        ..DaemonOptions::default()
    })
    .expect("node 1 in its namespace");

    let chain = chain(&node0).await;
    let issuer_id = integration::active_issuer(&node0).await.id;
    let (number, password) = create_ticket(&node0, 1).await;
    let r = redeem(&node1, &number, &password)
        .await
        .expect("redeem on node 1");
    let files = ocsp_files(dir.path(), &r.certificate_der, &chain[1], &chain[0]);
    assert_eq!(ocsp_status(node1.http, &files).as_deref(), Some("good"));

    // Cut node 1 off from the database (its gRPC/HTTP stay reachable for the test).
    cut.store(true, std::sync::atomic::Ordering::SeqCst);
    revoke(&node0, &r.serial).await.expect("revoke on node 0");
    until(Duration::from_secs(5), || async {
        (health_status(&node1, "pki.ca.v1.Enrollment").await == NOT_SERVING).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("node 1 never noticed the partition:\n{}", node1.log()));
    assert_eq!(health_status(&node1, "pki.ca.v1.Revocation").await, SERVING);
    // Cut off, it still serves its last CRL (without the revocation).
    let der = http_crl(&node1, &issuer_id).expect("node 1 CRL while cut off");
    assert!(!crl_serials(dir.path(), &der).contains(&r.serial));

    // The link comes back: node 1 catches up by itself.
    cut.store(false, std::sync::atomic::Ordering::SeqCst);
    let healed = Instant::now();
    let d = dir.path();
    until(Duration::from_secs(20), || async {
        http_crl(&node1, &issuer_id)
            .filter(|der| crl_serials(d, der).contains(&r.serial))
            .map(|_| ())
    })
    .await
    .unwrap_or_else(|| panic!("node 1 never caught up on the CRL:\n{}", node1.log()));
    until(Duration::from_secs(20), || async {
        (ocsp_status(node1.http, &files).as_deref() == Some("revoked")).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("node 1 OCSP never answered revoked:\n{}", node1.log()));
    eprintln!(
        "partitioned node caught up {:?} after the link came back",
        healed.elapsed()
    );
}
