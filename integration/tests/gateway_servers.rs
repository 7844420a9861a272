//! The gateways networks already run (issue #14 item 5): Debian's real `nginx` (nginx-light) and
//! `haproxy` on loopback, in front of nothing but a fixed answer, verifying devices against the
//! daemon's device root with the CRL bundle that `ca-daemon crl sync` keeps up to date (and
//! reloads them after each write). Checked with curl using each device's certificate and key
//! out of its PKCS#12 bundle:
//!
//! - a good device gets through both;
//! - a device of an unknown CA is refused by both;
//! - a revoked device is refused by both within a few seconds of the `Revoke` ack;
//! - after `ca-daemon issuer rotate`, a device of the new issuer gets through both without
//!   anything restarted or edited by hand;
//! - after the daemon restarts, `crl sync` reconnects by itself and the next revocation still
//!   reaches both.
//!
//! The configurations are the ones in docs/gateways.md (paths and ports filled in).
#![forbid(unsafe_code)]

mod edge_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edge_common::{Device, enroll, have_openssl, revoke, rotate, write_pem};
use integration::tools::{self, run, text};
use integration::{Daemon, daemon_bin, free_port};

/// Revocation and rotation must reach both servers within this time.
const REACH_LIMIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(200);

/// A child process stopped with SIGTERM (then SIGKILL) when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc { name, child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.log());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have(program: &str, probe: &[&str], install: &str) -> bool {
    tools::require(Path::new(program), probe, install)
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = run(Command::new("openssl").current_dir(dir).args(args));
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
}

/// The TLS server certificate of both servers (self-signed, localhost) and a client of a CA
/// the daemon never heard of.
fn make_other_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost",
    ]);
    openssl(dir, &a);
    let combined = [
        std::fs::read(dir.join("server.crt")).expect("server.crt"),
        std::fs::read(dir.join("server.key")).expect("server.key"),
    ]
    .concat();
    std::fs::write(dir.join("server-combined.pem"), combined).expect("combined");
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "other-ca.key",
        "-out",
        "other-ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=Some Other Device CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &a);
    let mut a = vec!["req"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "other.key",
        "-out",
        "other.csr",
        "-subj",
        "/CN=intruder",
    ]);
    openssl(dir, &a);
    std::fs::write(dir.join("other.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "other.csr",
            "-CA",
            "other-ca.crt",
            "-CAkey",
            "other-ca.key",
            "-days",
            "2",
            "-out",
            "other.crt",
            "-extfile",
            "other.ext",
        ],
    );
}

/// nginx.conf as in docs/gateways.md, for an unprivileged run under `dir`.
fn nginx_conf(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        r#"# test run: everything under {d}
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {d}/nginx-access.log;
    client_body_temp_path {d}/nginx-tmp;
    proxy_temp_path {d}/nginx-tmp;
    fastcgi_temp_path {d}/nginx-tmp;
    uwsgi_temp_path {d}/nginx-tmp;
    scgi_temp_path {d}/nginx-tmp;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate     {d}/server.crt;
        ssl_certificate_key {d}/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        # Devices: the device root is the only trust anchor; issuers come from the client.
        ssl_client_certificate {d}/device-root.pem;
        ssl_verify_client on;
        ssl_verify_depth 2;
        # Every live issuer's CRL and the root's, kept current by `ca-daemon crl sync`.
        ssl_crl {d}/care-crl.pem;
        location / {{
            default_type text/plain;
            return 200 "hello $ssl_client_s_dn\n";
        }}
    }}
}}
"#
    )
}

/// haproxy.cfg as in docs/gateways.md.
fn haproxy_conf(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        r#"global
    pidfile {d}/haproxy.pid
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend devices
    bind 127.0.0.1:{port} ssl crt {d}/server-combined.pem ca-file {d}/device-root.pem verify required crl-file {d}/care-crl.pem
    http-request return status 200 content-type text/plain lf-string "hello %[ssl_c_s_dn]\n"
"#
    )
}

/// curl with a client certificate and key: Ok(body) on HTTP 200, Err(what happened) otherwise.
fn curl(dir: &Path, port: u16, cert: &Path, key: &Path) -> Result<String, String> {
    let out = run(Command::new("curl")
        .current_dir(dir)
        .args(["-sS", "--max-time", "5", "--cacert", "server.crt"])
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .args(["-w", "\n%{http_code}"])
        .arg(format!("https://localhost:{port}/")));
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    let code = t.lines().last().unwrap_or_default().to_string();
    if out.status.success() && code == "200" {
        Ok(t)
    } else {
        Err(format!(
            "curl exit {:?}, HTTP {code}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn device_ok(dir: &Path, port: u16, dev: &Device) -> Result<String, String> {
    curl(dir, port, &dev.cert_pem, &dev.key_pem)
}

/// Polls until `want(curl result)` holds for every port; returns the time it took.
fn wait_for(
    what: &str,
    dir: &Path,
    ports: &[(&str, u16)],
    dev: &Device,
    admitted: bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let states: Vec<(&str, Result<String, String>)> = ports
            .iter()
            .map(|(name, port)| (*name, device_ok(dir, *port, dev)))
            .collect();
        if states.iter().all(|(_, r)| r.is_ok() == admitted) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < REACH_LIMIT,
            "{what}: not reached within {REACH_LIMIT:?}: {states:?}"
        );
        std::thread::sleep(POLL);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_and_haproxy_follow_crl_sync_for_revocations_and_rotations() {
    if !have_openssl()
        || !have(
            "nginx",
            &["-v"],
            "nginx-light (apt-get install nginx-light)",
        )
        || !have("haproxy", &["-v"], "haproxy (apt-get install haproxy)")
        || !have("curl", &["--version"], "curl (apt-get install curl)")
    {
        return;
    }
    let mut d = Daemon::start().expect("daemon starts");
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("nginx-tmp")).expect("nginx temp dir");
    make_other_certs(dir);
    let good = enroll(&d, dir, 1).await;
    let victim = enroll(&d, dir, 2).await;
    write_pem(
        &dir.join("device-root.pem"),
        "CERTIFICATE",
        &[&good.root_der],
    );

    let crl_file = dir.join("care-crl.pem");
    let dd = d.data_dir.display().to_string();
    let server = format!("https://{}", d.grpc);
    let dev = d.dev_dir();
    let sync_args = |cmd: &mut Command| {
        cmd.args(["crl", "sync", "--server", &server, "--data-dir", &dd])
            .arg("--client-cert")
            .arg(dev.join("gateway.crt"))
            .arg("--client-key")
            .arg(dev.join("gateway.key"))
            .arg("--out")
            .arg(&crl_file);
    };
    // The file must exist before the servers start: one write, then exit.
    let mut once = Command::new(daemon_bin().expect("daemon binary"));
    sync_args(&mut once);
    let out = run(once.arg("--once"));
    assert!(out.status.success(), "crl sync --once: {}", text(&out));
    let first = std::fs::read_to_string(&crl_file).expect("bundle written");
    assert_eq!(
        first.matches("BEGIN X509 CRL").count(),
        2,
        "issuer + root CRL"
    );

    let nginx_port = free_port().expect("port");
    let haproxy_port = free_port().expect("port");
    std::fs::write(dir.join("nginx.conf"), nginx_conf(dir, nginx_port)).expect("nginx.conf");
    std::fs::write(dir.join("haproxy.cfg"), haproxy_conf(dir, haproxy_port)).expect("haproxy.cfg");
    let mut nginx = Proc::spawn(
        "nginx",
        Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf")),
        dir.join("nginx.out"),
    );
    let mut haproxy = Proc::spawn(
        "haproxy",
        Command::new("haproxy")
            .arg("-W")
            .arg("-f")
            .arg(dir.join("haproxy.cfg")),
        dir.join("haproxy.out"),
    );
    // The reload command crl sync runs after each write: nginx re-reads ssl_crl on HUP
    // (`nginx -s reload`), the HAProxy master re-execs on USR2.
    let reload = format!(
        "nginx -p {d} -c {d}/nginx.conf -s reload; kill -USR2 $(cat {d}/haproxy.pid)",
        d = dir.display()
    );
    let mut follow = Command::new(daemon_bin().expect("daemon binary"));
    sync_args(&mut follow);
    let mut sync = Proc::spawn(
        "crl sync",
        follow.arg("--exec").arg(&reload).env("RUST_LOG", "info"),
        dir.join("sync.out"),
    );
    let ports = [("nginx", nginx_port), ("haproxy", haproxy_port)];
    let started = Instant::now();
    while ports
        .iter()
        .any(|(_, p)| std::net::TcpStream::connect(("127.0.0.1", *p)).is_err())
    {
        nginx.assert_running();
        haproxy.assert_running();
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "servers listen"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A good device gets through; a device of another CA does not.
    for (name, port) in ports {
        let body = device_ok(dir, port, &good)
            .unwrap_or_else(|e| panic!("{name}, good device: {e}\n{}", nginx.log()));
        assert!(
            body.starts_with("hello ") && body.contains("CN"),
            "{name}: {body}"
        );
        assert!(
            device_ok(dir, port, &victim).is_ok(),
            "{name}: device 2 before revocation"
        );
        let other = curl(dir, port, &dir.join("other.crt"), &dir.join("other.key"));
        assert!(
            other.is_err(),
            "{name} let a device of an unknown CA in: {other:?}"
        );
    }

    // Revocation reaches both within seconds, through crl sync.
    let acked = revoke(&d, &victim.serial).await;
    wait_for("revocation", dir, &ports, &victim, false);
    println!(
        "revoked device refused by nginx and HAProxy {} ms after the Revoke ack",
        acked.elapsed().as_millis()
    );
    for (name, port) in ports {
        assert!(
            device_ok(dir, port, &good).is_ok(),
            "{name}: good device after the revocation"
        );
    }

    // Rotation: a device of the new issuer gets through, nothing restarted by hand.
    let nginx_pid = nginx.pid();
    let haproxy_pid = haproxy.pid();
    let new_issuer = rotate(&d);
    let rotated = Instant::now();
    let third = enroll(&d, dir, 3).await;
    wait_for("device of the new issuer", dir, &ports, &third, true);
    println!(
        "device of the new issuer {new_issuer} admitted by nginx and HAProxy {} ms after `issuer rotate`",
        rotated.elapsed().as_millis()
    );
    for (name, port) in ports {
        assert!(
            device_ok(dir, port, &good).is_ok(),
            "{name}: retiring issuer's device"
        );
        assert!(
            device_ok(dir, port, &victim).is_err(),
            "{name}: revoked stays revoked"
        );
    }
    let bundle = std::fs::read_to_string(&crl_file).expect("bundle");
    assert_eq!(
        bundle.matches("BEGIN X509 CRL").count(),
        3,
        "two issuers + root"
    );

    // The daemon goes away and comes back: crl sync reconnects by itself (back-off), and the
    // next revocation still reaches both servers; meanwhile the file in place stayed.
    d.restart().expect("daemon restarts");
    assert_eq!(
        std::fs::read_to_string(&crl_file).expect("bundle"),
        bundle,
        "the file in place is kept while the daemon is away"
    );
    let acked = revoke(&d, &third.serial).await;
    wait_for(
        "revocation after a daemon restart",
        dir,
        &ports,
        &third,
        false,
    );
    println!(
        "after a daemon restart: revocation reached nginx and HAProxy {} ms after the Revoke ack",
        acked.elapsed().as_millis()
    );
    nginx.assert_running();
    haproxy.assert_running();
    sync.assert_running();
    assert_eq!(
        (nginx.pid(), haproxy.pid()),
        (nginx_pid, haproxy_pid),
        "same processes"
    );
    let sync_log = sync.log();
    assert!(
        sync_log.contains("CRL bundle written"),
        "crl sync log:\n{sync_log}"
    );
    assert!(
        !sync_log.contains("reload command failed"),
        "crl sync log:\n{sync_log}"
    );
}
