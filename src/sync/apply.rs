//! Applies one job to ECS: register the task definition if its spec is new, create or update
//! the service, wait for the rollout, roll back if it fails.
//!
//! Every step can be repeated after a crash: the spec hash tags on the live task definition and
//! service say what is already there, so a retried job re-does only what is missing.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use tracing::info;

use super::Error;
use crate::ecs::{self, Ecs, LiveService, task_definition_id};
use crate::queue::SyncJob;
use crate::resolve::tag;

/// What a job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The live service already had this spec; no write call was made.
    Unchanged,
    Created {
        task_definition: String,
    },
    Updated {
        task_definition: String,
    },
}

pub async fn apply(ecs: &Ecs, job: &SyncJob, poll: Duration) -> Result<Outcome, Error> {
    let app = &job.app;
    let service = app.service_name();
    let live = ecs.describe_service(&app.cluster, service).await?;

    if let Some(live) = &live
        && live.tags.get(tag::SPEC_HASH) == Some(&app.spec_hash)
    {
        // A previous attempt may have died while the rollout was running: finish watching it.
        if app.rollout.wait {
            watch_rollout(
                ecs,
                job,
                &live.task_definition,
                live.task_definition.clone(),
                poll,
            )
            .await?;
        }
        return Ok(Outcome::Unchanged);
    }

    let task_definition = match ecs.describe_task_definition(app.family()).await? {
        Some(td) if td.tags.get(tag::SPEC_HASH) == Some(&app.spec_hash) => td.arn,
        _ => {
            ecs.register_task_definition(&app.register_task_definition)
                .await?
        }
    };
    info!(message = "Task definition ready.", app = %app.name, environment = %app.environment, task_definition = %task_definition);

    let outcome = match &live {
        None => {
            let mut input = app.create_service.clone();
            input.insert(
                "taskDefinition".into(),
                Value::String(task_definition.clone()),
            );
            ecs.create_service(&input).await?;
            Outcome::Created {
                task_definition: task_definition.clone(),
            }
        }
        Some(live) => {
            let mut input = app.update_service.clone();
            input.insert(
                "taskDefinition".into(),
                Value::String(task_definition.clone()),
            );
            ecs.update_service(&input).await?;
            // Tagged after the update: a crash in between leaves the old hash, so the retry
            // repeats the (idempotent) update instead of believing it happened.
            ecs.tag_resource(&live.arn, &app.provenance_tags()).await?;
            Outcome::Updated {
                task_definition: task_definition.clone(),
            }
        }
    };

    if app.rollout.wait {
        let previous = live
            .as_ref()
            .map(|l| l.task_definition.clone())
            .unwrap_or_default();
        if let Err(failure) = watch_rollout(ecs, job, &task_definition, previous, poll).await {
            return Err(roll_back(ecs, job, live.as_ref(), failure).await);
        }
    }
    Ok(outcome)
}

/// Follows ECS's own rollout state: the PRIMARY deployment of `task_definition` reaching
/// COMPLETED, or FAILED when the deployment circuit breaker trips.
async fn watch_rollout(
    ecs: &Ecs,
    job: &SyncJob,
    task_definition: &str,
    previous: String,
    poll: Duration,
) -> Result<(), Error> {
    let app = &job.app;
    let service = app.service_name();
    let deadline = Instant::now() + Duration::from_secs(app.rollout.timeout_seconds);
    let target = task_definition_id(task_definition).to_owned();
    loop {
        let Some(live) = ecs.describe_service(&app.cluster, service).await? else {
            return Err(Error::RolloutFailed {
                service: service.to_owned(),
                task_definition: target,
                reason: "the service was deleted during the rollout".into(),
                previous: String::new(),
                rolled_back: false,
            });
        };
        // Followed by task definition, not by "whichever is PRIMARY": when the circuit breaker
        // rolls back, ECS makes the rollback PRIMARY and ours is left ACTIVE and FAILED.
        match live
            .deployments
            .iter()
            .find(|d| task_definition_id(&d.task_definition) == target)
        {
            Some(d) => match d.rollout_state.as_deref() {
                Some("COMPLETED") => return Ok(()),
                Some("FAILED") => {
                    return Err(Error::RolloutFailed {
                        service: service.to_owned(),
                        task_definition: target,
                        reason: failure_reason(d, &live),
                        previous,
                        rolled_back: false,
                    });
                }
                // Deployment controllers other than ECS report no rollout state: steady state
                // is one deployment with all its tasks running.
                None if live.deployments.len() == 1 && d.running_count == d.desired_count => {
                    return Ok(());
                }
                _ => {}
            },
            None => {
                return Err(Error::RolloutFailed {
                    service: service.to_owned(),
                    task_definition: target,
                    reason: format!(
                        "another deployment ({}) replaced it",
                        task_definition_id(&live.task_definition)
                    ),
                    previous,
                    rolled_back: false,
                });
            }
        }
        if Instant::now() + poll > deadline {
            return Err(Error::RolloutTimeout {
                service: service.to_owned(),
                task_definition: target,
                timeout: Duration::from_secs(app.rollout.timeout_seconds),
                previous,
                events: live.events.iter().take(3).cloned().collect(),
                rolled_back: false,
            });
        }
        tokio::time::sleep(poll).await;
    }
}

fn failure_reason(d: &ecs::Deployment, live: &LiveService) -> String {
    let mut reason = d
        .rollout_state_reason
        .clone()
        .unwrap_or_else(|| "the deployment failed".into());
    for event in live.events.iter().take(3) {
        reason.push_str("; ");
        reason.push_str(event);
    }
    reason
}

/// Puts the previous task definition and tags back, unless ECS's circuit breaker does the
/// rollback itself. The job still fails: a rollback is never a success.
async fn roll_back(
    ecs: &Ecs,
    job: &SyncJob,
    before: Option<&LiveService>,
    failure: Error,
) -> Error {
    let Some(before) = before else { return failure };
    let app = &job.app;
    let circuit_breaker = app
        .update_service
        .get("deploymentConfiguration")
        .and_then(|c| c.get("deploymentCircuitBreaker"));
    let ecs_rolls_back = circuit_breaker.is_some_and(|cb| {
        cb.get("enable") == Some(&Value::Bool(true))
            && cb.get("rollback") == Some(&Value::Bool(true))
    });
    let rolled_back = if ecs_rolls_back {
        true
    } else {
        match ecs
            .set_task_definition(&app.cluster, app.service_name(), &before.task_definition)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                return Error::RollbackFailed {
                    original: Box::new(failure),
                    rollback: e,
                };
            }
        }
    };
    // The service runs the previous spec again: its tags must say so, or the next attempt would
    // believe the failed spec is live.
    let restore: Vec<_> = [tag::SPEC_HASH, tag::REVISION]
        .iter()
        .map(|k| {
            (
                (*k).to_owned(),
                before.tags.get(*k).cloned().unwrap_or_default(),
            )
        })
        .collect();
    if let Err(e) = ecs.tag_resource(&before.arn, &restore).await {
        return Error::RollbackFailed {
            original: Box::new(failure),
            rollback: e,
        };
    }
    failure.rolled_back(rolled_back)
}
