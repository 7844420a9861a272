//! Watching the root's CRL (`keys/root.crl`, served at `/crl/root.crl`).
//!
//! The root key is offline, so its CRL (365 days) is re-signed only by hand
//! (`ca-daemon crl root`, docs/operations.md). When it lapses, clients that check the whole
//! chain (Windows CryptoAPI for EAP-TLS, webpki in full-chain mode) reject every device. From
//! [`WARN_BEFORE`] ahead of its nextUpdate the daemon says so: a log warning, the
//! `ca_root_crl_expiring` gauge (with `ca_root_crl_next_update_seconds`), the gRPC health
//! service [`HEALTH_SERVICE`] turning NOT_SERVING, a `warning:` line on `/healthz`, and
//! `ca-daemon status`.

use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use crate::authority::Authority;
use crate::metrics;

/// How long before the root CRL's nextUpdate the warning starts.
pub const WARN_BEFORE: Duration = Duration::days(30);

/// gRPC health service name that reports the root CRL: SERVING while it has more than
/// [`WARN_BEFORE`] to run, NOT_SERVING from then on. The overall health ("") is not touched:
/// the daemon keeps serving, an operator has to act.
pub const HEALTH_SERVICE: &str = "pki.ca.v1.RootCrl";

/// How often the monitor re-reads the file (it is re-signed by another process).
const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// What the root CRL says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootCrlInfo {
    /// CRL number.
    pub number: u64,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate.
    pub next_update: OffsetDateTime,
}

/// Reads the CRL number, thisUpdate and nextUpdate of a DER CRL; `None` if it does not parse
/// or has no nextUpdate.
pub fn inspect(der: &[u8]) -> Option<RootCrlInfo> {
    let (_, crl) = x509_parser::parse_x509_crl(der).ok()?;
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    let this_update = crl.last_update().to_datetime();
    let next_update = crl.next_update()?.to_datetime();
    Some(RootCrlInfo {
        number,
        this_update,
        next_update,
    })
}

/// Checks that `der` is a CRL signed by the root certificate `root_der` (a root CRL shared by
/// another node of a cluster, see [`crate::cluster`]); the reason if not.
pub fn check_signature(der: &[u8], root_der: &[u8]) -> Result<(), String> {
    let (_, crl) = x509_parser::parse_x509_crl(der).map_err(|e| format!("not a CRL: {e}"))?;
    let (_, root) =
        x509_parser::parse_x509_certificate(root_der).map_err(|e| format!("root: {e}"))?;
    if crl.issuer() != root.subject() {
        return Err("not issued by this PKI's root".into());
    }
    crl.verify_signature(root.public_key())
        .map_err(|_| "signature does not verify under this PKI's root".to_owned())
}

/// The warning to show at `now` for a root CRL whose nextUpdate is `next_update`, if any.
pub fn warning(next_update: OffsetDateTime, now: OffsetDateTime) -> Option<String> {
    let left = next_update - now;
    if left > WARN_BEFORE {
        return None;
    }
    Some(if left.is_negative() {
        format!(
            "the root CRL ran out at {next_update} ({} days ago): clients that check the whole chain reject every device; re-sign it now with `ca-daemon crl root` (docs/operations.md)",
            (-left).whole_days()
        )
    } else {
        format!(
            "the root CRL runs out at {next_update} (in {} days); re-sign it with `ca-daemon crl root` before then (docs/operations.md)",
            left.whole_days()
        )
    })
}

/// The warning for the daemon's root CRL now (a missing or unreadable file is one too).
pub fn current_warning(authority: &Authority) -> Option<String> {
    match authority.root_crl().as_deref().map(inspect) {
        Some(Some(info)) => warning(info.next_update, OffsetDateTime::now_utc()),
        Some(None) => Some("the root CRL (keys/root.crl) does not parse".into()),
        None => Some("no root CRL (keys/root.crl) to serve".into()),
    }
}

/// Checks the root CRL now and every [`CHECK_EVERY`]: sets the gauges and the health
/// status, and logs a warning when it changes and once a day while it lasts.
pub async fn run_monitor(authority: Arc<Authority>, health: tonic_health::server::HealthReporter) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    let mut last: Option<(Option<String>, std::time::Instant)> = None;
    loop {
        tick.tick().await;
        let a = authority.clone();
        let Ok((info, warn)) = tokio::task::spawn_blocking(move || {
            let info = a.root_crl().as_deref().and_then(inspect);
            (info, current_warning(&a))
        })
        .await
        else {
            continue;
        };
        let m = metrics::metrics();
        if let Some(i) = info {
            m.root_crl_next_update.set(i.next_update.unix_timestamp());
        }
        m.root_crl_expiring.set(i64::from(warn.is_some()));
        let status = if warn.is_some() {
            tonic_health::ServingStatus::NotServing
        } else {
            tonic_health::ServingStatus::Serving
        };
        health.set_service_status(HEALTH_SERVICE, status).await;
        let changed = last.as_ref().is_none_or(|(w, _)| *w != warn);
        let daily = last
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() >= std::time::Duration::from_secs(86_400));
        if changed || daily {
            match &warn {
                Some(w) => tracing::warn!(warning = %w, "root CRL"),
                None if last.is_some() => tracing::info!("root CRL is current again"),
                None => {}
            }
            last = Some((warn, std::time::Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_from_thirty_days_before_and_after_lapse() {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::days(20_000);
        assert_eq!(warning(now + Duration::days(31), now), None);
        let w = warning(now + Duration::days(29), now).expect("warning");
        assert!(
            w.contains("in 29 days") && w.contains("ca-daemon crl root"),
            "{w}"
        );
        let w = warning(now - Duration::days(2), now).expect("lapsed");
        assert!(w.contains("ran out") && w.contains("2 days ago"), "{w}");
    }

    #[test]
    fn inspect_reads_number_and_times() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = ca.self_signed(&key).expect("ca");
        let issuer = rcgen::Issuer::from_ca_cert_der(cert.der(), &key).expect("issuer");
        let this_update = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("t");
        let crl = rcgen::CertificateRevocationListParams {
            this_update,
            next_update: this_update + Duration::days(365),
            crl_number: rcgen::SerialNumber::from(7u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .expect("crl");
        let info = inspect(crl.der()).expect("parses");
        assert_eq!(info.number, 7);
        assert_eq!(info.this_update, this_update);
        assert_eq!(info.next_update, this_update + Duration::days(365));
        assert_eq!(inspect(b"not a crl"), None);
    }
}
