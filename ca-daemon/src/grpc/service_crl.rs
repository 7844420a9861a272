//! The gRPC client-certificate verifier with the service CA's CRL (issue #12 item 8).
//!
//! rustls' [`WebPkiClientVerifier`] checks the chain to the service-client CA and, given CRLs,
//! the revocation of the client certificate (its signature by the CA included). This wrapper
//! keeps one such verifier and rebuilds it when `keys/service-ca.crl` changes (a cheap `stat`
//! per handshake compares inode, size and mtime), so a certificate revoked with
//! `ca-daemon service revoke` is refused from its next connection on, without a restart.
//!
//! Fail-safe rules: no CRL file at start means no revocation check (a PKI from before this
//! feature; logged). A CRL that cannot be read or parsed, or that disappears after one was
//! loaded, never removes revocations: the last good CRL stays in force and the error is logged.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime,
};

use super::tls::TlsSetupError;

/// Identity of the CRL file's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    std::fs::metadata(path).ok().map(|m| Stamp {
        ino: m.ino(),
        len: m.len(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    })
}

struct Current {
    /// The file version `verifier` was built from (`None`: no file).
    stamp: Option<Stamp>,
    /// Whether `verifier` checks a CRL.
    has_crl: bool,
    verifier: Arc<dyn ClientCertVerifier>,
}

/// Client verifier: service-client CA + its CRL, reloaded on change.
pub struct ServiceCrlVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    crl_path: PathBuf,
    hints: Vec<DistinguishedName>,
    current: RwLock<Current>,
}

impl fmt::Debug for ServiceCrlVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceCrlVerifier")
            .field("crl_path", &self.crl_path)
            .finish()
    }
}

impl ServiceCrlVerifier {
    /// Builds the verifier; an unreadable or invalid CRL at start is an error.
    pub fn new(
        service_ca_der: &[u8],
        crl_path: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(service_ca_der.to_vec()))?;
        let roots = Arc::new(roots);
        let st = stamp(&crl_path);
        let (verifier, has_crl) = match st {
            None => {
                tracing::warn!(path = %crl_path.display(),
                    "no service CA CRL: service client certificates are not checked for \
                     revocation until `ca-daemon service revoke` writes one");
                (build(&roots, &provider, None)?, false)
            }
            Some(_) => {
                let der = std::fs::read(&crl_path)
                    .map_err(|e| TlsSetupError::Verifier(format!("{}: {e}", crl_path.display())))?;
                (build(&roots, &provider, Some(der))?, true)
            }
        };
        let hints = verifier.root_hint_subjects().to_vec();
        Ok(Self {
            roots,
            provider,
            crl_path,
            hints,
            current: RwLock::new(Current {
                stamp: st,
                has_crl,
                verifier,
            }),
        })
    }

    /// The verifier for this handshake, rebuilt first if the CRL file changed.
    fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        let now = stamp(&self.crl_path);
        {
            let cur = match self.current.read() {
                Ok(c) => c,
                Err(p) => p.into_inner(),
            };
            if cur.stamp == now {
                return cur.verifier.clone();
            }
        }
        let mut cur = match self.current.write() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        if cur.stamp == now {
            return cur.verifier.clone();
        }
        // Remember the version either way: a bad file is reported once, not per connection.
        cur.stamp = now;
        match now {
            None if cur.has_crl => {
                tracing::error!(path = %self.crl_path.display(),
                    "the service CA CRL disappeared; keeping the last one in force");
            }
            None => {}
            Some(_) => {
                let built = std::fs::read(&self.crl_path)
                    .map_err(|e| TlsSetupError::Verifier(e.to_string()))
                    .and_then(|der| build(&self.roots, &self.provider, Some(der)));
                match built {
                    Ok(v) => {
                        tracing::info!(path = %self.crl_path.display(),
                            "service CA CRL loaded");
                        cur.verifier = v;
                        cur.has_crl = true;
                    }
                    Err(e) => tracing::error!(path = %self.crl_path.display(), error = %e,
                        "service CA CRL refused; keeping the last one in force"),
                }
            }
        }
        cur.verifier.clone()
    }
}

fn build(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    crl_der: Option<Vec<u8>>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsSetupError> {
    let mut b = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
    if let Some(der) = crl_der {
        // Parse up front so a malformed file is refused here, not at each handshake.
        x509_parser::parse_x509_crl(&der)
            .map_err(|e| TlsSetupError::Verifier(format!("service CA CRL: {e}")))?;
        b = b
            .with_crls([CertificateRevocationListDer::from(der)])
            // The service CA is the root: only the client certificate can be revoked.
            .only_check_end_entity_revocation();
    }
    b.build()
        .map_err(|e| TlsSetupError::Verifier(e.to_string()))
}

impl ClientCertVerifier for ServiceCrlVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verifier()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}

/// [`super::server_tls_config`] with the CRL-checking, reloading client verifier.
pub fn server_tls_config_with_crl(
    service_ca_der: &[u8],
    server_cert_der: &[u8],
    server_key_pkcs8: &[u8],
    crl_path: PathBuf,
) -> Result<rustls::ServerConfig, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(ServiceCrlVerifier::new(
        service_ca_der,
        crl_path,
        provider.clone(),
    )?);
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key_pkcs8.to_vec()));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![CertificateDer::from(server_cert_der.to_vec())], key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}
