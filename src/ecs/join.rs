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
    /// Reads what waits for `cluster`, ten services a call; each call answers its own readers,
    /// so one failed call fails only them.
    async fn read_batch(&self, cluster: &str) {
        let Some(joiner) = &self.joiner else { return };
        let mut waiting = joiner.take(cluster);
        waiting.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        while !waiting.is_empty() {
            let rest = waiting.split_off(ten_services(&waiting));
            let batch = std::mem::replace(&mut waiting, rest);
            let mut names: Vec<&str> = batch.iter().map(|(s, _)| s.as_str()).collect();
            names.dedup();
            let read = self.describe_services(cluster, &names).await;
            for (service, reply) in batch {
                let answer = match &read {
                    Ok(found) => Ok(found.get(&service).cloned()),
                    Err(e) => Err(e.clone()),
                };
                let _ = reply.send(answer); // a job cancelled meanwhile no longer asks
            }
        }
    }
}

/// How many of `sorted` (readers by service name) the next call answers: those of the first
/// ten distinct services.
fn ten_services(sorted: &[(String, Reply)]) -> usize {
    let mut distinct = 0;
    for (i, (service, _)) in sorted.iter().enumerate() {
        if i == 0 || sorted[i - 1].0 != *service {
            distinct += 1;
            if distinct > 10 {
                return i;
            }
        }
    }
    sorted.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readers(names: &[&str]) -> Vec<(String, Reply)> {
        names
            .iter()
            .map(|n| ((*n).to_owned(), oneshot::channel().0))
            .collect()
    }

    #[test]
    fn a_call_answers_every_reader_of_its_ten_services() {
        let names: Vec<String> = (0..12).map(|i| format!("s{i:02}")).collect();
        let mut sorted: Vec<&str> = names.iter().map(String::as_str).collect();
        sorted.insert(1, "s00"); // two jobs read s00
        assert_eq!(
            ten_services(&readers(&sorted)),
            11,
            "s00 twice, then s01..s09"
        );
        assert_eq!(ten_services(&readers(&sorted[11..])), 2);
        assert_eq!(ten_services(&readers(&[])), 0);
    }
}
