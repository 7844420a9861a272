//! The certificate life cycle after issuance: renewal without a new approval, supersession of
//! the renewed certificate after a grace period, and the checks `CreateTicket` runs so that a
//! ticket that cannot be redeemed is never created.
//!
//! A renewal is a ticket (`CreateTicketRequest.renews_serial`) for the same facility, person
//! and device as a certificate that is still valid. Redeeming it issues the new certificate
//! and, in the same durable store change, schedules the old one for revocation with reason
//! `superseded` at `now + [renewal] supersede_after_secs` (default 7 days, 0 = at once), so the
//! device keeps working until the new bundle is installed. The schedule lives in the store
//! (`supersede_due`), so it survives restarts; the authority's supersession task applies what
//! is due when the daemon starts, whenever a deadline passes, and at least once a minute.

use pki_policy::domain::Enrollee;
use pki_policy::{CertProfile, FieldProblem, Placeholder, Template};
use time::OffsetDateTime;

use crate::error::CaError;
use crate::store::CertRecord;

/// Checks that the profile's subject DN renders within its limits for `enrollee` (O and CN
/// not empty, O, OU and CN at most 64 characters, X.520), as issuance will. The error names
/// the request fields that feed the attribute, the attribute and the limit, so the portal can
/// tell the applicant what to shorten.
pub fn check_subject(profile: &CertProfile, enrollee: &Enrollee) -> Result<(), CaError> {
    let Err(e) = profile.subject.render_checked(enrollee) else {
        return Ok(());
    };
    let (template, attribute) = match e.field.as_str() {
        "subject.organization" => (&profile.subject.organization, "organizationName (O)"),
        "subject.organizational_unit" => (
            &profile.subject.organizational_unit,
            "organizationalUnitName (OU)",
        ),
        _ => (&profile.subject.common_name, "commonName (CN)"),
    };
    let field = request_fields(template);
    let problem = match e.problem {
        FieldProblem::SubjectTooLong { len, max } => format!(
            "makes the certificate subject's {attribute} {len} characters long; \
             X.520 allows at most {max} (template {:?})",
            template.as_str()
        ),
        FieldProblem::Empty => format!(
            "makes the certificate subject's {attribute} empty (template {:?})",
            template.as_str()
        ),
        other => format!("gives the certificate subject's {attribute} a value that {other}"),
    };
    Err(CaError::invalid(field, problem))
}

/// The request fields a template reads, e.g. `facility.name` or
/// `person.family_name+person.given_name`.
fn request_fields(template: &Template) -> String {
    let mut fields: Vec<&str> = Vec::new();
    for p in template.placeholders() {
        let names: &[&str] = match p {
            Placeholder::PersonDisplayName => &["person.family_name", "person.given_name"],
            Placeholder::DeviceOs => &["device.os"],
            other => &[other.as_str()],
        };
        for n in names {
            if !fields.contains(n) {
                fields.push(n);
            }
        }
    }
    if fields.is_empty() {
        "profile".to_owned()
    } else {
        fields.join("+")
    }
}

/// Checks that `cert` can be renewed for `enrollee` at `now`: not revoked, not expired, and
/// the same facility, person and device.
pub fn check_renewable(
    cert: &CertRecord,
    enrollee: &Enrollee,
    now: OffsetDateTime,
) -> Result<(), CaError> {
    if let Some(r) = &cert.revocation {
        return Err(CaError::WrongState {
            what: "the certificate to renew",
            state: format!(
                "revoked ({}); a revoked certificate cannot be renewed, register the device anew",
                r.reason
            ),
            expected: "valid",
        });
    }
    if cert.is_expired(now) {
        return Err(CaError::WrongState {
            what: "the certificate to renew",
            state: "expired; an expired certificate cannot be renewed, register the device anew"
                .to_owned(),
            expected: "valid",
        });
    }
    for (field, want, have) in [
        ("facility.id", &cert.facility_id, &enrollee.facility.id),
        ("person.id", &cert.person_id, &enrollee.person.id),
        ("device.id", &cert.device_id, &enrollee.device.id),
    ] {
        if want != have {
            return Err(CaError::invalid(
                field,
                format!(
                    "must be the renewed certificate's ({want}): a renewal is for the same \
                     facility, person and device"
                ),
            ));
        }
    }
    Ok(())
}

/// The stable name of a device identity (`facility/person/device`; ids hold no `/`), from
/// which the Apple `PayloadIdentifier` is derived: a renewal's profile then replaces the
/// installed one instead of adding a second identity beside it.
pub fn device_identity(enrollee: &Enrollee) -> String {
    format!(
        "{}/{}/{}",
        enrollee.facility.id, enrollee.person.id, enrollee.device.id
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pki_policy::Policy;
    use pki_policy::domain::{Device, Facility, Person, RevocationReason, TargetOs};

    fn enrollee(facility_name: &str) -> Enrollee {
        Enrollee {
            facility: Facility {
                id: "F1".into(),
                name: facility_name.into(),
                prefecture: "愛知県".into(),
                city: "豊田市".into(),
                kind: "clinic".into(),
            },
            person: Person {
                id: "P1".into(),
                family_name: "山田".into(),
                given_name: "花子".into(),
                family_name_kana: String::new(),
                given_name_kana: String::new(),
                job: "看護師".into(),
                email: "a@example.jp".into(),
            },
            device: Device {
                id: "D1".into(),
                os: TargetOs::Ios,
                remark: String::new(),
            },
        }
    }

    #[test]
    fn long_subject_names_the_request_field_and_the_limit() {
        let policy = Policy::default_policy();
        let profile = policy.cert_profile(None).expect("default profile");
        assert!(check_subject(profile, &enrollee(&"あ".repeat(64))).is_ok());
        let err = check_subject(profile, &enrollee(&"あ".repeat(65))).expect_err("too long");
        let CaError::InvalidArgument { field, problem } = err else {
            panic!("not INVALID_ARGUMENT: {err:?}");
        };
        assert_eq!(field, "facility.name");
        assert!(
            problem.contains("65") && problem.contains("64"),
            "{problem}"
        );
        assert!(problem.contains("organizationName"), "{problem}");

        let mut e = enrollee("みよし");
        e.person.given_name = "花".repeat(70);
        let err = check_subject(profile, &e).expect_err("CN too long");
        assert!(
            matches!(&err, CaError::InvalidArgument { field, .. } if field == "person.family_name+person.given_name"),
            "{err:?}"
        );
    }

    fn cert(now: OffsetDateTime) -> CertRecord {
        CertRecord {
            version: 1,
            serial: "0a".into(),
            issuer_id: "i".into(),
            der: Vec::new(),
            facility_id: "F1".into(),
            person_id: "P1".into(),
            device_id: "D1".into(),
            os: TargetOs::Ios,
            keystore_profile: "ios".into(),
            ticket_number: "12345678".into(),
            not_before: now,
            not_after: now + time::Duration::days(10),
            issued_at: now,
            revocation: None,
        }
    }

    #[test]
    fn only_a_valid_certificate_of_the_same_identity_is_renewable() {
        let now = OffsetDateTime::now_utc();
        let e = enrollee("みよし");
        assert!(check_renewable(&cert(now), &e, now).is_ok());
        let mut other = e.clone();
        other.device.id = "D2".into();
        assert!(matches!(
            check_renewable(&cert(now), &other, now),
            Err(CaError::InvalidArgument { field, .. }) if field == "device.id"
        ));
        assert!(matches!(
            check_renewable(&cert(now), &e, now + time::Duration::days(11)),
            Err(CaError::WrongState { state, .. }) if state.starts_with("expired")
        ));
        let mut revoked = cert(now);
        revoked.revocation = Some(crate::store::Revocation {
            revoked_at: now,
            reason: RevocationReason::KeyCompromise,
            invalidity_date: None,
        });
        assert!(matches!(
            check_renewable(&revoked, &e, now),
            Err(CaError::WrongState { state, .. }) if state.starts_with("revoked")
        ));
        assert_eq!(device_identity(&e), "F1/P1/D1");
    }
}
