//! A real, throw-away PostgreSQL for tests (issue #15): `initdb` in a temp dir, `pg_ctl start`
//! on a free 127.0.0.1 port with its socket in the temp dir, one database per test.
//!
//! - As root (CI), the cluster belongs to the `postgres` user (PostgreSQL refuses to run as
//!   root): its directories are chowned to it and the server commands run through
//!   `runuser -u postgres --`. As a normal user they run directly.
//! - `fsync=off` by default (tests do not survive power loss anyway); [`PgClusterOptions`]
//!   keeps it on for benchmarks.
//! - Never left running: [`PgCluster`] stops the server in `Drop`, and a watchdog process
//!   stops it (`pg_ctl stop -m immediate`) once the test process has gone, even after
//!   SIGKILL.
//! - [`PgCluster::stop`], [`PgCluster::start`] and [`PgCluster::restart`] keep the port, for
//!   fault tests.
//!
//! Authentication is scram-sha-256 for the superuser `ca`, whose password is in
//! [`PgCluster::password_file`] (what a daemon gets as `--store-password-file`).
//!
//! [`PgCluster::start_tls`] starts it with `ssl=on` and the test's server certificate and key
//! (written into the data dir, the key 0600 and owned by the server's user, as PostgreSQL
//! demands), an optional CA for client certificates (`ssl_ca_file`) and the test's own
//! `pg_hba.conf` lines (`hostssl`, `hostnossl ... reject`); [`PgCluster::set_hba`] and
//! [`PgCluster::reload`] change them on the running server.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{HarnessError, io};

/// The superuser every test connects as.
pub const USER: &str = "ca";

/// How to run the cluster.
#[derive(Debug, Clone, Copy, Default)]
pub struct PgClusterOptions {
    /// Keep `fsync` on (benchmarks); off by default.
    pub fsync: bool,
}

/// TLS of a cluster started by [`PgCluster::start_tls`] (PEM texts made by the test).
#[derive(Clone)]
pub struct PgServerTls {
    /// The server certificate (chain), `ssl_cert_file`.
    pub cert_pem: String,
    /// Its private key, `ssl_key_file`.
    pub key_pem: String,
    /// CAs of client certificates (`ssl_ca_file`), for `clientcert=` lines.
    pub client_ca_pem: Option<String>,
    /// The whole `pg_hba.conf` (one rule a line).
    pub hba: Vec<String>,
}

impl std::fmt::Debug for PgServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgServerTls")
            .field("hba", &self.hba)
            .finish_non_exhaustive()
    }
}

/// A running throw-away PostgreSQL cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    opts: PgClusterOptions,
    watchdog: Option<Child>,
    password: String,
    next_db: AtomicU32,
}

/// One test's database.
#[derive(Debug, Clone)]
pub struct PgDatabase {
    /// Its name.
    pub name: String,
    /// `postgresql://ca@127.0.0.1:PORT/NAME` (no password in it).
    pub url: String,
    /// The file with the password.
    pub password_file: PathBuf,
}

impl std::fmt::Debug for PgCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCluster")
            .field("dir", &self.dir.path())
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// The PostgreSQL server binaries: `$PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`.
pub fn pg_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PG_BIN") {
        return Some(PathBuf::from(p));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn postgres_ids() -> Result<(u32, u32), HarnessError> {
    let id = |flag: &str| -> Result<u32, HarnessError> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .map_err(io("id postgres"))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| {
                HarnessError::NotReady("no `postgres` user (apt-get install postgresql)".into())
            })
    };
    Ok((id("-u")?, id("-g")?))
}

fn free_port() -> Result<u16, HarnessError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("bind a free port"))?;
    Ok(l.local_addr().map_err(io("local addr"))?.port())
}

impl PgCluster {
    /// initdb + start with the default options.
    pub fn start_new() -> Result<Self, HarnessError> {
        Self::start_with(PgClusterOptions::default())
    }

    /// initdb + start.
    pub fn start_with(opts: PgClusterOptions) -> Result<Self, HarnessError> {
        Self::start_inner(opts, None)
    }

    /// initdb + start with `ssl=on`, the given certificate files and `pg_hba.conf`.
    pub fn start_tls(tls: &PgServerTls) -> Result<Self, HarnessError> {
        Self::start_inner(PgClusterOptions::default(), Some(tls))
    }

    fn start_inner(
        opts: PgClusterOptions,
        tls: Option<&PgServerTls>,
    ) -> Result<Self, HarnessError> {
        let bin = pg_bin().ok_or_else(|| {
            HarnessError::NotReady(
                "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin; apt-get install postgresql, or set PG_BIN)"
                    .into(),
            )
        })?;
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("ca-pg-")
            .tempdir()
            .map_err(io("temp dir"))?;
        let password = hex::encode(rand::random::<[u8; 16]>());
        let mut cluster = Self {
            dir,
            bin,
            port: free_port()?,
            as_postgres,
            opts,
            watchdog: None,
            password,
            next_db: AtomicU32::new(1),
        };
        cluster.init()?;
        if let Some(tls) = tls {
            cluster.configure_tls(tls)?;
        }
        cluster.start()?;
        cluster.watchdog = Some(cluster.spawn_watchdog()?);
        Ok(cluster)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn sock_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("run").join("postgres.log")
    }

    /// The file holding the superuser's password.
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("password")
    }

    /// The TCP port (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A server command, as `postgres` when we are root.
    fn server_cmd(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn init(&self) -> Result<(), HarnessError> {
        let root = self.dir.path();
        std::fs::write(self.password_file(), &self.password).map_err(io("password file"))?;
        let pwfile = root.join("pwfile");
        std::fs::write(&pwfile, format!("{}\n", self.password)).map_err(io("pwfile"))?;
        for d in [self.data_dir(), self.sock_dir()] {
            std::fs::create_dir(&d).map_err(io("mkdir"))?;
        }
        if self.as_postgres {
            use std::os::unix::fs::PermissionsExt;
            let (uid, gid) = postgres_ids()?;
            // postgres must reach its directories inside our temp dir.
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711))
                .map_err(io("chmod temp dir"))?;
            for p in [self.data_dir(), self.sock_dir(), pwfile.clone()] {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid)).map_err(io("chown"))?;
            }
        }
        let out = self
            .server_cmd("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "-U",
                USER,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdin(Stdio::null())
            .output()
            .map_err(io("initdb"))?;
        let _ = std::fs::remove_file(&pwfile);
        if !out.status.success() {
            return Err(HarnessError::NotReady(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Writes the certificate files into the data dir, `ssl = on` into postgresql.conf (so that
    /// `ALTER SYSTEM SET ssl = off` can override it) and the `pg_hba.conf`.
    fn configure_tls(&self, tls: &PgServerTls) -> Result<(), HarnessError> {
        use std::os::unix::fs::PermissionsExt;
        let data = self.data_dir();
        let mut files = vec![
            ("server.crt", tls.cert_pem.as_str(), 0o644),
            ("server.key", tls.key_pem.as_str(), 0o600),
        ];
        if let Some(ca) = &tls.client_ca_pem {
            files.push(("client-ca.crt", ca.as_str(), 0o644));
        }
        for (name, text, mode) in &files {
            let p = data.join(name);
            std::fs::write(&p, text).map_err(io("write TLS file"))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))
                .map_err(io("chmod TLS file"))?;
            if self.as_postgres {
                let (uid, gid) = postgres_ids()?;
                std::os::unix::fs::chown(&p, Some(uid), Some(gid)).map_err(io("chown"))?;
            }
        }
        let mut conf = String::from(
            "\n# care-pki test TLS\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        );
        if tls.client_ca_pem.is_some() {
            conf.push_str("ssl_ca_file = 'client-ca.crt'\n");
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .map_err(io("open postgresql.conf"))?;
        std::io::Write::write_all(&mut f, conf.as_bytes()).map_err(io("postgresql.conf"))?;
        self.write_hba(&tls.hba)
    }

    fn write_hba(&self, lines: &[String]) -> Result<(), HarnessError> {
        // Local (socket) access for pg_ctl and maintenance stays as initdb set it.
        let text = format!("local all all scram-sha-256\n{}\n", lines.join("\n"));
        let p = self.data_dir().join("pg_hba.conf");
        std::fs::write(&p, text).map_err(io("write pg_hba.conf"))?;
        if self.as_postgres {
            let (uid, gid) = postgres_ids()?;
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).map_err(io("chown"))?;
        }
        Ok(())
    }

    /// Replaces `pg_hba.conf` with `local all all scram-sha-256` and `lines`, and reloads.
    pub fn set_hba(&self, lines: &[String]) -> Result<(), HarnessError> {
        self.write_hba(lines)?;
        self.reload()
    }

    /// `SELECT pg_reload_conf()`: configuration files (and `ALTER SYSTEM`) take effect for
    /// new connections.
    pub fn reload(&self) -> Result<(), HarnessError> {
        self.psql("postgres", "SELECT pg_reload_conf()").map(drop)
    }

    /// Starts the (stopped) server on its port; waits until it accepts connections.
    pub fn start(&self) -> Result<(), HarnessError> {
        let fsync = if self.opts.fsync { "on" } else { "off" };
        let options = format!(
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync={fsync} -c full_page_writes={fsync} -c max_connections=200 -c shared_buffers=32MB",
            self.port,
            self.sock_dir().display()
        );
        let out = self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_file())
            .args(["-o", &options, "-w", "-t", "30", "start"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(io("pg_ctl start"))?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
            return Err(HarnessError::NotReady(format!(
                "pg_ctl start failed: {}\n{log}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Stops the server (fast shutdown: connections are closed).
    pub fn stop(&self) -> Result<(), HarnessError> {
        self.pg_ctl_stop("fast")
    }

    /// Stops and starts the server on the same port.
    pub fn restart(&self) -> Result<(), HarnessError> {
        self.stop()?;
        self.start()
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), HarnessError> {
        let out = self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", mode, "-w", "-t", "30", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(io("pg_ctl stop"))?;
        if !out.status.success() {
            return Err(HarnessError::NotReady(format!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// A process that stops the cluster once this (test) process is gone.
    fn spawn_watchdog(&self) -> Result<Child, HarnessError> {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = if self.as_postgres {
            format!(
                "runuser -u postgres -- '{}' -D '{}' -m immediate stop",
                pg_ctl.display(),
                self.data_dir().display()
            )
        } else {
            format!(
                "'{}' -D '{}' -m immediate stop",
                pg_ctl.display(),
                self.data_dir().display()
            )
        };
        // Also removes the temp dir: a cluster in a `static` is never dropped.
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            dir = self.dir.path().display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io("watchdog"))
    }

    /// The URL of database `name` (no password in it).
    pub fn url(&self, name: &str) -> String {
        format!("postgresql://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a new, empty database for one test.
    pub fn create_database(&self) -> Result<PgDatabase, HarnessError> {
        let name = format!(
            "test_{}_{}",
            std::process::id(),
            self.next_db.fetch_add(1, Ordering::SeqCst)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(PgDatabase {
            url: self.url(&name),
            password_file: self.password_file(),
            name,
        })
    }

    /// Runs SQL with `psql` on database `db`; returns its unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, HarnessError> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                db,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-X", "-A", "-t", "-q", "-c", sql])
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .map_err(io("psql"))?;
        if !out.status.success() {
            return Err(HarnessError::NotReady(format!(
                "psql failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The temp dir the cluster lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl_stop("immediate");
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}
