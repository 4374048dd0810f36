//! The pull request trigger: a PR against the branch of `previews.from` runs as its own copy
//! of that environment (`pr-<number>`), confined to `previews.cluster`, within `maxActive`
//! (the registry, `registry.rs`), and torn down on close, when idle past `ttl` (the sweeper),
//! or once `previews` is removed. `previews` is read from the root on the default branch only.
//!
//! Teardown decides from fleetsync's own tags and the PR's events, never from a Git host API:
//! a host that does not answer tears nothing down.

use super::registry::{self, Admission, Registry, State};
use super::*;
use crate::queue::{PreviewChange, TeardownJob};
use crate::resolve::manifest::Root;
use crate::resolve::preview::{self, Previews};

/// A pull request event, as every Git host's is normalised (by `webhook`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// The base repository's URLs: the repo the PR merges into.
    pub repository_urls: Vec<String>,
    pub number: u64,
    /// The host's action as sent (`opened`, `synchronize`, `update`, …), for messages.
    pub action: String,
    pub kind: PullRequestKind,
    pub head_sha: String,
    /// The source branch (in the head repository, another one for a fork).
    pub head_ref: String,
    /// The ref of the base repository that holds the head (`refs/pull/N/head`, …), or the
    /// source branch where the host keeps none.
    pub fetch_ref: String,
    /// The branch the PR merges into.
    pub base_ref: String,
    /// The head repository is not the base repository, by the host's identity of each (id or
    /// full name), never by a field the PR's author writes.
    pub from_fork: bool,
    pub draft: bool,
    pub labels: Vec<String>,
    pub sender: Option<String>,
}

/// What a pull request event means for its preview, whatever the host calls it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullRequestKind {
    /// Opened, reopened, ready for review: deploy its head.
    Opened,
    /// New commits on its head.
    Pushed,
    /// Labels were given (empty: the host does not say which).
    Labeled(Vec<String>),
    /// Labels were taken away (empty: the host does not say which).
    Unlabeled(Vec<String>),
    /// Closed or merged: tear the preview down.
    Closed,
    /// Anything else (edited, assigned, …): nothing to do.
    Other,
}

/// What a pull request event led to. Every variant is a final answer; only [`Error`] asks the
/// Git host to deliver again.
#[derive(Debug, Clone)]
pub enum PreviewOutcome {
    /// Not a PR previews are for.
    Ignored {
        reason: String,
    },
    /// A PR previews are for, held back (draft, fork, label): nothing deployed, and why.
    Skipped {
        preview: String,
        reason: String,
    },
    /// Its head does not resolve: nothing deployed.
    Invalid {
        preview: String,
        commit: String,
        problems: Vec<String>,
    },
    /// `maxActive` previews run: this one deploys once a place frees, oldest waiting first.
    Waiting {
        preview: String,
        commit: String,
        ahead: usize,
    },
    Enqueued {
        preview: String,
        commit: String,
        jobs: Vec<Enqueued>,
        /// Apps the head no longer lists, whose services are torn down.
        removed: Vec<String>,
    },
    TornDown {
        preview: String,
        apps: Vec<String>,
    },
}

/// One app of a preview found in ECS by its tags, or in the PR's head.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PreviewApp {
    app: String,
    environment: String,
    service: String,
    family: String,
}

/// Where a teardown looks, and whether it is for idleness.
struct Teardown<'a> {
    cluster: &'a str,
    /// `None` once `previews` was removed, or moved to another cluster.
    previews: Option<&'a Previews>,
    /// For a preview idle past its `ttl`: the last push it may have had, checked again when
    /// torn down (a push may have come since the sweeper looked).
    idle_since: Option<u64>,
}

/// What one sweep of a repo's previews did.
#[derive(Debug, Default)]
pub struct Swept {
    /// Previews torn down (idle past `ttl`, `previews` removed, services left behind).
    pub torn_down: Vec<String>,
    /// Waiting previews that got a place.
    pub promoted: Vec<String>,
}

impl Dispatcher {
    /// Turns a pull request event into a preview's jobs, a teardown, or a reason to do neither,
    /// and tells the pull request's comment.
    pub async fn pull_request(
        &self,
        repo: &WatchedRepo,
        pr: &PullRequest,
        delivery: &str,
    ) -> Result<PreviewOutcome, Error> {
        let outcome = self.preview_for(repo, pr, delivery).await?;
        self.tell_preview(&repo.config.name, (pr.number, &pr.head_sha), &outcome)
            .await;
        Ok(outcome)
    }

    /// What a preview's outcome means for its pull request's comment.
    async fn tell_preview(
        &self,
        repo: &str,
        (number, head): (u64, &str),
        outcome: &PreviewOutcome,
    ) {
        let (commit, change) = match outcome {
            PreviewOutcome::Ignored { .. } => return,
            PreviewOutcome::Skipped { reason, .. } => (
                head,
                PreviewChange::Held {
                    reason: reason.clone(),
                },
            ),
            PreviewOutcome::Invalid {
                commit, problems, ..
            } => {
                let first = problems.first().map(String::as_str).unwrap_or_default();
                let reason = format!("its head does not resolve: {first}");
                (commit.as_str(), PreviewChange::Held { reason })
            }
            PreviewOutcome::Waiting { commit, ahead, .. } => {
                let reason = format!(
                    "`previews.maxActive` previews run already; it deploys once one is torn down ({ahead} waiting ahead of it)"
                );
                (commit.as_str(), PreviewChange::Held { reason })
            }
            PreviewOutcome::Enqueued {
                commit,
                jobs,
                removed,
                ..
            } => {
                let apps = jobs.iter().map(|j| j.app.clone()).collect();
                let removed = removed.clone();
                (commit.as_str(), PreviewChange::Enqueued { apps, removed })
            }
            PreviewOutcome::TornDown { .. } => (head, PreviewChange::TornDown),
        };
        self.teller.comment(repo, (number, commit), change).await;
    }

    async fn preview_for(
        &self,
        repo: &WatchedRepo,
        pr: &PullRequest,
        delivery: &str,
    ) -> Result<PreviewOutcome, Error> {
        let (default, trusted) = match self.trusted_root(repo).await? {
            Ok(found) => found,
            Err(reason) => return Ok(PreviewOutcome::Ignored { reason }),
        };
        let Some(previews) = &trusted.previews else {
            return Ok(PreviewOutcome::Ignored {
                reason: format!(
                    "the root on the default branch `{}` sets no `previews`",
                    repo.config.default_branch
                ),
            });
        };
        // Built from the PR's number, or from its source branch where the host keeps no PR
        // ref (Bitbucket Cloud): a name its author picked, recorded in a tag of the registry.
        if !git2::Reference::is_valid_name(&pr.fetch_ref)
            || pr.fetch_ref.contains('*')
            || !registry::recordable(&pr.fetch_ref)
        {
            return Ok(PreviewOutcome::Ignored {
                reason: format!(
                    "`{}` cannot be fetched and recorded as a preview's ref; use a branch name of letters, digits and `_ . / = + - @`",
                    pr.fetch_ref
                ),
            });
        }
        let name = preview::name(pr.number);
        // One event of a PR at a time here, so a close is never overtaken by a push before it.
        let state = self.branch_state(&repo.config.name, &pr.fetch_ref);
        let _turn = state.last.lock().await;
        let label = previews.label.as_deref();
        // A close is acted on whatever the PR merges into now: it may have been retargeted
        // since its preview was made.
        let gone = match &pr.kind {
            PullRequestKind::Closed => true,
            PullRequestKind::Unlabeled(_) => {
                label.is_some_and(|label| !pr.labels.iter().any(|l| l == label))
            }
            _ => false,
        };
        if gone {
            let apps = self
                .tear_down(repo, &trusted, previews, pr.number, delivery)
                .await?;
            let Some(apps) = apps else {
                return Ok(PreviewOutcome::Ignored {
                    reason: format!("pull request #{} has no preview", pr.number),
                });
            };
            self.promote(repo, &trusted, previews, default).await;
            return Ok(PreviewOutcome::TornDown {
                preview: name,
                apps,
            });
        }
        if !matches!(
            pr.kind,
            PullRequestKind::Opened | PullRequestKind::Pushed | PullRequestKind::Labeled(_)
        ) {
            return Ok(PreviewOutcome::Ignored {
                reason: format!("`{}` does not change a preview", pr.action),
            });
        }
        let Some(from) = trusted
            .environments
            .iter()
            .find(|e| e.name == previews.from)
        else {
            return Ok(PreviewOutcome::Ignored {
                reason: format!("`previews.from` names no environment: `{}`", previews.from),
            });
        };
        if pr.base_ref != from.branch {
            return Ok(PreviewOutcome::Ignored {
                reason: format!(
                    "pull request #{} merges into `{}`; previews are for pull requests into `{}` (environment `{}`)",
                    pr.number, pr.base_ref, from.branch, from.name
                ),
            });
        }
        if let Some(reason) = held_back(pr, previews) {
            return Ok(PreviewOutcome::Skipped {
                preview: name,
                reason,
            });
        }
        let head = match self.fetch_head(repo, pr).await? {
            Ok(head) => head,
            Err(newer) => {
                return Ok(PreviewOutcome::Skipped {
                    preview: name,
                    reason: format!(
                        "the head of pull request #{} is {} now, which does not contain {} that this event names (a force-push): the event of that push deploys it",
                        pr.number,
                        short(&newer),
                        short(&pr.head_sha)
                    ),
                });
            }
        };
        // A label approves the head it was given on, and nothing pushed after it.
        if pr.from_fork && !head.starts_with(&pr.head_sha) {
            return Ok(PreviewOutcome::Skipped {
                preview: name,
                reason: format!(
                    "pull request #{} comes from a fork and its head moved to {} after the label `{}` approved {}; label it again to deploy the new head",
                    pr.number,
                    short(&head),
                    label.unwrap_or_default(),
                    short(&pr.head_sha)
                ),
            });
        }
        let trigger = Trigger::new(
            TriggerKind::Preview,
            pr.sender.as_deref().unwrap_or_default(),
        );
        self.deploy(
            repo,
            &trusted,
            previews,
            (pr.number, &pr.fetch_ref),
            (&head, default),
            (delivery, &trigger),
        )
        .await
    }

    /// The default branch's head and the root on it; `Err(reason)` when there is none.
    async fn trusted_root(
        &self,
        repo: &WatchedRepo,
    ) -> Result<Result<(git2::Oid, Root), String>, Error> {
        let (mirror, config) = (repo.mirror.clone(), repo.config.clone());
        tokio::task::spawn_blocking(move || {
            let head = match mirror.fetch_branch(&config.default_branch) {
                Ok(head) => head,
                Err(repo::Error::NoSuchBranch { .. }) => {
                    return Ok(Err(format!(
                        "the default branch `{}` does not exist",
                        config.default_branch
                    )));
                }
                Err(e) => return Err(Error::Fetch(e)),
            };
            let local = mirror.local().map_err(Error::Fetch)?;
            let snapshot = local.snapshot(head).map_err(Error::Fetch)?;
            match resolve::read_root(&snapshot, &config.root) {
                Ok(Some(root)) => Ok(Ok((head, root))),
                Ok(None) => Ok(Err(format!(
                    "the default branch `{}` has no {}",
                    config.default_branch, config.root
                ))),
                Err(resolve::Error::Invalid(problems)) => Ok(Err(format!(
                    "the root on the default branch does not read: {}",
                    resolve::Error::Invalid(problems)
                ))),
                Err(e) => Err(Error::Read(e)),
            }
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
    }

    /// Fetches the PR's head by its ref; it must be the commit the event names or a
    /// descendant of it (a later push), never an older one. `Err(head)` when the event names a
    /// commit its head no longer contains (forced away since); a 503 ([`Error::Lagging`]) while
    /// the fetch does not have the commit yet.
    async fn fetch_head(
        &self,
        repo: &WatchedRepo,
        pr: &PullRequest,
    ) -> Result<Result<String, String>, Error> {
        let (mirror, reference, named) = (
            repo.mirror.clone(),
            pr.fetch_ref.clone(),
            pr.head_sha.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let lagging = || Error::Lagging {
                branch: reference.clone(),
                after: named.clone(),
            };
            let head = match mirror.fetch_branch(&reference) {
                Ok(head) => head,
                Err(repo::Error::NoSuchBranch { .. }) => return Err(lagging()),
                Err(e) => return Err(Error::Fetch(e)),
            };
            let local = mirror.local().map_err(Error::Fetch)?;
            // Bitbucket Cloud names commits by 12 characters.
            let Ok(named_oid) = local.rev(&named) else {
                return Err(lagging());
            };
            if local.is_ancestor(named_oid, head).map_err(Error::Fetch)? {
                Ok(Ok(head.to_string()))
            } else if local.is_ancestor(head, named_oid).map_err(Error::Fetch)? {
                Err(lagging()) // the fetch URL serves an older head than the event's
            } else {
                Ok(Err(head.to_string()))
            }
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
    }

    /// Resolves the preview at `head`, takes its place in the budget, and enqueues one job per
    /// app, and a teardown for each app its services show and the head no longer lists.
    async fn deploy(
        &self,
        repo: &WatchedRepo,
        trusted: &Root,
        previews: &Previews,
        (number, fetch_ref): (u64, &str),
        (head, default): (&str, git2::Oid),
        (delivery, trigger): Origin<'_>,
    ) -> Result<PreviewOutcome, Error> {
        let name = preview::name(number);
        let (state, info) = match self.resolve_preview(repo, number, head, default).await? {
            Ok(resolved) => resolved,
            Err(problems) => {
                return Ok(PreviewOutcome::Invalid {
                    preview: name,
                    commit: head.to_owned(),
                    problems: problems.iter().map(Problem::to_string).collect(),
                });
            }
        };
        let registry = Registry {
            ecs: &self.ecs,
            repo: &repo.config.name,
            cluster: &previews.cluster,
        };
        match registry
            .admit(number, head, fetch_ref, previews.max_active)
            .await
        {
            Ok(Admission::Active) => {}
            Ok(Admission::Waiting { ahead }) => {
                info!(message = "Preview waits for a place.", repo = %repo.config.name, preview = %name, ahead);
                return Ok(PreviewOutcome::Waiting {
                    preview: name,
                    commit: head.to_owned(),
                    ahead,
                });
            }
            Err(registry::Error::Ecs(e)) => return Err(Error::Ecs(e)),
            Err(e) => {
                return Ok(PreviewOutcome::Skipped {
                    preview: name,
                    reason: e.to_string(),
                });
            }
        }
        let listed: BTreeSet<&str> = state.apps.iter().map(|a| a.name.as_str()).collect();
        let removed: Vec<PreviewApp> = self
            .preview_services(&previews.cluster, &trusted.name, number)
            .await?
            .into_iter()
            .filter(|p| !listed.contains(p.app.as_str()))
            .collect();
        let index = dependency_index(&state.apps);
        let jobs: Vec<SyncJob> = state
            .apps
            .into_iter()
            .map(|app| {
                SyncJob::new(&repo.config.name, fetch_ref, delivery, app)
                    .with_dependencies(&index)
                    .triggered_by(trigger.clone().about_commit(&info.author, &info.summary))
            })
            .collect();
        let enqueued = self.queue.send(&jobs).await?;
        let teardown = teardown_jobs(repo, trusted, &previews.cluster, number, delivery, &removed);
        self.queue.send_teardown(&teardown).await?;
        info!(message = "Preview enqueued.", repo = %repo.config.name, preview = %name, commit = %head, jobs = enqueued.len(), removed = removed.len());
        Ok(PreviewOutcome::Enqueued {
            preview: name,
            commit: head.to_owned(),
            jobs: enqueued,
            removed: removed.into_iter().map(|p| p.app).collect(),
        })
    }

    /// The preview's desired state at `head`; `Ok(Err(problems))` when it does not resolve.
    async fn resolve_preview(
        &self,
        repo: &WatchedRepo,
        number: u64,
        head: &str,
        default: git2::Oid,
    ) -> Result<Result<(DesiredState, repo::CommitInfo), Vec<Problem>>, Error> {
        let head = git2::Oid::from_str(head).map_err(|e| Error::Internal(e.to_string()))?;
        let _resolving = self
            .resolves
            .acquire()
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        let (mirror, config, sources) = (
            repo.mirror.clone(),
            repo.config.clone(),
            self.sources.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let local = mirror.local().map_err(Error::Fetch)?;
            let trusted = match resolve::read_root(
                &local.snapshot(default).map_err(Error::Fetch)?,
                &config.root,
            ) {
                Ok(Some(root)) => root,
                Ok(None) => return Ok(Err(Vec::new())),
                Err(resolve::Error::Invalid(problems)) => return Ok(Err(problems)),
                Err(e) => return Err(Error::Read(e)),
            };
            let files = local.snapshot(head).map_err(Error::Fetch)?;
            let info = local.commit_info(head).map_err(Error::Fetch)?;
            match resolve::resolve_preview(
                &files,
                &*sources,
                &config.root,
                &trusted,
                number,
                &head.to_string(),
            ) {
                Ok(state) => Ok(Ok((state, info))),
                Err(resolve::Error::Invalid(problems)) => Ok(Err(problems)),
                Err(e) => Err(Error::Read(e)),
            }
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
    }

    /// The services of PR `number`'s preview in `cluster`: only those carrying its own tag and
    /// the root's.
    async fn preview_services(
        &self,
        cluster: &str,
        root: &str,
        number: u64,
    ) -> Result<Vec<PreviewApp>, Error> {
        Ok(self
            .previews_in(cluster, root)
            .await?
            .into_iter()
            .filter(|(n, _)| *n == number)
            .map(|(_, app)| app)
            .collect())
    }

    /// Every preview service of `root` in `cluster`, by PR number.
    async fn previews_in(
        &self,
        cluster: &str,
        root: &str,
    ) -> Result<Vec<(u64, PreviewApp)>, Error> {
        let names = match self.ecs.list_services(cluster).await {
            Ok(names) => names,
            Err(e) if e.code() == "ClusterNotFoundException" => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let live = self.ecs.describe_services(cluster, &names).await?;
        let mut found: Vec<(u64, PreviewApp)> = live
            .into_iter()
            .filter(|(_, s)| s.tags.get(tag::ROOT).map(String::as_str) == Some(root))
            .filter_map(|(service, s)| {
                let number = s.tags.get(tag::PREVIEW)?.parse().ok()?;
                let id = task_definition_id(&s.task_definition);
                Some((
                    number,
                    PreviewApp {
                        app: s.tags.get(tag::APP)?.clone(),
                        environment: s.tags.get(tag::ENVIRONMENT)?.clone(),
                        service,
                        family: id.rsplit_once(':').map_or(id, |(f, _)| f).to_owned(),
                    },
                ))
            })
            .collect();
        found.sort();
        Ok(found)
    }

    /// Enqueues a teardown for every app of the preview: those its services show, and those
    /// its last head lists (a job creating one may still be queued: the teardown follows it in
    /// its group). Then forgets the preview in the registry. `None` when there is no preview.
    async fn tear_down(
        &self,
        repo: &WatchedRepo,
        trusted: &Root,
        previews: &Previews,
        number: u64,
        delivery: &str,
    ) -> Result<Option<Vec<String>>, Error> {
        let target = Teardown {
            cluster: &previews.cluster,
            previews: Some(previews),
            idle_since: None,
        };
        self.tear_down_in(repo, trusted, &target, number, delivery)
            .await
    }

    async fn tear_down_in(
        &self,
        repo: &WatchedRepo,
        trusted: &Root,
        target: &Teardown<'_>,
        number: u64,
        delivery: &str,
    ) -> Result<Option<Vec<String>>, Error> {
        let (cluster, previews) = (target.cluster, target.previews);
        let registry = Registry {
            ecs: &self.ecs,
            repo: &repo.config.name,
            cluster,
        };
        let entry = match registry.read().await {
            Ok((_, entries, _)) => entries.into_iter().find(|e| e.number == number),
            Err(registry::Error::Ecs(e)) => return Err(Error::Ecs(e)),
            Err(_) => None,
        };
        // The sweeper decided from an older read: a push since then keeps the preview.
        if let (Some(idle_since), Some(entry)) = (target.idle_since, &entry)
            && entry.pushed > idle_since
        {
            return Ok(None);
        }
        let mut apps = self
            .preview_services(cluster, &trusted.name, number)
            .await?;
        if entry.is_none() && apps.is_empty() {
            return Ok(None);
        }
        // A preview that waited never had a job: only an active one's last head can have one
        // still queued.
        if let (Some(entry), Some(previews)) = (&entry, previews)
            && entry.state == State::Active
            && let Ok(head) = git2::Oid::from_str(&entry.head)
        {
            let default = {
                let (mirror, branch) = (repo.mirror.clone(), repo.config.default_branch.clone());
                tokio::task::spawn_blocking(move || mirror.local()?.branch_head(&branch))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))?
                    .map_err(Error::Fetch)?
            };
            if let Some(default) = default
                && let Ok(Ok((state, _))) = self
                    .resolve_preview(repo, number, &head.to_string(), default)
                    .await
            {
                for app in state.apps {
                    if !apps.iter().any(|p| p.app == app.name) {
                        apps.push(PreviewApp {
                            service: app.service_name().to_owned(),
                            family: app.family().to_owned(),
                            environment: previews.from.clone(),
                            app: app.name,
                        });
                    }
                }
            }
        }
        let jobs = teardown_jobs(repo, trusted, cluster, number, delivery, &apps);
        self.queue.send_teardown(&jobs).await?;
        // Forgotten only once its teardown is durable: a failure here leaves it for the
        // redelivery or the sweeper.
        match registry.release(number).await {
            Ok(()) => {}
            Err(registry::Error::Ecs(e)) => return Err(Error::Ecs(e)),
            Err(_) => {}
        }
        info!(message = "Preview torn down.", repo = %repo.config.name, preview = %preview::name(number), apps = apps.len());
        Ok(Some(apps.into_iter().map(|p| p.app).collect()))
    }

    /// Gives free places to the oldest waiting previews, and deploys them. Failures are left
    /// to the next sweep: the PRs keep their place in the line.
    async fn promote(
        &self,
        repo: &WatchedRepo,
        trusted: &Root,
        previews: &Previews,
        default: git2::Oid,
    ) -> Vec<String> {
        let registry = Registry {
            ecs: &self.ecs,
            repo: &repo.config.name,
            cluster: &previews.cluster,
        };
        let promoted = match registry.promote(previews.max_active).await {
            Ok(promoted) => promoted,
            Err(e) => {
                warn!(message = "Cannot give waiting previews their place; the sweeper will.", repo = %repo.config.name, error = %e);
                return Vec::new();
            }
        };
        let mut deployed = Vec::new();
        for entry in promoted {
            let delivery = format!("promoted-{}-{}", entry.number, entry.since);
            // The head it was admitted with, never a later one fetched now: for a fork, that
            // is the head its label approved (a later push was refused, and needs the label).
            let head = entry.head.clone();
            let trigger = Trigger::new(TriggerKind::Preview, "fleetsync").because(&format!(
                "pull request #{} got a place in the previews budget",
                entry.number
            ));
            match self
                .deploy(
                    repo,
                    trusted,
                    previews,
                    (entry.number, &entry.fetch_ref),
                    (&head, default),
                    (&delivery, &trigger),
                )
                .await
            {
                Ok(outcome) => {
                    self.tell_preview(&repo.config.name, (entry.number, &head), &outcome)
                        .await;
                    deployed.push(preview::name(entry.number));
                }
                Err(e) => {
                    warn!(message = "Cannot deploy a preview that got its place; the sweeper tries again.", repo = %repo.config.name, preview = %preview::name(entry.number), error = %e);
                }
            }
        }
        deployed
    }

    /// Tears down what outlived its PR: previews idle past `ttl`, every preview once
    /// `previews` is removed or moved to another cluster, and services of a preview the
    /// registry no longer has. Then gives free places to waiting previews.
    pub async fn sweep_previews(&self, repo: &WatchedRepo) -> Result<Swept, Error> {
        let mut swept = Swept::default();
        let (default, trusted) = match self.trusted_root(repo).await? {
            Ok(found) => found,
            Err(_) => return Ok(swept),
        };
        let previews = trusted.previews.as_ref();
        let mut clusters: BTreeSet<String> =
            previews.map(|p| p.cluster.clone()).into_iter().collect();
        let arns = self.ecs.list_clusters().await?;
        for chunk in arns.chunks(100) {
            let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
            for cluster in self.ecs.describe_clusters(&chunk).await? {
                if registry::holds(&repo.config.name, &cluster.tags) {
                    clusters.insert(cluster.name);
                }
            }
        }
        let now = registry::now();
        for cluster in clusters {
            let current = previews.filter(|p| p.cluster == cluster);
            let registry = Registry {
                ecs: &self.ecs,
                repo: &repo.config.name,
                cluster: &cluster,
            };
            let entries = match registry.read().await {
                Ok((_, entries, _)) => entries,
                Err(registry::Error::NoCluster(_)) => continue,
                Err(e) => {
                    warn!(message = "Cannot read the preview registry.", %cluster, error = %e);
                    continue;
                }
            };
            // Torn down whatever their last push; idle ones only if still idle when torn down.
            let mut doomed: BTreeSet<u64> = BTreeSet::new();
            let mut expired: BTreeSet<u64> = BTreeSet::new();
            for entry in &entries {
                let idle = now.saturating_sub(entry.pushed);
                match current {
                    None => {
                        doomed.insert(entry.number);
                    }
                    Some(p) if idle > p.ttl.as_secs() && entry.state == State::Waiting => {
                        if let Err(e) = registry.release(entry.number).await {
                            warn!(message = "Cannot forget an expired waiting preview.", error = %e);
                        }
                    }
                    Some(p) if idle > p.ttl.as_secs() => {
                        expired.insert(entry.number);
                    }
                    Some(_) => {}
                }
            }
            let known: BTreeSet<u64> = entries.iter().map(|e| e.number).collect();
            for (number, _) in self.previews_in(&cluster, &trusted.name).await? {
                if !known.contains(&number) || current.is_none() {
                    doomed.insert(number);
                }
            }
            let ttl = current.map_or(0, |p| p.ttl.as_secs());
            let targets = doomed.iter().map(|n| (*n, None)).chain(
                expired
                    .difference(&doomed)
                    .map(|n| (*n, Some(now.saturating_sub(ttl)))),
            );
            for (number, idle_since) in targets {
                let delivery = format!("sweep-{number}-{}", now / 300);
                let target = Teardown {
                    cluster: &cluster,
                    previews: current,
                    idle_since,
                };
                if self
                    .tear_down_in(repo, &trusted, &target, number, &delivery)
                    .await?
                    .is_some()
                {
                    swept.torn_down.push(preview::name(number));
                }
            }
        }
        if let Some(previews) = previews {
            swept.promoted = self.promote(repo, &trusted, previews, default).await;
        }
        Ok(swept)
    }

    /// The previews of every repo: active and waiting, with their apps' services.
    pub async fn previews(&self) -> Result<Vec<PreviewStatus>, Error> {
        let mut all = Vec::new();
        for repo in &self.repos {
            let Ok((_, trusted)) = self.trusted_root(repo).await? else {
                continue;
            };
            let Some(previews) = &trusted.previews else {
                continue;
            };
            let registry = Registry {
                ecs: &self.ecs,
                repo: &repo.config.name,
                cluster: &previews.cluster,
            };
            let entries = match registry.read().await {
                Ok((_, entries, _)) => entries,
                Err(registry::Error::Ecs(e)) => return Err(Error::Ecs(e)),
                Err(_) => Vec::new(),
            };
            let names = match self.ecs.list_services(&previews.cluster).await {
                Ok(names) => names,
                Err(e) if e.code() == "ClusterNotFoundException" => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let live = self
                .ecs
                .describe_services(&previews.cluster, &names)
                .await?;
            let now = registry::now();
            for entry in entries {
                let number = entry.number.to_string();
                let mut apps: Vec<PreviewAppStatus> = live
                    .iter()
                    .filter(|(_, s)| s.tags.get(tag::PREVIEW) == Some(&number))
                    .filter(|(_, s)| s.tags.get(tag::ROOT) == Some(&trusted.name))
                    .map(|(service, s)| PreviewAppStatus {
                        app: s.tags.get(tag::APP).cloned().unwrap_or_default(),
                        service: service.clone(),
                        commit: s.tags.get(tag::REVISION).cloned().unwrap_or_default(),
                        health: status::live_health(s),
                        running: s.running_count,
                        desired: s.desired_count,
                        url: s.tags.get(tag::URL).cloned(),
                    })
                    .collect();
                apps.sort_by(|a, b| a.app.cmp(&b.app));
                all.push(PreviewStatus {
                    repo: repo.config.name.clone(),
                    preview: preview::name(entry.number),
                    number: entry.number,
                    state: entry.state,
                    head: entry.head,
                    cluster: previews.cluster.clone(),
                    age_seconds: now.saturating_sub(entry.since),
                    expires_in_seconds: (entry.pushed + previews.ttl.as_secs()).saturating_sub(now),
                    apps,
                });
            }
        }
        Ok(all)
    }
}

/// A preview as `GET /api/v1/previews` shows it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviewStatus {
    pub repo: String,
    pub preview: String,
    pub number: u64,
    pub state: State,
    pub head: String,
    pub cluster: String,
    /// Since it became active, or started waiting.
    pub age_seconds: u64,
    /// Until the sweeper tears it down, unless the PR is pushed to again.
    pub expires_in_seconds: u64,
    pub apps: Vec<PreviewAppStatus>,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviewAppStatus {
    pub app: String,
    pub service: String,
    pub commit: String,
    pub health: status::Health,
    pub running: i32,
    pub desired: i32,
    /// Where it is reached, with `previews.ingress`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Why a PR that previews are for does not deploy, if it does not.
fn held_back(pr: &PullRequest, previews: &Previews) -> Option<String> {
    let n = pr.number;
    if pr.draft {
        return Some(format!(
            "pull request #{n} is a draft; it deploys once it is ready for review"
        ));
    }
    if pr.from_fork && !previews.allow_forks {
        return Some(format!(
            "pull request #{n} comes from a fork, and `previews.allowForks` is false: nothing is deployed"
        ));
    }
    let label = previews.label.as_deref()?;
    if pr.from_fork {
        // Only the act of labelling approves a fork's head: a push after it is not approved.
        if !matches!(&pr.kind, PullRequestKind::Labeled(added) if added.iter().any(|l| l == label))
        {
            return Some(format!(
                "pull request #{n} comes from a fork: its head {} deploys once someone gives it the label `{label}` (a label approves only the head it was given on; a later push needs it again)",
                short(&pr.head_sha)
            ));
        }
        return None;
    }
    (!pr.labels.iter().any(|l| l == label)).then(|| {
        format!("pull request #{n} does not carry the label `{label}`; add it to deploy a preview")
    })
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

fn teardown_jobs(
    repo: &WatchedRepo,
    trusted: &Root,
    cluster: impl AsRef<str>,
    number: u64,
    delivery: &str,
    apps: &[PreviewApp],
) -> Vec<TeardownJob> {
    apps.iter()
        .map(|p| TeardownJob {
            version: SyncJob::VERSION,
            kind: TeardownJob::KIND.to_owned(),
            repo: repo.config.name.clone(),
            delivery: delivery.to_owned(),
            root: trusted.name.clone(),
            environment: p.environment.clone(),
            preview: number,
            cluster: cluster.as_ref().to_owned(),
            app: p.app.clone(),
            service: p.service.clone(),
            family: p.family.clone(),
            ingress: trusted
                .previews
                .as_ref()
                .is_some_and(|p| p.ingress.is_some()),
        })
        .collect()
}
