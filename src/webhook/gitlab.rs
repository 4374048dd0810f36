//! GitLab deliveries: `X-Gitlab-Token`, or the Standard Webhooks `webhook-signature` GitLab is
//! rolling out; `Push Hook`, `Tag Push Hook`, `Merge Request Hook` and system hooks.

use axum::http::HeaderMap;
use serde_json::Value;

use super::event::{Delivery, PullRequestEvent, PullRequestKind, PushEvent};
use super::provider::{header, is_zero, required_text, text, texts};
use super::verify::Check;

const PROJECT_URLS: &[&[&str]] = &[
    &["project", "git_http_url"],
    &["project", "git_ssh_url"],
    &["project", "web_url"],
    &["repository", "git_http_url"],
    &["repository", "homepage"],
];

/// Both schemes, as far as the headers carry them: once a project adds a signing token next to
/// its secret token, GitLab sends both, and the secret configured decides which one is checked.
pub fn check<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> Option<Check<'a>> {
    let signed = match (
        header(headers, "webhook-id"),
        header(headers, "webhook-timestamp"),
        header(headers, "webhook-signature"),
    ) {
        (Some(id), Some(timestamp), Some(signatures)) => Some(Box::new(Check::StandardWebhooks {
            id,
            timestamp,
            signatures,
            body,
        })),
        _ => None,
    };
    let token = header(headers, "x-gitlab-token");
    if signed.is_none() && token.is_none() {
        return None;
    }
    Some(Check::TokenOrSigned { token, signed })
}

pub fn parse(
    event: &str,
    json: impl FnOnce() -> Result<Value, String>,
) -> Result<Delivery, String> {
    let kind = match event {
        "Push Hook" => "push",
        "Tag Push Hook" => "tag_push",
        "Merge Request Hook" => "merge_request",
        // System hooks name the kind in the body.
        "System Hook" => "",
        "" => return Err("no X-Gitlab-Event header".into()),
        other => {
            return Ok(Delivery::Ignored(format!(
                "`{other}` events do not trigger syncs"
            )));
        }
    };
    let v = json()?;
    let kind = if kind.is_empty() {
        text(&v, &["object_kind"])
            .or_else(|| text(&v, &["event_name"]))
            .unwrap_or_default()
    } else {
        kind.to_owned()
    };
    match kind.as_str() {
        "push" => push(&v).map(|p| Delivery::Pushes(vec![p])),
        "tag_push" => Ok(Delivery::Ignored("tag pushes do not trigger syncs".into())),
        "merge_request" => merge_request(&v).map(|pr| Delivery::PullRequest(Box::new(pr))),
        other => Ok(Delivery::Ignored(format!(
            "`{other}` events do not trigger syncs"
        ))),
    }
}

fn push(v: &Value) -> Result<PushEvent, String> {
    let field =
        |name: &str| text(v, &[name]).ok_or_else(|| format!("push payload without `{name}`"));
    let (before, after) = (field("before")?, field("after")?);
    Ok(PushEvent {
        repository_urls: texts(v, PROJECT_URLS),
        git_ref: field("ref")?,
        created: is_zero(&before),
        deleted: is_zero(&after),
        // GitLab does not say; a forced push resolves like any other.
        forced: false,
        before,
        after,
        sender: text(v, &["user_username"]),
    })
}

fn merge_request(v: &Value) -> Result<PullRequestEvent, String> {
    let attrs = v
        .get("object_attributes")
        .ok_or("merge request payload without `object_attributes`")?;
    let required =
        |path: &[&str]| required_text(attrs, "merge request payload", "object_attributes", path);
    let project = |key: &str| attrs.get(key).and_then(Value::as_u64);
    let number = attrs
        .get("iid")
        .and_then(Value::as_u64)
        .ok_or("merge request payload without `object_attributes.iid`")?;
    let action = text(attrs, &["action"]).unwrap_or_default();
    let labels = super::github::labels(v, "title");
    let kind = match action.as_str() {
        "open" | "reopen" => PullRequestKind::Opened,
        // An update brings new commits when it says where the head was (`oldrev`); otherwise
        // it changed the title, labels, draft state…
        "update" if attrs.get("oldrev").is_some_and(|r| !r.is_null()) => PullRequestKind::Pushed,
        "update" if v.pointer("/changes/labels").is_some() => label_change(v),
        "update"
            if v.pointer("/changes/draft/current") == Some(&Value::Bool(false))
                || v.pointer("/changes/work_in_progress/current") == Some(&Value::Bool(false)) =>
        {
            PullRequestKind::Opened
        }
        "close" | "merge" => PullRequestKind::Closed,
        _ => PullRequestKind::Other,
    };
    let draft = ["draft", "work_in_progress"]
        .iter()
        .any(|k| attrs.get(*k).and_then(Value::as_bool) == Some(true));
    Ok(PullRequestEvent {
        repository_urls: texts(v, PROJECT_URLS),
        number,
        action,
        kind,
        head_sha: required(&["last_commit", "id"])?,
        head_ref: required(&["source_branch"])?,
        fetch_ref: format!("refs/merge-requests/{number}/head"),
        base_ref: required(&["target_branch"])?,
        from_fork: project("source_project_id").is_none()
            || project("source_project_id") != project("target_project_id"),
        draft,
        labels,
        sender: text(v, &["user", "username"]),
    })
}

/// A label change: what `changes.labels` added, or else what it removed.
fn label_change(v: &Value) -> PullRequestKind {
    let titles = |side: &str| {
        v.pointer(&format!("/changes/labels/{side}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|l| text(l, &["title"]))
            .collect::<Vec<_>>()
    };
    let (before, after) = (titles("previous"), titles("current"));
    let added: Vec<String> = after
        .iter()
        .filter(|l| !before.contains(l))
        .cloned()
        .collect();
    if !added.is_empty() {
        return PullRequestKind::Labeled(added);
    }
    PullRequestKind::Unlabeled(before.into_iter().filter(|l| !after.contains(l)).collect())
}
