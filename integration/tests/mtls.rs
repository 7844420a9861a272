//! Who may talk to the gRPC port (DESIGN §6, §10), each refusal checked at the layer that must
//! make it:
//!
//! | client | refused where | how it shows |
//! | --- | --- | --- |
//! | no client certificate | TLS handshake (rustls) | alert `certificate_required` |
//! | expired service certificate (signed by the service CA) | TLS handshake | alert `certificate_expired` |
//! | device certificate (device issuer), even one naming `urn:pki:role:ops` | TLS handshake | alert `unknown_ca` |
//! | certificate of an unknown CA | TLS handshake | alert `unknown_ca` |
//! | TLS 1.2-only client | TLS handshake | alert `protocol_version` |
//! | valid service certificate without a role URI | accept loop, right after the handshake | connection closed, never reaches HTTP/2 |
//! | valid service certificate of an unknown role (`intruder`) | allow-list layer | PERMISSION_DENIED on every v1 RPC |
//! | `gateway` calling `Admin.ListIssuers` | allow-list layer | PERMISSION_DENIED |
//!
//! The TLS probes use rustls directly (not tonic), so a refusal is seen as what it is: with TLS
//! 1.3 a client certificate is judged after the client has sent its Finished, so the server's
//! alert arrives on the first read. The daemon's log names the reason of every refused
//! connection, which the test checks too.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ca_daemon::keys::{Passphrase, key_pair_from_pkcs8, sealed::read_sealed_file};
use integration::Daemon;
use pki_proto::v1;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;

/// A client certificate and key, DER and PEM.
struct ClientCert {
    cert_der: Vec<u8>,
    cert_pem: String,
    key_der: Vec<u8>,
    key_pem: String,
}

impl ClientCert {
    fn from_pem_files(cert: &Path, key: &Path) -> Self {
        let cert_pem = std::fs::read_to_string(cert).expect("read client cert");
        let key_pem = std::fs::read_to_string(key).expect("read client key");
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .expect("client cert PEM")
            .to_vec();
        let key_der = match PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM") {
            PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
            other => panic!("dev key is not PKCS#8: {other:?}"),
        };
        Self {
            cert_der,
            cert_pem,
            key_der,
            key_pem,
        }
    }

    fn identity(&self) -> (Vec<u8>, Vec<u8>) {
        (
            self.cert_pem.clone().into_bytes(),
            self.key_pem.clone().into_bytes(),
        )
    }
}

/// What a raw TLS connection attempt ended in.
#[derive(Debug)]
enum Outcome {
    /// The server answered HTTP/2 (its SETTINGS frame): the connection was accepted.
    Served,
    /// The TLS layer refused: the error names the alert.
    Refused(String),
    /// The handshake completed but the server closed (or reset) the connection without a TLS
    /// alert and without speaking HTTP/2.
    Closed,
}

/// Connects with `config` (ALPN h2), sends the HTTP/2 client preface, and reads the answer.
async fn probe(addr: SocketAddr, config: rustls::ClientConfig) -> Outcome {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("TCP connect to the gRPC port");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").expect("server name");
    let mut tls = match connector.connect(name, tcp).await {
        Ok(t) => t,
        Err(e) => return Outcome::Refused(e.to_string()),
    };
    // HTTP/2 client preface + an empty SETTINGS frame.
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    if let Err(e) = tls.write_all(&preface).await {
        return Outcome::Refused(e.to_string());
    }
    let _ = tls.flush().await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(15), tls.read(&mut buf)).await {
        Err(_) => panic!("no answer within 15 s"),
        Ok(Ok(0)) => Outcome::Closed,
        Ok(Ok(_)) => Outcome::Served,
        // EOF without close_notify, or a reset because our preface was never read.
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Outcome::Closed
        }
        Ok(Err(e)) => Outcome::Refused(e.to_string()),
    }
}

fn client_config(
    ca_der: &[u8],
    identity: Option<&ClientCert>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .expect("service CA is a valid trust anchor");
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some(c) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(c.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key_der.clone())),
            )
            .expect("client identity"),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg
}

fn tls13() -> [&'static rustls::SupportedProtocolVersion; 1] {
    [&rustls::version::TLS13]
}

/// A client certificate for `role_uri` (None: no SAN URI at all), valid `from..until`, signed by
/// `issuer`.
fn make_client_cert(
    issuer: &Issuer<'_, KeyPair>,
    cn: &str,
    role_uri: Option<&str>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> ClientCert {
    let key = KeyPair::generate().expect("generate key");
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.not_before = not_before;
    p.not_after = not_after;
    p.serial_number = Some(SerialNumber::from_slice(
        &rand::random::<[u8; 16]>().map(|b| b & 0x7f),
    ));
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    p.subject_alt_names = match role_uri {
        Some(u) => vec![SanType::URI(u.try_into().expect("URI"))],
        None => vec![SanType::DnsName(
            "client.example".try_into().expect("DNS name"),
        )],
    };
    let cert = p.signed_by(&key, issuer).expect("sign client cert");
    ClientCert {
        cert_der: cert.der().to_vec(),
        cert_pem: cert.pem(),
        key_der: key.serialize_der(),
        key_pem: key.serialize_pem(),
    }
}

/// The service-client CA as an rcgen issuer (its key unsealed with the dev passphrase).
fn service_ca(d: &Daemon) -> (Vec<u8>, Issuer<'static, KeyPair>) {
    let keys = d.data_dir.join("keys");
    let ca_der = integration::tools::cert_der_from_pem_file(&keys.join("service-ca.crt"))
        .expect("service CA cert");
    let issuer = unsealed_issuer(
        d,
        &keys.join("service-ca.key.sealed"),
        "service-ca",
        &ca_der,
    );
    (ca_der, issuer)
}

/// The active device issuer as an rcgen issuer.
fn device_issuer(d: &Daemon) -> Issuer<'static, KeyPair> {
    let keys = d.data_dir.join("keys");
    let id = std::fs::read_to_string(keys.join("active-issuer")).expect("active-issuer");
    let id = id.trim();
    let dir = keys.join("issuers").join(id);
    let der = integration::tools::cert_der_from_pem_file(&dir.join("issuer.crt")).expect("issuer");
    unsealed_issuer(
        d,
        &dir.join("issuer.key.sealed"),
        &format!("issuer:{id}"),
        &der,
    )
}

fn unsealed_issuer(
    d: &Daemon,
    sealed: &Path,
    label: &str,
    ca_der: &[u8],
) -> Issuer<'static, KeyPair> {
    let pass = Passphrase::from_file(&d.dev_dir().join("passphrase")).expect("dev passphrase");
    let pkcs8 = read_sealed_file(sealed, &pass, label).expect("unseal CA key");
    let key = key_pair_from_pkcs8(&pkcs8).expect("CA key");
    Issuer::from_ca_cert_der(&CertificateDer::from(ca_der.to_vec()), key).expect("CA issuer")
}

/// A self-made CA nobody trusts.
fn unknown_ca() -> Issuer<'static, KeyPair> {
    let key = KeyPair::generate().expect("generate key");
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Service Client CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(30);
    let _ = p.self_signed(&key).expect("self-signed CA");
    Issuer::new(p, key)
}

fn assert_alert(what: &str, outcome: &Outcome, alert: &str) {
    match outcome {
        Outcome::Refused(e) => assert!(
            e.contains(alert),
            "{what}: refused, but with {e:?} instead of alert {alert}"
        ),
        other => panic!("{what}: expected a TLS refusal ({alert}), got {other:?}"),
    }
}

/// Waits until the daemon's log has `needle` (the accept loop logs asynchronously).
fn assert_logged(d: &Daemon, needle: &str) {
    for _ in 0..50 {
        if d.log().contains(needle) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("daemon log lacks {needle:?}:\n{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_client_is_refused_at_the_right_layer() {
    let d = tokio::task::block_in_place(Daemon::start).expect("daemon starts");
    let dev = d.dev_dir();
    let (ca_der, service_ca) = service_ca(&d);
    let ca_pem = std::fs::read(dev.join("service-ca.crt")).expect("service CA PEM");
    let ops = ClientCert::from_pem_files(&dev.join("ops.crt"), &dev.join("ops.key"));
    let now = OffsetDateTime::now_utc();
    let valid = (
        now - time::Duration::hours(1),
        now + time::Duration::days(30),
    );

    // Sanity: the dev ops certificate gets through TLS and HTTP/2.
    let o = probe(d.grpc, client_config(&ca_der, Some(&ops), &tls13())).await;
    assert!(matches!(o, Outcome::Served), "dev ops certificate: {o:?}");

    // 1. No client certificate: the handshake fails (client auth is required).
    let o = probe(d.grpc, client_config(&ca_der, None, &tls13())).await;
    assert_alert("no client certificate", &o, "CertificateRequired");
    // ... and through tonic the channel never carries a call.
    let r = d.channel_with(None, ca_pem.clone()).await;
    if let Ok(ch) = r {
        let e = v1::revocation_client::RevocationClient::new(ch)
            .get_ca_chain(v1::GetCaChainRequest {})
            .await
            .expect_err("a call without a client certificate must fail");
        assert!(
            matches!(
                e.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled
            ),
            "no client certificate through tonic: {e:?}"
        );
    }

    // 2. Expired service certificate with a good role: certificate_expired.
    let expired = make_client_cert(
        &service_ca,
        "ops",
        Some("urn:pki:role:ops"),
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    );
    let o = probe(d.grpc, client_config(&ca_der, Some(&expired), &tls13())).await;
    assert_alert("expired service certificate", &o, "CertificateExpired");

    // 3. A device certificate (signed by the device issuer), even one that claims the ops
    //    role: the device CA is not the service trust anchor.
    let device = make_client_cert(
        &device_issuer(&d),
        "山田 花子",
        Some("urn:pki:role:ops"),
        valid.0,
        valid.1,
    );
    let o = probe(d.grpc, client_config(&ca_der, Some(&device), &tls13())).await;
    assert_alert("device certificate", &o, "UnknownCA");

    // 4. A certificate from an unknown CA (same subject name as the service CA).
    let stranger = make_client_cert(
        &unknown_ca(),
        "ops",
        Some("urn:pki:role:ops"),
        valid.0,
        valid.1,
    );
    let o = probe(d.grpc, client_config(&ca_der, Some(&stranger), &tls13())).await;
    assert_alert("unknown CA", &o, "UnknownCA");

    // 5. TLS 1.2 only: the server speaks TLS 1.3 only.
    let o = probe(
        d.grpc,
        client_config(&ca_der, Some(&ops), &[&rustls::version::TLS12]),
    )
    .await;
    assert_alert("TLS 1.2-only client", &o, "ProtocolVersion");

    assert_logged(&d, "TLS handshake failed");

    // 6. A valid service certificate without a role URI: TLS completes (the certificate is
    //    fine), then the accept loop drops the connection before HTTP/2, so no handler and no
    //    allow-list ever sees it.
    let no_role = make_client_cert(&service_ca, "nobody", None, valid.0, valid.1);
    let o = probe(d.grpc, client_config(&ca_der, Some(&no_role), &tls13())).await;
    assert!(
        matches!(o, Outcome::Closed),
        "certificate without role: {o:?}"
    );
    assert_logged(&d, "client certificate names no role");
    // A role URI with a character outside a-z is no role either.
    let bad_role = make_client_cert(
        &service_ca,
        "Ops",
        Some("urn:pki:role:Ops"),
        valid.0,
        valid.1,
    );
    let o = probe(d.grpc, client_config(&ca_der, Some(&bad_role), &tls13())).await;
    assert!(
        matches!(o, Outcome::Closed),
        "certificate with role 'Ops': {o:?}"
    );

    // 7. A valid service certificate of a role the policy does not know. The TLS layer accepts
    //    any lower-case role name (tls.rs only reads it); the allow-list layer (auth.rs) gives
    //    an unknown role no method, so every v1 call is PERMISSION_DENIED before any handler
    //    runs. Health and reflection stay open to every authenticated peer by design.
    let intruder = make_client_cert(
        &service_ca,
        "intruder",
        Some("urn:pki:role:intruder"),
        valid.0,
        valid.1,
    );
    let o = probe(d.grpc, client_config(&ca_der, Some(&intruder), &tls13())).await;
    assert!(matches!(o, Outcome::Served), "intruder passes TLS: {o:?}");
    let ch = d
        .channel_with(Some(intruder.identity()), ca_pem.clone())
        .await
        .expect("intruder connects");
    let e = v1::enrollment_client::EnrollmentClient::new(ch.clone())
        .create_ticket(integration::sample_ticket_request(1, v1::TargetOs::Ios))
        .await
        .expect_err("intruder may not create tickets");
    assert_eq!(
        e.code(),
        Code::PermissionDenied,
        "intruder CreateTicket: {e:?}"
    );
    assert!(e.message().contains("intruder"), "names the role: {e:?}");
    let e = v1::revocation_client::RevocationClient::new(ch.clone())
        .get_ca_chain(v1::GetCaChainRequest {})
        .await
        .expect_err("intruder may not read the chain");
    assert_eq!(
        e.code(),
        Code::PermissionDenied,
        "intruder GetCaChain: {e:?}"
    );
    let e = v1::admin_client::AdminClient::new(ch)
        .list_issuers(v1::ListIssuersRequest {})
        .await
        .expect_err("intruder may not list issuers");
    assert_eq!(
        e.code(),
        Code::PermissionDenied,
        "intruder ListIssuers: {e:?}"
    );

    // 8. gateway may read revocation data but not call Admin.
    let mut admin = d.admin("gateway").await.expect("gateway connects");
    let e = admin
        .list_issuers(v1::ListIssuersRequest {})
        .await
        .expect_err("gateway may not list issuers");
    assert_eq!(
        e.code(),
        Code::PermissionDenied,
        "gateway ListIssuers: {e:?}"
    );
    let mut rev = d.revocation("gateway").await.expect("gateway connects");
    rev.get_ca_chain(v1::GetCaChainRequest {})
        .await
        .expect("gateway reads the chain");
    // ... and a freshly made valid ops certificate works (the CA key we used is the real one).
    let fresh_ops = make_client_cert(
        &service_ca,
        "ops2",
        Some("urn:pki:role:ops"),
        valid.0,
        valid.1,
    );
    let ch = d
        .channel_with(Some(fresh_ops.identity()), ca_pem)
        .await
        .expect("fresh ops connects");
    v1::admin_client::AdminClient::new(ch)
        .list_issuers(v1::ListIssuersRequest {})
        .await
        .expect("a valid ops certificate lists issuers");
}
