//! GitHub deliveries, and the GitHub-shaped payloads of Gitea, Forgejo and Gogs.

use serde_json::Value;

use super::event::{Delivery, PullRequestEvent, PushEvent};
use super::provider::{is_zero, text, texts};

const REPOSITORY_URLS: &[&[&str]] = &[
    &["repository", "clone_url"],
    &["repository", "html_url"],
    &["repository", "ssh_url"],
    &["repository", "git_url"],
];

pub fn parse(
    event: &str,
    json: impl FnOnce() -> Result<Value, String>,
) -> Result<Delivery, String> {
    match event {
        "ping" => Ok(Delivery::Ping),
        "push" => push(&json()?).map(|p| Delivery::Pushes(vec![p])),
        "pull_request" => pull_request(&json()?).map(Delivery::PullRequest),
        "" => Err("no event header (X-GitHub-Event, X-Gitea-Event, …)".into()),
        other => Ok(Delivery::Ignored(format!(
            "`{other}` events do not trigger syncs"
        ))),
    }
}

fn push(v: &Value) -> Result<PushEvent, String> {
    let field =
        |name: &str| text(v, &[name]).ok_or_else(|| format!("push payload without `{name}`"));
    let (before, after) = (field("before")?, field("after")?);
    let flag = |name: &str| v.get(name).and_then(Value::as_bool);
    Ok(PushEvent {
        repository_urls: texts(v, REPOSITORY_URLS),
        git_ref: field("ref")?,
        // Gitea and Gogs send no created/deleted flags: the zero SHA says it.
        created: flag("created").unwrap_or(is_zero(&before)),
        deleted: flag("deleted").unwrap_or(is_zero(&after)),
        forced: flag("forced").unwrap_or(false),
        before,
        after,
        sender: text(v, &["sender", "login"]).or_else(|| text(v, &["pusher", "login"])),
    })
}

fn pull_request(v: &Value) -> Result<PullRequestEvent, String> {
    let pr = v
        .get("pull_request")
        .ok_or("pull_request payload without `pull_request`")?;
    let required = |path: &[&str]| {
        text(pr, path).ok_or_else(|| {
            format!(
                "pull_request payload without `pull_request.{}`",
                path.join(".")
            )
        })
    };
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
