//! The commit status a sync job's end means: what the author sees on the commit.

use super::{Error, Outcome};
use crate::config::Event;
use crate::ecs::task_definition_id;
use crate::feedback::{About, Teller};
use crate::queue::{NotifyJob, PreviewOf, Rollup, StatusJob, StatusState, SyncJob};

pub(super) fn app_status(
    teller: &Teller,
    job: &SyncJob,
    state: StatusState,
    description: &str,
) -> StatusJob {
    let app = &job.app;
    // A preview's statuses are its own, not its environment's: `fleetsync/pr-7/api`.
    let environment = match app.preview {
        Some(number) => crate::resolve::preview::name(number),
        None => app.environment.clone(),
    };
    let mut status = teller.status(
        (&job.repo, &app.commit),
        (&environment, Some(&app.name)),
        state,
        description,
    );
    if let Some(number) = app.preview {
        status.preview = Some(PreviewOf {
            number,
            app: app.name.clone(),
            environment: app.environment.clone(),
            url: app.url().map(str::to_owned),
        });
        status.target_url = app
            .url()
            .map(str::to_owned)
            .or_else(|| teller.previews_link());
    }
    if state.is_final() && job.fan_out > 1 {
        let environment = teller.status(
            (&job.repo, &app.commit),
            (&app.environment, None),
            state,
            "",
        );
        status.rollup = Some(Rollup {
            context: environment.context,
            apps: job.fan_out,
            target_url: environment.target_url,
        });
    }
    status
}

/// The notifications `told` makes, one per sink that wants it.
pub(super) fn notifications(teller: &Teller, job: &SyncJob, told: &Told) -> Vec<NotifyJob> {
    let app = &job.app;
    let about = About {
        repo: &job.repo,
        commit: &app.commit,
        environment: &app.environment,
        app: Some(&app.name),
    };
    teller.notifications(
        (about, &job.delivery),
        (told.event, &told.code),
        &told.description,
    )
}

/// What a job's end tells: the commit status, and the notification's event and stable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Told {
    pub state: StatusState,
    pub description: String,
    pub event: Event,
    pub code: String,
}

/// What a job that ended tells, `None` for ends that say nothing about the commit (held back
/// by a rollback's quarantine, a retry to come).
pub(super) fn ended(
    job: &SyncJob,
    result: &Result<Outcome, Error>,
    last_receive: bool,
) -> Option<Told> {
    let told = |state, description: String, event, code: &str| Told {
        state,
        description,
        event,
        code: code.to_owned(),
    };
    Some(match result {
        Ok(Outcome::Created { task_definition } | Outcome::Updated { task_definition }) => {
            let revision = task_definition_id(task_definition);
            let description = if job.app.rollout.wait {
                format!("deployed {revision}")
            } else {
                // It asked not to be watched: ECS accepted the update.
                format!("{revision} accepted by ECS, not watched")
            };
            told(
                StatusState::Success,
                description,
                Event::Deployed,
                "Deployed",
            )
        }
        Ok(Outcome::Unchanged) => told(
            StatusState::Success,
            "running this commit's spec".into(),
            Event::Deployed,
            "Unchanged",
        ),
        Ok(Outcome::Superseded { by }) => told(
            StatusState::Superseded,
            format!("superseded by {}", short(by)),
            Event::Superseded,
            "Superseded",
        ),
        Ok(Outcome::NotListed { head }) => told(
            StatusState::Superseded,
            format!("not listed at the branch head {}", short(head)),
            Event::Superseded,
            "NotListed",
        ),
        Ok(Outcome::Quarantined | Outcome::RolledBack { .. }) => return None,
        Err(Error::Waiting { .. } | Error::Interrupted) => return None,
        Err(e) if e.is_retryable() && !last_receive => return None,
        Err(e) => failure(e),
    })
}

/// What a failure for good tells.
pub(super) fn failure(e: &Error) -> Told {
    let (description, event) = if e.rolled_back() {
        (format!("rolled back: {e}"), Event::RolledBack)
    } else if matches!(e, Error::Preflight(_)) {
        (format!("{}: {e}", e.code()), Event::Refused)
    } else {
        (format!("{}: {e}", e.code()), Event::Failed)
    };
    Told {
        state: StatusState::Failure,
        description,
        event,
        code: e.code().to_owned(),
    }
}

/// Whether `apply` announces this end itself: a failure it marks on the service is announced
/// only when the mark is new, so reconcile meeting the same refusal every pass stays quiet.
pub(super) fn announced_by_apply(result: &Result<Outcome, Error>) -> bool {
    matches!(result, Err(e) if !e.rolled_back())
}

fn short(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> SyncJob {
        let mut app = crate::resolve::example_app();
        app.commit = "c2c2c2c2c2".into();
        SyncJob::new("platform", "staging", "d", app)
    }

    #[test]
    fn each_end_of_a_job_is_one_status_or_none() {
        let job = job();
        let ended = |result: Result<Outcome, Error>, last| super::ended(&job, &result, last);
        let superseded = Ok(Outcome::Superseded {
            by: "0123456789abcdef".into(),
        });
        let told = ended(superseded, false).unwrap();
        assert_eq!(
            (told.state, told.description.as_str(), told.event),
            (
                StatusState::Superseded,
                "superseded by 0123456",
                Event::Superseded
            )
        );
        let updated = Ok(Outcome::Updated {
            task_definition: "arn:aws:ecs:eu-west-1:1:task-definition/api:7".into(),
        });
        let told = ended(updated, false).unwrap();
        assert_eq!(
            (told.state, told.description.as_str()),
            (StatusState::Success, "deployed api:7")
        );
        assert_eq!(ended(Ok(Outcome::Quarantined), false), None);
        // A retry to come says nothing yet; the last receive's failure is the end.
        let draining = || Error::Draining {
            service: "api".into(),
        };
        assert_eq!(ended(Err(draining()), false), None);
        let told = ended(Err(draining()), true).unwrap();
        assert_eq!(
            (told.state, told.event),
            (StatusState::Failure, Event::Failed)
        );
        assert_eq!(told.code, "ServiceDraining");
        assert!(
            told.description.starts_with("ServiceDraining: "),
            "{told:?}"
        );
    }
}
