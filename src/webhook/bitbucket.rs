//! Bitbucket Cloud (`repo:push`, `pullrequest:*`) and Data Center (`repo:refs_changed`, `pr:*`).

use serde_json::Value;

use super::event::{Delivery, PullRequestEvent, PullRequestKind, PushEvent, ZERO_SHA};
use super::provider::{is_zero, required_text, text, texts};

pub fn parse(
    event: &str,
    json: impl FnOnce() -> Result<Value, String>,
) -> Result<Delivery, String> {
    match event {
        "diagnostics:ping" => Ok(Delivery::Ping),
        "repo:push" => cloud_push(&json()?).map(Delivery::Pushes),
        "repo:refs_changed" => server_push(&json()?).map(Delivery::Pushes),
        e if e.starts_with("pullrequest:") => {
            cloud_pull_request(&json()?, &e["pullrequest:".len()..])
                .map(|pr| Delivery::PullRequest(Box::new(pr)))
        }
        e if e.starts_with("pr:") => server_pull_request(&json()?, &e["pr:".len()..])
            .map(|pr| Delivery::PullRequest(Box::new(pr))),
        "" => Err("no X-Event-Key header".into()),
        other => Ok(Delivery::Ignored(format!(
            "`{other}` events do not trigger syncs"
        ))),
    }
}

fn cloud_urls(v: &Value) -> Vec<String> {
    let mut urls = texts(v, &[&["repository", "links", "html", "href"]]);
    if let Some(name) = text(v, &["repository", "full_name"]) {
        urls.push(format!("https://bitbucket.org/{name}"));
    }
    urls
}

fn cloud_push(v: &Value) -> Result<Vec<PushEvent>, String> {
    let changes = v
        .pointer("/push/changes")
        .and_then(Value::as_array)
        .ok_or("repo:push payload without `push.changes`")?;
    let urls = cloud_urls(v);
    changes
        .iter()
        .map(|change| {
            // `new` is null for a deleted ref, `old` for a created one.
            let side = |s: &str| change.get(s).filter(|x| !x.is_null());
            let target = side("new")
                .or(side("old"))
                .ok_or("a push change without `new` or `old`")?;
            let kind = if text(target, &["type"]).as_deref() == Some("tag") {
                "tags"
            } else {
                "heads"
            };
            let name = text(target, &["name"]).ok_or("a push change without a ref name")?;
            let hash = |s: &str| {
                side(s)
                    .and_then(|x| text(x, &["target", "hash"]))
                    .unwrap_or_else(|| ZERO_SHA.to_owned())
            };
            let flag = |name: &str| change.get(name).and_then(Value::as_bool).unwrap_or(false);
            Ok(PushEvent {
                repository_urls: urls.clone(),
                git_ref: format!("refs/{kind}/{name}"),
                before: hash("old"),
                after: hash("new"),
                created: flag("created"),
                deleted: flag("closed"),
                forced: flag("forced"),
                sender: text(v, &["actor", "nickname"])
                    .or_else(|| text(v, &["actor", "display_name"])),
            })
        })
        .collect()
}

fn cloud_pull_request(v: &Value, action: &str) -> Result<PullRequestEvent, String> {
    let pr = v
        .get("pullrequest")
        .ok_or("pull request payload without `pullrequest`")?;
    let required = |path: &[&str]| required_text(pr, "pull request payload", "pullrequest", path);
    let kind = match action {
        "created" => PullRequestKind::Opened,
        // Bitbucket Cloud sends `updated` for new commits and for edits alike: the head decides.
        "updated" => PullRequestKind::Pushed,
        "fulfilled" | "rejected" => PullRequestKind::Closed,
        _ => PullRequestKind::Other,
    };
    let repo = |side: &str| {
        text(pr, &[side, "repository", "uuid"])
            .or_else(|| text(pr, &[side, "repository", "full_name"]))
    };
    let source = repo("source");
    let head_ref = required(&["source", "branch", "name"])?;
    Ok(PullRequestEvent {
        repository_urls: cloud_urls(v),
        number: pr
            .get("id")
            .and_then(Value::as_u64)
            .ok_or("pull request payload without `pullrequest.id`")?,
        action: action.to_owned(),
        kind,
        head_sha: required(&["source", "commit", "hash"])?,
        // Bitbucket Cloud keeps no ref for a pull request: its source branch is fetched.
        fetch_ref: format!("refs/heads/{head_ref}"),
        head_ref,
        base_ref: required(&["destination", "branch", "name"])?,
        from_fork: source.is_none() || source != repo("destination"),
        draft: pr.get("draft").and_then(Value::as_bool).unwrap_or(false),
        labels: Vec::new(),
        sender: text(v, &["actor", "nickname"]),
    })
}

fn server_urls(repository: &Value) -> Vec<String> {
    let links = repository
        .pointer("/links/clone")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    let selfs = repository
        .pointer("/links/self")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    links
        .chain(selfs)
        .filter_map(|l| text(l, &["href"]))
        .map(|href| href.trim_end_matches("/browse").to_owned())
        .collect()
}

fn server_push(v: &Value) -> Result<Vec<PushEvent>, String> {
    let changes = v
        .get("changes")
        .and_then(Value::as_array)
        .ok_or("repo:refs_changed payload without `changes`")?;
    let urls = server_urls(v.get("repository").unwrap_or(&Value::Null));
    changes
        .iter()
        .map(|change| {
            let field = |path: &[&str]| {
                text(change, path)
                    .ok_or_else(|| format!("a ref change without `{}`", path.join(".")))
            };
            let (before, after) = (field(&["fromHash"])?, field(&["toHash"])?);
            let kind = text(change, &["type"]).unwrap_or_default();
            Ok(PushEvent {
                repository_urls: urls.clone(),
                git_ref: field(&["ref", "id"])?,
                created: kind == "ADD" || is_zero(&before),
                deleted: kind == "DELETE" || is_zero(&after),
                forced: false,
                before,
                after,
                sender: text(v, &["actor", "name"]),
            })
        })
        .collect()
}

fn server_pull_request(v: &Value, action: &str) -> Result<PullRequestEvent, String> {
    let pr = v
        .get("pullRequest")
        .ok_or("pull request payload without `pullRequest`")?;
    let required = |path: &[&str]| required_text(pr, "pull request payload", "pullRequest", path);
    let repo = |side: &str| {
        pr.get(side)?
            .get("repository")?
            .get("id")
            .and_then(Value::as_u64)
    };
    let branch = |id: String| {
        id.strip_prefix("refs/heads/")
            .map(str::to_owned)
            .unwrap_or(id)
    };
    let kind = match action {
        "opened" | "reopened" => PullRequestKind::Opened,
        "from_ref_updated" => PullRequestKind::Pushed,
        "merged" | "declined" | "deleted" => PullRequestKind::Closed,
        _ => PullRequestKind::Other,
    };
    let number = pr
        .get("id")
        .and_then(Value::as_u64)
        .ok_or("pull request payload without `pullRequest.id`")?;
    Ok(PullRequestEvent {
        repository_urls: server_urls(pr.pointer("/toRef/repository").unwrap_or(&Value::Null)),
        number,
        action: action.to_owned(),
        kind,
        head_sha: required(&["fromRef", "latestCommit"])?,
        head_ref: branch(required(&["fromRef", "id"])?),
        fetch_ref: format!("refs/pull-requests/{number}/from"),
        base_ref: branch(required(&["toRef", "id"])?),
        from_fork: repo("fromRef").is_none() || repo("fromRef") != repo("toRef"),
        draft: pr.get("draft").and_then(Value::as_bool).unwrap_or(false),
        labels: Vec::new(),
        sender: text(v, &["actor", "name"]),
    })
}
