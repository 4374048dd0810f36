//! A verified push becomes durable jobs: fetch the branch, resolve every environment on it,
//! enqueue one job per app.
//!
//! Shared by every trigger (webhooks, and reconcile on an interval), so that they all give the
//! same answer for the same branch head.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::config::{Config, RepoConfig, Secret};
use crate::ecs::{Ecs, LiveService, task_definition_id};
use crate::queue::job::{RECONCILE_DELIVERY, dependency_index};
use crate::queue::{self, Enqueued, PruneJob, Queue, SyncJob};
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
    /// The last count of the dead-letter queue and when it was read.
    dead_letters: tokio::sync::Mutex<Option<(Instant, Option<u64>)>>,
    /// Every repo's mirror by name: where apps kept in another repo (`source:`) are read.
    sources: Arc<MirrorSources>,
    /// Which environment branches read which branches of other repos.
    readers: std::sync::Mutex<ReaderIndex>,
    /// Refreshes of that index asked for so far, and the last one: the count it covered and
    /// the (repo, branch) it could not resolve. A burst of pushes costs one or two refreshes.
    refreshes: AtomicU64,
    last_refresh: tokio::sync::Mutex<(u64, Vec<(String, String)>)>,
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
    /// Spec hashes by environment and app that SQS accepted jobs for, for the head in
    /// `resolved`. A push that continues from that head (its `before`) under the same bindings
    /// enqueues only apps whose hash differs; any other push (another receiver had the head in
    /// between, a force-push, new bindings) enqueues every app, and so does a fresh receiver or
    /// one whose last push failed. The memory can only make a push send less when what it
    /// skips is exactly what this receiver made durable for the push's parent.
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

/// How long a count of the dead-letter queue is shown before SQS is asked again.
const DEAD_LETTERS_TTL: Duration = Duration::from_secs(15);

/// Branches whose coalescing state is kept; feature branches come and go.
const MAX_TRACKED_BRANCHES: usize = 10_000;

/// How long an enqueued head answers later pushes of the same head without enqueuing again.
const SAME_HEAD_WINDOW: Duration = Duration::from_secs(60);

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
        /// Apps whose spec is the same as in jobs this receiver enqueued before: no job.
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
            Error::Ecs(_) => "cannot read ECS",
            Error::Read(_) | Error::Internal(_) => "internal error",
            Error::Lagging { .. } => {
                "the config repo's fetch URL does not have the pushed commit yet"
            }
        }
    }
}

/// How long a push waits before fetching again, each time the fetch did not bring the commit
/// it names: a lagging mirror usually catches up within seconds.
const LAGGING_FETCH_RETRIES: [std::time::Duration; 3] = [
    std::time::Duration::from_millis(250),
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(3),
];

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
            ecs: Ecs::new(aws),
            tasks: tokio_util::task::TaskTracker::new(),
            branches: Default::default(),
            dead_letters: Default::default(),
            sources: Arc::new(MirrorSources(sources)),
            readers: Default::default(),
            refreshes: AtomicU64::new(0),
            last_refresh: Default::default(),
        })
    }

    /// Turns a push to `branch` into jobs.
    ///
    /// Pushes to one branch are handled one at a time, so an older head can never be enqueued
    /// after a newer one by this receiver. A push that waited while another fetch of its branch
    /// started after it arrived is already covered by that fetch (its commit was in the branch
    /// before its webhook was sent), so it gets that answer: a burst of pushes costs one fetch
    /// for the first and one for all the rest.
    ///
    /// The environment branches of any repo whose apps are read from the branch pushed
    /// (`source:`) are resolved again too, each as if it had been pushed.
    pub async fn push(
        &self,
        repo: &WatchedRepo,
        branch: &str,
        (before, after): (&str, &str),
        delivery: &str,
    ) -> Result<Pushed, Error> {
        if !repo::is_valid_branch(branch) {
            return Ok(Pushed::alone(Outcome::Ignored {
                reason: format!("`{branch}` is not a valid branch name"),
            }));
        }
        let moved = Moved::Branch { before };
        let mut own = self.push_branch(repo, branch, moved, delivery).await?;
        for wait in LAGGING_FETCH_RETRIES {
            if self.has_commit(repo, branch, after).await? {
                break;
            }
            tokio::time::sleep(wait).await;
            own = self.push_branch(repo, branch, moved, delivery).await?;
        }
        if !self.has_commit(repo, branch, after).await? {
            return Err(Error::Lagging {
                branch: branch.to_owned(),
                after: after.to_owned(),
            });
        }
        let about_own = !matches!(own, Outcome::Ignored { .. });
        // The head fetched: readers must read it or a later one.
        let head = match &own {
            Outcome::Enqueued { commit, .. } | Outcome::Invalid { commit, .. } => commit.clone(),
            Outcome::Ignored { .. } => {
                let mirror = repo.mirror.clone();
                let b = branch.to_owned();
                tokio::task::spawn_blocking(move || mirror.local()?.branch_head(&b))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))?
                    .map_err(Error::Fetch)?
                    .map(|h| h.to_string())
                    .unwrap_or_default()
            }
        };
        let state = self.branch_state(&repo.config.name, branch);
        let mut sent = state.readers_sent.lock().await;
        if let Some((done, answer)) = &*sent
            && !head.is_empty()
            && *done == head
        {
            return Ok(Pushed::alone(if about_own {
                own
            } else {
                answer.clone().unwrap_or(own)
            }));
        }
        // Until this pass succeeds no head counts as sent: a pass that fails half-way may
        // have sent some readers a later head than the one remembered.
        *sent = None;
        let (readers, mut complete) = self.readers_of(&repo.config.name, branch).await;
        if readers.is_empty() {
            if complete {
                *sent = Some((head, None));
            }
            return Ok(Pushed::alone(own));
        }
        let mut outcome = own;
        let moved = Moved::Source {
            repo: &repo.config.name,
            branch,
            before,
        };
        let mut unresolved = Vec::new();
        for (reader, reader_branch) in readers {
            // One reader that cannot be read must not fail the push, nor every other push that
            // it reads: it is named in the answer and left to reconcile.
            match self
                .push_branch(reader, &reader_branch, moved, delivery)
                .await
            {
                Ok(theirs) => outcome = combine(outcome, theirs),
                Err(e) => {
                    warn!(message = "Cannot resolve an environment branch that reads the branch pushed; reconcile will.", %delivery, repo = %reader.config.name, branch = %reader_branch, error = %e);
                    unresolved.push(format!("{}/{reader_branch}", reader.config.name));
                    complete = false;
                }
            }
        }
        if !about_own {
            // The answer names the branch pushed, at the head its readers read.
            if let Outcome::Enqueued {
                branch: b, commit, ..
            }
            | Outcome::Invalid {
                branch: b, commit, ..
            } = &mut outcome
            {
                branch.clone_into(b);
                commit.clone_from(&head);
            }
        }
        if complete {
            *sent = Some((head, (!about_own).then(|| outcome.clone())));
        }
        Ok(Pushed {
            outcome,
            unresolved,
        })
    }

    /// Whether the mirror has the commit a push to `branch` names. Anything that is not a
    /// commit id, or a branch gone since, is taken as had: there is nothing to wait for.
    async fn has_commit(
        &self,
        repo: &WatchedRepo,
        branch: &str,
        commit: &str,
    ) -> Result<bool, Error> {
        let Ok(oid) = git2::Oid::from_str(commit) else {
            return Ok(true);
        };
        if commit.len() != 40 || oid.is_zero() {
            return Ok(true);
        }
        let (mirror, branch) = (repo.mirror.clone(), branch.to_owned());
        tokio::task::spawn_blocking(move || {
            let local = mirror.local()?;
            Ok(local.branch_head(&branch)?.is_none() || local.contains(oid))
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .map_err(Error::Fetch)
    }

    /// [`Dispatcher::push`] for one branch, which moved itself or whose environments read a
    /// branch that moved. In the second case only those environments are enqueued.
    async fn push_branch(
        &self,
        repo: &WatchedRepo,
        branch: &str,
        moved: Moved<'_>,
        delivery: &str,
    ) -> Result<Outcome, Error> {
        let state = self.branch_state(&repo.config.name, branch);
        let ticket = state.arrivals.fetch_add(1, Ordering::SeqCst) + 1;
        let mut last = state.last.lock().await;
        if let Some(last) = &*last
            && ticket <= last.covered
        {
            return Ok(last.outcome.clone());
        }
        let covered = match moved {
            Moved::Branch { .. } => state.arrivals.load(Ordering::SeqCst),
            Moved::Source { .. } => 0,
        };
        match self
            .push_now(repo, branch, moved, delivery, last.as_ref())
            .await
        {
            Ok((outcome, resolved, enqueued)) => {
                *last = Some(LastAnswer {
                    covered,
                    outcome: outcome.clone(),
                    resolved,
                    at: Instant::now(),
                    enqueued,
                });
                Ok(outcome)
            }
            Err(e) => {
                // Failures are not shared: each waiting push tries for itself.
                *last = None;
                Err(e)
            }
        }
    }

    async fn push_now(
        &self,
        repo: &WatchedRepo,
        branch: &str,
        moved: Moved<'_>,
        delivery: &str,
        last: Option<&LastAnswer>,
    ) -> Result<(Outcome, Option<Resolution>, Specs), Error> {
        let plan = self.plan(repo, branch).await?;

        let (commit, bindings, results) = match plan {
            Plan::Ignored(reason) => {
                return Ok((Outcome::Ignored { reason }, None, Specs::new()));
            }
            Plan::Resolved {
                commit,
                bindings,
                results,
            } => (commit, bindings, results),
        };
        let sources = results
            .iter()
            .filter_map(|r| r.result.as_ref().ok())
            .flat_map(|state| &state.sources)
            .map(|s| ((s.repo.clone(), s.reference.clone()), s.commit.clone()))
            .collect();
        let resolution = Resolution {
            head: commit.clone(),
            bindings,
            sources,
        };
        // The same heads enqueued moments ago (the rest of a burst): those jobs are durable in
        // SQS already. Past the window a redelivery enqueues again, e.g. after a queue purge.
        let same_head = last.is_some_and(|last| last.resolved.as_ref() == Some(&resolution));
        let resolved = Some(resolution.clone());
        if let Some(last) = last
            && same_head
            && last.covered > 0 // an answer about every environment of the branch
            && matches!(last.outcome, Outcome::Enqueued { .. })
            && last.at.elapsed() < SAME_HEAD_WINDOW
        {
            return Ok((last.outcome.clone(), resolved, last.enqueued.clone()));
        }
        // Past the window the same head is sent again in full: "sync again". The memory is
        // used only when this receiver enqueued exactly what the push moved from: had anything
        // else moved in between (the branch, another repo read, the bindings), another
        // receiver may have enqueued something else since.
        let continues = last
            .and_then(|last| last.resolved.as_ref())
            .is_some_and(|r| *r == resolution.parent(moved));
        let results = match moved {
            Moved::Branch { .. } => results,
            // Only the environments that read what moved; the others did not change.
            Moved::Source { repo, branch, .. } => results
                .into_iter()
                .filter(|r| r.reads.contains(&(repo.to_owned(), branch.to_owned())))
                .collect(),
        };
        let known = match last {
            Some(last) if continues => last.enqueued.clone(),
            _ => Specs::new(),
        };
        let mut specs = known.clone();
        let mut jobs = Vec::new();
        let mut prunes = Vec::new();
        let mut unchanged = 0;
        let mut problems = Vec::new();
        for EnvironmentResult {
            environment,
            result,
            ..
        } in results
        {
            match result {
                Ok(state) => {
                    prunes.extend(prune_job(&repo.config.name, branch, delivery, &state));
                    let before = known.get(&state.environment);
                    let hashes = specs.entry(state.environment.clone()).or_default();
                    hashes.clear();
                    let index = dependency_index(&state.apps);
                    for app in state.apps {
                        hashes.insert(app.name.clone(), app.spec_hash.clone());
                        if before.and_then(|b| b.get(&app.name)) == Some(&app.spec_hash) {
                            unchanged += 1;
                        } else {
                            jobs.push(
                                SyncJob::new(&repo.config.name, branch, delivery, app)
                                    .with_dependencies(&index),
                            );
                        }
                    }
                }
                Err(found) => problems.push(EnvironmentProblems {
                    environment,
                    problems: found.iter().map(Problem::to_string).collect(),
                }),
            }
        }
        let enqueued = self.queue.send(&jobs).await?;
        self.queue.send_prune(&prunes).await?;
        info!(message = "Jobs enqueued.", repo = %repo.config.name, %branch, %commit, jobs = enqueued.len(), unchanged, prune = prunes.len(), invalid_environments = problems.len());
        let branch = branch.to_owned();
        let outcome = if problems.is_empty() {
            Outcome::Enqueued {
                branch,
                commit,
                jobs: enqueued,
                unchanged,
            }
        } else {
            Outcome::Invalid {
                branch,
                commit,
                problems,
                jobs: enqueued,
            }
        };
        Ok((outcome, resolved, specs))
    }

    /// Resolves every environment of `repo` at its branch head and enqueues the apps whose
    /// service is missing, runs another spec, or was moved to another task definition outside
    /// fleetsync: what a missed webhook or a change in the console leaves behind. A spec whose
    /// rollout failed and was rolled back stays quarantined until a push changes it.
    ///
    /// A job's delivery id is derived from the live state reconcile saw, so the same drift found
    /// by several receivers at once has one deduplication id and SQS keeps one job.
    pub async fn reconcile(&self, repo: &WatchedRepo) -> Result<Reconciled, Error> {
        let (mirror, config) = (repo.mirror.clone(), repo.config.clone());
        let branches = tokio::task::spawn_blocking(move || environment_branches(&mirror, &config))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        let mut report = Reconciled::default();
        // Not a config repo: one kept only for `source:`.
        let Some(branches) = branches else {
            return Ok(report);
        };
        if branches.is_empty() {
            report.problems.push(EnvironmentProblems {
                environment: None,
                problems: vec![format!(
                    "the root on the default branch `{}` declares no usable environment; nothing to reconcile",
                    repo.config.default_branch
                )],
            });
        }
        for branch in branches {
            let plan = {
                // The branch's lock, shared with pushes, covers the fetch only: ECS and SQS
                // calls below must not hold webhook deliveries up.
                let state = self.branch_state(&repo.config.name, &branch);
                let _turn = state.last.lock().await;
                match self.plan(repo, &branch).await {
                    Ok(plan) => plan,
                    Err(e) => {
                        warn!(message = "Cannot read an environment branch; reconciling the others.", repo = %repo.config.name, %branch, error = %e);
                        report.unread.push(format!("{branch}: {e}"));
                        continue;
                    }
                }
            };
            let Plan::Resolved { results, .. } = plan else {
                continue;
            };
            let mut jobs = Vec::new();
            let mut prunes = Vec::new();
            for EnvironmentResult {
                environment,
                result,
                ..
            } in results
            {
                let state = match result {
                    Ok(state) => state,
                    Err(found) => {
                        report.problems.push(EnvironmentProblems {
                            environment,
                            problems: found.iter().map(Problem::to_string).collect(),
                        });
                        continue;
                    }
                };
                // One id per commit: receivers reconciling together send one job, and SQS
                // takes it again once its deduplication window (5 minutes) has passed.
                prunes.extend(prune_job(
                    &repo.config.name,
                    &branch,
                    RECONCILE_DELIVERY,
                    &state,
                ));
                let names: Vec<&str> = state.apps.iter().map(|a| a.service_name()).collect();
                // One environment's unreadable cluster does not stop the others.
                let live = match self.ecs.describe_services(&state.cluster, &names).await {
                    Ok(live) => live,
                    Err(e) => {
                        report.problems.push(EnvironmentProblems {
                            environment: Some(state.environment.clone()),
                            problems: vec![format!("cannot read its services: {e}")],
                        });
                        continue;
                    }
                };
                let index = dependency_index(&state.apps);
                let mut drifts: Vec<Drift> = state
                    .apps
                    .iter()
                    .map(|app| drift(app, live.get(app.service_name())))
                    .collect();
                hold_back_dependents(&state.apps, &mut drifts);
                for (app, drift) in state.apps.iter().zip(drifts) {
                    let live = live.get(app.service_name());
                    match drift {
                        Drift::InSync => report.in_sync += 1,
                        Drift::Quarantined => report.quarantined += 1,
                        Drift::Drifted => jobs.push(
                            SyncJob::new(
                                &repo.config.name,
                                &branch,
                                &reconcile_delivery(live),
                                app.clone(),
                            )
                            .with_dependencies(&index),
                        ),
                    }
                }
            }
            report.enqueued.extend(self.queue.send(&jobs).await?);
            self.queue.send_prune(&prunes).await?;
            report.prune += prunes.len();
        }
        Ok(report)
    }

    /// Enqueues every app of `environment` (or just `app`) at its branch head, whatever this
    /// receiver enqueued before: a sync asked for by a person through the API. A whole
    /// environment of a pruning root is pruned too.
    pub async fn resync(
        &self,
        repo_name: &str,
        environment: &str,
        app: Option<&str>,
    ) -> Result<Vec<Enqueued>, ResyncError> {
        // The branch's turn is held until the jobs are enqueued, as for a push.
        let Resolved {
            repo,
            branch,
            state,
            _turn,
        } = self.environment(repo_name, environment).await?;
        let index = dependency_index(&state.apps);
        // Its own delivery id: an explicit request is never deduplicated into an earlier one.
        // Unique across receivers and restarts: SQS drops for five minutes a job whose
        // deduplication id (made from this) it has seen, even once the first was deleted.
        let delivery = format!("api-{}", uuid::Uuid::new_v4().simple());
        let delivery = format!("{delivery}-{}", std::process::id());
        let prune = app
            .is_none()
            .then(|| prune_job(&repo.config.name, &branch, &delivery, &state))
            .flatten();
        let jobs: Vec<_> = state
            .apps
            .into_iter()
            .filter(|a| app.is_none_or(|name| a.name == name))
            .map(|a| {
                SyncJob::new(&repo.config.name, &branch, &delivery, a).with_dependencies(&index)
            })
            .collect();
        if let Some(name) = app
            && jobs.is_empty()
        {
            return Err(ResyncError::Unknown(format!(
                "no app `{name}` in environment `{environment}`"
            )));
        }
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

    /// Jobs in the dead-letter queue, read at most every [`DEAD_LETTERS_TTL`] however often
    /// metrics are scraped; `None` when there is no dead-letter queue or it cannot be read.
    pub async fn dead_letters(&self) -> Option<u64> {
        let mut cached = self.dead_letters.lock().await;
        if let Some((at, count)) = *cached
            && at.elapsed() < DEAD_LETTERS_TTL
        {
            return count;
        }
        // Bounded: scrapes and status requests wait behind this one.
        let count = match tokio::time::timeout(DEAD_LETTERS_TTL / 5, self.queue.dead_letters())
            .await
        {
            Ok(Ok(count)) => count,
            Ok(Err(e)) => {
                warn!(message = "Cannot count the dead-letter queue.", error = %e);
                None
            }
            Err(_) => {
                warn!(message = "Cannot count the dead-letter queue: SQS did not answer in time.");
                None
            }
        };
        *cached = Some((Instant::now(), count));
        count
    }

    /// `environment` of `repo_name` resolved at its branch head, as of the bindings on the
    /// default branch, with its branch's turn: pushes to the branch wait until it is dropped.
    async fn environment(
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
        let Plan::Resolved { results, .. } = self.plan(repo, &branch).await? else {
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
            _turn: turn,
        })
    }

    /// Reconciles every repo each `every` until `shutdown`; the first run is one interval
    /// after start, when the receiver is serving.
    pub async fn reconcile_every(
        self: Arc<Self>,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            for repo in &self.repos {
                match self.reconcile(repo).await {
                    Ok(r) => info!(
                        message = "Reconciled.",
                        repo = %repo.config.name,
                        enqueued = r.enqueued.len(),
                        in_sync = r.in_sync,
                        quarantined = r.quarantined,
                        prune = r.prune,
                        invalid_environments = r.problems.len(),
                        unread_branches = r.unread.len()
                    ),
                    Err(e) => {
                        warn!(message = "Reconcile failed; next interval tries again.", repo = %repo.config.name, error = %e)
                    }
                }
            }
        }
    }

    /// Fetches `branch` of `repo` and resolves its environments (see [`plan_branch`]), and
    /// notes which other repos they read.
    async fn plan(&self, repo: &WatchedRepo, branch: &str) -> Result<Plan, Error> {
        let (mirror, config, sources) = (
            repo.mirror.clone(),
            repo.config.clone(),
            self.sources.clone(),
        );
        let b = branch.to_owned();
        let plan = tokio::task::spawn_blocking(move || plan_branch(&mirror, &config, &b, &sources))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        // Only environment branches are indexed: any branch can be pushed.
        if let Plan::Resolved {
            commit,
            bindings,
            results,
        } = &plan
            && results.iter().any(|r| r.environment.is_some())
        {
            let reads = results
                .iter()
                .flat_map(|r| r.reads.iter().cloned())
                .collect();
            self.readers_index().branches.insert(
                (repo.config.name.clone(), branch.to_owned()),
                Indexed {
                    head: commit.clone(),
                    bindings: bindings.clone(),
                    reads,
                },
            );
        }
        Ok(plan)
    }

    /// Brings the reader index up to date with every config repo as its remote is now:
    /// environment branches whose head moved since they were last resolved here (by another
    /// receiver's push, or never) are resolved again. Costs one `ls-remote` per repo, plus a
    /// fetch and a resolve per branch that moved.
    ///
    /// A repo that cannot be listed keeps what the index knew of it, with a warning: one
    /// unreachable repo must not stop pushes to all the others. Reconcile catches what that
    /// misses.
    ///
    /// Returns the environment branches it could not resolve, any of which may read what
    /// moved, and whether every repo could be listed.
    ///
    /// A complete refresh that started after this call was made answers it too, as fetches do
    /// pushes; an incomplete one answers nobody else.
    pub async fn refresh_readers(&self) -> (Vec<(&WatchedRepo, String)>, bool) {
        let ticket = self.refreshes.fetch_add(1, Ordering::SeqCst) + 1;
        let mut last = self.last_refresh.lock().await;
        let mut complete = true;
        if ticket > last.0 {
            let covered = self.refreshes.load(Ordering::SeqCst);
            let mut unknown = Vec::new();
            for config in &self.repos {
                match self.refresh_readers_of(config).await {
                    Ok(failed) => {
                        unknown.extend(failed.into_iter().map(|b| (config.config.name.clone(), b)))
                    }
                    Err(e) => {
                        complete = false;
                        warn!(message = "Cannot tell which environments read other repos; using what was known.", repo = %config.config.name, error = %e)
                    }
                }
            }
            *last = (if complete { covered } else { 0 }, unknown);
        }
        let unknown = last
            .1
            .iter()
            .filter_map(|(repo, branch)| {
                let config = self.repos.iter().find(|c| &c.config.name == repo)?;
                Some((config, branch.clone()))
            })
            .collect();
        (unknown, complete)
    }

    async fn refresh_readers_of(&self, config: &WatchedRepo) -> Result<Vec<String>, Error> {
        let name = &config.config.name;
        let mirror = config.mirror.clone();
        let list = tokio::task::spawn_blocking(move || mirror.remote_heads());
        let heads = tokio::time::timeout(LIST_TIMEOUT, list)
            .await
            .map_err(|_| Error::Internal("listing its branches timed out".into()))?
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(Error::Fetch)?;
        let default_head = heads
            .get(&config.config.default_branch)
            .map(ToString::to_string);
        let known = self.readers_index().bindings.get(name).cloned();
        let branches = match (default_head, known) {
            // A repo kept only for `source:` need not have the default branch a root needs.
            (None, _) => Vec::new(),
            (Some(head), Some((known, branches))) if head == known => branches,
            (Some(head), _) => {
                let (mirror, cfg) = (config.mirror.clone(), config.config.clone());
                let branches =
                    tokio::task::spawn_blocking(move || environment_branches(&mirror, &cfg))
                        .await
                        .map_err(|e| Error::Internal(e.to_string()))??
                        .unwrap_or_default();
                let mut index = self.readers_index();
                index
                    .bindings
                    .insert(name.clone(), (head, branches.clone()));
                branches
            }
        };
        self.readers_index()
            .branches
            .retain(|(repo, branch), _| repo != name || branches.contains(branch));
        let bindings_head = heads
            .get(&config.config.default_branch)
            .map(ToString::to_string)
            .unwrap_or_default();
        let mut failed = Vec::new();
        for branch in branches {
            let key = (name.clone(), branch.clone());
            let Some(head) = heads.get(&branch).map(ToString::to_string) else {
                self.readers_index().branches.remove(&key);
                continue;
            };
            // Resolved at this head under these bindings (here, or just now by a push that
            // held the branch while this waited): what it reads is known.
            let current = |index: &ReaderIndex| {
                index
                    .branches
                    .get(&key)
                    .is_some_and(|i| i.head == head && i.bindings == bindings_head)
            };
            if current(&self.readers_index()) {
                continue;
            }
            let state = self.branch_state(name, &branch);
            let _turn = state.last.lock().await;
            if current(&self.readers_index()) {
                continue;
            }
            if let Err(e) = self.plan(config, &branch).await {
                warn!(message = "Cannot resolve an environment branch to see what it reads.", repo = %name, %branch, error = %e);
                failed.push(branch);
            }
        }
        Ok(failed)
    }

    /// The environment branches, other than `branch` itself, whose apps are read from `branch`
    /// of `repo`, as every config repo is now (see [`Dispatcher::refresh_readers`]).
    /// Branches that could not be resolved are returned too: pushing them resolves them again
    /// and enqueues only their environments that do read it, or fails the push.
    async fn readers_of(&self, repo: &str, branch: &str) -> (Vec<(&WatchedRepo, String)>, bool) {
        let (unknown, complete) = self.refresh_readers().await;
        let read = (repo.to_owned(), branch.to_owned());
        let index = self.readers_index();
        let mut readers: Vec<_> = index
            .branches
            .iter()
            .filter(|((r, b), i)| (r != repo || b != branch) && i.reads.contains(&read))
            .filter_map(|((r, b), _)| {
                let config = self.repos.iter().find(|c| &c.config.name == r)?;
                Some((config, b.clone()))
            })
            .chain(
                unknown
                    .into_iter()
                    .filter(|(c, b)| c.config.name != repo || b != branch),
            )
            .collect();
        readers.sort_by(|a, b| (&a.0.config.name, &a.1).cmp(&(&b.0.config.name, &b.1)));
        readers.dedup_by(|a, b| a.0.config.name == b.0.config.name && a.1 == b.1);
        (readers, complete)
    }

    fn readers_index(&self) -> std::sync::MutexGuard<'_, ReaderIndex> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner())
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

/// An environment resolved at its branch head, and the branch's turn.
struct Resolved<'a> {
    repo: &'a WatchedRepo,
    branch: String,
    state: DesiredState,
    /// The branch's entry too: while it is held, `branch_state` does not forget it.
    _turn: (
        Arc<BranchState>,
        tokio::sync::OwnedMutexGuard<Option<LastAnswer>>,
    ),
}

/// Two answers to one push as one: every job, every problem.
fn combine(a: Outcome, b: Outcome) -> Outcome {
    match (a, b) {
        (Outcome::Ignored { .. }, other) | (other, Outcome::Ignored { .. }) => other,
        (
            Outcome::Enqueued {
                branch,
                commit,
                mut jobs,
                unchanged,
            },
            Outcome::Enqueued {
                jobs: more,
                unchanged: also,
                ..
            },
        ) => {
            jobs.extend(more);
            Outcome::Enqueued {
                branch,
                commit,
                jobs,
                unchanged: unchanged + also,
            }
        }
        (a, b) => {
            let (branch, commit) = match &a {
                Outcome::Enqueued { branch, commit, .. }
                | Outcome::Invalid { branch, commit, .. } => (branch.clone(), commit.clone()),
                Outcome::Ignored { .. } => Default::default(),
            };
            let mut jobs = Vec::new();
            let mut problems = Vec::new();
            for o in [a, b] {
                match o {
                    Outcome::Enqueued { jobs: j, .. } => jobs.extend(j),
                    Outcome::Invalid {
                        jobs: j,
                        problems: p,
                        ..
                    } => {
                        jobs.extend(j);
                        problems.extend(p);
                    }
                    Outcome::Ignored { .. } => {}
                }
            }
            Outcome::Invalid {
                branch,
                commit,
                problems,
                jobs,
            }
        }
    }
}

/// The prune job for a resolved environment of a root with `prune: true`.
fn prune_job(repo: &str, branch: &str, delivery: &str, state: &DesiredState) -> Option<PruneJob> {
    state.prune.then(|| PruneJob {
        version: SyncJob::VERSION,
        kind: PruneJob::KIND.to_owned(),
        repo: repo.to_owned(),
        branch: branch.to_owned(),
        delivery: delivery.to_owned(),
        root: state.root.clone(),
        environment: state.environment.clone(),
        cluster: state.cluster.clone(),
        commit: state.commit.clone(),
        apps: state.apps.iter().map(|a| a.name.clone()).collect(),
    })
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

/// What one reconcile of a repo found.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub enqueued: Vec<Enqueued>,
    pub in_sync: usize,
    pub quarantined: usize,
    /// Prune jobs sent, one per environment of a root with `prune: true`.
    pub prune: usize,
    pub problems: Vec<EnvironmentProblems>,
    /// Branches that could not be fetched or read, with why: the next interval tries again,
    /// and the repo's other branches are reconciled meanwhile.
    pub unread: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drift {
    InSync,
    Drifted,
    /// Runs another spec because this one failed its rollout, or depends on such an app: its
    /// job could only wait for a dependency that will not change until a push.
    Quarantined,
}

/// Quarantines every drifted app that depends, directly or not, on a quarantined one.
fn hold_back_dependents(apps: &[DesiredApp], drifts: &mut [Drift]) {
    loop {
        let held: std::collections::HashSet<&str> = apps
            .iter()
            .zip(drifts.iter())
            .filter(|(_, d)| **d == Drift::Quarantined)
            .map(|(a, _)| a.name.as_str())
            .collect();
        let mut changed = false;
        for (app, drift) in apps.iter().zip(drifts.iter_mut()) {
            if *drift == Drift::Drifted && app.depends_on.iter().any(|d| held.contains(d.as_str()))
            {
                *drift = Drift::Quarantined;
                changed = true;
            }
        }
        if !changed {
            return;
        }
    }
}

fn drift(app: &DesiredApp, live: Option<&LiveService>) -> Drift {
    let Some(live) = live else {
        return Drift::Drifted;
    };
    let moved = live
        .tags
        .get(tag::TASK_DEFINITION)
        .is_some_and(|set| task_definition_id(set) != task_definition_id(&live.task_definition));
    if live.tags.get(tag::SPEC_HASH) == Some(&app.spec_hash) {
        if moved { Drift::Drifted } else { Drift::InSync }
    } else if status::quarantined(live, &app.spec_hash) {
        Drift::Quarantined
    } else {
        Drift::Drifted
    }
}

/// The delivery id of a reconcile job: the same on every receiver that sees the same drift,
/// and different once the service changes again, so SQS (which keeps deduplication ids for
/// five minutes) never drops the job for a new drift as a repeat of the last.
fn reconcile_delivery(live: Option<&LiveService>) -> String {
    let seen = live.map_or_else(
        || "missing".to_owned(),
        |l| {
            let spec = l.tags.get(tag::SPEC_HASH).map_or("", String::as_str);
            format!("{} {spec}", task_definition_id(&l.task_definition))
        },
    );
    let digest = Sha256::digest(seen.as_bytes());
    format!("{RECONCILE_DELIVERY}:{}", hex::encode(&digest[..8]))
}

/// The distinct branches the root on the default branch binds environments to; `None` when
/// the repo is not a config repo (see [`environment_bindings`]).
fn environment_branches(mirror: &Mirror, repo: &RepoConfig) -> Result<Option<Vec<String>>, Error> {
    let Some(bindings) = environment_bindings(mirror, repo)? else {
        return Ok(None);
    };
    let mut branches: Vec<String> = bindings.into_iter().map(|(_, branch)| branch).collect();
    branches.sort();
    branches.dedup();
    Ok(Some(branches))
}

/// (environment, branch) as the root on the freshly fetched default branch binds them (none
/// when that root is invalid); `None` when there is no default branch or no root on it: a repo
/// kept only for `source:`.
fn environment_bindings(
    mirror: &Mirror,
    repo: &RepoConfig,
) -> Result<Option<Vec<(String, String)>>, Error> {
    let head = match mirror.fetch_branch(&repo.default_branch) {
        Ok(head) => head,
        Err(repo::Error::NoSuchBranch { .. }) => return Ok(None),
        Err(e) => return Err(Error::Fetch(e)),
    };
    let local = mirror.local().map_err(Error::Fetch)?;
    let root = resolve::read_root(&local.snapshot(head).map_err(Error::Fetch)?, &repo.root);
    Ok(match root {
        Ok(Some(root)) => Some(
            root.environments
                .into_iter()
                .map(|e| (e.name, e.branch))
                .collect(),
        ),
        Ok(None) => None,
        Err(resolve::Error::Invalid(_)) => Some(Vec::new()),
        Err(e) => return Err(Error::Read(e)),
    })
}

/// Why an API sync enqueued nothing.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    /// No such repo, environment or app: the message says which, and what exists.
    #[error("{0}")]
    Unknown(String),
    #[error("the environment does not resolve")]
    Invalid(Vec<String>),
    #[error(transparent)]
    Failed(#[from] Error),
}

enum Plan {
    Ignored(String),
    Resolved {
        commit: String,
        /// The default branch's commit, whose root bound the environments.
        bindings: String,
        results: Vec<EnvironmentResult>,
    },
}

/// An environment on the branch (`None`: the root itself), its state or its problems, and
/// which other repos it read or tried to.
struct EnvironmentResult {
    environment: Option<String>,
    result: Result<DesiredState, Vec<Problem>>,
    reads: Reads,
}

/// Notes which (repo, reference) a resolve opens, found or not: an environment whose source
/// does not exist yet reads it once it does.
struct Recording<'a> {
    sources: &'a MirrorSources,
    reads: std::cell::RefCell<Reads>,
}

impl resolve::Sources for Recording<'_> {
    fn open(&self, repo: &str, reference: &str) -> Result<resolve::Opened, resolve::SourceError> {
        self.reads
            .borrow_mut()
            .insert((repo.to_owned(), reference.to_owned()));
        self.sources.open(repo, reference)
    }
}

/// Fetches the branch and resolves every environment bound to it, at the fetched head (never
/// the payload's commit: a later push may already be there). Bindings (environment → branch,
/// cluster) come from the root on the default branch: a branch cannot make itself production.
fn plan_branch(
    mirror: &Mirror,
    repo: &RepoConfig,
    branch: &str,
    sources: &MirrorSources,
) -> Result<Plan, Error> {
    let root_path = repo.root.as_str();
    let head = match mirror.fetch_branch(branch) {
        Ok(head) => head,
        Err(repo::Error::NoSuchBranch { .. }) => {
            return Ok(Plan::Ignored(format!(
                "branch `{branch}` no longer exists; nothing to deploy"
            )));
        }
        Err(e) => return Err(Error::Fetch(e)),
    };
    let default_head = if branch == repo.default_branch {
        head
    } else {
        match mirror.fetch_branch(&repo.default_branch) {
            Ok(head) => head,
            Err(repo::Error::NoSuchBranch { .. }) => {
                return Ok(Plan::Ignored(format!(
                    "the default branch `{}`, whose {root_path} binds environments to branches, does not exist; set `defaultBranch` in the server config",
                    repo.default_branch
                )));
            }
            Err(e) => return Err(Error::Fetch(e)),
        }
    };
    let commit = head.to_string();
    let local = mirror.local().map_err(Error::Fetch)?;
    let trusted = match resolve::read_root(
        &local.snapshot(default_head).map_err(Error::Fetch)?,
        root_path,
    ) {
        Ok(Some(root)) => root,
        Ok(None) => {
            let reason = format!(
                "the default branch `{}` has no {root_path}",
                repo.default_branch
            );
            return Ok(Plan::Ignored(reason));
        }
        Err(resolve::Error::Invalid(problems)) => {
            return Ok(Plan::Resolved {
                commit,
                bindings: default_head.to_string(),
                results: vec![EnvironmentResult {
                    environment: None,
                    result: Err(problems),
                    reads: Reads::new(),
                }],
            });
        }
        Err(e) => return Err(Error::Read(e)),
    };
    let bound: Vec<_> = trusted
        .environments
        .iter()
        .filter(|e| e.branch == branch)
        .collect();
    if bound.is_empty() {
        let declared: Vec<_> = trusted
            .environments
            .iter()
            .map(|e| format!("{} ← {}", e.name, e.branch))
            .collect();
        return Ok(Plan::Ignored(format!(
            "branch `{branch}` is not an environment branch (environments: {})",
            declared.join(", ")
        )));
    }
    let files = local.snapshot(head).map_err(Error::Fetch)?;
    let mut results = Vec::new();
    for binding in bound {
        let recording = Recording {
            sources,
            reads: Default::default(),
        };
        let result = match resolve::resolve_bound(
            &files,
            &recording,
            root_path,
            &trusted,
            &binding.name,
            &commit,
        ) {
            Ok(state) => Ok(state),
            Err(resolve::Error::Invalid(problems)) => Err(problems),
            Err(e) => return Err(Error::Read(e)),
        };
        results.push(EnvironmentResult {
            environment: Some(binding.name.clone()),
            result,
            reads: recording.reads.into_inner(),
        });
    }
    Ok(Plan::Resolved {
        commit,
        bindings: default_head.to_string(),
        results,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::resolve::tag;

    fn app(spec: &str) -> DesiredApp {
        let mut app = resolve::example_app();
        app.spec_hash = spec.to_owned();
        app
    }

    fn live(spec: &str, set: &str, runs: &str, failed: Option<&str>) -> LiveService {
        let mut tags = HashMap::from([
            (tag::SPEC_HASH.to_owned(), spec.to_owned()),
            (tag::TASK_DEFINITION.to_owned(), set.to_owned()),
        ]);
        if let Some(f) = failed {
            tags.insert(tag::FAILED_SPEC_HASH.to_owned(), f.to_owned());
        }
        LiveService {
            arn: "arn".into(),
            task_definition: format!("arn:aws:ecs:us-east-1:1:task-definition/{runs}"),
            desired_count: 1,
            running_count: 1,
            tags,
            deployments: Vec::new(),
            events: Vec::new(),
            draining: false,
        }
    }

    #[test]
    fn drift_quarantines_only_a_failed_spec_that_is_not_running() {
        let h = app("h");
        assert!(matches!(drift(&h, None), Drift::Drifted));
        assert!(matches!(
            drift(&h, Some(&live("h", "a:2", "a:2", None))),
            Drift::InSync
        ));
        assert!(matches!(
            drift(&h, Some(&live("g", "a:1", "a:1", None))),
            Drift::Drifted
        ));
        assert!(matches!(
            drift(&h, Some(&live("g", "a:1", "a:1", Some("h")))),
            Drift::Quarantined
        ));
        // Refused before any write (say, a secret was missing): sent again, it may pass now.
        let mut refused = live("g", "a:1", "a:1", Some("h"));
        refused
            .tags
            .insert(tag::FAILURE.to_owned(), "PreflightRefused c1".to_owned());
        assert!(matches!(drift(&h, Some(&refused)), Drift::Drifted));
        // It failed once, succeeded later, then was moved in the console: that is drift.
        assert!(matches!(
            drift(&h, Some(&live("h", "a:2", "a:1", Some("h")))),
            Drift::Drifted
        ));
    }

    #[test]
    fn dependents_of_a_quarantined_app_are_held_back_all_the_way_down() {
        let named = |name: &str, deps: &[&str]| {
            let mut a = app("h");
            a.name = name.to_owned();
            a.depends_on = deps.iter().map(|d| (*d).to_owned()).collect();
            a
        };
        let apps = [
            named("web", &["api"]),
            named("api", &["db"]),
            named("db", &[]),
            named("cron", &[]),
        ];
        let mut drifts = [
            Drift::Drifted,
            Drift::Drifted,
            Drift::Quarantined,
            Drift::Drifted,
        ];
        hold_back_dependents(&apps, &mut drifts);
        assert_eq!(
            drifts,
            [
                Drift::Quarantined,
                Drift::Quarantined,
                Drift::Quarantined,
                Drift::Drifted
            ]
        );
    }

    #[test]
    fn reconcile_delivery_ids_follow_what_was_seen() {
        let a = live("g", "a:1", "a:1", None);
        let b = live("g", "a:1", "a:3", None);
        assert_eq!(
            reconcile_delivery(Some(&a)),
            reconcile_delivery(Some(&a.clone()))
        );
        assert_ne!(reconcile_delivery(Some(&a)), reconcile_delivery(Some(&b)));
        assert_ne!(reconcile_delivery(Some(&a)), reconcile_delivery(None));
        assert!(reconcile_delivery(None).starts_with("reconcile:"));
    }
}
