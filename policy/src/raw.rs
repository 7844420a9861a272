//! The policy document as written: serde structs with `deny_unknown_fields`, every key optional.
//!
//! A user document is merged over the built-in default document (key by key; a profile table
//! merges over the built-in profile of the same name), then validated into the public types.
//! Numbers are read as `i64` so that the range checks, not serde, report out-of-range values.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::PolicyError;

/// Field-wise merge: `self` (the user's document) wins, `base` fills the gaps.
pub(crate) trait Merge {
    /// Merges `self` over `base`.
    fn merge(self, base: Self) -> Self;
}

/// Implements [`Merge`] for a struct whose fields are all `Option`s of plain values.
macro_rules! merge_plain {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        impl Merge for $ty {
            fn merge(self, base: Self) -> Self {
                Self { $($field: self.$field.or(base.$field)),* }
            }
        }
    };
}

impl<V: Merge> Merge for Option<V> {
    fn merge(self, base: Self) -> Self {
        match (self, base) {
            (Some(user), Some(base)) => Some(user.merge(base)),
            (user, base) => user.or(base),
        }
    }
}

impl<V: Merge> Merge for BTreeMap<String, V> {
    fn merge(mut self, base: Self) -> Self {
        for (name, base_value) in base {
            let merged = match self.remove(&name) {
                Some(user_value) => user_value.merge(base_value),
                None => base_value,
            };
            self.insert(name, merged);
        }
        self
    }
}

/// A value that the user's document replaces whole (lists, strings in maps).
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub(crate) struct Replace<T>(pub T);

impl<T> Merge for Replace<T> {
    fn merge(self, _base: Self) -> Self {
        self
    }
}

/// The whole document.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub ca: Option<RawCa>,
    pub certificate: Option<RawCertificate>,
    pub keystore: Option<BTreeMap<String, RawKeystore>>,
    pub keystore_default: Option<BTreeMap<String, Replace<String>>>,
    pub roles: Option<BTreeMap<String, Replace<Vec<String>>>>,
    pub tickets: Option<RawTickets>,
    pub limits: Option<RawLimits>,
    pub crl: Option<RawCrl>,
    pub ocsp: Option<RawOcsp>,
    pub storage: Option<RawStorage>,
    pub renewal: Option<RawRenewal>,
    /// `[urls]` was removed (the URL base is fixed at init); kept only to refuse it by name.
    pub urls: Option<serde::de::IgnoredAny>,
}

impl Merge for RawPolicy {
    fn merge(self, base: Self) -> Self {
        Self {
            ca: self.ca.merge(base.ca),
            certificate: self.certificate.merge(base.certificate),
            keystore: self.keystore.merge(base.keystore),
            keystore_default: self.keystore_default.merge(base.keystore_default),
            roles: self.roles.merge(base.roles),
            tickets: self.tickets.merge(base.tickets),
            limits: self.limits.merge(base.limits),
            crl: self.crl.merge(base.crl),
            ocsp: self.ocsp.merge(base.ocsp),
            storage: self.storage.merge(base.storage),
            renewal: self.renewal.merge(base.renewal),
            urls: self.urls.or(base.urls),
        }
    }
}

/// `[ca]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCa {
    pub root_validity_days: Option<i64>,
    pub issuer_validity_days: Option<i64>,
    pub ocsp_responder_validity_days: Option<i64>,
    pub service_cert_validity_days: Option<i64>,
}
merge_plain!(RawCa {
    root_validity_days,
    issuer_validity_days,
    ocsp_responder_validity_days,
    service_cert_validity_days,
});

/// `[certificate]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub default_profile: Option<String>,
    pub profiles: Option<BTreeMap<String, RawCertProfile>>,
}

impl Merge for RawCertificate {
    fn merge(self, base: Self) -> Self {
        Self {
            default_profile: self.default_profile.or(base.default_profile),
            profiles: self.profiles.merge(base.profiles),
        }
    }
}

/// `[certificate.profiles.<name>]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertProfile {
    pub key: Option<String>,
    pub validity_days: Option<i64>,
    pub key_usage: Option<Vec<String>>,
    pub extended_key_usage: Option<Vec<String>>,
    pub subject: Option<RawSubject>,
}

impl Merge for RawCertProfile {
    fn merge(self, base: Self) -> Self {
        Self {
            key: self.key.or(base.key),
            validity_days: self.validity_days.or(base.validity_days),
            key_usage: self.key_usage.or(base.key_usage),
            extended_key_usage: self.extended_key_usage.or(base.extended_key_usage),
            subject: self.subject.merge(base.subject),
        }
    }
}

/// `[certificate.profiles.<name>.subject]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSubject {
    pub country: Option<String>,
    pub organization: Option<String>,
    pub organizational_unit: Option<String>,
    pub common_name: Option<String>,
}
merge_plain!(RawSubject {
    country,
    organization,
    organizational_unit,
    common_name,
});

/// `[keystore.<name>]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKeystore {
    pub os: Option<String>,
    pub key_encryption: Option<String>,
    pub cert_encryption: Option<String>,
    pub mac: Option<String>,
    pub mac_salt_len: Option<i64>,
    pub iterations: Option<i64>,
    pub include_chain: Option<bool>,
    pub include_root: Option<bool>,
    pub mobileconfig: Option<bool>,
    pub file_extension: Option<String>,
}
merge_plain!(RawKeystore {
    os,
    key_encryption,
    cert_encryption,
    mac,
    mac_salt_len,
    iterations,
    include_chain,
    include_root,
    mobileconfig,
    file_extension,
});

/// `[tickets]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTickets {
    pub lifetime_days: Option<i64>,
    pub max_attempts: Option<i64>,
    pub rate_per_ticket_per_minute: Option<i64>,
    pub bundle_password: Option<String>,
}
merge_plain!(RawTickets {
    lifetime_days,
    max_attempts,
    rate_per_ticket_per_minute,
    bundle_password,
});

/// `[limits]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub max_string_len: Option<i64>,
    pub max_remark_len: Option<i64>,
    pub max_request_bytes: Option<i64>,
    pub max_crl_message_bytes: Option<i64>,
    pub max_page_size: Option<i64>,
    pub default_page_size: Option<i64>,
    pub request_timeout_secs: Option<i64>,
    pub max_connections: Option<i64>,
    pub max_concurrent_streams: Option<i64>,
    pub rate_per_caller_per_second: Option<i64>,
    pub rate_burst: Option<i64>,
}
merge_plain!(RawLimits {
    max_string_len,
    max_remark_len,
    max_request_bytes,
    max_crl_message_bytes,
    max_page_size,
    default_page_size,
    request_timeout_secs,
    max_connections,
    max_concurrent_streams,
    rate_per_caller_per_second,
    rate_burst,
});

/// `[crl]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCrl {
    pub next_update_hours: Option<i64>,
    pub republish_before_hours: Option<i64>,
    pub batch_window_ms: Option<i64>,
}
merge_plain!(RawCrl {
    next_update_hours,
    republish_before_hours,
    batch_window_ms,
});

/// `[ocsp]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOcsp {
    pub validity_hours: Option<i64>,
    pub resign_before_hours: Option<i64>,
    pub cache_entries: Option<i64>,
}
merge_plain!(RawOcsp {
    validity_hours,
    resign_before_hours,
    cache_entries,
});

/// `[storage]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStorage {
    pub low_water_mib: Option<i64>,
}
merge_plain!(RawStorage { low_water_mib });

/// `[renewal]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRenewal {
    pub supersede_after_secs: Option<i64>,
}
merge_plain!(RawRenewal {
    supersede_after_secs,
});

/// Parses a document into its raw form; errors name the field by its dotted path.
pub(crate) fn parse(input: &str) -> Result<RawPolicy, PolicyError> {
    let de = toml::Deserializer::parse(input).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|s| crate::error::line_column(input, s.start))
            .unwrap_or((1, 1));
        PolicyError::Syntax {
            line,
            column,
            message: e.message().trim().to_owned(),
        }
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| crate::error::from_toml(input, e))
}

/// The value of a key, or [`PolicyError::MissingField`].
pub(crate) fn require<T>(value: Option<T>, field: &str) -> Result<T, PolicyError> {
    value.ok_or_else(|| PolicyError::MissingField {
        field: field.to_owned(),
    })
}

/// A required integer within `min..=max`, converted to the type the public struct holds.
pub(crate) fn ranged<T: TryFrom<i64>>(
    value: Option<i64>,
    field: &str,
    min: i64,
    max: i64,
) -> Result<T, PolicyError> {
    let value = require(value, field)?;
    let out_of_range = || PolicyError::OutOfRange {
        field: field.to_owned(),
        value,
        min,
        max,
    };
    if !(min..=max).contains(&value) {
        return Err(out_of_range());
    }
    T::try_from(value).map_err(|_| out_of_range())
}

/// Checks a profile name: 1 to 64 of `a-z 0-9 - _`, starting with a letter or digit. Names
/// appear in dotted paths, request fields and file names, so nothing else is allowed.
pub(crate) fn check_name(name: &str, field: &str) -> Result<(), PolicyError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(PolicyError::invalid(
            field,
            format!(
                "profile name `{}` must be 1 to 64 of a-z, 0-9, `-`, `_`, starting with a letter or digit",
                name.escape_debug()
            ),
        ))
    }
}

/// Parses one value of an enumeration given as `(name, value)` pairs.
pub(crate) fn parse_enum<T: Copy>(
    value: &str,
    field: &str,
    table: &[(&str, T)],
) -> Result<T, PolicyError> {
    table
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, v)| *v)
        .ok_or_else(|| PolicyError::UnknownValue {
            field: field.to_owned(),
            value: value.to_owned(),
            expected: table
                .iter()
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}
