//! Conversions at the gRPC edge: `v1` messages ⇄ domain types (DESIGN.md §2).
//!
//! Incoming messages are checked **structurally** here: required fields present, enums known,
//! identifiers in their ASCII alphabet, ticket numbers and passwords eight digits, serials
//! lowercase hex, timestamps in range, no control characters in text. Length limits and every
//! other rule that depends on configuration are applied later by the policy (`pki-policy`), so
//! that the CLI and gRPC edges share them.
//!
//! Every failure is a [`ConvertError`] naming the offending field by its dotted proto path
//! (`person.family_name`) and the [`Problem`]. Errors never echo the rejected value: a value may
//! be a secret (a ticket password) or a log-injection attempt.
//!
//! Outgoing conversions (`From<domain::X> for v1::X`) are infallible except for timestamps,
//! whose proto range (years 1 to 9999) is narrower than [`OffsetDateTime`]'s.

use std::fmt;

use pki_policy::domain::{self, RevocationReason, TargetOs};
use prost_types::Timestamp;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::v1;

/// Maximum length of an identifier (facility, person, device, issuer, profile ids).
pub const MAX_ID_LEN: usize = 64;

/// Maximum length of a serial in hex digits (20 octets, RFC 5280 §4.1.2.2).
pub const MAX_SERIAL_HEX_LEN: usize = 40;

/// Length of a ticket number and of a ticket password, in ASCII digits.
pub const TICKET_DIGITS: usize = 8;

/// Smallest valid `Timestamp.seconds`: 0001-01-01T00:00:00Z.
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;

/// Largest valid `Timestamp.seconds`: 9999-12-31T23:59:59Z.
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// What is wrong with a field. Never carries the rejected value itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// A required field is empty, blank or unset.
    #[error("is required but missing")]
    Missing,
    /// An enum field is UNSPECIFIED where a value is required.
    #[error("must not be UNSPECIFIED")]
    Unspecified,
    /// An enum field holds a number the contract does not define.
    #[error("has the unknown enum value {0}")]
    UnknownEnumValue(i32),
    /// A ticket number or password is not exactly eight ASCII digits. (The message spells the
    /// count out so that it contains no digit at all and cannot be confused with the input.)
    #[error("must be exactly eight ASCII digits")]
    NotEightDigits,
    /// A serial contains something other than `0-9a-f`.
    #[error("must be lowercase hexadecimal without separators")]
    NotLowercaseHex,
    /// A serial is empty or longer than [`MAX_SERIAL_HEX_LEN`] hex digits.
    #[error("must be {min} to {max} hex digits long, got {len}")]
    HexLength {
        /// Minimum number of digits.
        min: usize,
        /// Maximum number of digits.
        max: usize,
        /// Number of characters received.
        len: usize,
    },
    /// An identifier is not 1 to 64 characters of `[A-Za-z0-9._:-]`.
    #[error("must be 1 to 64 ASCII letters, digits, '.', '_', ':' or '-'")]
    InvalidId,
    /// Text contains a control character or an invisible bidirectional-formatting character.
    #[error("contains a control or bidirectional-formatting character at character {position}")]
    ControlCharacter {
        /// Zero-based index (in characters, not bytes) of the first such character.
        position: usize,
    },
    /// An e-mail address does not have exactly one `@` with text on both sides, or contains
    /// whitespace.
    #[error("must be an e-mail address with exactly one '@' and no whitespace")]
    InvalidEmail,
    /// An opaque token (page token) contains something other than printable ASCII.
    #[error("must be printable ASCII")]
    NotPrintableAscii,
    /// A timestamp is outside 0001-01-01T00:00:00Z..=9999-12-31T23:59:59.999999999Z or has
    /// nanos outside `0..1_000_000_000`.
    #[error("is not a valid timestamp (years 1 to 9999, nanos 0 to 999999999)")]
    InvalidTimestamp,
    /// A timestamp is the zero value (1970-01-01T00:00:00Z), which is never a meaningful time
    /// here and usually means an uninitialised field.
    #[error("must not be the zero timestamp 1970-01-01T00:00:00Z")]
    ZeroTimestamp,
}

/// A message failed structural validation: `field` (a dotted proto path such as
/// `person.family_name`) has `problem`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {problem}")]
#[non_exhaustive]
pub struct ConvertError {
    /// Dotted path of the field in the request, e.g. `person.family_name` or `target`.
    pub field: String,
    /// What is wrong with it.
    pub problem: Problem,
}

impl ConvertError {
    /// An error for `field`.
    pub fn new(field: impl Into<String>, problem: Problem) -> Self {
        Self {
            field: field.into(),
            problem,
        }
    }

    /// The same error seen from the enclosing message: `family_name` within `person` becomes
    /// `person.family_name`.
    #[must_use]
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

impl From<ConvertError> for tonic::Status {
    /// A structurally invalid request is the caller's fault: `INVALID_ARGUMENT`, with the
    /// message naming the field (never its value).
    fn from(err: ConvertError) -> Self {
        tonic::Status::invalid_argument(err.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Field helpers
// ---------------------------------------------------------------------------------------------

/// Whether `c` is allowed in an identifier.
fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

/// Validates a required identifier: ASCII `[A-Za-z0-9._:-]{1,64}`.
///
/// # Errors
/// [`Problem::Missing`] when empty, [`Problem::InvalidId`] otherwise.
pub fn parse_id(field: &str, value: &str) -> Result<String, ConvertError> {
    if value.is_empty() {
        return Err(ConvertError::new(field, Problem::Missing));
    }
    if value.len() > MAX_ID_LEN || !value.chars().all(is_id_char) {
        return Err(ConvertError::new(field, Problem::InvalidId));
    }
    Ok(value.to_owned())
}

/// Validates an optional identifier, where empty means "not given" (a filter, the default
/// profile, the active issuer).
///
/// # Errors
/// [`Problem::InvalidId`] when non-empty and not `[A-Za-z0-9._:-]{1,64}`.
pub fn parse_optional_id(field: &str, value: &str) -> Result<Option<String>, ConvertError> {
    if value.is_empty() {
        Ok(None)
    } else {
        parse_id(field, value).map(Some)
    }
}

/// Validates the `issuer_id` of `GetCrlRequest`, `WatchCrlRequest` and `PublishCrlRequest`:
/// `None` when empty (the active issuer, or every issuer for `PublishCrl`).
///
/// # Errors
/// [`Problem::InvalidId`] for a malformed id, field `issuer_id`.
pub fn parse_issuer_selector(issuer_id: &str) -> Result<Option<String>, ConvertError> {
    parse_optional_id("issuer_id", issuer_id)
}

/// Characters refused in human text: control characters (C0, DEL, C1, which includes line
/// breaks) and the invisible bidirectional-formatting characters that can make a subject DN or a
/// log line read differently from what it contains.
fn is_forbidden_text_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

/// Checks free text (Japanese UTF-8 allowed) for forbidden characters.
fn check_text(field: &str, value: &str) -> Result<(), ConvertError> {
    match value.chars().position(is_forbidden_text_char) {
        Some(position) => Err(ConvertError::new(
            field,
            Problem::ControlCharacter { position },
        )),
        None => Ok(()),
    }
}

/// Checks text that must be present: not empty nor only whitespace (including the ideographic
/// space U+3000), and without forbidden characters.
fn check_required_text(field: &str, value: &str) -> Result<(), ConvertError> {
    if value.trim().is_empty() {
        return Err(ConvertError::new(field, Problem::Missing));
    }
    check_text(field, value)
}

/// Checks an e-mail address: required, exactly one `@` with text on both sides, no whitespace
/// and no forbidden characters. (Deliverability is the portal's business.)
fn check_email(field: &str, value: &str) -> Result<(), ConvertError> {
    if value.is_empty() {
        return Err(ConvertError::new(field, Problem::Missing));
    }
    check_text(field, value)?;
    let mut parts = value.split('@');
    let well_formed = matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(local), Some(domain), None) if !local.is_empty() && !domain.is_empty()
    );
    if !well_formed || value.chars().any(char::is_whitespace) {
        return Err(ConvertError::new(field, Problem::InvalidEmail));
    }
    Ok(())
}

/// Whether `value` is exactly [`TICKET_DIGITS`] ASCII digits.
fn is_eight_digits(value: &str) -> bool {
    value.len() == TICKET_DIGITS && value.bytes().all(|b| b.is_ascii_digit())
}

/// Validates a ticket number: exactly eight ASCII digits (leading zeros allowed).
///
/// # Errors
/// [`Problem::Missing`] when empty, [`Problem::NotEightDigits`] otherwise; field `number`.
pub fn parse_ticket_number(value: &str) -> Result<String, ConvertError> {
    if value.is_empty() {
        return Err(ConvertError::new("number", Problem::Missing));
    }
    if !is_eight_digits(value) {
        return Err(ConvertError::new("number", Problem::NotEightDigits));
    }
    Ok(value.to_owned())
}

/// Validates a ticket password: exactly eight ASCII digits. The copy is returned in a
/// [`Zeroizing`] buffer.
///
/// # Errors
/// [`Problem::Missing`] when empty, [`Problem::NotEightDigits`] otherwise; field `password`.
/// The error is the same for every malformed input and never contains it.
pub fn parse_ticket_password(value: &str) -> Result<Zeroizing<String>, ConvertError> {
    check_ticket_password(value)?;
    Ok(Zeroizing::new(value.to_owned()))
}

/// The check behind [`parse_ticket_password`], without copying the secret.
fn check_ticket_password(value: &str) -> Result<(), ConvertError> {
    if value.is_empty() {
        return Err(ConvertError::new("password", Problem::Missing));
    }
    if !is_eight_digits(value) {
        return Err(ConvertError::new("password", Problem::NotEightDigits));
    }
    Ok(())
}

/// Validates a certificate serial: lowercase hex `[0-9a-f]`, 1 to 40 digits, no separators,
/// no `0x` prefix.
///
/// # Errors
/// [`Problem::Missing`] when empty, [`Problem::NotLowercaseHex`] for any other character,
/// [`Problem::HexLength`] when longer than 40; field `serial`.
pub fn parse_serial(value: &str) -> Result<String, ConvertError> {
    if value.is_empty() {
        return Err(ConvertError::new("serial", Problem::Missing));
    }
    if !value
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(ConvertError::new("serial", Problem::NotLowercaseHex));
    }
    if value.len() > MAX_SERIAL_HEX_LEN {
        return Err(ConvertError::new(
            "serial",
            Problem::HexLength {
                min: 1,
                max: MAX_SERIAL_HEX_LEN,
                len: value.len(),
            },
        ));
    }
    Ok(value.to_owned())
}

/// An OS that must be given: UNSPECIFIED is an error.
///
/// # Errors
/// [`Problem::Unspecified`] for 0, [`Problem::UnknownEnumValue`] for an undefined number.
pub fn target_os(field: &str, value: i32) -> Result<TargetOs, ConvertError> {
    optional_target_os(field, value)?.ok_or_else(|| ConvertError::new(field, Problem::Unspecified))
}

/// An OS that may be left UNSPECIFIED (`None`), as in `RedeemTicketRequest.os`.
///
/// # Errors
/// [`Problem::UnknownEnumValue`] for an undefined number.
pub fn optional_target_os(field: &str, value: i32) -> Result<Option<TargetOs>, ConvertError> {
    let os = v1::TargetOs::try_from(value)
        .map_err(|_| ConvertError::new(field, Problem::UnknownEnumValue(value)))?;
    Ok(match os {
        v1::TargetOs::Unspecified => None,
        v1::TargetOs::Windows => Some(TargetOs::Windows),
        v1::TargetOs::Macos => Some(TargetOs::Macos),
        v1::TargetOs::Android => Some(TargetOs::Android),
        v1::TargetOs::Ios => Some(TargetOs::Ios),
    })
}

/// A revocation reason. UNSPECIFIED (0) is the RFC 5280 reason `unspecified`, a valid value.
///
/// # Errors
/// [`Problem::UnknownEnumValue`] for a number the contract does not define (2, 7, 8, 10, ...).
pub fn revocation_reason(field: &str, value: i32) -> Result<RevocationReason, ConvertError> {
    v1::RevocationReason::try_from(value)
        .map(RevocationReason::from)
        .map_err(|_| ConvertError::new(field, Problem::UnknownEnumValue(value)))
}

/// Converts a proto timestamp to [`OffsetDateTime`] (UTC).
///
/// # Errors
/// [`Problem::InvalidTimestamp`] outside years 1 to 9999 or with nanos outside
/// `0..1_000_000_000`.
pub fn time_from_timestamp(field: &str, ts: &Timestamp) -> Result<OffsetDateTime, ConvertError> {
    let invalid = || ConvertError::new(field, Problem::InvalidTimestamp);
    if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&ts.seconds)
        || !(0..1_000_000_000).contains(&ts.nanos)
    {
        return Err(invalid());
    }
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| invalid())
}

/// Converts an [`OffsetDateTime`] (any offset) to a proto timestamp.
///
/// # Errors
/// [`Problem::InvalidTimestamp`] when the instant is before year 1 or after year 9999 (UTC),
/// which the proto `Timestamp` cannot represent.
pub fn timestamp_from_time(field: &str, t: OffsetDateTime) -> Result<Timestamp, ConvertError> {
    let seconds = t.unix_timestamp();
    if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&seconds) {
        return Err(ConvertError::new(field, Problem::InvalidTimestamp));
    }
    let nanos = i32::try_from(t.nanosecond())
        .map_err(|_| ConvertError::new(field, Problem::InvalidTimestamp))?;
    Ok(Timestamp { seconds, nanos })
}

/// An optional timestamp from a request: unset is `None`; set must be valid and not zero.
fn optional_time(
    field: &str,
    ts: Option<&Timestamp>,
) -> Result<Option<OffsetDateTime>, ConvertError> {
    match ts {
        None => Ok(None),
        Some(ts) if ts.seconds == 0 && ts.nanos == 0 => {
            Err(ConvertError::new(field, Problem::ZeroTimestamp))
        }
        Some(ts) => time_from_timestamp(field, ts).map(Some),
    }
}

/// A sub-message that must be present.
fn required<T>(field: &str, value: Option<T>) -> Result<T, ConvertError> {
    value.ok_or_else(|| ConvertError::new(field, Problem::Missing))
}

// ---------------------------------------------------------------------------------------------
// Enums
// ---------------------------------------------------------------------------------------------

impl TryFrom<v1::TargetOs> for TargetOs {
    type Error = ConvertError;

    /// UNSPECIFIED is an error (field `os`); use [`optional_target_os`] where it is allowed.
    fn try_from(os: v1::TargetOs) -> Result<Self, Self::Error> {
        target_os("os", os as i32)
    }
}

impl From<TargetOs> for v1::TargetOs {
    fn from(os: TargetOs) -> Self {
        match os {
            TargetOs::Windows => Self::Windows,
            TargetOs::Macos => Self::Macos,
            TargetOs::Android => Self::Android,
            TargetOs::Ios => Self::Ios,
        }
    }
}

impl From<v1::RevocationReason> for RevocationReason {
    /// Total: every proto reason (including UNSPECIFIED, RFC 5280 `unspecified`) is a domain
    /// reason with the same RFC 5280 code.
    fn from(reason: v1::RevocationReason) -> Self {
        match reason {
            v1::RevocationReason::Unspecified => Self::Unspecified,
            v1::RevocationReason::KeyCompromise => Self::KeyCompromise,
            v1::RevocationReason::AffiliationChanged => Self::AffiliationChanged,
            v1::RevocationReason::Superseded => Self::Superseded,
            v1::RevocationReason::CessationOfOperation => Self::CessationOfOperation,
            v1::RevocationReason::CertificateHold => Self::CertificateHold,
            v1::RevocationReason::PrivilegeWithdrawn => Self::PrivilegeWithdrawn,
        }
    }
}

impl From<RevocationReason> for v1::RevocationReason {
    fn from(reason: RevocationReason) -> Self {
        match reason {
            RevocationReason::Unspecified => Self::Unspecified,
            RevocationReason::KeyCompromise => Self::KeyCompromise,
            RevocationReason::AffiliationChanged => Self::AffiliationChanged,
            RevocationReason::Superseded => Self::Superseded,
            RevocationReason::CessationOfOperation => Self::CessationOfOperation,
            RevocationReason::CertificateHold => Self::CertificateHold,
            RevocationReason::PrivilegeWithdrawn => Self::PrivilegeWithdrawn,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Facility, Person, Device
// ---------------------------------------------------------------------------------------------

impl TryFrom<v1::Facility> for domain::Facility {
    type Error = ConvertError;

    /// Required: `id`, `name`. All text free of control characters.
    fn try_from(f: v1::Facility) -> Result<Self, Self::Error> {
        let id = parse_id("id", &f.id)?;
        check_required_text("name", &f.name)?;
        check_text("prefecture", &f.prefecture)?;
        check_text("city", &f.city)?;
        check_text("kind", &f.kind)?;
        Ok(Self {
            id,
            name: f.name,
            prefecture: f.prefecture,
            city: f.city,
            kind: f.kind,
        })
    }
}

impl From<domain::Facility> for v1::Facility {
    fn from(f: domain::Facility) -> Self {
        Self {
            id: f.id,
            name: f.name,
            prefecture: f.prefecture,
            city: f.city,
            kind: f.kind,
        }
    }
}

impl TryFrom<v1::Person> for domain::Person {
    type Error = ConvertError;

    /// Required: `id`, `family_name`, `email`. All text free of control characters.
    fn try_from(p: v1::Person) -> Result<Self, Self::Error> {
        let id = parse_id("id", &p.id)?;
        check_required_text("family_name", &p.family_name)?;
        check_text("given_name", &p.given_name)?;
        check_text("family_name_kana", &p.family_name_kana)?;
        check_text("given_name_kana", &p.given_name_kana)?;
        check_text("job", &p.job)?;
        check_email("email", &p.email)?;
        Ok(Self {
            id,
            family_name: p.family_name,
            given_name: p.given_name,
            family_name_kana: p.family_name_kana,
            given_name_kana: p.given_name_kana,
            job: p.job,
            email: p.email,
        })
    }
}

impl From<domain::Person> for v1::Person {
    fn from(p: domain::Person) -> Self {
        Self {
            id: p.id,
            family_name: p.family_name,
            given_name: p.given_name,
            family_name_kana: p.family_name_kana,
            given_name_kana: p.given_name_kana,
            job: p.job,
            email: p.email,
        }
    }
}

impl TryFrom<v1::Device> for domain::Device {
    type Error = ConvertError;

    /// Required: `id`, `os` (not UNSPECIFIED). `remark` free of control characters.
    fn try_from(d: v1::Device) -> Result<Self, Self::Error> {
        let id = parse_id("id", &d.id)?;
        let os = target_os("os", d.os)?;
        check_text("remark", &d.remark)?;
        Ok(Self {
            id,
            os,
            remark: d.remark,
        })
    }
}

impl From<domain::Device> for v1::Device {
    fn from(d: domain::Device) -> Self {
        Self {
            id: d.id,
            os: v1::TargetOs::from(d.os) as i32,
            remark: d.remark,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// A validated `CreateTicketRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CreateTicket {
    /// Facility, person and device of the registration.
    pub enrollee: domain::Enrollee,
    /// Certificate profile name; `None` = the policy's default profile.
    pub profile: Option<String>,
    /// Who approved the registration (free text, no control characters); may be empty for a
    /// renewal.
    pub approved_by: String,
    /// Serial (lowercase hex) of the certificate this ticket renews; `None` = a new
    /// registration.
    pub renews_serial: Option<String>,
}

impl TryFrom<v1::CreateTicketRequest> for CreateTicket {
    type Error = ConvertError;

    fn try_from(req: v1::CreateTicketRequest) -> Result<Self, Self::Error> {
        let facility = domain::Facility::try_from(required("facility", req.facility)?)
            .map_err(|e| e.within("facility"))?;
        let person = domain::Person::try_from(required("person", req.person)?)
            .map_err(|e| e.within("person"))?;
        let device = domain::Device::try_from(required("device", req.device)?)
            .map_err(|e| e.within("device"))?;
        let profile = parse_optional_id("profile", &req.profile)?;
        let renews_serial = if req.renews_serial.is_empty() {
            None
        } else {
            Some(
                parse_serial(&req.renews_serial)
                    .map_err(|e| ConvertError::new("renews_serial", e.problem))?,
            )
        };
        if renews_serial.is_none() || !req.approved_by.is_empty() {
            check_required_text("approved_by", &req.approved_by)?;
        }
        Ok(Self {
            enrollee: domain::Enrollee {
                facility,
                person,
                device,
            },
            profile,
            approved_by: req.approved_by,
            renews_serial,
        })
    }
}

impl From<CreateTicket> for v1::CreateTicketRequest {
    fn from(c: CreateTicket) -> Self {
        Self {
            facility: Some(c.enrollee.facility.into()),
            person: Some(c.enrollee.person.into()),
            device: Some(c.enrollee.device.into()),
            profile: c.profile.unwrap_or_default(),
            approved_by: c.approved_by,
            renews_serial: c.renews_serial.unwrap_or_default(),
        }
    }
}

/// A validated `RedeemTicketRequest`. Its `Debug` never prints the password.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedeemTicket {
    /// Ticket number, eight ASCII digits.
    pub number: String,
    /// Ticket password, eight ASCII digits; wiped from memory on drop.
    pub password: Zeroizing<String>,
    /// OS to build the bundle for; `None` = the OS registered for the ticket's device.
    pub os: Option<TargetOs>,
    /// Keystore profile name; `None` = the OS's default profile.
    pub keystore_profile: Option<String>,
}

impl fmt::Debug for RedeemTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedeemTicket")
            .field("number", &self.number)
            .field("password", &"<redacted>")
            .field("os", &self.os)
            .field("keystore_profile", &self.keystore_profile)
            .finish()
    }
}

impl TryFrom<v1::RedeemTicketRequest> for RedeemTicket {
    type Error = ConvertError;

    /// The password is moved (not copied) into a [`Zeroizing`] buffer before it is checked, so
    /// it is wiped whether or not the request is valid.
    fn try_from(mut req: v1::RedeemTicketRequest) -> Result<Self, Self::Error> {
        let password = Zeroizing::new(std::mem::take(&mut req.password));
        let number = parse_ticket_number(&req.number)?;
        check_ticket_password(&password)?;
        let os = optional_target_os("os", req.os)?;
        let keystore_profile = parse_optional_id("keystore_profile", &req.keystore_profile)?;
        Ok(Self {
            number,
            password,
            os,
            keystore_profile,
        })
    }
}

/// What a `RevokeRequest` revokes (its `target` oneof).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RevokeTarget {
    /// One certificate, by serial (lowercase hex).
    Serial(String),
    /// Every unrevoked certificate of a device, by device id.
    Device(String),
    /// Every unrevoked certificate of a person, by person id.
    Person(String),
    /// Every unrevoked certificate of a facility (usage termination), by facility id.
    Facility(String),
}

impl TryFrom<Option<v1::revoke_request::Target>> for RevokeTarget {
    type Error = ConvertError;

    /// A missing oneof is [`Problem::Missing`] on field `target`.
    fn try_from(target: Option<v1::revoke_request::Target>) -> Result<Self, Self::Error> {
        use v1::revoke_request::Target;
        match target {
            None => Err(ConvertError::new("target", Problem::Missing)),
            Some(Target::Serial(s)) => parse_serial(&s).map(Self::Serial),
            Some(Target::DeviceId(id)) => parse_id("device_id", &id).map(Self::Device),
            Some(Target::PersonId(id)) => parse_id("person_id", &id).map(Self::Person),
            Some(Target::FacilityId(id)) => parse_id("facility_id", &id).map(Self::Facility),
        }
    }
}

impl From<RevokeTarget> for v1::revoke_request::Target {
    fn from(target: RevokeTarget) -> Self {
        match target {
            RevokeTarget::Serial(s) => Self::Serial(s),
            RevokeTarget::Device(id) => Self::DeviceId(id),
            RevokeTarget::Person(id) => Self::PersonId(id),
            RevokeTarget::Facility(id) => Self::FacilityId(id),
        }
    }
}

/// A validated `RevokeRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Revoke {
    /// What to revoke.
    pub target: RevokeTarget,
    /// The RFC 5280 reason.
    pub reason: RevocationReason,
    /// RFC 5280 invalidityDate, when known.
    pub invalidity_date: Option<OffsetDateTime>,
}

impl TryFrom<v1::RevokeRequest> for Revoke {
    type Error = ConvertError;

    fn try_from(req: v1::RevokeRequest) -> Result<Self, Self::Error> {
        Ok(Self {
            target: RevokeTarget::try_from(req.target)?,
            reason: revocation_reason("reason", req.reason)?,
            invalidity_date: optional_time("invalidity_date", req.invalidity_date.as_ref())?,
        })
    }
}

/// A validated `ListCertificatesRequest`. `None` filters match everything.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListCertificates {
    /// Only certificates of this facility.
    pub facility_id: Option<String>,
    /// Only certificates of this person.
    pub person_id: Option<String>,
    /// Only certificates of this device.
    pub device_id: Option<String>,
    /// Only certificates in this state (never `CertificateState::Unspecified`).
    pub status: Option<v1::CertificateState>,
    /// Maximum page size asked for; 0 = the server's default (the server applies its limit).
    pub page_size: u32,
    /// Opaque token of the page to return; `None` = the first page.
    pub page_token: Option<String>,
}

impl TryFrom<v1::ListCertificatesRequest> for ListCertificates {
    type Error = ConvertError;

    fn try_from(req: v1::ListCertificatesRequest) -> Result<Self, Self::Error> {
        let status = match v1::CertificateState::try_from(req.status) {
            Ok(v1::CertificateState::Unspecified) => None,
            Ok(state) => Some(state),
            Err(_) => {
                return Err(ConvertError::new(
                    "status",
                    Problem::UnknownEnumValue(req.status),
                ));
            }
        };
        let page_token = if req.page_token.is_empty() {
            None
        } else if req.page_token.bytes().all(|b| b.is_ascii_graphic()) {
            Some(req.page_token)
        } else {
            return Err(ConvertError::new("page_token", Problem::NotPrintableAscii));
        };
        Ok(Self {
            facility_id: parse_optional_id("facility_id", &req.facility_id)?,
            person_id: parse_optional_id("person_id", &req.person_id)?,
            device_id: parse_optional_id("device_id", &req.device_id)?,
            status,
            page_size: req.page_size,
            page_token,
        })
    }
}

#[cfg(test)]
mod tests;
