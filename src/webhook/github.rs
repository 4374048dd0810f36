//! GitHub deliveries, and the GitHub-shaped payloads of Gitea, Forgejo and Gogs.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use super::event::{Delivery, PullRequestEvent, PushEvent};
use super::provider::{is_zero, required_text, text, texts, value};

const REPOSITORY_URLS: &[&[&str]] = &[
    &["repository", "clone_url"],
    &["repository", "html_url"],
    &["repository", "ssh_url"],
    &["repository", "git_url"],
];

pub fn parse(event: &str, json: &[u8]) -> Result<Delivery, String> {
    match event {
        "ping" => Ok(Delivery::Ping),
        "push" => push(json).map(|p| Delivery::Pushes(vec![p])),
        "pull_request" => pull_request(&value(json)?).map(Delivery::PullRequest),
        "" => Err("no event header (X-GitHub-Event, X-Gitea-Event, …)".into()),
        other => Ok(Delivery::Ignored(format!(
            "`{other}` events do not trigger syncs"
        ))),
    }
}

/// The few fields of a push that matter, borrowed from the body: a real payload is kilobytes
/// of commits and URLs that are skipped, not built into a tree (the receiver's hot path).
#[derive(Deserialize)]
struct Push<'a> {
    #[serde(rename = "ref", borrow)]
    git_ref: Cow<'a, str>,
    #[serde(borrow)]
    before: Cow<'a, str>,
    #[serde(borrow)]
    after: Cow<'a, str>,
    created: Option<bool>,
    deleted: Option<bool>,
    forced: Option<bool>,
    #[serde(borrow)]
    repository: Repository<'a>,
    #[serde(borrow)]
    sender: Option<Login<'a>>,
    #[serde(borrow)]
    pusher: Option<Login<'a>>,
}

#[derive(Deserialize)]
struct Repository<'a> {
    #[serde(borrow)]
    clone_url: Option<Cow<'a, str>>,
    #[serde(borrow)]
    html_url: Option<Cow<'a, str>>,
    #[serde(borrow)]
    ssh_url: Option<Cow<'a, str>>,
    #[serde(borrow)]
    git_url: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Login<'a> {
    #[serde(borrow)]
    login: Option<Cow<'a, str>>,
}

fn push(json: &[u8]) -> Result<PushEvent, String> {
    let p: Push<'_> =
        serde_json::from_slice(json).map_err(|e| format!("not a push payload: {e}"))?;
    let r = p.repository;
    Ok(PushEvent {
        repository_urls: [r.clone_url, r.html_url, r.ssh_url, r.git_url]
            .into_iter()
            .flatten()
            .map(Cow::into_owned)
            .collect(),
        // Gitea and Gogs send no created/deleted flags: the zero SHA says it.
        created: p.created.unwrap_or(is_zero(&p.before)),
        deleted: p.deleted.unwrap_or(is_zero(&p.after)),
        forced: p.forced.unwrap_or(false),
        git_ref: p.git_ref.into_owned(),
        before: p.before.into_owned(),
        after: p.after.into_owned(),
        sender: p
            .sender
            .and_then(|s| s.login)
            .or(p.pusher.and_then(|s| s.login))
            .map(Cow::into_owned),
    })
}

fn pull_request(v: &Value) -> Result<PullRequestEvent, String> {
    let pr = v
        .get("pull_request")
        .ok_or("pull_request payload without `pull_request`")?;
    let required = |path: &[&str]| required_text(pr, "pull_request payload", "pull_request", path);
    let head_repo = text(pr, &["head", "repo", "full_name"]);
    let base_repo = text(pr, &["base", "repo", "full_name"]);
    Ok(PullRequestEvent {
        repository_urls: texts(v, REPOSITORY_URLS),
        number: v
            .get("number")
            .and_then(Value::as_u64)
            .ok_or("pull_request payload without `number`")?,
        action: text(v, &["action"]).unwrap_or_default(),
        head_sha: required(&["head", "sha"])?,
        head_ref: required(&["head", "ref"])?,
        base_ref: required(&["base", "ref"])?,
        from_fork: head_repo != base_repo,
        sender: text(v, &["sender", "login"]),
    })
}
