//! `[roles]`: which gRPC methods each service role may call (DESIGN §6, §10).
//!
//! A role comes from the service client certificate (SAN URI `urn:pki:role:<role>`). Each
//! role has a list of full gRPC method paths (`/pki.ca.v1.Enrollment/CreateTicket`) or
//! per-service wildcards (`/pki.ca.v1.Revocation/*`); every entry must name a method of the
//! v1 contract, so a typo is refused when the policy loads instead of silently denying.
//!
//! The health service (`grpc.health.v1.Health`) and server reflection
//! (`grpc.reflection.v1.ServerReflection`, and its `v1alpha` twin) are allowed for every
//! known role without being listed: any authenticated caller may probe liveness and discover
//! the API. A certificate whose role is not one of [`Role::ALL`] is allowed nothing.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::PolicyError;
use crate::raw::Replace;

/// The v1 contract: each gRPC service (full name) and its methods.
pub const V1_SERVICES: &[(&str, &[&str])] = &[
    (
        "pki.ca.v1.Enrollment",
        &["CreateTicket", "RedeemTicket", "GetTicket", "CancelTicket"],
    ),
    (
        "pki.ca.v1.Certificates",
        &["GetCertificate", "ListCertificates", "Revoke"],
    ),
    (
        "pki.ca.v1.Revocation",
        &["GetCaChain", "GetCrl", "WatchCrl", "CheckStatus", "Ocsp"],
    ),
    (
        "pki.ca.v1.Admin",
        &["ListIssuers", "PublishCrl", "VerifyAudit"],
    ),
];

/// Services every known role may call without listing them: health and reflection.
pub const ALWAYS_ALLOWED_SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// A service role, named by the client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The portal web service: tickets, certificates.
    Portal,
    /// The mutual-TLS gateway: CRLs, OCSP, the CA chain.
    Gateway,
    /// Operators: everything, including `Admin`.
    Ops,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Self::Portal, Self::Gateway, Self::Ops];

    /// The prefix of the SAN URI that names a role in a service client certificate.
    pub const URI_PREFIX: &'static str = "urn:pki:role:";

    /// The role's name (`portal`, `gateway`, `ops`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Portal => "portal",
            Self::Gateway => "gateway",
            Self::Ops => "ops",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Parses a SAN URI `urn:pki:role:<role>`.
    pub fn from_uri(uri: &str) -> Option<Self> {
        uri.strip_prefix(Self::URI_PREFIX).and_then(Self::parse)
    }

    /// The SAN URI naming this role (`urn:pki:role:portal`).
    pub fn uri(self) -> String {
        format!("{}{}", Self::URI_PREFIX, self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of a role's allow-list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MethodGrant {
    /// One method, by full path (`/pki.ca.v1.Enrollment/CreateTicket`).
    Method(String),
    /// Every method of a service, by full service name (`pki.ca.v1.Revocation`).
    Service(String),
}

impl MethodGrant {
    /// Parses and checks an entry against the v1 contract; `field` is named in errors.
    pub fn parse(field: &str, entry: &str) -> Result<Self, PolicyError> {
        let unknown = || PolicyError::UnknownMethod {
            field: field.to_owned(),
            path: entry.to_owned(),
        };
        let (service, method) = split_path(entry).ok_or_else(unknown)?;
        let methods = known_methods(service).ok_or_else(unknown)?;
        if method == "*" {
            return Ok(Self::Service(service.to_owned()));
        }
        // The always-allowed services have no method list: any method name of them is fine.
        if methods.is_empty() || methods.contains(&method) {
            Ok(Self::Method(entry.to_owned()))
        } else {
            Err(unknown())
        }
    }

    /// Whether this entry covers the method path.
    pub fn covers(&self, method_path: &str) -> bool {
        match self {
            Self::Method(path) => path == method_path,
            Self::Service(service) => {
                split_path(method_path).is_some_and(|(s, m)| s == service && m != "*")
            }
        }
    }
}

/// The methods of a known service (empty for the always-allowed ones), `None` if unknown.
fn known_methods(service: &str) -> Option<&'static [&'static str]> {
    V1_SERVICES
        .iter()
        .find(|(s, _)| *s == service)
        .map(|(_, m)| *m)
        .or_else(|| {
            ALWAYS_ALLOWED_SERVICES
                .contains(&service)
                .then_some(&[][..])
        })
}

/// Splits `/<service>/<method>`; the method is an identifier or `*`.
fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let ident = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    };
    (ident(service) && (method == "*" || (ident(method) && !method.contains('.'))))
        .then_some((service, method))
}

/// `[roles]`: the allow-list of every role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    /// Allowed methods per role (a role missing here is allowed only the always-allowed
    /// services).
    pub grants: BTreeMap<Role, Vec<MethodGrant>>,
}

impl Roles {
    pub(crate) fn from_raw(
        raw: BTreeMap<String, Replace<Vec<String>>>,
    ) -> Result<Self, PolicyError> {
        let mut grants = BTreeMap::new();
        for (name, Replace(entries)) in raw {
            let field = format!("roles.{name}");
            let role = Role::parse(&name).ok_or_else(|| PolicyError::UnknownRole {
                field: field.clone(),
                role: name.clone(),
            })?;
            let list = entries
                .iter()
                .enumerate()
                .map(|(i, entry)| MethodGrant::parse(&format!("{field}[{i}]"), entry))
                .collect::<Result<Vec<_>, _>>()?;
            grants.insert(role, list);
        }
        Ok(Self { grants })
    }

    /// Whether `role` (a role name) may call the method at `method_path`
    /// (`/pki.ca.v1.Enrollment/CreateTicket`). Unknown roles may call nothing; known roles may
    /// always call health and reflection.
    pub fn allows(&self, role: &str, method_path: &str) -> bool {
        let Some(role) = Role::parse(role) else {
            return false;
        };
        self.role_allows(role, method_path)
    }

    /// [`Roles::allows`] for a parsed role.
    pub fn role_allows(&self, role: Role, method_path: &str) -> bool {
        let Some((service, method)) = split_path(method_path) else {
            return false;
        };
        if method == "*" {
            return false;
        }
        if ALWAYS_ALLOWED_SERVICES.contains(&service) {
            return true;
        }
        self.grants
            .get(&role)
            .is_some_and(|list| list.iter().any(|g| g.covers(method_path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_parsing() {
        assert_eq!(
            MethodGrant::parse("f", "/pki.ca.v1.Revocation/*"),
            Ok(MethodGrant::Service("pki.ca.v1.Revocation".into()))
        );
        assert!(MethodGrant::parse("f", "/pki.ca.v1.Enrollment/CreateTicket").is_ok());
        for bad in [
            "",
            "/",
            "pki.ca.v1.Enrollment/CreateTicket",
            "/pki.ca.v1.Enrollment/CreateTickets",
            "/pki.ca.v1.Nope/*",
            "/pki.ca.v1.Enrollment/Create/Ticket",
            "/pki.ca.v1.Enrollment/",
            "/*",
        ] {
            let err = MethodGrant::parse("roles.portal[0]", bad);
            assert!(
                matches!(&err, Err(PolicyError::UnknownMethod { field, .. }) if field == "roles.portal[0]"),
                "{bad:?} gave {err:?}"
            );
        }
    }

    #[test]
    fn wildcard_covers_only_its_service() {
        let g = MethodGrant::Service("pki.ca.v1.Revocation".into());
        assert!(g.covers("/pki.ca.v1.Revocation/GetCrl"));
        assert!(!g.covers("/pki.ca.v1.Revocation/*"));
        assert!(!g.covers("/pki.ca.v1.RevocationX/GetCrl"));
        assert!(!g.covers("/pki.ca.v1.Admin/PublishCrl"));
    }

    #[test]
    fn role_uris() {
        assert_eq!(Role::from_uri("urn:pki:role:ops"), Some(Role::Ops));
        assert_eq!(Role::from_uri("urn:pki:role:root"), None);
        assert_eq!(Role::Gateway.uri(), "urn:pki:role:gateway");
    }
}
