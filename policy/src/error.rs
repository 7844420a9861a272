//! The one error type of the policy engine.
//!
//! Every variant but [`PolicyError::Syntax`] names the offending key by its dotted path in the
//! policy document (`keystore.android.cert_encryption`, `roles.portal[2]`), so an operator can
//! go straight to the line to fix. Messages never carry secrets: a policy holds none.

/// Why a policy document (or a lookup against a loaded policy) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The document is not valid TOML (the parser's own message, with its position).
    #[error("policy is not valid TOML at line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// The TOML parser's message.
        message: String,
    },

    /// A key that is not part of the policy schema (often a typo).
    #[error("`{field}`: unknown field")]
    UnknownField {
        /// Dotted path of the unknown key, including the key itself.
        field: String,
    },

    /// A value of the wrong TOML type, or one serde could not read (message from serde).
    #[error("`{field}`: {reason}")]
    InvalidType {
        /// Dotted path of the key.
        field: String,
        /// What was wrong, as reported by the deserializer.
        reason: String,
    },

    /// A key that must be present is missing (a profile that is not built in must give every key).
    #[error("`{field}`: missing (a profile that is not built in must set every key)")]
    MissingField {
        /// Dotted path of the missing key.
        field: String,
    },

    /// A number outside its allowed range.
    #[error("`{field}` = {value} is out of range {min}..={max}")]
    OutOfRange {
        /// Dotted path of the key.
        field: String,
        /// The value found.
        value: i64,
        /// Smallest allowed value.
        min: i64,
        /// Largest allowed value.
        max: i64,
    },

    /// A validity (days) longer than that of the certificate that signs it.
    #[error(
        "`{field}` = {days} days is beyond the issuer's validity (`{issuer_field}` = {issuer_days} days)"
    )]
    ValidityBeyondIssuer {
        /// Dotted path of the too-long validity.
        field: String,
        /// The validity found, in days.
        days: i64,
        /// Dotted path of the validity it must stay within.
        issuer_field: String,
        /// That validity, in days.
        issuer_days: i64,
    },

    /// An OS name that is none of `windows`, `macos`, `android`, `ios`.
    #[error("`{field}`: unknown OS `{value}` (expected one of windows, macos, android, ios)")]
    UnknownOs {
        /// Dotted path of the key (for `keystore_default`, the key *is* the OS name).
        field: String,
        /// The name found.
        value: String,
    },

    /// A value outside an enumeration (key type, key usage, MAC, ...).
    #[error("`{field}`: unknown value `{value}` (expected one of {expected})")]
    UnknownValue {
        /// Dotted path of the key.
        field: String,
        /// The value found.
        value: String,
        /// The accepted values, comma separated.
        expected: String,
    },

    /// A PKCS#12 bag encryption the target OS cannot import (Android and RC2, for example).
    #[error("`{field}`: encryption `{value}` refused: {reason}")]
    UnsupportedEncryption {
        /// Dotted path of the key.
        field: String,
        /// The encryption named.
        value: String,
        /// Why it is refused.
        reason: String,
    },

    /// A subject template placeholder outside the known set.
    #[error("`{field}`: unknown placeholder `{{{placeholder}}}` (known: {known})")]
    UnknownPlaceholder {
        /// Dotted path of the template.
        field: String,
        /// The placeholder found, without braces.
        placeholder: String,
        /// The known placeholders, comma separated.
        known: String,
    },

    /// A reference to a certificate or keystore profile that does not exist.
    #[error("`{field}`: no such profile `{name}`")]
    UnknownProfile {
        /// Dotted path of the reference (or of the profile asked for).
        field: String,
        /// The profile name.
        name: String,
    },

    /// A keystore profile used for an OS it is not made for.
    #[error("`{field}`: keystore profile `{profile}` is for {profile_os}, not {os}")]
    ProfileOsMismatch {
        /// Dotted path of the reference (or of the profile asked for).
        field: String,
        /// The profile name.
        profile: String,
        /// The OS the profile is for.
        profile_os: String,
        /// The OS it was asked for.
        os: String,
    },

    /// A role name other than `portal`, `gateway`, `ops`.
    #[error("`{field}`: unknown role `{role}` (expected one of portal, gateway, ops)")]
    UnknownRole {
        /// Dotted path of the key.
        field: String,
        /// The role found.
        role: String,
    },

    /// A gRPC method path that is not part of the v1 contract.
    #[error("`{field}`: `{path}` is not a method (or `/<service>/*`) of the v1 API")]
    UnknownMethod {
        /// Dotted path of the list entry (`roles.portal[1]`).
        field: String,
        /// The path found.
        path: String,
    },

    /// Any other invalid value: a bad name, URL or template, or two keys that contradict
    /// each other.
    #[error("`{field}`: {reason}")]
    InvalidValue {
        /// Dotted path of the key.
        field: String,
        /// What is wrong and what is expected.
        reason: String,
    },
}

impl PolicyError {
    /// The dotted path of the field the error is about; `None` for a TOML syntax error, which is
    /// located by line and column instead.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Syntax { .. } => None,
            Self::UnknownField { field }
            | Self::InvalidType { field, .. }
            | Self::MissingField { field }
            | Self::OutOfRange { field, .. }
            | Self::ValidityBeyondIssuer { field, .. }
            | Self::UnknownOs { field, .. }
            | Self::UnknownValue { field, .. }
            | Self::UnsupportedEncryption { field, .. }
            | Self::UnknownPlaceholder { field, .. }
            | Self::UnknownProfile { field, .. }
            | Self::ProfileOsMismatch { field, .. }
            | Self::UnknownRole { field, .. }
            | Self::UnknownMethod { field, .. }
            | Self::InvalidValue { field, .. } => Some(field),
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidValue {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Turns a TOML/serde error into a [`PolicyError`] naming the field by its dotted path.
pub(crate) fn from_toml(
    input: &str,
    err: serde_path_to_error::Error<toml::de::Error>,
) -> PolicyError {
    let field = path_string(err.path());
    let inner = err.into_inner();
    let message = inner.message().trim().to_owned();
    // serde's derive reports `unknown field `x`, expected one of ...` while the key is being read;
    // serde_path_to_error has already pushed the key itself onto the path at that point.
    if message.starts_with("unknown field") && !field.is_empty() {
        return PolicyError::UnknownField { field };
    }
    if field.is_empty() {
        let (line, column) = inner
            .span()
            .map(|s| line_column(input, s.start))
            .unwrap_or((1, 1));
        return PolicyError::Syntax {
            line,
            column,
            message,
        };
    }
    PolicyError::InvalidType {
        field,
        reason: message,
    }
}

/// Renders a serde path as `a.b.c[2]`.
fn path_string(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_column(input: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(input.len());
    while !input.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &input[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_chars() {
        assert_eq!(line_column("a\nbé", 5), (2, 3));
        assert_eq!(line_column("", 10), (1, 1));
        // Offset inside a multi-byte char moves back to its start.
        assert_eq!(line_column("é", 1), (1, 1));
    }
}
