//! The small numeric sections: `[ca]`, `[tickets]`, `[crl]`, `[ocsp]`, `[renewal]`.
//!
//! Each is validated on its own (ranges) and against the others where they depend on each
//! other (the OCSP response validity must fit in the responder certificate's renewal margin).

use std::time::Duration;

use crate::error::PolicyError;
use crate::raw::{RawCa, RawCrl, RawOcsp, RawRenewal, RawStorage, RawTickets, ranged};

const DAY: u64 = 24 * 60 * 60;
const HOUR: u64 = 60 * 60;

/// Upper bound on any validity in days (100 years).
pub const MAX_VALIDITY_DAYS: i64 = 36_500;

/// `[ca]`: validities of the CA's own certificates and of the service client certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPolicy {
    /// Validity of the root CA certificate, in days.
    pub root_validity_days: u32,
    /// Validity of an issuing CA certificate, in days; strictly less than the root's.
    pub issuer_validity_days: u32,
    /// Validity of a delegated OCSP responder certificate, in days; it is renewed when less
    /// than a third of it remains (see [`CaPolicy::ocsp_responder_renew_before`]).
    pub ocsp_responder_validity_days: u32,
    /// Validity of a service client certificate (portal, gateway, ops), in days.
    pub service_cert_validity_days: u32,
}

impl CaPolicy {
    pub(crate) fn from_raw(raw: RawCa) -> Result<Self, PolicyError> {
        let root: u32 = ranged(
            raw.root_validity_days,
            "ca.root_validity_days",
            2,
            MAX_VALIDITY_DAYS,
        )?;
        let issuer: u32 = ranged(
            raw.issuer_validity_days,
            "ca.issuer_validity_days",
            1,
            MAX_VALIDITY_DAYS,
        )?;
        if issuer >= root {
            return Err(PolicyError::InvalidValue {
                field: "ca.issuer_validity_days".into(),
                reason: format!(
                    "{issuer} days must be less than `ca.root_validity_days` ({root} days)"
                ),
            });
        }
        let ocsp: u32 = ranged(
            raw.ocsp_responder_validity_days,
            "ca.ocsp_responder_validity_days",
            3,
            366,
        )?;
        let service: u32 = ranged(
            raw.service_cert_validity_days,
            "ca.service_cert_validity_days",
            1,
            MAX_VALIDITY_DAYS,
        )?;
        for (field, days) in [
            ("ca.ocsp_responder_validity_days", ocsp),
            ("ca.service_cert_validity_days", service),
        ] {
            check_leaf_validity(field, i64::from(days), issuer)?;
        }
        Ok(Self {
            root_validity_days: root,
            issuer_validity_days: issuer,
            ocsp_responder_validity_days: ocsp,
            service_cert_validity_days: service,
        })
    }

    /// Validity of the root certificate.
    pub fn root_validity(&self) -> Duration {
        days(self.root_validity_days)
    }

    /// Validity of an issuing CA certificate.
    pub fn issuer_validity(&self) -> Duration {
        days(self.issuer_validity_days)
    }

    /// Validity of an OCSP responder certificate.
    pub fn ocsp_responder_validity(&self) -> Duration {
        days(self.ocsp_responder_validity_days)
    }

    /// Renew the OCSP responder certificate when less than this remains (a third of its
    /// validity).
    pub fn ocsp_responder_renew_before(&self) -> Duration {
        self.ocsp_responder_validity() / 3
    }

    /// Validity of a service client certificate.
    pub fn service_cert_validity(&self) -> Duration {
        days(self.service_cert_validity_days)
    }
}

/// Checks that a leaf validity (days) is at most the issuer's.
pub(crate) fn check_leaf_validity(
    field: &str,
    days: i64,
    issuer_days: u32,
) -> Result<(), PolicyError> {
    if days < 1 {
        return Err(PolicyError::OutOfRange {
            field: field.to_owned(),
            value: days,
            min: 1,
            max: i64::from(issuer_days),
        });
    }
    if days > i64::from(issuer_days) {
        return Err(PolicyError::ValidityBeyondIssuer {
            field: field.to_owned(),
            days,
            issuer_field: "ca.issuer_validity_days".into(),
            issuer_days: i64::from(issuer_days),
        });
    }
    Ok(())
}

/// `[tickets]`: enrollment tickets (8-digit number + 8-digit password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketPolicy {
    /// How long a ticket can be redeemed after its creation, in days.
    pub lifetime_days: u32,
    /// Wrong passwords after which the ticket locks.
    pub max_attempts: u32,
    /// Redemption attempts allowed per ticket number and minute (right or wrong).
    pub rate_per_ticket_per_minute: u32,
    /// What protects the PKCS#12 bundle (issue #12 item 10).
    pub bundle_password: BundlePassword,
}

/// `[tickets] bundle_password`: the password of the PKCS#12 bundle a redemption returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundlePassword {
    /// `"ticket"`: the ticket password (8 digits, ~26.6 bits), the network manual's flow.
    Ticket,
    /// `"random"`: a fresh random password of at least 80 bits per bundle, returned once in
    /// `RedeemTicketResponse.bundle_password` for the portal to show on the download page.
    Random,
}

impl BundlePassword {
    /// The name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ticket => "ticket",
            Self::Random => "random",
        }
    }
}

impl TicketPolicy {
    pub(crate) fn from_raw(raw: RawTickets) -> Result<Self, PolicyError> {
        Ok(Self {
            lifetime_days: ranged(raw.lifetime_days, "tickets.lifetime_days", 1, 90)?,
            // The password has 10^8 values; a handful of tries keeps guessing hopeless.
            max_attempts: ranged(raw.max_attempts, "tickets.max_attempts", 1, 10)?,
            rate_per_ticket_per_minute: ranged(
                raw.rate_per_ticket_per_minute,
                "tickets.rate_per_ticket_per_minute",
                1,
                600,
            )?,
            bundle_password: match raw.bundle_password.as_deref() {
                None | Some("ticket") => BundlePassword::Ticket,
                Some("random") => BundlePassword::Random,
                Some(other) => {
                    return Err(PolicyError::InvalidValue {
                        field: "tickets.bundle_password".into(),
                        reason: format!("'{other}' is neither \"ticket\" nor \"random\""),
                    });
                }
            },
        })
    }

    /// Ticket lifetime.
    pub fn lifetime(&self) -> Duration {
        days(self.lifetime_days)
    }
}

/// `[crl]`: when CRLs are (re)published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlPolicy {
    /// `nextUpdate - thisUpdate` of every CRL, in hours.
    pub next_update_hours: u32,
    /// Republish on schedule when less than this remains before `nextUpdate`, in hours.
    pub republish_before_hours: u32,
    /// Revocations within this window share one CRL, in milliseconds (`< 1000`, so a
    /// revocation reaches the CRL within a second).
    pub batch_window_ms: u32,
}

impl CrlPolicy {
    pub(crate) fn from_raw(raw: RawCrl) -> Result<Self, PolicyError> {
        let next: u32 = ranged(raw.next_update_hours, "crl.next_update_hours", 1, 24 * 30)?;
        let before: u32 = ranged(
            raw.republish_before_hours,
            "crl.republish_before_hours",
            1,
            24 * 30,
        )?;
        if before >= next {
            return Err(PolicyError::invalid(
                "crl.republish_before_hours",
                format!("{before} hours must be less than `crl.next_update_hours` ({next} hours)"),
            ));
        }
        Ok(Self {
            next_update_hours: next,
            republish_before_hours: before,
            batch_window_ms: ranged(raw.batch_window_ms, "crl.batch_window_ms", 0, 999)?,
        })
    }

    /// `nextUpdate - thisUpdate`.
    pub fn next_update(&self) -> Duration {
        hours(self.next_update_hours)
    }

    /// Republish when less than this remains before `nextUpdate`.
    pub fn republish_before(&self) -> Duration {
        hours(self.republish_before_hours)
    }

    /// The batching window for revocations.
    pub fn batch_window(&self) -> Duration {
        Duration::from_millis(u64::from(self.batch_window_ms))
    }
}

/// `[ocsp]`: pre-signed OCSP responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcspPolicy {
    /// `nextUpdate - thisUpdate` of every response, in hours.
    pub validity_hours: u32,
    /// Re-sign a cached response when less than this remains before its `nextUpdate`, in hours.
    pub resign_before_hours: u32,
    /// Most pre-signed responses kept in memory; the least recently used go first and are
    /// signed again on demand.
    pub cache_entries: u32,
}

impl OcspPolicy {
    pub(crate) fn from_raw(raw: RawOcsp, ca: &CaPolicy) -> Result<Self, PolicyError> {
        let validity: u32 = ranged(raw.validity_hours, "ocsp.validity_hours", 1, 24 * 7)?;
        let before: u32 = ranged(
            raw.resign_before_hours,
            "ocsp.resign_before_hours",
            1,
            24 * 7,
        )?;
        if before >= validity {
            return Err(PolicyError::invalid(
                "ocsp.resign_before_hours",
                format!(
                    "{before} hours must be less than `ocsp.validity_hours` ({validity} hours)"
                ),
            ));
        }
        // The responder certificate is renewed when a third of it remains: a response signed
        // just before the renewal must not outlive the certificate that signed it.
        let margin_hours = u64::from(ca.ocsp_responder_validity_days) * 24 / 3;
        if u64::from(validity) > margin_hours {
            return Err(PolicyError::invalid(
                "ocsp.validity_hours",
                format!(
                    "{validity} hours exceeds a third of `ca.ocsp_responder_validity_days` \
                     ({margin_hours} hours), so a response could outlive its responder certificate"
                ),
            ));
        }
        Ok(Self {
            validity_hours: validity,
            resign_before_hours: before,
            cache_entries: ranged(raw.cache_entries, "ocsp.cache_entries", 1_000, 10_000_000)?,
        })
    }

    /// `nextUpdate - thisUpdate` of every response.
    pub fn validity(&self) -> Duration {
        hours(self.validity_hours)
    }

    /// Re-sign when less than this remains.
    pub fn resign_before(&self) -> Duration {
        hours(self.resign_before_hours)
    }
}

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * DAY)
}

fn hours(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * HOUR)
}

/// `[storage]`: room the store keeps on its file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoragePolicy {
    /// Below this many free MiB on the store's file system, new tickets and redemptions are
    /// refused (RESOURCE_EXHAUSTED, "storage nearly full") so that revocations and CRL
    /// publication keep the room they need.
    pub low_water_mib: u32,
}

impl StoragePolicy {
    pub(crate) fn from_raw(raw: RawStorage) -> Result<Self, PolicyError> {
        Ok(Self {
            low_water_mib: ranged(raw.low_water_mib, "storage.low_water_mib", 1, 1 << 20)?,
        })
    }

    /// The low-water mark in bytes.
    pub fn low_water_bytes(&self) -> u64 {
        u64::from(self.low_water_mib) << 20
    }
}

/// `[renewal]`: what happens to a certificate once a renewal ticket has been redeemed for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewalPolicy {
    /// Seconds between the redemption of a renewal ticket and the revocation of the renewed
    /// certificate with reason `superseded` (0 = at once), so the device keeps working until
    /// the new bundle is installed.
    pub supersede_after_secs: u32,
}

impl RenewalPolicy {
    pub(crate) fn from_raw(raw: RawRenewal) -> Result<Self, PolicyError> {
        Ok(Self {
            supersede_after_secs: ranged(
                raw.supersede_after_secs,
                "renewal.supersede_after_secs",
                0,
                90 * DAY as i64,
            )?,
        })
    }

    /// The grace period before the renewed certificate is superseded.
    pub fn supersede_after(&self) -> Duration {
        Duration::from_secs(u64::from(self.supersede_after_secs))
    }
}
