//! Prometheus metrics (text exposition format) on `--metrics-listen`.
//!
//! One process-wide registry: the daemon is one process, and threading a registry through
//! every layer would add noise for no gain. Names follow Prometheus conventions
//! (`ca_` prefix, `_total` counters, `_seconds` histograms).

use std::borrow::Cow;
use std::sync::OnceLock;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set with one `outcome` / `status` / `issuer` / `method` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Label {
    /// The label value (a fixed set of outcomes: no allocation per count).
    pub value: Cow<'static, str>,
}

/// Per-issuer label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerLabel {
    /// Issuer id.
    pub issuer: String,
}

/// Per-method label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    /// gRPC method or HTTP route (HTTP routes are static: no allocation per request).
    pub method: Cow<'static, str>,
}

/// The metrics of the daemon.
pub struct Metrics {
    registry: Registry,
    /// Certificates issued.
    pub issuances: Counter,
    /// Redemptions by outcome (ok, bad_credentials, not_redeemable, error).
    pub redemptions: Family<Label, Counter>,
    /// Tickets created.
    pub tickets_created: Counter,
    /// Certificates revoked (newly).
    pub revocations: Counter,
    /// OCSP responses by status (good, revoked, unknown, malformed, unauthorized).
    pub ocsp: Family<Label, Counter>,
    /// Latest CRL number per issuer.
    pub crl_number: Family<IssuerLabel, Gauge>,
    /// thisUpdate of the latest CRL per issuer (unix seconds), for age alerts.
    pub crl_this_update: Family<IssuerLabel, Gauge>,
    /// Request latency per method.
    pub latency: Family<MethodLabel, Histogram>,
    /// Open connections on the plain HTTP port.
    pub http_connections: Gauge,
    /// HTTP connections refused or closed by a limit (connection_limit, timeout, stalled).
    pub http_refused: Family<Label, Counter>,
    /// gRPC connections refused before or at authentication, by reason.
    pub grpc_refused: Family<Label, Counter>,
    /// nextUpdate of the root's CRL (unix seconds).
    pub root_crl_next_update: Gauge,
    /// 1 from 30 days before the root's CRL runs out (and after), else 0.
    pub root_crl_expiring: Gauge,
    /// Free bytes on the store's file system.
    pub storage_free_bytes: Gauge,
    /// 1 while the shared (PostgreSQL) store answers, 0 while it does not (cluster nodes).
    pub store_reachable: Gauge,
    /// Size of the store's files, bytes.
    pub store_size_bytes: Gauge,
    /// Store writes that failed in the engine or file system (disk full, I/O error).
    pub storage_write_failures: Counter,
    /// CRL publications refused because they would drop an unexpired entry, per issuer.
    pub crl_guard_refusals: Family<IssuerLabel, Counter>,
    /// 1 while the CRL guard holds an issuer's CRL back (the last good one is served).
    pub crl_guard_blocked: Family<IssuerLabel, Gauge>,
    /// Certificates neither revoked nor renewed that expire within 30 days (updated by the
    /// scheduled maintenance, every 30 s).
    pub certificates_expiring_30d: Gauge,
}

fn build() -> Metrics {
    let mut registry = Registry::with_prefix("ca");
    let issuances = Counter::default();
    registry.register(
        "certificates_issued",
        "Certificates issued",
        issuances.clone(),
    );
    let redemptions = Family::<Label, Counter>::default();
    registry.register(
        "redemptions",
        "Ticket redemptions by outcome",
        redemptions.clone(),
    );
    let tickets_created = Counter::default();
    registry.register(
        "tickets_created",
        "Tickets created",
        tickets_created.clone(),
    );
    let revocations = Counter::default();
    registry.register("revocations", "Certificates revoked", revocations.clone());
    let ocsp = Family::<Label, Counter>::default();
    registry.register("ocsp_responses", "OCSP responses by status", ocsp.clone());
    let crl_number = Family::<IssuerLabel, Gauge>::default();
    registry.register(
        "crl_number",
        "Latest CRL number per issuer",
        crl_number.clone(),
    );
    let crl_this_update = Family::<IssuerLabel, Gauge>::default();
    registry.register(
        "crl_this_update_seconds",
        "thisUpdate of the latest CRL per issuer, unix time",
        crl_this_update.clone(),
    );
    let latency = Family::<MethodLabel, Histogram>::new_with_constructor(|| {
        Histogram::new(exponential_buckets(0.0005, 2.0, 16))
    });
    registry.register(
        "request_duration_seconds",
        "Request latency by method",
        latency.clone(),
    );
    let http_connections = Gauge::default();
    registry.register(
        "http_connections",
        "Open connections on the plain HTTP port",
        http_connections.clone(),
    );
    let http_refused = Family::<Label, Counter>::default();
    registry.register(
        "http_connections_refused",
        "HTTP connections refused or closed by a limit, by reason",
        http_refused.clone(),
    );
    let grpc_refused = Family::<Label, Counter>::default();
    registry.register(
        "grpc_connections_refused",
        "gRPC connections refused before or at authentication, by reason",
        grpc_refused.clone(),
    );
    let root_crl_next_update = Gauge::default();
    registry.register(
        "root_crl_next_update_seconds",
        "nextUpdate of the root CRL, unix time",
        root_crl_next_update.clone(),
    );
    let root_crl_expiring = Gauge::default();
    registry.register(
        "root_crl_expiring",
        "1 from 30 days before the root CRL runs out (re-sign it: ca-daemon crl root), else 0",
        root_crl_expiring.clone(),
    );
    let store_reachable = Gauge::default();
    registry.register(
        "store_reachable",
        "1 while the shared PostgreSQL store answers, 0 while it does not (cluster nodes only)",
        store_reachable.clone(),
    );
    let storage_free_bytes = Gauge::default();
    registry.register(
        "storage_free_bytes",
        "Free bytes on the store's file system",
        storage_free_bytes.clone(),
    );
    let store_size_bytes = Gauge::default();
    registry.register(
        "store_size_bytes",
        "Size of the store's files in bytes",
        store_size_bytes.clone(),
    );
    let storage_write_failures = Counter::default();
    registry.register(
        "storage_write_failures",
        "Store writes that failed in the engine or file system",
        storage_write_failures.clone(),
    );
    let crl_guard_refusals = Family::<IssuerLabel, Counter>::default();
    registry.register(
        "crl_guard_refusals",
        "CRL publications refused because they would drop an unexpired entry of the previous CRL",
        crl_guard_refusals.clone(),
    );
    let crl_guard_blocked = Family::<IssuerLabel, Gauge>::default();
    registry.register(
        "crl_guard_blocked",
        "1 while the CRL guard holds an issuer's CRL back",
        crl_guard_blocked.clone(),
    );
    let certificates_expiring_30d = Gauge::default();
    registry.register(
        "certificates_expiring_within_30_days",
        "Certificates neither revoked nor renewed whose notAfter lies within 30 days",
        certificates_expiring_30d.clone(),
    );
    Metrics {
        registry,
        http_connections,
        http_refused,
        grpc_refused,
        root_crl_next_update,
        root_crl_expiring,
        storage_free_bytes,
        store_reachable,
        store_size_bytes,
        storage_write_failures,
        crl_guard_refusals,
        crl_guard_blocked,
        certificates_expiring_30d,
        issuances,
        redemptions,
        tickets_created,
        revocations,
        ocsp,
        crl_number,
        crl_this_update,
        latency,
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(build)
}

/// Counts one outcome in a labelled counter family.
pub fn inc(family: &Family<Label, Counter>, value: &'static str) {
    family
        .get_or_create(&Label {
            value: Cow::Borrowed(value),
        })
        .inc();
}

/// Renders the registry in the Prometheus text format.
pub fn render() -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &metrics().registry).is_err() {
        out.clear();
    }
    out
}

/// The `/metrics` router.
pub fn router() -> Router {
    Router::new().route(
        "/metrics",
        get(|| async {
            (
                [(
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                render(),
            )
                .into_response()
        }),
    )
}

/// Tower layer recording request latency per path (gRPC method or HTTP route) into
/// `ca_request_duration_seconds`. HTTP paths are bucketed by their first segment so an
/// attacker cannot create unbounded label values (e.g. `/ocsp/<base64>` → `/ocsp`).
#[derive(Clone, Copy, Debug, Default)]
pub struct LatencyLayer;

impl<S> tower::Layer<S> for LatencyLayer {
    type Service = Latency<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Latency { inner }
    }
}

/// The service produced by [`LatencyLayer`].
#[derive(Clone, Debug)]
pub struct Latency<S> {
    inner: S,
}

fn route_label(path: &str) -> Cow<'static, str> {
    if path.starts_with("/pki.ca.v1.") || path.starts_with("/grpc.") {
        // gRPC method paths are a fixed set (unknown ones are answered UNIMPLEMENTED, and
        // bounded by the allow-list before they get here in practice).
        return Cow::Owned(path.chars().take(80).collect());
    }
    // The HTTP port answers OCSP at tens of thousands of requests a second: no allocation.
    Cow::Borrowed(match path.split('/').nth(1).unwrap_or("") {
        "crl" => "/crl",
        "ocsp" => "/ocsp",
        "ca" => "/ca",
        "healthz" => "/healthz",
        "metrics" => "/metrics",
        _ => "/other",
    })
}

impl<S, B> tower::Service<http::Request<B>> for Latency<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let label = MethodLabel {
            method: route_label(req.uri().path()),
        };
        let start = std::time::Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            metrics()
                .latency
                .get_or_create(&label)
                .observe(start.elapsed().as_secs_f64());
            r
        })
    }
}
