//! The one resolve path every trigger shares: fetch a branch, take the bindings and the top
//! policy from the default branch, resolve every environment bound to the branch.

use super::*;

impl Dispatcher {
    /// Fetches `branch` of `repo` and resolves its environments (see [`plan_branch`]), and
    /// notes which other repos they read.
    pub(super) async fn plan(&self, repo: &WatchedRepo, branch: &str) -> Result<Plan, Error> {
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
}

pub(super) enum Plan {
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
pub(super) struct EnvironmentResult {
    pub(super) environment: Option<String>,
    pub(super) result: Result<DesiredState, Vec<Problem>>,
    pub(super) reads: Reads,
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

/// The distinct branches the root on the default branch binds environments to; `None` when
/// the repo is not a config repo (see [`environment_bindings`]).
pub(super) fn environment_branches(
    mirror: &Mirror,
    repo: &RepoConfig,
) -> Result<Option<Vec<String>>, Error> {
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
pub(super) fn environment_bindings(
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

/// The prune job for a resolved environment of a root with `prune: true`.
pub(super) fn prune_job(
    repo: &str,
    branch: &str,
    delivery: &str,
    state: &DesiredState,
) -> Option<PruneJob> {
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
