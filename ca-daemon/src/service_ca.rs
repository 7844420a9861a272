//! Service client certificates after `init` (issue #12 item 8): `ca-daemon service issue`
//! mints a `portal`, `gateway` or `ops` client certificate from the service-client CA, and
//! `ca-daemon service revoke` adds one to the service CA's CRL, `keys/service-ca.crl`, which
//! the gRPC edge checks on every connection ([`crate::grpc::service_crl`]).
//!
//! Both are local commands: they unseal the service CA key with the passphrase and write files;
//! the running daemon notices a new CRL at the next handshake. Nothing here touches the store
//! (the daemon holds it), so these operations are logged, not in the audit chain.

use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::keys::fsutil::{self, Overwrite, PUBLIC_FILE_MODE, SECRET_FILE_MODE};
use crate::keys::sealed::read_sealed_file;
use crate::keys::{self, KeyType, Passphrase};
use crate::pki::{self, Layout, PkiError, SERVICE_CA_KEY_LABEL, SERVICE_ROLES};

/// Default validity of a service client certificate from `service issue` and `init`, in days:
/// short, because a stolen portal key is only as bad as its certificate is long (issue #12
/// item 8); renew with `service issue` and revoke the old one.
pub const DEFAULT_CLIENT_VALIDITY_DAYS: u32 = 90;

/// The service CA's CRL in `keys/`.
pub fn crl_path(layout: &Layout) -> PathBuf {
    layout.keys_dir().join("service-ca.crl")
}

/// A freshly issued service client certificate.
pub struct IssuedClient {
    /// Serial, lowercase hex.
    pub serial_hex: String,
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PKCS#8 PEM.
    pub key_pem: Zeroizing<String>,
    /// notAfter.
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for IssuedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedClient")
            .field("serial_hex", &self.serial_hex)
            .field("key_pem", &"<redacted>")
            .field("not_after", &self.not_after)
            .finish()
    }
}

fn invalid(option: &'static str, reason: impl Into<String>) -> PkiError {
    PkiError::InvalidOption {
        option,
        reason: reason.into(),
    }
}

fn cert_err(e: rcgen::Error) -> PkiError {
    invalid("certificate", e.to_string())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The service CA as an rcgen issuer, its DER and notAfter.
fn service_ca(
    layout: &Layout,
    passphrase: &Passphrase,
) -> Result<(Issuer<'static, rcgen::KeyPair>, OffsetDateTime), PkiError> {
    let ca_der = pki::read_cert_pem(&layout.service_ca_cert())?;
    let path = layout.service_ca_key();
    let pkcs8 = read_sealed_file(&path, passphrase, SERVICE_CA_KEY_LABEL).map_err(|source| {
        PkiError::Sealed {
            path: path.clone(),
            source,
        }
    })?;
    let key = keys::key_pair_from_pkcs8(&pkcs8)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&ca_der)
        .map_err(|e| invalid("service-ca.crt", e.to_string()))?;
    let not_after = parsed.validity().not_after.to_datetime();
    let issuer =
        Issuer::from_ca_cert_der(&CertificateDer::from(ca_der.clone()), key).map_err(cert_err)?;
    Ok((issuer, not_after))
}

/// Issues a client certificate for `role` (CN `name`, SAN `urn:pki:role:<role>`) valid for
/// `days` (capped at the service CA's notAfter).
pub fn issue(
    data_dir: &Path,
    passphrase: &Passphrase,
    role: &str,
    name: &str,
    days: u32,
) -> Result<IssuedClient, PkiError> {
    if !SERVICE_ROLES.contains(&role) {
        return Err(invalid(
            "role",
            format!("'{role}' is not one of {}", SERVICE_ROLES.join(", ")),
        ));
    }
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(invalid("name", "1 to 64 printable characters"));
    }
    if days == 0 || days > 825 {
        return Err(invalid("days", "1..=825"));
    }
    let layout = Layout::new(data_dir);
    let (ca, ca_not_after) = service_ca(&layout, passphrase)?;
    let now = OffsetDateTime::now_utc();
    let key = keys::generate(KeyType::P256)?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.not_before = now - Duration::minutes(5);
    p.not_after = (now + Duration::days(i64::from(days))).min(ca_not_after);
    let serial = keys::random_serial();
    p.serial_number = Some(serial.clone());
    p.key_identifier_method = KeyIdMethod::Sha256;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    let uri = pki::role_uri(role).try_into().map_err(cert_err)?;
    p.subject_alt_names = vec![SanType::URI(uri)];
    let cert = p.signed_by(&key.key_pair, &ca).map_err(cert_err)?;
    let key_pem = Zeroizing::new(pki::pem_encode("PRIVATE KEY", &key.pkcs8));
    let serial_hex = hex::encode(serial.as_ref());
    tracing::info!(role, name, serial = %serial_hex, not_after = %p.not_after,
        "service client certificate issued");
    Ok(IssuedClient {
        serial_hex,
        cert_pem: cert.pem(),
        key_pem,
        not_after: p.not_after,
    })
}

/// Writes an issued certificate and key as `<dir>/<file_stem>.crt` (0644) and `.key` (0600);
/// refuses to overwrite.
pub fn write_issued(dir: &Path, file_stem: &str, c: &IssuedClient) -> Result<(), PkiError> {
    let cert = dir.join(format!("{file_stem}.crt"));
    let key = dir.join(format!("{file_stem}.key"));
    fsutil::write_atomic(
        &key,
        c.key_pem.as_bytes(),
        SECRET_FILE_MODE,
        Overwrite::Refuse,
    )
    .map_err(io_err(&key))?;
    fsutil::write_atomic(
        &cert,
        c.cert_pem.as_bytes(),
        PUBLIC_FILE_MODE,
        Overwrite::Refuse,
    )
    .map_err(io_err(&cert))
}

/// What `service revoke` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlReport {
    /// The new CRL's number.
    pub number: u64,
    /// Serials on it (lowercase hex).
    pub serials: Vec<String>,
    /// Whether the serial was already on the previous CRL.
    pub already_revoked: bool,
}

/// Parses a serial given as hex (optionally with `:` separators).
pub fn parse_serial(text: &str) -> Result<Vec<u8>, PkiError> {
    let clean: String = text.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(clean.to_ascii_lowercase())
        .map_err(|_| invalid("serial", "not hexadecimal"))?;
    if bytes.is_empty() || bytes.len() > 20 {
        return Err(invalid("serial", "1 to 20 bytes"));
    }
    Ok(bytes)
}

/// The serial of a certificate PEM file.
pub fn serial_of_cert_file(path: &Path) -> Result<Vec<u8>, PkiError> {
    let der = pki::read_cert_pem(path)?;
    let (_, c) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| invalid("cert", e.to_string()))?;
    Ok(c.raw_serial().to_vec())
}

/// Adds `serial` to the service CA's CRL (creating it if needed) and writes the re-signed CRL
/// atomically. Entries of the previous CRL are kept with their dates and reasons.
pub fn revoke(
    data_dir: &Path,
    passphrase: &Passphrase,
    serial: &[u8],
    reason: RevocationReason,
) -> Result<CrlReport, PkiError> {
    let layout = Layout::new(data_dir);
    let (ca, ca_not_after) = service_ca(&layout, passphrase)?;
    let path = crl_path(&layout);
    let mut revoked: Vec<RevokedCertParams> = Vec::new();
    let mut number = 0u64;
    match std::fs::read(&path) {
        Ok(der) => {
            let (_, crl) = x509_parser::parse_x509_crl(&der)
                .map_err(|e| invalid("service-ca.crl", e.to_string()))?;
            number = crl
                .crl_number()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0);
            for r in crl.iter_revoked_certificates() {
                revoked.push(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(r.raw_serial()),
                    revocation_time: r.revocation_date.to_datetime(),
                    reason_code: r.reason_code().map(|(_, c)| reason_from_code(c.0)),
                    invalidity_date: None,
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&path)(e)),
    }
    let already_revoked = revoked.iter().any(|r| r.serial_number.as_ref() == serial);
    let now = OffsetDateTime::now_utc();
    if !already_revoked {
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(serial),
            revocation_time: now.replace_nanosecond(0).unwrap_or(now),
            reason_code: Some(reason),
            invalidity_date: None,
        });
    }
    number += 1;
    let serials = revoked
        .iter()
        .map(|r| hex::encode(r.serial_number.as_ref()))
        .collect();
    let params = CertificateRevocationListParams {
        this_update: now - Duration::minutes(5),
        // The daemon does not enforce nextUpdate for this CRL (it is re-signed by hand, and
        // an expired one must not lock every service out); it lasts as long as the CA.
        next_update: ca_not_after,
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&ca).map_err(cert_err)?;
    fsutil::write_atomic(&path, crl.der(), PUBLIC_FILE_MODE, Overwrite::Replace)
        .map_err(io_err(&path))?;
    tracing::warn!(serial = %hex::encode(serial), crl_number = number, already_revoked,
        "service client certificate revoked");
    Ok(CrlReport {
        number,
        serials,
        already_revoked,
    })
}

fn reason_from_code(code: u8) -> RevocationReason {
    match code {
        1 => RevocationReason::KeyCompromise,
        2 => RevocationReason::CaCompromise,
        3 => RevocationReason::AffiliationChanged,
        4 => RevocationReason::Superseded,
        5 => RevocationReason::CessationOfOperation,
        6 => RevocationReason::CertificateHold,
        8 => RevocationReason::RemoveFromCrl,
        9 => RevocationReason::PrivilegeWithdrawn,
        10 => RevocationReason::AaCompromise,
        _ => RevocationReason::Unspecified,
    }
}

/// Parses a reason name as the CLI takes it.
pub fn parse_reason(name: &str) -> Option<RevocationReason> {
    Some(match name {
        "unspecified" => RevocationReason::Unspecified,
        "key_compromise" => RevocationReason::KeyCompromise,
        "affiliation_changed" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessation_of_operation" => RevocationReason::CessationOfOperation,
        "privilege_withdrawn" => RevocationReason::PrivilegeWithdrawn,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev_pki() -> (tempfile::TempDir, PathBuf, Passphrase) {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("var");
        let mut opts = pki::InitOptions::dev(&data, "http://127.0.0.1:8080").expect("dev opts");
        opts.kdf = crate::keys::sealed::KdfParams::DEV_FLOOR;
        pki::init(&opts).expect("init");
        let pass = Passphrase::from_file(&pki::dev_passphrase_path(&data)).expect("passphrase");
        (dir, data, pass)
    }

    #[test]
    fn issue_then_revoke_builds_a_growing_crl() {
        let (_d, data, pass) = dev_pki();
        let a = issue(&data, &pass, "portal", "portal-2", 30).expect("issue");
        assert!(a.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(a.not_after <= OffsetDateTime::now_utc() + Duration::days(31));
        assert!(!format!("{a:?}").contains("PRIVATE KEY"));
        let b = issue(&data, &pass, "gateway", "gw-2", 30).expect("issue");
        let r1 = revoke(
            &data,
            &pass,
            &parse_serial(&a.serial_hex).expect("hex"),
            RevocationReason::KeyCompromise,
        )
        .expect("revoke");
        assert_eq!(
            (r1.number, r1.serials.len(), r1.already_revoked),
            (1, 1, false)
        );
        let r2 = revoke(
            &data,
            &pass,
            &parse_serial(&b.serial_hex).expect("hex"),
            RevocationReason::Superseded,
        )
        .expect("revoke");
        assert_eq!(r2.number, 2);
        assert_eq!(r2.serials, vec![a.serial_hex.clone(), b.serial_hex.clone()]);
        let r3 = revoke(
            &data,
            &pass,
            &parse_serial(&a.serial_hex).expect("hex"),
            RevocationReason::KeyCompromise,
        )
        .expect("revoke again");
        assert!(r3.already_revoked);
        assert_eq!(r3.serials.len(), 2);
        assert!(
            issue(&data, &pass, "admin", "x", 30).is_err(),
            "unknown role"
        );
        assert!(parse_serial("zz").is_err());
    }
}

/// `ca-daemon service` subcommands (wired in [`crate::cli`]).
pub mod cli {
    use std::path::PathBuf;

    use clap::{Args, Subcommand};

    use super::*;

    /// Service client certificates (portal, gateway, ops).
    #[derive(Debug, Subcommand)]
    pub enum ServiceCommand {
        /// Issue a client certificate for a role from the service-client CA (local: needs the passphrase).
        #[command(
            after_help = "Example:\n  ca-daemon service issue --data-dir /var/lib/ca-daemon --passphrase-file /etc/ca-daemon/passphrase --role portal --name portal-2 --out /root/portal-2"
        )]
        Issue(IssueArgs),
        /// Revoke a service client certificate: re-signs DATA_DIR/keys/service-ca.crl; the running daemon refuses the certificate from its next connection.
        #[command(
            after_help = "Example:\n  ca-daemon service revoke --data-dir /var/lib/ca-daemon --passphrase-file /etc/ca-daemon/passphrase --cert /root/portal-1/portal-1.crt --reason key_compromise"
        )]
        Revoke(RevokeArgs),
    }

    /// `service issue`.
    #[derive(Debug, Args)]
    pub struct IssueArgs {
        /// Data directory.
        #[arg(long, default_value = "./var")]
        pub data_dir: PathBuf,
        /// File with the keys' passphrase [default: DATA_DIR/dev/passphrase].
        #[arg(long)]
        pub passphrase_file: Option<PathBuf>,
        /// Role: portal, gateway or ops.
        #[arg(long)]
        pub role: String,
        /// Subject CN (also the file names), e.g. portal-2.
        #[arg(long)]
        pub name: String,
        /// Validity in days.
        #[arg(long, default_value_t = DEFAULT_CLIENT_VALIDITY_DAYS)]
        pub days: u32,
        /// Directory for NAME.crt and NAME.key (created 0700 if missing; files are never overwritten).
        #[arg(long)]
        pub out: PathBuf,
        /// Print JSON.
        #[arg(long)]
        pub json: bool,
    }

    /// `service revoke`.
    #[derive(Debug, Args)]
    #[command(group(clap::ArgGroup::new("which").required(true).args(["serial", "cert"])))]
    pub struct RevokeArgs {
        /// Data directory.
        #[arg(long, default_value = "./var")]
        pub data_dir: PathBuf,
        /// File with the keys' passphrase [default: DATA_DIR/dev/passphrase].
        #[arg(long)]
        pub passphrase_file: Option<PathBuf>,
        /// Serial of the certificate (hex).
        #[arg(long)]
        pub serial: Option<String>,
        /// The certificate (PEM) to revoke.
        #[arg(long)]
        pub cert: Option<PathBuf>,
        /// Reason: unspecified, key_compromise, affiliation_changed, superseded, cessation_of_operation, privilege_withdrawn.
        #[arg(long, default_value = "key_compromise")]
        pub reason: String,
        /// Print JSON.
        #[arg(long)]
        pub json: bool,
    }

    fn passphrase(
        data_dir: &std::path::Path,
        file: Option<&PathBuf>,
    ) -> Result<Passphrase, String> {
        let path = file
            .cloned()
            .unwrap_or_else(|| pki::dev_passphrase_path(data_dir));
        Passphrase::from_file(&path).map_err(|e| e.to_string())
    }

    /// Runs a `service` subcommand (blocking: KDF and signing).
    pub fn run(cmd: ServiceCommand) -> Result<(), String> {
        match cmd {
            ServiceCommand::Issue(a) => {
                let pass = passphrase(&a.data_dir, a.passphrase_file.as_ref())?;
                let c = issue(&a.data_dir, &pass, &a.role, &a.name, a.days)
                    .map_err(|e| format!("service issue: {e}"))?;
                if !a.out.exists() {
                    crate::keys::fsutil::create_dir_all_private(&a.out)
                        .map_err(|e| format!("cannot create {}: {e}", a.out.display()))?;
                }
                write_issued(&a.out, &a.name, &c).map_err(|e| format!("service issue: {e}"))?;
                let not_after = c
                    .not_after
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                if a.json {
                    println!(
                        "{}",
                        serde_json::json!({"serial": c.serial_hex, "role": a.role, "name": a.name,
                            "not_after": not_after,
                            "cert": a.out.join(format!("{}.crt", a.name)),
                            "key": a.out.join(format!("{}.key", a.name))})
                    );
                } else {
                    println!(
                        "issued {} certificate {} (serial {}, until {not_after}) into {}",
                        a.role,
                        a.name,
                        c.serial_hex,
                        a.out.display()
                    );
                }
                Ok(())
            }
            ServiceCommand::Revoke(a) => {
                let reason = parse_reason(&a.reason)
                    .ok_or_else(|| format!("unknown reason '{}'", a.reason))?;
                let serial = match (&a.serial, &a.cert) {
                    (Some(s), _) => parse_serial(s),
                    (None, Some(p)) => serial_of_cert_file(p),
                    (None, None) => return Err("give --serial or --cert".into()),
                }
                .map_err(|e| format!("service revoke: {e}"))?;
                let pass = passphrase(&a.data_dir, a.passphrase_file.as_ref())?;
                let r = revoke(&a.data_dir, &pass, &serial, reason)
                    .map_err(|e| format!("service revoke: {e}"))?;
                if a.json {
                    println!(
                        "{}",
                        serde_json::json!({"serial": hex::encode(&serial), "crl_number": r.number,
                            "revoked_serials": r.serials, "already_revoked": r.already_revoked})
                    );
                } else {
                    println!(
                        "service CRL #{} written ({} revoked){}",
                        r.number,
                        r.serials.len(),
                        if r.already_revoked {
                            "; the serial was already on it"
                        } else {
                            ""
                        }
                    );
                }
                Ok(())
            }
        }
    }
}
