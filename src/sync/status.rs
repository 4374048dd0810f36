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
    /// Why the spec Git resolves to is not running: the failure fleetsync marked on the service
    /// (`RolloutFailed`, `RolloutTimeout`, `PreflightRefused` or the AWS error code), or ECS's
    /// reason for a failed deployment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The latest ECS service events, newest first, when the app is not healthy.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
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
        failure: None,
        events: Vec::new(),
    };
    let Some(live) = live else {
        return status;
    };
    let tag = |key: &str| live.tags.get(key).filter(|v| !v.is_empty());
    status.live_revision = tag(tag::REVISION).cloned();
    status.task_definition = Some(task_definition_id(&live.task_definition).to_owned());
    if tag(tag::SPEC_HASH) == Some(&app.spec_hash) && !task_definition_changed_elsewhere(live) {
        status.sync = Sync::Synced;
    }

    let marked = (tag(tag::FAILED_SPEC_HASH) == Some(&app.spec_hash)).then(|| {
        tag(tag::FAILURE)
            .cloned()
            .unwrap_or_else(|| "Failed".into())
    });
    // ECS's verdict on the deployment running now, e.g. the circuit breaker's.
    let failed_deployment = live
        .deployments
        .iter()
        .filter(|d| d.task_definition == live.task_definition)
        .find(|d| d.rollout_state.as_deref() == Some("FAILED"));
    let rollout_failed = marked
        .as_deref()
        .is_some_and(|code| code.starts_with("Rollout") || code == "Failed");
    status.health = if rollout_failed || failed_deployment.is_some() {
        Health::Degraded
    } else if settled(live) {
        Health::Healthy
    } else {
        Health::Progressing
    };
    status.failure = marked.or_else(|| {
        failed_deployment.map(|d| {
            d.rollout_state_reason
                .clone()
                .unwrap_or_else(|| "the deployment failed".into())
        })
    });
    if status.health != Health::Healthy || status.failure.is_some() {
        status.events = live.events.iter().take(EVENTS).cloned().collect();
    }
    status
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
                (tag::FAILED_REVISION, "c2"),
                (tag::FAILURE, "RolloutFailed"),
            ],
            "COMPLETED",
        );
        let s = app_status(&app(), Some(&live));
        assert_eq!((s.sync, s.health), (Sync::OutOfSync, Health::Degraded));
        assert_eq!(s.failure.as_deref(), Some("RolloutFailed"));
        assert_eq!(s.live_revision.as_deref(), Some("c1"));
        assert_eq!(s.events.len(), 1);
    }

    #[test]
    fn a_spec_refused_before_any_write_leaves_the_old_one_healthy() {
        let live = live(
            &[
                (tag::SPEC_HASH, "old"),
                (tag::FAILED_SPEC_HASH, "new"),
                (tag::FAILURE, "AccessDeniedException"),
            ],
            "COMPLETED",
        );
        let s = app_status(&app(), Some(&live));
        assert_eq!((s.sync, s.health), (Sync::OutOfSync, Health::Healthy));
        assert_eq!(s.failure.as_deref(), Some("AccessDeniedException"));
    }

    #[test]
    fn an_older_failure_or_a_cleared_one_says_nothing() {
        for failed in ["older", ""] {
            let live = live(
                &[
                    (tag::SPEC_HASH, "new"),
                    (tag::FAILED_SPEC_HASH, failed),
                    (tag::FAILURE, "RolloutFailed"),
                ],
                "IN_PROGRESS",
            );
            let s = app_status(&app(), Some(&live));
            assert_eq!((s.sync, s.health), (Sync::Synced, Health::Progressing));
            assert_eq!(s.failure, None);
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
}
