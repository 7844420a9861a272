//! TLS between the daemon and PostgreSQL: libpq's `sslmode`, `sslrootcert`, `sslcert` and
//! `sslkey` URL parameters, on rustls 0.23 (ring).
//!
//! # Modes
//! | `sslmode` | TLS | server certificate |
//! | --- | --- | --- |
//! | `disable` | never | - |
//! | `prefer` (the default, as libpq's) | if the server offers it | not checked |
//! | `require` | always (refused if the server has none) | not checked |
//! | `verify-ca` | always | chain to `sslrootcert` |
//! | `verify-full` | always | chain to `sslrootcert` and host name (DNS or IP SAN) |
//!
//! As with libpq, an `sslrootcert` given with `prefer` or `require` also has the chain
//! checked (`require` then behaves as `verify-ca`). `verify-ca` / `verify-full` without
//! `sslrootcert` are refused: a database link of an internal PKI is served by a private CA,
//! and trusting the public web roots for it would let any public CA impersonate the database.
//! The host name checked is the URL's host (with `hostaddr=` the TCP address can differ, as in
//! libpq). Unverified modes still encrypt (and check the handshake signature against the
//! presented certificate) but do not authenticate the server. When every host is a Unix
//! socket the mode is ignored, as libpq does (PostgreSQL offers no TLS on sockets).
//!
//! # Why tokio-postgres-rustls
//! [`tokio_postgres_rustls::MakeRustlsConnect`] (jbg's crate, rustls 0.23) does the
//! handshake and SCRAM channel binding (`tls-server-end-point`); this module only builds
//! its [`rustls::ClientConfig`] (the verifier of each mode, the optional client certificate)
//! and wraps it in [`PgConnector`] so that a Unix-socket host (for which tokio-postgres asks
//! for a connector with an empty name, and where PostgreSQL never offers TLS) does not fail
//! before the server is even asked.
//!
//! Files are read when the URL is parsed, so a missing or unreadable file is a clear error at
//! start, not a failure of the first connection. A private key (`sslkey`) must not be
//! accessible to other users (libpq's rule: mode 0600, or 0640 when owned by root); an
//! encrypted key (`sslpassword`) is not supported.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, RootCertStore, SignatureScheme};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;
use zeroize::Zeroizing;

/// libpq's `sslmode` (those this daemon supports; `allow` is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, certificate not checked (the default).
    Prefer,
    /// TLS or no connection; certificate not checked (unless `sslrootcert` is given).
    Require,
    /// TLS; the certificate chains to `sslrootcert`.
    VerifyCa,
    /// TLS; the certificate chains to `sslrootcert` and names the host.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => {
                return Err(
                    "sslmode=allow is not supported (it tries without TLS first); use require or verify-full"
                        .to_owned(),
                );
            }
            other => {
                return Err(format!(
                    "unknown sslmode {other:?}; expected disable, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// The tokio-postgres mode (it knows no verification; that is the verifier's job).
    fn wire(self) -> tokio_postgres::config::SslMode {
        match self {
            Self::Disable => tokio_postgres::config::SslMode::Disable,
            Self::Prefer => tokio_postgres::config::SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is checked of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Nothing (no TLS, or TLS that does not authenticate the server).
    None,
    /// The chain up to a CA of `sslrootcert`.
    Chain,
    /// The chain and the host name.
    Full,
}

/// The TLS settings of a store URL, with the connector built from them.
#[derive(Clone)]
pub struct PgTls {
    /// The mode asked for.
    pub mode: SslMode,
    /// What is verified of the server's certificate.
    pub verification: Verification,
    /// `sslrootcert`.
    pub root_cert: Option<PathBuf>,
    /// `sslcert` (with `sslkey`).
    pub client_cert: Option<PathBuf>,
    /// Every host is a Unix socket: no TLS whatever the mode (see [`PgTls::apply`]).
    pub unix_socket: bool,
    connector: PgConnector,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls")
            .field("mode", &self.mode)
            .field("verification", &self.verification)
            .field("root_cert", &self.root_cert)
            .field("client_cert", &self.client_cert)
            .field("unix_socket", &self.unix_socket)
            .finish_non_exhaustive()
    }
}

/// Parameters this module takes out of the URL before tokio-postgres parses it.
const OWN_PARAMS: &[&str] = &["sslmode", "sslrootcert", "sslcert", "sslkey"];
/// libpq parameters refused with a clear word (tokio-postgres would say "unknown option").
const REFUSED_PARAMS: &[(&str, &str)] = &[
    (
        "sslpassword",
        "an encrypted sslkey is not supported (and a passphrase does not belong in a URL); give an unencrypted key file readable only by the daemon's user",
    ),
    (
        "sslcrl",
        "not supported; revoke a database server certificate by removing its CA from sslrootcert or reissuing",
    ),
    (
        "sslcrldir",
        "not supported; revoke a database server certificate by removing its CA from sslrootcert or reissuing",
    ),
    (
        "requiressl",
        "obsolete; use sslmode=require or sslmode=verify-full",
    ),
];

impl PgTls {
    /// Splits the TLS parameters off `url`: the URL for tokio-postgres (without them) and the
    /// settings, files read and checked.
    pub(crate) fn from_url(url: &str) -> Result<(String, Self), String> {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let mut kept = Vec::new();
        let mut own: Vec<(&str, String)> = Vec::new();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if let Some((_, why)) = REFUSED_PARAMS.iter().find(|(k, _)| *k == key) {
                return Err(format!("{key}: {why}"));
            }
            if OWN_PARAMS.contains(&key) {
                if own.iter().any(|(k, _)| *k == key) {
                    return Err(format!("{key} is given twice"));
                }
                own.push((key, percent_decode(value)?));
            } else {
                kept.push(pair);
            }
        }
        let get = |k: &str| {
            own.iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.as_str())
        };
        let mode = match get("sslmode") {
            Some(m) => SslMode::parse(m)?,
            None => SslMode::Prefer,
        };
        let path = |k: &str| -> Result<Option<PathBuf>, String> {
            match get(k) {
                Some("") => Err(format!("{k} is empty; give the path of a PEM file")),
                Some("system") if k == "sslrootcert" => Err(
                    "sslrootcert=system (the public web roots) is not supported: give the PEM bundle of the CA that issued the database server's certificate".to_owned(),
                ),
                Some(p) => Ok(Some(PathBuf::from(p))),
                None => Ok(None),
            }
        };
        let root_cert = path("sslrootcert")?;
        let client_cert = path("sslcert")?;
        let client_key = path("sslkey")?;
        let verification = match (mode, &root_cert) {
            (SslMode::Disable, Some(_)) => {
                return Err(
                    "sslrootcert is given with sslmode=disable; remove it or use sslmode=verify-full"
                        .to_owned(),
                );
            }
            (SslMode::Disable, None) => Verification::None,
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(format!(
                    "sslmode={mode} needs sslrootcert=FILE (the PEM bundle of the CA that issued the database server's certificate)"
                ));
            }
            (SslMode::VerifyFull, Some(_)) => Verification::Full,
            (_, Some(_)) => Verification::Chain,
            (SslMode::Prefer | SslMode::Require, None) => Verification::None,
        };
        let client = match (&client_cert, &client_key) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                if mode == SslMode::Disable {
                    return Err("sslcert is given with sslmode=disable".to_owned());
                }
                Some(read_client_identity(c, k)?)
            }
            (Some(_), None) => return Err("sslcert is given without sslkey".to_owned()),
            (None, Some(_)) => return Err("sslkey is given without sslcert".to_owned()),
        };
        let roots = root_cert.as_deref().map(read_roots).transpose()?;
        let config = client_config(verification, roots, client)?;
        let rebuilt = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok((
            rebuilt,
            Self {
                mode,
                verification,
                root_cert,
                client_cert,
                unix_socket: false,
                connector: PgConnector(MakeRustlsConnect::new(config)),
            },
        ))
    }

    /// Puts the wire mode into the tokio-postgres configuration. As libpq, `sslmode` is
    /// ignored when every host is a Unix socket (PostgreSQL offers no TLS there, and
    /// tokio-postgres would refuse `require`).
    pub(crate) fn apply(&mut self, config: &mut tokio_postgres::Config) {
        self.unix_socket = config.get_hostaddrs().is_empty()
            && !config.get_hosts().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|h| !matches!(h, tokio_postgres::config::Host::Tcp(_)));
        config.ssl_mode(if self.unix_socket {
            tokio_postgres::config::SslMode::Disable
        } else {
            self.mode.wire()
        });
    }

    /// The connector for the pool and the listener.
    pub(crate) fn connector(&self) -> PgConnector {
        self.connector.clone()
    }

    /// One phrase for logs: `sslmode=verify-full (chain and host name verified)`.
    pub fn describe(&self) -> String {
        let what = match (self.mode, self.verification) {
            _ if self.unix_socket => "Unix socket: no TLS",
            (SslMode::Disable, _) => "no TLS",
            (_, Verification::None) => "server certificate not verified",
            (_, Verification::Chain) => "certificate chain verified, host name not",
            (_, Verification::Full) => "certificate chain and host name verified",
        };
        let client = if self.client_cert.is_some() {
            ", client certificate"
        } else {
            ""
        };
        format!("sslmode={} ({what}{client})", self.mode)
    }
}

/// libpq URLs percent-encode values (`sslrootcert=%2Fetc%2F...`).
fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| {
            format!(
                "sslrootcert {} is not a PEM certificate bundle: {e}",
                path.display()
            )
        })?;
        roots.add(cert).map_err(|e| {
            format!(
                "sslrootcert {} holds a certificate that cannot be a trust anchor: {e}",
                path.display()
            )
        })?;
    }
    if roots.is_empty() {
        return Err(format!(
            "sslrootcert {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(roots)
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn read_client_identity(cert: &Path, key: &Path) -> Result<Identity, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("cannot read sslcert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "sslcert {} holds no PEM certificate",
            cert.display()
        ));
    }
    check_key_permissions(key)?;
    let bytes = Zeroizing::new(
        std::fs::read(key).map_err(|e| format!("cannot read sslkey {}: {e}", key.display()))?,
    );
    // The parser's error never quotes the key.
    let key_der = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        format!(
            "sslkey {} is not an unencrypted PEM private key: {e}",
            key.display()
        )
    })?;
    Ok((certs, key_der))
}

/// libpq's rule: no access for others, and for the group only when root owns the file.
fn check_key_permissions(key: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(key).map_err(|e| format!("cannot read sslkey {}: {e}", key.display()))?;
    let mode = meta.mode() & 0o777;
    let allowed = if meta.uid() == 0 { 0o640 } else { 0o600 };
    if mode & !allowed != 0 {
        return Err(format!(
            "sslkey {} has mode {mode:04o}; it must not be accessible to other users (chmod 0600)",
            key.display()
        ));
    }
    Ok(())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(
    verification: Verification,
    roots: Option<RootCertStore>,
    client: Option<Identity>,
) -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match (verification, roots) {
        (Verification::Full, Some(roots)) => {
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("server certificate verifier: {e}"))?
        }
        (Verification::Chain, Some(roots)) => Arc::new(ChainIfRoots {
            roots: Some(roots),
            provider,
        }),
        _ => Arc::new(ChainIfRoots {
            roots: None,
            provider,
        }),
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("sslcert / sslkey cannot be used: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    // What libpq 17 sends; PostgreSQL 17 demands it with `sslnegotiation=direct`, older
    // servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// `verify-ca` (`roots` given): the chain, with rustls's own webpki path building, not the
/// name. `prefer` / `require` without `sslrootcert` (`roots` none, libpq's behaviour): any
/// certificate. Either way the handshake must be signed by the presented certificate's key.
#[derive(Debug)]
struct ChainIfRoots {
    roots: Option<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainIfRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// [`MakeRustlsConnect`] that also accepts the empty host name tokio-postgres passes for a
/// Unix socket (the server never offers TLS there, so the name is never used).
#[derive(Clone)]
pub struct PgConnector(MakeRustlsConnect);

impl MakeTlsConnect<tokio_postgres::Socket> for PgConnector {
    type Stream = <MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        let domain = if domain.is_empty() {
            "localhost"
        } else {
            domain
        };
        MakeTlsConnect::<tokio_postgres::Socket>::make_tls_connect(&mut self.0, domain)
    }
}

/// The reason of a failed handshake in an operator's words, if `e` is one; `host` is the
/// name the certificate was checked against.
pub(crate) fn explain(e: &tokio_postgres::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        let inner = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>())
            .or_else(|| s.downcast_ref::<rustls::Error>());
        if let Some(r) = inner {
            return Some(match r {
                rustls::Error::InvalidCertificate(c) => {
                    let why = match c {
                        CertificateError::UnknownIssuer => {
                            "it is not issued by a CA of sslrootcert".to_owned()
                        }
                        CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. } => {
                            "it does not name the host of the URL".to_owned()
                        }
                        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                            "it has expired".to_owned()
                        }
                        CertificateError::NotValidYet
                        | CertificateError::NotValidYetContext { .. } => {
                            "it is not valid yet".to_owned()
                        }
                        other => format!("{other:?}"),
                    };
                    format!("TLS: the database server's certificate is refused: {why} ({r})")
                }
                other => format!("TLS handshake failed: {other}"),
            });
        }
        source = s.source();
    }
    // tokio-postgres's own TLS errors ("server does not support TLS") are the cause of an
    // error whose text is only "error performing TLS handshake".
    let text = e.to_string();
    if !text.contains("TLS") {
        return None;
    }
    let mut out = format!("TLS: {text}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(&format!(": {s}"));
        source = s.source();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        PgTls::from_url(url).err().unwrap_or_default()
    }

    fn pem_ca(dir: &Path) -> PathBuf {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).expect("ca");
        let path = dir.join("ca.pem");
        std::fs::write(&path, cert.pem()).expect("write");
        path
    }

    #[test]
    fn modes_are_parsed_and_the_params_removed() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = pem_ca(dir.path());
        let (url, t) = PgTls::from_url("postgresql://ca@db/ca").expect("no params");
        assert_eq!(url, "postgresql://ca@db/ca");
        assert_eq!(
            (t.mode, t.verification),
            (SslMode::Prefer, Verification::None)
        );
        for (m, want, v) in [
            ("disable", SslMode::Disable, Verification::None),
            ("prefer", SslMode::Prefer, Verification::None),
            ("require", SslMode::Require, Verification::None),
        ] {
            let (url, t) = PgTls::from_url(&format!(
                "postgresql://ca@db/ca?connect_timeout=2&sslmode={m}"
            ))
            .expect(m);
            assert_eq!(url, "postgresql://ca@db/ca?connect_timeout=2");
            assert_eq!((t.mode, t.verification), (want, v), "{m}");
        }
        let enc = ca.display().to_string().replace('/', "%2F");
        for (m, want, v) in [
            ("verify-full", SslMode::VerifyFull, Verification::Full),
            ("verify-ca", SslMode::VerifyCa, Verification::Chain),
            // libpq: a root certificate makes require check the chain.
            ("require", SslMode::Require, Verification::Chain),
        ] {
            let (url, t) = PgTls::from_url(&format!(
                "postgresql://ca@db/ca?sslmode={m}&sslrootcert={enc}&application_name=x"
            ))
            .expect(m);
            assert_eq!(url, "postgresql://ca@db/ca?application_name=x");
            assert_eq!((t.mode, t.verification), (want, v), "{m}");
            assert_eq!(t.root_cert.as_deref(), Some(ca.as_path()));
        }
        let (_, t) = PgTls::from_url(&format!(
            "postgresql://ca@db/ca?sslmode=verify-full&sslrootcert={}",
            ca.display()
        ))
        .expect("plain path");
        assert!(
            t.describe().contains("host name verified"),
            "{}",
            t.describe()
        );
    }

    #[test]
    fn bad_tls_params_are_refused_clearly() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = pem_ca(dir.path());
        let e = err("postgresql://ca@db/ca?sslmode=verify");
        assert!(
            e.contains("unknown sslmode") && e.contains("verify-full"),
            "{e}"
        );
        assert!(err("postgresql://ca@db/ca?sslmode=allow").contains("not supported"));
        let e = err("postgresql://ca@db/ca?sslmode=verify-full");
        assert!(e.contains("needs sslrootcert"), "{e}");
        let e = err("postgresql://ca@db/ca?sslmode=verify-ca");
        assert!(e.contains("needs sslrootcert"), "{e}");
        let missing = dir.path().join("nope.pem");
        let e = err(&format!(
            "postgresql://ca@db/ca?sslmode=verify-full&sslrootcert={}",
            missing.display()
        ));
        assert!(
            e.contains("cannot read sslrootcert") && e.contains("nope.pem"),
            "{e}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").expect("write");
        let e = err(&format!(
            "postgresql://ca@db/ca?sslmode=verify-full&sslrootcert={}",
            junk.display()
        ));
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let e = err(&format!(
            "postgresql://ca@db/ca?sslmode=disable&sslrootcert={}",
            ca.display()
        ));
        assert!(e.contains("sslmode=disable"), "{e}");
        let e = err("postgresql://ca@db/ca?sslmode=require&sslmode=disable");
        assert!(e.contains("twice"), "{e}");
        let e = err("postgresql://ca@db/ca?sslmode=require&sslpassword=hunter2");
        assert!(e.contains("sslpassword") && !e.contains("hunter2"), "{e}");
        assert!(
            err("postgresql://ca@db/ca?sslrootcert=system&sslmode=verify-full").contains("system")
        );
        assert!(err("postgresql://ca@db/ca?sslcert=/x.pem").contains("without sslkey"));
    }

    #[test]
    fn client_key_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["ca-daemon".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, cert.pem()).expect("write");
        std::fs::write(&k, key.serialize_pem()).expect("write");
        let url = format!(
            "postgresql://ca@db/ca?sslmode=require&sslcert={}&sslkey={}",
            c.display(),
            k.display()
        );
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = PgTls::from_url(&url).err().unwrap_or_default();
        assert!(e.contains("mode 0644") && e.contains("chmod 0600"), "{e}");
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let (_, t) = PgTls::from_url(&url).expect("private key");
        assert!(t.describe().contains("client certificate"));
    }

    #[test]
    fn a_unix_socket_host_gets_a_connector() {
        // tokio-postgres asks with "" for a Unix socket; MakeRustlsConnect alone refuses it.
        let (_, t) = PgTls::from_url("postgresql://ca@%2Frun%2Fpostgresql/ca").expect("url");
        let mut c = t.connector();
        assert!(MakeTlsConnect::<tokio_postgres::Socket>::make_tls_connect(&mut c, "").is_ok());
        let mut bare = c.0.clone();
        assert!(MakeTlsConnect::<tokio_postgres::Socket>::make_tls_connect(&mut bare, "").is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%2Fetc%2Fa%20b").as_deref(), Ok("/etc/a b"));
        assert!(percent_decode("%2").is_err() && percent_decode("%zz").is_err());
    }
}
