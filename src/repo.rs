//! Config repositories: a bare mirror per watched repo, fetched incrementally, and read at a
//! commit straight from the object database (no checkout, so concurrent reads of different
//! commits never disturb each other).
//!
//! git2 is blocking: async callers run these functions under `spawn_blocking`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use git2::{FetchOptions, Oid, Repository};

use crate::metrics::{Counter, Histogram, Registry, Series};
use crate::resolve;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open git repository {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("cannot fetch `{what}` from {url}: {message}")]
    Fetch {
        url: String,
        /// The branch, tag or commit being fetched.
        what: String,
        message: String,
    },
    #[error("branch `{branch}` does not exist in {url}")]
    NoSuchBranch { url: String, branch: String },
    #[error("`{reference}` is not a branch, tag or commit of {url}")]
    NoSuchRef { url: String, reference: String },
    #[error("`{spec}` does not name a commit in {path}: {message}")]
    BadRef {
        path: PathBuf,
        spec: String,
        message: String,
    },
    #[error("git error in {path}: {source}")]
    Git {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A local bare mirror of one remote config repo.
pub struct Mirror {
    path: PathBuf,
    fetch_url: String,
    /// Fetches into one mirror are serialised: libgit2 takes ref locks and a second concurrent
    /// fetch of the same branch would fail instead of waiting.
    fetch_lock: Mutex<()>,
    fetches: Counter,
    /// How long fetches took once they had the lock, failed ones included.
    fetch_seconds: Histogram,
}

/// libgit2 re-hashes every object it reads to check it against its id; git itself does not (it
/// checks on fetch and in `git fsck`). Without it, validating a 10,000-app tree went from
/// 0.84-0.85 s to 0.77-0.80 s on the benchmark machine.
///
/// libgit2 sets no network timeouts of its own: a half-open connection would freeze a fetch,
/// and every later push to that repo would queue behind it.
fn configure_libgit2() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        git2::opts::strict_hash_verification(false);
        // SAFETY: these write libgit2 globals unsynchronised, so nothing may read them at the
        // same time. The timeouts are read only by network transports, and every fetch and
        // ls-remote goes through a `Mirror`, which calls this before it exists. The cache size
        // is read whenever an object is cached: `serve` and `worker` open their mirrors before
        // any other repository, and `Local::open` calls this too, so no thread of fleetsync's
        // reads it yet.
        #[allow(unsafe_code)]
        unsafe {
            let _ = git2::opts::set_server_connect_timeout_in_milliseconds(CONNECT_TIMEOUT_MS);
            let _ = git2::opts::set_server_timeout_in_milliseconds(READ_TIMEOUT_MS);
            // libgit2's object cache (commits and trees up to 4 KiB each) is shared by every
            // open repository and allowed 256 MiB by default: consolidating a mirror walks its
            // whole history and filled it, ~18 MiB per 1,000 commits, kept afterwards. A
            // resolve's working set (the trees of one commit) fits many times in this.
            let _ = libgit2_sys::git_libgit2_opts(
                libgit2_sys::GIT_OPT_SET_CACHE_MAX_SIZE as libc::c_int,
                OBJECT_CACHE_BYTES as libc::ssize_t,
            );
        }
    });
}

/// The most libgit2 keeps of parsed objects, for all repositories together.
const OBJECT_CACHE_BYTES: usize = 16 << 20;

/// How long a fetch waits to connect, and then for each read from the server.
const CONNECT_TIMEOUT_MS: i32 = 10_000;
const READ_TIMEOUT_MS: i32 = 30_000;

/// How long a whole fetch may take while it makes progress: a server that trickles bytes is cut
/// off too.
const FETCH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);

impl Mirror {
    /// Opens the mirror at `dir/<name>.git`, creating an empty bare repository on first use.
    pub fn open(dir: &Path, name: &str, fetch_url: &str) -> Result<Self> {
        configure_libgit2();
        let path = dir.join(format!("{name}.git"));
        if !path.exists() {
            std::fs::create_dir_all(dir).map_err(|e| Error::Open {
                path: path.clone(),
                source: git2::Error::from_str(&e.to_string()),
            })?;
            Repository::init_bare(&path).map_err(|source| Error::Open {
                path: path.clone(),
                source,
            })?;
        }
        Ok(Mirror {
            path,
            fetch_url: fetch_url.to_owned(),
            fetch_lock: Mutex::new(()),
            fetches: Counter::default(),
            fetch_seconds: crate::metrics::short_seconds(),
        })
    }

    /// Fetches `branch` and returns its head. The mirror's ref is forced to the remote's, so
    /// forced pushes and branch re-creation are followed exactly.
    ///
    /// A full ref name (`refs/pull/7/head`) is fetched as itself: a pull request's head.
    pub fn fetch_branch(&self, branch: &str) -> Result<Oid> {
        let no_such_branch = || Error::NoSuchBranch {
            url: redact_url(&self.fetch_url),
            branch: branch.to_owned(),
        };
        let refspec = match branch.strip_prefix("refs/") {
            Some(_) => format!("+{branch}:{branch}"),
            None => format!("+refs/heads/{branch}:refs/heads/{branch}"),
        };
        if !self.fetch(&[&refspec], branch)? {
            return Err(no_such_branch());
        }
        self.local()?
            .branch_head(branch)?
            .ok_or_else(no_such_branch)
    }

    /// Fetches what `reference` names, a branch, a tag or a full commit id, and returns its
    /// commit: the `ref` of an app kept in another repository.
    pub fn fetch_ref(&self, reference: &str) -> Result<Oid> {
        let no_such_ref = || Error::NoSuchRef {
            url: redact_url(&self.fetch_url),
            reference: reference.to_owned(),
        };
        if reference.len() == 40
            && let Ok(oid) = Oid::from_str(reference)
        {
            // Servers need not serve a commit by id: fetch what they advertise, once.
            if !self.local()?.contains(oid) {
                self.fetch(
                    &["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
                    reference,
                )?;
            }
            return if self.local()?.contains(oid) {
                Ok(oid)
            } else {
                Err(no_such_ref())
            };
        }
        if !is_valid_branch(reference) {
            return Err(no_such_ref());
        }
        match self.fetch_branch(reference) {
            Err(Error::NoSuchBranch { .. }) => {}
            found => return found,
        }
        let tag = format!("refs/tags/{reference}");
        if !self.fetch(&[&format!("+{tag}:{tag}")], reference)? {
            return Err(no_such_ref());
        }
        // Some transports answer a refspec naming nothing with an empty fetch, not an error.
        match self.local()?.rev(&tag) {
            Err(Error::BadRef { .. }) => Err(no_such_ref()),
            found => found,
        }
    }

    /// Fetches `refspecs`; `Ok(false)` when the remote has no ref a refspec names.
    fn fetch(&self, refspecs: &[&str], what: &str) -> Result<bool> {
        self.fetches.inc();
        let _guard = self
            .fetch_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let started = std::time::Instant::now();
        let fetched = self.fetch_locked(refspecs, what);
        self.fetch_seconds.observe(started.elapsed().as_secs_f64());
        fetched
    }

    fn fetch_locked(&self, refspecs: &[&str], what: &str) -> Result<bool> {
        let repo = self.repo()?;
        let fetch_err = |e: git2::Error| Error::Fetch {
            url: redact_url(&self.fetch_url),
            what: what.to_owned(),
            message: e.message().to_owned(),
        };
        let mut remote = repo.remote_anonymous(&self.fetch_url).map_err(fetch_err)?;
        let mut options = FetchOptions::new();
        let deadline = std::time::Instant::now() + FETCH_DEADLINE;
        let mut callbacks = git2::RemoteCallbacks::new();
        callbacks.transfer_progress(move |_| std::time::Instant::now() < deadline);
        options.remote_callbacks(callbacks);
        options.download_tags(git2::AutotagOption::None);
        // Pruning drops the mirror's copy of a branch deleted upstream, so a stale head is
        // never mistaken for the current one.
        options.prune(git2::FetchPrune::On);
        let fetched = match remote.fetch(refspecs, Some(&mut options), None) {
            Ok(()) => true,
            Err(e) if e.message().contains("couldn't find remote ref") => false,
            Err(e) => return Err(fetch_err(e)),
        };
        if pack_count(&self.path) > MAX_PACKS {
            if let Err(e) = consolidate(&repo, &self.path) {
                // Only slower lookups: the mirror stays as it was.
                tracing::warn!(message = "Cannot consolidate the mirror's packs.", path = %self.path.display(), error = %e);
            }
            return_freed_memory();
        }
        Ok(fetched)
    }

    /// The remote's branches and their heads, without fetching anything (`git ls-remote`).
    pub fn remote_heads(&self) -> Result<HashMap<String, Oid>> {
        let repo = self.repo()?;
        let list_err = |e: git2::Error| Error::Fetch {
            url: redact_url(&self.fetch_url),
            what: "the list of branches".to_owned(),
            message: e.message().to_owned(),
        };
        let mut remote = repo.remote_anonymous(&self.fetch_url).map_err(list_err)?;
        remote.connect(git2::Direction::Fetch).map_err(list_err)?;
        let heads = remote
            .list()
            .map_err(list_err)?
            .iter()
            .filter_map(|head| {
                let branch = head.name().strip_prefix("refs/heads/")?;
                Some((branch.to_owned(), head.oid()))
            })
            .collect();
        Ok(heads)
    }

    /// Fetches started since the mirror was opened.
    pub fn fetch_count(&self) -> u64 {
        self.fetches.get()
    }

    pub fn local(&self) -> Result<Local> {
        Ok(Local {
            repo: self.repo()?,
            path: self.path.clone(),
        })
    }

    fn repo(&self) -> Result<Repository> {
        Repository::open_bare(&self.path).map_err(|source| Error::Open {
            path: self.path.clone(),
            source,
        })
    }
}

/// Packs a mirror may hold before they are consolidated into one. libgit2 writes one pack per
/// fetch (about 1,400 a day at a push a minute) and looks an object up pack by pack, so
/// lookups would slow with uptime.
const MAX_PACKS: usize = 32;

fn pack_count(mirror: &Path) -> usize {
    std::fs::read_dir(mirror.join("objects/pack")).map_or(0, |dir| {
        dir.filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
            .count()
    })
}

/// Gives the memory a consolidation freed back to the system. libgit2 allocates through glibc's
/// malloc (fleetsync's own allocations go through mimalloc), which keeps what a thread freed in
/// that thread's arena: each blocking thread that once consolidated kept its largest peak,
/// and the receiver's RSS grew with the mirror's history (51 to 141 MiB over 3,000 pushes;
/// 132 MiB came back to 41 MiB with this call).
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of glibc's heaps, under glibc's own locks;
    // it touches no memory in use.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Writes everything reachable from the mirror's refs into one new pack, then deletes the
/// others: objects no ref reaches any more (force-pushed away, deleted branches) go with them.
/// Runs under the fetch lock; readers with an old pack open keep their mapping of it, and
/// libgit2 finds the new pack when an object is not where it looked.
fn consolidate(repo: &Repository, mirror: &Path) -> Result<(), git2::Error> {
    let dir = mirror.join("objects/pack");
    let before: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| git2::Error::from_str(&e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "pack" || x == "idx" || x == "rev")
        })
        .collect();
    let mut builder = repo.packbuilder()?;
    let mut walk = repo.revwalk()?;
    for reference in repo.references()? {
        let Some(target) = reference?.target() else {
            continue;
        };
        let object = repo.find_object(target, None)?;
        if object.kind() == Some(git2::ObjectType::Tag) {
            builder.insert_object(target, None)?; // the annotated tag itself
        }
        walk.push(object.peel_to_commit()?.id())?;
    }
    builder.insert_walk(&mut walk)?;
    builder.write(&dir, 0o444)?;
    let kept = builder
        .name()
        .map(|hash| format!("pack-{hash}."))
        .ok_or_else(|| git2::Error::from_str("the new pack has no name"))?;
    for old in before {
        if !old
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&kept))
        {
            let _ = std::fs::remove_file(old);
        }
    }
    Ok(())
}

/// A repository on disk, bare or not, read through its object database.
pub struct Local {
    repo: Repository,
    path: PathBuf,
}

impl Local {
    pub fn open(path: &Path) -> Result<Self> {
        configure_libgit2();
        let repo = Repository::open(path).map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(Local {
            repo,
            path: path.to_owned(),
        })
    }

    /// The head of a local branch, or of `origin/<branch>` in a clone that never checked it out.
    /// A full ref name (`refs/pull/7/head`) is looked up as itself.
    pub fn branch_head(&self, branch: &str) -> Result<Option<Oid>> {
        let names = if branch.starts_with("refs/") {
            vec![branch.to_owned()]
        } else {
            vec![
                format!("refs/heads/{branch}"),
                format!("refs/remotes/origin/{branch}"),
            ]
        };
        for name in names {
            match self.repo.refname_to_id(&name) {
                Ok(oid) => return Ok(Some(self.peel(oid)?)),
                Err(e) if e.code() == git2::ErrorCode::NotFound => continue,
                Err(source) => {
                    return Err(Error::Git {
                        path: self.path.clone(),
                        source,
                    });
                }
            }
        }
        Ok(None)
    }

    /// Any revision git understands: a branch, tag, or (abbreviated) commit id.
    pub fn rev(&self, spec: &str) -> Result<Oid> {
        let bad = |e: git2::Error| Error::BadRef {
            path: self.path.clone(),
            spec: spec.to_owned(),
            message: e.message().to_owned(),
        };
        let object = self.repo.revparse_single(spec).map_err(bad)?;
        Ok(object.peel_to_commit().map_err(bad)?.id())
    }

    /// The commit HEAD points at: where the list of environments is read from.
    pub fn head(&self) -> Result<Oid> {
        self.rev("HEAD")
    }

    pub fn contains(&self, commit: Oid) -> bool {
        self.repo.find_commit(commit).is_ok()
    }

    pub fn is_ancestor(&self, ancestor: Oid, descendant: Oid) -> Result<bool> {
        if ancestor == descendant {
            return Ok(true);
        }
        self.repo
            .graph_descendant_of(descendant, ancestor)
            .map_err(|source| Error::Git {
                path: self.path.clone(),
                source,
            })
    }

    /// Who wrote `commit` and the first line of its message: the audit trail's
    /// `commit-author` and a push's reason. Untrusted text, bounded here.
    pub fn commit_info(&self, commit: Oid) -> Result<CommitInfo> {
        let found = self.repo.find_commit(commit).map_err(|source| Error::Git {
            path: self.path.clone(),
            source,
        })?;
        let bounded = |text: &str| text.chars().take(CommitInfo::MAX_CHARS).collect();
        Ok(CommitInfo {
            author: bounded(&String::from_utf8_lossy(found.author().name_bytes())),
            summary: bounded(&String::from_utf8_lossy(
                found
                    .message_bytes()
                    .split(|b| *b == b'\n')
                    .next()
                    .unwrap_or_default(),
            )),
        })
    }

    /// The files of one commit.
    pub fn snapshot(&self, commit: Oid) -> Result<Snapshot<'_>> {
        let tree = self
            .repo
            .find_commit(commit)
            .and_then(|c| c.tree())
            .map_err(|source| Error::Git {
                path: self.path.clone(),
                source,
            })?;
        Ok(Snapshot {
            repo: &self.repo,
            tree,
            dirs: RefCell::default(),
        })
    }

    fn peel(&self, oid: Oid) -> Result<Oid> {
        let object = self
            .repo
            .find_object(oid, None)
            .and_then(|o| o.peel_to_commit());
        object.map(|c| c.id()).map_err(|source| Error::Git {
            path: self.path.clone(),
            source,
        })
    }
}

/// A commit's author and summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitInfo {
    pub author: String,
    pub summary: String,
}

impl CommitInfo {
    /// As much as an ECS tag value holds.
    const MAX_CHARS: usize = 256;
}

/// The tree of one commit.
pub struct Snapshot<'r> {
    repo: &'r Repository,
    tree: git2::Tree<'r>,
    /// Directory trees already read, by path (`None`: no such directory). A config repo lists
    /// thousands of apps in one directory: looking each file up from the root would inflate and
    /// hash that directory's tree again for every file, quadratic in the number of apps.
    dirs: RefCell<HashMap<String, Option<git2::Tree<'r>>>>,
}

impl<'r> Snapshot<'r> {
    /// The tree at `dir` ("" is the root).
    fn dir(&self, dir: &str) -> Result<Option<git2::Tree<'r>>, git2::Error> {
        if dir.is_empty() {
            return Ok(Some(self.tree.clone()));
        }
        if let Some(known) = self.dirs.borrow().get(dir) {
            return Ok(known.clone());
        }
        let (parent, name) = dir.rsplit_once('/').unwrap_or(("", dir));
        let tree = match self.dir(parent)? {
            Some(parent) => match parent.get_name(name) {
                Some(entry) if entry.kind() == Some(git2::ObjectType::Tree) => {
                    Some(self.repo.find_tree(entry.id())?)
                }
                _ => None,
            },
            None => None,
        };
        self.dirs.borrow_mut().insert(dir.to_owned(), tree.clone());
        Ok(tree)
    }
}

impl resolve::Files for Snapshot<'_> {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, resolve::ReadError> {
        let plain = !path
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let entry = if plain {
            match self
                .dir(dir)?
                .and_then(|tree| tree.get_name(name).map(|e| e.to_owned()))
            {
                Some(entry) => entry,
                None => return Ok(None),
            }
        } else {
            match self.tree.get_path(Path::new(path)) {
                Ok(entry) => entry,
                Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        };
        let unusable = |why: String| Err(resolve::Unusable(why).into());
        match entry.filemode() {
            0o120000 => {
                return unusable(
                    "a symbolic link; fleetsync reads files, not links: commit the file itself"
                        .into(),
                );
            }
            0o160000 => {
                return unusable(
                    "a submodule (gitlink); fleetsync reads no submodules: commit the file, or list the other repo as an app's `source:`"
                        .into(),
                );
            }
            _ if entry.kind() != Some(git2::ObjectType::Blob) => return Ok(None),
            _ => {}
        }
        // From the object's header: a blob is not inflated to learn that it is too large.
        let (size, _) = self.repo.odb()?.read_header(entry.id())?;
        if size as u64 > resolve::MAX_FILE_BYTES {
            return unusable(format!(
                "{size} bytes; files fleetsync reads are limited to {} KiB",
                resolve::MAX_FILE_BYTES / 1024
            ));
        }
        let blob = self.repo.find_blob(entry.id())?;
        Ok(Some(blob.content().to_vec()))
    }
}

/// Other repositories of the server config, by name, as mirrors fetched when read.
pub struct MirrorSources(pub Vec<(String, std::sync::Arc<Mirror>)>);

impl resolve::Sources for MirrorSources {
    fn open(&self, repo: &str, reference: &str) -> Result<resolve::Opened, resolve::SourceError> {
        let Some((_, mirror)) = self.0.iter().find(|(name, _)| name == repo) else {
            let known: Vec<_> = self.0.iter().map(|(name, _)| name.as_str()).collect();
            return Err(resolve::SourceError::UnknownRepo(format!(
                "no repo `{repo}` in the server config; known: {}",
                known.join(", ")
            )));
        };
        let commit = match mirror.fetch_ref(reference) {
            Ok(commit) => commit,
            // Named by the repo's name: the answer to a push must not show its URL.
            Err(Error::NoSuchRef { .. }) => {
                return Err(resolve::SourceError::Missing(format!(
                    "`{reference}` is not a branch, tag or full commit id of repo `{repo}`"
                )));
            }
            Err(e) => return Err(resolve::SourceError::Read(e.into())),
        };
        AtCommit::open(mirror.local(), commit)
    }
}

/// [`MirrorSources`] read at given commits, without fetching: what a resolve read before one
/// of them moved. A (repo, reference) not pinned is opened as usual.
pub struct PinnedSources<'a> {
    pub sources: &'a MirrorSources,
    /// (repo, reference) → commit id.
    pub pins: &'a std::collections::BTreeMap<(String, String), String>,
}

impl resolve::Sources for PinnedSources<'_> {
    fn open(&self, repo: &str, reference: &str) -> Result<resolve::Opened, resolve::SourceError> {
        let pinned = self.pins.get(&(repo.to_owned(), reference.to_owned()));
        let mirror = self.sources.0.iter().find(|(name, _)| name == repo);
        let (Some(commit), Some((_, mirror))) = (pinned, mirror) else {
            return self.sources.open(repo, reference);
        };
        let missing = || {
            resolve::SourceError::Missing(format!(
                "commit {commit} of repo `{repo}` is not in its mirror"
            ))
        };
        let oid = Oid::from_str(commit).map_err(|_| missing())?;
        let local = mirror
            .local()
            .map_err(|e| resolve::SourceError::Read(e.into()))?;
        if !local.contains(oid) {
            return Err(missing());
        }
        AtCommit::open(Ok(local), oid)
    }
}

/// Other repositories as local clones, for commands that read without fetching (`--source`).
pub struct LocalSources(pub Vec<(String, PathBuf)>);

impl resolve::Sources for LocalSources {
    fn open(&self, repo: &str, reference: &str) -> Result<resolve::Opened, resolve::SourceError> {
        let Some((_, path)) = self.0.iter().find(|(name, _)| name == repo) else {
            return Err(resolve::SourceError::UnknownRepo(format!(
                "it is read from repo `{repo}`; pass --source {repo}=PATH to a clone of it"
            )));
        };
        let local = Local::open(path).map_err(|e| resolve::SourceError::Read(e.into()))?;
        let missing = || {
            resolve::SourceError::Missing(format!(
                "`{reference}` is not a branch, tag or full commit id of {} (repo `{repo}`); fetch it",
                path.display()
            ))
        };
        let commit = if reference.len() == 40 && Oid::from_str(reference).is_ok() {
            Oid::from_str(reference)
                .ok()
                .filter(|oid| local.contains(*oid))
        } else if is_valid_branch(reference) {
            match local.branch_head(reference) {
                Ok(Some(head)) => Some(head),
                Ok(None) => local.rev(&format!("refs/tags/{reference}")).ok(),
                Err(e) => return Err(resolve::SourceError::Read(e.into())),
            }
        } else {
            None
        };
        AtCommit::open(Ok(local), commit.ok_or_else(missing)?)
    }
}

/// A repository at one commit, owning its handle: what a `resolve::Sources` hands out.
struct AtCommit {
    local: Local,
    commit: Oid,
}

impl AtCommit {
    fn open(local: Result<Local>, commit: Oid) -> Result<resolve::Opened, resolve::SourceError> {
        let local = local.map_err(|e| resolve::SourceError::Read(e.into()))?;
        Ok(resolve::Opened {
            commit: commit.to_string(),
            files: Box::new(AtCommit { local, commit }),
        })
    }
}

impl resolve::Files for AtCommit {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, resolve::ReadError> {
        self.local.snapshot(self.commit)?.read(path)
    }
}

/// A branch name git accepts, and no pattern: it goes into a fetch refspec.
/// Registers the fetches of `mirrors` (by repo name) as two families labelled `repo`.
pub fn register_fetch_metrics<'m>(
    mirrors: impl Iterator<Item = (&'m str, &'m Mirror)> + Clone,
    registry: &mut Registry,
) {
    registry.register_collector(Box::new(Series {
        name: "fleetsync_git_fetches",
        help: "Fetches of the config repo into this process's mirror",
        label: "repo",
        series: mirrors
            .clone()
            .map(|(name, m)| (name.to_owned(), m.fetches.clone()))
            .collect(),
    }));
    registry.register_collector(Box::new(Series {
        name: "fleetsync_git_fetch_duration_seconds",
        help: "Time a fetch took, once no other fetch of the mirror was under way",
        label: "repo",
        series: mirrors
            .map(|(name, m)| (name.to_owned(), m.fetch_seconds.clone()))
            .collect(),
    }));
}

pub fn is_valid_branch(name: &str) -> bool {
    !name.contains('*') && git2::Reference::is_valid_name(&format!("refs/heads/{name}"))
}

/// A URL with any user:password@ part removed, safe to log: fetch URLs may carry tokens.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((userinfo, host)) if !userinfo.contains('/') => format!("{scheme}://***@{host}"),
            _ => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::Files;

    /// A bare "remote" with one commit holding `path` on `branch`.
    fn remote(branch: &str, path: &str, text: &str) -> (tempfile::TempDir, Oid) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let blob = repo.blob(text.as_bytes()).unwrap();
        let mut tree = repo.treebuilder(None).unwrap();
        tree.insert(path, blob, 0o100644).unwrap();
        let tree = repo.find_tree(tree.write().unwrap()).unwrap();
        let who = git2::Signature::now("t", "t@example.invalid").unwrap();
        let refname = format!("refs/heads/{branch}");
        let commit = repo
            .commit(Some(&refname), &who, &who, "c", &tree, &[])
            .unwrap();
        (dir, commit)
    }

    fn file_url(dir: &tempfile::TempDir) -> String {
        format!("file://{}", dir.path().display())
    }

    #[test]
    fn fetches_a_branch_and_reads_files_at_its_head() {
        let (remote, commit) = remote("staging", "fleetsync.yaml", "kind: Root\n");
        let mirrors = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(mirrors.path(), "platform", &file_url(&remote)).unwrap();
        assert_eq!(mirror.fetch_branch("staging").unwrap(), commit);
        let local = mirror.local().unwrap();
        let files = local.snapshot(commit).unwrap();
        assert_eq!(
            files.read("fleetsync.yaml").unwrap().as_deref(),
            Some(&b"kind: Root\n"[..])
        );
        assert_eq!(files.read("missing.yaml").unwrap(), None);
    }

    #[test]
    fn a_missing_branch_and_a_missing_repository_are_different_errors() {
        let (remote, _) = remote("main", "a", "b");
        let mirrors = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(mirrors.path(), "platform", &file_url(&remote)).unwrap();
        let err = mirror.fetch_branch("staging").unwrap_err();
        assert!(matches!(err, Error::NoSuchBranch { .. }), "{err}");
        let gone =
            Mirror::open(mirrors.path(), "gone", "file:///nonexistent/fleetsync.git").unwrap();
        let err = gone.fetch_branch("main").unwrap_err();
        assert!(matches!(err, Error::Fetch { .. }), "{err}");
    }

    /// What an app's `source: { ref }` may name: a branch, a tag (annotated too), or a commit
    /// no ref points at any more; anything else is `NoSuchRef`, which the resolver reports.
    #[test]
    fn a_ref_is_a_branch_a_tag_or_a_commit() {
        let (remote_dir, first) = remote("main", "app.yaml", "v1");
        let upstream = Repository::open_bare(remote_dir.path()).unwrap();
        let who = git2::Signature::now("t", "t@example.invalid").unwrap();
        let target = upstream.find_object(first, None).unwrap();
        upstream
            .tag("v1.0", &target, &who, "release", false)
            .unwrap();
        let parent = upstream.find_commit(first).unwrap();
        let second = upstream
            .commit(
                Some("refs/heads/main"),
                &who,
                &who,
                "c2",
                &parent.tree().unwrap(),
                &[&parent],
            )
            .unwrap();
        let mirrors = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(mirrors.path(), "team", &file_url(&remote_dir)).unwrap();
        assert_eq!(mirror.fetch_ref("main").unwrap(), second);
        assert_eq!(mirror.fetch_ref("v1.0").unwrap(), first);
        assert_eq!(mirror.fetch_ref(&first.to_string()).unwrap(), first);
        for wrong in [
            "v2.0",
            "0123456789012345678901234567890123456789",
            "a:b",
            "*",
        ] {
            let err = mirror.fetch_ref(wrong).unwrap_err();
            assert!(matches!(err, Error::NoSuchRef { .. }), "{wrong}: {err}");
        }
        let sources = MirrorSources(vec![("team".into(), std::sync::Arc::new(mirror))]);
        let opened = resolve::Sources::open(&sources, "team", "v1.0")
            .ok()
            .unwrap();
        assert_eq!(opened.commit, first.to_string());
        assert_eq!(
            opened.files.read("app.yaml").unwrap().as_deref(),
            Some(&b"v1"[..])
        );
        let Err(resolve::SourceError::UnknownRepo(why)) =
            resolve::Sources::open(&sources, "web", "main")
        else {
            panic!("an unknown repo is a mistake in the manifest");
        };
        assert_eq!(why, "no repo `web` in the server config; known: team");
        // Named by its name, never its URL: the message goes back to whoever pushed.
        let Err(resolve::SourceError::Missing(why)) =
            resolve::Sources::open(&sources, "team", "v2.0")
        else {
            panic!("a missing ref is a mistake in the manifest");
        };
        assert_eq!(
            why,
            "`v2.0` is not a branch, tag or full commit id of repo `team`"
        );
    }

    /// A branch deleted upstream must not keep resolving to the mirror's stale copy.
    #[test]
    fn a_branch_deleted_upstream_disappears_from_the_mirror() {
        let (remote_dir, commit) = remote("staging", "a", "b");
        let mirrors = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(mirrors.path(), "platform", &file_url(&remote_dir)).unwrap();
        assert_eq!(mirror.fetch_branch("staging").unwrap(), commit);
        let upstream = Repository::open_bare(remote_dir.path()).unwrap();
        upstream
            .find_reference("refs/heads/staging")
            .unwrap()
            .delete()
            .unwrap();
        let err = mirror.fetch_branch("staging").unwrap_err();
        assert!(matches!(err, Error::NoSuchBranch { .. }), "{err}");
    }

    #[test]
    fn redacts_credentials_in_urls() {
        assert_eq!(
            redact_url("https://x-access-token:s3cr3t@github.com/acme/c.git"),
            "https://***@github.com/acme/c.git"
        );
        assert_eq!(redact_url("file:///srv/git/c.git"), "file:///srv/git/c.git");
        assert_eq!(
            redact_url("https://github.com/a/b@c"),
            "https://github.com/a/b@c"
        );
    }

    #[test]
    fn a_snapshot_reads_nested_files_through_its_directory_cache() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let commit = {
            let tree_of = |entries: &[(&str, Oid, i32)]| {
                let mut builder = repo.treebuilder(None).unwrap();
                for (name, id, mode) in entries {
                    builder.insert(name, *id, *mode).unwrap();
                }
                builder.write().unwrap()
            };
            let blob = |text: &str| repo.blob(text.as_bytes()).unwrap();
            let a = tree_of(&[("app.yaml", blob("a"), 0o100644)]);
            let b = tree_of(&[("app.yaml", blob("b"), 0o100644)]);
            let apps = tree_of(&[("a", a, 0o040000), ("b", b, 0o040000)]);
            let root = tree_of(&[
                ("apps", apps, 0o040000),
                ("top.yaml", blob("top"), 0o100644),
            ]);
            let who = git2::Signature::now("t", "t@example.invalid").unwrap();
            let root = repo.find_tree(root).unwrap();
            repo.commit(None, &who, &who, "c", &root, &[]).unwrap()
        };
        let local = Local {
            repo,
            path: dir.path().to_owned(),
        };
        let snapshot = local.snapshot(commit).unwrap();

        let read = |path: &str| {
            snapshot
                .read(path)
                .unwrap()
                .map(|b| String::from_utf8(b).unwrap())
        };
        assert_eq!(read("apps/a/app.yaml").as_deref(), Some("a"));
        assert_eq!(read("apps/b/app.yaml").as_deref(), Some("b"));
        assert_eq!(read("top.yaml").as_deref(), Some("top"));
        assert_eq!(read("apps/c/app.yaml"), None, "no such directory");
        assert_eq!(read("top.yaml/app.yaml"), None, "a file is not a directory");
        assert_eq!(read("apps"), None, "a directory is not a file");
    }

    /// A symlink, a submodule or a blob past the size limit where a manifest is read: a problem
    /// at that file (the branch is reported invalid), never a read error that fails every push.
    #[test]
    fn links_submodules_and_oversized_files_are_problems_at_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let big = "# padding\n".repeat(120_000); // 1.2 MB, a few KiB once packed
        let entries = [
            ("link.yaml", repo.blob(b"fleetsync.yaml").unwrap(), 0o120000),
            (
                "module.yaml",
                Oid::from_str(&"ab".repeat(20)).unwrap(),
                0o160000,
            ),
            ("big.yaml", repo.blob(big.as_bytes()).unwrap(), 0o100644),
        ];
        let mut builder = repo.treebuilder(None).unwrap();
        for (name, id, mode) in entries {
            builder.insert(name, id, mode).unwrap();
        }
        let tree = repo.find_tree(builder.write().unwrap()).unwrap();
        let who = git2::Signature::now("t", "t@example.invalid").unwrap();
        let commit = repo.commit(None, &who, &who, "c", &tree, &[]).unwrap();
        drop((tree, builder));
        let local = Local {
            repo,
            path: dir.path().to_owned(),
        };
        let snapshot = local.snapshot(commit).unwrap();
        let problem = |path: &str| match crate::resolve::read_root(&snapshot, path) {
            Err(crate::resolve::Error::Invalid(problems)) => problems[0].to_string(),
            other => panic!("{path}: {other:?}"),
        };
        assert_eq!(
            problem("link.yaml"),
            "link.yaml:1:1: a symbolic link; fleetsync reads files, not links: commit the file itself"
        );
        assert!(
            problem("module.yaml").starts_with("module.yaml:1:1: a submodule (gitlink)"),
            "{}",
            problem("module.yaml")
        );
        assert_eq!(
            problem("big.yaml"),
            "big.yaml:1:1: 1200000 bytes; files fleetsync reads are limited to 1024 KiB"
        );
    }

    /// A mirror grew one pack per fetch for ever; past [`MAX_PACKS`] they are consolidated,
    /// and everything the branches reach reads as before.
    #[test]
    fn a_mirror_keeps_a_bounded_number_of_packs() {
        let (remote_dir, _) = remote("main", "app.yaml", "v0");
        let upstream = Repository::open_bare(remote_dir.path()).unwrap();
        let mirrors = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(mirrors.path(), "platform", &file_url(&remote_dir)).unwrap();
        let who = git2::Signature::now("t", "t@example.invalid").unwrap();
        let mut most = 0;
        let mut head = Oid::zero();
        for i in 1..=(MAX_PACKS as u32 * 2) {
            let parent = upstream
                .find_commit(upstream.refname_to_id("refs/heads/main").unwrap())
                .unwrap();
            let blob = upstream.blob(format!("v{i}").as_bytes()).unwrap();
            let mut tree = upstream.treebuilder(None).unwrap();
            tree.insert("app.yaml", blob, 0o100644).unwrap();
            let tree = upstream.find_tree(tree.write().unwrap()).unwrap();
            head = upstream
                .commit(Some("refs/heads/main"), &who, &who, "c", &tree, &[&parent])
                .unwrap();
            assert_eq!(mirror.fetch_branch("main").unwrap(), head);
            most = most.max(pack_count(&mirror.path));
        }
        assert!(most > 1, "each fetch adds a pack: {most}");
        assert!(most <= MAX_PACKS + 1, "{most} packs");
        let local = mirror.local().unwrap();
        let last = format!("v{}", MAX_PACKS * 2);
        assert_eq!(
            local.snapshot(head).unwrap().read("app.yaml").unwrap(),
            Some(last.into_bytes())
        );
        let first = local
            .repo
            .find_commit(head)
            .unwrap()
            .parents()
            .fold(head, |_, p| p.id());
        assert!(local.contains(first), "history stays readable");
    }

    /// libgit2 has no network timeouts of its own: a server that accepts and never answers (a
    /// half-open connection) froze the fetch, and every later push to the repo queued behind
    /// it. The read timeout ends it with an error a redelivery can retry.
    #[test]
    fn a_server_that_never_answers_fails_the_fetch_instead_of_freezing_it() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/platform.git", silent.local_addr().unwrap());
        let held = std::thread::spawn(move || {
            // Accept and hold the connections, answering nothing.
            let mut open = Vec::new();
            for stream in silent.incoming().take(4) {
                open.push(stream);
            }
        });
        let mirrors = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(mirrors.path(), "platform", &url).unwrap();
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(mirror.fetch_branch("main").map_err(|e| e.to_string()));
        });
        let bound = std::time::Duration::from_millis(READ_TIMEOUT_MS as u64 * 4);
        let fetched = result
            .recv_timeout(bound)
            .expect("the fetch is still frozen past four read timeouts");
        let err = fetched.unwrap_err();
        assert!(
            err.starts_with("cannot fetch `main` from http://127.0.0.1:"),
            "{err}"
        );
        drop(held);
    }
}
