//! Telling people where they look: a status on the commit, in the repo's Git host, for every
//! (commit, environment, app) fleetsync applies.
//!
//! Receivers and workers never call a host on a deploy's path: [`Teller::tell`] puts each
//! transition on the queue as a [`StatusJob`] (one FIFO group per commit and context, so they
//! are posted in order, and none is lost to a host outage or a restart), and a worker posts it
//! with [`Hosts::post`]. The host itself is the memory of what was posted: a status is posted
//! only if it moves its context forward (queued → rolling out → an end), never after an end,
//! and never twice the same.

mod hosts;
mod pr;
mod sinks;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::config::{Config, Event, GitHost, Notification, Secret};
use crate::queue::{CommentJob, NotifyJob, PreviewChange, Queue, Rollup, StatusJob, StatusState};

pub use hosts::Error;
pub use sinks::{SendError, Sinks};

/// GitHub's limit, the tightest of the hosts'.
pub const MAX_DESCRIPTION: usize = 140;

/// The context of one app's status.
pub fn app_context(environment: &str, app: &str) -> String {
    format!("fleetsync/{environment}/{app}")
}

/// The context of an environment's status: what a commit whose environment does not resolve
/// gets, with the first problem.
pub fn environment_context(environment: &str) -> String {
    format!("fleetsync/{environment}")
}

/// Puts statuses on the queue for the repos that have a `gitHost`, and notifications for the
/// sinks that want them.
pub struct Teller {
    queue: Queue,
    repos: HashSet<String>,
    public_url: Option<String>,
    notifications: Vec<Notification>,
    remind_after: Duration,
}

/// What a status or a notification is about.
#[derive(Clone, Copy)]
pub struct About<'a> {
    pub repo: &'a str,
    pub commit: &'a str,
    pub environment: &'a str,
    /// `None`: the environment as a whole.
    pub app: Option<&'a str>,
}

impl Teller {
    pub fn new(config: &Config, queue: Queue) -> Self {
        Teller {
            queue,
            repos: config
                .repos
                .iter()
                .filter(|r| r.git_host.is_some())
                .map(|r| r.name.clone())
                .collect(),
            public_url: config.public_url.clone(),
            notifications: config.notifications.clone(),
            remind_after: config.worker.remind_failures_after,
        }
    }

    /// Whether a failure marked on a service is told now: a new one is; one that persists
    /// again once `remind_after` × 2^(times told − 1) passed (at most a day), so a failure
    /// left alone is heard of less and less, never every reconcile pass. `told` is the
    /// service's `fleetsync:failure-told` tag; answers the tag's next value, and `Some(times
    /// told before)` when this one is told.
    pub fn remind(&self, known: bool, told: Option<&str>, now: u64) -> (Option<u32>, String) {
        remind(self.remind_after.as_secs(), known, told, now)
    }

    /// Whether pushes of `repo` get a roll-up status, and with it a digest.
    pub fn rolls_up(&self, repo: &str) -> bool {
        self.repos.contains(repo)
    }

    /// Whether any sink is configured: without one, nothing is worth reading ECS for.
    pub fn notifies(&self) -> bool {
        !self.notifications.is_empty()
    }

    /// One message per sink that wants `event` in this environment.
    pub fn notifications(
        &self,
        (about, delivery): (About<'_>, &str),
        (event, code): (Event, &str),
        summary: &str,
    ) -> Vec<NotifyJob> {
        self.notifications
            .iter()
            .enumerate()
            .filter(|(_, n)| n.wants(event, about.environment))
            .map(|(sink, _)| NotifyJob {
                version: crate::queue::SyncJob::VERSION,
                kind: NotifyJob::KIND.to_owned(),
                sink,
                event,
                repo: about.repo.to_owned(),
                environment: about.environment.to_owned(),
                app: about.app.map(str::to_owned),
                commit: about.commit.to_owned(),
                code: code.to_owned(),
                summary: bounded(summary),
                target_url: self.link(about),
                delivery: delivery.to_owned(),
            })
            .collect()
    }

    /// Queues `jobs`; like [`Teller::tell`], never fails what it reports on.
    pub async fn notify(&self, jobs: Vec<NotifyJob>) {
        if jobs.is_empty() {
            return;
        }
        if let Err(e) = self.queue.send_notifications(&jobs).await {
            tracing::warn!(message = "Cannot queue notifications; they are not sent.", count = jobs.len(), error = %e);
        }
    }

    fn link(&self, about: About<'_>) -> Option<String> {
        let base = self.public_url.as_ref()?;
        let environment = segment(about.environment);
        let path = match about.app {
            Some(app) => format!("environments/{environment}/apps/{}", segment(app)),
            None => format!("environments/{environment}/apps"),
        };
        Some(format!("{base}/api/v1/{path}?repo={}", segment(about.repo)))
    }

    /// A status of one app (`app: Some`) or of an environment, described in `description`.
    pub fn status(
        &self,
        (repo, commit): (&str, &str),
        (environment, app): (&str, Option<&str>),
        state: StatusState,
        description: &str,
    ) -> StatusJob {
        let context = match app {
            Some(app) => app_context(environment, app),
            None => environment_context(environment),
        };
        let mut job = StatusJob::new(repo, commit, context, state);
        job.description = bounded(description);
        job.target_url = self.public_url.as_ref().map(|base| {
            let path = match app {
                Some(app) => format!(
                    "environments/{}/apps/{}",
                    segment(environment),
                    segment(app)
                ),
                None => format!("environments/{}/apps", segment(environment)),
            };
            format!("{base}/api/v1/{path}?repo={}", segment(repo))
        });
        job
    }

    /// Queues `statuses` of repos with a Git host. Never fails what it reports on: a status
    /// that cannot be queued is logged and dropped.
    pub async fn tell(&self, statuses: Vec<StatusJob>) {
        let statuses: Vec<StatusJob> = statuses
            .into_iter()
            .filter(|s| self.repos.contains(&s.repo))
            .collect();
        if statuses.is_empty() {
            return;
        }
        if let Err(e) = self.queue.send_statuses(&statuses).await {
            tracing::warn!(message = "Cannot queue commit statuses; they are not posted.", count = statuses.len(), error = %e);
        }
        // A preview app's status is also news for its pull request's comment.
        let comments: Vec<CommentJob> = statuses
            .iter()
            .filter_map(|s| {
                let of = s.preview.as_ref()?;
                let change = PreviewChange::App {
                    app: of.app.clone(),
                    state: s.state,
                    description: s.description.clone(),
                    environment: of.environment.clone(),
                    url: of.url.clone(),
                };
                Some(CommentJob::new(&s.repo, of.number, &s.commit, change))
            })
            .collect();
        self.send_comments(comments).await;
    }

    /// Where the API shows previews, when `api.publicUrl` is set.
    pub fn previews_link(&self) -> Option<String> {
        let base = self.public_url.as_ref()?;
        Some(format!("{base}/api/v1/previews"))
    }

    /// Queues a change to pull request `number`'s preview comment, for a repo with a Git
    /// host; like [`Teller::tell`], never fails what it reports on.
    pub async fn comment(&self, repo: &str, (number, commit): (u64, &str), change: PreviewChange) {
        if self.repos.contains(repo) {
            let mut job = CommentJob::new(repo, number, commit, change);
            job.target_url = self.previews_link();
            self.send_comments(vec![job]).await;
        }
    }

    async fn send_comments(&self, comments: Vec<CommentJob>) {
        if comments.is_empty() {
            return;
        }
        if let Err(e) = self.queue.send_comments(&comments).await {
            tracing::warn!(message = "Cannot queue preview comments; they are not posted.", count = comments.len(), error = %e);
        }
    }
}

/// The Git hosts of the repos that have one, with their tokens: what a worker posts with.
pub struct Hosts {
    by_repo: HashMap<String, (GitHost, Secret, String)>,
    client: reqwest::Client,
}

/// What [`Hosts::post`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posted {
    Posted,
    /// The host shows this state already.
    Unchanged,
    /// The host shows a later state (or an end): this one is not posted over it.
    Behind,
}

impl Hosts {
    pub fn from_config(config: &Config) -> Result<Self, crate::config::Error> {
        let mut by_repo = HashMap::new();
        for repo in &config.repos {
            if let Some(host) = &repo.git_host {
                let token = host
                    .token
                    .load(&format!("gitHost token of repo `{}`", repo.name))?;
                by_repo.insert(repo.name.clone(), (host.clone(), token, repo.url.clone()));
            }
        }
        Ok(Hosts {
            by_repo,
            client: http_client(),
        })
    }

    fn host<'a>(
        &'a self,
        repo: &'a str,
        purpose: hosts::Purpose,
    ) -> Result<hosts::Host<'a>, Error> {
        let Some((host, token, web)) = self.by_repo.get(repo) else {
            return Err(Error::NoHost(repo.to_owned()));
        };
        Ok(hosts::Host {
            client: &self.client,
            config: host,
            token,
            web,
            repo,
            purpose,
        })
    }

    /// Changes a preview's pull request comment (and its Deployment, on GitHub); `Some(apps)`
    /// when this change made every app of the head run.
    pub async fn comment(&self, job: &CommentJob) -> Result<Option<usize>, Error> {
        self.host(&job.repo, hosts::Purpose::Comment)?
            .comment(job)
            .await
    }

    /// Posts `job` on its repo's host unless the host already shows it or a later state; with
    /// the roll-up it ended, if it ended one.
    pub async fn post(&self, job: &StatusJob) -> Result<(Posted, Option<StatusJob>), Error> {
        let host = self.host(&job.repo, hosts::Purpose::Status)?;
        let posted = match host.current(job).await? {
            Some((state, _)) if state.is_final() || state > job.state => Posted::Behind,
            Some((state, description)) if state == job.state && description == job.description => {
                Posted::Unchanged
            }
            _ => {
                host.create(job).await?;
                Posted::Posted
            }
        };
        // After the app's own end, so that of two apps ending at once, the one that reads
        // last sees both ended. Also when it was posted before: a retry may come from a
        // roll-up that failed.
        let mut ended = None;
        if let Some(rollup) = &job.rollup
            && job.state.is_final()
        {
            ended = roll_up(&host, job, rollup).await?;
        }
        Ok((posted, ended))
    }
}

/// Ends the environment's roll-up once every app of the push has ended on the commit:
/// failure naming the apps that failed, else superseded, else success.
async fn roll_up(
    host: &hosts::Host<'_>,
    job: &StatusJob,
    rollup: &Rollup,
) -> Result<Option<StatusJob>, Error> {
    let prefix = format!("{}/", rollup.context);
    let ended: Vec<(String, StatusState)> = host
        .list(&job.commit)
        .await?
        .into_iter()
        .filter_map(|(context, state)| {
            let app = context.strip_prefix(&prefix)?;
            state.is_final().then(|| (app.to_owned(), state))
        })
        .collect();
    if ended.len() < rollup.apps as usize {
        return Ok(None);
    }
    let total = ended.len();
    let failed: Vec<&str> = ended
        .iter()
        .filter(|(_, s)| *s == StatusState::Failure)
        .map(|(app, _)| app.as_str())
        .collect();
    let superseded = ended
        .iter()
        .filter(|(_, s)| *s == StatusState::Superseded)
        .count();
    let (state, description) = if !failed.is_empty() {
        let failing = failed.join(", ");
        let description = format!("{} of {total} apps failed: {failing}", failed.len());
        (StatusState::Failure, description)
    } else if superseded > 0 {
        let description = format!("{superseded} of {total} apps superseded");
        (StatusState::Superseded, description)
    } else {
        (StatusState::Success, format!("{total} apps deployed"))
    };
    let mut status = StatusJob::new(&job.repo, &job.commit, rollup.context.clone(), state);
    status.description = bounded(&description);
    status.target_url = rollup.target_url.clone();
    if matches!(host.current(&status).await?, Some((s, _)) if s.is_final()) {
        return Ok(None);
    }
    host.create(&status).await?;
    tracing::info!(message = "Roll-up status posted.", event = "status", context = %status.context, state = ?state, description = %status.description);
    Ok(Some(status))
}

/// [`Teller::remind`] with the spacing `base` in seconds.
fn remind(base: u64, known: bool, told: Option<&str>, now: u64) -> (Option<u32>, String) {
    let parsed = told.and_then(|t| {
        let (at, count) = t.split_once(' ')?;
        Some((at.parse::<u64>().ok()?, count.parse::<u32>().ok()?))
    });
    match (known, parsed) {
        (false, _) => (Some(0), format!("{now} 1")),
        // Marked before reminders existed: counts as told now.
        (true, None) => (None, format!("{now} 1")),
        (true, Some((at, count))) => {
            let spacing = base
                .saturating_mul(1 << count.saturating_sub(1).min(16))
                .min(86_400);
            if base > 0 && now >= at.saturating_add(spacing) {
                (Some(count), format!("{now} {}", count + 1))
            } else {
                (None, format!("{at} {count}"))
            }
        }
    }
}

/// The HTTP client hosts and sinks are called with: a host that hangs holds a job 10 s at most.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("fleetsync/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a client with a timeout and a user agent builds")
}

/// `text` on one line within [`MAX_DESCRIPTION`] characters: it may come from a commit.
fn bounded(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.chars().count() <= MAX_DESCRIPTION {
        return line;
    }
    let mut cut: String = line.chars().take(MAX_DESCRIPTION - 1).collect();
    cut.push('…');
    cut
}

/// `text` as one URL path segment or query value: all but RFC 3986's unreserved characters
/// encoded (a GitLab project's `/` among them).
fn segment(text: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, RESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_one_line_within_the_hosts_limit() {
        assert_eq!(bounded("a\nb"), "a b");
        let long = "é".repeat(200);
        let cut = bounded(&long);
        assert_eq!(cut.chars().count(), MAX_DESCRIPTION);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn a_failure_that_persists_is_told_less_and_less_often() {
        let hour = 3600;
        assert_eq!(
            remind(hour, false, Some("5 3"), 100),
            (Some(0), "100 1".into())
        );
        assert_eq!(
            remind(hour, true, Some("100 1"), 100 + hour - 1),
            (None, "100 1".into())
        );
        let (told, tag) = remind(hour, true, Some("100 1"), 100 + hour);
        assert_eq!((told, tag.as_str()), (Some(1), "3700 2"));
        // Twice as long before the next, then four times, capped at a day.
        assert_eq!(remind(hour, true, Some("3700 2"), 3700 + hour).0, None);
        assert_eq!(
            remind(hour, true, Some("3700 2"), 3700 + 2 * hour).0,
            Some(2)
        );
        assert_eq!(remind(hour, true, Some("0 30"), 86_400).0, Some(30));
        assert_eq!(remind(0, true, Some("0 1"), 1 << 40).0, None);
        assert_eq!(remind(hour, true, None, 7), (None, "7 1".into()));
    }

    #[test]
    fn states_only_move_forward() {
        use StatusState::*;
        assert!(Queued < RollingOut && RollingOut < Success);
        assert!(!RollingOut.is_final());
        assert!(Success.is_final() && Failure.is_final() && Superseded.is_final());
    }
}
