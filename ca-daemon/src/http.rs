//! Plain HTTP for standard clients (DESIGN §5, §10): CRLs at the CDP URL, OCSP (RFC 6960 POST,
//! RFC 5019 GET) at the AIA URL, the CA chain and issuer certificates, and a health check.
//!
//! Paths: `GET /crl/<issuer_id>.crl`, `GET /crl/active.crl`, `GET /crl/root.crl`,
//! `POST /ocsp`, `GET /ocsp/<base64 request>`, `GET /ca/chain.pem`, `GET /ca/<issuer_id>.crt`,
//! `GET /healthz`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use time::OffsetDateTime;

use crate::authority::Authority;
use crate::error::CaError;

/// Most HTTP requests served at once.
const MAX_IN_FLIGHT: usize = 1024;

/// Largest OCSP request we accept (a request for a handful of certificates is < 1 KiB).
const MAX_OCSP_REQUEST: usize = 16 * 1024;

/// The HTTP router.
pub fn router(authority: Arc<Authority>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
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

/// 200 `ok` when healthy; 503 with the reason after a failed storage write or while the CRL
/// guard holds a CRL back (CRLs and OCSP are still served from memory meanwhile).
async fn healthz(State(a): State<Arc<Authority>>) -> Response {
    if crate::storage::is_failed() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "storage write failed: enrollment is not serving\n",
        )
            .into_response();
    }
    if a.crl_guard_blocked() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "CRL publication held back: the store lacks a published revocation\n",
        )
            .into_response();
    }
    "ok\n".into_response()
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
            (h, c.der.clone()).into_response()
        }
        Err(e) => error_response(e),
    }
}

/// RFC 5019 §6.2 caching headers for a successful response; `no-store` otherwise (error
/// responses and nonce-bearing POSTs are not worth caching).
fn ocsp_response(answer: crate::ocsp::OcspAnswer, cacheable: bool) -> Response {
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

async fn ocsp_post(State(a): State<Arc<Authority>>, body: Bytes) -> Response {
    ocsp_response(a.ocsp(&body), false)
}

async fn ocsp_get(State(a): State<Arc<Authority>>, Path(req): Path<String>) -> Response {
    match crate::ocsp::decode_get_path(&req) {
        Ok(der) => ocsp_response(a.ocsp(&der), true),
        // Not base64 at all: still answer in OCSP terms (malformedRequest).
        Err(_) => ocsp_response(a.ocsp(&[]), false),
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
