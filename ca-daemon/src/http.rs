//! Plain HTTP for standard clients (DESIGN §5, §10): CRLs at the CDP URL, OCSP (RFC 6960 POST,
//! RFC 5019 GET) at the AIA URL, the CA chain and issuer certificates, and a health check.
//!
//! Paths: `GET /crl/<issuer_id>.crl`, `GET /crl/active.crl`, `GET /crl/root.crl`,
//! `GET /crl/bundle.pem` (every live issuer's CRL and the root's, PEM, for nginx / HAProxy),
//! `POST /ocsp`, `GET /ocsp/<base64 request>`, `GET /ca/chain.pem`, `GET /ca/<issuer_id>.crt`,
//! `GET /healthz`.

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use time::OffsetDateTime;

use crate::authority::Authority;
use crate::error::CaError;
use crate::store::CrlRecord;

/// A CRL as a response body: shares the published record's DER (tens of MB at a million
/// revocations) instead of copying it per request.
struct SharedCrl(Arc<CrlRecord>);

impl AsRef<[u8]> for SharedCrl {
    fn as_ref(&self) -> &[u8] {
        &self.0.der
    }
}

/// The peer address (set by [`crate::http_serve`]; absent when the router is driven without
/// it, e.g. in tests).
type Peer = Option<Extension<ConnectInfo<std::net::SocketAddr>>>;

fn source(peer: &Peer) -> Option<std::net::IpAddr> {
    peer.as_ref().map(|Extension(ConnectInfo(a))| a.ip())
}

/// Most HTTP requests served at once.
const MAX_IN_FLIGHT: usize = 1024;

/// Largest OCSP request we accept (a request for a handful of certificates is < 1 KiB).
const MAX_OCSP_REQUEST: usize = 16 * 1024;

/// The HTTP router.
pub fn router(authority: Arc<Authority>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/crl/bundle.pem", get(crl_bundle))
        .route("/crl/{file}", get(crl))
        .route("/ocsp", post(ocsp_post))
        .route("/ocsp/{*req}", get(ocsp_get))
        .route("/ca/chain.pem", get(chain_pem))
        .route("/ca/{file}", get(ca_cert))
        .layer(DefaultBodyLimit::max(MAX_OCSP_REQUEST))
        // Bounded in-flight requests: a flood queues instead of exhausting memory or the
        // blocking pool (CRL reads and signing of nonce-bearing OCSP requests).
        .layer(tower::limit::ConcurrencyLimitLayer::new(MAX_IN_FLIGHT))
        .with_state(authority)
}

fn error_response(e: CaError) -> Response {
    let code = match &e {
        CaError::NotFound { .. } => StatusCode::NOT_FOUND,
        CaError::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
        CaError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        CaError::ResourceExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, e.to_string()).into_response()
}

/// 200 `ok` when healthy (plus a `warning:` line while the root CRL needs re-signing: the
/// daemon serves, an operator must act; see crate::root_crl); 503 with the reason after a failed
/// storage write or while the CRL guard holds a CRL back (CRLs and OCSP are still served from
/// memory meanwhile).
async fn healthz(State(a): State<Arc<Authority>>) -> Response {
    if crate::storage::is_failed() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "storage write failed: enrollment is not serving
",
        )
            .into_response();
    }
    if a.crl_guard_blocked() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "CRL publication held back: the store lacks a published revocation
",
        )
            .into_response();
    }
    match a.root_crl_warning().await {
        Some(w) => format!(
            "ok
warning: {w}
"
        )
        .into_response(),
        _ => "ok
"
        .into_response(),
    }
}

fn http_date(t: OffsetDateTime) -> Option<HeaderValue> {
    let f = time::format_description::well_known::Rfc2822;
    // RFC 9110 IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
    let s = t.to_offset(time::UtcOffset::UTC).format(&f).ok()?;
    HeaderValue::from_str(&s.replace("+0000", "GMT")).ok()
}

fn crl_headers(cache_control: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pkix-crl"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    h
}

async fn crl(State(a): State<Arc<Authority>>, Path(file): Path<String>) -> Response {
    let Some(id) = file.strip_suffix(".crl") else {
        return (StatusCode::NOT_FOUND, "no such CRL\n").into_response();
    };
    if id == "root" {
        return match a.root_crl() {
            // Signed only when the root key is unsealed (init, rotation): rarely changes.
            Some(der) => (crl_headers("public, max-age=3600"), der).into_response(),
            None => (StatusCode::NOT_FOUND, "no root CRL published\n").into_response(),
        };
    }
    match a.crl(id).await {
        Ok(c) => {
            // A fresh CRL can appear at any revocation; caches should revalidate soon.
            let mut h = crl_headers("public, max-age=60, must-revalidate");
            if let Some(v) = http_date(c.this_update) {
                h.insert(header::LAST_MODIFIED, v);
            }
            if let Some(v) = http_date(c.next_update) {
                h.insert(header::EXPIRES, v);
            }
            if let Ok(v) = HeaderValue::from_str(&format!("\"{}-{}\"", c.issuer_id, c.number)) {
                h.insert(header::ETAG, v);
            }
            (h, Bytes::from_owner(SharedCrl(c))).into_response()
        }
        Err(e) => error_response(e),
    }
}

/// RFC 5019 §6.2 caching headers for a successful response; `no-store` otherwise: error
/// responses, POSTs, and any answer to a request with a nonce (it echoes that nonce, so a
/// cache must never hand it to anyone else).
fn ocsp_response(answer: crate::ocsp::OcspAnswer, cacheable: bool) -> Response {
    let cacheable = cacheable && !answer.nonce;
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/ocsp-response"),
    );
    match (cacheable, answer.produced_at, answer.next_update) {
        (true, Some(produced), Some(next)) => {
            let now = OffsetDateTime::now_utc();
            let max_age = (next - now).whole_seconds().max(0);
            if let Ok(v) = HeaderValue::from_str(&format!(
                "max-age={max_age}, public, no-transform, must-revalidate"
            )) {
                h.insert(header::CACHE_CONTROL, v);
            }
            if let Some(v) = http_date(produced) {
                h.insert(header::LAST_MODIFIED, v);
            }
            if let Some(v) = http_date(next) {
                h.insert(header::EXPIRES, v);
            }
        }
        _ => {
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
    }
    // The cached DER is shared, not copied, into the response body.
    (h, Bytes::from_owner(answer.der)).into_response()
}

async fn ocsp_post(State(a): State<Arc<Authority>>, peer: Peer, body: Bytes) -> Response {
    ocsp_response(a.ocsp(&body, source(&peer)).await, false)
}

async fn ocsp_get(
    State(a): State<Arc<Authority>>,
    peer: Peer,
    Path(req): Path<String>,
) -> Response {
    match crate::ocsp::decode_get_path(&req) {
        Ok(der) => ocsp_response(a.ocsp(&der, source(&peer)).await, true),
        // Not base64 at all: still answer in OCSP terms (malformedRequest).
        Err(_) => ocsp_response(a.ocsp(&[], source(&peer)).await, false),
    }
}

async fn chain_pem(State(a): State<Arc<Authority>>) -> Response {
    match a.ca_chain().await {
        Ok(chain) => {
            let body: String = chain
                .iter()
                .map(|d| crate::pki::pem_encode("CERTIFICATE", d))
                .collect();
            (
                [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
                body,
            )
                .into_response()
        }
        Err(e) => error_response(e),
    }
}

async fn ca_cert(State(a): State<Arc<Authority>>, Path(file): Path<String>) -> Response {
    let Some(id) = file.strip_suffix(".crt") else {
        return (StatusCode::NOT_FOUND, "no such certificate\n").into_response();
    };
    match a.issuer_cert(id) {
        Some(der) => ([(header::CONTENT_TYPE, "application/pkix-cert")], der).into_response(),
        None => (StatusCode::NOT_FOUND, "no such issuer\n").into_response(),
    }
}

/// `GET /crl/bundle.pem`: every live issuer's CRL (active first) and the root's CRL, PEM, as
/// nginx `ssl_crl` and HAProxy `crl-file` read them (docs/gateways.md). Revalidated like a
/// CRL (a revocation can change it at any time); `If-None-Match` with the current ETag gets
/// 304.
async fn crl_bundle(State(a): State<Arc<Authority>>, req_headers: HeaderMap) -> Response {
    let bundle = match a.crl_bundle().await {
        Ok(b) => b,
        Err(e) => return error_response(e),
    };
    let mut h = HeaderMap::new();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60, must-revalidate"),
    );
    let etag = bundle.etag();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Some(v) = bundle.last_modified().and_then(http_date) {
        h.insert(header::LAST_MODIFIED, v);
    }
    if let Some(v) = bundle.expires().and_then(http_date) {
        h.insert(header::EXPIRES, v);
    }
    let not_modified = req_headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == etag || t.trim() == "*");
    if not_modified {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-pem-file"),
    );
    (h, bundle.pem).into_response()
}
