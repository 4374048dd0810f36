//! A trigger becomes durable jobs: fetch the branch, resolve every environment on it, enqueue
//! one job per app. One file per trigger, all through one resolve path, so that they give the
//! same answer for the same branch head:
//!
//! - `push.rs`: a verified push (webhooks), and the environments that read the branch pushed;
//! - `preview.rs`: a pull request's preview, its teardown, and the sweeper of what outlived
//!   its PR; `registry.rs`: which previews are active or waiting, on the preview cluster's tags;
//! - `reconcile.rs`: every environment against ECS, on an interval;
//! - `resync.rs`: a sync asked for through the API, and the status the API shows;
//! - `history.rs`: an app's deployments as ECS keeps them, and a rollback to one of them;
//! - `readers.rs`: which environment branches read which branches of other repos;
//! - `plan.rs`: the shared path, fetch and resolve one branch.

mod history;
mod plan;
mod preview;
mod push;
mod readers;
mod reconcile;
mod registry;
mod resync;

pub use history::{AppHistory, Deployment, MAX_HISTORY, RollbackEnqueued, RollbackRequest};
use plan::{
    EnvironmentResult, Plan, environment_bindings, environment_branches, prune_job, specs_of,
};
pub use preview::{
    PreviewAppStatus, PreviewOutcome, PreviewStatus, PullRequest, PullRequestKind, Swept,
};
pub use reconcile::Reconciled;
pub use resync::{EnvironmentStatus, QueueDepth, ResyncError};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::config::{Config, RepoConfig, Secret};
use crate::ecs::{Ecs, LiveService, task_definition_id};
use crate::queue::job::{RECONCILE_DELIVERY, dependency_index};
use crate::queue::{self, Enqueued, PruneJob, Queue, StatusState, SyncJob};
pub use crate::queue::{Trigger, TriggerKind};

/// Where a request to deploy came from: its delivery id (a Git host's, or one made for an API
/// call) and its trigger, which every job it makes carries.
pub type Origin<'a> = (&'a str, &'a Trigger);
use crate::repo::{self, Mirror, MirrorSources};
use crate::resolve::{self, DesiredApp, DesiredState, Problem, tag};
use crate::sync::status;

/// A watched config repo, ready to receive pushes.
pub struct WatchedRepo {
    pub config: RepoConfig,
    pub secret: Secret,
    pub mirror: Arc<Mirror>,
}

pub struct Dispatcher {
    pub repos: Vec<WatchedRepo>,
    pub queue: Queue,
    /// Read only, by reconcile: which services drifted from Git.
    pub ecs: Ecs,
    /// Pushes being turned into jobs, each in a task of its own so that a Git host giving up
    /// waiting does not cut one short; the receiver waits for them before it exits.
    pub tasks: tokio_util::task::TaskTracker,
    /// One lock per (repo, branch), held from fetch to enqueue. One entry per branch ever
    /// pushed: small, and bounded by the repo's branches.
    branches: std::sync::Mutex<HashMap<String, Arc<BranchState>>>,
    /// Commit statuses for what pushes enqueue or cannot resolve.
    teller: crate::feedback::Teller,
    /// The last count of the queue's jobs and when it was read.
    queue_depth: tokio::sync::Mutex<Option<(Instant, QueueDepth)>>,
    /// Every repo's mirror by name: where apps kept in another repo (`source:`) are read.
    sources: Arc<MirrorSources>,
    /// Which environment branches read which branches of other repos.
    readers: std::sync::Mutex<ReaderIndex>,
    /// Refreshes of that index asked for so far, and the last one: the count it covered and
    /// the (repo, branch) it could not resolve. A burst of pushes costs one or two refreshes.
    refreshes: AtomicU64,
    last_refresh: tokio::sync::Mutex<(u64, Vec<(String, String)>)>,
    /// Places for resolves running at once: one per core.
    resolves: tokio::sync::Semaphore,
}

/// Which environment branches read which (repo, reference), as of their last resolve here:
/// a push to a repo re-resolves exactly the environment branches that read the branch pushed.
/// Bounded by the environment branches the config repos bind.
#[derive(Default)]
struct ReaderIndex {
    /// (config repo, environment branch) → the head and bindings (default branch head) last
    /// resolved, and the (repo, reference) pairs its environments read or tried to.
    branches: HashMap<(String, String), Indexed>,
    /// Config repo → its default branch's head, and the environment branches its root binds.
    bindings: HashMap<String, (String, Vec<String>)>,
}

type Reads = BTreeSet<(String, String)>;

struct Indexed {
    head: String,
    bindings: String,
    reads: Reads,
}

/// How long listing a repo's branches may take before the index goes on without it.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// Per (repo, branch): pushes seen so far, and the last answer with the arrival count its
/// fetch covered. Held from fetch to enqueue.
#[derive(Default)]
struct BranchState {
    arrivals: AtomicU64,
    last: Arc<tokio::sync::Mutex<Option<LastAnswer>>>,
    /// The last head whose readers (environments of other branches that read this one) were
    /// all sent, and the answer for it when the branch itself deploys nothing: the rest of a
    /// burst, or a redelivery, need not look for readers again. Held while readers are sent,
    /// so one head's pass never finishes after a later one's.
    readers_sent: tokio::sync::Mutex<Option<(String, Option<Outcome>)>>,
    /// The last push of the branch here failed: the next sends every app.
    failed: std::sync::atomic::AtomicBool,
}

struct LastAnswer {
    /// Pushes that had arrived when its fetch started: all of them are answered by it. 0 for
    /// an answer about only some environments of the branch (those that read a repo that
    /// moved), which answers nobody else.
    covered: u64,
    outcome: Outcome,
    /// What it was resolved from.
    resolved: Option<Resolution>,
    at: Instant,
    /// Spec hashes by environment and app of the head in `resolved`. A push that continues
    /// from that head (its `before`) under the same bindings and sources is diffed against
    /// them; any other push resolves its parent again ([`Dispatcher::baseline`]).
    enqueued: Specs,
}

type Specs = HashMap<String, HashMap<String, String>>;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Resolution {
    /// The branch head and the default branch's commit whose root bound the environments.
    head: String,
    bindings: String,
    /// (repo, reference) → commit, of every other repo read.
    sources: BTreeMap<(String, String), String>,
}

/// What a push moved, so it can tell whether it continues from what this receiver enqueued.
#[derive(Debug, Clone, Copy)]
enum Moved<'a> {
    /// The branch itself, from `before`.
    Branch { before: &'a str },
    /// A branch of another repo that the branch's environments read, from `before`.
    Source {
        repo: &'a str,
        branch: &'a str,
        before: &'a str,
    },
}

impl Resolution {
    /// What was resolved just before `moved`, had nothing else changed in between.
    fn parent(&self, moved: Moved<'_>) -> Resolution {
        let mut parent = self.clone();
        match moved {
            Moved::Branch { before } => before.clone_into(&mut parent.head),
            Moved::Source {
                repo,
                branch,
                before,
            } => {
                parent
                    .sources
                    .insert((repo.to_owned(), branch.to_owned()), before.to_owned());
            }
        }
        parent
    }
}

/// Branches whose coalescing state is kept; feature branches come and go.
const MAX_TRACKED_BRANCHES: usize = 10_000;

/// What a push led to. Every variant is a final answer for this delivery; only [`Error`] asks
/// the Git host to deliver again.
#[derive(Debug, Clone)]
pub enum Outcome {
    Ignored {
        reason: String,
    },
    Enqueued {
        branch: String,
        commit: String,
        jobs: Vec<Enqueued>,
        /// Apps whose spec is the same as at the push's parent: no job.
        unchanged: usize,
    },
    /// At least one environment on the branch does not resolve: it gets no job at all.
    /// Environments that did resolve were enqueued (`jobs`).
    Invalid {
        branch: String,
        commit: String,
        problems: Vec<EnvironmentProblems>,
        jobs: Vec<Enqueued>,
    },
}

/// What a push did, and the environment branches reading it that could not be resolved
/// (`repo/branch`): reconcile enqueues them once they can be read.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub outcome: Outcome,
    pub unresolved: Vec<String>,
}

impl Pushed {
    fn alone(outcome: Outcome) -> Self {
        Pushed {
            outcome,
            unresolved: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EnvironmentProblems {
    /// `None` when the root app itself is broken, so no environment could be read.
    pub environment: Option<String>,
    pub problems: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Secret(#[from] crate::config::Error),
    #[error(transparent)]
    Mirror(#[from] repo::Error),
}

/// Failures worth a redelivery: nothing was enqueued, or not all of it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Fetch(repo::Error),
    #[error(transparent)]
    Read(resolve::Error),
    #[error(transparent)]
    Queue(#[from] queue::Error),
    #[error(transparent)]
    Ecs(#[from] crate::ecs::Error),
    #[error("internal error: {0}")]
    Internal(String),
    /// The fetch URL does not serve the commit the push names yet (a lagging mirror or Geo
    /// secondary): answering now would record an old head as the push's.
    #[error("the fetched branch `{branch}` does not have the pushed commit {after} yet")]
    Lagging { branch: String, after: String },
}

impl Error {
    /// What a Git host may be told: no paths, URLs or queue names.
    pub fn public_reason(&self) -> &'static str {
        match self {
            Error::Fetch(_) => "cannot fetch the config repo",
            Error::Queue(_) => "the job queue did not accept the jobs",
            Error::Ecs(_) => "ECS did not answer",
            Error::Read(_) | Error::Internal(_) => "internal error",
            Error::Lagging { .. } => {
                "the config repo's fetch URL does not have the pushed commit yet"
            }
        }
    }
}

impl Dispatcher {
    /// Reads every repo's secret and opens its mirror: a missing or empty secret stops the
    /// receiver at startup instead of accepting unsigned deliveries.
    pub fn from_config(config: &Config, aws: &aws_config::SdkConfig) -> Result<Self, StartError> {
        let mut repos = Vec::with_capacity(config.repos.len());
        for repo in &config.repos {
            let mirror = Mirror::open(&config.mirror_dir, &repo.name, &repo.fetch_url)?;
            repos.push(WatchedRepo {
                secret: repo
                    .secret
                    .load(&format!("secret of repo `{}`", repo.name))?,
                mirror: Arc::new(mirror),
                config: repo.clone(),
            });
        }
        let sources = repos
            .iter()
            .map(|r| (r.config.name.clone(), r.mirror.clone()))
            .collect();
        Ok(Dispatcher {
            repos,
            queue: Queue::new(aws, &config.queue_url),
            teller: crate::feedback::Teller::new(config, Queue::new(aws, &config.queue_url)),
            ecs: Ecs::new(aws),
            tasks: tokio_util::task::TaskTracker::new(),
            branches: Default::default(),
            queue_depth: Default::default(),
            sources: Arc::new(MirrorSources(sources)),
            readers: Default::default(),
            refreshes: AtomicU64::new(0),
            last_refresh: Default::default(),
            resolves: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
        })
    }

    fn branch_state(&self, repo: &str, branch: &str) -> Arc<BranchState> {
        let mut branches = self
            .branches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if branches.len() >= MAX_TRACKED_BRANCHES {
            // Forget every branch no push is handling right now: only coalescing state is lost.
            branches.retain(|_, state| Arc::strong_count(state) > 1);
        }
        branches
            .entry(format!("{repo}\n{branch}"))
            .or_default()
            .clone()
    }
}
