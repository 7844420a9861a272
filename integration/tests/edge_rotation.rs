//! Rotation that reaches the edge (issue #13 item 1), exactly the sequence of the issue: start
//! the daemon and the example gateway (default config: no issuer flag), enroll a device, run
//! `ca-daemon issuer rotate`, enroll a second device. The second device (new issuer) is admitted
//! within 5 s of the rotation, and the first (retiring issuer) is refused within 1 s of its
//! `Revoke` being acknowledged: one gateway, never restarted.
//!
//! Also checks what the gateway relies on: `GetCaChain` names every issuer certificate with its
//! state, `WatchCrl { all_issuers }` carries the live set and the root's CRL, and
//! `GET /crl/bundle.pem` holds every live issuer's CRL and the root's with cache headers.
#![forbid(unsafe_code)]

mod edge_common;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_common::{Device, enroll, have_openssl, revoke, rotate};
use integration::Daemon;
use integration::gateway::{self, Gateway, GatewayConfig, client_config_for_device, refusal_alert};
use pki_proto::v1;
use rustls::AlertDescription;
use zeroize::Zeroizing;

/// A device of the new issuer gets in within this time of `issuer rotate` returning.
const NEW_ISSUER_LIMIT: Duration = Duration::from_secs(5);
/// A revoked device of the retiring issuer is refused within this time of the Revoke ack.
const REVOKED_LIMIT: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(20);
const STEP: Duration = Duration::from_secs(5);

fn device_config(gw: &Gateway, dev: &Device) -> Arc<rustls::ClientConfig> {
    Arc::new(
        client_config_for_device(
            &gw.server_cert_der(),
            &dev.leaf_der,
            std::slice::from_ref(&dev.issuer_der),
            &dev.key_pkcs8,
        )
        .expect("client config"),
    )
}

/// Handshake + greeting; a refusal shows up on the first read (TLS 1.3).
async fn hello(gw: &Gateway, cfg: Arc<rustls::ClientConfig>) -> std::io::Result<String> {
    gateway::hello(gw.local_addr(), cfg, STEP)
        .await
        .map(|(_, line)| line)
}

/// A raw HTTP/1.1 GET: (status, headers lowercased, body).
fn http_get_headers(
    addr: SocketAddr,
    path: &str,
    extra: &str,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = std::net::TcpStream::connect_timeout(&addr, STEP).expect("connect HTTP");
    s.set_read_timeout(Some(STEP)).expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n"
    )
    .expect("send");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read");
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (code, headers, buf[split + 4..].to_vec())
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_issuer_rotate_the_gateway_admits_the_new_issuer_and_refuses_a_revoked_old_device() {
    if !have_openssl() {
        return;
    }
    let d = Daemon::start().expect("daemon starts");
    let tmp = tempfile::tempdir().expect("temp dir");
    let dev = d.dev_dir();
    let read = |name: &str| std::fs::read(dev.join(name)).expect("dev file");
    let gw = Gateway::start(GatewayConfig::new(
        "127.0.0.1:0".parse().expect("address"),
        format!("https://{}", d.grpc),
        read("service-ca.crt"),
        read("gateway.crt"),
        Zeroizing::new(read("gateway.key")),
    ))
    .await
    .unwrap_or_else(|e| panic!("gateway starts: {e}\n{}", d.log()));

    // Device 1, from the first issuer, gets in.
    let first = enroll(&d, tmp.path(), 1).await;
    let first_cfg = device_config(&gw, &first);
    let greeting = hello(&gw, first_cfg.clone()).await;
    assert!(
        greeting.is_ok(),
        "device 1 before the rotation: {greeting:?}"
    );
    let old_issuer = {
        let chain = d
            .revocation("gateway")
            .await
            .expect("client")
            .get_ca_chain(v1::GetCaChainRequest {})
            .await
            .expect("GetCaChain")
            .into_inner();
        assert_eq!(chain.issuers.len(), 1, "one issuer before the rotation");
        chain.issuers[0].issuer_id.clone()
    };

    // Rotate, then enroll device 2 from the new issuer.
    let new_issuer = rotate(&d);
    let rotated = Instant::now();
    assert_ne!(new_issuer, old_issuer);
    let second = enroll(&d, tmp.path(), 2).await;
    let second_cfg = device_config(&gw, &second);
    let admitted = loop {
        let r = hello(&gw, second_cfg.clone()).await;
        if r.is_ok() {
            break rotated.elapsed();
        }
        assert!(
            rotated.elapsed() < NEW_ISSUER_LIMIT,
            "device 2 (new issuer {new_issuer}) still refused {NEW_ISSUER_LIMIT:?} after the rotation: {:?} (alert {:?})\ngateway has CRLs of {:?}",
            r.as_ref().err(),
            refusal_alert(&r),
            gw.applied_issuers()
        );
        tokio::time::sleep(POLL).await;
    };
    println!(
        "device of the new issuer admitted {} ms after `issuer rotate` returned",
        admitted.as_millis()
    );
    assert!(
        hello(&gw, first_cfg.clone()).await.is_ok(),
        "device 1 (retiring issuer) still gets in"
    );
    let applied = gw.applied_issuers();
    for id in [&old_issuer, &new_issuer, &"root".to_string()] {
        assert!(applied.contains(id), "gateway follows {id}: {applied:?}");
    }

    // GetCaChain says which certificate is which issuer, and its state.
    let chain = d
        .revocation("gateway")
        .await
        .expect("client")
        .get_ca_chain(v1::GetCaChainRequest {})
        .await
        .expect("GetCaChain")
        .into_inner();
    let described: Vec<(String, i32)> = chain
        .issuers
        .iter()
        .map(|i| (i.issuer_id.clone(), i.state))
        .collect();
    assert_eq!(
        described,
        vec![
            (new_issuer.clone(), v1::ChainIssuerState::Active as i32),
            (old_issuer.clone(), v1::ChainIssuerState::Retiring as i32),
        ]
    );
    for (i, issuer) in chain.issuers.iter().enumerate() {
        assert_eq!(chain.certificates_der[i + 1], issuer.certificate_der);
        assert!(issuer.not_after.is_some());
    }
    assert_eq!(chain.issuers[0].certificate_der, second.issuer_der);
    assert_eq!(chain.issuers[1].certificate_der, first.issuer_der);

    // Device 1 revoked after the rotation: refused within a second, no restart.
    let acked = revoke(&d, &first.serial).await;
    let refused = loop {
        let r = hello(&gw, first_cfg.clone()).await;
        if r.is_err() {
            assert_eq!(
                refusal_alert(&r),
                Some(AlertDescription::CertificateRevoked),
                "refused, but not for revocation: {:?}",
                r.as_ref().err()
            );
            break acked.elapsed();
        }
        assert!(
            acked.elapsed() < REVOKED_LIMIT,
            "device 1 still gets in {REVOKED_LIMIT:?} after its Revoke was acknowledged"
        );
        tokio::time::sleep(POLL).await;
    };
    println!(
        "revoked device of the retiring issuer refused {} ms after the Revoke ack",
        refused.as_millis()
    );
    assert!(
        hello(&gw, second_cfg.clone()).await.is_ok(),
        "device 2 unaffected"
    );

    // The all-issuers stream as a client sees it.
    let mut rev = d.revocation("gateway").await.expect("client");
    let mut stream = rev
        .watch_crl(v1::WatchCrlRequest {
            issuer_id: String::new(),
            all_issuers: true,
        })
        .await
        .expect("WatchCrl all_issuers")
        .into_inner();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 3 {
        let m = tokio::time::timeout(STEP, stream.message())
            .await
            .expect("a CRL in time")
            .expect("stream ok")
            .expect("stream open");
        assert_eq!(
            m.live_issuer_ids,
            vec![new_issuer.clone(), old_issuer.clone()],
            "live set, active first"
        );
        seen.insert(m.issuer_id);
    }
    assert_eq!(
        seen,
        [new_issuer.clone(), old_issuer.clone(), "root".to_string()]
            .into_iter()
            .collect()
    );
    let bad = rev
        .watch_crl(v1::WatchCrlRequest {
            issuer_id: old_issuer.clone(),
            all_issuers: true,
        })
        .await;
    assert_eq!(
        bad.err().map(|s| s.code()),
        Some(tonic::Code::InvalidArgument),
        "all_issuers with an issuer id"
    );

    // The CRL bundle for file-based gateways.
    let (code, h, body) = http_get_headers(d.http, "/crl/bundle.pem", "");
    assert_eq!(code, 200);
    let body = String::from_utf8(body).expect("PEM is text");
    assert_eq!(
        body.matches("-----BEGIN X509 CRL-----").count(),
        3,
        "{body}"
    );
    assert_eq!(header(&h, "content-type"), Some("application/x-pem-file"));
    assert!(header(&h, "cache-control").is_some_and(|v| v.contains("max-age")));
    assert!(header(&h, "last-modified").is_some_and(|v| v.ends_with("GMT")));
    assert!(header(&h, "expires").is_some());
    let etag = header(&h, "etag").expect("ETag").to_string();
    let (code, _, body) = http_get_headers(
        d.http,
        "/crl/bundle.pem",
        &format!("If-None-Match: {etag}\r\n"),
    );
    assert_eq!(code, 304, "revalidation with the current ETag");
    assert!(body.is_empty());
    gw.shutdown().await;
}
