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
        let fetched = {
            let (mirror, config) = (mirror.clone(), config.clone());
            tokio::task::spawn_blocking(move || fetch_heads(&mirror, &config, &b))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??
        };
        let heads = match fetched {
            Ok(heads) => heads,
            Err(reason) => return Ok(Plan::Ignored(reason)),
        };
        // Fetches wait on the network; resolves on CPU and memory, so no more run at once than
        // there are cores, whatever the number of branches pushed together.
        let _resolving = self
            .resolves
            .acquire()
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        let b = branch.to_owned();
        let plan = tokio::task::spawn_blocking(move || {
            resolve_heads(&mirror, &config, &b, heads, &*sources)
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
        // Only environment branches are indexed: any branch can be pushed.
        if let Plan::Resolved {
            commit,
            bindings,
            results,
            ..
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

impl Dispatcher {
    /// The spec hashes the branch's environments had just before `moved`: what `resolution`
    /// read, with only the branch that moved put back where it was. Every receiver finds the
    /// same, whatever it enqueued itself, so a push answered by any replica sends only what it
    /// changed. Empty (everything is sent) when that commit is not known here (a new branch, a
    /// force-push from a head never fetched) or does not resolve.
    pub(super) async fn baseline(
        &self,
        repo: &WatchedRepo,
        branch: &str,
        resolution: &Resolution,
        moved: Moved<'_>,
    ) -> Specs {
        let parent = resolution.parent(moved);
        let (Ok(head), Ok(default)) = (
            git2::Oid::from_str(&parent.head),
            git2::Oid::from_str(&resolution.bindings),
        ) else {
            return Specs::new();
        };
        let before = match moved {
            Moved::Branch { before } | Moved::Source { before, .. } => before,
        };
        if before.len() != 40 || before.bytes().all(|b| b == b'0') {
            return Specs::new();
        }
        let Ok(_resolving) = self.resolves.acquire().await else {
            return Specs::new();
        };
        let (mirror, config, sources, b) = (
            repo.mirror.clone(),
            repo.config.clone(),
            self.sources.clone(),
            branch.to_owned(),
        );
        let plan = tokio::task::spawn_blocking(move || {
            let local = mirror.local().map_err(Error::Fetch)?;
            if !local.contains(head) {
                return Ok(None);
            }
            let pinned = repo::PinnedSources {
                sources: &sources,
                pins: &parent.sources,
            };
            let heads = Heads {
                branch: head,
                default,
            };
            resolve_heads(&mirror, &config, &b, heads, &pinned).map(Some)
        })
        .await;
        let results = match plan {
            Ok(Ok(Some(Plan::Resolved { results, .. }))) => results,
            Ok(Ok(_)) => return Specs::new(),
            Ok(Err(e)) => {
                warn!(message = "Cannot resolve the branch as it was before the push; every app is sent.", repo = %repo.config.name, %branch, error = %e);
                return Specs::new();
            }
            Err(e) => {
                warn!(message = "Cannot resolve the branch as it was before the push; every app is sent.", repo = %repo.config.name, %branch, error = %e);
                return Specs::new();
            }
        };
        specs_of(&results)
    }
}

/// The spec hashes of the environments that resolved, by environment and app.
pub(super) fn specs_of(results: &[EnvironmentResult]) -> Specs {
    results
        .iter()
        .filter_map(|r| r.result.as_ref().ok())
        .map(|state| {
            let apps = state
                .apps
                .iter()
                .map(|app| (app.name.clone(), app.spec_hash.clone()))
                .collect();
            (state.environment.clone(), apps)
        })
        .collect()
}

pub(super) enum Plan {
    Ignored(String),
    Resolved {
        commit: String,
        /// Its author and summary line, for the jobs' audit trail.
        head: repo::CommitInfo,
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
    sources: &'a dyn resolve::Sources,
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

/// The fetched heads of a branch and of the default branch.
struct Heads {
    branch: git2::Oid,
    default: git2::Oid,
}

/// Fetches the branch and the default branch; `Err(reason)` when either does not exist.
fn fetch_heads(
    mirror: &Mirror,
    repo: &RepoConfig,
    branch: &str,
) -> Result<Result<Heads, String>, Error> {
    let head = match mirror.fetch_branch(branch) {
        Ok(head) => head,
        Err(repo::Error::NoSuchBranch { .. }) => {
            return Ok(Err(format!(
                "branch `{branch}` no longer exists; nothing to deploy"
            )));
        }
        Err(e) => return Err(Error::Fetch(e)),
    };
    let default = if branch == repo.default_branch {
        head
    } else {
        match mirror.fetch_branch(&repo.default_branch) {
            Ok(head) => head,
            Err(repo::Error::NoSuchBranch { .. }) => {
                return Ok(Err(format!(
                    "the default branch `{}`, whose {} binds environments to branches, does not exist; set `defaultBranch` in the server config",
                    repo.default_branch, repo.root
                )));
            }
            Err(e) => return Err(Error::Fetch(e)),
        }
    };
    Ok(Ok(Heads {
        branch: head,
        default,
    }))
}

/// Resolves every environment bound to the branch, at the fetched head (never the payload's
/// commit: a later push may already be there). Bindings (environment → branch, cluster) come
/// from the root on the default branch: a branch cannot make itself production.
fn resolve_heads(
    mirror: &Mirror,
    repo: &RepoConfig,
    branch: &str,
    heads: Heads,
    sources: &dyn resolve::Sources,
) -> Result<Plan, Error> {
    let root_path = repo.root.as_str();
    let (head, default_head) = (heads.branch, heads.default);
    let commit = head.to_string();
    let local = mirror.local().map_err(Error::Fetch)?;
    let head_info = local.commit_info(head).map_err(Error::Fetch)?;
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
                head: head_info,
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
        head: head_info,
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    /// example-repo/ committed on `main` (production's branch) of a repo in `dir`.
    fn upstream(dir: &Path) {
        copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("example-repo"),
            dir,
        );
        let repo = git2::Repository::init(dir).unwrap();
        let mut index = repo.index().unwrap();
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let who = git2::Signature::now("t", "t@example.invalid").unwrap();
        repo.commit(Some("refs/heads/main"), &who, &who, "example", &tree, &[])
            .unwrap();
    }

    /// Resolves take one of a few places, fetches none: a burst of pushes to many branches
    /// resolves no more at once than there are cores, and none of them waits to fetch.
    #[tokio::test]
    async fn a_resolve_waits_for_a_place_and_its_fetch_does_not() {
        let dir = tempfile::tempdir().unwrap();
        upstream(&dir.path().join("upstream"));
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        let text = format!(
            "mirrorDir: {}\nqueueUrl: https://sqs.us-east-1.amazonaws.com/123456789012/q.fifo\nrepos:\n  - name: platform\n    url: https://github.com/acme/platform-config\n    fetchUrl: file://{}\n    secret: file:{}\n",
            dir.path().join("mirrors").display(),
            dir.path().join("upstream").display(),
            dir.path().join("secret").display(),
        );
        let config = Config::parse(&dir.path().join("c.yaml"), &text).unwrap();
        let aws = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build();
        let dispatcher = Arc::new(Dispatcher::from_config(&config, &aws).unwrap());
        let places = u32::try_from(dispatcher.resolves.available_permits()).unwrap();
        assert!(places >= 1);
        let taken = dispatcher.resolves.acquire_many(places).await.unwrap();

        let planning = {
            let d = dispatcher.clone();
            tokio::spawn(async move {
                let plan = d.plan(&d.repos[0], "main").await.unwrap();
                matches!(plan, Plan::Resolved { ref results, .. } if results.iter().all(|r| r.result.is_ok()))
            })
        };
        let mirror = dispatcher.repos[0].mirror.clone();
        for _ in 0..200 {
            if mirror.fetch_count() >= 1
                && matches!(
                    mirror.local().and_then(|l| l.branch_head("main")),
                    Ok(Some(_))
                )
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            matches!(
                mirror.local().and_then(|l| l.branch_head("main")),
                Ok(Some(_))
            ),
            "the fetch ran without a place"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!planning.is_finished(), "the resolve waited for a place");
        drop(taken);
        assert!(planning.await.unwrap(), "and resolved once it had one");
    }
}
