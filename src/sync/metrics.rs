//! What the worker's scrape shows: jobs by kind and how they ended, and how long they took.

use crate::metrics::{self, Counter, EncodeLabelSet, Family, Histograms, Registry};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Ended {
    /// sync, prune, teardown, rollback.
    kind: &'static str,
    /// The job's `event` in the log: completed, unchanged, rolled_back, failed, retrying, …
    outcome: &'static str,
}

pub struct JobMetrics {
    jobs: Family<Ended, Counter>,
    seconds: Histograms<Ended>,
}

impl Default for JobMetrics {
    fn default() -> Self {
        JobMetrics {
            jobs: Family::default(),
            seconds: Family::new_with_constructor(metrics::job_seconds),
        }
    }
}

impl JobMetrics {
    pub fn ended(&self, kind: &'static str, outcome: &'static str, took: std::time::Duration) {
        let labels = Ended { kind, outcome };
        self.jobs.get_or_create(&labels).inc();
        self.seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "fleetsync_jobs",
            "Jobs this worker ended (or handed back), by kind and outcome",
            self.jobs.clone(),
        );
        registry.register(
            "fleetsync_job_duration_seconds",
            "Time from a job's receipt to its end, by kind and outcome: for a sync, its rollout included",
            self.seconds.clone(),
        );
    }
}
