//! An app's past, read from ECS alone: its deployments (the task definition revisions
//! fleetsync registered, with their audit tags), and a rollback to one of them
//! (`POST /api/v1/rollback`).

use serde::Serialize;

use super::resync::Resolved;
use super::*;
use crate::ecs::Revision;
use crate::queue::RollbackJob;
use crate::sync::result as sync_result;

/// How many deployments history shows unless asked for fewer; the most ECS lists in one page.
pub const MAX_HISTORY: usize = 100;

/// The deployments of one app, newest first.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppHistory {
    pub repo: String,
    pub environment: String,
    pub app: String,
    pub family: String,
    pub service: String,
    pub deployments: Vec<Deployment>,
}

/// One revision of the app's task definition: what registered it, and how its rollout ended.
/// Fields fleetsync did not record (a revision registered by hand) are left out.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub revision: i32,
    pub task_definition: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_author: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<String>,
    /// `completed`, `rolled-back` or `failed`; absent while it rolls out, or when it was not
    /// watched (`rollout.wait: false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The revision the service runs now.
    pub live: bool,
    /// Deregistered since (prune, a teardown, by hand): a rollback to it registers a copy.
    pub deregistered: bool,
    /// Registered by fleetsync for this app's root and environment: only these are rollback
    /// targets.
    #[serde(skip)]
    ours: bool,
    /// The revision's `task-definition-hash` and `source` tags: what a rollback to it writes
    /// on the service.
    #[serde(skip)]
    task_definition_hash: String,
    #[serde(skip)]
    source: String,
}

impl Deployment {
    fn of(revision: Revision, live: Option<&str>, app: &DesiredApp) -> Self {
        let tag = |key: &str| revision.tags.get(key).filter(|v| !v.is_empty()).cloned();
        Deployment {
            revision: revision.number,
            live: live == Some(revision.id.as_str()),
            deregistered: !revision.active,
            commit: tag(tag::REVISION),
            trigger: tag(tag::TRIGGER),
            actor: tag(tag::ACTOR),
            commit_author: tag(tag::COMMIT_AUTHOR),
            reason: tag(tag::REASON),
            result: tag(tag::RESULT),
            registered_at: revision.registered_at.clone(),
            ours: tag(tag::ROOT).as_ref() == Some(&app.root)
                && tag(tag::ENVIRONMENT).as_ref() == Some(&app.environment)
                && revision.tags.get(tag::PREVIEW).is_none_or(String::is_empty),
            task_definition_hash: tag(tag::TASK_DEFINITION_HASH).unwrap_or_default(),
            source: tag(tag::SOURCE).unwrap_or_default(),
            task_definition: revision.id,
        }
    }
}

/// What a rollback was asked for: the app, the revision to return to (the newest earlier one
/// that completed when `None`), and who asks and why.
pub struct RollbackRequest<'a> {
    pub repo: &'a str,
    pub environment: &'a str,
    pub app: &'a str,
    pub to: Option<i32>,
    pub actor: &'a str,
    pub reason: &'a str,
}

/// A rollback enqueued.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackEnqueued {
    pub app: String,
    pub message_id: String,
    /// The revision returned to, and the commit it was registered from.
    pub to: String,
    pub commit: String,
    /// The commit rolled away from, quarantined until Git moves on.
    pub from: String,
}

impl Dispatcher {
    /// The newest `limit` deployments of `app` in `environment`.
    pub async fn history(
        &self,
        repo_name: &str,
        environment: &str,
        app: &str,
        limit: usize,
    ) -> Result<AppHistory, ResyncError> {
        let (resolved, desired) = self.app_at_head(repo_name, environment, app).await?;
        let live = self
            .ecs
            .describe_service(&desired.cluster, desired.service_name())
            .await
            .map_err(Error::Ecs)?;
        let deployments = self.deployments(&desired, live.as_ref(), limit).await?;
        Ok(AppHistory {
            repo: resolved.repo.config.name.clone(),
            environment: environment.to_owned(),
            app: app.to_owned(),
            family: desired.family().to_owned(),
            service: desired.service_name().to_owned(),
            deployments,
        })
    }

    /// Enqueues a rollback of one app to an earlier revision that completed its rollout.
    pub async fn rollback(
        &self,
        request: &RollbackRequest<'_>,
    ) -> Result<RollbackEnqueued, ResyncError> {
        let (resolved, app) = self
            .app_at_head(request.repo, request.environment, request.app)
            .await?;
        let live = self
            .ecs
            .describe_service(&app.cluster, app.service_name())
            .await
            .map_err(Error::Ecs)?
            .ok_or_else(|| {
                ResyncError::Conflict(format!(
                    "app `{}` has no service {} in cluster {} to roll back",
                    app.name,
                    app.service_name(),
                    app.cluster
                ))
            })?;
        let Some(from) = live.tags.get(tag::REVISION).filter(|c| !c.is_empty()) else {
            return Err(ResyncError::Conflict(format!(
                "service {} runs no commit fleetsync deployed; sync it first",
                app.service_name()
            )));
        };
        let deployments = self.deployments(&app, Some(&live), MAX_HISTORY).await?;
        let live_number = deployments.iter().find(|d| d.live).map(|d| d.revision);
        let completed = |d: &&Deployment| {
            d.ours && d.result.as_deref() == Some(sync_result::COMPLETED) && d.commit.is_some()
        };
        let target = match request.to {
            Some(number) => {
                let Some(found) = deployments.iter().find(|d| d.revision == number) else {
                    let known: Vec<String> =
                        deployments.iter().map(|d| d.revision.to_string()).collect();
                    return Err(ResyncError::Unknown(format!(
                        "no revision {number} of {} among the newest {MAX_HISTORY}: {}",
                        app.family(),
                        known.join(", ")
                    )));
                };
                if found.live {
                    return Err(ResyncError::Conflict(format!(
                        "{} already runs {}",
                        app.service_name(),
                        found.task_definition
                    )));
                }
                if !completed(&found) {
                    return Err(ResyncError::Conflict(format!(
                        "{} never completed a rollout of this app (its result: {}); roll back to one that did",
                        found.task_definition,
                        found.result.as_deref().unwrap_or("none recorded")
                    )));
                }
                found
            }
            None => deployments
                .iter()
                .filter(|d| live_number.is_none_or(|n| d.revision < n))
                .filter(|d| d.commit.as_deref() != Some(from.as_str()))
                .find(completed)
                .ok_or_else(|| {
                    ResyncError::Conflict(format!(
                        "no earlier revision of {} completed a rollout; GET its history, or pass `to`",
                        app.family()
                    ))
                })?,
        };
        let delivery = format!(
            "rollback-{}-{}",
            uuid::Uuid::new_v4().simple(),
            std::process::id()
        );
        let commit = target.commit.clone().unwrap_or_default();
        let job = RollbackJob {
            version: SyncJob::VERSION,
            kind: RollbackJob::KIND.to_owned(),
            repo: resolved.repo.config.name.clone(),
            delivery,
            root: app.root.clone(),
            environment: app.environment.clone(),
            cluster: app.cluster.clone(),
            app: app.name.clone(),
            service: app.service_name().to_owned(),
            to: target.task_definition.clone(),
            commit: commit.clone(),
            task_definition_hash: target.task_definition_hash.clone(),
            source: target.source.clone(),
            from: from.clone(),
            trigger: Trigger::new(TriggerKind::Rollback, request.actor)
                .because(request.reason)
                .about_commit(target.commit_author.as_deref().unwrap_or_default(), ""),
            rollout: app.rollout,
        };
        let message_id = self.queue.send_rollback(&job).await.map_err(Error::Queue)?;
        info!(message = "Rollback enqueued.", repo = %job.repo, environment = %job.environment, app = %job.app, to = %job.to, %commit, from = %job.from, actor = %request.actor, reason = %job.trigger.reason);
        Ok(RollbackEnqueued {
            app: job.app,
            message_id,
            to: job.to,
            commit,
            from: job.from,
        })
    }

    /// `app` of `environment` resolved at its branch head.
    async fn app_at_head(
        &self,
        repo_name: &str,
        environment: &str,
        app: &str,
    ) -> Result<(Resolved<'_>, DesiredApp), ResyncError> {
        let mut resolved = self.environment(repo_name, environment).await?;
        let Some(at) = resolved.state.apps.iter().position(|a| a.name == app) else {
            let known: Vec<&str> = resolved
                .state
                .apps
                .iter()
                .map(|a| a.name.as_str())
                .collect();
            return Err(ResyncError::Unknown(format!(
                "no app `{app}` in environment `{environment}` of repo `{repo_name}`; apps: {}",
                known.join(", ")
            )));
        };
        let desired = resolved.state.apps.swap_remove(at);
        Ok((resolved, desired))
    }

    /// The app's newest `limit` revisions as deployments, newest first; `live` is its service.
    async fn deployments(
        &self,
        app: &DesiredApp,
        live: Option<&LiveService>,
        limit: usize,
    ) -> Result<Vec<Deployment>, Error> {
        let live = live.map(|l| task_definition_id(&l.task_definition).to_owned());
        let revisions = self
            .ecs
            .revisions(app.family(), limit)
            .await
            .map_err(Error::Ecs)?;
        Ok(revisions
            .into_iter()
            .map(|r| Deployment::of(r, live.as_deref(), app))
            .collect())
    }
}
