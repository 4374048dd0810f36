//! What an app looks like in ECS next to what Git asks for, in Argo CD's words: a sync status
//! (does the service run the spec Git resolves to?) and a health (is what runs doing well?).
//!
//! Read from the service alone: its fleetsync tags say which spec it runs and which spec failed,
//! and ECS's deployments and events say how the rollout went. No store of fleetsync's own.

use serde::Serialize;

use super::apply::{settled, task_definition_changed_elsewhere};
use crate::ecs::{LiveService, task_definition_id};
use crate::resolve::{DesiredApp, tag};

/// ECS service events included with an app that is not healthy: enough to say why.
const EVENTS: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Sync {
    /// The service runs the spec Git resolves to.
    Synced,
    /// It runs another spec, another task definition than fleetsync set, or does not exist.
    OutOfSync,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Health {
    /// The current deployment completed.
    Healthy,
    /// A deployment is under way.
    Progressing,
    /// The rollout of the spec Git resolves to failed: rolled back, or still failed.
    Degraded,
    /// No such service.
    Missing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppStatus {
    pub app: String,
    pub service: String,
    pub sync: Sync,
    pub health: Health,
    /// The commit Git resolves the app from.
    pub revision: String,
    /// The commit the running spec came from, as tagged when it was applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_definition: Option<String>,
    /// The id of the service's PRIMARY deployment: a new one for every deployment ECS starts,
    /// forced ones included, so a client can tell its sync's deployment from the one before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// Why the spec Git resolves to is not running: the failure fleetsync marked on the service
    /// (`RolloutFailed`, `RolloutTimeout`, `PreflightRefused`, ... or the AWS error code), or
    /// ECS's reason for a failed deployment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Why a rollout failed and what to do, from its stopped tasks: `Code: cause. Fix: …` (in
    /// the characters an ECS tag takes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The commit whose spec failed, as marked on the service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_revision: Option<String>,
    /// The latest ECS service events, newest first, when the app is not healthy.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// What put the running deployment there, from the service's audit tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<LastSync>,
    /// Git's commit, which an operator rolled the app back from: it stays out until Git moves
    /// on (or a sync through the API asks for it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolled_back_from: Option<String>,
}

/// The audit trail of a service's last deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastSync {
    pub trigger: String,
    pub actor: String,
    pub commit_author: String,
    pub reason: String,
}

pub fn app_status(app: &DesiredApp, live: Option<&LiveService>) -> AppStatus {
    let mut status = AppStatus {
        app: app.name.clone(),
        service: app.service_name().to_owned(),
        sync: Sync::OutOfSync,
        health: Health::Missing,
        revision: app.commit.clone(),
        live_revision: None,
        task_definition: None,
        deployment: None,
        failure: None,
        cause: None,
        failed_revision: None,
        events: Vec::new(),
        last_sync: None,
        rolled_back_from: None,
    };
    let Some(live) = live else {
        return status;
    };
    status.live_revision = live
        .tags
        .get(tag::REVISION)
        .filter(|r| !r.is_empty())
        .cloned();
    status.task_definition = Some(task_definition_id(&live.task_definition).to_owned());
    status.deployment = live
        .deployments
        .iter()
        .find(|d| d.status == "PRIMARY")
        .map(|d| d.id.clone());
    let synced = live.tags.get(tag::SPEC_HASH) == Some(&app.spec_hash)
        && !task_definition_changed_elsewhere(live);
    if synced {
        status.sync = Sync::Synced;
    }

    // Kept even when the spec's deployment now shows COMPLETED: when only service fields
    // changed, ECS's rollback runs the same task definition, and a completed rollback must not
    // read as a success. A push that changes the spec leaves the mark behind; after a rollback,
    // the same spec applied again clears it.
    let marked = marked_failure(live, &app.spec_hash);
    let failed_deployment = failed_deployment(live);
    status.health = health(live, &app.spec_hash);
    if let Some(m) = marked {
        status.failure = Some(m.code.to_owned());
        status.failed_revision = m.commit.map(str::to_owned);
        status.cause = live.tags.get(tag::CAUSE).filter(|c| !c.is_empty()).cloned();
    } else if let Some(d) = failed_deployment {
        status.failure = Some(
            d.rollout_state_reason
                .clone()
                .unwrap_or_else(|| "the deployment failed".into()),
        );
    }
    let audit = |key: &str| live.tags.get(key).cloned().unwrap_or_default();
    status.last_sync = live.tags.contains_key(tag::TRIGGER).then(|| LastSync {
        trigger: audit(tag::TRIGGER),
        actor: audit(tag::ACTOR),
        commit_author: audit(tag::COMMIT_AUTHOR),
        reason: audit(tag::REASON),
    });
    status.rolled_back_from = live
        .tags
        .get(tag::ROLLED_BACK_FROM)
        .filter(|from| **from == app.commit)
        .cloned();
    if status.health != Health::Healthy || status.failure.is_some() {
        status.events = live.events.iter().take(EVENTS).cloned().collect();
    }
    status
}

/// ECS's verdict on the deployment of what fleetsync set: the circuit breaker's, even when ECS
/// has already made its rollback the PRIMARY deployment.
fn failed_deployment(live: &LiveService) -> Option<&crate::ecs::Deployment> {
    let set = live
        .tags
        .get(tag::TASK_DEFINITION)
        .map_or(task_definition_id(&live.task_definition), |t| {
            task_definition_id(t)
        });
    live.deployments
        .iter()
        .filter(|d| task_definition_id(&d.task_definition) == set)
        .find(|d| d.rollout_state.as_deref() == Some("FAILED"))
}

/// The health of a service running `spec_hash`.
pub fn health(live: &LiveService, spec_hash: &str) -> Health {
    let marked = marked_failure(live, spec_hash);
    if marked.is_some_and(|m| is_rollout(m.code)) || failed_deployment(live).is_some() {
        Health::Degraded
    } else if settled(live) {
        Health::Healthy
    } else {
        Health::Progressing
    }
}

/// The health of what a service says it runs (its own spec-hash tag): for services no desired
/// state names, such as a preview's.
pub fn live_health(live: &LiveService) -> Health {
    health(
        live,
        live.tags.get(tag::SPEC_HASH).map_or("", String::as_str),
    )
}

/// A failure fleetsync marked on a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marked<'a> {
    pub code: &'a str,
    pub commit: Option<&'a str>,
    /// [`delivery_digest`] of the job that failed; marks written before it existed have none.
    pub delivery: Option<&'a str>,
}

/// What a failure mark keeps of a job's delivery id: a redelivery of that job is told from a
/// new push or sync of the same commit, within the tag's 256 characters whatever the id.
pub fn delivery_digest(delivery: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(delivery.as_bytes())[..8])
}

/// The failure marked on `live` for the spec `spec_hash`, if any.
pub fn marked_failure<'a>(live: &'a LiveService, spec_hash: &str) -> Option<Marked<'a>> {
    if spec_hash.is_empty()
        || live.tags.get(tag::FAILED_SPEC_HASH).map(String::as_str) != Some(spec_hash)
    {
        return None;
    }
    // Marks written before `fleetsync:failure` existed were all rollbacks.
    let failure = live
        .tags
        .get(tag::FAILURE)
        .map(String::as_str)
        .filter(|f| !f.is_empty())
        .unwrap_or("RolloutFailed");
    let mut parts = failure.splitn(3, ' ');
    let code = parts.next().unwrap_or_default();
    Some(Marked {
        code,
        commit: parts.next(),
        delivery: parts.next(),
    })
}

/// Whether reconcile leaves `spec_hash` alone on `live`: its rollout failed there. A spec
/// refused before anything changed is sent again, since what refused it may be fixed by now.
pub fn quarantined(live: &LiveService, spec_hash: &str) -> bool {
    marked_failure(live, spec_hash).is_some_and(|m| is_rollout(m.code))
}

pub(super) fn is_rollout(code: &str) -> bool {
    code.starts_with("Rollout")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::ecs::Deployment;

    fn app() -> DesiredApp {
        let mut app = crate::resolve::example_app();
        app.spec_hash = "new".into();
        app.commit = "c2".into();
        app
    }

    fn live(tags: &[(&str, &str)], rollout: &str) -> LiveService {
        LiveService {
            arn: "arn:aws:ecs:eu-west-1:1:service/c/a".into(),
            task_definition: "arn:aws:ecs:eu-west-1:1:task-definition/a:1".into(),
            desired_count: 1,
            running_count: 1,
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>(),
            deployments: vec![Deployment {
                id: "d1".into(),
                status: "PRIMARY".into(),
                task_definition: "arn:aws:ecs:eu-west-1:1:task-definition/a:1".into(),
                rollout_state: Some(rollout.into()),
                rollout_state_reason: None,
                desired_count: 1,
                running_count: 1,
            }],
            events: vec!["(service api) was unable to place a task.".into()],
            draining: false,
            settings: Default::default(),
        }
    }

    #[test]
    fn a_missing_service_is_out_of_sync_and_missing() {
        let s = app_status(&app(), None);
        assert_eq!((s.sync, s.health), (Sync::OutOfSync, Health::Missing));
    }

    #[test]
    fn the_desired_spec_settled_is_synced_and_healthy() {
        let live = live(
            &[(tag::SPEC_HASH, "new"), (tag::REVISION, "c2")],
            "COMPLETED",
        );
        let s = app_status(&app(), Some(&live));
        assert_eq!((s.sync, s.health), (Sync::Synced, Health::Healthy));
        assert_eq!(s.task_definition.as_deref(), Some("a:1"));
        assert!(s.events.is_empty() && s.failure.is_none());
    }

    #[test]
    fn a_rolled_back_spec_is_degraded_with_its_reason_and_events() {
        let live = live(
            &[
                (tag::SPEC_HASH, "old"),
                (tag::REVISION, "c1"),
                (tag::FAILED_SPEC_HASH, "new"),
                (tag::FAILURE, "RolloutFailed c2"),
            ],
            "COMPLETED",
        );
        let s = app_status(&app(), Some(&live));
        assert_eq!((s.sync, s.health), (Sync::OutOfSync, Health::Degraded));
        assert_eq!(s.failure.as_deref(), Some("RolloutFailed"));
        assert_eq!(s.failed_revision.as_deref(), Some("c2"));
        assert_eq!(s.live_revision.as_deref(), Some("c1"));
        assert_eq!(s.events.len(), 1);
        assert!(quarantined(&live, "new"));
    }

    #[test]
    fn a_spec_refused_before_any_write_leaves_the_old_one_healthy() {
        let live = live(
            &[
                (tag::SPEC_HASH, "old"),
                (tag::FAILED_SPEC_HASH, "new"),
                (tag::FAILURE, "AccessDeniedException c2"),
            ],
            "COMPLETED",
        );
        let s = app_status(&app(), Some(&live));
        assert_eq!((s.sync, s.health), (Sync::OutOfSync, Health::Healthy));
        assert_eq!(s.failure.as_deref(), Some("AccessDeniedException"));
        assert!(!quarantined(&live, "new"), "reconcile tries it again");
    }

    #[test]
    fn a_mark_from_before_failure_tags_is_a_rollback() {
        let live = live(
            &[(tag::SPEC_HASH, "old"), (tag::FAILED_SPEC_HASH, "new")],
            "COMPLETED",
        );
        assert_eq!(app_status(&app(), Some(&live)).health, Health::Degraded);
        assert!(quarantined(&live, "new"));
    }

    #[test]
    fn an_older_failure_says_nothing() {
        let live = live(
            &[
                (tag::SPEC_HASH, "new"),
                (tag::FAILED_SPEC_HASH, "older"),
                (tag::FAILURE, "RolloutFailed c1"),
            ],
            "IN_PROGRESS",
        );
        let s = app_status(&app(), Some(&live));
        assert_eq!((s.sync, s.health), (Sync::Synced, Health::Progressing));
        assert_eq!(s.failure, None);
    }

    #[test]
    fn a_failed_rollout_with_nothing_to_roll_back_to_stays_degraded_even_once_settled() {
        let tags = [
            (tag::SPEC_HASH, "new"),
            (tag::FAILED_SPEC_HASH, "new"),
            (tag::FAILURE, "RolloutTimeout c2"),
        ];
        for rollout in ["COMPLETED", "IN_PROGRESS"] {
            let s = app_status(&app(), Some(&live(&tags, rollout)));
            assert_eq!(
                (s.health, s.failure.as_deref()),
                (Health::Degraded, Some("RolloutTimeout")),
                "{rollout}"
            );
        }
    }

    #[test]
    fn a_deployment_ecs_failed_is_degraded_with_ecs_reason() {
        let mut live = live(&[(tag::SPEC_HASH, "new")], "FAILED");
        live.deployments[0].rollout_state_reason = Some("circuit breaker tripped".into());
        let s = app_status(&app(), Some(&live));
        assert_eq!((s.sync, s.health), (Sync::Synced, Health::Degraded));
        assert_eq!(s.failure.as_deref(), Some("circuit breaker tripped"));
    }

    #[test]
    fn a_deployment_ecs_rolls_back_is_degraded_while_ecs_still_shows_it() {
        let mut live = live(
            &[(tag::SPEC_HASH, "new"), (tag::TASK_DEFINITION, "a:2")],
            "IN_PROGRESS",
        );
        let mut failed = live.deployments[0].clone();
        failed.status = "ACTIVE".into();
        failed.task_definition = "arn:aws:ecs:eu-west-1:1:task-definition/a:2".into();
        failed.rollout_state = Some("FAILED".into());
        live.deployments.push(failed);
        let s = app_status(&app(), Some(&live));
        assert_eq!((s.sync, s.health), (Sync::OutOfSync, Health::Degraded));
        assert_eq!(s.failure.as_deref(), Some("the deployment failed"));
    }
}
