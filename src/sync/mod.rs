//! The worker: consumes sync jobs from the queue and applies them to ECS.
//!
//! A message is deleted only when its job is done (or can never succeed); while a job runs its
//! visibility is extended, and a retryable failure hides it again with a growing back-off, so a
//! crashed or failing worker never loses a job.

mod apply;
pub mod diagnose;
mod metrics;
pub mod plan;
mod prune;
mod rollback;
pub mod status;
mod teardown;
mod told;

use crate::resolve::SourceUse;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

pub use apply::{Attempt, History, MAX_DEPENDENCY_WAITS, Outcome, Watch, apply, result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, warn};

use crate::config::{Config, Event, WorkerConfig};
use crate::ecs::budget::{Budget, Rate};
use crate::ecs::{self, Ecs};
use crate::feedback::{About, Hosts, Posted, Sinks, Teller};
use crate::ingress::Ingress;
use crate::preflight::{self, Finding, Preflight};
use crate::queue::{
    CommentJob, Job, NotifyJob, PreviewChange, Queue, Received, StatusJob, StatusState, SyncJob,
};
use crate::repo::{self, Mirror, MirrorSources};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Ecs(#[from] ecs::Error),
    #[error(transparent)]
    Ingress(#[from] crate::ingress::Error),
    #[error("rollout of {service} to {task_definition} failed: {reason}{}{}", diagnosis_note(.diagnosis), rolled_back_note(.rolled_back_to))]
    RolloutFailed {
        service: String,
        task_definition: String,
        reason: String,
        /// Why, from the stopped tasks of the deployment, when the catalogue knows.
        diagnosis: Option<Box<diagnose::Diagnosis>>,
        rolled_back_to: Option<RolledBack>,
    },
    #[error(
        "rollout of {service} to {task_definition} did not complete within {}{}{}{}",
        humantime::format_duration(*.timeout),
        events_note(.events),
        diagnosis_note(.diagnosis),
        rolled_back_note(.rolled_back_to)
    )]
    RolloutTimeout {
        service: String,
        task_definition: String,
        timeout: Duration,
        events: Vec<String>,
        diagnosis: Option<Box<diagnose::Diagnosis>>,
        rolled_back_to: Option<RolledBack>,
    },
    /// A `dependsOn` app is not live at this commit's spec yet; nothing was written. `on` says
    /// what each waits for ("migrate's rollout (IN_PROGRESS)").
    #[error("waiting for {}", .on.join(", "))]
    Waiting { on: Vec<String> },
    /// The service is being deleted; nothing was written. It is created again once ECS has
    /// finished deleting it.
    #[error(
        "service {service} is being deleted (DRAINING); it is created again once it is INACTIVE"
    )]
    Draining { service: String },
    /// A `dependsOn` app's spec at this commit failed for good; nothing was written.
    #[error(
        "{app}, which this app depends on, failed at this commit ({failure}); fix it and push again"
    )]
    DependencyFailed { app: String, failure: String },
    /// Still waiting at [`Attempt::last_wait`].
    #[error("{} never ran this commit's spec; check their own jobs (rolled back? refused?)", .on.join(", "))]
    DependenciesNotLive { on: Vec<String> },
    /// The app references something that is missing or unusable; nothing was written.
    #[error("preflight refused the deployment: {}", findings_note(.0))]
    Preflight(Vec<Finding>),
    #[error("preflight could not check: {0}")]
    PreflightLookup(#[from] preflight::Error),
    /// The service is fleetsync's for another environment of the root on the same cluster;
    /// nothing was written, and nothing is marked on it: it is not this job's.
    #[error(
        "service {service} in cluster {cluster} is deployed by fleetsync for environment `{environment}` of root `{root}`; two environments cannot share a service: give one of them its own cluster or serviceName"
    )]
    OwnedElsewhere {
        service: String,
        cluster: String,
        root: String,
        environment: String,
    },
    /// A preview's job met a service that is not that preview's (no `fleetsync:preview` tag of
    /// its number), or an environment's job met a preview's: nothing was written.
    #[error(
        "service {service} in cluster {cluster} is not {}'s; a preview touches only services carrying its own fleetsync:preview tag, and an environment never touches a preview's",
        match .preview { Some(n) => format!("preview pr-{n}"), None => "this environment".to_owned() }
    )]
    NotThePreviews {
        service: String,
        cluster: String,
        preview: Option<u64>,
    },
    /// Stopped between two steps, never within one: its message was taken back (the receipt
    /// expired) or shutdown's grace ran out. Another attempt goes on from what is live.
    #[error("stopped between steps; another attempt takes the job over")]
    Interrupted,
    /// The service runs another commit of the branch and git cannot be reached to tell which is
    /// newer; nothing was written.
    #[error(
        "{service} runs commit {live}, and git cannot tell whether this job's commit is newer ({reason}); tried again later"
    )]
    Unordered {
        service: String,
        live: String,
        reason: String,
    },
    /// An API rollback that cannot be applied as asked; nothing was written.
    #[error("cannot roll {service} back: {reason}")]
    NotRollable { service: String, reason: String },
    #[error("{original}; rolling back failed too: {rollback}")]
    RollbackFailed {
        original: Box<Error>,
        rollback: ecs::Error,
    },
}

/// Where a failed rollout went back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledBack {
    pub task_definition: String,
    /// Service fields that still have the failed spec's values: ECS did not show what they
    /// were before.
    pub kept: Vec<String>,
}

fn rolled_back_note(to: &Option<RolledBack>) -> String {
    to.as_ref().map_or_else(String::new, |to| {
        let id = ecs::task_definition_id(&to.task_definition);
        if to.kept.is_empty() {
            format!("; rolled back to {id}")
        } else {
            format!(
                "; rolled back to {id}, but {} still as this commit set them (their earlier values are unknown)",
                to.kept.join(", ")
            )
        }
    })
}

fn findings_note(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(Finding::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn diagnosis_note(diagnosis: &Option<Box<diagnose::Diagnosis>>) -> String {
    diagnosis
        .as_ref()
        .map_or_else(String::new, |d| format!("; cause {d}"))
}

fn events_note(events: &[String]) -> String {
    if events.is_empty() {
        String::new()
    } else {
        format!(" (latest events: {})", events.join("; "))
    }
}

impl Error {
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Ecs(e) => e.is_retryable(),
            Error::Ingress(e) => e.is_retryable(),
            Error::PreflightLookup(e) => e.is_retryable(),
            Error::Waiting { .. }
            | Error::Draining { .. }
            | Error::Interrupted
            | Error::Unordered { .. } => true,
            Error::Preflight(_)
            | Error::DependencyFailed { .. }
            | Error::DependenciesNotLive { .. }
            | Error::RolloutFailed { .. }
            | Error::RolloutTimeout { .. }
            | Error::OwnedElsewhere { .. }
            | Error::NotThePreviews { .. }
            | Error::NotRollable { .. }
            | Error::RollbackFailed { .. } => false,
        }
    }

    /// What failed, in a word that fits an ECS tag value: the AWS error code when AWS refused.
    pub fn code(&self) -> &str {
        match self {
            Error::Ecs(e) => e.code(),
            Error::Ingress(e) => e.code(),
            Error::PreflightLookup(e) => e.code(),
            Error::RolloutFailed { .. } => "RolloutFailed",
            Error::RolloutTimeout { .. } => "RolloutTimeout",
            Error::Waiting { .. } => "WaitingForDependencies",
            Error::Draining { .. } => "ServiceDraining",
            Error::Interrupted => "Interrupted",
            Error::Unordered { .. } => "CannotOrderCommits",
            Error::DependenciesNotLive { .. } => "DependenciesNotLive",
            Error::DependencyFailed { .. } => "DependencyFailed",
            Error::Preflight(_) => "PreflightRefused",
            Error::OwnedElsewhere { .. } => "OwnedElsewhere",
            Error::NotThePreviews { .. } => "NotThePreviews",
            Error::NotRollable { .. } => "CannotRollBack",
            Error::RollbackFailed { original, .. } => original.code(),
        }
    }

    /// What the stopped tasks say of why the rollout failed, when the catalogue knows.
    pub fn diagnosis(&self) -> Option<&diagnose::Diagnosis> {
        match self {
            Error::RolloutFailed { diagnosis, .. } | Error::RolloutTimeout { diagnosis, .. } => {
                diagnosis.as_deref()
            }
            _ => None,
        }
    }

    /// The job's end in the log's `event` field: `rolled_back` or `failed`.
    fn event(&self) -> &'static str {
        if self.rolled_back() {
            "rolled_back"
        } else {
            "failed"
        }
    }

    /// A failed rollout that was rolled back (and the failure marked by the rollback).
    fn rolled_back(&self) -> bool {
        matches!(
            self,
            Error::RolloutFailed {
                rolled_back_to: Some(_),
                ..
            } | Error::RolloutTimeout {
                rolled_back_to: Some(_),
                ..
            }
        )
    }

    fn rolled_back_to(mut self, task_definition: &str, kept: Vec<String>) -> Self {
        if let Error::RolloutFailed { rolled_back_to, .. }
        | Error::RolloutTimeout { rolled_back_to, .. } = &mut self
        {
            *rolled_back_to = Some(RolledBack {
                task_definition: task_definition.to_owned(),
                kept,
            });
        }
        self
    }
}

/// How a job that ended well ended, in the log's `event` field: one word a log query can
/// match, beside the message a person reads.
trait Done: std::fmt::Debug {
    fn event(&self) -> &'static str;
}

impl Done for Outcome {
    fn event(&self) -> &'static str {
        match self {
            Outcome::Unchanged => "unchanged",
            Outcome::Created { .. } | Outcome::Updated { .. } => "completed",
            Outcome::Superseded { .. } => "superseded",
            Outcome::Quarantined | Outcome::RolledBack { .. } => "held_back",
            Outcome::NotListed { .. } => "not_listed",
        }
    }
}

impl Done for prune::Pruned {
    fn event(&self) -> &'static str {
        "pruned"
    }
}

impl Done for teardown::TornDown {
    fn event(&self) -> &'static str {
        "torn_down"
    }
}

/// Why a worker cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Mirror(#[from] repo::Error),
    #[error(transparent)]
    Config(#[from] crate::config::Error),
}

pub struct Worker {
    pub queue: Queue,
    pub ecs: Ecs,
    pub preflight: Preflight,
    pub config: WorkerConfig,
    /// The worker's own mirrors of the config repos: commit ancestry, and whether a branch
    /// still lists an app before its service is created.
    pub mirrors: Mirrors,
    /// See [`Attempt::last_wait`].
    last_wait: AtomicU32,
    /// The redrive policy's maxReceiveCount; 0 when the queue has none.
    max_receives: AtomicU32,
    metrics: metrics::JobMetrics,
    /// Commit statuses: put on the queue as jobs end ([`Teller`]), posted from it ([`Hosts`]).
    teller: Teller,
    hosts: Hosts,
    sinks: Sinks,
    ingress: Ingress,
}

/// Bare mirrors of the server config's repos.
pub struct Mirrors {
    by_name: HashMap<String, Watched>,
    /// The same mirrors, for the `source:` entries a resolve reads.
    sources: Arc<MirrorSources>,
}

struct Watched {
    mirror: Arc<Mirror>,
    root: String,
    default_branch: String,
}

/// What the jobs of one worker share: its concurrency places, the places of jobs waiting for
/// their `dependsOn` in the worker, and its shutdown.
#[derive(Clone)]
struct Ctx {
    permits: Arc<Semaphore>,
    waiting: Arc<Semaphore>,
    shutdown: CancellationToken,
    /// Cancelled when the shutdown grace ran out.
    abort: CancellationToken,
}

/// Jobs of one worker waiting for their `dependsOn` at once, off its concurrency places: each
/// costs a share of one DescribeServices per poll tick and nothing else.
const MAX_WAITING: usize = 256;

/// How long one receive of a job waits for its `dependsOn` in the worker before it fails as
/// `DependenciesNotLive`: well past any dependency's rollout.
const DEPENDENCY_PATIENCE: Duration = Duration::from_secs(3600);

/// Long poll length. A poll cannot be called off: at shutdown the worker waits for the one under
/// way, so this bounds how long stopping takes. An idle worker costs six calls a minute.
const LONG_POLL: Duration = Duration::from_secs(10);

impl Worker {
    /// What the worker's scrape shows: its jobs and its mirrors' fetches.
    pub fn register_metrics(&self, registry: &mut crate::metrics::Registry) {
        self.metrics.register(registry);
        repo::register_fetch_metrics(
            self.mirrors
                .by_name
                .iter()
                .map(|(name, watched)| (name.as_str(), &*watched.mirror)),
            registry,
        );
    }

    pub fn from_config(config: &Config, aws: &aws_config::SdkConfig) -> Result<Self, StartError> {
        // Apart from the receivers' mirrors: two processes fetching into one repository would
        // fight over its ref locks.
        let dir = config.mirror_dir.join("worker");
        let mirrors: Vec<(String, Arc<Mirror>)> = config
            .repos
            .iter()
            .map(|r| {
                Ok((
                    r.name.clone(),
                    Arc::new(Mirror::open(&dir, &r.name, &r.fetch_url)?),
                ))
            })
            .collect::<Result<_, repo::Error>>()?;
        let by_name = config
            .repos
            .iter()
            .zip(&mirrors)
            .map(|(r, (_, mirror))| {
                let watched = Watched {
                    mirror: mirror.clone(),
                    root: r.root.clone(),
                    default_branch: r.default_branch.clone(),
                };
                (r.name.clone(), watched)
            })
            .collect();
        let mirrors = Mirrors {
            by_name,
            sources: Arc::new(MirrorSources(mirrors)),
        };
        let budget = Budget::new(
            Rate::per_second(config.worker.ecs_calls_per_second),
            Rate::per_second(config.worker.ecs_registers_per_second),
        );
        let ecs = Ecs::with_budget(aws, budget).joining_reads();
        Ok(Worker {
            queue: Queue::new(aws, &config.queue_url),
            preflight: Preflight::with_ecs(aws, ecs.clone()),
            ecs,
            config: config.worker.clone(),
            mirrors,
            last_wait: AtomicU32::new(MAX_DEPENDENCY_WAITS),
            max_receives: AtomicU32::new(0),
            metrics: Default::default(),
            teller: Teller::new(config, Queue::new(aws, &config.queue_url)),
            hosts: Hosts::from_config(config)?,
            sinks: Sinks::from_config(config, aws)?,
            ingress: Ingress::new(aws),
        })
    }

    /// A job waiting for its `dependsOn` is received again each time: it must fail, marked,
    /// before the queue's redrive policy moves it to the dead-letter queue.
    async fn learn_redrive_policy(&self) {
        match self.queue.max_receives().await {
            Ok(Some(max)) => {
                // SQS moves a message received more than `max` times.
                let last = max.clamp(1, MAX_DEPENDENCY_WAITS);
                if last < MAX_DEPENDENCY_WAITS {
                    warn!(
                        message = "The queue's maxReceiveCount cuts waiting for dependsOn short; raise it above the default wait budget.",
                        max_receive_count = max,
                        waits = last,
                        budget = MAX_DEPENDENCY_WAITS
                    );
                }
                self.last_wait.store(last, Ordering::Relaxed);
                self.max_receives.store(max, Ordering::Relaxed);
            }
            Ok(None) => {}
            Err(e) => {
                warn!(message = "Cannot read the queue's redrive policy; assuming it allows every dependency wait.", error = %e)
            }
        }
    }

    /// Runs until `shutdown` fires, then stops receiving and lets running jobs finish for up to
    /// `grace`; jobs still running after that stop at their next step (a write under way is
    /// finished) and are released to other workers.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) {
        self.learn_redrive_policy().await;
        let permits = Arc::new(Semaphore::new(self.config.concurrency));
        let ctx = Ctx {
            permits: permits.clone(),
            waiting: Arc::new(Semaphore::new(MAX_WAITING)),
            shutdown: shutdown.clone(),
            abort: CancellationToken::new(),
        };
        let tracker = TaskTracker::new();
        let mut failures = 0u32;
        loop {
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let mut held = vec![first];
            while held.len() < 10
                && let Ok(p) = permits.clone().try_acquire_owned()
            {
                held.push(p);
            }
            let receive = self
                .queue
                .receive(held.len(), LONG_POLL, self.config.visibility_timeout);
            tokio::pin!(receive);
            let received = tokio::select! {
                r = &mut receive => r,
                () = shutdown.cancelled() => {
                    // SQS still hands messages to a poll whose caller went away, hidden for the
                    // visibility timeout: take them and give them back at once instead.
                    let answer = LONG_POLL + Duration::from_secs(5);
                    if let Ok(Ok(messages)) = tokio::time::timeout(answer, receive).await {
                        for message in messages {
                            self.set_visibility(&message.receipt, Duration::ZERO).await;
                        }
                    }
                    break;
                }
            };
            let messages = match received {
                Ok(messages) => {
                    failures = 0;
                    messages
                }
                Err(e) => {
                    failures += 1;
                    let backoff = Duration::from_millis(500 * 2u64.pow(failures.min(6)));
                    warn!(message = "Cannot receive jobs; retrying.", error = %e, retry_in = ?backoff);
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => continue,
                        () = shutdown.cancelled() => break,
                    }
                }
            };
            // SQS hands over as many messages of one FIFO group as it can, in order: they run
            // one after another, as the group promises. Two jobs of one app at once could both
            // create its service, or land the older commit last.
            let mut groups: Vec<(String, Vec<(Received, OwnedSemaphorePermit)>)> = Vec::new();
            for (message, permit) in messages.into_iter().zip(held) {
                match groups.iter_mut().find(|(g, _)| *g == message.group) {
                    Some((_, batch)) => batch.push((message, permit)),
                    None => groups.push((message.group.clone(), vec![(message, permit)])),
                }
            }
            for (_, batch) in groups {
                let worker = self.clone();
                let ctx = ctx.clone();
                tracker.spawn(async move {
                    let lost = Mutex::new(HashSet::<String>::new());
                    let mut batch = VecDeque::from(batch);
                    while let Some((message, permit)) = batch.pop_front() {
                        if ctx.shutdown.is_cancelled() {
                            // Not started: another worker takes it at once.
                            worker
                                .set_visibility(&message.receipt, Duration::ZERO)
                                .await;
                            continue;
                        }
                        if lost.lock().expect("never poisoned").remove(&message.receipt) {
                            warn!(message = "A job waited its turn past its visibility; left to the worker SQS hands it to.", message_id = %message.message_id);
                            continue;
                        }
                        // The rest of the group waits its turn hidden: were its visibility to
                        // run out, SQS would hand it to another worker while this one still
                        // runs it.
                        let waiting: Vec<String> =
                            batch.iter().map(|(m, _)| m.receipt.clone()).collect();
                        tokio::select! {
                            () = worker.handle(message, permit, &ctx) => {}
                            () = worker.keep_hidden(&waiting, &lost) => {}
                        }
                    }
                });
            }
        }
        tracker.close();
        info!(
            message = "Worker stopping; waiting for running jobs.",
            running = tracker.len()
        );
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            ctx.abort.cancel();
            tracker.wait().await;
        }
    }

    async fn handle(&self, message: Received, permit: OwnedSemaphorePermit, ctx: &Ctx) {
        let Received {
            message_id,
            receipt,
            receive_count,
            job,
            ..
        } = message;
        match job {
            Ok(Job::Sync(job)) => {
                let app = &job.app;
                let trigger = &job.trigger;
                let span = tracing::info_span!("job", %message_id, environment = %app.environment, app = %app.name, commit = %app.commit, delivery = %job.delivery, trigger = trigger.kind.as_str(), actor = %trigger.actor, reason = %trigger.reason);
                let stop = ctx.abort.child_token();
                info!(parent: &span, message = "Job started.", event = "started", attempt = receive_count);
                let work = self.sync(&job, receive_count, permit, ctx, &stop);
                self.run_job("sync", work, &receipt, receive_count, &stop)
                    .instrument(span)
                    .await;
            }
            Ok(Job::Prune(job)) => {
                let span = tracing::info_span!("prune", %message_id, environment = %job.environment, commit = %job.commit);
                let work = async {
                    let pruned = prune::prune(&self.ecs, &self.mirrors, &job).await;
                    drop(permit);
                    Some(pruned)
                };
                // Deletes are not cut short: a prune runs to its end.
                self.run_job(
                    "prune",
                    work,
                    &receipt,
                    receive_count,
                    &ctx.abort.child_token(),
                )
                .instrument(span)
                .await;
            }
            Ok(Job::Teardown(job)) => {
                let span = tracing::info_span!("teardown", %message_id, preview = job.preview, app = %job.app);
                let work = async {
                    let torn_down = teardown::tear_down(&self.ecs, &self.ingress, &job).await;
                    drop(permit);
                    Some(torn_down)
                };
                // Deletes are not cut short: a teardown runs to its end.
                self.run_job(
                    "teardown",
                    work,
                    &receipt,
                    receive_count,
                    &ctx.abort.child_token(),
                )
                .instrument(span)
                .await;
            }
            Ok(Job::Notify(job)) => {
                drop(permit);
                let span = tracing::info_span!("notify", %message_id, repo = %job.repo, environment = %job.environment, commit = %job.commit);
                self.send_notification(&job, &receipt, receive_count)
                    .instrument(span)
                    .await;
            }
            Ok(Job::Status(job)) => {
                drop(permit);
                let span = tracing::info_span!("status", %message_id, repo = %job.repo, commit = %job.commit, context = %job.context);
                self.post_status(&job, &receipt, receive_count)
                    .instrument(span)
                    .await;
            }
            Ok(Job::Comment(job)) => {
                drop(permit);
                let span = tracing::info_span!("comment", %message_id, repo = %job.repo, pull_request = job.number, commit = %job.commit);
                self.post_comment(&job, &receipt, receive_count)
                    .instrument(span)
                    .await;
            }
            Ok(Job::Rollback(job)) => {
                let span = tracing::info_span!("rollback", %message_id, environment = %job.environment, app = %job.app, to = %job.to, from = %job.from, actor = %job.trigger.actor, reason = %job.trigger.reason);
                let stop = ctx.abort.child_token();
                let poll = self.config.rollout_poll_interval;
                let work = async {
                    let rolled_back = rollback::roll_back(&self.ecs, &job, poll, &stop).await;
                    drop(permit);
                    Some(rolled_back)
                };
                self.run_job("rollback", work, &receipt, receive_count, &stop)
                    .instrument(span)
                    .await;
            }
            Err(reason) => {
                drop(permit);
                // Left in the queue: it returns after the visibility timeout and the redrive
                // policy moves it to the dead-letter queue, where it can be inspected.
                error!(message = "Unreadable job left for the dead-letter queue.", %message_id, %reason);
            }
        }
    }

    /// Applies a sync job. A job that waits for its `dependsOn` waits here, off its concurrency
    /// place, and looks again on the worker's poll ticks (joining the rollout polls' reads), so
    /// it starts within a tick of its dependencies settling; `None` when shutdown came first.
    async fn sync(
        &self,
        job: &SyncJob,
        receive_count: u32,
        permit: OwnedSemaphorePermit,
        ctx: &Ctx,
        stop: &CancellationToken,
    ) -> Option<Result<Outcome, Error>> {
        let poll = self.config.rollout_poll_interval;
        let since = tokio::time::Instant::now();
        let mut permit = Some(permit);
        let mut told = String::new();
        // Once per receive, not on every tick a job waits for its dependencies.
        let routed;
        let job = match self.route(job).await {
            Ok(None) => job,
            Ok(Some(with_route)) => {
                routed = with_route;
                &routed
            }
            Err(e) => {
                let result = Err(e);
                self.tell_end(job, &result, self.is_last_receive(receive_count))
                    .await;
                return Some(result);
            }
        };
        loop {
            let attempt = Attempt {
                number: receive_count,
                last_wait: self.last_wait.load(Ordering::Relaxed),
                out_of_patience: since.elapsed() >= DEPENDENCY_PATIENCE,
                last_receive: self.is_last_receive(receive_count),
            };
            let watch = Watch {
                poll,
                stop,
                teller: Some(&self.teller),
            };
            let result = apply(
                &self.ecs,
                &self.preflight,
                &self.mirrors,
                job,
                attempt,
                watch,
            )
            .await;
            let Err(Error::Waiting { on }) = &result else {
                self.tell_end(job, &result, attempt.last_receive).await;
                return Some(result);
            };
            // Bounded: past it, waits go back to the queue as they used to.
            let Ok(waiting) = ctx.waiting.clone().try_acquire_owned() else {
                return Some(result);
            };
            // Said once per change of what it waits for, not on every tick.
            let reason = on.join(", ");
            if reason != told {
                info!(message = "Job waits for its dependencies.", event = "waiting", waiting_for = %reason);
                told = reason;
            }
            drop(permit.take());
            tokio::select! {
                () = tokio::time::sleep_until(apply::next_poll(poll)) => {}
                () = ctx.shutdown.cancelled() => return None,
                () = stop.cancelled() => return None,
            }
            permit = tokio::select! {
                p = ctx.permits.clone().acquire_owned() => Some(p.expect("the semaphore is never closed")),
                () = ctx.shutdown.cancelled() => return None,
                () = stop.cancelled() => return None,
            };
            drop(waiting);
        }
    }

    /// The job of a preview app with ingress, pointed at the target group and rule made for it.
    async fn route(&self, job: &SyncJob) -> Result<Option<SyncJob>, Error> {
        let app = &job.app;
        let (Some(spec), Some(preview)) = (&app.ingress, app.preview) else {
            return Ok(None);
        };
        let route = crate::ingress::Route {
            root: &app.root,
            preview,
            app: &app.name,
            spec,
        };
        let routed = self.ingress.ensure(&route).await?;
        Ok(Some(SyncJob {
            app: app.routed(&routed.target_group_arn, &routed.url),
            ..job.clone()
        }))
    }

    /// Tells how a job ended: its commit status, and the notifications apply did not send.
    async fn tell_end(&self, job: &SyncJob, result: &Result<Outcome, Error>, last_receive: bool) {
        let Some(told) = told::ended(job, result, last_receive) else {
            return;
        };
        let status = told::app_status(&self.teller, job, told.state, &told.description);
        self.teller.tell(vec![status]).await;
        // A push that fanned out tells its successes once, in the roll-up's digest.
        let in_digest =
            told.event == Event::Deployed && job.fan_out > 1 && self.teller.rolls_up(&job.repo);
        if !told::announced_by_apply(result) && !in_digest {
            let news = told::notifications(&self.teller, job, &told);
            self.teller.notify(news).await;
        }
    }

    /// Runs one job's work while heartbeating its message, then deletes the message, hides it
    /// for a retry, or releases it, by how the work ended (`None`: released). When the message
    /// is taken back, `stop` asks the work to end at its next step: a write under way (an
    /// update and its tags, a rollback) is finished, not dropped half done.
    async fn run_job<T: Done>(
        &self,
        kind: &'static str,
        work: impl Future<Output = Option<Result<T, Error>>>,
        receipt: &str,
        receive_count: u32,
        stop: &CancellationToken,
    ) {
        let started = Instant::now();
        tokio::pin!(work);
        let result = tokio::select! {
            r = &mut work => r,
            () = self.heartbeat(receipt) => {
                stop.cancel();
                work.await
            }
        };
        let outcome = match result {
            Some(Err(Error::Interrupted)) | None => {
                warn!(message = "Job interrupted; released to another worker.");
                self.set_visibility(receipt, Duration::ZERO).await;
                "interrupted"
            }
            Some(Ok(outcome)) => {
                info!(message = "Job done.", event = outcome.event(), outcome = ?outcome);
                self.delete(receipt).await;
                outcome.event()
            }
            Some(Err(e @ Error::Waiting { .. })) => {
                // Sooner than failures: dependencies usually settle within a few polls.
                let delay = (self.config.rollout_poll_interval * 2u32.pow(receive_count.min(16)))
                    .clamp(Duration::from_secs(1), Duration::from_secs(300));
                info!(message = "Job waits for its dependencies in the queue.", event = "waiting", reason = %e, retry_in = ?delay);
                self.set_visibility(receipt, delay).await;
                "waiting"
            }
            Some(Err(e)) if e.is_retryable() && self.is_last_receive(receive_count) => {
                // Marked on its service by `apply`; the next receive moves it.
                error!(message = "Job failed on its last allowed receive; the queue's redrive policy moves it to the dead-letter queue.", event = e.event(), error = %e, attempt = receive_count);
                self.set_visibility(receipt, Duration::ZERO).await;
                e.event()
            }
            Some(Err(e)) if e.is_retryable() => {
                let backoff = Duration::from_secs(5 * 2u64.pow(receive_count.min(8)))
                    .min(Duration::from_secs(900));
                warn!(message = "Job failed; it will be retried.", event = "retrying", error = %e, attempt = receive_count, retry_in = ?backoff);
                self.set_visibility(receipt, backoff).await;
                "retrying"
            }
            Some(Err(e)) => {
                error!(message = "Job failed.", event = e.event(), error = %e, attempt = receive_count);
                self.delete(receipt).await;
                e.event()
            }
        };
        self.metrics.ended(kind, outcome, started.elapsed());
    }

    /// Posts one commit status on its Git host.
    async fn post_status(&self, job: &StatusJob, receipt: &str, receive_count: u32) {
        let posted = self.hosts.post(job).await;
        if let Ok((_, Some(rollup))) = &posted {
            self.tell_digest(job, rollup).await;
        }
        let posted = posted.map(|(posted, _)| {
            info!(message = "Commit status posted.", event = "status", state = ?job.state, description = %job.description, ?posted);
            match posted {
                Posted::Posted => "posted",
                Posted::Unchanged => "unchanged",
                Posted::Behind => "behind",
            }
        });
        let failed = posted.map_err(|e| {
            let retry = e.retry_after();
            (e.to_string(), retry)
        });
        let again = || async {
            let mut copy = job.clone();
            copy.generation += 1;
            self.queue.send_statuses(&[copy]).await.map(|()| true)
        };
        self.settle("status", failed, again, (receipt, receive_count))
            .await;
    }

    /// One message per push and environment that fanned out, once its roll-up ended.
    async fn tell_digest(&self, job: &StatusJob, rollup: &StatusJob) {
        let Some(environment) = rollup.context.strip_prefix("fleetsync/") else {
            return;
        };
        let (event, code) = match rollup.state {
            StatusState::Success => (Event::Deployed, "PushDeployed"),
            StatusState::Superseded => (Event::Superseded, "PushSuperseded"),
            _ => (Event::Failed, "PushFailed"),
        };
        let about = About {
            repo: &job.repo,
            commit: &job.commit,
            environment,
            app: None,
        };
        let news =
            self.teller
                .notifications((about, &rollup.context), (event, code), &rollup.description);
        self.teller.notify(news).await;
    }

    /// Applies one change to a preview's pull request comment.
    async fn post_comment(&self, job: &CommentJob, receipt: &str, receive_count: u32) {
        let posted = self.hosts.comment(job).await;
        if let (Ok(Some(apps)), PreviewChange::App { environment, .. }) = (&posted, &job.change) {
            let about = About {
                repo: &job.repo,
                commit: &job.commit,
                environment,
                app: None,
            };
            let preview = crate::resolve::preview::name(job.number);
            let summary = format!("preview {preview}: {apps} apps deployed");
            let news = self.teller.notifications(
                (about, &preview),
                (Event::PreviewReady, "PreviewReady"),
                &summary,
            );
            self.teller.notify(news).await;
        }
        let posted = posted.map(|_| {
            info!(message = "Preview comment written.", event = "comment", change = ?job.change);
            "posted"
        });
        let failed = posted.map_err(|e| {
            let retry = e.retry_after();
            (e.to_string(), retry)
        });
        let again = || async {
            let mut copy = job.clone();
            copy.generation += 1;
            self.queue.send_comments(&[copy]).await.map(|()| true)
        };
        self.settle("comment", failed, again, (receipt, receive_count))
            .await;
    }

    /// Sends one notification to its sink.
    async fn send_notification(&self, job: &NotifyJob, receipt: &str, receive_count: u32) {
        let sent = self.sinks.send(job).await.map(|()| {
            info!(message = "Notification sent.", event = "notified", sink = job.sink, about = ?job.event, code = %job.code);
            "sent"
        });
        let failed = sent.map_err(|e| {
            let retry = e.retry_after();
            (e.to_string(), retry)
        });
        // Past its receives a notification is dropped: news hours late is noise.
        let again = || async { Ok(false) };
        let kind = match self.sinks.kind(job.sink) {
            "slack" => "notify_slack",
            "webhook" => "notify_webhook",
            "sns" => "notify_sns",
            _ => "notify",
        };
        self.settle(kind, failed, again, (receipt, receive_count))
            .await;
    }

    /// Ends a message that delivers something outside fleetsync (a status, a notification):
    /// deleted once delivered or refused for good (a token without the permission never gets
    /// one), hidden for the target's `Retry-After` (or a back-off) when it may take it later,
    /// and handed to `again` when its receives would run out first (which answers whether it
    /// queued it again or drops it).
    async fn settle<F: Future<Output = Result<bool, crate::queue::Error>>>(
        &self,
        kind: &'static str,
        delivered: Result<&'static str, (String, Option<Option<Duration>>)>,
        again: impl FnOnce() -> F,
        (receipt, receive_count): (&str, u32),
    ) {
        let started = Instant::now();
        let outcome = match delivered {
            Ok(outcome) => {
                self.delete(receipt).await;
                outcome
            }
            Err((error, Some(_))) if self.is_last_receive(receive_count) => {
                warn!(message = "Delivery failed on its last receive.", %error);
                match again().await {
                    Ok(queued) => {
                        self.delete(receipt).await;
                        if queued { "retrying" } else { "dropped" }
                    }
                    Err(e) => {
                        warn!(message = "Cannot queue the delivery again.", error = %e);
                        "retrying"
                    }
                }
            }
            Err((error, Some(after))) => {
                let backoff = Duration::from_secs(2u64.pow(receive_count.min(9)));
                let delay = after.unwrap_or(backoff).min(Duration::from_secs(900));
                warn!(message = "Delivery failed; trying again later.", %error, retry_in = ?delay);
                self.set_visibility(receipt, delay).await;
                "retrying"
            }
            Err((error, None)) => {
                error!(message = "Delivery refused.", %error);
                self.delete(receipt).await;
                "refused"
            }
        };
        self.metrics.ended(kind, outcome, started.elapsed());
    }

    /// Extends the message's visibility until dropped; returns once the message may no longer
    /// be this worker's, which stops the job at its next step: SQS said the receipt expired, or
    /// extensions failed until the visibility may run out before the next beat. Past that
    /// point SQS may hand the message to another worker, and two attempts of one job would
    /// write one service (seen in the fault campaign: the older attempt read the newer one's
    /// deployment as "replaced" and rolled the service back).
    async fn heartbeat(&self, receipt: &str) {
        let mut hidden_until = self.hidden_from_now();
        loop {
            tokio::time::sleep(self.beat()).await;
            if self.extend(receipt, &mut hidden_until).await {
                return;
            }
        }
    }

    /// Extends the visibility of `receipts` on the heartbeat's schedule, forever; those that
    /// may no longer be this worker's, by the heartbeat's rule, go into `lost`.
    async fn keep_hidden(&self, receipts: &[String], lost: &Mutex<HashSet<String>>) {
        if receipts.is_empty() {
            return std::future::pending().await;
        }
        let mut hidden_until = vec![self.hidden_from_now(); receipts.len()];
        loop {
            tokio::time::sleep(self.beat()).await;
            for (receipt, until) in receipts.iter().zip(&mut hidden_until) {
                if self.extend(receipt, until).await {
                    lost.lock().expect("never poisoned").insert(receipt.clone());
                }
            }
        }
    }

    /// Extends `receipt`'s visibility and moves `hidden_until` on. True when the message may no
    /// longer be this worker's: SQS said the receipt expired, or the next beat would come after
    /// the visibility may have run out (two failed beats in a row are tolerated).
    async fn extend(&self, receipt: &str, hidden_until: &mut Instant) -> bool {
        let visibility = self.config.visibility_timeout;
        let asked = Instant::now();
        match self.queue.set_visibility(receipt, visibility).await {
            Ok(()) => {
                *hidden_until = asked + visibility;
                false
            }
            Err(e) => {
                warn!(message = "Cannot extend a job's visibility.", error = %e);
                e.receipt_expired() || Instant::now() + self.beat() >= *hidden_until
            }
        }
    }

    /// How long a message held now is surely hidden: counted from now less one beat, since one
    /// that waited its turn in a batch was last extended up to a beat ago.
    fn hidden_from_now(&self) -> Instant {
        Instant::now() + self.config.visibility_timeout - self.beat()
    }

    /// How often a held message's visibility is extended.
    fn beat(&self) -> Duration {
        self.config.visibility_timeout / 4
    }

    /// Whether the redrive policy moves the message once this receive gives it back.
    fn is_last_receive(&self, receive_count: u32) -> bool {
        let max = self.max_receives.load(Ordering::Relaxed);
        max != 0 && receive_count >= max
    }

    async fn delete(&self, receipt: &str) {
        if let Err(e) = self.queue.delete(receipt).await {
            warn!(message = "Cannot delete a finished job; it will run again and find nothing to do.", error = %e);
        }
    }

    async fn set_visibility(&self, receipt: &str, visibility: Duration) {
        if let Err(e) = self.queue.set_visibility(receipt, visibility).await {
            warn!(message = "Cannot change the job's visibility.", error = %e);
        }
    }
}

impl Mirrors {
    fn mirror(&self, repo: &str) -> Option<Arc<Mirror>> {
        self.by_name.get(repo).map(|w| w.mirror.clone())
    }

    /// Whether this worker's mirror of `repo` holds `commit` (fetched before).
    fn holds(&self, repo: &str, commit: &str) -> bool {
        let (Some(mirror), Ok(commit)) = (self.mirror(repo), git2::Oid::from_str(commit)) else {
            return false;
        };
        mirror.local().is_ok_and(|local| local.contains(commit))
    }

    /// `live` when it descends from `job` and is still on `branch` of `repo`, or the branch's
    /// head when `job` left the branch; `None` (apply) when neither, or it cannot tell.
    async fn newer_on_branch(
        &self,
        repo: &str,
        branch: &str,
        job: &str,
        live: &str,
    ) -> Result<Option<String>, repo::Error> {
        let Some(mirror) = self.mirror(repo) else {
            return Ok(None);
        };
        let (Ok(job_commit), Ok(live_commit)) =
            (git2::Oid::from_str(job), git2::Oid::from_str(live))
        else {
            return Ok(None);
        };
        let branch = branch.to_owned();
        let check = tokio::task::spawn_blocking(move || -> Result<Option<String>, repo::Error> {
            // Always the current head: a force-push may have moved the branch back. When git
            // cannot be reached, the branch as last fetched still orders two commits this
            // mirror holds (a force-push since then is seen once git is back).
            let fetched = mirror.fetch_branch(&branch);
            let local = mirror.local()?;
            let head = match fetched {
                Ok(head) => head,
                Err(e @ repo::Error::NoSuchBranch { .. }) => return Err(e),
                Err(e) => match local.branch_head(&branch)? {
                    Some(head) if local.contains(job_commit) && local.contains(live_commit) => {
                        warn!(message = "Cannot fetch the branch; ordering commits as of its last fetch.", error = %e);
                        head
                    }
                    _ => return Err(e),
                },
            };
            if !local.contains(job_commit) || !local.is_ancestor(job_commit, head)? {
                return Ok(Some(head.to_string())); // the job's commit left the branch
            }
            let live_on_branch =
                local.contains(live_commit) && local.is_ancestor(live_commit, head)?;
            let newer = live_on_branch && local.is_ancestor(job_commit, live_commit)?;
            Ok(newer.then(|| live_commit.to_string()))
        });
        check.await.unwrap_or_else(|e| {
            Err(repo::Error::Git {
                path: repo.into(),
                source: git2::Error::from_str(&e.to_string()),
            })
        })
    }
}

impl History for Mirrors {
    async fn superseded_by(&self, job: &SyncJob, live: &str) -> Result<Option<String>, String> {
        if job.branch.is_empty() {
            return Ok(None); // a job from a receiver that predates branch-aware jobs
        }
        match self
            .newer_on_branch(&job.repo, &job.branch, &job.app.commit, live)
            .await
        {
            Ok(by) => Ok(by),
            // The environment's branch is gone: nothing newer can be on it.
            Err(repo::Error::NoSuchBranch { .. }) => Ok(None),
            // Never fetched here: newer than anything this worker has seen.
            Err(_) if !self.holds(&job.repo, &job.app.commit) => Ok(None),
            Err(error) => Err(error.to_string()),
        }
    }

    async fn source_superseded_by(&self, source: &SourceUse, live: &str) -> Option<String> {
        let reference = &source.reference;
        let commit_id = reference.len() == 40 && git2::Oid::from_str(reference).is_ok();
        if commit_id || !repo::is_valid_branch(reference) {
            return None; // a pinned commit: nothing is newer than it
        }
        match self
            .newer_on_branch(&source.repo, reference, &source.commit, live)
            .await
        {
            Ok(by) => by,
            // A pinned tag: nothing is newer than it either.
            Err(repo::Error::NoSuchBranch { .. }) => None,
            Err(error) => {
                warn!(message = "Cannot compare commits of the app's repo; applying the job.", repo = %source.repo, %error);
                None
            }
        }
    }

    async fn head_includes(
        &self,
        repo: &str,
        branch: &str,
        commit: &str,
        live: &str,
    ) -> Option<bool> {
        let mirror = self.mirror(repo)?;
        let (Ok(commit), Ok(live)) = (git2::Oid::from_str(commit), git2::Oid::from_str(live))
        else {
            return None;
        };
        let branch = branch.to_owned();
        let check = tokio::task::spawn_blocking(move || -> Result<bool, repo::Error> {
            let head = mirror.fetch_branch(&branch)?;
            let local = mirror.local()?;
            Ok(head == commit && local.contains(live) && local.is_ancestor(live, commit)?)
        });
        match check
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            Ok(includes) => Some(includes),
            Err(error) => {
                warn!(message = "Cannot compare commits; pruning nothing of it.", %error);
                None
            }
        }
    }
    async fn unlisted_at_head(&self, job: &SyncJob) -> Option<String> {
        let watched = self.by_name.get(&job.repo)?;
        let (mirror, root, default_branch) = (
            watched.mirror.clone(),
            watched.root.clone(),
            watched.default_branch.clone(),
        );
        let commit = git2::Oid::from_str(&job.app.commit).ok()?;
        if job.branch.is_empty() {
            return None; // a job from a receiver that predates branch-aware jobs
        }
        let (sources, branch) = (self.sources.clone(), job.branch.clone());
        let (environment, app) = (job.app.environment.clone(), job.app.name.clone());
        let check = tokio::task::spawn_blocking(move || -> Result<Option<String>, String> {
            let head = mirror.fetch_branch(&branch).map_err(|e| e.to_string())?;
            let local = mirror.local().map_err(|e| e.to_string())?;
            let on_branch = local.contains(commit)
                && local.is_ancestor(commit, head).map_err(|e| e.to_string())?;
            if !on_branch {
                return Ok(Some(head.to_string()));
            }
            if head == commit {
                return Ok(None);
            }
            // The head moved on: only its resolve, as a receiver does it, tells whether it
            // still lists the app. Rare (a create), and bounded like every resolve.
            let default = if branch == default_branch {
                head
            } else {
                mirror
                    .fetch_branch(&default_branch)
                    .map_err(|e| e.to_string())?
            };
            let bindings = local.snapshot(default).map_err(|e| e.to_string())?;
            let Some(trusted) =
                crate::resolve::read_root(&bindings, &root).map_err(|e| e.to_string())?
            else {
                return Err(format!("the default branch has no {root}"));
            };
            let files = local.snapshot(head).map_err(|e| e.to_string())?;
            let state = crate::resolve::resolve_bound(
                &files,
                &*sources,
                &root,
                &trusted,
                &environment,
                &head.to_string(),
            )
            .map_err(|e| e.to_string())?;
            let listed = state.apps.iter().any(|a| a.name == app);
            Ok((!listed).then(|| head.to_string()))
        });
        match check.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(unlisted) => unlisted,
            Err(error) => {
                warn!(message = "Cannot tell whether the branch still lists the app; creating it.", %error);
                None
            }
        }
    }
}
