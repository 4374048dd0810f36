//! The sync job: the only type fleetsync serialises onto the wire between processes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::resolve::DesiredApp;

/// A message on the queue: sync one app, or prune what an environment no longer lists.
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    Sync(Box<SyncJob>),
    Prune(Box<PruneJob>),
    Teardown(Box<TeardownJob>),
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
        }
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

    /// FIFO group: one app of one environment is never synced by two workers at once.
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
