//! Abuse limits of the gRPC edge (DESIGN §6), against the real binary with a policy of small
//! limits:
//!
//! - per-caller rate (`[limits] rate_per_caller_per_second = 5, rate_burst = 5`): a burst from
//!   one caller gets RESOURCE_EXHAUSTED for what exceeds the bucket while another caller (the
//!   gateway) is served, and the caller is served again once the bucket refills;
//! - per-ticket rate (`[tickets] rate_per_ticket_per_minute = 3`): a 4th redemption attempt on
//!   one ticket within the minute gets RESOURCE_EXHAUSTED, is not counted as a wrong password,
//!   and other tickets are unaffected; once the bucket refills the right password works;
//! - request size: a CreateTicket over `max_request_bytes` is refused and the daemon serves on;
//! - string length: 256 characters (kanji) pass, 257 get INVALID_ARGUMENT naming the field;
//! - deadlines: a 1 ms deadline on RedeemTicket fails fast, the daemon stays healthy and the
//!   ticket is not burnt;
//! - connections (`max_connections = 8`, `max_concurrent_streams = 4`): see
//!   [`slow_and_idle_connections`] for what was measured.
//!
//! Each scenario uses its own caller (a service certificate with its own CN, minted with the
//! service CA key), since the rate limit is per client certificate.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ca_daemon::keys::{Passphrase, key_pair_from_pkcs8, sealed::read_sealed_file};
use integration::{Daemon, DaemonOptions, sample_ticket_request};
use pki_proto::v1;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Small limits; the connection test uses its own policy (see there).
const POLICY: &str = "\
[limits]
rate_per_caller_per_second = 5
rate_burst = 5
max_connections = 64
max_concurrent_streams = 4

[tickets]
rate_per_ticket_per_minute = 3
";

fn start(policy: &str) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy).expect("write policy");
    let d = tokio::task::block_in_place(|| {
        Daemon::start_with(DaemonOptions {
            policy: Some(path),
            ..Default::default()
        })
    })
    .expect("daemon starts");
    (d, dir)
}

/// A service client certificate for `role` with its own CN (so its own rate-limit bucket),
/// signed with the service CA key of the daemon; returns (cert PEM, key PEM).
fn mint(d: &Daemon, role: &str, cn: &str) -> (Vec<u8>, Vec<u8>) {
    let keys = d.data_dir.join("keys");
    let ca_der = integration::tools::cert_der_from_pem_file(&keys.join("service-ca.crt"))
        .expect("service CA cert");
    let pass = Passphrase::from_file(&d.dev_dir().join("passphrase")).expect("dev passphrase");
    let pkcs8 = read_sealed_file(&keys.join("service-ca.key.sealed"), &pass, "service-ca")
        .expect("unseal the service CA key");
    let ca_key = key_pair_from_pkcs8(&pkcs8).expect("service CA key");
    let issuer =
        Issuer::from_ca_cert_der(&CertificateDer::from(ca_der), ca_key).expect("CA issuer");
    let key = KeyPair::generate().expect("generate key");
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(1);
    p.serial_number = Some(SerialNumber::from_slice(
        &rand::random::<[u8; 16]>().map(|b| b & 0x7f | 1),
    ));
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.subject_alt_names = vec![SanType::URI(
        format!("urn:pki:role:{role}").try_into().expect("URI"),
    )];
    let cert = p.signed_by(&key, &issuer).expect("sign client cert");
    (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
}

async fn channel_as(d: &Daemon, role: &str, cn: &str) -> Channel {
    let ca = std::fs::read(d.dev_dir().join("service-ca.crt")).expect("service CA");
    d.channel_with(Some(mint(d, role, cn)), ca)
        .await
        .expect("connects")
}

fn enrollment(ch: &Channel) -> v1::enrollment_client::EnrollmentClient<Channel> {
    v1::enrollment_client::EnrollmentClient::new(ch.clone())
}

fn revocation(ch: &Channel) -> v1::revocation_client::RevocationClient<Channel> {
    v1::revocation_client::RevocationClient::new(ch.clone())
}

fn redeem(number: &str, password: &str) -> v1::RedeemTicketRequest {
    v1::RedeemTicketRequest {
        number: number.into(),
        password: password.into(),
        os: 0,
        keystore_profile: String::new(),
    }
}

/// A different 8-digit password than `password`.
fn wrong(password: &str) -> String {
    password
        .chars()
        .map(|c| {
            if c == '9' {
                '0'
            } else {
                char::from(c as u8 + 1)
            }
        })
        .collect()
}

/// The daemon answers health and a plain call.
async fn assert_healthy(d: &Daemon, ch: &Channel, what: &str) {
    let (code, _) = integration::http_get(d.http, "/healthz").expect("GET /healthz");
    assert_eq!(code, 200, "{what}: /healthz");
    revocation(ch)
        .get_ca_chain(v1::GetCaChainRequest {})
        .await
        .unwrap_or_else(|e| panic!("{what}: GetCaChain fails: {e:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_caller_rate_limit_spares_other_callers() {
    let (d, _p) = start(POLICY);
    let portal = channel_as(&d, "portal", "portal-burst").await;
    let gateway = channel_as(&d, "gateway", "gateway-edge").await;

    // 20 calls at once from one caller: the bucket holds 5 (plus what refills meanwhile).
    let calls = (0..20).map(|_| {
        let mut c = revocation(&portal);
        async move { c.get_ca_chain(v1::GetCaChainRequest {}).await }
    });
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let exhausted: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .filter(|e| e.code() == Code::ResourceExhausted)
        .collect();
    println!(
        "burst of 20 from one caller: {ok} served, {} RESOURCE_EXHAUSTED",
        exhausted.len()
    );
    assert_eq!(
        ok + exhausted.len(),
        20,
        "only OK or RESOURCE_EXHAUSTED: {results:?}"
    );
    assert!(
        (5..=8).contains(&ok),
        "{ok} of 20 served with a bucket of 5"
    );
    assert!(
        exhausted[0].message().contains("rate"),
        "says why: {:?}",
        exhausted[0]
    );

    // Another caller is served right away, however hard the first one pushes.
    for _ in 0..3 {
        revocation(&gateway)
            .get_ca_chain(v1::GetCaChainRequest {})
            .await
            .expect("gateway served while the portal is limited");
    }
    // The limited caller is refused now, and served again after the bucket refilled.
    let e = revocation(&portal)
        .get_ca_chain(v1::GetCaChainRequest {})
        .await
        .expect_err("still limited");
    assert_eq!(e.code(), Code::ResourceExhausted);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    revocation(&portal)
        .get_ca_chain(v1::GetCaChainRequest {})
        .await
        .expect("served again after a second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ticket_rate_limit_is_not_a_wrong_password() {
    let (d, _p) = start(POLICY);
    let portal = channel_as(&d, "portal", "portal-ticket").await;
    let pace = || tokio::time::sleep(Duration::from_millis(250)); // under 5 calls a second
    let mut enr = enrollment(&portal);
    let t = enr
        .create_ticket(sample_ticket_request(1, v1::TargetOs::Android))
        .await
        .expect("CreateTicket")
        .into_inner();
    let bad = wrong(&t.password);

    // Three attempts in the minute are allowed (here: wrong passwords).
    for i in 1..=3 {
        pace().await;
        let e = enr
            .redeem_ticket(redeem(&t.number, &bad))
            .await
            .expect_err("wrong password");
        assert_eq!(e.code(), Code::Unauthenticated, "attempt {i}: {e:?}");
    }
    // The 4th (wrong) and 5th (right) attempts within the minute are rate-limited.
    pace().await;
    let e = enr
        .redeem_ticket(redeem(&t.number, &bad))
        .await
        .expect_err("4th attempt");
    assert_eq!(e.code(), Code::ResourceExhausted, "4th attempt: {e:?}");
    pace().await;
    let e = enr
        .redeem_ticket(redeem(&t.number, &t.password))
        .await
        .expect_err("5th attempt");
    assert_eq!(e.code(), Code::ResourceExhausted, "5th attempt: {e:?}");
    // Only the three real attempts count as wrong passwords; the ticket is not locked.
    pace().await;
    let ticket = enr
        .get_ticket(v1::GetTicketRequest {
            number: t.number.clone(),
        })
        .await
        .expect("GetTicket")
        .into_inner();
    assert_eq!(
        ticket.failed_attempts, 3,
        "rate-limited attempts are not wrong passwords"
    );
    assert_eq!(ticket.state, v1::TicketState::Active as i32);

    // The limit is per ticket: another ticket redeems at once.
    pace().await;
    let t2 = enr
        .create_ticket(sample_ticket_request(2, v1::TargetOs::Android))
        .await
        .expect("CreateTicket")
        .into_inner();
    pace().await;
    enr.redeem_ticket(redeem(&t2.number, &t2.password))
        .await
        .expect("another ticket is not limited");

    // 3 a minute refill one every 20 s: then the right password works.
    tokio::time::sleep(Duration::from_secs(21)).await;
    let r = enr
        .redeem_ticket(redeem(&t.number, &t.password))
        .await
        .expect("redeems once the ticket's bucket refilled")
        .into_inner();
    assert!(!r.serial.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_long_strings_and_deadlines() {
    let (d, _p) = start(POLICY);
    let pace = || tokio::time::sleep(Duration::from_millis(250));

    // Request size: a remark of 70,000 bytes makes the message larger than the default
    // max_request_bytes (65,536), so the transport refuses it before any handler runs.
    let sizer = channel_as(&d, "portal", "portal-size").await;
    let mut req = sample_ticket_request(3, v1::TargetOs::Ios);
    if let Some(dev) = req.device.as_mut() {
        dev.remark = "x".repeat(70_000);
    }
    let e = enrollment(&sizer)
        .create_ticket(req)
        .await
        .expect_err("an oversized request is refused");
    println!("oversized CreateTicket: {:?} {}", e.code(), e.message());
    assert_eq!(
        e.code(),
        Code::ResourceExhausted,
        "oversized request: {e:?}"
    );
    pace().await;
    assert_healthy(&d, &sizer, "after an oversized request").await;
    pace().await;
    enrollment(&sizer)
        .create_ticket(sample_ticket_request(4, v1::TargetOs::Ios))
        .await
        .expect("a normal request after the oversized one");

    // String length: characters, not bytes (kanji are 3 bytes each in UTF-8). The city is in no
    // subject field, so only the 256-character limit applies to it (fields rendered into the
    // DN are also held to X.520's bounds: tests/tripups.rs).
    let strings = channel_as(&d, "portal", "portal-strings").await;
    let mut req = sample_ticket_request(5, v1::TargetOs::Ios);
    if let Some(f) = req.facility.as_mut() {
        f.city = "山".repeat(256);
    }
    enrollment(&strings)
        .create_ticket(req.clone())
        .await
        .expect("256 characters are allowed");
    if let Some(f) = req.facility.as_mut() {
        f.city = "山".repeat(257);
    }
    pace().await;
    let e = enrollment(&strings)
        .create_ticket(req)
        .await
        .expect_err("257 characters are refused");
    assert_eq!(e.code(), Code::InvalidArgument, "257 characters: {e:?}");
    assert!(
        e.message().contains("facility.city"),
        "names the field: {e:?}"
    );

    // Deadline: 1 ms on RedeemTicket. tonic enforces a deadline on the client side too and
    // reports its own expiry as CANCELLED ("Timeout expired"); a server that answers first
    // says DEADLINE_EXCEEDED or CANCELLED (tonic's server maps its deadline the same way).
    // Either way the call fails fast and nothing is left half done.
    let dl = channel_as(&d, "portal", "portal-deadline").await;
    let t = enrollment(&dl)
        .create_ticket(sample_ticket_request(6, v1::TargetOs::Windows))
        .await
        .expect("CreateTicket")
        .into_inner();
    let mut request = tonic::Request::new(redeem(&t.number, &t.password));
    request.set_timeout(Duration::from_millis(1));
    let started = Instant::now();
    let e = enrollment(&dl)
        .redeem_ticket(request)
        .await
        .expect_err("a 1 ms deadline is missed");
    println!(
        "1 ms deadline: {:?} {} after {:?}",
        e.code(),
        e.message(),
        started.elapsed()
    );
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "1 ms deadline: {e:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2), "fails fast");
    pace().await;
    assert_healthy(&d, &dl, "after a missed deadline").await;
    // The ticket was not burnt: it is still active (then it redeems now) or the redemption
    // completed server-side after the client gave up (then it is redeemed, once).
    pace().await;
    let ticket = enrollment(&dl)
        .get_ticket(v1::GetTicketRequest {
            number: t.number.clone(),
        })
        .await
        .expect("GetTicket")
        .into_inner();
    if ticket.state == v1::TicketState::Active as i32 {
        pace().await;
        // The abandoned attempt may still be running server-side (GetTicket read "active"
        // before it committed); attempts on one number are serialised, so this one then sees
        // it redeemed and gets the one bad-credential answer. Either way: redeemed once.
        match enrollment(&dl)
            .redeem_ticket(redeem(&t.number, &t.password))
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Code::Unauthenticated => {
                let after = enrollment(&dl)
                    .get_ticket(v1::GetTicketRequest {
                        number: t.number.clone(),
                    })
                    .await
                    .expect("GetTicket")
                    .into_inner();
                assert_eq!(
                    after.state,
                    v1::TicketState::Redeemed as i32,
                    "refused, so the abandoned attempt must have redeemed it: {after:?}"
                );
            }
            Err(e) => panic!("the ticket redeems after the missed deadline: {e:?}"),
        }
    } else {
        assert_eq!(ticket.state, v1::TicketState::Redeemed as i32, "{ticket:?}");
    }
}

// ------------------------------------------------------------------------------------------
// Connections

/// An mTLS endpoint as the dev `role` with a long connect timeout (a handshake may wait for a
/// free connection slot).
async fn connect_dev(d: &Daemon, role: &str, connect_timeout: Duration) -> Result<Channel, String> {
    let dev = d.dev_dir();
    let read = |p: PathBuf| std::fs::read(&p).expect("dev file");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(dev.join("service-ca.crt"))))
        .identity(Identity::from_pem(
            read(dev.join(format!("{role}.crt"))),
            read(dev.join(format!("{role}.key"))),
        ))
        .domain_name("localhost");
    let endpoint = Endpoint::from_shared(format!("https://{}", d.grpc))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(connect_timeout)
        .timeout(Duration::from_secs(30));
    // tonic's connect timeout covers the TCP connect, not the TLS handshake that waits for a
    // slot: bound the whole thing.
    tokio::time::timeout(connect_timeout, endpoint.connect())
        .await
        .map_err(|_| format!("no connection within {connect_timeout:?}"))?
        .map_err(|e| format!("{e:?}"))
}

/// Reads a raw TCP connection until the server closes it; returns how long that took.
async fn lifetime(mut s: tokio::net::TcpStream, opened: Instant) -> Duration {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 16];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return opened.elapsed(),
            Ok(_) => {}
        }
    }
}

/// `max_connections = 8`; the TLS handshake timeout is 3 s (src/grpc/tls.rs, fixed).
///
/// What the accept loop does (tls.rs): a connection slot is taken only *after* the client
/// certificate is verified; before that a connection holds one of a bounded set of handshake
/// slots (per source address too, oldest evicted first), for at most the handshake timeout.
///
/// 1. 8 raw TCP connections that never send a byte take no connection slot: a normal client
///    is served at once, and the server closes the idle sockets after the 3 s handshake
///    timeout. (A sustained flood from many sources: tests/network.rs.)
/// 2. 8 idle *established* mTLS connections hold every slot, indefinitely (HTTP/2
///    keep-alive pings keep them alive; there is no idle timeout). A 9th client completes
///    its handshake and waits up to 3 s for a slot, then is refused — as soon as one idle
///    connection closes, the next client is served at once. Existing connections keep
///    working throughout, and one connection carries many calls (`max_concurrent_streams = 4`
///    queues the rest on the client, none fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections() {
    let (d, _p) = start(
        "[limits]\nmax_connections = 8\nmax_concurrent_streams = 4\n\
         rate_per_caller_per_second = 10000\nrate_burst = 10000\n",
    );
    // An established connection made before the flood keeps working throughout.
    let early = connect_dev(&d, "gateway", Duration::from_secs(5))
        .await
        .expect("early client connects");

    // 1. Slots held by peers that never handshake.
    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..8 {
        let s = tokio::net::TcpStream::connect(d.grpc)
            .await
            .expect("raw TCP connect");
        idle.push(tokio::spawn(lifetime(s, Instant::now())));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The early client holds one slot; the 8 idle sockets hold none.
    revocation(&early)
        .get_ca_chain(v1::GetCaChainRequest {})
        .await
        .expect("an established connection is served during the flood");
    let c = connect_dev(&d, "ops", Duration::from_secs(20))
        .await
        .expect("a normal client is served while the idle sockets hang on");
    revocation(&c)
        .get_ca_chain(v1::GetCaChainRequest {})
        .await
        .expect("served");
    let served_after = opened.elapsed();
    let mut lifetimes = Vec::new();
    for h in idle {
        lifetimes.push(h.await.expect("idle socket task"));
    }
    println!(
        "raw sockets closed by the server after {:?}; a normal client was served {:?} after the \
         flood began",
        lifetimes, served_after
    );
    for l in &lifetimes {
        assert!(
            *l >= Duration::from_millis(2500) && *l < Duration::from_secs(10),
            "an idle socket lived {l:?}, expected the 3 s handshake timeout"
        );
    }
    assert!(
        served_after < Duration::from_secs(2),
        "normal client served after {served_after:?}: idle sockets must not hold its slot"
    );
    drop(c);

    // 2. Idle established connections. `early` holds one slot; fill the other 7.
    let mut held = Vec::new();
    for i in 0..7 {
        let ch = connect_dev(&d, "gateway", Duration::from_secs(15))
            .await
            .unwrap_or_else(|e| panic!("idle TLS connection {i}: {e}"));
        revocation(&ch)
            .get_ca_chain(v1::GetCaChainRequest {})
            .await
            .expect("served");
        held.push(ch);
    }
    let t = Instant::now();
    // The handshake completes, the slot never comes: the first call fails when the server
    // gives up waiting (3 s) and closes.
    let refused = tokio::time::timeout(Duration::from_secs(6), async {
        let c = connect_dev(&d, "ops", Duration::from_secs(3)).await?;
        revocation(&c)
            .get_ca_chain(v1::GetCaChainRequest {})
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "a 9th connection got a slot although 8 idle ones hold them all"
    );
    println!(
        "9th connection with 8 idle TLS connections open: no slot after {:?}",
        t.elapsed()
    );
    // Established connections carry many calls: 12 at once over one connection with 4 streams.
    let calls = (0..12).map(|_| {
        let mut c = revocation(&early);
        async move { c.get_ca_chain(v1::GetCaChainRequest {}).await }
    });
    for r in futures::future::join_all(calls).await {
        r.expect("calls beyond max_concurrent_streams queue, none fails");
    }
    // One idle connection goes away: the next client is served at once.
    drop(held.pop());
    let t = Instant::now();
    let c = connect_dev(&d, "ops", Duration::from_secs(10))
        .await
        .expect("a freed slot serves the next client");
    revocation(&c)
        .get_ca_chain(v1::GetCaChainRequest {})
        .await
        .expect("served");
    println!(
        "after one idle connection closed, a new client was served in {:?}",
        t.elapsed()
    );
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "served in {:?}",
        t.elapsed()
    );
}
