//! Several daemons on one PostgreSQL (issue #15 item 3): every single-node promise holds across
//! nodes. Each test starts a real PostgreSQL (the harness's `initdb` + `pg_ctl`, see
//! `integration::pg`) and two or three real daemons on one database, and checks with
//! independent tools where a result leaves the daemon (openssl for CRLs and OCSP, psql for the
//! audit table).

mod cluster_common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cluster_common::*;
use integration::active_issuer;
use pki_proto::v1;
use tokio_stream::StreamExt as _;

/// One test at a time: each runs its own PostgreSQL and three daemons on two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// 32 concurrent redemptions of one ticket over three nodes: exactly one certificate. Wrong
/// passwords count across nodes: five in all lock the ticket. A ticket created on one node is
/// redeemed on another, and serials never repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tickets_are_redeemed_once_across_nodes() {
    let _one = SERIAL.lock().await;
    let c = start_nodes(3, true);
    let (number, password) = create_ticket(&c.nodes[0], 1).await;
    let mut tasks = Vec::new();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(32));
    for i in 0..32 {
        let mut e = c.nodes[i % 3].enrollment("portal").await.expect("client");
        let (number, password) = (number.clone(), password.clone());
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            e.redeem_ticket(v1::RedeemTicketRequest {
                number,
                password,
                os: v1::TargetOs::Unspecified as i32,
                keystore_profile: String::new(),
            })
            .await
            .map(tonic::Response::into_inner)
        }));
    }
    let mut ok = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(r) => ok.push(r.serial),
            Err(s) => {
                // The winner consumed it (UNAUTHENTICATED, one answer for every bad
                // attempt), or the node's per-ticket attempt limit answered first.
                assert!(
                    matches!(
                        s.code(),
                        tonic::Code::Unauthenticated | tonic::Code::ResourceExhausted
                    ),
                    "a losing redemption: {s:?}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!(ok.len(), 1, "exactly one of 32 redemptions wins: {ok:?}");
    assert_eq!(refused, 31);
    let listed = c.pg.psql(
        &c.db.name,
        &format!("SELECT count(*) FROM certificates WHERE ticket_number = '{number}'"),
    );
    assert_eq!(listed.expect("psql").trim(), "1", "one certificate row");

    // Wrong passwords on three nodes: five in all lock it.
    let (number, password) = create_ticket(&c.nodes[1], 2).await;
    for i in 0..5 {
        let e = redeem(&c.nodes[i % 3], &number, "00000000")
            .await
            .expect_err("wrong password");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    }
    let e = redeem(&c.nodes[2], &number, &password)
        .await
        .expect_err("locked after five wrong passwords on three nodes");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let t = c.nodes[0]
        .enrollment("portal")
        .await
        .expect("client")
        .get_ticket(v1::GetTicketRequest {
            number: number.clone(),
        })
        .await
        .expect("GetTicket")
        .into_inner();
    assert_eq!(t.state, v1::TicketState::Locked as i32, "{t:?}");
    // Five wrong ones, and the right one refused on the locked ticket counts too (#12 item 4).
    assert_eq!(t.failed_attempts, 6);

    // Created on one node, redeemed on another; serials unique over all nodes.
    let mut serials = BTreeSet::from([ok[0].clone()]);
    for i in 0..6u32 {
        let (number, password) = create_ticket(&c.nodes[i as usize % 3], 10 + i).await;
        let r = redeem(&c.nodes[(i as usize + 1) % 3], &number, &password)
            .await
            .expect("redeem on another node");
        assert!(serials.insert(r.serial.clone()), "serial repeated");
        // Every node knows it.
        for d in &c.nodes {
            let got = d
                .certificates("portal")
                .await
                .expect("client")
                .get_certificate(v1::GetCertificateRequest {
                    serial: r.serial.clone(),
                })
                .await
                .expect("GetCertificate on every node");
            assert_eq!(got.into_inner().serial, r.serial);
        }
    }
}

/// A revocation on any node is on every node's CRL (HTTP, GetCrl, WatchCrl) and OCSP answers
/// `revoked` on every node within a second; CRL numbers grow in commit order whichever node
/// publishes, and concurrent publications on all nodes never collide.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocations_reach_every_node_within_a_second() {
    let _one = SERIAL.lock().await;
    if !have_openssl() {
        return;
    }
    let c = start_nodes(3, true);
    let chain = chain(&c.nodes[0]).await;
    let (root, issuer) = (chain[0].clone(), chain[1].clone());
    let issuer_id = active_issuer(&c.nodes[0]).await.id;

    let mut worst = Duration::ZERO;
    for round in 0..3usize {
        let (number, password) = create_ticket(&c.nodes[round], 100 + round as u32).await;
        let r = redeem(&c.nodes[(round + 1) % 3], &number, &password)
            .await
            .expect("redeem");
        let files = ocsp_files(c.dir.path(), &r.certificate_der, &issuer, &root);
        // Every node has a cached `good` answer first (what a real gateway would have).
        for d in &c.nodes {
            assert_eq!(ocsp_status(d.http, &files).as_deref(), Some("good"));
        }
        // A WatchCrl stream on every node.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut streams = Vec::new();
        for (i, d) in c.nodes.iter().enumerate() {
            let mut s = d
                .revocation("gateway")
                .await
                .expect("client")
                .watch_crl(v1::WatchCrlRequest {
                    issuer_id: issuer_id.clone(),
                    all_issuers: false,
                })
                .await
                .unwrap_or_else(|e| panic!("WatchCrl on node {i}: {e:?}\n{}", d.log()))
                .into_inner();
            let tx = tx.clone();
            streams.push(tokio::spawn(async move {
                while let Some(Ok(crl)) = s.next().await {
                    if tx.send((i, Instant::now(), crl)).is_err() {
                        return;
                    }
                }
            }));
        }
        let revoker = &c.nodes[(round + 2) % 3];
        revoke(revoker, &r.serial).await.expect("revoke");
        let t0 = Instant::now();
        // OCSP, HTTP CRL and GetCrl on every node.
        for (i, d) in c.nodes.iter().enumerate() {
            let (_, took) = until(Duration::from_secs(5), || async {
                (ocsp_status(d.http, &files).as_deref() == Some("revoked")).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("node {i}: OCSP never answered revoked"));
            worst = worst.max(t0.elapsed());
            assert!(
                took <= Duration::from_secs(1),
                "node {i} OCSP took {took:?}"
            );
            let dir = c.dir.path();
            let (_, _) = until(Duration::from_secs(5), || async {
                http_crl(d, &issuer_id)
                    .filter(|der| crl_serials(dir, der).contains(&r.serial))
                    .map(|_| ())
            })
            .await
            .unwrap_or_else(|| panic!("node {i}: HTTP CRL never listed the serial"));
            let elapsed = t0.elapsed();
            worst = worst.max(elapsed);
            assert!(
                elapsed <= Duration::from_secs(1),
                "node {i}: HTTP CRL lists it after {elapsed:?}"
            );
            let got = d
                .revocation("gateway")
                .await
                .expect("client")
                .get_crl(v1::GetCrlRequest {
                    issuer_id: issuer_id.clone(),
                })
                .await
                .expect("GetCrl")
                .into_inner();
            assert!(
                crl_serials(dir, &got.der).contains(&r.serial),
                "node {i}: GetCrl"
            );
        }
        // Every stream delivered a CRL with it, within a second.
        let mut seen = BTreeSet::new();
        let deadline = t0 + Duration::from_secs(5);
        while seen.len() < 3 {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some((i, at, crl))) = tokio::time::timeout(left, rx.recv()).await else {
                panic!("WatchCrl: only nodes {seen:?} streamed the new CRL");
            };
            if crl_serials(c.dir.path(), &crl.der).contains(&r.serial) {
                let took = at.saturating_duration_since(t0);
                assert!(
                    took <= Duration::from_secs(1),
                    "node {i} WatchCrl took {took:?}"
                );
                seen.insert(i);
            }
        }
        for s in streams {
            s.abort();
        }
    }
    eprintln!("revocation -> every node's CRL and OCSP: worst {worst:?}");

    // Concurrent publications on all nodes: all succeed, numbers distinct.
    let mut tasks = Vec::new();
    for i in 0..9usize {
        let mut a = c.nodes[i % 3].admin("ops").await.expect("admin client");
        let id = issuer_id.clone();
        tasks.push(tokio::spawn(async move {
            a.publish_crl(v1::PublishCrlRequest { issuer_id: id })
                .await
                .map(|r| r.into_inner().number)
        }));
    }
    let mut numbers = BTreeSet::new();
    for t in tasks {
        let n = t
            .await
            .expect("join")
            .expect("PublishCrl on every node at once");
        assert!(numbers.insert(n), "CRL number {n} published twice");
    }
    // In commit order (the one audit chain), numbers strictly increase.
    let rows = c
        .pg
        .psql(
            &c.db.name,
            &format!(
                "SELECT detail FROM audit WHERE action = 'crl.published' AND target = 'issuer:{issuer_id}' ORDER BY seq"
            ),
        )
        .expect("psql");
    let committed: Vec<u64> = rows
        .lines()
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("number=")))
        .map(|n| n.parse().expect("number"))
        .collect();
    assert!(committed.len() >= 12, "{committed:?}");
    assert!(
        committed.windows(2).all(|w| w[0] < w[1]),
        "CRL numbers in commit order: {committed:?}"
    );
}

/// `issuer rotate` against one node switches every node (each on its own copy of the data
/// dir: nothing copied by hand afterwards) within a few seconds, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_on_one_node_switches_every_node() {
    let _one = SERIAL.lock().await;
    let c = start_nodes(3, false);
    let old = active_issuer(&c.nodes[0]).await.id;
    let dd = c.nodes[0].data_dir.display().to_string();
    let (code, out, err) = c.nodes[0]
        .cli(&["issuer", "rotate", "--data-dir", &dd, "--json"])
        .expect("run the CLI");
    assert_eq!(code, 0, "issuer rotate: {out}\n{err}");
    let new = active_issuer(&c.nodes[0]).await.id;
    assert_ne!(new, old);
    let t0 = Instant::now();
    for (i, d) in c.nodes.iter().enumerate().skip(1) {
        // What the node itself signs with (its in-memory issuer set, not the shared records).
        let ((), took) = until(Duration::from_secs(10), || async {
            let chain = d
                .revocation("gateway")
                .await
                .ok()?
                .get_ca_chain(v1::GetCaChainRequest {})
                .await
                .ok()?
                .into_inner();
            (chain.issuers.first().map(|i| i.issuer_id.as_str()) == Some(new.as_str()))
                .then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("node {i} never switched to {new}:\n{}", d.log()));
        assert!(
            took <= Duration::from_secs(5),
            "node {i} switched after {took:?}"
        );
        // Its own keys dir now has the new issuer (sealed key included).
        assert!(
            d.data_dir
                .join("keys/issuers")
                .join(&new)
                .join("issuer.key.sealed")
                .is_file()
        );
    }
    eprintln!("rotation reached every node after {:?}", t0.elapsed());
    // A redemption on a node that did not rotate is signed by the new issuer.
    let (number, password) = create_ticket(&c.nodes[2], 7).await;
    let r = redeem(&c.nodes[2], &number, &password)
        .await
        .expect("redeem");
    let got = c.nodes[1]
        .certificates("portal")
        .await
        .expect("client")
        .get_certificate(v1::GetCertificateRequest {
            serial: r.serial.clone(),
        })
        .await
        .expect("GetCertificate")
        .into_inner();
    assert_eq!(
        got.issuer_id,
        new,
        "node 2 signs with the new issuer; its log:\n{}",
        c.nodes[2].log()
    );
    // And every node serves the new issuer's CRL.
    for (i, d) in c.nodes.iter().enumerate() {
        until(Duration::from_secs(5), || async { http_crl(d, &new) })
            .await
            .unwrap_or_else(|| panic!("node {i}: no CRL for {new}"));
    }
}

/// The audit log is one chain of every node's changes: `audit verify` on any node checks all
/// of it and finds a deleted or an altered row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_is_one_chain_across_nodes() {
    let _one = SERIAL.lock().await;
    let c = start_nodes(2, true);
    for i in 0..4u32 {
        let (number, password) = create_ticket(&c.nodes[i as usize % 2], 200 + i).await;
        let r = redeem(&c.nodes[(i as usize + 1) % 2], &number, &password)
            .await
            .expect("redeem");
        if i % 2 == 0 {
            revoke(&c.nodes[0], &r.serial).await.expect("revoke");
        }
    }
    let verify = |d: &integration::Daemon| {
        let dd = d.data_dir.display().to_string();
        d.cli(&["audit", "verify", "--data-dir", &dd, "--json"])
            .expect("run the CLI")
    };
    let (code, out, err) = verify(&c.nodes[1]);
    assert_eq!(code, 0, "audit verify: {out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let entries = v["entries"].as_u64().expect("entries");
    let rows: u64 =
        c.pg.psql(&c.db.name, "SELECT count(*) FROM audit")
            .expect("psql")
            .trim()
            .parse()
            .expect("count");
    assert_eq!(entries, rows, "verify covers every node's entries");

    // Altered row.
    c.pg.psql(
        &c.db.name,
        "UPDATE audit SET detail = detail || ' (edited)' WHERE seq = 5",
    )
    .expect("psql update");
    let (code, out, _) = verify(&c.nodes[0]);
    assert_eq!(code, 2, "an altered row is found: {out}");
    // Deleted row (the altered one put back first would need its old text; a fresh database
    // is not needed: a deletion further on is reported as well, at the first break).
    c.pg.psql(&c.db.name, "DELETE FROM audit WHERE seq = 3")
        .expect("psql delete");
    let (code, out, _) = verify(&c.nodes[1]);
    assert_eq!(code, 2, "a deleted row is found: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(
        v["first_bad_entry"].as_u64().is_some_and(|s| s <= 5),
        "{out}"
    );
}

/// `store =` in the config file selects PostgreSQL as `--store` does; the password comes from
/// its file and never shows in the log; a password inside the URL (flag or `CA_DAEMON_STORE`) is
/// refused without being echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_from_config_or_environment_and_the_password_stays_secret() {
    let _one = SERIAL.lock().await;
    let pg = integration::pg::PgCluster::start_new().expect("PostgreSQL");
    let db = pg.create_database().expect("database");
    let password = std::fs::read_to_string(&db.password_file).expect("password");
    let password = password.trim();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("ca-daemon.toml");
    std::fs::write(
        &cfg,
        format!(
            "store = \"{}\"\nstore_password_file = \"{}\"\n",
            db.url,
            db.password_file.display()
        ),
    )
    .expect("write config");
    let d = integration::Daemon::start_with(integration::DaemonOptions {
        extra_args: vec!["--config".into(), cfg.display().to_string()],
        ..integration::DaemonOptions::default()
    })
    .expect("start with the store from the config file");
    let (number, pw) = create_ticket(&d, 1).await;
    redeem(&d, &number, &pw).await.expect("redeem");
    let rows = pg
        .psql(&db.name, "SELECT count(*) FROM certificates")
        .expect("psql");
    assert_eq!(rows.trim(), "1", "the certificate is in PostgreSQL");
    assert!(
        !d.data_dir.join("store").exists(),
        "no sled store next to a PostgreSQL one"
    );
    assert!(!d.log().contains(password), "the password is in the log");

    let with_password = db.url.replace("ca@", &format!("ca:{password}@"));
    let run = |envs: &[(&str, &str)], args: &[&str]| {
        let out = std::process::Command::new(integration::daemon_bin().expect("binary"))
            .args(["serve", "--dev", "--data-dir"])
            .arg(dir.path().join("other"))
            .args(args)
            .envs(envs.iter().copied())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run ca-daemon");
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    for (envs, args) in [
        (vec![], vec!["--store", with_password.as_str()]),
        (vec![("CA_DAEMON_STORE", with_password.as_str())], vec![]),
    ] {
        let (code, out) = run(&envs, &args);
        assert_ne!(code, Some(0), "{out}");
        assert!(
            out.contains("store-password-file"),
            "says what to do: {out}"
        );
        assert!(!out.contains(password), "the password is echoed: {out}");
    }
}

/// Issue #11 on PostgreSQL: a node that has published refuses a database behind what it
/// promised (here: an empty one, as after pointing it at the wrong or a lost database), with the
/// way out; on its own database it starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_refuses_a_database_behind_its_checkpoint() {
    let _one = SERIAL.lock().await;
    let c = start_nodes(1, true);
    let (number, pw) = create_ticket(&c.nodes[0], 1).await;
    let r = redeem(&c.nodes[0], &number, &pw).await.expect("redeem");
    revoke(&c.nodes[0], &r.serial).await.expect("revoke");
    let issuer_id = active_issuer(&c.nodes[0]).await.id;
    until(Duration::from_secs(5), || async {
        http_crl(&c.nodes[0], &issuer_id)
            .filter(|der| crl_serials(c.dir.path(), der).contains(&r.serial))
            .map(|_| ())
    })
    .await
    .expect("the revocation is published");
    let data_dir = c.nodes[0].data_dir.clone();
    let mut nodes = c.nodes;
    assert!(nodes[0].stop(), "stops cleanly");
    drop(nodes);

    let empty = c.pg.create_database().expect("another database");
    let d = integration::Daemon::start_with(integration::DaemonOptions {
        data_dir: Some(data_dir.clone()),
        extra_args: store_args(&empty),
        ..integration::DaemonOptions::default()
    });
    let err = match &d {
        Ok(_) => panic!("started on an empty database behind its checkpoint"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("refusing to start"), "{err}");
    assert!(
        err.contains(&format!("--store {}", empty.url)),
        "names the database: {err}"
    );
    // Its own database: fine.
    integration::Daemon::start_with(integration::DaemonOptions {
        data_dir: Some(data_dir.clone()),
        extra_args: store_args(&c.db),
        ..integration::DaemonOptions::default()
    })
    .expect("starts again on its own database")
    .stop();
    // With no other copy, `store reconcile --store` re-applies the kept revocations to the
    // empty database, and the node starts on it with the revocation still listed.
    let dd = data_dir.display().to_string();
    let pf = empty.password_file.display().to_string();
    let out = std::process::Command::new(integration::daemon_bin().expect("binary"))
        .args([
            "store",
            "reconcile",
            "--data-dir",
            &dd,
            "--store",
            &empty.url,
        ])
        .args(["--store-password-file", &pf])
        .output()
        .expect("store reconcile");
    assert!(
        out.status.success(),
        "store reconcile --store: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let d = integration::Daemon::start_with(integration::DaemonOptions {
        data_dir: Some(data_dir),
        extra_args: store_args(&empty),
        ..integration::DaemonOptions::default()
    })
    .expect("starts on the reconciled database");
    let status = d
        .revocation("gateway")
        .await
        .expect("client")
        .check_status(v1::CheckStatusRequest {
            serial: r.serial.clone(),
        })
        .await
        .expect("CheckStatus")
        .into_inner();
    assert_eq!(
        status.status,
        v1::certificate_status::Status::Revoked as i32
    );
}
