//! Every provider's real example payloads (tests/fixtures/webhooks, with provenance) through the
//! same check-then-parse path the receiver runs.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::event::{Delivery, PushEvent};
use super::provider::Provider;
use super::verify::Mismatch;

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/webhooks/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            )
        })
        .collect()
}

/// A signature vector from tests/fixtures/webhooks/vectors.json: (secret, expected header).
fn vector(id: &str) -> (String, String) {
    let vectors: serde_json::Value = serde_json::from_slice(&fixture("vectors.json")).unwrap();
    let v = vectors
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == id)
        .unwrap();
    (
        v["secret"].as_str().unwrap().to_owned(),
        v["expected"].as_str().unwrap().to_owned(),
    )
}

const LONG: Duration = Duration::from_secs(100 * 365 * 86_400);

fn verify(
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
    secret: &str,
) -> Result<(), Mismatch> {
    let check = provider
        .check(headers, body, "x-fleetsync-signature")
        .expect("a signature header");
    check.verify(secret.as_bytes(), LONG)
}

fn single_push(delivery: Delivery) -> PushEvent {
    match delivery {
        Delivery::Pushes(mut pushes) if pushes.len() == 1 => pushes.pop().unwrap(),
        other => panic!("expected one push, got {other:?}"),
    }
}

/// go-playground/webhooks' Gitea vector: X-Gitea-Signature, hex, no prefix, over the file.
#[test]
fn gitea_push_verifies_with_its_own_header_and_normalises() {
    let body = fixture("gitea/go-playground.push-event.json");
    let (secret, sig) = vector("go-playground-gitea-push");
    // Gitea also sends GitHub's header; its own wins.
    let h = headers(&[
        ("x-gitea-signature", &sig),
        ("x-gitea-event", "push"),
        ("x-hub-signature-256", "sha256=00"),
    ]);
    assert_eq!(verify(Provider::Gitea, &h, &body, &secret), Ok(()));
    assert_eq!(
        verify(Provider::Gitea, &h, &body, "another"),
        Err(Mismatch::BadSignature)
    );
    let push = single_push(Provider::Gitea.parse(&h, &body).unwrap());
    assert_eq!(push.branch(), Some("master"));
    assert!(push.created, "before is the zero SHA: a new branch");
    assert!(
        push.repository_urls
            .contains(&"http://localhost:3000/example/example.git".to_owned())
    );
}

#[test]
fn gitea_form_deliveries_are_signed_over_the_json_payload() {
    let json = fixture("gitea/go-playground.push-event.json");
    let form: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", std::str::from_utf8(&json).unwrap())
        .finish();
    let (secret, sig) = vector("go-playground-gitea-push");
    let h = headers(&[
        ("x-gitea-signature", &sig),
        ("x-gitea-event", "push"),
        ("content-type", "application/x-www-form-urlencoded"),
    ]);
    assert_eq!(
        verify(Provider::Gitea, &h, form.as_bytes(), &secret),
        Ok(())
    );
    assert_eq!(
        single_push(Provider::Gitea.parse(&h, form.as_bytes()).unwrap()).branch(),
        Some("master")
    );
}

/// Content-Type is not signed: a JSON push whose commit message carries `&payload=` must not be
/// re-read as the form its sender made up by changing the header.
#[test]
fn only_a_body_that_starts_as_a_form_is_read_as_one() {
    let forged = r#"{"ref":"refs/heads/main","before":"0000000000000000000000000000000000000000","after":"1111111111111111111111111111111111111111","repository":{"clone_url":"https://github.com/evil/x"},"z":{"a":""#;
    let body = serde_json::json!({
        "ref": "refs/heads/staging",
        "before": "0000000000000000000000000000000000000000",
        "after": "2222222222222222222222222222222222222222",
        "repository": {"clone_url": "https://github.com/acme/platform-config"},
        "head_commit": {"message": format!("x&payload={}", urlencode(forged))},
    })
    .to_string();
    let h = headers(&[
        ("x-github-event", "push"),
        ("content-type", "application/x-www-form-urlencoded"),
    ]);
    // What a form decoder makes of it: the made-up push, closed by the JSON's own ending.
    let smuggled = form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == "payload")
        .unwrap()
        .1;
    assert!(serde_json::from_str::<serde_json::Value>(&smuggled).is_ok());
    let push = single_push(Provider::GitHub.parse(&h, body.as_bytes()).unwrap());
    assert_eq!(push.branch(), Some("staging"));
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// go-playground/webhooks' Gogs vector.
#[test]
fn gogs_push_verifies_and_normalises() {
    let body = fixture("gogs/go-playground.push-event.json");
    let (secret, sig) = vector("go-playground-gogs-push");
    let h = headers(&[("x-gogs-signature", &sig), ("x-gogs-event", "push")]);
    assert_eq!(verify(Provider::Gitea, &h, &body, &secret), Ok(()));
    let push = single_push(Provider::Gitea.parse(&h, &body).unwrap());
    assert_eq!(push.branch(), Some("develop"));
    assert_eq!(push.after, "bffeb74224043ba2feb48d137756c8a9331c449a");
}

/// go-playground/webhooks' Bitbucket Server vector: X-Hub-Signature is sha256= despite its name.
#[test]
fn bitbucket_server_refs_changed_verifies_and_reports_a_branch_deletion() {
    let body = fixture("bitbucket-server/go-playground.repo-refs-changed.json");
    let (secret, sig) = vector("go-playground-bitbucket-server-refs-changed");
    let h = headers(&[
        ("x-hub-signature", &sig),
        ("x-event-key", "repo:refs_changed"),
    ]);
    assert_eq!(verify(Provider::Bitbucket, &h, &body, &secret), Ok(()));
    let push = single_push(Provider::Bitbucket.parse(&h, &body).unwrap());
    assert_eq!(push.git_ref, "refs/heads/feature/wip");
    assert!(push.deleted);
    assert!(
        push.repository_urls
            .iter()
            .any(|u| u.ends_with("/~gopher/webhook-test.git")),
        "{:?}",
        push.repository_urls
    );
}

#[test]
fn bitbucket_cloud_push_and_pull_request_normalise() {
    let body = fixture("bitbucket-cloud/go-playground.repo-push.json");
    let h = headers(&[("x-event-key", "repo:push")]);
    let push = single_push(Provider::Bitbucket.parse(&h, &body).unwrap());
    assert_eq!(push.git_ref, "refs/heads/name-of-branch");
    assert_eq!(push.after, "709d658dc5b6d6afcd46049c2f332ee3f515a67d");
    assert!(
        push.repository_urls
            .contains(&"https://bitbucket.org/team_name/repo_name".to_owned())
    );

    let body = fixture("bitbucket-cloud/go-playground.pull-request-created.json");
    let Delivery::PullRequest(pr) = Provider::Bitbucket
        .parse(&headers(&[("x-event-key", "pullrequest:created")]), &body)
        .unwrap()
    else {
        panic!("not a pull request")
    };
    assert_eq!(
        (
            pr.number,
            pr.action.as_str(),
            pr.head_ref.as_str(),
            pr.base_ref.as_str()
        ),
        (1, "created", "branch2", "master")
    );
    assert!(!pr.from_fork);
}

#[test]
fn bitbucket_server_pull_request_normalises() {
    let body = fixture("bitbucket-server/go-playground.pr-opened.json");
    let Delivery::PullRequest(pr) = Provider::Bitbucket
        .parse(&headers(&[("x-event-key", "pr:opened")]), &body)
        .unwrap()
    else {
        panic!("not a pull request")
    };
    assert_eq!(
        (pr.number, pr.head_ref.as_str(), pr.base_ref.as_str()),
        (5, "feature/wip", "master")
    );
    assert_eq!(pr.head_sha, "32a0b8a740c2963c6f56bd8baf3dc05683d299e0");
}

#[test]
fn gitlab_token_push_tag_and_merge_request() {
    let body = fixture("gitlab/go-gitlab.webhooks.push.json");
    let h = headers(&[
        ("x-gitlab-token", "s3cret"),
        ("x-gitlab-event", "Push Hook"),
    ]);
    assert_eq!(verify(Provider::GitLab, &h, &body, "s3cret"), Ok(()));
    assert_eq!(
        verify(Provider::GitLab, &h, &body, "s3cre"),
        Err(Mismatch::BadSignature)
    );
    let push = single_push(Provider::GitLab.parse(&h, &body).unwrap());
    assert_eq!(push.branch(), Some("master"));
    assert_eq!(push.sender.as_deref(), Some("jsmith"));
    assert!(
        push.repository_urls
            .contains(&"git@example.com:mike/diaspora.git".to_owned())
    );

    let tag = fixture("gitlab/go-gitlab.webhooks.tag_push.json");
    let parsed = Provider::GitLab
        .parse(&headers(&[("x-gitlab-event", "Tag Push Hook")]), &tag)
        .unwrap();
    assert_eq!(
        parsed,
        Delivery::Ignored("tag pushes do not trigger syncs".into())
    );

    let mr = fixture("gitlab/go-gitlab.webhooks.merge_request.json");
    let Delivery::PullRequest(pr) = Provider::GitLab
        .parse(&headers(&[("x-gitlab-event", "Merge Request Hook")]), &mr)
        .unwrap()
    else {
        panic!("not a merge request")
    };
    assert_eq!(
        (
            pr.number,
            pr.action.as_str(),
            pr.head_ref.as_str(),
            pr.base_ref.as_str()
        ),
        (1, "open", "ms-viewport", "master")
    );
}

/// A project with a signing token next to its secret token sends both schemes; each secret
/// configured checks its own. Choosing by the headers refused every delivery of a project
/// configured with its plain token.
#[test]
fn gitlab_checks_the_scheme_its_configured_secret_names() {
    let body = br#"{"test": 2432232314}"#;
    let signing = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let both = headers(&[
        ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
        ("webhook-timestamp", "1614265330"),
        (
            "webhook-signature",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
        ("x-gitlab-token", "s3cret"),
    ]);
    assert_eq!(verify(Provider::GitLab, &both, body, signing), Ok(()));
    assert_eq!(verify(Provider::GitLab, &both, body, "s3cret"), Ok(()));
    assert_eq!(
        verify(Provider::GitLab, &both, body, "other"),
        Err(Mismatch::BadSignature)
    );
    let check = Provider::GitLab.check(&both, body, "").unwrap();
    assert_eq!(
        check.verify(signing.as_bytes(), Duration::from_secs(300)),
        Err(Mismatch::StaleTimestamp)
    );
    // A signing secret is never matched by a token that merely equals it.
    let token_only = headers(&[("x-gitlab-token", signing)]);
    assert_eq!(
        verify(Provider::GitLab, &token_only, body, signing),
        Err(Mismatch::BadSignature)
    );
}

#[test]
fn github_pull_request_and_generic_push() {
    let body = fixture("github/pull_request-opened.payload.json");
    let Delivery::PullRequest(pr) = Provider::GitHub
        .parse(&headers(&[("x-github-event", "pull_request")]), &body)
        .unwrap()
    else {
        panic!("not a pull request")
    };
    assert_eq!(
        (pr.number, pr.action.as_str(), pr.head_ref.as_str()),
        (2, "opened", "changes")
    );

    let generic =
        br#"{"repository": "https://github.com/acme/platform-config", "branch": "staging"}"#;
    let h = headers(&[(
        "x-fleetsync-signature",
        &format!("sha256={}", hmac_hex(b"k", generic)),
    )]);
    assert_eq!(verify(Provider::Generic, &h, generic, "k"), Ok(()));
    let push = single_push(Provider::Generic.parse(&h, generic).unwrap());
    assert_eq!(push.git_ref, "refs/heads/staging");
    let bare = headers(&[("x-fleetsync-signature", &hmac_hex(b"k", generic))]);
    assert_eq!(
        verify(Provider::Generic, &bare, generic, "k"),
        Ok(()),
        "the sha256= prefix is optional"
    );
}

#[test]
fn missing_signatures_and_unreadable_payloads() {
    for provider in [
        Provider::GitHub,
        Provider::GitLab,
        Provider::Gitea,
        Provider::Bitbucket,
        Provider::Generic,
    ] {
        assert!(
            provider
                .check(&HeaderMap::new(), b"{}", "x-fleetsync-signature")
                .is_none(),
            "{provider:?}"
        );
    }
    let err = Provider::GitHub
        .parse(&headers(&[("x-github-event", "push")]), b"{not json")
        .unwrap_err();
    assert!(
        err.starts_with("not a push payload: key must be a string"),
        "{err}"
    );
    let err = Provider::GitHub
        .parse(&headers(&[("x-github-event", "push")]), b"{}")
        .unwrap_err();
    assert!(
        err.starts_with("not a push payload: missing field"),
        "{err}"
    );
    assert_eq!(Provider::from_path("forgejo"), Some(Provider::Gitea));
    assert_eq!(Provider::from_path("svn"), None);
}

fn hmac_hex(key: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// What each host's pull request event means for a preview, from the real payloads.
#[test]
fn pull_request_events_normalise_to_what_they_mean_for_a_preview() {
    use super::event::PullRequestKind;
    let parse = |provider: Provider, header: (&str, &str), path: &str| match provider
        .parse(&headers(&[header]), &fixture(path))
        .unwrap()
    {
        Delivery::PullRequest(pr) => pr,
        other => panic!("{path}: not a pull request: {other:?}"),
    };
    let github = ("x-github-event", "pull_request");
    let labeled = parse(
        Provider::GitHub,
        github,
        "github/pull_request-labeled.payload.json",
    );
    assert_eq!(labeled.kind, PullRequestKind::Labeled(vec!["bug".into()]));
    assert_eq!(labeled.fetch_ref, "refs/pull/2/head");
    assert!(labeled.labels.contains(&"bug".to_owned()));
    assert!(!labeled.from_fork, "same repository id on both sides");
    let pushed = parse(
        Provider::GitHub,
        github,
        "github/pull_request-synchronize.payload.json",
    );
    assert_eq!(pushed.kind, PullRequestKind::Pushed);
    let closed = parse(
        Provider::GitHub,
        github,
        "github/pull_request-closed.payload.json",
    );
    assert_eq!(closed.kind, PullRequestKind::Closed);

    let gitea = parse(
        Provider::Gitea,
        ("x-gitea-event", "pull_request"),
        "gitea/go-playground.pull-request-event.json",
    );
    assert_eq!(gitea.kind, PullRequestKind::Opened);
    assert!(gitea.from_fork, "head repo id 2, base repo id 1");

    let gitlab = parse(
        Provider::GitLab,
        ("x-gitlab-event", "Merge Request Hook"),
        "gitlab/go-gitlab.webhooks.merge_request.json",
    );
    assert_eq!(gitlab.kind, PullRequestKind::Opened);
    assert_eq!(gitlab.fetch_ref, "refs/merge-requests/1/head");
    assert!(!gitlab.draft && !gitlab.from_fork);

    let cloud = parse(
        Provider::Bitbucket,
        ("x-event-key", "pullrequest:created"),
        "bitbucket-cloud/go-playground.pull-request-created.json",
    );
    assert_eq!(cloud.kind, PullRequestKind::Opened);
    assert_eq!(cloud.fetch_ref, format!("refs/heads/{}", cloud.head_ref));

    let merged = parse(
        Provider::Bitbucket,
        ("x-event-key", "pr:merged"),
        "bitbucket-server/go-playground.pr-merged.json",
    );
    assert_eq!(merged.kind, PullRequestKind::Closed);
    assert_eq!(
        merged.fetch_ref,
        format!("refs/pull-requests/{}/from", merged.number)
    );
}
