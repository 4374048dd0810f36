//! Counters the receiver exposes on `GET /metrics` (Prometheus text format).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    /// A delivery refused before it was handled, by reason.
    pub fn refused(&self, provider: &str, reason: &str) {
        self.add(format!(
            "fleetsync_webhook_refusals_total{{provider=\"{}\",reason=\"{reason}\"}}",
            label(provider)
        ));
    }

    /// A delivery handled, by outcome (enqueued, ignored, duplicate, invalid, unavailable, …).
    pub fn handled(&self, provider: &str, outcome: &str) {
        self.add(format!(
            "fleetsync_webhook_deliveries_total{{provider=\"{}\",outcome=\"{outcome}\"}}",
            label(provider)
        ));
    }

    fn add(&self, key: String) {
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
        for (key, value) in counters
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .chain(extra.iter().map(|(k, v)| (k.as_str(), *v)))
        {
            let _ = writeln!(out, "{key} {value}");
        }
        out
    }
}

/// Provider names come from the URL path: keep only known ones, so a scan of random paths
/// cannot grow the label set.
fn label(provider: &str) -> &str {
    match provider {
        "github" | "gitlab" | "gitea" | "forgejo" | "gogs" | "bitbucket" | "generic" => provider,
        _ => "unknown",
    }
}
