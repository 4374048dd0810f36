//! The sync job: the only type fleetsync serialises onto the wire between processes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::resolve::{DesiredApp, tag};

/// A message on the queue: sync one app, or prune what an environment no longer lists.
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    Sync(Box<SyncJob>),
    Prune(Box<PruneJob>),
    Teardown(Box<TeardownJob>),
    Rollback(Box<RollbackJob>),
    Status(Box<StatusJob>),
    Notify(Box<NotifyJob>),
    Comment(Box<CommentJob>),
}

impl Job {
    /// Reads a message body: a prune job says so in `kind`; a sync job has none.
    pub fn parse(body: &str) -> Result<Job, String> {
        let value: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
        let (version, job) = match value.get("kind") {
            None => {
                let job: SyncJob = serde_json::from_value(value).map_err(|e| e.to_string())?;
                (job.version, Job::Sync(Box::new(job)))
            }
            Some(kind) if kind.as_str() == Some(PruneJob::KIND) => {
                let job: PruneJob = serde_json::from_value(value).map_err(|e| e.to_string())?;
                (job.version, Job::Prune(Box::new(job)))
            }
            Some(kind) if kind.as_str() == Some(TeardownJob::KIND) => {
                let job: TeardownJob = serde_json::from_value(value).map_err(|e| e.to_string())?;
                (job.version, Job::Teardown(Box::new(job)))
            }
            Some(kind) if kind.as_str() == Some(RollbackJob::KIND) => {
                let job: RollbackJob = serde_json::from_value(value).map_err(|e| e.to_string())?;
                (job.version, Job::Rollback(Box::new(job)))
            }
            Some(kind) if kind.as_str() == Some(NotifyJob::KIND) => {
                let job: NotifyJob = serde_json::from_value(value).map_err(|e| e.to_string())?;
                (job.version, Job::Notify(Box::new(job)))
            }
            Some(kind) if kind.as_str() == Some(CommentJob::KIND) => {
                let job: CommentJob = serde_json::from_value(value).map_err(|e| e.to_string())?;
                (job.version, Job::Comment(Box::new(job)))
            }
            Some(kind) if kind.as_str() == Some(StatusJob::KIND) => {
                let job: StatusJob = serde_json::from_value(value).map_err(|e| e.to_string())?;
                (job.version, Job::Status(Box::new(job)))
            }
            Some(kind) => {
                return Err(format!(
                    "job kind {kind} is not understood by this worker; upgrade workers before receivers"
                ));
            }
        };
        match version {
            SyncJob::VERSION => Ok(job),
            v => Err(format!(
                "job version {v} is not understood by this worker (version {})",
                SyncJob::VERSION
            )),
        }
    }
}

/// Delete what one environment's root deployed and no longer lists (`prune: true`). Sent after
/// a resolve that succeeded: the list of apps it carries is the positive signal, never a
/// failed read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneJob {
    pub version: u32,
    /// Always [`PruneJob::KIND`].
    pub kind: String,
    pub repo: String,
    pub branch: String,
    pub delivery: String,
    pub root: String,
    pub environment: String,
    pub cluster: String,
    pub commit: String,
    /// Every app the environment lists at `commit`.
    pub apps: Vec<String>,
}

impl PruneJob {
    pub const KIND: &str = "prune";

    /// FIFO group: one per environment, apart from its apps' (`:` is in no app name).
    pub fn group_id(&self) -> String {
        fifo_group(format!("{}/{}:prune", self.root, self.environment))
    }

    pub fn deduplication_id(&self) -> String {
        let mut hasher = Sha256::new();
        for part in [&self.delivery, &self.environment, &self.commit] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        hasher.update(b"prune");
        hex::encode(hasher.finalize())
    }
}

/// Delete one app of a pull request's preview: its service and its task definitions. Sent in
/// the app's own preview group, after any sync of it, so a push and a close of one PR are
/// applied in the order they came.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TeardownJob {
    pub version: u32,
    /// Always [`TeardownJob::KIND`].
    pub kind: String,
    pub repo: String,
    pub delivery: String,
    pub root: String,
    pub environment: String,
    pub preview: u64,
    pub cluster: String,
    pub app: String,
    pub service: String,
    pub family: String,
    /// `previews.ingress` is set: the app may have a target group and rule to remove.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ingress: bool,
}

impl TeardownJob {
    pub const KIND: &str = "teardown";

    pub fn group_id(&self) -> String {
        preview_group(&self.root, &self.environment, &self.app, self.preview)
    }

    pub fn deduplication_id(&self) -> String {
        let mut hasher = Sha256::new();
        for part in [&self.delivery, &self.root, &self.app, &self.service] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        hasher.update(self.preview.to_be_bytes());
        hasher.update(b"teardown");
        hex::encode(hasher.finalize())
    }
}

/// Put one app back on an earlier revision it ran (`POST /api/v1/rollback`): the task
/// definition only, as ecspresso's rollback does; the service's other settings stay. Sent in
/// the app's own group, so it is applied in order with the app's syncs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackJob {
    pub version: u32,
    /// Always [`RollbackJob::KIND`].
    pub kind: String,
    pub repo: String,
    pub delivery: String,
    pub root: String,
    pub environment: String,
    pub cluster: String,
    pub app: String,
    pub service: String,
    /// The revision returned to, as `family:revision`.
    pub to: String,
    /// The commit that revision was registered from, and its task definition hash and source
    /// (tags of the revision): what the service's tags say once it runs again.
    pub commit: String,
    pub task_definition_hash: String,
    #[serde(default)]
    pub source: String,
    /// The commit rolled away from: what the service ran when the rollback was asked for. A
    /// service that runs another by the time the job runs is left alone.
    pub from: String,
    pub trigger: Trigger,
    pub rollout: crate::resolve::RolloutSpec,
}

impl RollbackJob {
    pub const KIND: &str = "rollback";

    pub fn group_id(&self) -> String {
        fifo_group(format!("{}/{}/{}", self.root, self.environment, self.app))
    }

    pub fn deduplication_id(&self) -> String {
        let mut hasher = Sha256::new();
        for part in [&self.delivery, &self.environment, &self.app, &self.to] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        hasher.update(b"rollback");
        hex::encode(hasher.finalize())
    }
}

/// A commit status to post on the repo's Git host: one transition of one (commit, context).
/// Statuses travel through the queue so that none is lost to a host outage or a restart, and
/// so that one context's transitions are posted in the order they happened (one FIFO group per
/// commit and context).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusJob {
    pub version: u32,
    /// Always [`StatusJob::KIND`].
    pub kind: String,
    pub repo: String,
    pub commit: String,
    /// `fleetsync/<environment>/<app>`, or `fleetsync/<environment>` for the environment.
    pub context: String,
    pub state: StatusState,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
    /// Bumped when a status outlives its message's receives (a long host outage) and is queued
    /// again, so that FIFO deduplication takes the copy for a new message.
    #[serde(default)]
    pub generation: u32,
    /// On an app's end: the environment's roll-up it counts towards, posted once every app of
    /// the push has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollup: Option<Rollup>,
    /// A preview app's status, for its pull request's comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<PreviewOf>,
}

/// The preview an app's status belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviewOf {
    pub number: u64,
    pub app: String,
    /// `previews.from`: what notifications are filtered by.
    pub environment: String,
    /// Where the app is reached, with `previews.ingress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The roll-up status of a push that fanned out: its context, `fleetsync/<environment>`,
/// ends once `apps` app contexts under it have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollup {
    pub context: String,
    pub apps: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
}

/// Where a status stands. Only forward: queued, then rolling out, then an end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StatusState {
    /// Accepted by SQS.
    Queued,
    /// The service was updated; ECS rolls it out.
    RollingOut,
    Success,
    /// Failed, rolled back, or refused (preflight, a config that does not resolve).
    Failure,
    /// A newer commit took over.
    Superseded,
}

impl StatusState {
    pub fn is_final(self) -> bool {
        self > StatusState::RollingOut
    }
}

impl StatusJob {
    pub const KIND: &str = "status";

    pub fn new(repo: &str, commit: &str, context: String, state: StatusState) -> Self {
        StatusJob {
            version: SyncJob::VERSION,
            kind: Self::KIND.to_owned(),
            repo: repo.to_owned(),
            commit: commit.to_owned(),
            context,
            state,
            description: String::new(),
            target_url: None,
            generation: 0,
            rollup: None,
            preview: None,
        }
    }

    pub fn group_id(&self) -> String {
        let mut hasher = Sha256::new();
        for part in [&self.repo, &self.commit, &self.context] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        format!("status/{}", hex::encode(&hasher.finalize()[..16]))
    }

    /// The same transition told twice (a redelivered push, a retried job) is one message.
    pub fn deduplication_id(&self) -> String {
        let mut hasher = Sha256::new();
        for part in [&self.repo, &self.commit, &self.context, &self.description] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        hasher.update([self.state as u8]);
        hasher.update(self.generation.to_be_bytes());
        hex::encode(hasher.finalize())
    }
}

/// One change to a preview's pull request comment (and, on GitHub, its Deployment). One FIFO
/// group per pull request: the comment is read, changed and written back by one worker at a
/// time, in the order the changes happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommentJob {
    pub version: u32,
    /// Always [`CommentJob::KIND`].
    pub kind: String,
    pub repo: String,
    pub number: u64,
    /// The head commit the change is about: a change about an older head is not shown.
    pub commit: String,
    pub change: PreviewChange,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
    /// As [`StatusJob::generation`].
    #[serde(default)]
    pub generation: u32,
}

/// What happened to a preview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum PreviewChange {
    /// The head's apps that changed were queued; those it no longer lists are torn down.
    Enqueued {
        apps: Vec<String>,
        #[serde(default)]
        removed: Vec<String>,
    },
    /// One app moved on (its commit status, in the preview's words).
    App {
        app: String,
        state: StatusState,
        description: String,
        /// `previews.from`.
        #[serde(default)]
        environment: String,
        /// Where the app is reached, with `previews.ingress`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
    /// Nothing deploys, and why: a draft, a fork, a label, the budget, a head that does not
    /// resolve.
    Held {
        reason: String,
    },
    TornDown,
}

impl CommentJob {
    pub const KIND: &str = "comment";

    pub fn new(repo: &str, number: u64, commit: &str, change: PreviewChange) -> Self {
        CommentJob {
            version: SyncJob::VERSION,
            kind: Self::KIND.to_owned(),
            repo: repo.to_owned(),
            number,
            commit: commit.to_owned(),
            change,
            target_url: None,
            generation: 0,
        }
    }

    pub fn group_id(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.repo.as_bytes());
        hasher.update([0]);
        hasher.update(self.number.to_be_bytes());
        format!("comment/{}", hex::encode(&hasher.finalize()[..16]))
    }

    pub fn deduplication_id(&self) -> String {
        let body = serde_json::to_string(self).unwrap_or_default();
        hex::encode(Sha256::digest(body.as_bytes()))
    }
}

/// One message to one sink (`notifications[sink]` of the server config) about a transition of
/// (environment, app, commit): one job per sink, so a sink that is down delays only itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifyJob {
    pub version: u32,
    /// Always [`NotifyJob::KIND`].
    pub kind: String,
    pub sink: usize,
    pub event: crate::config::Event,
    pub repo: String,
    pub environment: String,
    /// `None`: about the environment (a config that does not resolve).
    #[serde(default)]
    pub app: Option<String>,
    pub commit: String,
    /// A stable word for why (`RolloutFailed`, `PreflightRefused`, an AWS error code): what
    /// repeats are told apart by, never the free text.
    pub code: String,
    pub summary: String,
    #[serde(default)]
    pub target_url: Option<String>,
    /// The delivery (push, API call, reconcile pass) whose job ended so: retries of that job
    /// are one message; the same news from another delivery is a repeat, which the worker
    /// tells apart by the failure marked on the service.
    #[serde(default)]
    pub delivery: String,
}

impl NotifyJob {
    pub const KIND: &str = "notify";

    /// What makes two messages the same news.
    pub fn key(&self) -> String {
        let mut hasher = Sha256::new();
        let app = self.app.as_deref().unwrap_or_default();
        let event = serde_json::to_string(&self.event).unwrap_or_default();
        for part in [
            &self.repo,
            &self.environment,
            app,
            &self.commit,
            &self.code,
            &event,
        ] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        hex::encode(&hasher.finalize()[..12])
    }

    pub fn group_id(&self) -> String {
        format!("notify/{}/{}", self.sink, &self.key()[..8])
    }

    pub fn deduplication_id(&self) -> String {
        let delivery = hex::encode(&Sha256::digest(self.delivery.as_bytes())[..8]);
        format!("{}-{}-{delivery}", self.key(), self.sink)
    }
}

/// One group per app of a preview: a single group for the whole PR would hold a job that waits
/// for its `dependsOn` in front of the very job it waits for.
fn preview_group(root: &str, environment: &str, app: &str, preview: u64) -> String {
    fifo_group(format!("{root}/{environment}/{app}#pr-{preview}"))
}

/// A FIFO group id SQS accepts: at most 128 ASCII letters, digits and punctuation. A name that
/// does not fit (a root called "Platform Team", a long one) keeps a readable start and is told
/// apart by its digest: a group SQS refused would fail every push of the repo.
fn fifo_group(readable: String) -> String {
    const MAX: usize = 128;
    if readable.len() <= MAX && readable.bytes().all(|b| b.is_ascii_graphic()) {
        return readable;
    }
    let digest = hex::encode(Sha256::digest(readable.as_bytes()));
    let start: String = readable
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(MAX - 1 - digest.len())
        .collect();
    format!("{start}~{digest}")
}

/// How the delivery ids of reconcile's jobs start (`reconcile:<digest of what it saw>`).
pub const RECONCILE_DELIVERY: &str = "reconcile";

/// One app of one environment at one commit, resolved by the receiver. It carries the exact ECS
/// inputs, so a worker never re-reads Git and every attempt applies the same thing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncJob {
    /// Bumped on incompatible changes, so a worker refuses a job it would misread.
    pub version: u32,
    /// The watched repo's name in the server config.
    pub repo: String,
    /// The branch the commit was resolved from, for the worker's ancestry check. Empty in jobs
    /// from receivers that predate it, which skip the check.
    #[serde(default)]
    pub branch: String,
    /// The Git host's delivery id of the push that made this job.
    pub delivery: String,
    pub app: DesiredApp,
    /// The apps this one `dependsOn`, by name, and the spec each must be live at (same
    /// environment, same commit) before this job may apply.
    #[serde(default)]
    pub dependencies: BTreeMap<String, Dependency>,
    /// What started the job and on whose word: the audit trail it leaves on ECS.
    #[serde(default)]
    pub trigger: Trigger,
    /// Start a new deployment even when the spec is live (`POST /api/v1/sync` with `force`):
    /// new tasks pull the image tag again and read secrets again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// How many apps of its environment the push enqueued with this one (itself included):
    /// more than one, and the commit gets a roll-up status `fleetsync/<environment>` besides
    /// each app's.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fan_out: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Why a job exists: recorded on the service and on the task definition revision it
/// registers (`fleetsync:trigger`, `…:actor`, `…:commit-author`, `…:reason`) and in its log
/// lines, so who deployed what and why is answered by ECS alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    pub kind: TriggerKind,
    /// The pusher, the API token's name, or `fleetsync` for reconcile.
    #[serde(default)]
    pub actor: String,
    /// The author of the commit deployed.
    #[serde(default)]
    pub commit_author: String,
    /// A push's head commit message (first line), the reason given to the API, or what
    /// reconcile found drifted.
    #[serde(default)]
    pub reason: String,
    /// For a push: the Git host that sent it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provider: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TriggerKind {
    /// Also what a job from a receiver that predates triggers was.
    #[default]
    Push,
    Api,
    Reconcile,
    Rollback,
    Preview,
}

impl TriggerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Push => "push",
            TriggerKind::Api => "api",
            TriggerKind::Reconcile => "reconcile",
            TriggerKind::Rollback => "rollback",
            TriggerKind::Preview => "preview",
        }
    }
}

/// The longest reason fleetsync carries: ECS keeps 256 characters of a tag value, and a job
/// (an SQS message) stays small whatever a commit message holds.
pub const MAX_REASON_CHARS: usize = tag::MAX_VALUE_CHARS;

impl Trigger {
    pub fn new(kind: TriggerKind, actor: &str) -> Self {
        Trigger {
            kind,
            actor: bounded(actor),
            ..Trigger::default()
        }
    }

    /// The commit deployed: its author, and, when no reason was given, its message's first
    /// line.
    pub fn about_commit(mut self, author: &str, message: &str) -> Self {
        self.commit_author = bounded(author);
        if self.reason.is_empty() {
            self.reason = bounded(message.lines().next().unwrap_or_default());
        }
        self
    }

    pub fn because(mut self, reason: &str) -> Self {
        self.reason = bounded(reason);
        self
    }

    pub fn from_provider(mut self, provider: &str) -> Self {
        self.provider = bounded(provider);
        self
    }

    /// The audit trail as ECS tags: every value one ECS takes (see [`tag::value`]). All four
    /// are always written, so a service's tags never mix two deployments.
    pub fn tags(&self) -> Vec<(String, String)> {
        [
            (tag::TRIGGER, self.kind.as_str()),
            (tag::ACTOR, &self.actor),
            (tag::COMMIT_AUTHOR, &self.commit_author),
            (tag::REASON, &self.reason),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), tag::value(v)))
        .collect()
    }
}

/// Text from outside cut to what fleetsync keeps of it, with control characters gone.
fn bounded(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON_CHARS)
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dependency {
    pub service: String,
    pub spec_hash: String,
}

/// Each app's service and spec hash in one resolved environment, for jobs' dependencies.
pub fn dependency_index(apps: &[DesiredApp]) -> BTreeMap<String, Dependency> {
    apps.iter()
        .map(|a| {
            let dependency = Dependency {
                service: a.service_name().to_owned(),
                spec_hash: a.spec_hash.clone(),
            };
            (a.name.clone(), dependency)
        })
        .collect()
}

impl SyncJob {
    pub const VERSION: u32 = 1;

    pub fn new(repo: &str, branch: &str, delivery: &str, app: DesiredApp) -> Self {
        SyncJob {
            version: Self::VERSION,
            repo: repo.to_owned(),
            branch: branch.to_owned(),
            delivery: delivery.to_owned(),
            app,
            dependencies: BTreeMap::new(),
            trigger: Trigger::default(),
            force: false,
            fan_out: 0,
        }
    }

    pub fn triggered_by(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }

    /// Records the specs this app's `dependsOn` must be live at, from its environment's index.
    pub fn with_dependencies(mut self, index: &BTreeMap<String, Dependency>) -> Self {
        self.dependencies = self
            .app
            .depends_on
            .iter()
            .filter_map(|name| Some((name.clone(), index.get(name)?.clone())))
            .collect();
        self
    }

    /// FIFO group: one app of one environment is never synced by two workers at once. A
    /// rollback of the app shares it ([`RollbackJob::group_id`]).
    pub fn group_id(&self) -> String {
        let app = &self.app;
        match app.preview {
            Some(preview) => preview_group(&app.root, &app.environment, &app.name, preview),
            None => fifo_group(format!("{}/{}/{}", app.root, app.environment, app.name)),
        }
    }

    /// One delivery of one app at one commit and spec is one job, however many times the Git
    /// host redelivers it (a redelivery keeps its delivery id). The delivery id is part of it
    /// because SQS remembers ids for five minutes: a revert to a commit deployed a minute ago is
    /// a new push, and must not be dropped as a duplicate of the first.
    pub fn deduplication_id(&self) -> String {
        let mut hasher = Sha256::new();
        let app = &self.app;
        for part in [
            &self.delivery,
            &app.environment,
            &app.name,
            &app.commit,
            &app.spec_hash,
        ] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        hex::encode(hasher.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prune_job() -> PruneJob {
        PruneJob {
            version: SyncJob::VERSION,
            kind: PruneJob::KIND.to_owned(),
            repo: "platform".into(),
            branch: "staging".into(),
            delivery: "d-1".into(),
            root: "platform".into(),
            environment: "staging".into(),
            cluster: "staging".into(),
            commit: "c0ffee".into(),
            apps: vec!["api".into()],
        }
    }

    #[test]
    fn group_ids_always_fit_what_sqs_accepts() {
        let fits = |g: &str| g.len() <= 128 && g.bytes().all(|b| b.is_ascii_graphic());
        assert_eq!(
            fifo_group("platform/staging/api".into()),
            "platform/staging/api"
        );
        let spaced = fifo_group("Platform Team/staging/api".into());
        assert!(
            fits(&spaced) && spaced.starts_with("Platform_Team/staging/api~"),
            "{spaced}"
        );
        assert_ne!(spaced, fifo_group("Platform_Team/staging/api".into()));
        let long = fifo_group(format!("{}/staging/ünïcode", "r".repeat(300)));
        assert!(fits(&long), "{long}");
    }

    #[test]
    fn messages_read_back_as_the_job_they_were_sent_as() {
        let prune = prune_job();
        let body = serde_json::to_string(&prune).unwrap();
        assert_eq!(Job::parse(&body), Ok(Job::Prune(Box::new(prune.clone()))));
        assert_eq!(prune.group_id(), "platform/staging:prune");

        let newer = body.replace("\"version\":1", "\"version\":2");
        assert_eq!(
            Job::parse(&newer),
            Err("job version 2 is not understood by this worker (version 1)".into())
        );
        let incomplete = r#"{"kind": "prune", "version": 1}"#;
        assert!(
            Job::parse(incomplete)
                .unwrap_err()
                .contains("missing field")
        );
        assert_eq!(
            Job::parse(r#"{"kind": "scale", "version": 1}"#),
            Err(
                "job kind \"scale\" is not understood by this worker; upgrade workers before receivers"
                    .into()
            )
        );
    }
}
