//! One commit status, read and written in each host's own words: GitHub, GitLab,
//! Gitea/Forgejo and Bitbucket Cloud.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::{GitHost, HostKind, Secret};
use crate::queue::{StatusJob, StatusState};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("repo `{0}` has no `gitHost` in this worker's config")]
    NoHost(String),
    /// A host that may take it later: a 429, a 5xx, a rate limit, no answer.
    #[error("{api} did not take the {what} for repo `{repo}` ({reason}); it is posted again later")]
    Unavailable {
        what: &'static str,
        api: String,
        repo: String,
        reason: String,
        retry_after: Option<Duration>,
    },
    /// A host that never will, as asked: a token without the permission, an unknown commit.
    #[error("{api} refused the {what} for repo `{repo}` with {status}: {fix}")]
    Refused {
        what: &'static str,
        api: String,
        repo: String,
        status: u16,
        fix: String,
    },
}

impl Error {
    pub fn retry_after(&self) -> Option<Option<Duration>> {
        match self {
            Error::Unavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// Contexts read per page of a combined status, and pages read at most (apps of one commit).
const PAGE: &str = "100";
const MAX_PAGES: usize = 20;

pub(super) struct Host<'a> {
    pub client: &'a reqwest::Client,
    pub config: &'a GitHost,
    pub token: &'a Secret,
    /// The repo's URL as configured: Bitbucket requires a link, and this is one when
    /// `api.publicUrl` is not set.
    pub web: &'a str,
    pub repo: &'a str,
    pub purpose: Purpose,
}

/// What a [`Host`] is asked for: it names the permission a refusal lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    Status,
    /// A preview's pull request comment, and on GitHub its Deployment.
    Comment,
}

impl Host<'_> {
    /// The latest status of `job`'s context on its commit, in fleetsync's terms.
    pub async fn current(&self, job: &StatusJob) -> Result<Option<(StatusState, String)>, Error> {
        let (api, project, sha) = (&self.config.api, &self.config.project, &job.commit);
        let found = match self.config.provider {
            HostKind::Github | HostKind::Gitea => {
                // The combined status: the latest status of each context, a page at a time.
                let url = format!("{api}/repos/{project}/commits/{sha}/status");
                let size = if self.config.provider == HostKind::Github {
                    "per_page"
                } else {
                    "limit"
                };
                let mut found = None;
                for page in 1..=MAX_PAGES {
                    let page = page.to_string();
                    let query = [(size, PAGE), ("page", page.as_str())];
                    let combined = self
                        .send(self.request(Method::GET, &url).query(&query))
                        .await?;
                    let statuses = combined["statuses"].as_array().cloned().unwrap_or_default();
                    if let Some(s) = statuses
                        .iter()
                        .find(|s| s["context"] == job.context.as_str())
                    {
                        found = state_of(s).map(|state| (state, desc(s)));
                        break;
                    }
                    if statuses.len() < 100 {
                        break;
                    }
                }
                found
            }
            HostKind::Gitlab => {
                let url = format!(
                    "{api}/projects/{}/repository/commits/{sha}/statuses",
                    super::segment(project)
                );
                let request = self
                    .request(Method::GET, &url)
                    .query(&[("name", job.context.as_str()), ("all", "true")]);
                let list = self.send(request).await?;
                latest(&list, |s| s["name"] == job.context.as_str())
                    .and_then(|s| Some((state_of(s)?, desc(s))))
            }
            HostKind::Bitbucket => {
                let url = format!(
                    "{api}/repositories/{project}/commit/{sha}/statuses/build/{}",
                    super::segment(&bitbucket_key(&job.context))
                );
                match self.send(self.request(Method::GET, &url)).await {
                    Ok(s) => state_of(&s).map(|state| (state, desc(&s))),
                    Err(Error::Refused { status: 404, .. }) => None,
                    Err(e) => return Err(e),
                }
            }
        };
        Ok(found)
    }

    /// The latest status of every context on `commit`, as (context, state): what a roll-up
    /// is made of.
    pub async fn list(&self, commit: &str) -> Result<Vec<(String, StatusState)>, Error> {
        let (api, project) = (&self.config.api, &self.config.project);
        let (url, size, shown_as) = match self.config.provider {
            HostKind::Github => (
                format!("{api}/repos/{project}/commits/{commit}/status"),
                "per_page",
                "context",
            ),
            HostKind::Gitea => (
                format!("{api}/repos/{project}/commits/{commit}/status"),
                "limit",
                "context",
            ),
            HostKind::Gitlab => (
                format!(
                    "{api}/projects/{}/repository/commits/{commit}/statuses",
                    super::segment(project)
                ),
                "per_page",
                "name",
            ),
            HostKind::Bitbucket => (
                format!("{api}/repositories/{project}/commit/{commit}/statuses"),
                "pagelen",
                "name",
            ),
        };
        // Newest first by id, so the first seen of a context is its latest.
        let mut all: Vec<Value> = Vec::new();
        for page in 1..=MAX_PAGES {
            let page = page.to_string();
            let mut query = vec![(size, PAGE), ("page", page.as_str())];
            if self.config.provider == HostKind::Gitlab {
                query.push(("all", "true"));
            }
            let answer = self
                .send(self.request(Method::GET, &url).query(&query))
                .await?;
            let entries = match self.config.provider {
                HostKind::Github | HostKind::Gitea => answer["statuses"].clone(),
                HostKind::Gitlab => answer,
                HostKind::Bitbucket => answer["values"].clone(),
            };
            let entries = entries.as_array().cloned().unwrap_or_default();
            let last = entries.len() < 100;
            all.extend(entries);
            if last {
                break;
            }
        }
        all.sort_by_key(|s| std::cmp::Reverse(s["id"].as_u64().unwrap_or(0)));
        let mut latest: Vec<(String, StatusState)> = Vec::new();
        for entry in &all {
            let Some(context) = entry[shown_as].as_str() else {
                continue;
            };
            if latest.iter().any(|(c, _)| c == context) {
                continue;
            }
            if let Some(state) = state_of(entry) {
                latest.push((context.to_owned(), state));
            }
        }
        Ok(latest)
    }

    pub async fn create(&self, job: &StatusJob) -> Result<(), Error> {
        let (api, project, sha) = (&self.config.api, &self.config.project, &job.commit);
        let (url, body) = match self.config.provider {
            HostKind::Github | HostKind::Gitea => {
                let state = match job.state {
                    StatusState::Queued | StatusState::RollingOut => "pending",
                    StatusState::Success => "success",
                    StatusState::Failure => "failure",
                    StatusState::Superseded => "error",
                };
                let mut body =
                    json!({"state": state, "context": job.context, "description": job.description});
                if let Some(url) = &job.target_url {
                    body["target_url"] = json!(url);
                }
                (format!("{api}/repos/{project}/statuses/{sha}"), body)
            }
            HostKind::Gitlab => {
                let state = match job.state {
                    StatusState::Queued => "pending",
                    StatusState::RollingOut => "running",
                    StatusState::Success => "success",
                    StatusState::Failure => "failed",
                    StatusState::Superseded => "canceled",
                };
                let mut body =
                    json!({"state": state, "name": job.context, "description": job.description});
                if let Some(url) = &job.target_url {
                    body["target_url"] = json!(url);
                }
                let url = format!("{api}/projects/{}/statuses/{sha}", super::segment(project));
                (url, body)
            }
            HostKind::Bitbucket => {
                let state = match job.state {
                    StatusState::Queued | StatusState::RollingOut => "INPROGRESS",
                    StatusState::Success => "SUCCESSFUL",
                    StatusState::Failure => "FAILED",
                    StatusState::Superseded => "STOPPED",
                };
                let body = json!({
                    "key": bitbucket_key(&job.context),
                    "state": state,
                    "name": job.context,
                    "description": job.description,
                    "url": job.target_url.as_deref().unwrap_or(self.web),
                });
                let url = format!("{api}/repositories/{project}/commit/{sha}/statuses/build");
                (url, body)
            }
        };
        let request = self
            .request(Method::POST, &url)
            .header("content-type", "application/json")
            .body(body.to_string());
        self.send(request).await.map(drop)
    }

    pub(super) fn request(&self, method: Method, url: &str) -> RequestBuilder {
        let token = String::from_utf8_lossy(self.token.expose());
        let request = self.client.request(method, url);
        match self.config.provider {
            HostKind::Github => request
                .bearer_auth(token)
                .header("accept", "application/vnd.github+json")
                .header("x-github-api-version", "2022-11-28"),
            HostKind::Gitlab => request.header("private-token", token.as_ref()),
            HostKind::Gitea => request.header("authorization", format!("token {token}")),
            HostKind::Bitbucket => request.bearer_auth(token),
        }
    }

    pub(super) async fn send(&self, request: RequestBuilder) -> Result<Value, Error> {
        let what = self.what();
        let unavailable = |reason: String, retry_after| Error::Unavailable {
            what,
            api: self.config.api.clone(),
            repo: self.repo.to_owned(),
            reason,
            retry_after,
        };
        let response = request
            .send()
            .await
            .map_err(|e| unavailable(without_url(&e), None))?;
        let status = response.status();
        let headers = response.headers();
        let retry_after = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // GitHub answers its rate limits with 403 (or 429) and says so in these headers.
        let rate_limited = retry_after.is_some()
            || headers
                .get("x-ratelimit-remaining")
                .is_some_and(|v| v.as_bytes() == b"0");
        if status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
            || (status == StatusCode::FORBIDDEN && rate_limited)
        {
            return Err(unavailable(format!("{status}"), retry_after));
        }
        if !status.is_success() {
            return Err(Error::Refused {
                what,
                api: self.config.api.clone(),
                repo: self.repo.to_owned(),
                status: status.as_u16(),
                fix: self.fix(status),
            });
        }
        // Bounded like everything read from outside: a status list is small.
        let bytes = response
            .bytes()
            .await
            .map_err(|e| unavailable(without_url(&e), None))?;
        if bytes.len() > 4 << 20 {
            return Err(unavailable("an answer over 4 MiB".into(), None));
        }
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn what(&self) -> &'static str {
        match self.purpose {
            Purpose::Status => "status",
            Purpose::Comment => "preview comment",
        }
    }

    fn fix(&self, status: StatusCode) -> String {
        let permission = match (self.config.provider, self.purpose) {
            (HostKind::Github, Purpose::Status) => {
                "\"Commit statuses: write\" (fine-grained) or `repo:status` (classic)"
            }
            (HostKind::Github, Purpose::Comment) => {
                "\"Pull requests: write\" and \"Deployments: write\" (fine-grained) or `repo` (classic)"
            }
            (HostKind::Gitlab, _) => "the `api` scope, as a Developer of the project",
            (HostKind::Gitea, Purpose::Status) => "`write:repository`",
            (HostKind::Gitea, Purpose::Comment) => "`write:issue`",
            (HostKind::Bitbucket, Purpose::Status) => "`repository:write`",
            (HostKind::Bitbucket, Purpose::Comment) => "`pullrequest:write`",
        };
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => format!(
                "give the token of `repos[{}].gitHost` {permission} on {}",
                self.repo, self.config.project
            ),
            StatusCode::NOT_FOUND => format!(
                "the host has no project {} or no such commit or pull request there; check `repos[{}].url` and the token's access",
                self.config.project, self.repo
            ),
            _ => format!("the host did not accept the {} as sent", self.what()),
        }
    }
}

/// The newest entry of a host's list that `matches`: the one with the highest id, whatever
/// order the host lists in.
fn latest(list: &Value, matches: impl Fn(&Value) -> bool) -> Option<&Value> {
    list.as_array()?
        .iter()
        .filter(|s| matches(s))
        .max_by_key(|s| s["id"].as_u64().unwrap_or(0))
}

fn desc(status: &Value) -> String {
    status["description"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A status's state in fleetsync's terms, under the key its host uses: `state` (GitHub,
/// Bitbucket) or `status` (GitLab, Gitea).
fn state_of(status: &Value) -> Option<StatusState> {
    let state = status["state"].as_str().or(status["status"].as_str())?;
    word(state, desc(status))
}

/// A host's state word in fleetsync's terms. A pending status is queued until fleetsync said
/// it rolls out.
fn word(state: &str, description: String) -> Option<StatusState> {
    let pending = if description.starts_with("queued") {
        StatusState::Queued
    } else {
        StatusState::RollingOut
    };
    Some(match state {
        "pending" | "INPROGRESS" => pending,
        "running" => StatusState::RollingOut,
        "success" | "SUCCESSFUL" => StatusState::Success,
        "failure" | "failed" | "FAILED" => StatusState::Failure,
        "error" | "canceled" | "STOPPED" => StatusState::Superseded,
        _ => return None,
    })
}

/// Bitbucket's key is at most 40 characters: a longer context is told apart by its digest.
fn bitbucket_key(context: &str) -> String {
    if context.len() <= 40 {
        return context.to_owned();
    }
    let digest = hex::encode(Sha256::digest(context.as_bytes()));
    format!("fleetsync-{}", &digest[..30])
}

/// reqwest's errors name the URL; a GitLab URL may carry nothing secret, but a proxy's might.
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "the host");
    }
    text
}
