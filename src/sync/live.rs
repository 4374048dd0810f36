//! What a service runs, as fleetsync's tags describe it.
//!
//! A service's tags describe the revision they name (`fleetsync:task-definition`). A change
//! that moves the service to a newly registered revision writes no service tags (UpdateService
//! takes none, and a TagResource would be a fourth call per changed app): that revision's own
//! tags, set free at registration, name its spec, commit and source. So while a service runs
//! another revision than its tags name, and that revision is fleetsync's for the same app, its
//! tags stand for the service's. Anything else running (a revision from the console) stays
//! visible as a task definition changed elsewhere.

use std::collections::HashMap;

use crate::ecs::{self, Ecs, LiveService, task_definition_id};
use crate::resolve::tag;

/// The tags a revision stands in for on the service that runs it.
pub(super) const DESCRIBED_BY_REVISION: [&str; 4] = [
    tag::SPEC_HASH,
    tag::TASK_DEFINITION_HASH,
    tag::REVISION,
    tag::SOURCE,
];

/// The tags that say which app a service or revision belongs to.
const OWNER: [&str; 3] = [tag::ROOT, tag::ENVIRONMENT, tag::APP];

/// The services that exist among `names`, by name, each described by what it runs.
pub async fn services(
    ecs: &Ecs,
    cluster: &str,
    names: &[&str],
) -> ecs::Result<HashMap<String, LiveService>> {
    let mut found = ecs.describe_services(cluster, names).await?;
    for live in found.values_mut() {
        describe_by_revision(ecs, live).await?;
    }
    Ok(found)
}

/// One service, described by what it runs; `None` when it does not exist.
pub async fn service(ecs: &Ecs, cluster: &str, name: &str) -> ecs::Result<Option<LiveService>> {
    let Some(mut live) = ecs.describe_service(cluster, name).await? else {
        return Ok(None);
    };
    describe_by_revision(ecs, &mut live).await?;
    Ok(Some(live))
}

/// Reads the running revision's tags (once per revision: `Ecs::task_definition_tags`) when the
/// service's own tags name another, and lets them stand for the service's.
async fn describe_by_revision(ecs: &Ecs, live: &mut LiveService) -> ecs::Result<()> {
    let running = task_definition_id(&live.task_definition);
    let Some(named) = live.tags.get(tag::TASK_DEFINITION) else {
        return Ok(()); // not a service fleetsync tagged
    };
    if task_definition_id(named) == running {
        return Ok(());
    }
    let Some(revision) = ecs.task_definition_tags(running).await? else {
        return Ok(());
    };
    let same_app = OWNER.iter().all(|k| revision.get(*k) == live.tags.get(*k));
    if !same_app || !revision.contains_key(tag::SPEC_HASH) {
        return Ok(());
    }
    for key in DESCRIBED_BY_REVISION {
        match revision.get(key) {
            Some(value) => live.tags.insert(key.to_owned(), value.clone()),
            None => live.tags.remove(key),
        };
    }
    live.tags
        .insert(tag::TASK_DEFINITION.to_owned(), running.to_owned());
    Ok(())
}
