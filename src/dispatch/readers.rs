//! Which environment branches read which branches of other repos (`source:`), learned from
//! every resolve and refreshed from the remotes' heads, so a push to any repo resolves again
//! exactly the environments that read it.

use super::*;

impl Dispatcher {
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

    pub(super) async fn refresh_readers_of(
        &self,
        config: &WatchedRepo,
    ) -> Result<Vec<String>, Error> {
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
    pub(super) async fn readers_of(
        &self,
        repo: &str,
        branch: &str,
    ) -> (Vec<(&WatchedRepo, String)>, bool) {
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

    pub(super) fn readers_index(&self) -> std::sync::MutexGuard<'_, ReaderIndex> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner())
    }
}
