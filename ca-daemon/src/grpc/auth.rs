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

/// tonic refuses a request message larger than `max_decoding_message_size` with OUT_OF_RANGE
/// ("decoded message length too large"); gRPC itself and DESIGN §6 call that
/// RESOURCE_EXHAUSTED, and clients retry on neither. The refusal happens before any handler, as
/// a trailers-only response, so its status is in the response headers. Nothing of ours returns
/// OUT_OF_RANGE, and the message is checked as well.
fn oversized_is_resource_exhausted(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers();
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    // grpc-message is percent-encoded (spaces as %20).
    let too_large = headers.get("grpc-message").is_some_and(|v| {
        v.to_str()
            .unwrap_or("")
            .replace("%20", " ")
            .contains("message length too large")
    });
    if out_of_range && too_large {
        response
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
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
        futures::future::MapOk<S::Future, fn(Self::Response) -> Self::Response>,
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
            Ok(()) => futures::future::Either::Right(futures::TryFutureExt::map_ok(
                self.inner.call(req),
                oversized_is_resource_exhausted as fn(Self::Response) -> Self::Response,
            )),
            Err(status) => {
                futures::future::Either::Left(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: &'static str, message: &'static str) -> http::Response<tonic::body::Body> {
        let mut r = http::Response::new(tonic::body::Body::empty());
        r.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static(status));
        r.headers_mut()
            .insert("grpc-message", http::HeaderValue::from_static(message));
        r
    }

    #[test]
    fn oversized_request_becomes_resource_exhausted_and_nothing_else_changes() {
        let r = oversized_is_resource_exhausted(response(
            "11",
            "Error,%20decoded%20message%20length%20too%20large:%20found%2070195%20bytes",
        ));
        assert_eq!(r.headers()["grpc-status"], "8");
        let r = oversized_is_resource_exhausted(response("11", "page%20out%20of%20range"));
        assert_eq!(r.headers()["grpc-status"], "11");
        let r = oversized_is_resource_exhausted(response("3", "message%20length%20too%20large"));
        assert_eq!(r.headers()["grpc-status"], "3");
    }
}
