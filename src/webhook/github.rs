//! GitHub deliveries, and the GitHub-shaped payloads of Gitea, Forgejo and Gogs.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use super::event::{Delivery, PullRequestEvent, PullRequestKind, PushEvent};
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
        "pull_request" => pull_request(&value(json)?).map(|pr| Delivery::PullRequest(Box::new(pr))),
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
    let number = v
        .get("number")
        .and_then(Value::as_u64)
        .ok_or("pull_request payload without `number`")?;
    let action = text(v, &["action"]).unwrap_or_default();
    let label = text(v, &["label", "name"]);
    // Gitea and Forgejo send the same payload with their own action names.
    let kind = match action.as_str() {
        "opened" | "reopened" | "ready_for_review" => PullRequestKind::Opened,
        "synchronize" | "synchronized" => PullRequestKind::Pushed,
        "labeled" => PullRequestKind::Labeled(label.into_iter().collect()),
        "label_updated" => PullRequestKind::Labeled(Vec::new()),
        "unlabeled" => PullRequestKind::Unlabeled(label.into_iter().collect()),
        "label_cleared" => PullRequestKind::Unlabeled(Vec::new()),
        "closed" => PullRequestKind::Closed,
        _ => PullRequestKind::Other,
    };
    // A head repository deleted since (`null`) is not the base repository either.
    let repo_id = |side: &str| {
        let repo = pr.get(side)?.get("repo")?;
        repo.get("id")
            .and_then(Value::as_u64)
            .map(|id| id.to_string())
            .or_else(|| text(repo, &["full_name"]))
    };
    let head = repo_id("head");
    Ok(PullRequestEvent {
        repository_urls: texts(v, REPOSITORY_URLS),
        number,
        action,
        kind,
        head_sha: required(&["head", "sha"])?,
        head_ref: required(&["head", "ref"])?,
        fetch_ref: format!("refs/pull/{number}/head"),
        base_ref: required(&["base", "ref"])?,
        from_fork: head.is_none() || head != repo_id("base"),
        draft: pr.get("draft").and_then(Value::as_bool).unwrap_or(false),
        labels: labels(pr, "name"),
        sender: text(v, &["sender", "login"]),
    })
}

/// The names of `within.labels[].<key>`.
pub(super) fn labels(within: &Value, key: &str) -> Vec<String> {
    within
        .get("labels")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|l| text(l, &[key]))
        .collect()
}
