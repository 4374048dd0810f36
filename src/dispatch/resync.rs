//! The API's trigger and reads: a sync asked for by a person (`POST /api/v1/sync`), an
//! environment's status (`GET /api/v1/status`), the queue's depth and the receiver's metrics.

use super::*;
use crate::metrics::{Family, Gauge, Registry};

/// How long a count of the queue's jobs is shown before SQS is asked again.
const DEPTH_TTL: Duration = Duration::from_secs(15);

impl Dispatcher {
    /// Enqueues every app of `environment` (or just `app`) at its branch head, whatever this
    /// receiver enqueued before: a sync asked for by a person through the API. A whole
    /// environment of a pruning root is pruned too.
    pub async fn resync(
        &self,
        repo_name: &str,
        environment: &str,
        apps: Option<&[String]>,
        (trigger, force): (&Trigger, bool),
    ) -> Result<Vec<Enqueued>, ResyncError> {
        // The branch's turn is held until the jobs are enqueued, as for a push.
        let Resolved {
            repo,
            branch,
            state,
            head,
            _turn,
        } = self.environment(repo_name, environment).await?;
        if let Some(apps) = apps {
            let unknown: Vec<&str> = apps
                .iter()
                .filter(|name| !state.apps.iter().any(|a| a.name == **name))
                .map(String::as_str)
                .collect();
            if !unknown.is_empty() {
                let listed: Vec<&str> = state.apps.iter().map(|a| a.name.as_str()).collect();
                return Err(ResyncError::Unknown(format!(
                    "no app `{}` in environment `{environment}`; it lists: {}",
                    unknown.join("`, `"),
                    listed.join(", ")
                )));
            }
        }
        let trigger = trigger.clone().about_commit(&head.author, &head.summary);
        let index = dependency_index(&state.apps);
        // Its own delivery id: an explicit request is never deduplicated into an earlier one.
        // Unique across receivers and restarts: SQS drops for five minutes a job whose
        // deduplication id (made from this) it has seen, even once the first was deleted.
        let delivery = format!("api-{}", uuid::Uuid::new_v4().simple());
        let delivery = format!("{delivery}-{}", std::process::id());
        let prune = apps
            .is_none()
            .then(|| prune_job(&repo.config.name, &branch, &delivery, &state))
            .flatten();
        let jobs: Vec<_> = state
            .apps
            .into_iter()
            .filter(|a| apps.is_none_or(|names| names.contains(&a.name)))
            .map(|a| {
                let mut job = SyncJob::new(&repo.config.name, &branch, &delivery, a)
                    .with_dependencies(&index)
                    .triggered_by(trigger.clone());
                job.force = force;
                job
            })
            .collect();
        let enqueued = self.queue.send(&jobs).await.map_err(Error::Queue)?;
        self.queue
            .send_prune(Vec::from_iter(prune).as_slice())
            .await
            .map_err(Error::Queue)?;
        Ok(enqueued)
    }

    /// Each app of `environment` at its branch head next to its service in ECS, and the jobs
    /// waiting in the dead-letter queue.
    pub async fn status(
        &self,
        repo_name: &str,
        environment: &str,
    ) -> Result<EnvironmentStatus, ResyncError> {
        let Resolved { branch, state, .. } = self.environment(repo_name, environment).await?;
        let names: Vec<&str> = state.apps.iter().map(|a| a.service_name()).collect();
        let live = self
            .ecs
            .describe_services(&state.cluster, &names)
            .await
            .map_err(Error::Ecs)?;
        let apps = state
            .apps
            .iter()
            .map(|app| status::app_status(app, live.get(app.service_name())))
            .collect();
        Ok(EnvironmentStatus {
            environment: state.environment,
            branch,
            commit: state.commit,
            cluster: state.cluster,
            apps,
            dead_letters: self.dead_letters().await,
        })
    }

    /// Every environment the watched repos declare on their default branch (fetched now), as
    /// (repo, environment), in config order. A repo whose default branch cannot be fetched
    /// fails the whole answer: a partial list would read as environments gone.
    pub async fn declared(&self) -> Result<Vec<(String, String)>, Error> {
        let mut declared = Vec::new();
        for repo in &self.repos {
            let (mirror, config) = (repo.mirror.clone(), repo.config.clone());
            let bindings =
                tokio::task::spawn_blocking(move || environment_bindings(&mirror, &config))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))??
                    .unwrap_or_default();
            declared.extend(
                bindings
                    .into_iter()
                    .map(|(environment, _)| (repo.config.name.clone(), environment)),
            );
        }
        Ok(declared)
    }

    /// Jobs in the dead-letter queue; `None` when there is no dead-letter queue or it cannot
    /// be read.
    pub async fn dead_letters(&self) -> Option<u64> {
        self.queue_depth().await.dead_letters
    }

    /// The queue's and the dead-letter queue's jobs, read at most every [`DEPTH_TTL`] however
    /// often metrics are scraped and status is asked for.
    pub async fn queue_depth(&self) -> QueueDepth {
        let mut cached = self.queue_depth.lock().await;
        if let Some((at, depth)) = *cached
            && at.elapsed() < DEPTH_TTL
        {
            return depth;
        }
        // Bounded: scrapes and status requests wait behind this one.
        let read = async {
            let (jobs, dead_letters) = tokio::join!(self.queue.depth(), self.queue.dead_letters());
            QueueDepth {
                jobs: jobs
                    .inspect_err(|e| warn!(message = "Cannot count the queue's jobs.", error = %e))
                    .ok(),
                dead_letters: dead_letters
                    .inspect_err(
                        |e| warn!(message = "Cannot count the dead-letter queue.", error = %e),
                    )
                    .ok()
                    .flatten(),
            }
        };
        let depth = tokio::time::timeout(DEPTH_TTL / 5, read)
            .await
            .unwrap_or_else(|_| {
                warn!(message = "Cannot count the queue's jobs: SQS did not answer in time.");
                QueueDepth::default()
            });
        *cached = Some((Instant::now(), depth));
        depth
    }

    /// What a receiver's scrape adds: each mirror's fetches and the queue's depth.
    pub async fn register_metrics(&self, registry: &mut Registry) {
        repo::register_fetch_metrics(
            self.repos
                .iter()
                .map(|r| (r.config.name.as_str(), &*r.mirror)),
            registry,
        );
        let depth = self.queue_depth().await;
        if let Some(jobs) = depth.jobs {
            let by_state = Family::<[(&'static str, &'static str); 1], Gauge>::default();
            for (state, count) in [
                ("visible", jobs.visible),
                ("in_flight", jobs.in_flight),
                ("delayed", jobs.delayed),
            ] {
                by_state
                    .get_or_create(&[("state", state)])
                    .set(gauge(count));
            }
            registry.register(
                "fleetsync_queue_jobs",
                "Jobs in the queue by state, as SQS approximates them (at most 15 s old)",
                by_state,
            );
        }
        if let Some(count) = depth.dead_letters {
            let dead = Gauge::<i64>::default();
            dead.set(gauge(count));
            registry.register(
                "fleetsync_dead_letter_jobs",
                "Jobs in the dead-letter queue the queue's redrive policy names (at most 15 s old)",
                dead,
            );
        }
    }

    /// `environment` of `repo_name` resolved at its branch head, as of the bindings on the
    /// default branch, with its branch's turn: pushes to the branch wait until it is dropped.
    pub(super) async fn environment(
        &self,
        repo_name: &str,
        environment: &str,
    ) -> Result<Resolved<'_>, ResyncError> {
        let Some(repo) = self.repos.iter().find(|r| r.config.name == repo_name) else {
            let known: Vec<_> = self.repos.iter().map(|r| r.config.name.as_str()).collect();
            return Err(ResyncError::Unknown(format!(
                "no repo `{repo_name}` in the server config; known: {}",
                known.join(", ")
            )));
        };
        let (mirror, config) = (repo.mirror.clone(), repo.config.clone());
        let bindings = tokio::task::spawn_blocking(move || environment_bindings(&mirror, &config))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??
            .unwrap_or_default();
        let Some(branch) = bindings
            .iter()
            .find(|(name, _)| name == environment)
            .map(|(_, branch)| branch.clone())
        else {
            let known: Vec<_> = bindings.iter().map(|(name, _)| name.as_str()).collect();
            return Err(ResyncError::Unknown(format!(
                "no environment `{environment}` in repo `{repo_name}`; declared on its default branch: {}",
                known.join(", ")
            )));
        };
        let entry = self.branch_state(&repo.config.name, &branch);
        let guard = entry.last.clone().lock_owned().await;
        let turn = (entry, guard);
        let Plan::Resolved { results, head, .. } = self.plan(repo, &branch).await? else {
            return Err(ResyncError::Unknown(format!(
                "branch `{branch}` of environment `{environment}` does not exist"
            )));
        };
        let Some(EnvironmentResult { result, .. }) = results
            .into_iter()
            .find(|r| r.environment.as_deref().is_none_or(|n| n == environment))
        else {
            return Err(ResyncError::Unknown(format!(
                "environment `{environment}` is not bound to branch `{branch}`"
            )));
        };
        let state = result.map_err(|problems| {
            ResyncError::Invalid(problems.iter().map(Problem::to_string).collect())
        })?;
        Ok(Resolved {
            repo,
            branch,
            state,
            head,
            _turn: turn,
        })
    }
}

/// An environment resolved at its branch head, and the branch's turn.
pub(super) struct Resolved<'a> {
    pub(super) repo: &'a WatchedRepo,
    pub(super) branch: String,
    pub(super) state: DesiredState,
    pub(super) head: repo::CommitInfo,
    /// The branch's entry too: while it is held, `branch_state` does not forget it.
    _turn: (
        Arc<BranchState>,
        tokio::sync::OwnedMutexGuard<Option<LastAnswer>>,
    ),
}

/// The queue's jobs by state, and the dead-letter queue's; `None` where SQS could not say.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueDepth {
    pub jobs: Option<crate::queue::Depth>,
    pub dead_letters: Option<u64>,
}

fn gauge(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// What `GET /api/v1/status` shows for an environment.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentStatus {
    pub environment: String,
    pub branch: String,
    pub commit: String,
    pub cluster: String,
    pub apps: Vec<status::AppStatus>,
    /// Jobs of any environment in the dead-letter queue; absent when it cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<u64>,
}

/// Why an API sync enqueued nothing.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    /// No such repo, environment or app: the message says which, and what exists.
    #[error("{0}")]
    Unknown(String),
    #[error("the environment does not resolve")]
    Invalid(Vec<String>),
    /// The request cannot be applied to what runs (nothing to roll back to, say): the message
    /// says why and what to do.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Failed(#[from] Error),
}
