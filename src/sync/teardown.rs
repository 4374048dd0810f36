//! Tearing down one app of a preview: its ingress (rule, target group), its service, then its
//! task definitions. Only what carries
//! the preview's own tag (`fleetsync:preview`) and its root's is touched; what is already gone
//! counts as done, so a repeated teardown, or one retried after a crash half-way, leaves
//! nothing behind and fails nothing.

use tracing::info;

use super::Error;
use crate::ecs::Ecs;
use crate::ingress::Ingress;
use crate::queue::TeardownJob;
use crate::resolve::tag;

/// What a teardown job did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TornDown {
    /// Its listener rule and target group.
    pub ingress_removed: bool,
    pub service_deleted: bool,
    /// Task definitions deregistered, as `family:revision`.
    pub deregistered: Vec<String>,
}

pub async fn tear_down(ecs: &Ecs, ingress: &Ingress, job: &TeardownJob) -> Result<TornDown, Error> {
    let preview = job.preview.to_string();
    let ours = |tags: &std::collections::HashMap<String, String>| {
        tags.get(tag::PREVIEW) == Some(&preview) && tags.get(tag::ROOT) == Some(&job.root)
    };
    let mut done = TornDown::default();
    let live = ecs.describe_service(&job.cluster, &job.service).await?;
    if let Some(live) = &live
        && !ours(&live.tags)
    {
        return Err(Error::NotThePreviews {
            service: job.service.clone(),
            cluster: job.cluster.clone(),
            preview: Some(job.preview),
        });
    }
    // Before the service, whose tag says there is an ingress: a crash after this finds the
    // service (and the tag) again, and a rule gone counts as removed. `job.ingress` covers a
    // route made for a service whose creation then failed.
    if job.ingress || live.as_ref().is_some_and(|l| l.tags.contains_key(tag::URL)) {
        done.ingress_removed = ingress.remove(&job.root, job.preview, &job.app).await?;
    }
    match live {
        // Deleted already, by an earlier attempt: DRAINING until its tasks stop.
        Some(live) if live.draining => {}
        Some(_) => {
            ecs.delete_service(&job.cluster, &job.service).await?;
            info!(message = "Preview service deleted.", service = %job.service, cluster = %job.cluster);
            done.service_deleted = true;
        }
        None => {}
    }
    for revision in ecs.list_task_definitions(&job.family).await? {
        let Some(definition) = ecs.describe_task_definition(&revision).await? else {
            continue;
        };
        if ours(&definition.tags) {
            ecs.deregister_task_definition(&revision).await?;
            done.deregistered.push(revision);
        }
    }
    Ok(done)
}
