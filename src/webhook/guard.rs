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
use tokio::sync::Semaphore;

use tracing::info;

use super::metrics::Metrics;
use super::provider::{self, Provider};
use super::refuse;
use crate::config::WebhookConfig;

pub struct Guard {
    max_headers: usize,
    in_flight: Arc<Semaphore>,
    rate: Mutex<RateLimiter>,
    trust_forwarded_for: bool,
    pub(super) metrics: Arc<Metrics>,
}

impl Guard {
    pub fn new(config: &WebhookConfig, metrics: Arc<Metrics>) -> Self {
        Guard {
            max_headers: config.max_headers,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            rate: Mutex::new(RateLimiter::new(
                config.rate_per_second,
                config.rate_burst,
                RATE_TABLE_CAPACITY,
            )),
            trust_forwarded_for: config.trust_forwarded_for,
            metrics,
        }
    }

    fn client(&self, request: &Request) -> Option<IpAddr> {
        if self.trust_forwarded_for
            && let Some(last) = provider::header(request.headers(), "x-forwarded-for")
                .and_then(|v| v.rsplit(',').next())
            && let Ok(ip) = last.trim().parse()
        {
            return Some(ip);
        }
        request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
    }
}

/// Source IPs tracked at once; past that, the idlest are forgotten.
const RATE_TABLE_CAPACITY: usize = 65_536;

/// Middleware in front of the webhook routes, cheapest check first.
pub async fn enforce(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let provider = request
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let refused = |reason: &'static str, status: StatusCode, message: &str| {
        let delivery = Provider::from_path(&provider)
            .and_then(|p| p.delivery_id(request.headers()))
            .unwrap_or("-");
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
    if let Some(ip) = guard.client(&request) {
        let allowed = guard
            .rate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow(ip, Instant::now());
        if !allowed {
            return refused(
                "rate_limited",
                StatusCode::TOO_MANY_REQUESTS,
                "too many deliveries from this address; slow down",
            );
        }
    }
    let Ok(_permit) = guard.in_flight.clone().try_acquire_owned() else {
        return refused(
            "overloaded",
            StatusCode::SERVICE_UNAVAILABLE,
            "too many deliveries in flight; deliver again later",
        );
    };
    next.run(request).await
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

    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
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
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

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
