//! Issue #12 item 8 against the real `ca-daemon` binary: a service client certificate issued
//! with `ca-daemon service issue` works, `ca-daemon service revoke` puts it on the service
//! CA's CRL, and its next connection is refused while the other services keep working, all
//! without restarting the daemon. The CRL is checked with openssl too.

use std::path::Path;
use std::process::Command;

use integration::{Daemon, tools};
use pki_proto::v1;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Calls `Revocation.GetCaChain` (every role may) over a fresh connection with `identity`.
async fn call(d: &Daemon, cert: &Path, key: &Path) -> Result<(), String> {
    let ca = std::fs::read(d.dev_dir().join("service-ca.crt")).map_err(|e| e.to_string())?;
    let identity = (
        std::fs::read(cert).map_err(|e| e.to_string())?,
        std::fs::read(key).map_err(|e| e.to_string())?,
    );
    let channel = d
        .channel_with(Some(identity), ca)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    v1::revocation_client::RevocationClient::new(channel)
        .get_ca_chain(v1::GetCaChainRequest {})
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

fn cli_ok(d: &Daemon, args: &[&str]) -> String {
    let (code, out, err) = d.cli(args).expect("run the CLI");
    assert_eq!(code, 0, "ca-daemon {args:?}:\n{out}{err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_portal_certificate_is_refused_at_its_next_connection() -> TestResult {
    let d = tokio::task::block_in_place(Daemon::start)?;
    let dd = d.data_dir.display().to_string();
    let out_dir = tempfile::tempdir()?;
    let out = out_dir.path().join("portal-2");
    let out_s = out.display().to_string();

    let issued: serde_json::Value = serde_json::from_str(&tokio::task::block_in_place(|| {
        cli_ok(
            &d,
            &[
                "service",
                "issue",
                "--data-dir",
                &dd,
                "--role",
                "portal",
                "--name",
                "portal-2",
                "--out",
                &out_s,
                "--json",
            ],
        )
    }))?;
    let cert = out.join("portal-2.crt");
    let key = out.join("portal-2.key");
    // The new certificate works, and lives 90 days by default (was 825).
    call(&d, &cert, &key).await?;
    if tools::require_openssl() {
        let o = tools::run(
            Command::new("openssl")
                .args(["x509", "-noout", "-checkend"])
                .arg((91 * 86_400).to_string())
                .arg("-in")
                .arg(&cert),
        );
        assert!(
            !o.status.success(),
            "a service client certificate must expire within 91 days:\n{}",
            tools::text(&o)
        );
    }

    let revoked: serde_json::Value = serde_json::from_str(&tokio::task::block_in_place(|| {
        cli_ok(
            &d,
            &[
                "service",
                "revoke",
                "--data-dir",
                &dd,
                "--cert",
                &cert.display().to_string(),
                "--json",
            ],
        )
    }))?;
    assert_eq!(revoked["serial"], issued["serial"], "{revoked}");
    assert_eq!(revoked["crl_number"], 1, "{revoked}");

    // Its next connection is refused; the dev portal certificate still works; no restart.
    let refused = call(&d, &cert, &key).await;
    assert!(
        refused.is_err(),
        "a revoked service certificate must be refused"
    );
    let dev = d.dev_dir();
    call(&d, &dev.join("portal.crt"), &dev.join("portal.key")).await?;
    assert!(
        d.log().contains("service CA CRL loaded"),
        "the daemon reloads the CRL:\n{}",
        d.log()
    );

    // The CRL is signed by the service CA and lists the serial (openssl).
    if tools::require_openssl() {
        let crl = d.data_dir.join("keys").join("service-ca.crl");
        let o = tools::run(
            Command::new("openssl")
                .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
                .arg(&crl)
                .arg("-CAfile")
                .arg(dev.join("service-ca.crt")),
        );
        let text = tools::text(&o);
        assert!(o.status.success(), "openssl crl:\n{text}");
        assert!(text.contains("verify OK"), "{text}");
        let serial = issued["serial"].as_str().unwrap_or_default().to_uppercase();
        assert!(
            text.replace(':', "").to_uppercase().contains(&serial),
            "serial {serial} not on the CRL:\n{text}"
        );
        assert!(text.contains("Key Compromise"), "{text}");
    }
    Ok(())
}
