//! The CA's key hierarchy on disk: `init` creates it, `load` reads what the daemon needs to
//! serve, `rotate_issuer` and `renew_responder` change it later.
//!
//! Hierarchy (DESIGN §6):
//!
//! ```text
//! device root CA (P-384, pathLen 1; key only needed to rotate issuers)
//!  └─ issuing CA "iss-<hex>" (P-256, pathLen 0; no CRL DP)   one active, older retiring
//!      └─ OCSP responder (P-256, id-kp-OCSPSigning, id-pkix-ocsp-nocheck, short-lived)
//! service-client CA (P-256, self-signed, pathLen 0)
//!  ├─ gRPC server certificate (serverAuth; localhost, 127.0.0.1, ::1)
//!  └─ portal / gateway / ops client certificates (clientAuth; SAN URI urn:pki:role:<role>)
//! pepper (32 random bytes; keys the ticket-password hashes)
//! ```
//!
//! Files under `DATA_DIR` ([`Layout`]): `keys/` holds certificates (PEM) and sealed keys
//! (mode 0600, see [`crate::keys::sealed`]), `keys/pki.toml` the metadata later commands agree
//! on (URL base, issuer ids, KDF parameters), `keys/active-issuer` the active issuer id.
//! `init` builds `keys/` in a staging directory and renames it into place last, so a crash
//! leaves either no `keys/` or a complete one. Dev mode adds `dev/` (passphrase, trust anchors,
//! plaintext client keys for tests); otherwise the service client certificates and keys go to
//! `clients/` for the operator to hand out.
//!
//! # Revocation profile (what every mainstream verifier accepts)
//!
//! The rule: **a certificate's CRL distribution point and its CRL's issuing distribution point
//! are either both absent or equal.** Concretely:
//!
//! | certificate | CRL DP | its CRL | IDP of that CRL |
//! | --- | --- | --- | --- |
//! | device root (self-signed) | none | root CRL (`/crl/root.crl`, signed by the root) | none |
//! | issuing CA | none | root CRL | none |
//! | end entity | `<base>/crl/<issuer>.crl` | issuer CRL | the same URI |
//!
//! Why: OpenSSL in whole-chain mode (`-crl_check_all`, which nginx `ssl_crl`, HAProxy
//! `crl-file` and Apache `SSLCARevocationCheck chain` use) wants an in-scope CRL for every
//! certificate of the chain, **the root included**; a CRL whose IDP names a URI is in scope only
//! for certificates whose CRL DP matches it, and the self-signed root has none (an IDP on the
//! root CRL gave "error 44: different CRL scope"). rustls-webpki (0.102 and 0.103) treats a CRL
//! as authoritative when its IDP is absent (0.102: only if the certificate has no CRL DP
//! either) or matches the certificate's CRL DP; and it checks issuer certificates in its default
//! whole-chain mode. Java PKIX matches a certificate without CRL DP to a CRL without IDP by the
//! issuer name. All three accept the table above; the integration test `gateway_profile.rs`
//! checks OpenSSL `-crl_check_all`, webpki in both modes and Java's `CertPathValidator`.
//! Issuer certificates made before this profile carry a CRL DP (the root CRL's URL): OpenSSL,
//! webpki 0.103 and Java still accept them with the IDP-less root CRL; re-sign the root CRL
//! once (`ca-daemon crl root`) after upgrading.
//!
//! Every certificate gets a random 128-bit serial and an explicit validity (rcgen defaults to
//! 1975–4096 and to a serial derived from the public key), SKI and AKI, and names as
//! UTF8String except `C=JP` (PrintableString, RFC 5280). Children never outlive their issuer.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::keys::fsutil::{
    self, Overwrite, PUBLIC_FILE_MODE, SECRET_FILE_MODE, create_dir_all_private, create_dir_private,
};
use crate::keys::sealed::{self, KdfParams, SealError};
use crate::keys::{self, GeneratedKey, KeyError, KeyType, Passphrase};

/// `O=` of every CA certificate.
pub const ORGANIZATION: &str = "ケアネット";
/// `CN=` of the device root CA.
pub const ROOT_CA_NAME: &str = "ケアネット 端末ルートCA";
/// `CN=` prefix of issuing CAs (the issuer id follows).
pub const ISSUER_NAME_PREFIX: &str = "ケアネット 端末発行CA";
/// `CN=` prefix of OCSP responders (the issuer id follows).
pub const RESPONDER_NAME_PREFIX: &str = "ケアネット OCSPレスポンダ";
/// `CN=` of the service-client CA.
pub const SERVICE_CA_NAME: &str = "ケアネット サービスクライアントCA";
/// `CN=` of the gRPC server certificate.
pub const SERVER_NAME: &str = "ca-daemon";
/// The service roles that get a client certificate at `init`.
pub const SERVICE_ROLES: [&str; 3] = ["portal", "gateway", "ops"];
/// Length of the pepper in bytes.
pub const PEPPER_LEN: usize = 32;

/// Default validity of the device root CA (20 years).
pub const DEFAULT_ROOT_VALIDITY_DAYS: u32 = 7305;
/// Default validity of an issuing CA (5 years).
pub const DEFAULT_ISSUER_VALIDITY_DAYS: u32 = 1826;
/// Default validity of an OCSP responder certificate (renewed automatically before expiry).
pub const DEFAULT_OCSP_VALIDITY_DAYS: u32 = 30;
/// Default validity of the gRPC server and service client certificates.
pub const DEFAULT_SERVICE_VALIDITY_DAYS: u32 = 825;
/// Validity (nextUpdate - thisUpdate) of the root's CRL. The root key is kept offline, so the
/// CRL is long-lived and must be refreshed ([`refresh_root_crl`]) before it runs out.
pub const ROOT_CRL_VALIDITY_DAYS: u32 = 365;

/// Seal label of the root CA key.
pub const ROOT_KEY_LABEL: &str = "root-ca";
/// Seal label of the service-client CA key.
pub const SERVICE_CA_KEY_LABEL: &str = "service-ca";
/// Seal label of the gRPC server key.
pub const SERVER_KEY_LABEL: &str = "server";
/// Seal label of the pepper.
pub const PEPPER_LABEL: &str = "pepper";

/// Seal label of an issuing CA key (the id is bound in, so keys cannot be swapped).
pub fn issuer_key_label(issuer_id: &str) -> String {
    format!("issuer:{issuer_id}")
}

/// Seal label of an OCSP responder key.
pub fn responder_key_label(issuer_id: &str) -> String {
    format!("ocsp:{issuer_id}")
}

/// How far `notBefore` is set in the past, for clients with slightly slow clocks.
const BACKDATE: Duration = Duration::minutes(5);
const METADATA_FORMAT: u32 = 1;
const STAGING_DIR: &str = ".keys.init";
/// id-pkix-ocsp-nocheck (RFC 6960 §4.2.2.2.1).
const OID_OCSP_NOCHECK: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 1, 5];
/// id-pe-authorityInfoAccess.
const OID_AIA: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 1];

/// Errors of PKI creation, loading and rotation. Messages name files and steps, never secrets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// `DATA_DIR/keys` already exists: `init` never touches an existing PKI.
    #[error("a PKI already exists at {path}; refusing to initialise again")]
    AlreadyInitialized {
        /// The existing keys directory.
        path: PathBuf,
    },
    /// There is no PKI in the data directory.
    #[error("no PKI at {path}; run `ca-daemon init` first")]
    NotInitialized {
        /// The missing keys directory.
        path: PathBuf,
    },
    /// An option has an unusable value.
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        /// The option.
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Key generation or loading failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A sealed file could not be written or unsealed.
    #[error("sealed file {path}: {source}")]
    Sealed {
        /// The sealed file.
        path: PathBuf,
        /// Why.
        #[source]
        source: SealError,
    },
    /// A file or directory could not be read or written.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// rcgen refused to build a certificate.
    #[error("building the {what} certificate failed: {source}")]
    Certificate {
        /// Which certificate.
        what: String,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// A file in the keys directory has unexpected content.
    #[error("invalid content in {path}: {reason}")]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A private key does not belong to the certificate beside it.
    #[error("key {key} does not match certificate {cert}")]
    KeyMismatch {
        /// The sealed key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// A certificate is not signed by the CA it should chain to.
    #[error("certificate {cert} is not signed by {issuer}")]
    BrokenChain {
        /// The certificate file.
        cert: PathBuf,
        /// The expected issuer's certificate file.
        issuer: PathBuf,
    },
    /// No issuer with this id.
    #[error("unknown issuer {id}")]
    UnknownIssuer {
        /// The id asked for.
        id: String,
    },
    /// A new issuer's id collides with an existing one (practically impossible: 64-bit ids).
    #[error("issuer {id} already exists")]
    IssuerExists {
        /// The id.
        id: String,
    },
    /// The issuing certificate has expired or expires before the child could start.
    #[error("the {what} certificate expired at {not_after}; cannot sign with it")]
    IssuerExpired {
        /// Which certificate.
        what: String,
        /// Its notAfter.
        not_after: OffsetDateTime,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn seal_err(path: &Path) -> impl FnOnce(SealError) -> PkiError + '_ {
    move |source| PkiError::Sealed {
        path: path.to_path_buf(),
        source,
    }
}

fn cert_err(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Certificate {
        what: what.to_owned(),
        source,
    }
}

/// Paths of the PKI files under a data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    data_dir: PathBuf,
    keys_dir: PathBuf,
}

impl Layout {
    /// The layout of `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        let keys_dir = data_dir.join("keys");
        Layout { data_dir, keys_dir }
    }

    fn staging(data_dir: &Path) -> Self {
        Layout {
            data_dir: data_dir.to_path_buf(),
            keys_dir: data_dir.join(STAGING_DIR),
        }
    }

    /// `DATA_DIR`.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    /// `DATA_DIR/keys`.
    pub fn keys_dir(&self) -> &Path {
        &self.keys_dir
    }
    /// Whether a PKI exists here (`keys/` is present; `init` creates it last, atomically).
    pub fn is_initialized(&self) -> bool {
        self.keys_dir.is_dir()
    }
    /// `keys/pki.toml`: URL base, issuer ids, KDF parameters.
    pub fn metadata(&self) -> PathBuf {
        self.keys_dir.join("pki.toml")
    }
    /// `keys/root-ca.crt` (PEM).
    pub fn root_cert(&self) -> PathBuf {
        self.keys_dir.join("root-ca.crt")
    }
    /// `keys/root-ca.key.sealed` (may be moved offline; needed only to rotate issuers).
    pub fn root_key(&self) -> PathBuf {
        self.keys_dir.join("root-ca.key.sealed")
    }
    /// `keys/root.crl` (DER): the root's CRL covering the issuers, signed whenever the root key
    /// is unsealed (init, rotation, [`refresh_root_crl`]); served at `/crl/root.crl`.
    pub fn root_crl(&self) -> PathBuf {
        self.keys_dir.join("root.crl")
    }
    /// `keys/issuers`.
    pub fn issuers_dir(&self) -> PathBuf {
        self.keys_dir.join("issuers")
    }
    /// `keys/issuers/<id>`.
    pub fn issuer_dir(&self, issuer_id: &str) -> PathBuf {
        self.issuers_dir().join(issuer_id)
    }
    /// `keys/issuers/<id>/issuer.crt` (PEM).
    pub fn issuer_cert(&self, issuer_id: &str) -> PathBuf {
        self.issuer_dir(issuer_id).join("issuer.crt")
    }
    /// `keys/issuers/<id>/issuer.key.sealed`.
    pub fn issuer_key(&self, issuer_id: &str) -> PathBuf {
        self.issuer_dir(issuer_id).join("issuer.key.sealed")
    }
    /// `keys/issuers/<id>/ocsp.crt` (PEM).
    pub fn responder_cert(&self, issuer_id: &str) -> PathBuf {
        self.issuer_dir(issuer_id).join("ocsp.crt")
    }
    /// `keys/issuers/<id>/ocsp.key.sealed`.
    pub fn responder_key(&self, issuer_id: &str) -> PathBuf {
        self.issuer_dir(issuer_id).join("ocsp.key.sealed")
    }
    /// `keys/active-issuer` (text: the id).
    pub fn active_issuer(&self) -> PathBuf {
        self.keys_dir.join("active-issuer")
    }
    /// `keys/service-ca.crt` (PEM).
    pub fn service_ca_cert(&self) -> PathBuf {
        self.keys_dir.join("service-ca.crt")
    }
    /// `keys/service-ca.key.sealed`.
    pub fn service_ca_key(&self) -> PathBuf {
        self.keys_dir.join("service-ca.key.sealed")
    }
    /// `keys/server.crt` (PEM; the gRPC server's TLS certificate).
    pub fn server_cert(&self) -> PathBuf {
        self.keys_dir.join("server.crt")
    }
    /// `keys/server.key.sealed`.
    pub fn server_key(&self) -> PathBuf {
        self.keys_dir.join("server.key.sealed")
    }
    /// `keys/pepper.sealed`.
    pub fn pepper(&self) -> PathBuf {
        self.keys_dir.join("pepper.sealed")
    }
    /// `DATA_DIR/dev` (dev mode only).
    pub fn dev_dir(&self) -> PathBuf {
        self.data_dir.join("dev")
    }
    /// `dev/passphrase` (generated, 0600; dev mode only).
    pub fn dev_passphrase(&self) -> PathBuf {
        self.dev_dir().join("passphrase")
    }
    /// `dev/root-ca.crt`: the device root.
    pub fn dev_root_ca(&self) -> PathBuf {
        self.dev_dir().join("root-ca.crt")
    }
    /// `dev/service-ca.crt`: trust anchor of the gRPC server and the client certificates.
    pub fn dev_service_ca(&self) -> PathBuf {
        self.dev_dir().join("service-ca.crt")
    }
    /// `dev/<role>.crt`.
    pub fn dev_client_cert(&self, role: &str) -> PathBuf {
        self.dev_dir().join(format!("{role}.crt"))
    }
    /// `dev/<role>.key` (PEM PKCS#8, plaintext on purpose, 0600).
    pub fn dev_client_key(&self, role: &str) -> PathBuf {
        self.dev_dir().join(format!("{role}.key"))
    }
    /// `DATA_DIR/clients`: service client certificates and keys for the operator (non-dev).
    pub fn clients_dir(&self) -> PathBuf {
        self.data_dir.join("clients")
    }
    /// `clients/<role>.crt`.
    pub fn client_cert(&self, role: &str) -> PathBuf {
        self.clients_dir().join(format!("{role}.crt"))
    }
    /// `clients/<role>.key` (PEM PKCS#8, 0600).
    pub fn client_key(&self, role: &str) -> PathBuf {
        self.clients_dir().join(format!("{role}.key"))
    }
    /// `DATA_DIR/store` (the sled database; created by the store module).
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }
}

/// `DATA_DIR/dev/passphrase`.
pub fn dev_passphrase_path(data_dir: &Path) -> PathBuf {
    Layout::new(data_dir).dev_passphrase()
}

/// URL of an issuer's CRL: `{url_base}/crl/<issuer_id>.crl`.
pub fn issuer_crl_url(url_base: &str, issuer_id: &str) -> String {
    format!("{url_base}/crl/{issuer_id}.crl")
}
/// Same as [`issuer_crl_url`]: the CRL DP of end-entity certificates of `issuer_id`.
pub fn crl_url(url_base: &str, issuer_id: &str) -> String {
    issuer_crl_url(url_base, issuer_id)
}
/// Same as [`issuer_cert_url`]: the AIA caIssuers URL of end-entity certificates.
pub fn ca_issuers_url(url_base: &str, issuer_id: &str) -> String {
    issuer_cert_url(url_base, issuer_id)
}
/// URL of the root's CRL (covering the issuers): `{url_base}/crl/root.crl`.
pub fn root_crl_url(url_base: &str) -> String {
    format!("{url_base}/crl/root.crl")
}
/// URL of the OCSP responder: `{url_base}/ocsp`.
pub fn ocsp_url(url_base: &str) -> String {
    format!("{url_base}/ocsp")
}
/// URL of an issuer's certificate (AIA caIssuers of end entities): `{url_base}/ca/<id>.crt`.
pub fn issuer_cert_url(url_base: &str, issuer_id: &str) -> String {
    format!("{url_base}/ca/{issuer_id}.crt")
}
/// URL of the root certificate (AIA caIssuers of issuers): `{url_base}/ca/root.crt`.
pub fn root_cert_url(url_base: &str) -> String {
    format!("{url_base}/ca/root.crt")
}
/// The SAN URI naming a service role: `urn:pki:role:<role>`.
pub fn role_uri(role: &str) -> String {
    format!("urn:pki:role:{role}")
}

/// An Authority Information Access extension (RFC 5280 §4.2.2.1) with an OCSP and / or a
/// caIssuers URL, for rcgen's `custom_extensions`.
pub fn aia_extension(
    ocsp: Option<&str>,
    ca_issuers: Option<&str>,
) -> Result<CustomExtension, PkiError> {
    use der::Encode;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::{AccessDescription, AuthorityInfoAccessSyntax};
    let bad = |reason: String| PkiError::InvalidOption {
        option: "url_base",
        reason,
    };
    let mut descriptions = Vec::new();
    for (method, url) in [
        (const_oid::db::rfc5280::ID_AD_OCSP, ocsp),
        (const_oid::db::rfc5280::ID_AD_CA_ISSUERS, ca_issuers),
    ] {
        if let Some(url) = url {
            let ia5 = der::asn1::Ia5String::new(url)
                .map_err(|e| bad(format!("URL {url:?} is not IA5: {e}")))?;
            descriptions.push(AccessDescription {
                access_method: method,
                access_location: GeneralName::UniformResourceIdentifier(ia5),
            });
        }
    }
    let der = AuthorityInfoAccessSyntax(descriptions)
        .to_der()
        .map_err(|e| bad(format!("encoding AIA: {e}")))?;
    Ok(CustomExtension::from_oid_content(OID_AIA, der))
}

/// The id-pkix-ocsp-nocheck extension (value NULL, non-critical).
pub fn ocsp_nocheck_extension() -> CustomExtension {
    CustomExtension::from_oid_content(OID_OCSP_NOCHECK, vec![0x05, 0x00])
}

/// What `init` needs.
#[derive(Debug)]
pub struct InitOptions {
    /// `DATA_DIR`.
    pub data_dir: PathBuf,
    /// Passphrase sealing every key except (optionally) the root's.
    pub passphrase: Passphrase,
    /// Passphrase of the root key; `None` = the same as `passphrase`.
    pub root_passphrase: Option<Passphrase>,
    /// Dev mode: write the `dev/` files (plaintext client keys, trust anchors).
    pub dev: bool,
    /// Base of the CRL / OCSP / CA URLs put into certificates, e.g. `http://127.0.0.1:8080`
    /// (no trailing slash; one is stripped).
    pub url_base: String,
    /// Validity of the device root CA in days.
    pub root_validity_days: u32,
    /// Validity of the issuing CA in days (capped by the root's).
    pub issuer_validity_days: u32,
    /// Validity of the OCSP responder certificate in days (capped by the issuer's).
    pub ocsp_validity_days: u32,
    /// Validity of the gRPC server and service client certificates in days. The service-client
    /// CA itself gets `root_validity_days`.
    pub service_validity_days: u32,
    /// Argon2id parameters for the sealed files (recorded in `pki.toml` for later seals).
    pub kdf: KdfParams,
    /// Names of the gRPC server certificate (DNS names or IP addresses); by default
    /// `localhost`, `127.0.0.1` and `::1`.
    pub server_names: Vec<String>,
}

impl InitOptions {
    /// Options with the default validities, production KDF and loopback server names.
    pub fn new(data_dir: impl Into<PathBuf>, passphrase: Passphrase, url_base: &str) -> Self {
        InitOptions {
            data_dir: data_dir.into(),
            passphrase,
            root_passphrase: None,
            dev: false,
            url_base: url_base.to_owned(),
            root_validity_days: DEFAULT_ROOT_VALIDITY_DAYS,
            issuer_validity_days: DEFAULT_ISSUER_VALIDITY_DAYS,
            ocsp_validity_days: DEFAULT_OCSP_VALIDITY_DAYS,
            service_validity_days: DEFAULT_SERVICE_VALIDITY_DAYS,
            kdf: KdfParams::production(),
            server_names: default_server_names(),
        }
    }

    /// Dev-mode options: generates a random passphrase and writes it to
    /// `DATA_DIR/dev/passphrase` (0600), creating the directories (0700). Refuses if a PKI
    /// already exists (its passphrase file must not be replaced).
    pub fn dev(data_dir: impl Into<PathBuf>, url_base: &str) -> Result<Self, PkiError> {
        let data_dir = data_dir.into();
        let layout = Layout::new(&data_dir);
        if std::fs::symlink_metadata(layout.keys_dir()).is_ok() {
            return Err(PkiError::AlreadyInitialized {
                path: layout.keys_dir().to_path_buf(),
            });
        }
        let dev_dir = layout.dev_dir();
        create_dir_all_private(&dev_dir).map_err(io_err(&dev_dir))?;
        let passphrase = Passphrase::generate()?;
        let mut text = Zeroizing::new(passphrase.expose().to_vec());
        text.push(b'\n');
        let path = layout.dev_passphrase();
        // No PKI exists, so a leftover file (from an interrupted init) protects nothing.
        fsutil::write_atomic(&path, &text, SECRET_FILE_MODE, Overwrite::Replace)
            .map_err(io_err(&path))?;
        let mut opts = InitOptions::new(data_dir, passphrase, url_base);
        opts.dev = true;
        opts.kdf = KdfParams::dev();
        Ok(opts)
    }
}

/// The default names of the gRPC server certificate.
pub fn default_server_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
}

/// What `init` created.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// `DATA_DIR`.
    pub data_dir: PathBuf,
    /// SHA-256 of the root certificate's DER, lowercase hex (for out-of-band comparison).
    pub root_fingerprint_sha256: String,
    /// Id of the first (active) issuer.
    pub issuer_id: String,
    /// Files written under `dev/` (dev mode), besides the passphrase.
    pub dev_files: Vec<PathBuf>,
    /// `dev/passphrase` if dev mode generated it.
    pub dev_passphrase_file: Option<PathBuf>,
    /// Files written under `clients/` (non-dev mode): service client certificates and keys
    /// for the operator to hand out, and the trust anchors.
    pub client_files: Vec<PathBuf>,
}

/// Metadata in `keys/pki.toml`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PkiMetadata {
    /// Format of this file (1).
    pub format: u32,
    /// Base of the CRL / OCSP / CA URLs.
    pub url_base: String,
    /// When `init` ran (RFC 3339).
    pub created_at: String,
    /// SHA-256 of the root certificate, lowercase hex.
    pub root_fingerprint_sha256: String,
    /// Ids of all issuers, oldest first.
    pub issuers: Vec<String>,
    /// Argon2id parameters used for sealing (reused by rotation and renewal).
    pub seal_kdf: KdfParams,
    /// Whether this is a dev PKI.
    pub dev: bool,
    /// CRL number of the last root CRL (`keys/root.crl`); only ever increases.
    #[serde(default)]
    pub root_crl_number: u64,
}

impl PkiMetadata {
    /// Reads `keys/pki.toml`.
    pub fn read(layout: &Layout) -> Result<Self, PkiError> {
        let path = layout.metadata();
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let meta: PkiMetadata = toml::from_str(&text).map_err(|e| PkiError::InvalidFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if meta.format != METADATA_FORMAT {
            return Err(PkiError::InvalidFile {
                path,
                reason: format!("unsupported format {}", meta.format),
            });
        }
        Ok(meta)
    }

    fn write(&self, layout: &Layout, overwrite: Overwrite) -> Result<(), PkiError> {
        let path = layout.metadata();
        let text = toml::to_string(self).map_err(|e| PkiError::InvalidFile {
            path: path.clone(),
            reason: format!("serialising: {e}"),
        })?;
        let text =
            format!("# Written by ca-daemon; read by every command. Do not edit by hand.\n{text}");
        fsutil::write_atomic(&path, text.as_bytes(), PUBLIC_FILE_MODE, overwrite)
            .map_err(io_err(&path))
    }
}

/// An issuing CA loaded for signing, with its OCSP responder.
pub struct LoadedIssuer {
    /// Issuer id (`iss-<16 hex>`).
    pub id: String,
    /// Certificate (DER).
    pub cert_der: Vec<u8>,
    /// Signing key.
    pub key: KeyPair,
    /// Signing key as PKCS#8 DER.
    pub key_pkcs8: Zeroizing<Vec<u8>>,
    /// OCSP responder certificate (DER).
    pub responder_cert_der: Vec<u8>,
    /// OCSP responder key.
    pub responder_key: KeyPair,
    /// Certificate notBefore.
    pub not_before: OffsetDateTime,
    /// Certificate notAfter.
    pub not_after: OffsetDateTime,
}

impl LoadedIssuer {
    /// An rcgen [`Issuer`] signing with this CA's key (name and key id taken from the cert).
    pub fn rcgen_issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Issuer::from_ca_cert_der(&CertificateDer::from(self.cert_der.as_slice()), &self.key)
            .map_err(cert_err(&self.id))
    }

    /// notAfter of the responder certificate (for renewal scheduling).
    pub fn responder_not_after(&self) -> Result<OffsetDateTime, PkiError> {
        Ok(cert_validity(&self.responder_cert_der, Path::new("ocsp.crt"))?.1)
    }
}

impl std::fmt::Debug for LoadedIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedIssuer")
            .field("id", &self.id)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// What the daemon needs to serve. The root key is not loaded (only rotation needs it).
pub struct LoadedPki {
    /// Base of the CRL / OCSP / CA URLs.
    pub url_base: String,
    /// Device root certificate (DER).
    pub root_cert_der: Vec<u8>,
    /// The root's CRL (DER) as last signed, served at `/crl/root.crl`.
    pub root_crl_der: Vec<u8>,
    /// All issuers, oldest first.
    pub issuers: Vec<LoadedIssuer>,
    /// Id of the active issuer.
    pub active_issuer_id: String,
    /// Service-client CA certificate (DER): trust anchor for gRPC client certificates.
    pub service_ca_der: Vec<u8>,
    /// gRPC server certificate (DER).
    pub server_cert_der: Vec<u8>,
    /// gRPC server key (PKCS#8 DER).
    pub server_key_pkcs8: Zeroizing<Vec<u8>>,
    /// The pepper for ticket-password hashes (32 bytes).
    pub pepper: Zeroizing<Vec<u8>>,
}

impl LoadedPki {
    /// The active issuer.
    pub fn active_issuer(&self) -> Option<&LoadedIssuer> {
        self.issuer(&self.active_issuer_id)
    }

    /// The issuer with this id.
    pub fn issuer(&self, id: &str) -> Option<&LoadedIssuer> {
        self.issuers.iter().find(|i| i.id == id)
    }
}

impl std::fmt::Debug for LoadedPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPki")
            .field("url_base", &self.url_base)
            .field("issuers", &self.issuers)
            .field("active_issuer_id", &self.active_issuer_id)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// PEM and certificate helpers

/// PEM-encodes DER under the given label (64-character lines).
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str(&format!("-----BEGIN {label}-----\n"));
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// PEM of a private key (`PRIVATE KEY`, PKCS#8) in a zeroizing buffer.
fn key_pem(pkcs8: &[u8]) -> Zeroizing<String> {
    Zeroizing::new(pem_encode("PRIVATE KEY", pkcs8))
}

/// Reads a PEM certificate file and returns its DER.
pub fn read_cert_pem(path: &Path) -> Result<Vec<u8>, PkiError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes).map_err(|e| PkiError::InvalidFile {
        path: path.to_path_buf(),
        reason: format!("not a PEM certificate: {e}"),
    })?;
    if pem.label != "CERTIFICATE" {
        return Err(PkiError::InvalidFile {
            path: path.to_path_buf(),
            reason: format!("PEM label {:?}, expected CERTIFICATE", pem.label),
        });
    }
    x509_parser::parse_x509_certificate(&pem.contents).map_err(|e| PkiError::InvalidFile {
        path: path.to_path_buf(),
        reason: format!("not an X.509 certificate: {e}"),
    })?;
    Ok(pem.contents)
}

fn parse_cert<'a>(
    der: &'a [u8],
    path: &Path,
) -> Result<x509_parser::certificate::X509Certificate<'a>, PkiError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| PkiError::InvalidFile {
            path: path.to_path_buf(),
            reason: format!("not an X.509 certificate: {e}"),
        })
}

/// notBefore and notAfter of a certificate.
fn cert_validity(der: &[u8], path: &Path) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let c = parse_cert(der, path)?;
    Ok((
        c.validity().not_before.to_datetime(),
        c.validity().not_after.to_datetime(),
    ))
}

/// SHA-256 fingerprint of DER, lowercase hex.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// Checks that `key` is the key of certificate `cert_der`.
fn check_key_matches(
    key: &KeyPair,
    cert_der: &[u8],
    key_path: &Path,
    cert_path: &Path,
) -> Result<(), PkiError> {
    let cert = parse_cert(cert_der, cert_path)?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(PkiError::KeyMismatch {
            key: key_path.to_path_buf(),
            cert: cert_path.to_path_buf(),
        });
    }
    Ok(())
}

/// Checks that `child_der` is signed by the key of `parent_der`.
fn check_signed_by(
    child_der: &[u8],
    parent_der: &[u8],
    child_path: &Path,
    parent_path: &Path,
) -> Result<(), PkiError> {
    let child = parse_cert(child_der, child_path)?;
    let parent = parse_cert(parent_der, parent_path)?;
    child
        .verify_signature(Some(parent.public_key()))
        .map_err(|_| PkiError::BrokenChain {
            cert: child_path.to_path_buf(),
            issuer: parent_path.to_path_buf(),
        })
}

fn distinguished_name(cn: &str) -> Result<DistinguishedName, PkiError> {
    let mut dn = DistinguishedName::new();
    // countryName is a PrintableString (RFC 5280 Appendix A).
    let jp = "JP".try_into().map_err(cert_err("name"))?;
    dn.push(DnType::CountryName, DnValue::PrintableString(jp));
    dn.push(
        DnType::OrganizationName,
        DnValue::Utf8String(ORGANIZATION.into()),
    );
    dn.push(DnType::CommonName, DnValue::Utf8String(cn.into()));
    Ok(dn)
}

/// Validity starting now (backdated a little), `days` long, never past `cap`.
fn validity(
    days: u32,
    cap: Option<(&str, OffsetDateTime)>,
) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let now = OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let not_before = now - BACKDATE;
    let mut not_after = not_before + Duration::days(i64::from(days));
    if let Some((what, cap)) = cap {
        if cap <= now {
            return Err(PkiError::IssuerExpired {
                what: what.to_owned(),
                not_after: cap,
            });
        }
        not_after = not_after.min(cap);
    }
    Ok((not_before, not_after))
}

fn base_params(
    cn: &str,
    (not_before, not_after): (OffsetDateTime, OffsetDateTime),
) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = distinguished_name(cn)?;
    p.not_before = not_before;
    p.not_after = not_after;
    p.serial_number = Some(keys::random_serial());
    p.key_identifier_method = rcgen::KeyIdMethod::Sha256;
    Ok(p)
}

/// A certificate and its freshly generated key.
struct NewCert {
    der: Vec<u8>,
    key: GeneratedKey,
}

fn new_root(days: u32) -> Result<NewCert, PkiError> {
    let key = keys::generate(KeyType::P384)?;
    let mut p = base_params(ROOT_CA_NAME, validity(days, None)?)?;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = p
        .self_signed(&key.key_pair)
        .map_err(cert_err("device root CA"))?;
    Ok(NewCert {
        der: cert.der().to_vec(),
        key,
    })
}

fn new_service_ca(days: u32) -> Result<NewCert, PkiError> {
    let key = keys::generate(KeyType::P256)?;
    let mut p = base_params(SERVICE_CA_NAME, validity(days, None)?)?;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = p
        .self_signed(&key.key_pair)
        .map_err(cert_err("service-client CA"))?;
    Ok(NewCert {
        der: cert.der().to_vec(),
        key,
    })
}

/// A new issuing CA (with responder) signed by the root.
struct NewIssuer {
    id: String,
    issuer: NewCert,
    responder: NewCert,
}

fn new_issuer(
    root_der: &[u8],
    root_key: &KeyPair,
    url_base: &str,
    issuer_days: u32,
    ocsp_days: u32,
) -> Result<NewIssuer, PkiError> {
    let root_path = Path::new("root-ca.crt");
    let (_, root_not_after) = cert_validity(root_der, root_path)?;
    let root = Issuer::from_ca_cert_der(&CertificateDer::from(root_der), root_key)
        .map_err(cert_err("device root CA"))?;
    let key = keys::generate(KeyType::P256)?;
    let ski = CertificateParams::default().key_identifier(&key.key_pair);
    let id = format!("iss-{}", hex::encode(&ski[..8]));
    let name = format!("{ISSUER_NAME_PREFIX} {id}");
    let mut p = base_params(
        &name,
        validity(issuer_days, Some(("device root CA", root_not_after)))?,
    )?;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // Issue #12 item 7: whoever holds the online issuing key must not be able to mint TLS
    // server certificates that enrolled devices trust. Windows, Apple, NSS and Chrome enforce
    // EKU down the chain, so an issuing CA limited to clientAuth can only issue client
    // certificates. OCSPSigning stays in the set because the CA's own delegated OCSP responder
    // (id-kp-OCSPSigning) is under it: with clientAuth alone, the same chain rule makes
    // Windows refuse the responder's answers. No nameConstraints: the leaves carry no DNS or
    // IP names to constrain (SAN is a `urn:pki:device:` URI, which RFC 5280 URI constraints do
    // not cover), and the EKU already takes away the server use.
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::OcspSigning,
    ];
    p.use_authority_key_identifier_extension = true;
    // No CRL distribution point: see "Revocation profile" in the module doc. The root CRL
    // (no IDP) covers every issuer by its issuer name alone.
    p.custom_extensions
        .push(aia_extension(None, Some(&root_cert_url(url_base)))?);
    let cert = p
        .signed_by(&key.key_pair, &root)
        .map_err(cert_err("issuing CA"))?;
    let issuer = NewCert {
        der: cert.der().to_vec(),
        key,
    };
    let responder = new_responder(&issuer.der, &issuer.key.key_pair, &id, ocsp_days)?;
    Ok(NewIssuer {
        id,
        issuer,
        responder,
    })
}

/// Signs the root's CRL (no revoked issuers yet; revoking an issuer is a later feature)
/// without an issuing distribution point, so that it is in scope for the root itself and for
/// every issuer certificate (which carry no CRL distribution point): see "Revocation profile"
/// in the module doc. Served at [`root_crl_url`].
fn sign_root_crl(
    root_der: &[u8],
    root_key: &KeyPair,
    _url_base: &str,
    number: u64,
) -> Result<Vec<u8>, PkiError> {
    let (_, root_not_after) = cert_validity(root_der, Path::new("root-ca.crt"))?;
    let root = Issuer::from_ca_cert_der(&CertificateDer::from(root_der), root_key)
        .map_err(cert_err("device root CA"))?;
    let (this_update, next_update) = validity(
        ROOT_CRL_VALIDITY_DAYS,
        Some(("device root CA", root_not_after)),
    )?;
    let params = rcgen::CertificateRevocationListParams {
        this_update,
        next_update,
        crl_number: rcgen::SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&root).map_err(cert_err("root CRL"))?;
    Ok(crl.der().to_vec())
}

fn new_responder(
    issuer_der: &[u8],
    issuer_key: &KeyPair,
    issuer_id: &str,
    days: u32,
) -> Result<NewCert, PkiError> {
    let (_, issuer_not_after) = cert_validity(issuer_der, Path::new("issuer.crt"))?;
    let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(issuer_der), issuer_key)
        .map_err(cert_err("issuing CA"))?;
    let key = keys::generate(KeyType::P256)?;
    let name = format!("{RESPONDER_NAME_PREFIX} {issuer_id}");
    let mut p = base_params(
        &name,
        validity(days, Some(("issuing CA", issuer_not_after)))?,
    )?;
    // ExplicitNoCa makes rcgen write basicConstraints CA:FALSE and the SKI.
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
    p.use_authority_key_identifier_extension = true;
    p.custom_extensions.push(ocsp_nocheck_extension());
    let cert = p
        .signed_by(&key.key_pair, &issuer)
        .map_err(cert_err("OCSP responder"))?;
    Ok(NewCert {
        der: cert.der().to_vec(),
        key,
    })
}

fn parse_server_name(name: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !valid {
        return Err(PkiError::InvalidOption {
            option: "server_names",
            reason: format!("{name:?} is neither an IP address nor a DNS name"),
        });
    }
    let ia5 = name.try_into().map_err(cert_err("gRPC server"))?;
    Ok(SanType::DnsName(ia5))
}

fn new_server_cert(
    ca_der: &[u8],
    ca_key: &KeyPair,
    names: &[String],
    days: u32,
) -> Result<NewCert, PkiError> {
    let (_, ca_not_after) = cert_validity(ca_der, Path::new("service-ca.crt"))?;
    let ca = Issuer::from_ca_cert_der(&CertificateDer::from(ca_der), ca_key)
        .map_err(cert_err("service-client CA"))?;
    let key = keys::generate(KeyType::P256)?;
    let mut p = base_params(
        SERVER_NAME,
        validity(days, Some(("service-client CA", ca_not_after)))?,
    )?;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    p.subject_alt_names = names
        .iter()
        .map(|n| parse_server_name(n))
        .collect::<Result<_, _>>()?;
    let cert = p
        .signed_by(&key.key_pair, &ca)
        .map_err(cert_err("gRPC server"))?;
    Ok(NewCert {
        der: cert.der().to_vec(),
        key,
    })
}

fn new_client_cert(
    ca_der: &[u8],
    ca_key: &KeyPair,
    role: &str,
    days: u32,
) -> Result<NewCert, PkiError> {
    let (_, ca_not_after) = cert_validity(ca_der, Path::new("service-ca.crt"))?;
    let ca = Issuer::from_ca_cert_der(&CertificateDer::from(ca_der), ca_key)
        .map_err(cert_err("service-client CA"))?;
    let key = keys::generate(KeyType::P256)?;
    let mut p = base_params(
        role,
        validity(days, Some(("service-client CA", ca_not_after)))?,
    )?;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    let uri = role_uri(role).try_into().map_err(cert_err(role))?;
    p.subject_alt_names = vec![SanType::URI(uri)];
    let cert = p.signed_by(&key.key_pair, &ca).map_err(cert_err(role))?;
    Ok(NewCert {
        der: cert.der().to_vec(),
        key,
    })
}

// ---------------------------------------------------------------------------------------------
// Writing

fn write_public(path: &Path, text: &str, overwrite: Overwrite) -> Result<(), PkiError> {
    fsutil::write_atomic(path, text.as_bytes(), PUBLIC_FILE_MODE, overwrite).map_err(io_err(path))
}

fn write_secret(path: &Path, bytes: &[u8], overwrite: Overwrite) -> Result<(), PkiError> {
    fsutil::write_atomic(path, bytes, SECRET_FILE_MODE, overwrite).map_err(io_err(path))
}

fn write_cert(path: &Path, der: &[u8], overwrite: Overwrite) -> Result<(), PkiError> {
    write_public(path, &pem_encode("CERTIFICATE", der), overwrite)
}

fn seal_to(
    path: &Path,
    plaintext: &[u8],
    passphrase: &Passphrase,
    label: &str,
    kdf: KdfParams,
    overwrite: Overwrite,
) -> Result<(), PkiError> {
    let bytes = sealed::seal(plaintext, passphrase, label, kdf).map_err(seal_err(path))?;
    match overwrite {
        Overwrite::Refuse => sealed::write_sealed_file(path, &bytes),
        Overwrite::Replace => sealed::write_sealed_file_replace(path, &bytes),
    }
    .map_err(seal_err(path))
}

fn write_issuer_files(
    layout: &Layout,
    dir: &Path,
    new: &NewIssuer,
    passphrase: &Passphrase,
    kdf: KdfParams,
) -> Result<(), PkiError> {
    // `dir` is the issuer's directory (possibly a staging name); file names follow `layout`.
    let name = |p: PathBuf| -> PathBuf {
        match p.file_name() {
            Some(f) => dir.join(f),
            None => p,
        }
    };
    let id = &new.id;
    write_cert(
        &name(layout.issuer_cert(id)),
        &new.issuer.der,
        Overwrite::Refuse,
    )?;
    seal_to(
        &name(layout.issuer_key(id)),
        &new.issuer.key.pkcs8,
        passphrase,
        &issuer_key_label(id),
        kdf,
        Overwrite::Refuse,
    )?;
    write_cert(
        &name(layout.responder_cert(id)),
        &new.responder.der,
        Overwrite::Refuse,
    )?;
    seal_to(
        &name(layout.responder_key(id)),
        &new.responder.key.pkcs8,
        passphrase,
        &responder_key_label(id),
        kdf,
        Overwrite::Refuse,
    )
}

fn validate_url_base(url_base: &str) -> Result<String, PkiError> {
    let trimmed = url_base.trim_end_matches('/');
    let bad = |reason: &str| PkiError::InvalidOption {
        option: "url_base",
        reason: format!("{url_base:?}: {reason}"),
    };
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    if rest.is_empty() {
        return Err(bad("has no host"));
    }
    if !trimmed
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'"' | b'<' | b'>' | b'\\'))
    {
        return Err(bad("must be plain ASCII without spaces, query or fragment"));
    }
    Ok(trimmed.to_owned())
}

/// Issue #12 item 9: refuses Argon2id parameters below the floor for new sealed keys
/// ([`KdfParams::PRODUCTION_FLOOR`], or [`KdfParams::DEV_FLOOR`] for a dev PKI).
pub fn check_kdf_floor(kdf: KdfParams, dev: bool) -> Result<(), PkiError> {
    let floor = if dev {
        KdfParams::DEV_FLOOR
    } else {
        KdfParams::PRODUCTION_FLOOR
    };
    if kdf.meets(floor) {
        Ok(())
    } else {
        Err(PkiError::InvalidOption {
            option: "kdf",
            reason: format!(
                "Argon2id m={} KiB t={} is below the floor m={} KiB t={}{}",
                kdf.m_cost_kib,
                kdf.t_cost,
                floor.m_cost_kib,
                floor.t_cost,
                if dev { " (dev)" } else { "" }
            ),
        })
    }
}

/// Minimum length of a production passphrase, in bytes.
pub const MIN_PASSPHRASE_LEN: usize = 16;

/// Issue #12 item 9: a production passphrase must be at least [`MIN_PASSPHRASE_LEN`] bytes
/// with at least 8 distinct bytes (refuses short ones, and `aaaaaaaaaaaaaaaa`-like ones). The
/// sealed files fall to an offline search of the passphrase, whatever the KDF: e.g. 4 random
/// diceware words (~51 bits) or `openssl rand -base64 24` pass.
fn check_passphrase_strength(option: &'static str, p: &Passphrase) -> Result<(), PkiError> {
    let bytes = p.expose();
    let distinct = bytes.iter().collect::<std::collections::HashSet<_>>().len();
    if bytes.len() < MIN_PASSPHRASE_LEN || distinct < 8 {
        return Err(PkiError::InvalidOption {
            option,
            reason: format!(
                "too weak: use at least {MIN_PASSPHRASE_LEN} characters with at least 8 \
                 different ones (e.g. `openssl rand -base64 24`)"
            ),
        });
    }
    Ok(())
}

fn validate_days(option: &'static str, days: u32) -> Result<(), PkiError> {
    // 100 years keeps date arithmetic far from overflow.
    if days == 0 || days > 36_525 {
        return Err(PkiError::InvalidOption {
            option,
            reason: format!("{days} days; must be between 1 and 36525"),
        });
    }
    Ok(())
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Creates the PKI under `opts.data_dir` (see the module doc). Refuses if `DATA_DIR/keys`
/// exists. Directories are created 0700, secrets 0600.
pub fn init(opts: &InitOptions) -> Result<InitReport, PkiError> {
    let url_base = validate_url_base(&opts.url_base)?;
    validate_days("root_validity_days", opts.root_validity_days)?;
    validate_days("issuer_validity_days", opts.issuer_validity_days)?;
    validate_days("ocsp_validity_days", opts.ocsp_validity_days)?;
    validate_days("service_validity_days", opts.service_validity_days)?;
    if opts.server_names.is_empty() {
        return Err(PkiError::InvalidOption {
            option: "server_names",
            reason: "at least one name is needed".into(),
        });
    }
    for n in &opts.server_names {
        parse_server_name(n)?;
    }
    // Fail on bad KDF parameters before creating anything.
    check_kdf_floor(opts.kdf, opts.dev)?;
    if !opts.dev {
        check_passphrase_strength("passphrase", &opts.passphrase)?;
        if let Some(root) = &opts.root_passphrase {
            check_passphrase_strength("root_passphrase", root)?;
        }
    }
    sealed::seal(b"", &opts.passphrase, "probe", opts.kdf).map_err(seal_err(&opts.data_dir))?;

    let layout = Layout::new(&opts.data_dir);
    if std::fs::symlink_metadata(layout.keys_dir()).is_ok() {
        return Err(PkiError::AlreadyInitialized {
            path: layout.keys_dir().to_path_buf(),
        });
    }
    create_dir_all_private(layout.data_dir()).map_err(io_err(layout.data_dir()))?;

    let staging = Layout::staging(layout.data_dir());
    if std::fs::symlink_metadata(staging.keys_dir()).is_ok() {
        tracing::warn!(path = %staging.keys_dir().display(), "removing the staging directory of an interrupted init");
        std::fs::remove_dir_all(staging.keys_dir()).map_err(io_err(staging.keys_dir()))?;
    }
    create_dir_private(staging.keys_dir()).map_err(io_err(staging.keys_dir()))?;
    let result = build_pki(opts, &url_base, &layout, &staging);
    if result.is_err() {
        // Leave nothing half-made behind; the error that matters is the first one.
        let _ = std::fs::remove_dir_all(staging.keys_dir());
    }
    result
}

fn build_pki(
    opts: &InitOptions,
    url_base: &str,
    layout: &Layout,
    staging: &Layout,
) -> Result<InitReport, PkiError> {
    let kdf = opts.kdf;
    let pass = &opts.passphrase;
    let root_pass = opts.root_passphrase.as_ref().unwrap_or(pass);

    // Device root and the first issuer.
    let root = new_root(opts.root_validity_days)?;
    write_cert(&staging.root_cert(), &root.der, Overwrite::Refuse)?;
    seal_to(
        &staging.root_key(),
        &root.key.pkcs8,
        root_pass,
        ROOT_KEY_LABEL,
        kdf,
        Overwrite::Refuse,
    )?;
    let root_crl = sign_root_crl(&root.der, &root.key.key_pair, url_base, 1)?;
    fsutil::write_atomic(
        &staging.root_crl(),
        &root_crl,
        PUBLIC_FILE_MODE,
        Overwrite::Refuse,
    )
    .map_err(io_err(&staging.root_crl()))?;
    let issuer = new_issuer(
        &root.der,
        &root.key.key_pair,
        url_base,
        opts.issuer_validity_days,
        opts.ocsp_validity_days,
    )?;
    drop(root.key);
    let issuers_dir = staging.issuers_dir();
    create_dir_private(&issuers_dir).map_err(io_err(&issuers_dir))?;
    let issuer_dir = staging.issuer_dir(&issuer.id);
    create_dir_private(&issuer_dir).map_err(io_err(&issuer_dir))?;
    write_issuer_files(staging, &issuer_dir, &issuer, pass, kdf)?;
    write_public(
        &staging.active_issuer(),
        &format!("{}\n", issuer.id),
        Overwrite::Refuse,
    )?;

    // Service-client CA, gRPC server certificate, service client certificates.
    let service_ca = new_service_ca(opts.root_validity_days)?;
    write_cert(
        &staging.service_ca_cert(),
        &service_ca.der,
        Overwrite::Refuse,
    )?;
    seal_to(
        &staging.service_ca_key(),
        &service_ca.key.pkcs8,
        pass,
        SERVICE_CA_KEY_LABEL,
        kdf,
        Overwrite::Refuse,
    )?;
    let server = new_server_cert(
        &service_ca.der,
        &service_ca.key.key_pair,
        &opts.server_names,
        opts.service_validity_days,
    )?;
    write_cert(&staging.server_cert(), &server.der, Overwrite::Refuse)?;
    seal_to(
        &staging.server_key(),
        &server.key.pkcs8,
        pass,
        SERVER_KEY_LABEL,
        kdf,
        Overwrite::Refuse,
    )?;
    let mut clients = Vec::new();
    for role in SERVICE_ROLES {
        clients.push((
            role,
            new_client_cert(
                &service_ca.der,
                &service_ca.key.key_pair,
                role,
                // Short-lived (issue #12 item 8): renew with `ca-daemon service issue`.
                opts.service_validity_days
                    .min(crate::service_ca::DEFAULT_CLIENT_VALIDITY_DAYS),
            )?,
        ));
    }

    // Pepper.
    let mut pepper = Zeroizing::new([0u8; PEPPER_LEN]);
    keys::random_bytes(pepper.as_mut())?;
    seal_to(
        &staging.pepper(),
        pepper.as_ref(),
        pass,
        PEPPER_LABEL,
        kdf,
        Overwrite::Refuse,
    )?;

    let fingerprint = fingerprint_sha256(&root.der);
    PkiMetadata {
        format: METADATA_FORMAT,
        url_base: url_base.to_owned(),
        created_at: now_rfc3339(),
        root_fingerprint_sha256: fingerprint.clone(),
        issuers: vec![issuer.id.clone()],
        seal_kdf: kdf,
        dev: opts.dev,
        root_crl_number: 1,
    }
    .write(staging, Overwrite::Refuse)?;
    // Issue #12 item 9: authenticate pki.toml, service-ca.crt and server.crt.
    crate::integrity::seal(staging, pepper.as_ref())?;

    // Files outside keys/. No PKI exists yet, so leftovers of an interrupted init are replaced.
    let mut dev_files = Vec::new();
    let mut client_files = Vec::new();
    if opts.dev {
        let dev_dir = layout.dev_dir();
        create_dir_all_private(&dev_dir).map_err(io_err(&dev_dir))?;
        let root_path = layout.dev_root_ca();
        write_cert(&root_path, &root.der, Overwrite::Replace)?;
        dev_files.push(root_path);
        let sca_path = layout.dev_service_ca();
        write_cert(&sca_path, &service_ca.der, Overwrite::Replace)?;
        dev_files.push(sca_path);
        for (role, c) in &clients {
            let cert_path = layout.dev_client_cert(role);
            let key_path = layout.dev_client_key(role);
            write_cert(&cert_path, &c.der, Overwrite::Replace)?;
            write_secret(
                &key_path,
                key_pem(&c.key.pkcs8).as_bytes(),
                Overwrite::Replace,
            )?;
            dev_files.push(cert_path);
            dev_files.push(key_path);
        }
    } else {
        let dir = layout.clients_dir();
        create_dir_all_private(&dir).map_err(io_err(&dir))?;
        let sca_path = dir.join("service-ca.crt");
        write_cert(&sca_path, &service_ca.der, Overwrite::Replace)?;
        client_files.push(sca_path);
        let root_path = dir.join("root-ca.crt");
        write_cert(&root_path, &root.der, Overwrite::Replace)?;
        client_files.push(root_path);
        for (role, c) in &clients {
            let cert_path = layout.client_cert(role);
            let key_path = layout.client_key(role);
            write_cert(&cert_path, &c.der, Overwrite::Replace)?;
            write_secret(
                &key_path,
                key_pem(&c.key.pkcs8).as_bytes(),
                Overwrite::Replace,
            )?;
            client_files.push(cert_path);
            client_files.push(key_path);
        }
    }

    // Make the staging tree durable, then publish it under its final name.
    for dir in [
        issuer_dir.as_path(),
        issuers_dir.as_path(),
        staging.keys_dir(),
    ] {
        fsutil::sync_dir(dir).map_err(io_err(dir))?;
    }
    if std::fs::symlink_metadata(layout.keys_dir()).is_ok() {
        return Err(PkiError::AlreadyInitialized {
            path: layout.keys_dir().to_path_buf(),
        });
    }
    fsutil::rename_durable(staging.keys_dir(), layout.keys_dir())
        .map_err(io_err(layout.keys_dir()))?;

    let dev_pass = layout.dev_passphrase();
    let dev_passphrase_file = (opts.dev && dev_pass.is_file()).then_some(dev_pass);
    tracing::info!(
        data_dir = %layout.data_dir().display(),
        issuer_id = %issuer.id,
        root_fingerprint_sha256 = %fingerprint,
        dev = opts.dev,
        "PKI initialised"
    );
    Ok(InitReport {
        data_dir: layout.data_dir().to_path_buf(),
        root_fingerprint_sha256: fingerprint,
        issuer_id: issuer.id,
        dev_files,
        dev_passphrase_file,
        client_files,
    })
}

// ---------------------------------------------------------------------------------------------
// Loading

fn require_initialized(layout: &Layout) -> Result<(), PkiError> {
    if !layout.is_initialized() {
        return Err(PkiError::NotInitialized {
            path: layout.keys_dir().to_path_buf(),
        });
    }
    Ok(())
}

fn unseal_key(
    path: &Path,
    passphrase: &Passphrase,
    label: &str,
) -> Result<(Zeroizing<Vec<u8>>, KeyPair), PkiError> {
    let pkcs8 = sealed::read_sealed_file(path, passphrase, label).map_err(seal_err(path))?;
    let key = keys::key_pair_from_pkcs8(&pkcs8).map_err(|e| PkiError::InvalidFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok((pkcs8, key))
}

fn validate_issuer_id(id: &str, path: &Path) -> Result<(), PkiError> {
    let ok = id.len() <= 64
        && id.starts_with("iss-")
        && id.len() > 4
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(PkiError::InvalidFile {
            path: path.to_path_buf(),
            reason: format!("{id:?} is not a valid issuer id"),
        });
    }
    Ok(())
}

/// Loads one issuer (certificate, key, responder) and checks it chains to the root.
fn load_issuer(
    layout: &Layout,
    id: &str,
    root_der: &[u8],
    passphrase: &Passphrase,
) -> Result<LoadedIssuer, PkiError> {
    let cert_path = layout.issuer_cert(id);
    let key_path = layout.issuer_key(id);
    let cert_der = read_cert_pem(&cert_path)?;
    check_signed_by(&cert_der, root_der, &cert_path, &layout.root_cert())?;
    let (key_pkcs8, key) = unseal_key(&key_path, passphrase, &issuer_key_label(id))?;
    check_key_matches(&key, &cert_der, &key_path, &cert_path)?;
    let r_cert_path = layout.responder_cert(id);
    let r_key_path = layout.responder_key(id);
    let responder_cert_der = read_cert_pem(&r_cert_path)?;
    check_signed_by(&responder_cert_der, &cert_der, &r_cert_path, &cert_path)?;
    let (_, responder_key) = unseal_key(&r_key_path, passphrase, &responder_key_label(id))?;
    check_key_matches(
        &responder_key,
        &responder_cert_der,
        &r_key_path,
        &r_cert_path,
    )?;
    let (not_before, not_after) = cert_validity(&cert_der, &cert_path)?;
    Ok(LoadedIssuer {
        id: id.to_owned(),
        cert_der,
        key,
        key_pkcs8,
        responder_cert_der,
        responder_key,
        not_before,
        not_after,
    })
}

fn read_active_issuer(layout: &Layout) -> Result<String, PkiError> {
    let path = layout.active_issuer();
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let id = text.trim().to_owned();
    validate_issuer_id(&id, &path)?;
    Ok(id)
}

/// Loads what the daemon needs to serve from `data_dir`, unsealing with `passphrase`. Every
/// key is checked against its certificate and every certificate against its issuer. The root
/// key is not read.
pub fn load(data_dir: &Path, passphrase: &Passphrase) -> Result<LoadedPki, PkiError> {
    let layout = Layout::new(data_dir);
    require_initialized(&layout)?;
    let meta = PkiMetadata::read(&layout)?;
    let root_cert_der = read_cert_pem(&layout.root_cert())?;
    let meta_path = layout.metadata();
    if fingerprint_sha256(&root_cert_der) != meta.root_fingerprint_sha256 {
        return Err(PkiError::InvalidFile {
            path: layout.root_cert(),
            reason: format!(
                "fingerprint differs from the one recorded in {}",
                meta_path.display()
            ),
        });
    }
    let root_crl_der = std::fs::read(layout.root_crl()).map_err(io_err(&layout.root_crl()))?;
    let mut issuers = Vec::with_capacity(meta.issuers.len());
    for id in &meta.issuers {
        validate_issuer_id(id, &meta_path)?;
        issuers.push(load_issuer(&layout, id, &root_cert_der, passphrase)?);
    }
    let active_issuer_id = read_active_issuer(&layout)?;
    if !issuers.iter().any(|i| i.id == active_issuer_id) {
        return Err(PkiError::UnknownIssuer {
            id: active_issuer_id,
        });
    }
    let service_ca_der = read_cert_pem(&layout.service_ca_cert())?;
    let server_cert_der = read_cert_pem(&layout.server_cert())?;
    check_signed_by(
        &server_cert_der,
        &service_ca_der,
        &layout.server_cert(),
        &layout.service_ca_cert(),
    )?;
    let (server_key_pkcs8, server_key) =
        unseal_key(&layout.server_key(), passphrase, SERVER_KEY_LABEL)?;
    check_key_matches(
        &server_key,
        &server_cert_der,
        &layout.server_key(),
        &layout.server_cert(),
    )?;
    let pepper_path = layout.pepper();
    let pepper = sealed::read_sealed_file(&pepper_path, passphrase, PEPPER_LABEL)
        .map_err(seal_err(&pepper_path))?;
    if pepper.len() != PEPPER_LEN {
        return Err(PkiError::InvalidFile {
            path: pepper_path,
            reason: format!("pepper is {} bytes, expected {PEPPER_LEN}", pepper.len()),
        });
    }
    // Issue #12 item 9: refuse files changed without the passphrase.
    crate::integrity::verify(&layout, &pepper)?;
    tracing::info!(
        data_dir = %data_dir.display(),
        issuers = issuers.len(),
        active_issuer = %active_issuer_id,
        "PKI loaded"
    );
    Ok(LoadedPki {
        url_base: meta.url_base,
        root_cert_der,
        root_crl_der,
        issuers,
        active_issuer_id,
        service_ca_der,
        server_cert_der,
        server_key_pkcs8,
        pepper,
    })
}

// ---------------------------------------------------------------------------------------------
// Rotation and renewal

/// Unseals the pepper to prove `passphrase` is the daemon's, before anything is sealed with it
/// (a typo would otherwise create keys the daemon cannot open).
fn check_daemon_passphrase(layout: &Layout, passphrase: &Passphrase) -> Result<(), PkiError> {
    let path = layout.pepper();
    sealed::read_sealed_file(&path, passphrase, PEPPER_LABEL)
        .map(drop)
        .map_err(seal_err(&path))
}

/// Waits (at most a second and a bit) until a certificate made now starts strictly after the
/// active issuer's: several nodes order issuers by `notBefore` (seconds), and two issuers
/// starting in the same second would leave the order to their random ids (issue #15: a
/// rotation within a second of the first one let a node that had not adopted it yet win).
fn wait_past_active_not_before(layout: &Layout) -> Result<(), PkiError> {
    let active = active_issuer_id(&layout.data_dir)?;
    let path = layout.issuer_cert(&active);
    let der = read_cert_pem(&path)?;
    let (active_not_before, _) = cert_validity(&der, &path)?;
    for _ in 0..30 {
        let now = OffsetDateTime::now_utc();
        if now.replace_nanosecond(0).unwrap_or(now) - BACKDATE > active_not_before {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}

/// Creates a new issuing CA (and its responder) signed by the root, writes it under
/// `keys/issuers/<id>/` and makes it the active issuer (atomically replacing
/// `keys/active-issuer`). The root key is unsealed only for this and wiped right after.
/// Returns the new issuer id. The previous issuers stay on disk (they become `retiring`).
pub fn rotate_issuer(
    data_dir: &Path,
    root_passphrase: &Passphrase,
    passphrase: &Passphrase,
    issuer_validity_days: u32,
    ocsp_validity_days: u32,
) -> Result<String, PkiError> {
    validate_days("issuer_validity_days", issuer_validity_days)?;
    validate_days("ocsp_validity_days", ocsp_validity_days)?;
    let layout = Layout::new(data_dir);
    require_initialized(&layout)?;
    let mut meta = PkiMetadata::read(&layout)?;
    check_daemon_passphrase(&layout, passphrase)?;
    let root_der = read_cert_pem(&layout.root_cert())?;
    wait_past_active_not_before(&layout)?;
    let new = {
        let (root_pkcs8, root_key) =
            unseal_key(&layout.root_key(), root_passphrase, ROOT_KEY_LABEL)?;
        check_key_matches(
            &root_key,
            &root_der,
            &layout.root_key(),
            &layout.root_cert(),
        )?;
        let new = new_issuer(
            &root_der,
            &root_key,
            &meta.url_base,
            issuer_validity_days,
            ocsp_validity_days,
        )
        .and_then(|new| {
            // The root key is out anyway: refresh the root CRL with it.
            let crl = sign_root_crl(
                &root_der,
                &root_key,
                &meta.url_base,
                meta.root_crl_number + 1,
            )?;
            Ok((new, crl))
        });
        drop(root_key);
        drop(root_pkcs8);
        new?
    };
    let (new, root_crl) = new;
    // pki.toml is authenticated at load (integrity record); the floor holds regardless.
    check_kdf_floor(meta.seal_kdf, meta.dev)?;
    let final_dir = layout.issuer_dir(&new.id);
    if std::fs::symlink_metadata(&final_dir).is_ok() || meta.issuers.contains(&new.id) {
        return Err(PkiError::IssuerExists { id: new.id });
    }
    // Build the directory under a hidden name, then rename it into place.
    let staging_dir = layout.issuers_dir().join(format!(".{}.tmp", new.id));
    if std::fs::symlink_metadata(&staging_dir).is_ok() {
        std::fs::remove_dir_all(&staging_dir).map_err(io_err(&staging_dir))?;
    }
    create_dir_private(&staging_dir).map_err(io_err(&staging_dir))?;
    let written = write_issuer_files(&layout, &staging_dir, &new, passphrase, meta.seal_kdf)
        .and_then(|()| fsutil::sync_dir(&staging_dir).map_err(io_err(&staging_dir)))
        .and_then(|()| {
            fsutil::rename_durable(&staging_dir, &final_dir).map_err(io_err(&final_dir))
        });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging_dir);
        return Err(e);
    }
    meta.issuers.push(new.id.clone());
    meta.root_crl_number += 1;
    // The number is recorded before the CRL is published, so it never goes backwards.
    meta.write(&layout, Overwrite::Replace)?;
    fsutil::write_atomic(
        &layout.root_crl(),
        &root_crl,
        PUBLIC_FILE_MODE,
        Overwrite::Replace,
    )
    .map_err(io_err(&layout.root_crl()))?;
    write_public(
        &layout.active_issuer(),
        &format!("{}\n", new.id),
        Overwrite::Replace,
    )?;
    tracing::info!(issuer_id = %new.id, "issuer rotated; new issuer is active");
    Ok(new.id)
}

/// The four files of an issuer, by name inside `keys/issuers/<id>/`: what a node that rotated
/// shares with the other nodes of a cluster (the keys sealed under the daemon passphrase, the
/// certificates public; see [`adopt_issuer`]).
pub const ISSUER_FILES: [&str; 4] = [
    "issuer.crt",
    "issuer.key.sealed",
    "ocsp.crt",
    "ocsp.key.sealed",
];

/// Reads the files of issuer `issuer_id` (in [`ISSUER_FILES`] order).
pub fn issuer_files(data_dir: &Path, issuer_id: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let layout = Layout::new(data_dir);
    ISSUER_FILES
        .iter()
        .map(|f| {
            let p = layout.issuer_dir(issuer_id).join(f);
            std::fs::read(&p).map_err(io_err(&p))
        })
        .collect()
}

/// Adds an issuer created by another node (`issuer rotate` run there) to this data dir: checks
/// that its certificate is signed by this PKI's root, writes its files (sealed keys stay
/// sealed: they only unseal with this daemon's passphrase) under a staging name, renames them
/// into place and appends it to `pki.toml`. Returns `false` when the issuer is already here.
/// Does not make it active (see [`set_active_issuer`]).
pub fn adopt_issuer(data_dir: &Path, issuer_id: &str, files: &[Vec<u8>]) -> Result<bool, PkiError> {
    let layout = Layout::new(data_dir);
    require_initialized(&layout)?;
    validate_issuer_id(issuer_id, &layout.issuers_dir())?;
    let final_dir = layout.issuer_dir(issuer_id);
    let mut meta = PkiMetadata::read(&layout)?;
    if std::fs::symlink_metadata(&final_dir).is_ok() {
        if !meta.issuers.iter().any(|i| i == issuer_id) {
            meta.issuers.push(issuer_id.to_owned());
            meta.write(&layout, Overwrite::Replace)?;
        }
        return Ok(false);
    }
    if files.len() != ISSUER_FILES.len() {
        return Err(PkiError::InvalidOption {
            option: "issuer files",
            reason: format!("expected {} files, got {}", ISSUER_FILES.len(), files.len()),
        });
    }
    let root_der = read_cert_pem(&layout.root_cert())?;
    let cert_path = layout.issuer_cert(issuer_id);
    let cert_der = pem_to_der(&files[0], &cert_path)?;
    check_signed_by(&cert_der, &root_der, &cert_path, &layout.root_cert())?;
    let staging_dir = layout.issuers_dir().join(format!(".{issuer_id}.adopt"));
    if std::fs::symlink_metadata(&staging_dir).is_ok() {
        std::fs::remove_dir_all(&staging_dir).map_err(io_err(&staging_dir))?;
    }
    create_dir_private(&staging_dir).map_err(io_err(&staging_dir))?;
    let written = (|| {
        for (name, bytes) in ISSUER_FILES.iter().zip(files) {
            let p = staging_dir.join(name);
            let mode = if name.ends_with(".sealed") {
                SECRET_FILE_MODE
            } else {
                PUBLIC_FILE_MODE
            };
            fsutil::write_atomic(&p, bytes, mode, Overwrite::Refuse).map_err(io_err(&p))?;
        }
        fsutil::sync_dir(&staging_dir).map_err(io_err(&staging_dir))?;
        fsutil::rename_durable(&staging_dir, &final_dir).map_err(io_err(&final_dir))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging_dir);
        return Err(e);
    }
    if !meta.issuers.iter().any(|i| i == issuer_id) {
        meta.issuers.push(issuer_id.to_owned());
    }
    meta.write(&layout, Overwrite::Replace)?;
    tracing::info!(issuer_id, "adopted an issuer created by another node");
    Ok(true)
}

/// The active issuer named in `keys/active-issuer`.
pub fn active_issuer_id(data_dir: &Path) -> Result<String, PkiError> {
    let p = Layout::new(data_dir).active_issuer();
    Ok(std::fs::read_to_string(&p)
        .map_err(io_err(&p))?
        .trim()
        .to_owned())
}

/// Points `keys/active-issuer` at `issuer_id` (which must be in this data dir).
pub fn set_active_issuer(data_dir: &Path, issuer_id: &str) -> Result<(), PkiError> {
    let layout = Layout::new(data_dir);
    validate_issuer_id(issuer_id, &layout.active_issuer())?;
    if !layout.issuer_cert(issuer_id).is_file() {
        return Err(PkiError::UnknownIssuer {
            id: issuer_id.to_owned(),
        });
    }
    write_public(
        &layout.active_issuer(),
        &format!("{issuer_id}\n"),
        Overwrite::Replace,
    )
}

/// The root CRL of this data dir and its number (from `pki.toml`).
pub fn root_crl_file(data_dir: &Path) -> Result<(u64, Vec<u8>), PkiError> {
    let layout = Layout::new(data_dir);
    let meta = PkiMetadata::read(&layout)?;
    let p = layout.root_crl();
    Ok((meta.root_crl_number, std::fs::read(&p).map_err(io_err(&p))?))
}

/// Takes a root CRL re-signed on another node (at its rotation) when its number is higher
/// than this data dir's. The caller has checked its signature. Returns whether it was newer.
pub fn adopt_root_crl(data_dir: &Path, number: u64, der: &[u8]) -> Result<bool, PkiError> {
    let layout = Layout::new(data_dir);
    let mut meta = PkiMetadata::read(&layout)?;
    if number <= meta.root_crl_number {
        return Ok(false);
    }
    meta.root_crl_number = number;
    meta.write(&layout, Overwrite::Replace)?;
    fsutil::write_atomic(
        &layout.root_crl(),
        der,
        PUBLIC_FILE_MODE,
        Overwrite::Replace,
    )
    .map_err(io_err(&layout.root_crl()))?;
    Ok(true)
}

fn pem_to_der(bytes: &[u8], path: &Path) -> Result<Vec<u8>, PkiError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(bytes).map_err(|e| PkiError::InvalidFile {
        path: path.to_path_buf(),
        reason: format!("not a PEM certificate: {e}"),
    })?;
    Ok(pem.contents)
}

/// Re-signs the root's CRL (`keys/root.crl`) with a new CRL number and a fresh nextUpdate
/// ([`ROOT_CRL_VALIDITY_DAYS`]). The root key is unsealed only for this. Returns the new CRL
/// number. Run it (in a key ceremony if the root key is offline) before the CRL runs out.
pub fn refresh_root_crl(data_dir: &Path, root_passphrase: &Passphrase) -> Result<u64, PkiError> {
    let layout = Layout::new(data_dir);
    require_initialized(&layout)?;
    let mut meta = PkiMetadata::read(&layout)?;
    let root_der = read_cert_pem(&layout.root_cert())?;
    let number = meta.root_crl_number + 1;
    let crl = {
        let (root_pkcs8, root_key) =
            unseal_key(&layout.root_key(), root_passphrase, ROOT_KEY_LABEL)?;
        check_key_matches(
            &root_key,
            &root_der,
            &layout.root_key(),
            &layout.root_cert(),
        )?;
        let crl = sign_root_crl(&root_der, &root_key, &meta.url_base, number);
        drop(root_key);
        drop(root_pkcs8);
        crl?
    };
    meta.root_crl_number = number;
    meta.write(&layout, Overwrite::Replace)?;
    fsutil::write_atomic(
        &layout.root_crl(),
        &crl,
        PUBLIC_FILE_MODE,
        Overwrite::Replace,
    )
    .map_err(io_err(&layout.root_crl()))?;
    tracing::info!(crl_number = number, "root CRL re-signed");
    Ok(number)
}

/// A freshly renewed OCSP responder.
pub struct RenewedResponder {
    /// Responder certificate (DER).
    pub cert_der: Vec<u8>,
    /// Responder key.
    pub key: KeyPair,
    /// Certificate notAfter.
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for RenewedResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenewedResponder")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Issues a fresh OCSP responder certificate and key for `issuer_id`, replacing
/// `ocsp.crt` / `ocsp.key.sealed` (each atomically; the key is written first). Used for the
/// automatic renewal of the short-lived responder certificates.
pub fn renew_responder(
    data_dir: &Path,
    issuer_id: &str,
    passphrase: &Passphrase,
    days: u32,
) -> Result<RenewedResponder, PkiError> {
    validate_days("ocsp_validity_days", days)?;
    let layout = Layout::new(data_dir);
    require_initialized(&layout)?;
    let meta = PkiMetadata::read(&layout)?;
    if !meta.issuers.iter().any(|i| i == issuer_id) {
        return Err(PkiError::UnknownIssuer {
            id: issuer_id.to_owned(),
        });
    }
    let cert_path = layout.issuer_cert(issuer_id);
    let key_path = layout.issuer_key(issuer_id);
    let issuer_der = read_cert_pem(&cert_path)?;
    let (_pkcs8, issuer_key) = unseal_key(&key_path, passphrase, &issuer_key_label(issuer_id))?;
    check_key_matches(&issuer_key, &issuer_der, &key_path, &cert_path)?;
    let responder = new_responder(&issuer_der, &issuer_key, issuer_id, days)?;
    check_kdf_floor(meta.seal_kdf, meta.dev)?;
    seal_to(
        &layout.responder_key(issuer_id),
        &responder.key.pkcs8,
        passphrase,
        &responder_key_label(issuer_id),
        meta.seal_kdf,
        Overwrite::Replace,
    )?;
    write_cert(
        &layout.responder_cert(issuer_id),
        &responder.der,
        Overwrite::Replace,
    )?;
    let (_, not_after) = cert_validity(&responder.der, &layout.responder_cert(issuer_id))?;
    tracing::info!(issuer_id, %not_after, "OCSP responder certificate renewed");
    Ok(RenewedResponder {
        cert_der: responder.der,
        key: responder.key.key_pair,
        not_after,
    })
}

/// The DNS names and IP addresses in the gRPC server certificate's SAN.
pub fn server_cert_names(data_dir: &Path) -> Result<Vec<String>, PkiError> {
    let layout = Layout::new(data_dir);
    let der = read_cert_pem(&layout.server_cert())?;
    let cert = parse_cert(&der, &layout.server_cert())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(names)
}

fn same_server_name(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        (Err(_), Err(_)) => a.eq_ignore_ascii_case(b),
        _ => false,
    }
}

/// Makes the gRPC server certificate name every one of `wanted` (DNS names or IP addresses,
/// from the `server_names` config and the gRPC listen address): when one is missing, a new
/// server certificate is issued by the service-client CA for the names it had plus the
/// missing ones, and replaces the old one (key sealed as at init). Returns the names added
/// (empty = nothing to do).
pub fn ensure_server_names(
    data_dir: &Path,
    passphrase: &Passphrase,
    wanted: &[String],
    days: u32,
) -> Result<Vec<String>, PkiError> {
    let layout = Layout::new(data_dir);
    require_initialized(&layout)?;
    for n in wanted {
        parse_server_name(n)?;
    }
    let mut names = server_cert_names(data_dir)?;
    let missing: Vec<String> = wanted
        .iter()
        .filter(|w| !names.iter().any(|n| same_server_name(n, w)))
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(missing);
    }
    validate_days("service_validity_days", days)?;
    names.extend(missing.iter().cloned());
    // server.crt is authenticated by keys/integrity.mac (issue #12 item 9): check the files as
    // they are before replacing one, and seal the record again afterwards, so a re-issue never
    // launders a file changed without the passphrase.
    let pepper_path = layout.pepper();
    let pepper = sealed::read_sealed_file(&pepper_path, passphrase, PEPPER_LABEL)
        .map_err(seal_err(&pepper_path))?;
    crate::integrity::verify(&layout, &pepper)?;
    let meta = PkiMetadata::read(&layout)?;
    let ca_der = read_cert_pem(&layout.service_ca_cert())?;
    let (_pkcs8, ca_key) = unseal_key(&layout.service_ca_key(), passphrase, SERVICE_CA_KEY_LABEL)?;
    check_key_matches(
        &ca_key,
        &ca_der,
        &layout.service_ca_key(),
        &layout.service_ca_cert(),
    )?;
    let server = new_server_cert(&ca_der, &ca_key, &names, days)?;
    // Key first, then the certificate: a crash in between leaves the old certificate (still
    // without the names) beside the new key, and the next start with the same configuration
    // issues a matching pair again.
    seal_to(
        &layout.server_key(),
        &server.key.pkcs8,
        passphrase,
        SERVER_KEY_LABEL,
        meta.seal_kdf,
        Overwrite::Replace,
    )?;
    write_cert(&layout.server_cert(), &server.der, Overwrite::Replace)?;
    crate::integrity::seal(&layout, &pepper)?;
    tracing::info!(added = ?missing, names = ?names, "gRPC server certificate re-issued for the configured names");
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(s: &str) -> Passphrase {
        Passphrase::from_bytes(s.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn opts(dir: &Path) -> InitOptions {
        let mut o = InitOptions::new(dir, pass("daemon-pass-for-tests"), "http://127.0.0.1:8080/");
        o.root_passphrase = Some(pass("root-pass-for-tests"));
        o.kdf = KdfParams::PRODUCTION_FLOOR;
        o
    }

    #[test]
    fn url_helpers() {
        let b = "http://ca.example:8080";
        assert_eq!(
            issuer_crl_url(b, "iss-1"),
            "http://ca.example:8080/crl/iss-1.crl"
        );
        assert_eq!(root_crl_url(b), "http://ca.example:8080/crl/root.crl");
        assert_eq!(ocsp_url(b), "http://ca.example:8080/ocsp");
        assert_eq!(
            issuer_cert_url(b, "iss-1"),
            "http://ca.example:8080/ca/iss-1.crt"
        );
        assert_eq!(role_uri("ops"), "urn:pki:role:ops");
        assert!(validate_url_base("ftp://x").is_err());
        assert!(validate_url_base("http://").is_err());
        assert!(validate_url_base("http://a b").is_err());
        assert_eq!(
            validate_url_base("https://x/").ok().as_deref(),
            Some("https://x")
        );
    }

    #[test]
    fn init_load_rotate_renew() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let o = opts(dir.path());
        let report = init(&o)?;
        assert!(report.issuer_id.starts_with("iss-") && report.issuer_id.len() == 20);
        assert!(report.dev_files.is_empty());
        assert_eq!(report.client_files.len(), 2 + 2 * SERVICE_ROLES.len());
        assert!(!dir.path().join(STAGING_DIR).exists());

        let pki = load(dir.path(), &o.passphrase)?;
        assert_eq!(pki.url_base, "http://127.0.0.1:8080");
        assert_eq!(pki.active_issuer_id, report.issuer_id);
        assert_eq!(pki.pepper.len(), PEPPER_LEN);
        let active = pki.active_issuer().ok_or("no active issuer")?;
        assert!(active.not_after > OffsetDateTime::now_utc());
        assert!(active.rcgen_issuer().is_ok());
        let old_responder_after = active.responder_not_after()?;

        // The root key is sealed with the root passphrase only.
        let layout = Layout::new(dir.path());
        assert!(matches!(
            sealed::read_sealed_file(&layout.root_key(), &o.passphrase, ROOT_KEY_LABEL),
            Err(SealError::WrongPassphrase)
        ));

        // Rotation with a wrong daemon passphrase changes nothing.
        let before = std::fs::read(layout.active_issuer())?;
        assert!(
            rotate_issuer(
                dir.path(),
                &pass("root-pass-for-tests"),
                &pass("typo"),
                365,
                7
            )
            .is_err()
        );
        assert!(rotate_issuer(dir.path(), &pass("wrong-root"), &o.passphrase, 365, 7).is_err());
        assert_eq!(std::fs::read(layout.active_issuer())?, before);

        let new_id = rotate_issuer(
            dir.path(),
            &pass("root-pass-for-tests"),
            &o.passphrase,
            365,
            7,
        )?;
        assert_ne!(new_id, report.issuer_id);
        let pki = load(dir.path(), &o.passphrase)?;
        assert_eq!(pki.issuers.len(), 2);
        assert_eq!(pki.active_issuer_id, new_id);
        let active = pki.active_issuer().ok_or("no active issuer")?;
        let days = (active.not_after - active.not_before).whole_days();
        assert_eq!(days, 365);

        assert_eq!(PkiMetadata::read(&layout)?.root_crl_number, 2);
        assert_eq!(
            refresh_root_crl(dir.path(), &pass("root-pass-for-tests"))?,
            3
        );
        assert!(refresh_root_crl(dir.path(), &pass("daemon-pass-for-tests")).is_err());
        let crl_der = std::fs::read(layout.root_crl())?;
        let (_, crl) = x509_parser::parse_x509_crl(&crl_der)?;
        assert_eq!(
            crl.crl_number().map(|n| n.to_string()).as_deref(),
            Some("3")
        );

        let renewed = renew_responder(dir.path(), &report.issuer_id, &o.passphrase, 3)?;
        assert!(renewed.not_after < old_responder_after);
        let pki = load(dir.path(), &o.passphrase)?;
        let first = pki.issuer(&report.issuer_id).ok_or("first issuer gone")?;
        assert_eq!(first.responder_cert_der, renewed.cert_der);
        assert!(matches!(
            renew_responder(dir.path(), "iss-nope", &o.passphrase, 3),
            Err(PkiError::UnknownIssuer { .. })
        ));
        Ok(())
    }

    #[test]
    fn swapped_key_is_detected() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let o = opts(dir.path());
        let report = init(&o)?;
        let layout = Layout::new(dir.path());
        // Put a different (validly sealed) key in the responder's place.
        let other = keys::generate(KeyType::P256)?;
        let bytes = sealed::seal(
            &other.pkcs8,
            &o.passphrase,
            &responder_key_label(&report.issuer_id),
            KdfParams::test_fast(),
        )?;
        sealed::write_sealed_file_replace(&layout.responder_key(&report.issuer_id), &bytes)?;
        assert!(matches!(
            load(dir.path(), &o.passphrase),
            Err(PkiError::KeyMismatch { .. })
        ));
        Ok(())
    }

    #[test]
    fn dev_options_write_the_passphrase() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("var");
        let mut o = InitOptions::dev(&data, "http://127.0.0.1:8080")?;
        o.kdf = KdfParams::DEV_FLOOR;
        let p = dev_passphrase_path(&data);
        assert_eq!(std::fs::metadata(&p)?.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(data.join("dev"))?.permissions().mode() & 0o777,
            0o700
        );
        let from_file = Passphrase::from_file(&p)?;
        assert_eq!(from_file.expose(), o.passphrase.expose());
        let report = init(&o)?;
        assert_eq!(report.dev_passphrase_file.as_deref(), Some(p.as_path()));
        assert_eq!(report.dev_files.len(), 2 + 2 * SERVICE_ROLES.len());
        assert!(report.client_files.is_empty());
        assert!(load(&data, &from_file).is_ok());
        assert!(matches!(
            InitOptions::dev(&data, "http://127.0.0.1:8080"),
            Err(PkiError::AlreadyInitialized { .. })
        ));
        Ok(())
    }

    #[test]
    fn bad_options_create_nothing() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("d");
        let mut o = opts(&data);
        o.url_base = "ldap://x".into();
        assert!(matches!(init(&o), Err(PkiError::InvalidOption { .. })));
        let mut o = opts(&data);
        o.ocsp_validity_days = 0;
        assert!(matches!(init(&o), Err(PkiError::InvalidOption { .. })));
        let mut o = opts(&data);
        o.server_names = vec!["bad name".into()];
        assert!(matches!(init(&o), Err(PkiError::InvalidOption { .. })));
        assert!(!data.exists());
        assert!(matches!(
            load(&data, &pass("x")),
            Err(PkiError::NotInitialized { .. })
        ));
        Ok(())
    }
}
