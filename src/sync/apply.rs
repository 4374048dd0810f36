//! Applies one job to ECS: register the task definition if its spec is new, create or update
//! the service, wait for the rollout, roll back if it fails.
//!
//! Every step can be repeated after a crash: the hash tags on the live task definition and
//! service say what is already there, so a retried job re-does only what is missing.

use crate::resolve::SourceUse;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Error, status, told};
use crate::ecs::{self, Ecs, LiveService, task_definition_id};
use crate::feedback::Teller;
use crate::preflight::Preflight;
use crate::queue::job::RECONCILE_DELIVERY;
use crate::queue::{StatusState, SyncJob, TriggerKind};
use crate::resolve::{DesiredApp, tag};

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
    /// The service already runs a newer commit of the same branch; nothing was written.
    Superseded {
        by: String,
    },
    /// A reconcile job for a spec whose rollout failed and was rolled back; nothing was
    /// written. Only a push or the API applies it again.
    Quarantined,
    /// The job's commit is the one an operator rolled back from; nothing was written. A newer
    /// commit, or a sync through the API, applies it again.
    RolledBack {
        from: String,
    },
    /// The service does not exist and the branch no longer wants it: its head `head` dropped
    /// the job's commit (a force-push) or no longer lists the app (prune may have deleted it
    /// already). Nothing was created.
    NotListed {
        head: String,
    },
}

/// Commit ancestry, so a job for an older commit never overwrites a newer one: receivers and
/// SQS redeliveries do not keep jobs of one branch in commit order.
pub trait History: Sync {
    /// The commit that makes this job stale, if any: the live commit when it descends from the
    /// job's and is still on the branch, or the branch head when the job's commit has left the
    /// branch (a force-push). `Ok(None)` (apply) when neither, or the job's commit is unknown
    /// (newer than anything fetched); `Err` (try again later) when git cannot be reached and
    /// what was fetched before cannot order the two.
    fn superseded_by(
        &self,
        job: &SyncJob,
        live: &str,
    ) -> impl Future<Output = Result<Option<String>, String>> + Send;

    /// The same for the other repo an app is read from, when the service runs the job's config
    /// commit: `live` is the commit of `source.repo` it was read at.
    fn source_superseded_by(
        &self,
        source: &SourceUse,
        live: &str,
    ) -> impl Future<Output = Option<String>> + Send;

    /// Whether `commit` is the head of `branch` of `repo` and `live` is `commit` or one of its
    /// ancestors; `None` when it cannot tell. Prune acts only as of the head: a newer push
    /// sends its own prune job, and may list again what an older one dropped.
    fn head_includes(
        &self,
        repo: &str,
        branch: &str,
        commit: &str,
        live: &str,
    ) -> impl Future<Output = Option<bool>> + Send;

    /// Before creating the job's service: the branch head when it no longer wants the app
    /// (the job's commit left the branch, or the head's resolve does not list the app); `None`
    /// (create) when it does, or it cannot tell. A late, waiting or redriven job must not bring
    /// back what prune deleted, nor create an app at a commit prune will never look at.
    fn unlisted_at_head(&self, job: &SyncJob) -> impl Future<Output = Option<String>> + Send;
}

/// Where a failed rollout returns to.
struct Rollback {
    service_arn: String,
    /// The task definition the service ran before; `None` when there is nothing to go back to.
    task_definition: Option<String>,
    /// The service's `spec-hash`, `task-definition-hash`, `revision` and `source` tags for that
    /// task definition.
    tags: Vec<(String, String)>,
    /// The UpdateService fields the failed spec changed, as the service had them before.
    settings: Map<String, Value>,
    /// Fields the failed spec changed that cannot be put back: their earlier value is unknown.
    kept: Vec<String>,
}

impl Rollback {
    /// Back to what `live` ran before `target`, when the attempt that knew its tags is gone:
    /// they are cleared, so reconcile reads the service as drifted rather than trust them.
    /// Its service settings are unknown too: those the spec sets stay.
    fn to_before(app: &DesiredApp, live: &LiveService, target: &str) -> Rollback {
        Rollback {
            service_arn: live.arn.clone(),
            task_definition: previous_task_definition(live, target),
            tags: ROLLBACK_TAGS
                .map(|k| (k.to_owned(), String::new()))
                .to_vec(),
            settings: Map::new(),
            kept: settable(app).map(str::to_owned).collect(),
        }
    }
}

/// The UpdateService fields of `app`'s spec besides the service and its task definition.
fn settable(app: &DesiredApp) -> impl Iterator<Item = &str> {
    app.update_service.keys().map(String::as_str).filter(|k| {
        !matches!(
            *k,
            "cluster" | "service" | "taskDefinition" | "forceNewDeployment"
        )
    })
}

/// What a rollback sends back besides the task definition: each field `app` sets to another
/// value than `live` has, with `live`'s, and the fields whose earlier value ECS did not show.
fn settings_before(app: &DesiredApp, live: &LiveService) -> (Map<String, Value>, Vec<String>) {
    let mut settings = Map::new();
    let mut kept = Vec::new();
    for key in settable(app) {
        let before = match key {
            "desiredCount" => Some(json!(live.desired_count)),
            // ECS leaves a list it has no entries for out of its answer.
            "loadBalancers"
            | "serviceRegistries"
            | "placementConstraints"
            | "placementStrategy"
            | "capacityProviderStrategy"
            | "volumeConfigurations"
            | "vpcLatticeConfigurations" => {
                Some(live.settings.get(key).cloned().unwrap_or(json!([])))
            }
            // What ECS documents for a field it leaves out of its answer when it was never set.
            "healthCheckGracePeriodSeconds" => {
                Some(live.settings.get(key).cloned().unwrap_or(json!(0)))
            }
            "enableExecuteCommand" | "enableECSManagedTags" => {
                Some(live.settings.get(key).cloned().unwrap_or(json!(false)))
            }
            "propagateTags" => Some(live.settings.get(key).cloned().unwrap_or(json!("NONE"))),
            "serviceConnectConfiguration" => Some(
                live.settings
                    .get(key)
                    .cloned()
                    .unwrap_or(json!({"enabled": false})),
            ),
            _ => live.settings.get(key).cloned(),
        };
        match before {
            Some(before) if before == app.update_service[key] => {}
            Some(before) => {
                settings.insert(key.to_owned(), before);
            }
            None => kept.push(key.to_owned()),
        }
    }
    (settings, kept)
}

/// The service tags a rollback restores.
const ROLLBACK_TAGS: [&str; 4] = [
    tag::SPEC_HASH,
    tag::TASK_DEFINITION_HASH,
    tag::REVISION,
    tag::SOURCE,
];

/// How many times a job is put back to wait for its `dependsOn` before it fails: with the
/// default 5 s poll, over an hour, well past any dependency's rollout timeout.
pub const MAX_DEPENDENCY_WAITS: u32 = 20;

/// Which receive of its message a job is on.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// From 1: SQS's receive count.
    pub number: u32,
    /// The attempt at which waiting for `dependsOn` ends in failure: before the queue's redrive
    /// policy would move the job to the dead-letter queue unmarked.
    pub last_wait: u32,
    /// This receive has waited for `dependsOn` as long as a job may: the next wait fails it.
    pub out_of_patience: bool,
    /// The queue's redrive policy moves the message to the dead-letter queue after this
    /// receive: a retryable failure is marked on the service like a final one.
    pub last_receive: bool,
}

impl Attempt {
    pub fn first() -> Self {
        Attempt {
            number: 1,
            last_wait: MAX_DEPENDENCY_WAITS,
            out_of_patience: false,
            last_receive: false,
        }
    }
}

/// How a job's rollout is watched, and who is told it rolls out.
#[derive(Clone, Copy)]
pub struct Watch<'a> {
    pub poll: Duration,
    /// Asks the job to end at its next step (see [`super::Worker`]'s heartbeat).
    pub stop: &'a CancellationToken,
    /// Where the commit status "rolling out" goes; `None`: nowhere.
    pub teller: Option<&'a Teller>,
}

pub async fn apply(
    ecs: &Ecs,
    preflight: &Preflight,
    history: &impl History,
    job: &SyncJob,
    attempt: Attempt,
    watch: Watch<'_>,
) -> Result<Outcome, Error> {
    let result = apply_once(ecs, preflight, history, job, attempt, watch).await;
    if let Err(e) = &result
        && (!e.is_retryable()
            || (attempt.last_receive && !matches!(e, Error::Waiting { .. } | Error::Interrupted)))
        && !e.rolled_back()
        && !matches!(
            e,
            Error::OwnedElsewhere { .. } | Error::NotThePreviews { .. }
        )
    {
        // Announced where it is marked, once per mark: reconcile meeting the same refusal on
        // every pass stays quiet.
        if let Some(teller) = watch.teller
            && let Some(times) = record_failure(ecs, job, e, teller).await
        {
            let mut told = told::failure(e);
            if times > 0 {
                told.description = format!("still failing (told {times}×): {}", told.description);
            }
            teller.notify(told::notifications(teller, job, &told)).await;
        }
    }
    result
}

/// Marks a spec that failed for good on its service (true: a mark it did not have yet), when there is one, for the status API and
/// reconcile's quarantine (`status::quarantined`). A rollback marks its own, with the tags it
/// restores.
async fn record_failure(ecs: &Ecs, job: &SyncJob, failure: &Error, teller: &Teller) -> Option<u32> {
    let app = &job.app;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let marked = async {
        let Some(live) = ecs
            .describe_service(&app.cluster, app.service_name())
            .await?
        else {
            return Ok(Some(0));
        };
        // The same failure of the same spec, marked by an earlier attempt: news again only
        // as a reminder.
        let known = live.tags.get(tag::FAILED_SPEC_HASH) == Some(&app.spec_hash)
            && live
                .tags
                .get(tag::FAILURE)
                .is_some_and(|m| m.starts_with(&format!("{} {} ", failure.code(), app.commit)));
        let told = live.tags.get(tag::FAILURE_TOLD).map(String::as_str);
        let (times, told) = teller.remind(known, told, now);
        let mut tags = failure_tags(job, failure);
        tags.push((tag::FAILURE_TOLD.to_owned(), told));
        ecs.tag_resource(&live.arn, &tags).await?;
        Ok::<_, ecs::Error>(times)
    };
    marked.await.unwrap_or_else(|e| {
        warn!(message = "Cannot mark the failed spec on its service.", error = %e);
        Some(0)
    })
}

fn failure_tags(job: &SyncJob, failure: &Error) -> Vec<(String, String)> {
    let delivery = status::delivery_digest(&job.delivery);
    vec![
        (tag::FAILED_SPEC_HASH.to_owned(), job.app.spec_hash.clone()),
        (
            tag::FAILURE.to_owned(),
            format!("{} {} {delivery}", failure.code(), job.app.commit),
        ),
        (
            tag::CAUSE.to_owned(),
            failure.diagnosis().map_or_else(String::new, |d| {
                tag::value(&format!("{}: {}. Fix: {}", d.code, d.cause, d.fix))
            }),
        ),
    ]
}

async fn apply_once(
    ecs: &Ecs,
    preflight: &Preflight,
    history: &impl History,
    job: &SyncJob,
    attempt: Attempt,
    watch: Watch<'_>,
) -> Result<Outcome, Error> {
    let (poll, stop) = (watch.poll, watch.stop);
    let app = &job.app;
    let live = ecs
        .describe_service(&app.cluster, app.service_name())
        .await?;
    if live.as_ref().is_some_and(|l| l.draining) {
        // Deleted by prune (or by hand) moments ago: ECS refuses to update it and to create
        // its name again until it is INACTIVE.
        return Err(Error::Draining {
            service: app.service_name().to_owned(),
        });
    }

    // Two environments of a root bound to one cluster resolve to the same services, and would
    // take them from each other on every push and reconcile: the first to deploy one keeps it.
    // A service of an environment the root no longer binds there (renamed, moved) is taken.
    if let Some(live) = &live {
        let owner = |key| live.tags.get(key).filter(|v| !v.is_empty());
        if let (Some(root), Some(environment)) = (owner(tag::ROOT), owner(tag::ENVIRONMENT))
            && *root == app.root
            && app.neighbours.contains(environment)
        {
            return Err(Error::OwnedElsewhere {
                service: app.service_name().to_owned(),
                cluster: app.cluster.clone(),
                root: root.clone(),
                environment: environment.clone(),
            });
        }
    }

    // A preview writes only its own services; an environment never writes a preview's.
    // Previews of several repos may share a cluster: the root tells them apart.
    if let Some(live) = &live
        && (live.tags.get(tag::PREVIEW).map(String::as_str)
            != app.preview.map(|n| n.to_string()).as_deref()
            || (app.preview.is_some() && live.tags.get(tag::ROOT) != Some(&app.root)))
    {
        return Err(Error::NotThePreviews {
            service: app.service_name().to_owned(),
            cluster: app.cluster.clone(),
            preview: app.preview,
        });
    }

    // An operator rolled this commit back: a redelivered push or a reconcile must not bring
    // it back. A newer commit, or a sync asked for through the API, does.
    if let Some(live) = &live
        && live.tags.get(tag::ROLLED_BACK_FROM) == Some(&app.commit)
        && job.trigger.kind != TriggerKind::Api
    {
        return Ok(Outcome::RolledBack {
            from: app.commit.clone(),
        });
    }

    if let Some(live_commit) = live.as_ref().and_then(|l| l.tags.get(tag::REVISION))
        && !live_commit.is_empty()
        && *live_commit != app.commit
    {
        match history.superseded_by(job, live_commit).await {
            Ok(Some(by)) => return Ok(Outcome::Superseded { by }),
            Ok(None) => {}
            // Applying could put an older commit over a newer one.
            Err(reason) => {
                return Err(Error::Unordered {
                    service: app.service_name().to_owned(),
                    live: live_commit.clone(),
                    reason,
                });
            }
        }
    }
    if let Some(live) = &live
        && let Some(source) = &app.source
        && live.tags.get(tag::REVISION) == Some(&app.commit)
        && let Some(live_source) = live
            .tags
            .get(tag::SOURCE)
            .and_then(|s| s.strip_prefix(&format!("{}@", source.repo)))
        && live_source != source.commit
        && let Some(by) = history.source_superseded_by(source, live_source).await
    {
        return Ok(Outcome::Superseded {
            by: format!("{}@{by}", source.repo),
        });
    }

    // A redelivery of this very job after its rollout failed (a crash between the rollback and
    // the delete, an expired receipt): the failed spec is never deployed again, and a rollback
    // a crash cut short is finished.
    if let Some(live) = &live
        && let Some(mark) = status::marked_failure(live, &app.spec_hash)
        && status::is_rollout(mark.code)
        && mark.commit == Some(app.commit.as_str())
        && mark.delivery == Some(status::delivery_digest(&job.delivery).as_str())
    {
        if live.tags.get(tag::SPEC_HASH) != Some(&app.spec_hash) {
            return Ok(Outcome::Quarantined);
        }
        let target = live.task_definition.clone();
        let rollback = Rollback::to_before(app, live, &target);
        let failure = Error::RolloutFailed {
            service: app.service_name().to_owned(),
            task_definition: task_definition_id(&target).to_owned(),
            reason: format!(
                "{}; the rollback was finished by a later attempt",
                mark.code
            ),
            diagnosis: None,
            rolled_back_to: None,
        };
        return Err(roll_back(ecs, job, Some(rollback), failure).await);
    }

    // Reconcile may have queued this spec while its rollout was failing (behind it in the
    // FIFO group): a spec that was just rolled back must not run a second time.
    if let Some(live) = &live
        && job.delivery.starts_with(RECONCILE_DELIVERY)
        && live.tags.get(tag::SPEC_HASH) != Some(&app.spec_hash)
        && status::quarantined(live, &app.spec_hash)
    {
        return Ok(Outcome::Quarantined);
    }

    if let Some(live) = &live
        && live.tags.get(tag::SPEC_HASH) == Some(&app.spec_hash)
        && !task_definition_changed_elsewhere(live)
        && !(job.force && settled(live))
    {
        // A previous attempt may have died, or handed the job over at shutdown, while the
        // rollout ran: finish watching it and act as that attempt would have. A settled
        // service needs no second look: a no-op job is one read.
        if app.rollout.wait && !settled(live) {
            let target = live.task_definition.clone();
            let rollback = Rollback::to_before(app, live, &target);
            // The attempt that started it is gone; its update recorded the deployment's id.
            let recorded = live.tags.get(tag::DEPLOYMENT).filter(|d| !d.is_empty());
            let ours = Ours {
                task_definition: &target,
                deployment: recorded.map(String::as_str),
            };
            watch_or_roll_back(ecs, job, ours, Some(rollback), poll, stop).await?;
        }
        return Ok(Outcome::Unchanged);
    }

    // `dependsOn`: applied only once every dependency runs this commit's spec (or a newer
    // commit's of the branch), settled.
    let waiting = waiting_for(ecs, history, job).await?;
    if !waiting.is_empty() {
        return Err(
            if attempt.number >= attempt.last_wait || attempt.out_of_patience {
                Error::DependenciesNotLive {
                    on: waiting.into_iter().map(|(name, _)| name).collect(),
                }
            } else {
                Error::Waiting {
                    on: waiting.into_iter().map(|(_, why)| why).collect(),
                }
            },
        );
    }

    if live.is_none()
        && let Some(head) = history.unlisted_at_head(job).await
    {
        return Ok(Outcome::NotListed { head });
    }

    // Only before a write: a job whose spec is live costs no preflight reads.
    let mut session = preflight.session(&job.delivery);
    if live.is_some() {
        session.cluster_is_active(&app.cluster); // DescribeServices found the service in it
    }
    let findings = session.check(app).await?;
    if !findings.is_empty() {
        return Err(Error::Preflight(findings));
    }

    // The writes start here; from now on a stop waits for the next step.
    if stop.is_cancelled() {
        return Err(Error::Interrupted);
    }
    let mut task_definition =
        match reusable_task_definition(ecs, job, live.as_ref(), attempt.number).await? {
            Some(arn) => arn,
            None => {
                let mut input = app.register_task_definition.clone();
                append_tags(&mut input, &job.trigger.tags());
                ecs.register_task_definition(&input).await?
            }
        };
    info!(message = "Task definition ready.", event = "registered", %task_definition);

    let rollback = live.as_ref().map(|live| {
        let previous = previous_task_definition(live, &task_definition);
        let (settings, kept) = settings_before(app, live);
        // The tags describe the revision they name, not one set in the console since.
        let described = previous.as_deref().is_some_and(|p| {
            live.tags
                .get(tag::TASK_DEFINITION)
                .is_some_and(|t| task_definition_id(t) == task_definition_id(p))
        });
        Rollback {
            service_arn: live.arn.clone(),
            task_definition: previous,
            tags: ROLLBACK_TAGS
                .map(|k| {
                    let value = live.tags.get(k).filter(|_| described);
                    (k.to_owned(), value.cloned().unwrap_or_default())
                })
                .to_vec(),
            settings,
            kept,
        }
    });
    // A copy of a deregistered revision is this job's deployment: its own trail, no result yet.
    let mut audit = job.trigger.tags();
    audit.push((tag::RESULT.to_owned(), String::new()));
    let (outcome, deployment) = match &live {
        None => {
            let create = |revision: String| {
                let mut input = app.create_service.clone();
                let id = task_definition_id(&revision).to_owned();
                append_tags(&mut input, &[(tag::TASK_DEFINITION.to_owned(), id)]);
                append_tags(&mut input, &job.trigger.tags());
                input.insert("taskDefinition".into(), Value::String(revision));
                async move { ecs.create_service(&input).await }
            };
            let deployment = deploying(ecs, &mut task_definition, &audit, create).await?;
            (
                Outcome::Created {
                    task_definition: task_definition.clone(),
                },
                deployment,
            )
        }
        Some(live) => {
            let mut input = app.update_service.clone();
            input.insert(
                "taskDefinition".into(),
                Value::String(task_definition.clone()),
            );
            if job.force {
                input.insert("forceNewDeployment".into(), Value::Bool(true));
            }
            let (deployment, revision) = update_service(ecs, input, &audit).await?;
            task_definition = revision;
            // Tagged after the update: a crash in between leaves the old hash, so the retry
            // repeats the (idempotent) update instead of believing it happened.
            let mut tags = app.service_tags();
            tags.push((
                tag::TASK_DEFINITION.into(),
                task_definition_id(&task_definition).to_owned(),
            ));
            tags.push((
                tag::DEPLOYMENT.into(),
                deployment.clone().unwrap_or_default(),
            ));
            tags.extend(job.trigger.tags());
            // Git moved on from the commit rolled back (or a person asked for it again).
            if live
                .tags
                .get(tag::ROLLED_BACK_FROM)
                .is_some_and(|c| !c.is_empty())
            {
                tags.push((tag::ROLLED_BACK_FROM.into(), String::new()));
            }
            // An app moved back into the config repo no longer comes from elsewhere.
            if app.source.is_none() && live.tags.get(tag::SOURCE).is_some_and(|s| !s.is_empty()) {
                tags.push((tag::SOURCE.into(), String::new()));
            }
            // A spec applied again after it failed (through the API, say) is no longer failed;
            // if this rollout fails too, the rollback marks it again.
            if live.tags.get(tag::FAILED_SPEC_HASH) == Some(&app.spec_hash) {
                for key in [
                    tag::FAILED_SPEC_HASH,
                    tag::FAILURE,
                    tag::FAILURE_TOLD,
                    tag::CAUSE,
                ] {
                    tags.push((key.into(), String::new()));
                }
            }
            // Tags an earlier spec had go first: with other tooling's tags beside ours, the
            // new ones may fit only once they are gone.
            // Not fatal: the update happened, and failing here would repeat it on every retry
            // (a role without ecs:UntagResource, say); the stale tags only stay.
            let stale = app.stale_tags(&live.tags);
            if !stale.is_empty()
                && let Err(e) = ecs.untag_resource(&live.arn, &stale).await
            {
                warn!(message = "Cannot remove tags the spec no longer has; they stay on the service.", service = %app.service_name(), tags = ?stale, error = %e);
            }
            ecs.tag_resource(&live.arn, &tags).await?;
            (
                Outcome::Updated {
                    task_definition: task_definition.clone(),
                },
                deployment,
            )
        }
    };

    info!(message = "Rolling out.", event = "rolling_out", task_definition = %task_definition_id(&task_definition), deployment = deployment.as_deref().unwrap_or_default());
    if app.rollout.wait {
        if let Some(teller) = watch.teller {
            let description = format!("rolling out {}", task_definition_id(&task_definition));
            teller
                .tell(vec![told::app_status(
                    teller,
                    job,
                    StatusState::RollingOut,
                    &description,
                )])
                .await;
        }
        let ours = Ours {
            task_definition: &task_definition,
            deployment: deployment.as_deref(),
        };
        watch_or_roll_back(ecs, job, ours, rollback, poll, stop).await?;
    }
    Ok(outcome)
}

/// Adds `tags` to an input's `tags` list.
fn append_tags(input: &mut Map<String, Value>, tags: &[(String, String)]) {
    if let Value::Array(list) = input
        .entry("tags")
        .or_insert_with(|| Value::Array(Vec::new()))
    {
        list.extend(tags.iter().map(|(k, v)| json!({"key": k, "value": v})));
    }
}

/// Records how the rollout of `revision` ended on the revision itself, for history and for
/// choosing what a rollback returns to. Not fatal: the rollout's outcome stands, and its
/// service's tags say the same.
pub(super) async fn record_result(ecs: &Ecs, service_arn: &str, revision: &str, result: &str) {
    let arn = task_definition_arn(service_arn, revision);
    let tags = [(tag::RESULT.to_owned(), result.to_owned())];
    if let Err(e) = ecs.tag_resource(&arn, &tags).await {
        warn!(message = "Cannot record the rollout's result on its task definition; history shows it without one.", task_definition = %task_definition_id(revision), result, error = %e);
    }
}

/// A revision's ARN: ECS names revisions by ARN everywhere fleetsync reads them, but a
/// `family:revision` (a service's tag) is turned into one in the service's region and account.
fn task_definition_arn(service_arn: &str, revision: &str) -> String {
    if revision.starts_with("arn:") {
        return revision.to_owned();
    }
    let prefix = service_arn.split(':').take(5).collect::<Vec<_>>().join(":");
    format!("{prefix}:task-definition/{}", task_definition_id(revision))
}

/// UpdateService with `input`; returns the id of the deployment it started and the revision
/// the service now runs (see [`deploying`]).
pub(super) async fn update_service(
    ecs: &Ecs,
    input: Map<String, Value>,
    overrides: &[(String, String)],
) -> Result<(Option<String>, String), ecs::Error> {
    let mut revision = input["taskDefinition"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let update = |revision: String| {
        let mut input = input.clone();
        input.insert("taskDefinition".into(), Value::String(revision));
        async move { ecs.update_service(&input).await }
    };
    let deployment = deploying(ecs, &mut revision, overrides, update).await?;
    Ok((deployment, revision))
}

/// CreateService or UpdateService (`call`) with `revision`; the id of the deployment it started.
/// A revision deregistered since it was chosen (by prune, by hand, by other tooling) starts no
/// deployment: a copy of it is registered (its tags replaced by `overrides`), `revision`
/// becomes the copy and the call is sent again.
async fn deploying<F, Fut>(
    ecs: &Ecs,
    revision: &mut String,
    overrides: &[(String, String)],
    call: F,
) -> Result<Option<String>, ecs::Error>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Option<String>, ecs::Error>>,
{
    match call(revision.clone()).await {
        Err(e) if e.is_inactive_task_definition() => {
            let copy = ecs.copy_task_definition(revision, overrides).await?;
            info!(message = "Revision was deregistered; registered a copy of it.", revision = %task_definition_id(revision), copy = %task_definition_id(&copy));
            *revision = copy;
            call(revision.clone()).await
        }
        other => other,
    }
}

/// A registered revision of this task definition, so none is registered twice: the one the
/// service runs when its tags say it has this hash (a change to the service alone), else the
/// family's latest when it has this hash, looked up only when one may exist: on a retry (the
/// first attempt may have registered and died) or when the service runs another revision than
/// its tags say (a crash between update and tag, or a change in the console). Reused only
/// within its root and environment, so a revision runs only in the cluster its tags name and
/// prune can see every service that runs it.
async fn reusable_task_definition(
    ecs: &Ecs,
    job: &SyncJob,
    live: Option<&LiveService>,
    attempt: u32,
) -> Result<Option<String>, Error> {
    let app = &job.app;
    let ours = |tags: &std::collections::HashMap<String, String>| {
        tags.get(tag::ROOT) == Some(&app.root)
            && tags.get(tag::ENVIRONMENT) == Some(&app.environment)
    };
    if let Some(live) = live
        && live.tags.get(tag::TASK_DEFINITION_HASH) == Some(&app.task_definition_hash)
        && live.tags.contains_key(tag::TASK_DEFINITION)
        && ours(&live.tags)
        && !task_definition_changed_elsewhere(live)
    {
        return Ok(Some(live.task_definition.clone()));
    }
    // A revision of this hash may exist when an earlier attempt or job registered it and then
    // failed: a retry, a create, a spec marked failed (reconcile sends it again), or a service
    // left on another revision than its tags say (a crash between update and tag).
    let may_exist = attempt > 1
        || live.is_none_or(|live| {
            task_definition_changed_elsewhere(live)
                || status::marked_failure(live, &app.spec_hash).is_some()
        });
    if !may_exist {
        return Ok(None);
    }
    Ok(ecs
        .describe_task_definition(app.family())
        .await?
        .filter(|td| {
            td.tags.get(tag::TASK_DEFINITION_HASH) == Some(&app.task_definition_hash)
                && ours(&td.tags)
        })
        .map(|td| td.arn))
}

/// The dependencies of `job` that do not yet run the spec it needs, with its rollout settled,
/// each with what it waits for. A dependency that runs a newer commit of the branch, settled,
/// is as good: a later push moved it on. One whose needed spec failed for good fails the job
/// now: waiting could only end in failure, and would hold the job's FIFO group meanwhile.
async fn waiting_for(
    ecs: &Ecs,
    history: &impl History,
    job: &SyncJob,
) -> Result<Vec<(String, String)>, Error> {
    if job.dependencies.is_empty() {
        return Ok(Vec::new());
    }
    let services: Vec<&str> = job
        .dependencies
        .values()
        .map(|d| d.service.as_str())
        .collect();
    let live = ecs.describe_services(&job.app.cluster, &services).await?;
    let mut waiting = Vec::new();
    for (name, dependency) in &job.dependencies {
        let Some(live) = live.get(&dependency.service) else {
            waiting.push((name.clone(), format!("{name} to be created")));
            continue;
        };
        let runs_spec = live.tags.get(tag::SPEC_HASH) == Some(&dependency.spec_hash);
        if !runs_spec && let Some(failure) = status::marked_failure(live, &dependency.spec_hash) {
            return Err(Error::DependencyFailed {
                app: name.clone(),
                failure: failure.code.to_owned(),
            });
        }
        let moved_on = !runs_spec
            && match live.tags.get(tag::REVISION) {
                Some(revision) if !revision.is_empty() && *revision != job.app.commit => {
                    history
                        .superseded_by(job, revision)
                        .await
                        .ok()
                        .flatten()
                        .as_ref()
                        == Some(revision)
                }
                _ => false,
            };
        if !runs_spec && !moved_on {
            waiting.push((name.clone(), format!("{name} to run this commit's spec")));
        } else if !settled(live) {
            let state = live
                .deployments
                .iter()
                .find(|d| d.status == "PRIMARY")
                .and_then(|d| d.rollout_state.as_deref())
                .unwrap_or("no deployment");
            waiting.push((name.clone(), format!("{name}'s rollout ({state})")));
        }
    }
    Ok(waiting)
}

/// The service's current deployment is done: COMPLETED, or where ECS reports no rollout state
/// (services behind a Classic Load Balancer), one deployment with all its tasks running.
pub(super) fn settled(live: &LiveService) -> bool {
    let Some(primary) = live.deployments.iter().find(|d| d.status == "PRIMARY") else {
        return false;
    };
    match primary.rollout_state.as_deref() {
        Some(state) => state == "COMPLETED",
        None => live.deployments.len() == 1 && primary.running_count == primary.desired_count,
    }
}

/// Whether someone moved the service to another task definition than the one fleetsync set
/// (say, in the console): then the spec-hash tag no longer describes what runs.
pub(super) fn task_definition_changed_elsewhere(live: &LiveService) -> bool {
    live.tags
        .get(tag::TASK_DEFINITION)
        .is_some_and(|set| task_definition_id(set) != task_definition_id(&live.task_definition))
}

/// The task definition a service ran before `target`. When an earlier attempt already moved
/// the service to `target` and died before tagging it, that is the newest deployment of
/// another task definition.
fn previous_task_definition(live: &LiveService, target: &str) -> Option<String> {
    let target = task_definition_id(target);
    if task_definition_id(&live.task_definition) != target {
        return Some(live.task_definition.clone());
    }
    live.deployments
        .iter()
        .find(|d| task_definition_id(&d.task_definition) != target)
        .map(|d| d.task_definition.clone())
}

/// The deployment a job watches: by its id when ECS named it, else the one of its task
/// definition.
#[derive(Clone, Copy)]
pub(super) struct Ours<'a> {
    pub task_definition: &'a str,
    pub deployment: Option<&'a str>,
}

async fn watch_or_roll_back(
    ecs: &Ecs,
    job: &SyncJob,
    ours: Ours<'_>,
    rollback: Option<Rollback>,
    poll: Duration,
    stop: &CancellationToken,
) -> Result<(), Error> {
    let app = &job.app;
    let timeout = Duration::from_secs(app.rollout.timeout_seconds);
    let watched = (app.cluster.as_str(), app.service_name(), timeout);
    match watch_rollout(ecs, watched, ours, poll, stop).await {
        Ok(()) => {
            if let Some(arn) = service_arn(ecs, job, rollback.as_ref()).await {
                record_result(ecs, &arn, ours.task_definition, result::COMPLETED).await;
            }
            Ok(())
        }
        // The job may be another worker's by now: the verdict is its to act on.
        Err(Error::RolloutFailed { .. } | Error::RolloutTimeout { .. }) if stop.is_cancelled() => {
            Err(Error::Interrupted)
        }
        Err(failure @ (Error::RolloutFailed { .. } | Error::RolloutTimeout { .. })) => {
            let failure = explained(ecs, job, ours, failure).await;
            let arn = service_arn(ecs, job, rollback.as_ref()).await;
            let error = roll_back(ecs, job, rollback, failure).await;
            if let Some(arn) = arn {
                let result = if error.rolled_back() {
                    result::ROLLED_BACK
                } else {
                    result::FAILED
                };
                record_result(ecs, &arn, ours.task_definition, result).await;
            }
            Err(error)
        }
        // Not a verdict on the rollout (say, DescribeServices throttled): a retry watches again.
        Err(other) => Err(other),
    }
}

/// `failure` with its cause, read from the stopped tasks of the failed deployment before the
/// rollback replaces it (and before ECS forgets them).
async fn explained(ecs: &Ecs, job: &SyncJob, ours: Ours<'_>, mut failure: Error) -> Error {
    let app = &job.app;
    let deployment = match ours.deployment {
        Some(id) => Some(id.to_owned()),
        None => match ecs.describe_service(&app.cluster, app.service_name()).await {
            Ok(live) => live.and_then(|l| {
                let target = task_definition_id(ours.task_definition);
                l.deployments
                    .into_iter()
                    .find(|d| task_definition_id(&d.task_definition) == target)
                    .map(|d| d.id)
            }),
            Err(_) => None,
        },
    };
    let Some(deployment) = deployment else {
        return failure;
    };
    let found = match ecs
        .stopped_tasks(&app.cluster, app.service_name(), &deployment)
        .await
    {
        Ok(tasks) => super::diagnose::diagnose(&tasks),
        Err(e) => {
            warn!(message = "Cannot read the failed deployment's stopped tasks; its cause is not told.", deployment = %deployment, error = %e);
            None
        }
    };
    if let Some(found) = found {
        info!(message = "Rollout failure diagnosed.", cause = found.code, fix = %found.fix, evidence = %found.evidence);
        if let Error::RolloutFailed { diagnosis, .. } | Error::RolloutTimeout { diagnosis, .. } =
            &mut failure
        {
            *diagnosis = Some(Box::new(found));
        }
    }
    failure
}

/// The values of [`tag::RESULT`].
pub mod result {
    pub const COMPLETED: &str = "completed";
    pub const ROLLED_BACK: &str = "rolled-back";
    pub const FAILED: &str = "failed";
}

/// The service's ARN: known from before the update, else (a create) read.
async fn service_arn(ecs: &Ecs, job: &SyncJob, rollback: Option<&Rollback>) -> Option<String> {
    if let Some(r) = rollback {
        return Some(r.service_arn.clone());
    }
    let app = &job.app;
    match ecs.describe_service(&app.cluster, app.service_name()).await {
        Ok(live) => live.map(|l| l.arn),
        Err(e) => {
            warn!(message = "Cannot read the service to record its rollout's result.", service = %app.service_name(), error = %e);
            None
        }
    }
}

/// Follows ECS's own rollout state: our deployment reaching COMPLETED, or FAILED when the
/// deployment circuit breaker trips.
pub(super) async fn watch_rollout(
    ecs: &Ecs,
    (cluster, service, timeout): (&str, &str, Duration),
    ours: Ours<'_>,
    poll: Duration,
    stop: &CancellationToken,
) -> Result<(), Error> {
    let task_definition = ours.task_definition;
    let deadline = Instant::now() + timeout;
    let target = task_definition_id(task_definition).to_owned();
    let failed = |reason: String| Error::RolloutFailed {
        service: service.to_owned(),
        task_definition: target.clone(),
        reason,
        diagnosis: None,
        rolled_back_to: None,
    };
    // ECS reads are eventually consistent: right after a create the service may read as
    // missing, right after an update the deployments may be those from before it. Within this
    // grace "not there yet" is a reason to look again, never a verdict.
    let settling = Instant::now() + READ_AFTER_WRITE_GRACE;
    let mut seen_ours = false;
    loop {
        // Even the first look waits for a tick: a deployment just started has nothing to show,
        // and on the tick its read joins the others'.
        tokio::select! {
            () = tokio::time::sleep_until(next_poll(poll)) => {}
            // ECS goes on with the rollout; the next attempt watches it from the tags.
            () = stop.cancelled() => return Err(Error::Interrupted),
        }
        let timed_out = |live: Option<&LiveService>| Error::RolloutTimeout {
            service: service.to_owned(),
            task_definition: target.clone(),
            timeout,
            events: live.map_or_else(Vec::new, |l| l.events.iter().take(3).cloned().collect()),
            diagnosis: None,
            rolled_back_to: None,
        };
        let early = Instant::now() < settling && !seen_ours;
        let Some(live) = ecs.describe_service(cluster, service).await? else {
            if early {
                continue;
            }
            return Err(failed("the service was deleted during the rollout".into()));
        };
        // Followed by id, not by "whichever is PRIMARY": when the circuit breaker rolls back,
        // ECS makes the rollback PRIMARY and ours is left ACTIVE and FAILED. Not by task
        // definition either while the id is listed: after a change to service fields alone,
        // the rollback runs the same task definition. Once it is gone without having failed
        // (someone forced a new deployment of it), the newest one of our task definition is
        // followed instead.
        let by_id = ours
            .deployment
            .and_then(|id| live.deployments.iter().find(|d| d.id == id));
        seen_ours |= by_id.is_some();
        if by_id.is_none() && ours.deployment.is_some() && early {
            // The deployments listed may be those from before our update: the old COMPLETED
            // one of the same task definition must not pass for ours.
            if next_poll(poll) > deadline {
                return Err(timed_out(Some(&live)));
            }
            continue;
        }
        let by_task_definition = || {
            live.deployments
                .iter()
                .find(|d| task_definition_id(&d.task_definition) == target)
        };
        let Some(deployment) = by_id.or_else(by_task_definition) else {
            if early {
                continue;
            }
            let now = task_definition_id(&live.task_definition);
            return Err(failed(format!("another deployment ({now}) replaced it")));
        };
        match deployment.rollout_state.as_deref() {
            Some("COMPLETED") => return Ok(()),
            Some("FAILED") => return Err(failed(failure_reason(deployment, &live))),
            // ECS reports no rollout state for some services (behind a Classic Load Balancer):
            // steady state is one deployment with all its tasks running.
            None if live.deployments.len() == 1
                && deployment.running_count == deployment.desired_count =>
            {
                return Ok(());
            }
            _ => {}
        }
        if next_poll(poll) > deadline {
            return Err(timed_out(Some(&live)));
        }
    }
}

/// How long after fleetsync's own write a watch reads a missing service, or no deployment of
/// its own, as "not there yet" (ECS's eventual consistency) rather than as a verdict.
const READ_AFTER_WRITE_GRACE: Duration = Duration::from_secs(15);

/// The next multiple of `poll` since the worker's first poll: every rollout the worker watches
/// is read on the same ticks, so their reads join (ten services a DescribeServices call).
pub(super) fn next_poll(poll: Duration) -> Instant {
    static FIRST: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let first = *FIRST.get_or_init(Instant::now);
    let ticks = first.elapsed().as_nanos() / poll.as_nanos().max(1) + 1;
    first + poll * u32::try_from(ticks).unwrap_or(u32::MAX)
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

/// Puts the previous task definition and tags back. When the circuit breaker failed the
/// deployment with rollback on, ECS is already rolling back and only the tags are restored.
/// The job still fails: a rollback is never a success.
async fn roll_back(ecs: &Ecs, job: &SyncJob, rollback: Option<Rollback>, failure: Error) -> Error {
    let Some(Rollback {
        service_arn,
        task_definition: Some(previous),
        tags,
        settings,
        kept,
    }) = rollback
    else {
        return failure;
    };
    let app = &job.app;
    let breaker = app
        .update_service
        .get("deploymentConfiguration")
        .and_then(|c| c.get("deploymentCircuitBreaker"));
    let on = |field: &str| breaker.and_then(|b| b.get(field)) == Some(&Value::Bool(true));
    let ecs_rolls_back =
        matches!(failure, Error::RolloutFailed { .. }) && on("enable") && on("rollback");
    // Marked first: a crash before the rollback's writes must leave a mark that stops a
    // redelivery of this job from deploying the failed spec again.
    if let Err(e) = ecs
        .tag_resource(&service_arn, &failure_tags(job, &failure))
        .await
    {
        return Error::RollbackFailed {
            original: Box::new(failure),
            rollback: e,
        };
    }
    // ECS's own rollback returns to the last completed deployment, service fields included.
    let mut update = settings;
    update.insert("cluster".into(), json!(app.cluster));
    update.insert("service".into(), json!(app.service_name()));
    update.insert("taskDefinition".into(), json!(previous));
    let mut previous = previous;
    if !ecs_rolls_back {
        match update_service(ecs, update, &[]).await {
            Ok((_, revision)) => previous = revision,
            Err(e) => {
                return Error::RollbackFailed {
                    original: Box::new(failure),
                    rollback: e,
                };
            }
        }
    }
    // The service runs the previous spec again: its tags must say so, or the next attempt would
    // believe the failed spec is live. The failed spec is marked so reconcile leaves it alone.
    let mut tags = tags;
    if !kept.is_empty() && !ecs_rolls_back {
        // Part of the failed spec stays: the service runs neither spec.
        tags.retain(|(k, _)| k != tag::SPEC_HASH);
        tags.push((tag::SPEC_HASH.into(), String::new()));
    }
    tags.push((
        tag::TASK_DEFINITION.into(),
        task_definition_id(&previous).to_owned(),
    ));
    // The deployment that runs now is not one fleetsync's update started.
    tags.push((tag::DEPLOYMENT.into(), String::new()));
    tags.extend(failure_tags(job, &failure));
    if let Err(e) = ecs.tag_resource(&service_arn, &tags).await {
        return Error::RollbackFailed {
            original: Box::new(failure),
            rollback: e,
        };
    }
    let kept = if ecs_rolls_back { Vec::new() } else { kept };
    failure.rolled_back_to(&previous, kept)
}
