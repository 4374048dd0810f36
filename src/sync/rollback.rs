//! Applies a rollback asked for through the API: the app's service goes back to an earlier
//! revision it ran, as a copy of that revision carrying the rollback's own audit trail, and
//! the commit rolled away from is quarantined on the service (`fleetsync:rolled-back-from`)
//! until Git moves on.
//!
//! Only the task definition goes back, as with ecspresso: the service's other settings are
//! whatever the last sync set.

use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::Error;
use super::apply::{self, Ours, Outcome, result};
use crate::ecs::{Ecs, task_definition_id};
use crate::queue::RollbackJob;
use crate::resolve::tag;

pub async fn roll_back(
    ecs: &Ecs,
    job: &RollbackJob,
    poll: Duration,
    stop: &CancellationToken,
) -> Result<Outcome, Error> {
    let refuse = |reason: String| Error::NotRollable {
        service: job.service.clone(),
        reason,
    };
    let Some(live) = ecs.describe_service(&job.cluster, &job.service).await? else {
        return Err(refuse(format!(
            "there is no service {} in cluster {}",
            job.service, job.cluster
        )));
    };
    let own = |key: &str| live.tags.get(key).map(String::as_str);
    if own(tag::ROOT) != Some(job.root.as_str())
        || own(tag::ENVIRONMENT) != Some(job.environment.as_str())
        || own(tag::PREVIEW).is_some_and(|p| !p.is_empty())
    {
        return Err(refuse(format!(
            "it is not the service fleetsync deploys for environment `{}` of root `{}`",
            job.environment, job.root
        )));
    }
    let watched = (
        job.cluster.as_str(),
        job.service.as_str(),
        Duration::from_secs(job.rollout.timeout_seconds),
    );

    // Applied already: an attempt died after its tags (a redelivery, an expired receipt).
    if own(tag::ROLLED_BACK_FROM) == Some(job.from.as_str())
        && own(tag::REVISION) == Some(job.commit.as_str())
        && own(tag::TASK_DEFINITION)
            .is_some_and(|t| task_definition_id(t) == task_definition_id(&live.task_definition))
    {
        if job.rollout.wait && !apply::settled(&live) {
            let ours = Ours {
                task_definition: &live.task_definition,
                deployment: own(tag::DEPLOYMENT).filter(|d| !d.is_empty()),
            };
            apply::watch_rollout(ecs, watched, ours, poll, stop).await?;
        }
        return Ok(Outcome::Unchanged);
    }
    // Asked for against what ran then: a push, a sync or another rollback since has moved
    // the service on, and going back from there is a decision nobody made.
    if own(tag::REVISION) != Some(job.from.as_str()) {
        return Ok(Outcome::Superseded {
            by: own(tag::REVISION).unwrap_or_default().to_owned(),
        });
    }
    if stop.is_cancelled() {
        return Err(Error::Interrupted);
    }

    let mut audit = job.trigger.tags();
    audit.push((tag::RESULT.to_owned(), String::new()));
    let copy = ecs.copy_task_definition(&job.to, &audit).await?;
    info!(message = "Registered a copy of the revision rolled back to.", to = %job.to, copy = %task_definition_id(&copy));
    let mut input = Map::new();
    input.insert("cluster".into(), json!(job.cluster));
    input.insert("service".into(), json!(job.service));
    input.insert("taskDefinition".into(), Value::String(copy));
    let (deployment, copy) = apply::update_service(ecs, input, &audit).await?;

    let mut tags = vec![
        (
            tag::TASK_DEFINITION.to_owned(),
            task_definition_id(&copy).to_owned(),
        ),
        (
            tag::DEPLOYMENT.to_owned(),
            deployment.clone().unwrap_or_default(),
        ),
        (tag::REVISION.to_owned(), job.commit.clone()),
        (
            tag::TASK_DEFINITION_HASH.to_owned(),
            job.task_definition_hash.clone(),
        ),
        (tag::SOURCE.to_owned(), job.source.clone()),
        // The service's settings are the last sync's, its task definition an older commit's:
        // it runs no spec Git resolves to.
        (tag::SPEC_HASH.to_owned(), String::new()),
        (tag::ROLLED_BACK_FROM.to_owned(), job.from.clone()),
    ];
    tags.extend(job.trigger.tags());
    ecs.tag_resource(&live.arn, &tags).await?;

    if job.rollout.wait {
        let ours = Ours {
            task_definition: &copy,
            deployment: deployment.as_deref(),
        };
        let watch = apply::watch_rollout(ecs, watched, ours, poll, stop).await;
        let outcome = match &watch {
            Ok(()) => result::COMPLETED,
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            // A rollback is not rolled back: ECS's circuit breaker may, if the service has it on.
            Err(_) => result::FAILED,
        };
        apply::record_result(ecs, &live.arn, &copy, outcome).await;
        watch?;
    }
    Ok(Outcome::Updated {
        task_definition: copy,
    })
}
