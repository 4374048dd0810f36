//! Joins the reads of single services that a worker's jobs make at about the same time (the
//! jobs of one receive, the rollouts it watches) into DescribeServices calls of up to ten:
//! a hundred rollouts polled together cost ten calls, not a hundred.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Ecs, LiveService, Result};

/// How long the first read of a batch waits for others. Small beside a rollout poll, large
/// beside the microseconds between jobs started by one receive or woken by one poll tick.
pub(super) const WINDOW: Duration = Duration::from_millis(20);

type Reply = oneshot::Sender<Result<Option<LiveService>>>;

/// Reads waiting for their batch, by cluster. At most one per running job, so as bounded as
/// the worker's concurrency.
#[derive(Debug, Default)]
pub(super) struct Joiner {
    waiting: Mutex<HashMap<String, Vec<(String, Reply)>>>,
}

impl Joiner {
    /// `service` in `cluster`, read in the next batch for that cluster.
    pub(super) async fn describe(
        &self,
        ecs: &Ecs,
        cluster: &str,
        service: &str,
    ) -> Result<Option<LiveService>> {
        let (reply, answer) = oneshot::channel();
        let first = {
            let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            let batch = waiting.entry(cluster.to_owned()).or_default();
            batch.push((service.to_owned(), reply));
            batch.len() == 1
        };
        if first {
            // Spawned, not awaited here: the batch must be read even when the job that opened
            // it is cancelled meanwhile.
            let ecs = ecs.clone();
            let cluster = cluster.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(WINDOW).await;
                ecs.read_batch(&cluster).await;
            });
        }
        match answer.await {
            Ok(answer) => answer,
            // The batch's task died (a panic): read alone rather than not at all.
            Err(_) => Ok(ecs
                .describe_services(cluster, &[service])
                .await?
                .remove(service)),
        }
    }

    pub(super) fn take(&self, cluster: &str) -> Vec<(String, Reply)> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.remove(cluster).unwrap_or_default()
    }
}

impl Ecs {
    async fn read_batch(&self, cluster: &str) {
        let Some(joiner) = &self.joiner else { return };
        let waiting = joiner.take(cluster);
        let mut names: Vec<&str> = waiting.iter().map(|(s, _)| s.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let read = self.describe_services(cluster, &names).await;
        for (service, reply) in waiting {
            let answer = match &read {
                Ok(found) => Ok(found.get(&service).cloned()),
                Err(e) => Err(e.clone()),
            };
            let _ = reply.send(answer); // a job cancelled meanwhile no longer asks
        }
    }
}
