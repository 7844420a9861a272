//! Caller identity and the per-role allow-list.
//!
//! The role is the SAN URI `urn:pki:role:<role>` of the verified client certificate. A
//! connection whose certificate has no role is closed during accept and never reaches a
//! handler. The allow-list is enforced by a tower layer in front of every service, so no
//! handler can forget it; health and reflection are allowed for every authenticated role.

use std::sync::Arc;
use std::task::{Context, Poll};

use pki_policy::Policy;
use tonic::Status;
use x509_parser::prelude::*;

use crate::authority::Caller;

/// What the TLS layer learned about the peer; inserted into every request's extensions.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Remote address.
    pub remote: Option<std::net::SocketAddr>,
    /// Role from the client certificate.
    pub role: String,
    /// Subject CN of the client certificate.
    pub name: String,
}

impl PeerInfo {
    /// The caller for the authority.
    pub fn caller(&self) -> Caller {
        Caller {
            role: self.role.clone(),
            name: self.name.clone(),
        }
    }
}

/// Reads `(role, cn)` from a client certificate; `None` if it names no role.
pub fn role_from_cert(der: &[u8]) -> Option<(String, String)> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("")
        .to_string();
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|g| match g {
        GeneralName::URI(u) => u
            .strip_prefix("urn:pki:role:")
            .filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_lowercase()))
            .map(|r| (r.to_string(), cn.clone())),
        _ => None,
    })
}

/// Extracts the caller from request extensions (set by the TLS layer).
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<PeerInfo>()
        .map(PeerInfo::caller)
        .ok_or_else(|| Status::unauthenticated("no verified client certificate"))
}

/// Tower layer enforcing the policy's role → RPC allow-list.
#[derive(Clone)]
pub struct AuthzLayer {
    policy: Arc<Policy>,
    limits: Arc<crate::limits::RateLimits>,
}

impl AuthzLayer {
    /// A layer for this policy and these rate limits.
    pub fn new(policy: Arc<Policy>, limits: Arc<crate::limits::RateLimits>) -> Self {
        Self { policy, limits }
    }
}

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authz {
            inner,
            policy: self.policy.clone(),
            limits: self.limits.clone(),
        }
    }
}

/// The service produced by [`AuthzLayer`].
#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    policy: Arc<Policy>,
    limits: Arc<crate::limits::RateLimits>,
}

fn always_allowed(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

impl<S, B> tower::Service<http::Request<B>> for Authz<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        futures::future::Ready<Result<Self::Response, Self::Error>>,
        S::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let verdict = match req.extensions().get::<PeerInfo>() {
            None => Err(Status::unauthenticated("no verified client certificate")),
            Some(p)
                if !always_allowed(&path)
                    && !self.limits.allow_caller(&format!("{}:{}", p.role, p.name)) =>
            {
                tracing::warn!(role = %p.role, caller = %p.name, method = %path, "rate limit hit");
                Err(Status::resource_exhausted(
                    "request rate limit exceeded; slow down",
                ))
            }
            Some(p) if always_allowed(&path) || self.policy.role_allows(&p.role, &path) => Ok(()),
            Some(p) => {
                tracing::warn!(role = %p.role, caller = %p.name, method = %path, "permission denied");
                Err(Status::permission_denied(format!(
                    "role '{}' may not call {path}",
                    p.role
                )))
            }
        };
        match verdict {
            Ok(()) => futures::future::Either::Right(self.inner.call(req)),
            Err(status) => {
                futures::future::Either::Left(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}
