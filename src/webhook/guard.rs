//! The receiver's self-defence: header count, deliveries in flight, a per-source-IP rate, and
//! the memory of recent delivery ids. All bounded; every refusal has its own status code.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use tracing::info;

use super::metrics::Metrics;
use super::provider::{self, Provider};
use super::refuse;
use crate::config::WebhookConfig;

pub struct Guard {
    max_headers: usize,
    max_body: usize,
    body_timeout: Duration,
    /// Bodies not yet verified, in KiB, over all clients.
    unverified: Arc<Semaphore>,
    in_flight: Arc<Semaphore>,
    /// Verifications at once for clients whose failures used up their rate: few, so a flood
    /// costs little, but never none, so a real delivery from a flooded address gets through.
    probation: Arc<Semaphore>,
    rate: Mutex<RateLimiter>,
    trust_forwarded_for: bool,
    pub(super) metrics: Arc<Metrics>,
}

const PROBATION: usize = 4;

impl Guard {
    pub fn new(config: &WebhookConfig, max_body: usize, metrics: Arc<Metrics>) -> Self {
        Guard {
            max_headers: config.max_headers,
            max_body,
            body_timeout: config.body_timeout,
            unverified: Arc::new(Semaphore::new(kib(config.unverified_body_bytes).max(1))),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            probation: Arc::new(Semaphore::new(PROBATION)),
            rate: Mutex::new(RateLimiter::new(
                config.rate_per_second,
                config.rate_burst,
                RATE_TABLE_CAPACITY,
            )),
            trust_forwarded_for: config.trust_forwarded_for,
            metrics,
        }
    }

    /// Whom the rate is kept for: the last X-Forwarded-For hop behind a load balancer (the one
    /// it appended), else the peer; an IPv6 client by its /64, what one host is given.
    fn client(&self, request: &Request) -> Option<IpAddr> {
        let forwarded = self
            .trust_forwarded_for
            .then(|| provider::header(request.headers(), "x-forwarded-for"))
            .flatten()
            .and_then(|v| v.rsplit(',').next())
            .and_then(|last| parse_hop(last.trim()));
        let ip = forwarded.or_else(|| {
            request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
        })?;
        Some(match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
            },
            v4 => v4,
        })
    }
}

/// An X-Forwarded-For hop: an address, or an address with a port (`1.2.3.4:5678`, `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024)
}

/// Source IPs tracked at once; past that, the idlest are forgotten.
const RATE_TABLE_CAPACITY: usize = 65_536;

/// Middleware in front of the webhook routes, cheapest check first. The body is read here, within
/// a time and a memory budget, before a delivery takes one of the in-flight places: a client that
/// stalls holds nothing real deliveries need. The rate is spent only by deliveries that fail
/// verification: a Git host's deliveries never spend it, whatever else comes from its address.
pub async fn enforce(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    // `/webhooks/{provider}` or `/webhooks/{provider}/{repo}`.
    let provider = request
        .uri()
        .path()
        .trim_start_matches("/webhooks/")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let delivery = Provider::from_path(&provider)
        .and_then(|p| p.delivery_id(request.headers()))
        .unwrap_or("-")
        .to_owned();
    let refused = |reason: &'static str, status: StatusCode, message: &str| {
        info!(message = "Delivery refused.", %provider, %delivery, %reason);
        guard.metrics.refused(&provider, reason);
        refuse(status, message)
    };
    if request.headers().len() > guard.max_headers {
        return refused(
            "too_many_headers",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too many request headers",
        );
    }
    let client = guard.client(&request);
    let rate = || guard.rate.lock().unwrap_or_else(|p| p.into_inner());
    let over_rate = client.is_some_and(|ip| !rate().has_token(ip, Instant::now()));
    let _probation = if over_rate {
        match guard.probation.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                return refused(
                    "rate_limited",
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed deliveries from this address; slow down",
                );
            }
        }
    } else {
        None
    };

    let (parts, body) = request.into_parts();
    let read = read_body(body, guard.max_body, &guard.unverified);
    let (bytes, _held) = match tokio::time::timeout(guard.body_timeout, read).await {
        Ok(Ok(read)) => read,
        Ok(Err(BodyRefusal::TooLarge)) => {
            return refused(
                "too_large",
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "the body is larger than maxBodyBytes ({} bytes); the Git host will not deliver it again: raise maxBodyBytes and redeliver it",
                    guard.max_body
                ),
            );
        }
        Ok(Err(BodyRefusal::Budget)) => {
            return refused(
                "overloaded",
                StatusCode::SERVICE_UNAVAILABLE,
                "too many bodies being received; deliver again later",
            );
        }
        Ok(Err(BodyRefusal::Unreadable)) => {
            return refused(
                "unreadable_body",
                StatusCode::BAD_REQUEST,
                "the body could not be read",
            );
        }
        Err(_) => {
            return refused(
                "body_timeout",
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive in time",
            );
        }
    };
    let Ok(_permit) = guard.in_flight.clone().try_acquire_owned() else {
        return refused(
            "overloaded",
            StatusCode::SERVICE_UNAVAILABLE,
            "too many deliveries in flight; deliver again later",
        );
    };
    let response = next
        .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await;
    // A repo name that is not watched costs the same as a wrong signature: the routes must not
    // let an anonymous client list the watched repos for free.
    let failed = response.status() == StatusCode::UNAUTHORIZED
        || response.extensions().get::<UnknownRepo>().is_some();
    if failed && let Some(ip) = client {
        rate().spend(ip, Instant::now());
        if over_rate {
            // Counted as refused by the handler already.
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed deliveries from this address; slow down",
            );
        }
    }
    response
}

enum BodyRefusal {
    TooLarge,
    Budget,
    Unreadable,
}

/// The whole body, its bytes held against the budget of unverified bodies as they arrive (the
/// permits are returned with it: they last as long as the request).
async fn read_body(
    body: axum::body::Body,
    max: usize,
    budget: &Arc<Semaphore>,
) -> Result<(Bytes, Vec<OwnedSemaphorePermit>), BodyRefusal> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut bytes = BytesMut::new();
    let mut held = Vec::new();
    let mut held_kib = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyRefusal::Unreadable)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if bytes.len() + data.len() > max {
            return Err(BodyRefusal::TooLarge);
        }
        bytes.extend_from_slice(&data);
        let more = kib(bytes.len()).saturating_sub(held_kib);
        if more > 0 {
            let permit = budget
                .clone()
                .try_acquire_many_owned(u32::try_from(more).unwrap_or(u32::MAX))
                .map_err(|_| BodyRefusal::Budget)?;
            held_kib += more;
            held.push(permit);
        }
    }
    Ok((bytes.freeze(), held))
}

/// Token buckets per source IP, in a table of bounded size.
struct RateLimiter {
    per_second: f64,
    burst: f64,
    capacity: usize,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    fn new(per_second: f64, burst: f64, capacity: usize) -> Self {
        RateLimiter {
            per_second,
            burst: burst.max(1.0),
            capacity,
            buckets: HashMap::new(),
        }
    }

    /// Refills `ip`'s bucket to `now`; its tokens.
    fn refill(&mut self, ip: IpAddr, now: Instant) -> &mut f64 {
        if self.buckets.len() >= self.capacity && !self.buckets.contains_key(&ip) {
            // A full bucket is as good as a forgotten one; drop those, then anything idle.
            let refill =
                Duration::try_from_secs_f64(self.burst / self.per_second).unwrap_or(Duration::MAX);
            self.buckets
                .retain(|_, (_, last)| now.duration_since(*last) < refill);
            if self.buckets.len() >= self.capacity {
                self.buckets.clear();
            }
        }
        let (tokens, last) = self.buckets.entry(ip).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        tokens
    }

    fn has_token(&mut self, ip: IpAddr, now: Instant) -> bool {
        *self.refill(ip, now) >= 1.0
    }

    fn spend(&mut self, ip: IpAddr, now: Instant) {
        let tokens = self.refill(ip, now);
        *tokens = (*tokens - 1.0).max(0.0);
    }

    #[cfg(test)]
    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let allowed = self.has_token(ip, now);
        if allowed {
            self.spend(ip, now);
        }
        allowed
    }
}

/// Marks the answer to a delivery on the route of a repo that is not watched.
#[derive(Clone, Copy)]
pub struct UnknownRepo;

/// Delivery ids seen recently, oldest first; bounded in count and age.
pub struct Replays {
    window: Duration,
    capacity: usize,
    seen: Mutex<Seen>,
}

/// When each id was last seen, and the same in arrival order for expiry.
type Seen = (HashMap<String, Instant>, VecDeque<(Instant, String)>);

impl Replays {
    pub fn new(window: Duration, capacity: usize) -> Self {
        Replays {
            window,
            capacity: capacity.max(1),
            seen: Mutex::new(Default::default()),
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.0.get(key).is_some_and(|at| at.elapsed() < self.window)
    }

    /// Remembers a delivery that was handled (never one that failed: its redelivery must run).
    pub fn remember(&self, key: String, now: Instant) {
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *guard;
        while let Some((at, _)) = order.front()
            && (now.duration_since(*at) >= self.window || order.len() >= self.capacity)
        {
            let (at, old) = order.pop_front().expect("front exists");
            if map.get(&old) == Some(&at) {
                map.remove(&old);
            }
        }
        map.insert(key.clone(), now);
        order.push_back((now, key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_allows_the_burst_then_the_rate() {
        let mut limiter = RateLimiter::new(10.0, 3.0, 100);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        assert!((0..3).all(|_| limiter.allow(ip, t0)));
        assert!(!limiter.allow(ip, t0));
        assert!(limiter.allow(ip, t0 + Duration::from_millis(100)));
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(limiter.allow(other, t0), "each address has its own bucket");
    }

    #[test]
    fn forwarded_hops_may_carry_ports_and_ipv6_clients_are_kept_by_their_64() {
        assert_eq!(parse_hop("203.0.113.7:51234"), "203.0.113.7".parse().ok());
        assert_eq!(parse_hop("[2001:db8::1]:443"), "2001:db8::1".parse().ok());
        assert_eq!(parse_hop("2001:db8::1"), "2001:db8::1".parse().ok());
        assert_eq!(parse_hop("unknown"), None);
        let config = WebhookConfig {
            max_headers: 64,
            max_in_flight: 1,
            rate_per_second: 1.0,
            rate_burst: 1.0,
            trust_forwarded_for: true,
            replay_window: Duration::from_secs(60),
            replay_capacity: 10,
            timestamp_tolerance: Duration::from_secs(60),
            generic_signature_header: "x-fleetsync-signature".into(),
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            unverified_body_bytes: 1024,
        };
        let guard = Guard::new(&config, 1024, Arc::default());
        let from = |xff: &str| {
            let request = Request::builder()
                .header("x-forwarded-for", xff)
                .body(axum::body::Body::empty())
                .unwrap();
            guard.client(&request)
        };
        assert_eq!(
            from("198.51.100.1, 2001:db8:1:2:aaaa::1"),
            from("2001:db8:1:2:bbbb::9"),
            "one /64 is one client"
        );
        assert_ne!(from("2001:db8:1:2::1"), from("2001:db8:1:3::1"));
        assert_eq!(
            from("10.0.0.1, 203.0.113.7:443"),
            "203.0.113.7".parse().ok()
        );
    }

    #[test]
    fn rate_table_stays_bounded() {
        let mut limiter = RateLimiter::new(1.0, 1.0, 4);
        let t0 = Instant::now();
        for i in 0..100u8 {
            limiter.allow(IpAddr::from([10, 0, 0, i]), t0);
            assert!(limiter.buckets.len() <= 4);
        }
    }

    #[test]
    fn replays_are_remembered_within_window_and_capacity() {
        let replays = Replays::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        replays.remember("a".into(), t0);
        replays.remember("b".into(), t0);
        assert!(replays.contains("a") && replays.contains("b"));
        replays.remember("c".into(), t0);
        assert!(
            !replays.contains("a"),
            "the oldest is forgotten past capacity"
        );
        assert!(replays.contains("c"));
        assert_eq!(replays.seen.lock().unwrap().0.len(), 2);
    }
}
