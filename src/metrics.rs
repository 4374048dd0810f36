//! What `serve` and `worker` expose on `GET /metrics`, in the OpenMetrics text format that
//! Prometheus scrapes.
//!
//! Each part of fleetsync owns its counters and histograms (the receiver its deliveries, a
//! mirror its fetches, the worker its jobs); a scrape gathers clones of them (they share their
//! values) into a registry made for that scrape, so nothing here is global and two receivers in
//! one test process count apart. Label values are fixed words or names from the server config,
//! never text from a request, so no client can grow the label set.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
pub use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;
pub use prometheus_client::registry::Registry;

/// A histogram per label set, all with the same buckets.
pub type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Buckets for work that takes from a few milliseconds (a fetch of nothing new, an API read)
/// to about a minute.
pub fn short_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// Buckets for jobs: from a second (unchanged) to the better part of an hour (a rollout that
/// waits for its dependencies, then for ECS's circuit breaker).
pub fn job_seconds() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 12))
}

/// The scrape's answer.
pub fn render(registry: &Registry) -> Response {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, registry) {
        tracing::warn!(message = "Cannot encode the metrics.", error = %e);
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// A router of one route, `GET /metrics`, answered from what `fill` registers.
pub fn router(fill: impl Fn(&mut Registry) + Clone + Send + Sync + 'static) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let fill = fill.clone();
            async move {
                let mut registry = Registry::default();
                fill(&mut registry);
                render(&registry)
            }
        }),
    )
}

/// One metric family whose series live in separate owners (one per mirror, say), labelled by
/// `label`: registered as one family, as OpenMetrics wants each name described once.
#[derive(Debug)]
pub struct Series<M> {
    pub name: &'static str,
    pub help: &'static str,
    pub label: &'static str,
    pub series: Vec<(String, M)>,
}

impl<M: EncodeMetric + std::fmt::Debug + Send + Sync + 'static>
    prometheus_client::collector::Collector for Series<M>
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some((_, first)) = self.series.first() else {
            return Ok(());
        };
        let mut family =
            encoder.encode_descriptor(self.name, self.help, None, first.metric_type())?;
        for (value, metric) in &self.series {
            metric.encode(family.encode_family(&[(self.label, value.as_str())])?)?;
        }
        Ok(())
    }
}

/// Requests by route (the route's pattern, never the requested path), method and status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

pub struct Http {
    requests: Family<HttpLabels, Counter>,
    seconds: Histograms<RouteLabels>,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            requests: Family::default(),
            seconds: Family::new_with_constructor(short_seconds),
        }
    }
}

impl Http {
    /// Counts every request that matched one of `router`'s routes; one that matched none
    /// (a scan of random paths) is left out, so the label set stays the routes'.
    pub fn track(self: &Arc<Self>, router: axum::Router) -> axum::Router {
        router.route_layer(axum::middleware::from_fn_with_state(self.clone(), track))
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "fleetsync_http_requests",
            "HTTP requests answered, by route, method and status",
            self.requests.clone(),
        );
        registry.register(
            "fleetsync_http_request_duration_seconds",
            "Time to answer an HTTP request, by route",
            self.seconds.clone(),
        );
    }
}

async fn track(State(http): State<Arc<Http>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    // Any token is a method to HTTP, and a 405 passes through here too.
    let method = match request.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    http.seconds
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    http.requests
        .get_or_create(&HttpLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
