//! The certificate life cycle after issuance (issue #13 item 2), against the real binary:
//! renewal without a new approval (CreateTicket naming `renews_serial`), supersession of the
//! renewed certificate after the policy's grace period (durable: it happens after a restart
//! when the daemon was down at the deadline), the reminder list (`ListCertificates
//! expiring_before`), the expiring count in `GetStatus`, `ca-daemon status` and the metrics,
//! and the Apple `PayloadIdentifier` that stays the same across a renewal.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use integration::{Daemon, DaemonOptions, sample_ticket_request, tools};
use pki_proto::v1;
use tonic::Code;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A policy with certificates valid 20 days (so every one is "expiring within 30 days") and
/// the given grace period.
fn policy(dir: &std::path::Path, supersede_after_secs: u32) -> std::io::Result<PathBuf> {
    let path = dir.join(format!("policy-{supersede_after_secs}.toml"));
    std::fs::write(
        &path,
        format!(
            "[certificate.profiles.default]\nvalidity_days = 20\n\
             [renewal]\nsupersede_after_secs = {supersede_after_secs}\n"
        ),
    )?;
    Ok(path)
}

fn ts_in(days: i64) -> prost_types::Timestamp {
    let t = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: 0,
    }
}

/// Creates a ticket (optionally a renewal) and redeems it for iOS; returns the redemption.
async fn enroll(
    d: &Daemon,
    n: u32,
    renews: &str,
) -> Result<v1::RedeemTicketResponse, Box<dyn std::error::Error>> {
    let mut e = d.enrollment("portal").await?;
    let mut req = sample_ticket_request(n, v1::TargetOs::Ios);
    if !renews.is_empty() {
        req.renews_serial = renews.to_owned();
        // A renewal needs no new office approval.
        req.approved_by = String::new();
        if let Some(p) = req.person.as_mut() {
            p.job = "主任看護師".into();
        }
    }
    let t = e.create_ticket(req).await?.into_inner();
    assert_eq!(
        t.ticket.as_ref().map(|t| t.renews_serial.as_str()),
        Some(renews)
    );
    let got = e
        .get_ticket(v1::GetTicketRequest {
            number: t.number.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(got.renews_serial, renews, "GetTicket shows what it renews");
    Ok(e.redeem_ticket(v1::RedeemTicketRequest {
        number: t.number,
        password: t.password,
        os: 0,
        keystore_profile: String::new(),
    })
    .await?
    .into_inner())
}

async fn status_of(d: &Daemon, serial: &str) -> Result<(i32, i32), Box<dyn std::error::Error>> {
    let s = d
        .revocation("portal")
        .await?
        .check_status(v1::CheckStatusRequest {
            serial: serial.to_owned(),
        })
        .await?
        .into_inner();
    Ok((s.status, s.reason))
}

/// The `PayloadIdentifier` of the top-level configuration payload (the last one written).
fn payload_identifier(mobileconfig: &[u8]) -> String {
    let doc = String::from_utf8_lossy(mobileconfig);
    let marker = "<key>PayloadIdentifier</key>";
    doc.rmatch_indices(marker)
        .next()
        .and_then(|(i, _)| {
            let rest = doc[i + marker.len()..]
                .trim_start()
                .strip_prefix("<string>")?;
            Some(rest[..rest.find("</string>")?].to_owned())
        })
        .unwrap_or_default()
}

async fn expiring_list(d: &Daemon) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let list = d
        .certificates("portal")
        .await?
        .list_certificates(v1::ListCertificatesRequest {
            status: v1::CertificateState::Valid as i32,
            expiring_before: Some(ts_in(30)),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(list.certificates.into_iter().map(|c| c.serial).collect())
}

async fn expiring_count(d: &Daemon) -> Result<u64, Box<dyn std::error::Error>> {
    Ok(d.admin("ops")
        .await?
        .get_status(v1::GetStatusRequest {})
        .await?
        .into_inner()
        .certificates_expiring_within_30_days)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_supersedes_the_old_certificate_after_the_grace_period_across_a_restart()
-> TestResult {
    const GRACE_SECS: u32 = 8;
    let dir = tempfile::tempdir()?;
    let mut d = Daemon::start_with(DaemonOptions {
        policy: Some(policy(dir.path(), GRACE_SECS)?),
        metrics: true,
        ..Default::default()
    })?;
    let old = enroll(&d, 1, "").await?;
    // A certificate far from expiry is not on the reminder list.
    let far = d
        .certificates("portal")
        .await?
        .list_certificates(v1::ListCertificatesRequest {
            expiring_before: Some(ts_in(10)),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(far.certificates.is_empty(), "{:?}", far.certificates);
    assert_eq!(expiring_list(&d).await?, [old.serial.as_str()]);
    assert_eq!(expiring_count(&d).await?, 1);

    // Renewals are refused for another device, and for an unknown serial.
    let mut e = d.enrollment("portal").await?;
    let mut other = sample_ticket_request(2, v1::TargetOs::Ios);
    other.renews_serial = old.serial.clone();
    let err = e.create_ticket(other).await.expect_err("other identity");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("facility.id") || err.message().contains("person.id"));
    let mut unknown = sample_ticket_request(1, v1::TargetOs::Ios);
    unknown.renews_serial = "0123456789abcdef".into();
    let err = e.create_ticket(unknown).await.expect_err("unknown serial");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let redeemed_at = Instant::now();
    let new = enroll(&d, 1, &old.serial).await?;
    assert_ne!(new.serial, old.serial);
    // Apple replaces the installed profile: same identifier, derived from the device.
    let id = payload_identifier(&new.mobileconfig);
    assert_eq!(id, payload_identifier(&old.mobileconfig));
    assert!(id.ends_with(".F001.P00001.D00001"), "{id}");
    // Within the grace period the old certificate still works; the reminder list and the
    // count no longer name it (it has been renewed), only the new one.
    let good = v1::certificate_status::Status::Good as i32;
    assert_eq!(status_of(&d, &old.serial).await?.0, good);
    assert_eq!(expiring_list(&d).await?, [new.serial.as_str()]);
    assert_eq!(expiring_count(&d).await?, 1);
    let (code, out, err) = d.cli(&[
        "status",
        "--data-dir",
        &d.data_dir.to_string_lossy(),
        "--json",
    ])?;
    assert_eq!(code, 0, "{out}{err}");
    let json: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(json["certificates_expiring_within_30_days"], 1, "{out}");
    if let Some(m) = d.metrics {
        // The gauge is refreshed by the scheduled maintenance (at start and every 30 s).
        let (_, body) = integration::http_get(m, "/metrics")?;
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("ca_certificates_expiring_within_30_days"),
            "{text}"
        );
    }

    // The daemon is down when the grace period ends: the supersession is applied when it
    // comes back (the schedule is in the store, written with the issuance).
    assert!(d.stop(), "clean stop");
    assert!(
        redeemed_at.elapsed() < Duration::from_secs(u64::from(GRACE_SECS)),
        "stopping took too long for this test to mean anything"
    );
    let log_before = d.log().len();
    tokio::time::sleep(
        Duration::from_secs(u64::from(GRACE_SECS) + 1).saturating_sub(redeemed_at.elapsed()),
    )
    .await;
    d.start_again()?;
    let revoked = v1::certificate_status::Status::Revoked as i32;
    let superseded = v1::RevocationReason::Superseded as i32;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status_of(&d, &old.serial).await?;
        if s == (revoked, superseded) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old certificate not superseded after restart: {s:?}\n{}",
            &d.log()[log_before..]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status_of(&d, &new.serial).await?.0, good);
    // The gauge, refreshed at start: the new certificate expires within 30 days, the old one
    // is revoked.
    if let Some(m) = d.metrics {
        let (_, body) = integration::http_get(m, "/metrics")?;
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.lines()
                .any(|l| l == "ca_certificates_expiring_within_30_days 1"),
            "{text}"
        );
    }
    // The CRL lists it with reason superseded (openssl reads it).
    let mut listed = false;
    for _ in 0..50 {
        let crl = d
            .revocation("gateway")
            .await?
            .get_crl(v1::GetCrlRequest::default())
            .await?
            .into_inner();
        let path = dir.path().join("crl.der");
        std::fs::write(&path, &crl.der)?;
        let out = tools::run(
            std::process::Command::new("openssl")
                .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
                .arg(&path),
        );
        assert!(out.status.success(), "{}", tools::text(&out));
        let text = tools::text(&out);
        if text.to_lowercase().contains(&old.serial) {
            assert!(text.contains("Superseded"), "{text}");
            listed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed, "superseded certificate not on the CRL");

    // A revoked certificate cannot be renewed.
    let mut renew_revoked = sample_ticket_request(1, v1::TargetOs::Ios);
    renew_revoked.renews_serial = old.serial.clone();
    let err = d
        .enrollment("portal")
        .await?
        .create_ticket(renew_revoked)
        .await
        .expect_err("revoked certificate");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("revoked"), "{}", err.message());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_zero_supersedes_at_once_and_a_renewal_of_a_revoked_one_is_refused()
-> TestResult {
    let dir = tempfile::tempdir()?;
    let d = Daemon::start_with(DaemonOptions {
        policy: Some(policy(dir.path(), 0)?),
        ..Default::default()
    })?;
    let old = enroll(&d, 3, "").await?;
    // A ticket for a renewal, then the old certificate is revoked (device lost) before the
    // person redeems it: the redemption is refused, no new certificate appears.
    let mut e = d.enrollment("portal").await?;
    let mut req = sample_ticket_request(3, v1::TargetOs::Ios);
    req.renews_serial = old.serial.clone();
    let pending = e.create_ticket(req).await?.into_inner();
    let new = enroll(&d, 3, &old.serial).await?;
    // Grace 0: superseded before the redemption answered.
    assert_eq!(
        status_of(&d, &old.serial).await?,
        (
            v1::certificate_status::Status::Revoked as i32,
            v1::RevocationReason::Superseded as i32
        )
    );
    // The second renewal ticket of the same (now superseded) certificate cannot be redeemed.
    let err = e
        .redeem_ticket(v1::RedeemTicketRequest {
            number: pending.number,
            password: pending.password,
            os: 0,
            keystore_profile: String::new(),
        })
        .await
        .expect_err("renewed certificate is revoked");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let list = d
        .certificates("portal")
        .await?
        .list_certificates(v1::ListCertificatesRequest {
            device_id: "D00003".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(list.certificates.len(), 2, "no third certificate");
    assert_eq!(
        status_of(&d, &new.serial).await?.0,
        v1::certificate_status::Status::Good as i32
    );
    Ok(())
}
