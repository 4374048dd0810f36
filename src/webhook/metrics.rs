//! Counters the receiver exposes on `GET /metrics` (Prometheus text format).
//!
//! Keys are static strings, so counting a delivery allocates nothing on the hot path.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<Key, u64>>,
}

/// (metric, provider, label name, label value).
type Key = (&'static str, &'static str, &'static str, &'static str);

impl Metrics {
    /// A delivery refused before it was handled, by reason.
    pub fn refused(&self, provider: &str, reason: &'static str) {
        self.add((
            "fleetsync_webhook_refusals_total",
            label(provider),
            "reason",
            reason,
        ));
    }

    /// A delivery handled, by outcome (enqueued, ignored, duplicate, invalid, unavailable, …).
    pub fn handled(&self, provider: &str, outcome: &'static str) {
        self.add((
            "fleetsync_webhook_deliveries_total",
            label(provider),
            "outcome",
            outcome,
        ));
    }

    /// A push whose reading environment branches could not all be resolved (left to
    /// reconcile).
    pub fn unresolved_readers(&self, provider: &str) {
        self.add((
            "fleetsync_webhook_unresolved_readers_total",
            label(provider),
            "outcome",
            "left_to_reconcile",
        ));
    }

    fn add(&self, key: Key) {
        *self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default() += 1;
    }

    pub fn render(&self, extra: &[(String, u64)]) -> String {
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for ((metric, provider, name, value), count) in counters.iter() {
            let _ = writeln!(
                out,
                "{metric}{{provider=\"{provider}\",{name}=\"{value}\"}} {count}"
            );
        }
        for (key, value) in extra {
            let _ = writeln!(out, "{key} {value}");
        }
        out
    }
}

/// Provider names come from the URL path: keep only known ones, so a scan of random paths
/// cannot grow the label set.
fn label(provider: &str) -> &'static str {
    match provider {
        "github" => "github",
        "gitlab" => "gitlab",
        "gitea" => "gitea",
        "forgejo" => "forgejo",
        "gogs" => "gogs",
        "bitbucket" => "bitbucket",
        "generic" => "generic",
        _ => "unknown",
    }
}
