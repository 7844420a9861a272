//! `[limits]`: sizes, lengths, timeouts and rates, and the checks on enrollee data.
//!
//! String lengths are counted in Unicode scalar values (`char`s), not bytes: a kanji, a kana
//! or an emoji counts as one, so a Japanese name gets the same room as a Latin one.

use std::time::Duration;

use crate::domain::Enrollee;
use crate::error::PolicyError;
use crate::raw::{RawLimits, ranged};

/// `[limits]`: what one request and one caller may cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest string field (names, ids, job, e-mail), in characters.
    pub max_string_len: usize,
    /// Longest free-text remark (`device.remark`), in characters.
    pub max_remark_len: usize,
    /// Largest encoded gRPC request message, in bytes.
    pub max_request_bytes: usize,
    /// Largest encoded CRL message (`GetCrl`, `WatchCrl`), in bytes.
    pub max_crl_message_bytes: usize,
    /// Largest page a list RPC returns.
    pub max_page_size: u32,
    /// Page size used when the request leaves it 0.
    pub default_page_size: u32,
    /// Deadline of a unary RPC, in seconds (streams such as `WatchCrl` are not cut by it).
    pub request_timeout_secs: u64,
    /// Concurrent connections accepted by the gRPC server.
    pub max_connections: u32,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Sustained requests per second per caller (client certificate).
    pub rate_per_caller_per_second: u32,
    /// Burst size (bucket capacity) of the per-caller rate limit.
    pub rate_burst: u32,
}

/// Number of string fields in an [`Enrollee`] other than the remark (used to check that
/// `max_request_bytes` leaves room for a maximal `CreateTicket` request).
const ENROLLEE_STRING_FIELDS: usize = 13;

impl Limits {
    pub(crate) fn from_raw(raw: RawLimits) -> Result<Self, PolicyError> {
        const MIB: i64 = 1024 * 1024;
        let max_page_size: u32 = ranged(raw.max_page_size, "limits.max_page_size", 1, 100_000)?;
        let limits = Self {
            max_string_len: ranged(raw.max_string_len, "limits.max_string_len", 1, 4096)?,
            max_remark_len: ranged(raw.max_remark_len, "limits.max_remark_len", 1, 65_536)?,
            max_request_bytes: ranged(
                raw.max_request_bytes,
                "limits.max_request_bytes",
                1024,
                16 * MIB,
            )?,
            max_crl_message_bytes: ranged(
                raw.max_crl_message_bytes,
                "limits.max_crl_message_bytes",
                MIB,
                1024 * MIB,
            )?,
            max_page_size,
            default_page_size: ranged(
                raw.default_page_size,
                "limits.default_page_size",
                1,
                i64::from(max_page_size),
            )?,
            request_timeout_secs: ranged(
                raw.request_timeout_secs,
                "limits.request_timeout_secs",
                1,
                3600,
            )?,
            max_connections: ranged(raw.max_connections, "limits.max_connections", 1, 1_000_000)?,
            max_concurrent_streams: ranged(
                raw.max_concurrent_streams,
                "limits.max_concurrent_streams",
                1,
                65_536,
            )?,
            rate_per_caller_per_second: ranged(
                raw.rate_per_caller_per_second,
                "limits.rate_per_caller_per_second",
                1,
                1_000_000,
            )?,
            rate_burst: ranged(raw.rate_burst, "limits.rate_burst", 1, 10_000_000)?,
        };
        // A maximal CreateTicket request (every field at its limit, 4 UTF-8 bytes a char, plus
        // room for the profile, approver and framing) must fit, or legitimate requests would be
        // refused by the transport with a less helpful error than the field checks give.
        let needed = 4
            * ((ENROLLEE_STRING_FIELDS + 2) * limits.max_string_len + limits.max_remark_len)
            + 1024;
        if limits.max_request_bytes < needed {
            return Err(PolicyError::invalid(
                "limits.max_request_bytes",
                format!(
                    "{} bytes cannot carry a CreateTicket request at the string limits \
                     (needs at least {needed} bytes)",
                    limits.max_request_bytes
                ),
            ));
        }
        Ok(limits)
    }

    /// Deadline of a unary RPC.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// The page size to use for a request: `0` means the default, larger values are capped.
    pub fn effective_page_size(&self, requested: u32) -> u32 {
        match requested {
            0 => self.default_page_size,
            n => n.min(self.max_page_size),
        }
    }

    /// Checks every field of an enrollee: lengths (in characters), no control or invisible
    /// bidirectional characters, ids as URI-safe ASCII, and the fields a certificate subject
    /// needs (`facility.name`, `person.family_name`, the ids) non-empty.
    ///
    /// `device.remark` may be up to `max_remark_len` characters and may contain line breaks
    /// and tabs (it comes from a form's text area); it never goes into a certificate.
    pub fn check_enrollee(&self, enrollee: &Enrollee) -> Result<(), FieldError> {
        let Enrollee {
            facility,
            person,
            device,
        } = enrollee;
        self.check_id("facility.id", &facility.id)?;
        self.check_required("facility.name", &facility.name)?;
        self.check_string("facility.prefecture", &facility.prefecture)?;
        self.check_string("facility.city", &facility.city)?;
        self.check_string("facility.kind", &facility.kind)?;
        self.check_id("person.id", &person.id)?;
        self.check_required("person.family_name", &person.family_name)?;
        self.check_string("person.given_name", &person.given_name)?;
        self.check_string("person.family_name_kana", &person.family_name_kana)?;
        self.check_string("person.given_name_kana", &person.given_name_kana)?;
        self.check_string("person.job", &person.job)?;
        self.check_string("person.email", &person.email)?;
        self.check_id("device.id", &device.id)?;
        self.check_remark("device.remark", &device.remark)
    }

    /// Checks a free string field: at most `max_string_len` characters, no control or
    /// invisible bidirectional characters. Empty is allowed.
    pub fn check_string(&self, field: &str, value: &str) -> Result<(), FieldError> {
        check_text(field, value, self.max_string_len, false)
    }

    /// [`Limits::check_string`], and not empty (nor only white space).
    pub fn check_required(&self, field: &str, value: &str) -> Result<(), FieldError> {
        if value.trim().is_empty() {
            return Err(FieldError::new(field, FieldProblem::Empty));
        }
        self.check_string(field, value)
    }

    /// Checks a free-text remark: at most `max_remark_len` characters; line breaks and tabs
    /// are allowed, other control characters are not.
    pub fn check_remark(&self, field: &str, value: &str) -> Result<(), FieldError> {
        check_text(field, value, self.max_remark_len, true)
    }

    /// Checks an identifier: 1 to `max_string_len` of ASCII letters, digits and `-._~` (URI
    /// unreserved characters, so it can go into a `urn:` SAN URI unescaped).
    pub fn check_id(&self, field: &str, value: &str) -> Result<(), FieldError> {
        if value.is_empty() {
            return Err(FieldError::new(field, FieldProblem::Empty));
        }
        check_text(field, value, self.max_string_len, false)?;
        if let Some((position, found)) = value
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')))
        {
            return Err(FieldError::new(
                field,
                FieldProblem::InvalidIdCharacter { position, found },
            ));
        }
        Ok(())
    }
}

/// Invisible characters that reorder text (Unicode bidi controls): refused so that a name
/// cannot display differently from what it holds (in logs, subjects, the portal).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn check_text(field: &str, value: &str, max: usize, multiline: bool) -> Result<(), FieldError> {
    let mut len = 0usize;
    for (position, c) in value.chars().enumerate() {
        len += 1;
        if c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t')) {
            return Err(FieldError::new(
                field,
                FieldProblem::ControlCharacter { position },
            ));
        }
        if is_bidi_control(c) {
            return Err(FieldError::new(
                field,
                FieldProblem::BidiControl { position },
            ));
        }
    }
    if len > max {
        return Err(FieldError::new(field, FieldProblem::TooLong { len, max }));
    }
    Ok(())
}

/// A field of request data that breaks a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {problem}")]
pub struct FieldError {
    /// Dotted path of the field (`person.family_name`).
    pub field: String,
    /// What is wrong with it.
    pub problem: FieldProblem,
}

impl FieldError {
    /// A new error for `field`.
    pub fn new(field: impl Into<String>, problem: FieldProblem) -> Self {
        Self {
            field: field.into(),
            problem,
        }
    }
}

/// What is wrong with a field (positions count characters from 0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldProblem {
    /// The field is required and empty (or only white space).
    #[error("is empty")]
    Empty,
    /// The field is longer than its limit.
    #[error("is {len} characters long; the limit is {max}")]
    TooLong {
        /// Length found, in characters.
        len: usize,
        /// The limit, in characters.
        max: usize,
    },
    /// The field contains a control character.
    #[error("contains a control character at position {position}")]
    ControlCharacter {
        /// Position of the first one, in characters.
        position: usize,
    },
    /// The field contains an invisible bidirectional formatting character.
    #[error("contains an invisible bidirectional formatting character at position {position}")]
    BidiControl {
        /// Position of the first one, in characters.
        position: usize,
    },
    /// An identifier contains a character outside ASCII letters, digits and `-._~`.
    #[error(
        "may hold only ASCII letters, digits and `-._~`; found {found:?} at position {position}"
    )]
    InvalidIdCharacter {
        /// Position of the first one, in characters.
        position: usize,
        /// The character found.
        found: char,
    },
    /// A rendered subject attribute is longer than X.520 allows.
    #[error("renders to {len} characters; X.520 allows at most {max}")]
    SubjectTooLong {
        /// Length of the rendered value, in characters.
        len: usize,
        /// The X.520 upper bound.
        max: usize,
    },
}
