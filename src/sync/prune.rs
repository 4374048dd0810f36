//! Prune (`prune: true` on the top root): delete the services a root deployed to an environment
//! and no longer lists, and deregister their task definitions.
//!
//! Only what carries this root's and this environment's tags is touched, and only while the
//! job's commit is still the branch head (checked again right before each deletion) and
//! contains the commit that deployed the service: a late prune job leaves alone what a newer
//! push lists again, and that push sends its own. A task definition a service of the cluster
//! still runs or deploys, including one whose deletion failed, is never deregistered.

use std::collections::{HashMap, HashSet};

use tracing::{info, warn};

use super::Error;
use super::apply::History;
use crate::ecs::{Ecs, task_definition_id};
use crate::queue::PruneJob;
use crate::resolve::tag;

/// What a prune job did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Services deleted.
    pub deleted: Vec<String>,
    /// Task definitions deregistered, as `family:revision`.
    pub deregistered: Vec<String>,
    /// Services no longer listed but left alone: the job's commit is no longer the branch
    /// head or does not contain the one that deployed them, or the worker could not tell.
    pub kept: Vec<String>,
}

pub async fn prune(ecs: &Ecs, history: &impl History, job: &PruneJob) -> Result<Pruned, Error> {
    let names = ecs.list_services(&job.cluster).await?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let live = ecs.describe_services(&job.cluster, &names).await?;
    let listed: HashSet<&str> = job.apps.iter().map(String::as_str).collect();
    // A preview carries its environment's tags too, and is torn down, never pruned.
    let owned = |tags: &HashMap<String, String>| {
        tags.get(tag::ROOT) == Some(&job.root)
            && tags.get(tag::ENVIRONMENT) == Some(&job.environment)
            && !tags.contains_key(tag::PREVIEW)
    };

    let mut pruned = Pruned::default();
    let mut unlisted: Vec<_> = live
        .iter()
        .filter(|(_, s)| owned(&s.tags))
        .filter(|(_, s)| {
            s.tags
                .get(tag::APP)
                .is_some_and(|app| !listed.contains(app.as_str()))
        })
        .collect();
    unlisted.sort_by_key(|(name, _)| name.as_str());
    // The head is checked right before each deletion, so a push landing meanwhile is seen.
    let mut first_error = None;
    let mut families = Vec::new();
    for (name, service) in unlisted {
        let deployed = service.tags.get(tag::REVISION).map_or("", String::as_str);
        let included = history
            .head_includes(&job.repo, &job.branch, &job.commit, deployed)
            .await;
        if included != Some(true) {
            pruned.kept.push(name.clone());
            continue;
        }
        // One service's failure does not stop the others; the job fails afterwards and its
        // retry finds what is left.
        match ecs.delete_service(&job.cluster, name).await {
            Ok(()) => {
                info!(message = "Service pruned.", service = %name, cluster = %job.cluster);
                pruned.deleted.push(name.clone());
                let id = task_definition_id(&service.task_definition);
                families.push(id.rsplit_once(':').map_or(id, |(family, _)| family));
            }
            Err(e) => {
                warn!(message = "Cannot prune a service; the others go on.", service = %name, error = %e);
                first_error.get_or_insert(Error::from(e));
            }
        }
    }

    // Every revision a remaining service runs or is deploying, kept or failed ones included.
    let running: HashSet<&str> = live
        .iter()
        .filter(|(name, _)| !pruned.deleted.contains(name))
        .flat_map(|(_, s)| {
            std::iter::once(&s.task_definition)
                .chain(s.deployments.iter().map(|d| &d.task_definition))
                .map(|td| task_definition_id(td))
        })
        .collect();
    for family in families {
        let deregistered = async {
            let mut deregistered = Vec::new();
            for revision in ecs.list_task_definitions(family).await? {
                if running.contains(revision.as_str()) {
                    continue;
                }
                let Some(definition) = ecs.describe_task_definition(&revision).await? else {
                    continue;
                };
                if owned(&definition.tags) {
                    ecs.deregister_task_definition(&revision).await?;
                    deregistered.push(revision);
                }
            }
            Ok::<_, Error>(deregistered)
        };
        match deregistered.await {
            Ok(revisions) => pruned.deregistered.extend(revisions),
            Err(e) => {
                warn!(message = "Cannot deregister a pruned app's task definitions.", %family, error = %e);
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(pruned),
    }
}
