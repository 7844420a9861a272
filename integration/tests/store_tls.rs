//! TLS between the daemon and PostgreSQL: the store URL's libpq `sslmode` / `sslrootcert` /
//! `sslcert` / `sslkey`, against a real PostgreSQL started with `ssl=on` and a server
//! certificate for 127.0.0.1 and localhost made here with rcgen. What the server saw is read
//! from the server itself (`pg_stat_ssl`), not from the daemon.
//!
//! One PostgreSQL for the whole file; the refusals reuse the data dir of the first daemon, so
//! they fail at the database link and not while making a dev PKI.

mod cluster_common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ca_daemon::store::{PgOptions, PgStore};
use cluster_common::{create_ticket, redeem};
use integration::pg::{PgCluster, PgDatabase, PgServerTls};
use integration::{Daemon, DaemonOptions, HarnessError};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use zeroize::Zeroizing;

/// A CA that can sign; its certificate's PEM.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn test_ca(name: &str) -> TestCa {
    let now = time::OffsetDateTime::now_utc();
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(30);
    let key = KeyPair::generate().expect("key");
    let pem = p.self_signed(&key).expect("self-sign").pem();
    TestCa {
        issuer: Issuer::new(p, key),
        pem,
    }
}

/// A leaf of `ca` for `names` (IP addresses become IP SANs), with `cn`: (cert PEM, key PEM).
fn leaf(ca: &TestCa, cn: &str, names: &[&str], client: bool) -> (String, String) {
    let now = time::OffsetDateTime::now_utc();
    let mut p = CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
        .expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::ExplicitNoCa;
    p.extended_key_usages = vec![if client {
        rcgen::ExtendedKeyUsagePurpose::ClientAuth
    } else {
        rcgen::ExtendedKeyUsagePurpose::ServerAuth
    }];
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(30);
    let key = KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, &ca.issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    p
}

/// `db`'s URL with `params`, and on another host name if given (connected through
/// `hostaddr=127.0.0.1`, libpq's way to check a name that is not the address).
fn url(db: &PgDatabase, host: Option<&str>, params: &str) -> String {
    match host {
        Some(h) => format!(
            "{}?hostaddr=127.0.0.1&{params}",
            db.url.replacen("127.0.0.1", h, 1)
        ),
        None => format!("{}?{params}", db.url),
    }
}

fn daemon_on(data_dir: &Path, store_url: &str, db: &PgDatabase) -> Result<Daemon, HarnessError> {
    Daemon::start_with(DaemonOptions {
        data_dir: Some(data_dir.to_path_buf()),
        extra_args: vec![
            "--store".into(),
            store_url.to_owned(),
            "--store-password-file".into(),
            db.password_file.display().to_string(),
        ],
        ..DaemonOptions::default()
    })
}

/// Starts a daemon that must refuse; its log.
fn refused(data_dir: &Path, store_url: &str, db: &PgDatabase) -> String {
    let started = Instant::now();
    match daemon_on(data_dir, store_url, db) {
        Ok(_) => panic!("the daemon started with --store {store_url}"),
        Err(HarnessError::NotReady(log)) => {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "refusing took {:?}",
                started.elapsed()
            );
            log
        }
        Err(e) => panic!("{e}"),
    }
}

/// Connects the store library directly (quicker than a daemon for the finer cases).
fn connect(store_url: &str, db: &PgDatabase) -> Result<PgStore, String> {
    let password = std::fs::read_to_string(&db.password_file).expect("password");
    let mut o = PgOptions::from_url(store_url, Some(Zeroizing::new(password.trim().to_owned())))
        .map_err(|e| e.to_string())?;
    o.pool_size = 2;
    o.connect_timeout = Duration::from_secs(5);
    PgStore::connect(&o).map_err(|e| e.to_string())
}

/// (connections, all on TLS, TLS versions) of the daemons on the server, from pg_stat_ssl.
fn daemon_ssl(pg: &PgCluster, extra: &str) -> (u32, bool, String) {
    let out = pg
        .psql(
            "postgres",
            &format!(
                "SELECT count(*), coalesce(bool_and(ssl), false), coalesce(string_agg(DISTINCT version, ','), '') \
                 FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
                 WHERE application_name = 'ca-daemon' {extra}"
            ),
        )
        .expect("psql pg_stat_ssl");
    let mut f = out.split('|');
    let n = f.next().unwrap_or_default().parse().unwrap_or(0);
    let all = f.next() == Some("t");
    (n, all, f.next().unwrap_or_default().to_owned())
}

fn assert_names_url(log: &str, display: &str) {
    assert!(
        log.contains(&format!("cannot connect to {display} with sslmode=")),
        "the refusal names the URL (without parameters) and the mode: {log}"
    );
}

/// Everything on one server: verify-full serves a redemption over TLS (seen by the server,
/// the pool's and the listener's connections); a wrong CA, a wrong host name, no TLS where
/// the server demands it, and `require` against a server without TLS all refuse to start with
/// a clear message; verify-ca checks the chain but not the name; a client certificate is
/// presented where the server asks for one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_link_is_tls_and_the_server_is_verified() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("tmp");
    let ca = test_ca("care-pki test database CA");
    let rogue = test_ca("care-pki rogue CA");
    let client_ca = test_ca("care-pki test database client CA");
    let (server_cert, server_key) = leaf(&ca, "db.test", &["localhost", "127.0.0.1"], false);
    let ca_pem = write(dir.path(), "ca.pem", &ca.pem, 0o644);
    let rogue_pem = write(dir.path(), "rogue.pem", &rogue.pem, 0o644);
    let pg = PgCluster::start_tls(&PgServerTls {
        cert_pem: server_cert,
        key_pem: server_key,
        client_ca_pem: Some(client_ca.pem.clone()),
        hba: vec![
            "hostssl all ca_cert 127.0.0.1/32 scram-sha-256 clientcert=verify-full".into(),
            "hostssl all all 127.0.0.1/32 scram-sha-256".into(),
            "hostnossl all all 127.0.0.1/32 reject".into(),
        ],
    })
    .expect("start PostgreSQL with TLS");
    let db = pg.create_database().expect("create database");
    let display = db.url.clone();
    let data_dir = dir.path().join("node").join("var");

    // verify-full with the right CA: a redemption is served, on TLS connections only.
    let good = url(
        &db,
        None,
        &format!("sslmode=verify-full&sslrootcert={}", ca_pem.display()),
    );
    let mut d = daemon_on(&data_dir, &good, &db).expect("daemon on verify-full");
    let (number, password) = create_ticket(&d, 1).await;
    let r = redeem(&d, &number, &password).await.expect("redeem");
    assert!(!r.serial.is_empty());
    let rows = pg
        .psql(
            &db.name,
            &format!(
                "SELECT count(*) FROM certificates WHERE serial = '{}'",
                r.serial
            ),
        )
        .expect("psql");
    assert_eq!(rows, "1", "the certificate is in PostgreSQL");
    let (n, all_tls, versions) = daemon_ssl(&pg, "");
    assert!(n >= 2, "the pool and the listener are connected: {n}");
    assert!(
        all_tls,
        "every connection of the daemon is TLS ({versions})"
    );
    assert!(versions.starts_with("TLSv1."), "{versions}");
    // The listener connects on its own task, just after the pool: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (listeners, listener_tls) = loop {
        let (n, tls, _) = daemon_ssl(&pg, "AND query LIKE 'LISTEN%'");
        if n > 0 || Instant::now() > deadline {
            break (n, tls);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        (listeners, listener_tls),
        (1, true),
        "the LISTEN connection is TLS"
    );
    assert!(
        d.log()
            .contains("sslmode=verify-full (certificate chain and host name verified)"),
        "the start log says what is verified"
    );
    d.stop();

    // A CA that did not issue the server's certificate.
    let log = refused(
        &data_dir,
        &url(
            &db,
            None,
            &format!("sslmode=verify-full&sslrootcert={}", rogue_pem.display()),
        ),
        &db,
    );
    assert_names_url(&log, &display);
    assert!(log.contains("not issued by a CA of sslrootcert"), "{log}");

    // The right CA but a host name the certificate does not carry.
    let wrong_host = url(
        &db,
        Some("db.elsewhere.test"),
        &format!("sslmode=verify-full&sslrootcert={}", ca_pem.display()),
    );
    let log = refused(&data_dir, &wrong_host, &db);
    assert_names_url(&log, &display.replacen("127.0.0.1", "db.elsewhere.test", 1));
    assert!(log.contains("does not name the host"), "{log}");

    // verify-ca checks the chain, not the name.
    let ca_only = url(
        &db,
        Some("db.elsewhere.test"),
        &format!("sslmode=verify-ca&sslrootcert={}", ca_pem.display()),
    );
    drop(connect(&ca_only, &db).expect("verify-ca ignores the host name"));
    let e = connect(
        &url(
            &db,
            None,
            &format!("sslmode=verify-ca&sslrootcert={}", rogue_pem.display()),
        ),
        &db,
    )
    .err()
    .unwrap_or_default();
    assert!(e.contains("not issued by a CA of sslrootcert"), "{e}");

    // No TLS where the server's pg_hba.conf says `hostnossl ... reject`.
    let log = refused(&data_dir, &url(&db, None, "sslmode=disable"), &db);
    assert_names_url(&log, &display);
    assert!(
        log.contains("pg_hba.conf") && log.contains("no encryption"),
        "{log}"
    );

    // A client certificate where the server asks for one (clientcert=verify-full: CN = user).
    let pw = std::fs::read_to_string(&db.password_file).expect("password");
    pg.psql(
        "postgres",
        &format!(
            "CREATE ROLE ca_cert LOGIN SUPERUSER PASSWORD '{}'",
            pw.trim()
        ),
    )
    .expect("create role");
    let (cc, ck) = leaf(&client_ca, "ca_cert", &[], true);
    let cc = write(dir.path(), "client.pem", &cc, 0o644);
    let ck = write(dir.path(), "client.key", &ck, 0o600);
    let as_cert_user = db.url.replacen("ca@", "ca_cert@", 1);
    let verify = format!("sslmode=verify-full&sslrootcert={}", ca_pem.display());
    let e = connect(&format!("{as_cert_user}?{verify}"), &db)
        .err()
        .unwrap_or_default();
    assert!(
        e.contains("requires a valid client certificate"),
        "no client certificate: {e}"
    );
    let store = connect(
        &format!(
            "{as_cert_user}?{verify}&sslcert={}&sslkey={}",
            cc.display(),
            ck.display()
        ),
        &db,
    )
    .expect("connect with a client certificate");
    let (n, all_tls, _) = daemon_ssl(&pg, "AND usename = 'ca_cert'");
    assert!(n >= 1 && all_tls, "{n} {all_tls}");
    drop(store);

    // A Unix socket: no TLS whatever sslmode says (libpq's rule; PostgreSQL offers none there).
    let socket = pg
        .dir()
        .join("run")
        .display()
        .to_string()
        .replace('/', "%2F");
    let on_socket = format!(
        "postgresql://ca@{socket}:{}/{}?sslmode=require",
        pg.port(),
        db.name
    );
    drop(connect(&on_socket, &db).expect("require is ignored on a Unix socket"));

    // The default (prefer) takes TLS when the server offers it.
    let preferred = connect(&db.url, &db).expect("prefer");
    let (n, all_tls, _) = daemon_ssl(&pg, "");
    assert!(
        n >= 1 && all_tls,
        "prefer uses the server's TLS: {n} {all_tls}"
    );
    drop(preferred);

    // A server without TLS: `require` refuses, the default (prefer) goes on without it.
    pg.set_hba(&["host all all 127.0.0.1/32 scram-sha-256".into()])
        .expect("hba");
    pg.psql("postgres", "ALTER SYSTEM SET ssl = off")
        .expect("ssl off");
    pg.reload().expect("reload");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg
        .psql(
            "postgres",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
        .expect("psql")
        != "f"
    {
        assert!(Instant::now() < deadline, "ssl = off did not take effect");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = refused(&data_dir, &url(&db, None, "sslmode=require"), &db);
    assert_names_url(&log, &display);
    assert!(log.contains("server does not support TLS"), "{log}");
    let plain = connect(&db.url, &db).expect("prefer without TLS on the server");
    let (n, all_tls, _) = daemon_ssl(&pg, "");
    assert!(
        n >= 1 && !all_tls,
        "prefer fell back to plain: {n} {all_tls}"
    );
    drop(plain);
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t0.elapsed()
    );
}
