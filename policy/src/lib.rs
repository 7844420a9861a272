//! Pure policy engine of the care-network PKI.
//!
//! No I/O, no async runtime, no keys: this crate turns a TOML policy document into validated
//! types, and holds the domain vocabulary ([`domain`]) every other crate speaks.
//!
//! Like step-ca's `policy` engine, it is a pure function from a document to typed rules with
//! typed errors ([`PolicyError`], naming the offending key by its dotted path); the daemon
//! adapts it at the edge. The built-in defaults are the documented file
//! [`DEFAULT_POLICY_TOML`]; [`Policy::from_toml_str`] merges a deployment's document over it
//! (see that file's header for the merge rules) and validates the result:
//!
//! ```
//! use pki_policy::{Policy, domain::TargetOs};
//!
//! let policy = Policy::from_toml_str("[keystore.windows]\niterations = 20000\n")?;
//! assert_eq!(policy.keystore_for(TargetOs::Windows, None)?.iterations, 20000);
//! assert!(policy.role_allows("gateway", "/pki.ca.v1.Revocation/GetCrl"));
//! assert!(!policy.role_allows("gateway", "/pki.ca.v1.Admin/PublishCrl"));
//! # Ok::<(), pki_policy::PolicyError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::sync::LazyLock;

pub mod domain;
mod error;
pub mod keystore;
mod limits;
mod profile;
mod raw;
pub mod roles;
mod sections;
mod subject;

pub use error::PolicyError;
pub use keystore::{BagEncryption, KeystoreProfile, MacAlgorithm};
pub use limits::{FieldError, FieldProblem, Limits};
pub use profile::{CertProfile, CertificatePolicy, ExtKeyUsage, KeyType, KeyUsage};
pub use roles::{MethodGrant, Role, Roles};
pub use sections::{
    BundlePassword, CaPolicy, CrlPolicy, MAX_VALIDITY_DAYS, OcspPolicy, RenewalPolicy,
    StoragePolicy, TicketPolicy,
};
pub use subject::{Placeholder, Subject, SubjectTemplate, Template, X520_UB_NAME};

use domain::TargetOs;
use raw::{Merge, RawPolicy, Replace, require};

/// The documented default policy (`policy/default-policy.toml`), compiled in.
pub const DEFAULT_POLICY_TOML: &str = include_str!("../default-policy.toml");

/// The default document in raw form, the base every document is merged over.
static BUILTIN_RAW: LazyLock<RawPolicy> = LazyLock::new(|| {
    // Invariant: DEFAULT_POLICY_TOML is a constant compiled into the crate and the unit test
    // `default_policy_parses` parses (and validates) it, so this cannot fail at run time.
    raw::parse(DEFAULT_POLICY_TOML).expect("built-in default-policy.toml parses")
});

/// The validated default policy.
static BUILTIN: LazyLock<Policy> = LazyLock::new(|| {
    // Invariant: see BUILTIN_RAW; the same test also validates it.
    Policy::from_raw(BUILTIN_RAW.clone()).expect("built-in default-policy.toml is valid")
});

/// A validated policy. Built by [`Policy::from_toml_str`] or [`Policy::default_policy`];
/// the fields are public to read (building one by hand skips validation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `[ca]`
    pub ca: CaPolicy,
    /// `[certificate]`
    pub certificate: CertificatePolicy,
    /// `[keystore.<name>]`: every keystore profile, by name.
    pub keystore: BTreeMap<String, KeystoreProfile>,
    /// `[keystore_default]`: the profile name used for each OS (every OS has one).
    pub keystore_default: BTreeMap<TargetOs, String>,
    /// `[roles]`
    pub roles: Roles,
    /// `[tickets]`
    pub tickets: TicketPolicy,
    /// `[limits]`
    pub limits: Limits,
    /// `[crl]`
    pub crl: CrlPolicy,
    /// `[ocsp]`
    pub ocsp: OcspPolicy,
    /// `[storage]`
    pub storage: StoragePolicy,
    /// `[renewal]`
    pub renewal: RenewalPolicy,
}

impl Default for Policy {
    fn default() -> Self {
        Self::default_policy()
    }
}

impl Policy {
    /// The built-in policy: [`DEFAULT_POLICY_TOML`], validated.
    pub fn default_policy() -> Policy {
        BUILTIN.clone()
    }

    /// Parses a policy document, merges it over the built-in defaults and validates it.
    ///
    /// Unknown keys, wrong types, out-of-range values and contradictions are refused with a
    /// [`PolicyError`] naming the key by its dotted path. An empty document gives
    /// [`Policy::default_policy`].
    pub fn from_toml_str(input: &str) -> Result<Policy, PolicyError> {
        let user = raw::parse(input)?;
        Self::from_raw(user.merge(BUILTIN_RAW.clone()))
    }

    fn from_raw(raw: RawPolicy) -> Result<Policy, PolicyError> {
        let ca = CaPolicy::from_raw(require(raw.ca, "ca")?)?;
        let certificate =
            CertificatePolicy::from_raw(require(raw.certificate, "certificate")?, &ca)?;

        let mut keystore = BTreeMap::new();
        for (name, raw_profile) in require(raw.keystore, "keystore")? {
            let profile = KeystoreProfile::from_raw(&name, raw_profile)?;
            keystore.insert(name, profile);
        }

        let mut keystore_default = BTreeMap::new();
        for (os_name, Replace(profile)) in require(raw.keystore_default, "keystore_default")? {
            let field = format!("keystore_default.{os_name}");
            let os = TargetOs::parse(&os_name).ok_or_else(|| PolicyError::UnknownOs {
                field: field.clone(),
                value: os_name.clone(),
            })?;
            check_profile_for(&keystore, os, &profile, &field)?;
            keystore_default.insert(os, profile);
        }
        if let Some(os) = TargetOs::ALL
            .into_iter()
            .find(|os| !keystore_default.contains_key(os))
        {
            return Err(PolicyError::MissingField {
                field: format!("keystore_default.{os}"),
            });
        }

        let roles = Roles::from_raw(require(raw.roles, "roles")?)?;
        let tickets = TicketPolicy::from_raw(require(raw.tickets, "tickets")?)?;
        let limits = Limits::from_raw(require(raw.limits, "limits")?)?;
        let crl = CrlPolicy::from_raw(require(raw.crl, "crl")?)?;
        let ocsp = OcspPolicy::from_raw(require(raw.ocsp, "ocsp")?, &ca)?;
        let storage = StoragePolicy::from_raw(require(raw.storage, "storage")?)?;
        let renewal = RenewalPolicy::from_raw(require(raw.renewal, "renewal")?)?;
        if raw.urls.is_some() {
            return Err(PolicyError::invalid(
                "urls",
                "[urls] was removed: the URLs in certificates derive from the base fixed at \
                 `ca-daemon init --url-base` (recorded in keys/pki.toml); delete the section",
            ));
        }
        Ok(Policy {
            ca,
            certificate,
            keystore,
            keystore_default,
            roles,
            tickets,
            limits,
            crl,
            ocsp,
            storage,
            renewal,
        })
    }

    /// The keystore profile for a bundle: the one named (`RedeemTicketRequest.keystore_profile`),
    /// or the OS's default when `name` is `None` or empty. A named profile must exist and be
    /// for `os`; errors name the request field `keystore_profile`.
    pub fn keystore_for(
        &self,
        os: TargetOs,
        name: Option<&str>,
    ) -> Result<&KeystoreProfile, PolicyError> {
        match name.filter(|n| !n.is_empty()) {
            Some(name) => check_profile_for(&self.keystore, os, name, "keystore_profile"),
            None => {
                let name =
                    self.keystore_default
                        .get(&os)
                        .ok_or_else(|| PolicyError::MissingField {
                            field: format!("keystore_default.{os}"),
                        })?;
                check_profile_for(&self.keystore, os, name, &format!("keystore_default.{os}"))
            }
        }
    }

    /// The certificate profile for a ticket: the one named (`CreateTicketRequest.profile`), or
    /// the default profile when `name` is `None` or empty. Errors name the request field
    /// `profile`.
    pub fn cert_profile(&self, name: Option<&str>) -> Result<&CertProfile, PolicyError> {
        let name = name
            .filter(|n| !n.is_empty())
            .unwrap_or(&self.certificate.default_profile);
        self.certificate
            .profiles
            .get(name)
            .ok_or_else(|| PolicyError::UnknownProfile {
                field: "profile".into(),
                name: name.to_owned(),
            })
    }

    /// Whether `role` may call the gRPC method at `method_path`
    /// (`/pki.ca.v1.Enrollment/CreateTicket`). Health and reflection are allowed for every
    /// known role; an unknown role is allowed nothing. See [`Roles::allows`].
    pub fn role_allows(&self, role: &str, method_path: &str) -> bool {
        self.roles.allows(role, method_path)
    }
}

/// The keystore profile `name`, checked to exist and to be for `os`.
fn check_profile_for<'a>(
    keystore: &'a BTreeMap<String, KeystoreProfile>,
    os: TargetOs,
    name: &str,
    field: &str,
) -> Result<&'a KeystoreProfile, PolicyError> {
    let profile = keystore
        .get(name)
        .ok_or_else(|| PolicyError::UnknownProfile {
            field: field.to_owned(),
            name: name.to_owned(),
        })?;
    if profile.os != os {
        return Err(PolicyError::ProfileOsMismatch {
            field: field.to_owned(),
            profile: name.to_owned(),
            profile_os: profile.os.to_string(),
            os: os.to_string(),
        });
    }
    Ok(profile)
}

#[cfg(test)]
mod tests;
