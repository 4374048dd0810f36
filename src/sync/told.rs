//! The commit status a sync job's end means: what the author sees on the commit.

use super::{Error, Outcome};
use crate::ecs::task_definition_id;
use crate::feedback::Teller;
use crate::queue::{StatusJob, StatusState, SyncJob};

pub(super) fn app_status(
    teller: &Teller,
    job: &SyncJob,
    state: StatusState,
    description: &str,
) -> StatusJob {
    let app = &job.app;
    teller.status(
        (&job.repo, &app.commit),
        (&app.environment, Some(&app.name)),
        state,
        description,
    )
}

/// The status of a job that ended, `None` for ends that say nothing about the commit (held
/// back by a rollback's quarantine, a retry to come).
pub(super) fn ended(
    job: &SyncJob,
    result: &Result<Outcome, Error>,
    last_receive: bool,
) -> Option<(StatusState, String)> {
    Some(match result {
        Ok(Outcome::Created { task_definition } | Outcome::Updated { task_definition }) => {
            let revision = task_definition_id(task_definition);
            if job.app.rollout.wait {
                (StatusState::Success, format!("deployed {revision}"))
            } else {
                // It asked not to be watched: ECS accepted the update.
                (
                    StatusState::Success,
                    format!("{revision} accepted by ECS, not watched"),
                )
            }
        }
        Ok(Outcome::Unchanged) => (StatusState::Success, "running this commit's spec".into()),
        Ok(Outcome::Superseded { by }) => (
            StatusState::Superseded,
            format!("superseded by {}", short(by)),
        ),
        Ok(Outcome::NotListed { head }) => (
            StatusState::Superseded,
            format!("not listed at the branch head {}", short(head)),
        ),
        Ok(Outcome::Quarantined | Outcome::RolledBack { .. }) => return None,
        Err(Error::Waiting { .. } | Error::Interrupted) => return None,
        Err(e) if e.is_retryable() && !last_receive => return None,
        Err(e) if e.rolled_back() => (StatusState::Failure, format!("rolled back: {e}")),
        Err(e) => (StatusState::Failure, format!("{}: {e}", e.code())),
    })
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
        assert_eq!(
            ended(superseded, false),
            Some((StatusState::Superseded, "superseded by 0123456".into()))
        );
        let updated = Ok(Outcome::Updated {
            task_definition: "arn:aws:ecs:eu-west-1:1:task-definition/api:7".into(),
        });
        assert_eq!(
            ended(updated, false),
            Some((StatusState::Success, "deployed api:7".into()))
        );
        assert_eq!(ended(Ok(Outcome::Quarantined), false), None);
        // A retry to come says nothing yet; the last receive's failure is the end.
        let draining = || Error::Draining {
            service: "api".into(),
        };
        assert_eq!(ended(Err(draining()), false), None);
        let (state, description) = ended(Err(draining()), true).unwrap();
        assert_eq!(state, StatusState::Failure);
        assert!(
            description.starts_with("ServiceDraining: "),
            "{description}"
        );
    }
}
