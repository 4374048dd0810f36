//! A preview's one comment on its pull request, edited in place on every change (never a new
//! comment per push), and on GitHub its Deployment (`preview/pr-<n>`, transient, marked
//! inactive on teardown).
//!
//! The comment is its own memory: it carries what it shows as data in a hidden HTML comment,
//! read back, changed and written by one worker at a time (one FIFO group per pull request).

use std::collections::BTreeMap;

use base64::Engine;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::hosts::{Error, Host};
use crate::config::HostKind;
use crate::queue::{CommentJob, PreviewChange, StatusState};

/// What marks fleetsync's comment among a pull request's.
const MARKER: &str = "<!-- fleetsync:preview -->";
const STATE: &str = "<!-- fleetsync:state ";
/// Comments read per page, and pages read at most.
const PAGE: &str = "100";
const MAX_PAGES: usize = 10;
/// Apps a comment lists at most: a preview is capped by the budget, a comment by the host.
const MAX_APPS: usize = 200;

/// What the comment shows, and the Deployment it stands beside.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Board {
    commit: String,
    apps: BTreeMap<String, (StatusState, String)>,
    held: Option<String>,
    torn_down: bool,
    /// Where apps are reached, with `previews.ingress`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    urls: BTreeMap<String, String>,
}

/// A Deployment's state: what the board as a whole says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overall {
    Queued,
    InProgress,
    Success,
    Failure,
    Inactive,
}

impl Board {
    fn apply(&mut self, commit: &str, change: &PreviewChange) {
        let newer = commit != self.commit;
        match change {
            PreviewChange::Enqueued { apps, removed } => {
                // The apps a new head did not change keep running, and stay listed.
                if newer {
                    self.commit = commit.to_owned();
                    if self.held.is_some() || self.torn_down {
                        self.apps.clear();
                    }
                    for app in apps {
                        self.apps.remove(app);
                    }
                }
                for app in removed {
                    self.apps.remove(app);
                }
                self.held = None;
                self.torn_down = false;
                for app in apps.iter().take(MAX_APPS) {
                    self.apps
                        .entry(app.clone())
                        .or_insert((StatusState::Queued, "queued".into()));
                }
            }
            // About an older head, or an app the board does not list: not shown.
            PreviewChange::App {
                app,
                state,
                description,
                url,
                ..
            } => {
                if let Some(url) = url
                    && self.apps.contains_key(app)
                {
                    self.urls.insert(app.clone(), super::bounded(url));
                }
                if let Some(shown) = self.apps.get_mut(app).filter(|_| !newer)
                    && !shown.0.is_final()
                    && *state >= shown.0
                {
                    *shown = (*state, super::bounded(description));
                }
            }
            PreviewChange::Held { reason } => {
                if newer {
                    self.apps.clear();
                    self.commit = commit.to_owned();
                }
                self.held = Some(super::bounded(reason));
            }
            PreviewChange::TornDown => {
                self.torn_down = true;
                self.held = None;
            }
        }
    }

    fn overall(&self) -> Option<Overall> {
        if self.torn_down {
            return Some(Overall::Inactive);
        }
        if self.held.is_some() || self.apps.is_empty() {
            return None;
        }
        let states: Vec<StatusState> = self.apps.values().map(|(s, _)| *s).collect();
        Some(if states.contains(&StatusState::Failure) {
            Overall::Failure
        } else if states.iter().all(|s| s.is_final()) {
            Overall::Success
        } else if states.iter().all(|s| *s == StatusState::Queued) {
            Overall::Queued
        } else {
            Overall::InProgress
        })
    }

    /// The comment's Markdown. Every string in it may come from the pull request.
    fn render(&self, number: u64) -> String {
        let mut out = format!(
            "{MARKER}\n### Preview `pr-{number}` at {}\n\n",
            code(short(&self.commit))
        );
        if self.torn_down {
            out.push_str("Torn down: nothing of this preview runs any more.\n");
        } else if let Some(reason) = &self.held {
            out.push_str(&format!("Not deployed: {}\n", text(reason)));
        } else {
            out.push_str("| App | State |\n|---|---|\n");
            for (app, (state, description)) in &self.apps {
                let word = match state {
                    StatusState::Queued => "⏳ queued",
                    StatusState::RollingOut => "🔄 rolling out",
                    StatusState::Success => "✅ deployed",
                    StatusState::Failure => "❌ failed",
                    StatusState::Superseded => "⏭️ superseded",
                };
                let reached = self
                    .urls
                    .get(app)
                    .map(|url| format!(" at {}", text(url)))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "| {} | {word}: {}{reached} |\n",
                    code(app),
                    text(description)
                ));
            }
        }
        let data = serde_json::to_vec(self).unwrap_or_default();
        let data = base64::engine::general_purpose::STANDARD.encode(data);
        out.push_str(&format!("\n{STATE}{data} -->\n"));
        out
    }

    /// The board a comment of fleetsync's shows; a comment that does not parse is shown anew.
    fn read(body: &str) -> Board {
        let Some(at) = body.find(STATE) else {
            return Board::default();
        };
        let rest = &body[at + STATE.len()..];
        let data = rest.split(" -->").next().unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }
}

/// `text` as Markdown that shows it as typed: no HTML, no table cells, no mentions.
fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in super::bounded(text).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '|' => out.push_str("&#124;"),
            '@' => out.push_str("&#64;"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '#' | '~' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// `text` as inline code: backticks and pipes cannot break out of it.
fn code(text: &str) -> String {
    let clean: String = super::bounded(text)
        .chars()
        .map(|c| if c == '`' || c == '|' { '\'' } else { c })
        .collect();
    format!("`{clean}`")
}

fn short(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

impl Host<'_> {
    /// Applies `job` to its pull request's comment (created on the first change), and on
    /// GitHub to the head's Deployment.
    pub async fn comment(&self, job: &CommentJob) -> Result<Option<usize>, Error> {
        let found = self.find_comment(job.number).await?;
        let before = found
            .as_ref()
            .map(|(_, body)| Board::read(body))
            .unwrap_or_default();
        let mut board = before.clone();
        board.apply(&job.commit, &job.change);
        if self.config.provider == HostKind::Github {
            self.deploy(job, &before, &board).await?;
        }
        let ready = (board.overall() == Some(Overall::Success)
            && (before.overall() != Some(Overall::Success) || before.commit != board.commit))
            .then_some(board.apps.len());
        if found.is_some() && board == before {
            return Ok(None);
        }
        let body = board.render(job.number);
        let (api, project, n) = (&self.config.api, &self.config.project, job.number);
        let encoded = super::segment(project);
        let (method, url) = match (&found, self.config.provider) {
            (None, HostKind::Github | HostKind::Gitea) => (
                Method::POST,
                format!("{api}/repos/{project}/issues/{n}/comments"),
            ),
            (Some((id, _)), HostKind::Github | HostKind::Gitea) => (
                Method::PATCH,
                format!("{api}/repos/{project}/issues/comments/{id}"),
            ),
            (None, HostKind::Gitlab) => (
                Method::POST,
                format!("{api}/projects/{encoded}/merge_requests/{n}/notes"),
            ),
            (Some((id, _)), HostKind::Gitlab) => (
                Method::PUT,
                format!("{api}/projects/{encoded}/merge_requests/{n}/notes/{id}"),
            ),
            (None, HostKind::Bitbucket) => (
                Method::POST,
                format!("{api}/repositories/{project}/pullrequests/{n}/comments"),
            ),
            (Some((id, _)), HostKind::Bitbucket) => (
                Method::PUT,
                format!("{api}/repositories/{project}/pullrequests/{n}/comments/{id}"),
            ),
        };
        let body = match self.config.provider {
            HostKind::Bitbucket => json!({"content": {"raw": body}}),
            _ => json!({"body": body}),
        };
        self.send_json(method, &url, &body).await?;
        Ok(ready)
    }

    /// fleetsync's comment on pull request `number`: its id and body.
    async fn find_comment(&self, number: u64) -> Result<Option<(u64, String)>, Error> {
        let (api, project) = (&self.config.api, &self.config.project);
        let (url, size) = match self.config.provider {
            HostKind::Github => (
                format!("{api}/repos/{project}/issues/{number}/comments"),
                "per_page",
            ),
            HostKind::Gitea => (
                format!("{api}/repos/{project}/issues/{number}/comments"),
                "limit",
            ),
            HostKind::Gitlab => (
                format!(
                    "{api}/projects/{}/merge_requests/{number}/notes",
                    super::segment(project)
                ),
                "per_page",
            ),
            HostKind::Bitbucket => (
                format!("{api}/repositories/{project}/pullrequests/{number}/comments"),
                "pagelen",
            ),
        };
        for page in 1..=MAX_PAGES {
            let page = page.to_string();
            let request = self
                .request(Method::GET, &url)
                .query(&[(size, PAGE), ("page", page.as_str())]);
            let answer = self.send(request).await?;
            let entries = match self.config.provider {
                HostKind::Bitbucket => answer["values"].clone(),
                _ => answer,
            };
            let entries = entries.as_array().cloned().unwrap_or_default();
            let body = |c: &Value| {
                let body = match self.config.provider {
                    HostKind::Bitbucket => &c["content"]["raw"],
                    _ => &c["body"],
                };
                body.as_str().unwrap_or_default().to_owned()
            };
            if let Some(c) = entries.iter().find(|c| body(c).starts_with(MARKER)) {
                return Ok(c["id"].as_u64().map(|id| (id, body(c))));
            }
            if entries.len() < 100 {
                break;
            }
        }
        Ok(None)
    }

    /// GitHub's Deployment of the head, `preview/pr-<n>`: created when the head is queued,
    /// its status following the board, every one of the environment's marked inactive on
    /// teardown.
    async fn deploy(&self, job: &CommentJob, before: &Board, after: &Board) -> Result<(), Error> {
        let (was, now) = (before.overall(), after.overall());
        let Some(now) = now else {
            return Ok(());
        };
        if was == Some(now) && before.commit == after.commit {
            return Ok(());
        }
        let (api, project) = (&self.config.api, &self.config.project);
        let environment = format!("preview/pr-{}", job.number);
        let url = format!("{api}/repos/{project}/deployments");
        let ids = |list: &Value| -> Vec<u64> {
            list.as_array()
                .map(|l| l.iter().filter_map(|d| d["id"].as_u64()).collect())
                .unwrap_or_default()
        };
        let targets = if now == Overall::Inactive {
            let request = self
                .request(Method::GET, &url)
                .query(&[("environment", environment.as_str()), ("per_page", PAGE)]);
            ids(&self.send(request).await?)
        } else {
            let request = self.request(Method::GET, &url).query(&[
                ("environment", environment.as_str()),
                ("sha", after.commit.as_str()),
            ]);
            match ids(&self.send(request).await?).first() {
                Some(id) => vec![*id],
                None => {
                    let body = json!({
                        "ref": after.commit,
                        "environment": environment,
                        "transient_environment": true,
                        "production_environment": false,
                        "auto_merge": false,
                        "required_contexts": [],
                        "description": format!("fleetsync preview of pull request #{}", job.number),
                    });
                    let created = self.send_json(Method::POST, &url, &body).await?;
                    created["id"].as_u64().into_iter().collect()
                }
            }
        };
        let state = match now {
            Overall::Queued => "queued",
            Overall::InProgress => "in_progress",
            Overall::Success => "success",
            Overall::Failure => "failure",
            Overall::Inactive => "inactive",
        };
        for id in targets {
            let mut body = json!({"state": state});
            if let Some(link) = &job.target_url {
                body["log_url"] = json!(link);
            }
            // A Deployment has one address: the first app's, when there is one.
            if let Some(reached) = after
                .urls
                .values()
                .next()
                .filter(|_| now != Overall::Inactive)
            {
                body["environment_url"] = json!(reached);
            }
            let url = format!("{url}/{id}/statuses");
            self.send_json(Method::POST, &url, &body).await?;
        }
        Ok(())
    }

    async fn send_json(&self, method: Method, url: &str, body: &Value) -> Result<Value, Error> {
        let request = self
            .request(method, url)
            .header("content-type", "application/json")
            .body(body.to_string());
        self.send(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(app: &str, state: StatusState) -> PreviewChange {
        PreviewChange::App {
            app: app.into(),
            state,
            description: format!("{state:?}"),
            environment: "staging".into(),
            url: None,
        }
    }

    #[test]
    fn a_board_follows_its_head_and_reads_back_what_it_wrote() {
        let enqueued = |apps: &[&str]| PreviewChange::Enqueued {
            apps: apps.iter().map(|a| a.to_string()).collect(),
            removed: Vec::new(),
        };
        let mut board = Board::default();
        board.apply("c1", &enqueued(&["api", "web"]));
        assert_eq!(board.overall(), Some(Overall::Queued));
        board.apply("c1", &app("api", StatusState::Success));
        board.apply("c1", &app("api", StatusState::RollingOut));
        assert_eq!(board.apps["api"].0, StatusState::Success);
        board.apply("c1", &app("web", StatusState::Success));
        assert_eq!(board.overall(), Some(Overall::Success));
        // A new head that changed api: web stays listed as it runs; an older head's news is
        // not shown over the new head's.
        board.apply("c2", &enqueued(&["api"]));
        assert_eq!(board.overall(), Some(Overall::InProgress));
        board.apply("c1", &app("api", StatusState::Failure));
        assert_eq!(board.apps["api"].0, StatusState::Queued);
        board.apply("c2", &app("api", StatusState::Success));
        assert_eq!(board.overall(), Some(Overall::Success));
        let body = board.render(7);
        assert!(body.starts_with(MARKER));
        assert!(body.contains("at `c2`"), "{body}");
        assert_eq!(Board::read(&body), board);
        board.apply("c2", &PreviewChange::TornDown);
        assert_eq!(board.overall(), Some(Overall::Inactive));
    }

    #[test]
    fn text_from_the_pull_request_shows_as_typed() {
        assert_eq!(
            text("<img src=x onerror=alert(1)> | @here `x`"),
            "&lt;img src=x onerror=alert(1)&gt; &#124; &#64;here \\`x\\`"
        );
        assert_eq!(code("a`b|c"), "`a'b'c`");
        // A hidden state that does not parse is a new board, not an error.
        assert_eq!(
            Board::read("<!-- fleetsync:state %%% -->"),
            Board::default()
        );
    }
}
