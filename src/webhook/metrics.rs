//! The receiver's counters: deliveries by how they ended, refusals by reason.

use crate::metrics::{Counter, EncodeLabelSet, Family, Registry};

#[derive(Default)]
pub struct Metrics {
    refusals: Family<Reason, Counter>,
    deliveries: Family<Handled, Counter>,
    unresolved_readers: Family<Handled, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    provider: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Handled {
    provider: &'static str,
    outcome: &'static str,
}

impl Metrics {
    /// A delivery refused before it was handled, by reason.
    pub fn refused(&self, provider: &str, reason: &'static str) {
        let labels = Reason {
            provider: label(provider),
            reason,
        };
        self.refusals.get_or_create(&labels).inc();
    }

    /// A delivery handled, by outcome (enqueued, ignored, duplicate, invalid, unavailable, …).
    pub fn handled(&self, provider: &str, outcome: &'static str) {
        let labels = Handled {
            provider: label(provider),
            outcome,
        };
        self.deliveries.get_or_create(&labels).inc();
    }

    /// A push whose reading environment branches could not all be resolved (left to
    /// reconcile).
    pub fn unresolved_readers(&self, provider: &str) {
        let labels = Handled {
            provider: label(provider),
            outcome: "left_to_reconcile",
        };
        self.unresolved_readers.get_or_create(&labels).inc();
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "fleetsync_webhook_refusals",
            "Deliveries refused before they were handled, by reason",
            self.refusals.clone(),
        );
        registry.register(
            "fleetsync_webhook_deliveries",
            "Deliveries handled, by outcome",
            self.deliveries.clone(),
        );
        registry.register(
            "fleetsync_webhook_unresolved_readers",
            "Pushes after which environments that read the pushed repo could not be resolved",
            self.unresolved_readers.clone(),
        );
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
