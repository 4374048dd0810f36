//! The receiver for every provider, over a real socket: real third-party payloads re-pointed at
//! the test's config repo, and the limits that protect the receiver.

use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

struct Setup {
    emulator: Emulator,
    repo: ConfigRepo,
    queue_url: String,
    receiver: Receiver,
    _dir: tempfile::TempDir,
}

async fn setup(webhooks: &str) -> Setup {
    let emulator = Emulator::start().await;
    let queue_url = emulator.create_queue("fleetsync.fifo").await;
    let repo = ConfigRepo::example(&emulator);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &repo.file_url(), &queue_url, webhooks);
    let receiver = Receiver::start(&config, &emulator.aws).await;
    Setup {
        emulator,
        repo,
        queue_url,
        receiver,
        _dir: dir,
    }
}

fn fixture(path: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/webhooks/{path}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn hex_hmac(body: &[u8]) -> String {
    sign(SECRET.as_bytes(), body)
        .trim_start_matches("sha256=")
        .to_owned()
}

fn assert_enqueued(status: u16, body: &Value, commit: git2::Oid) {
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["commit"], commit.to_string());
    assert_eq!(body["jobs"].as_array().unwrap().len(), APPS.len(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_push_with_its_token_enqueues() {
    let s = setup("").await;
    let head = s.repo.head("staging");
    let mut payload = fixture("gitlab/go-gitlab.webhooks.push.json");
    payload["ref"] = "refs/heads/staging".into();
    payload["after"] = head.to_string().into();
    payload["project"]["git_http_url"] = format!("{REPO_URL}.git").into();
    let body = serde_json::to_vec(&payload).unwrap();
    let headers = [
        ("x-gitlab-event", "Push Hook"),
        ("x-gitlab-token", SECRET),
        ("idempotency-key", "gl-1"),
    ];
    let (status, reply) = s.receiver.post("gitlab", &headers, &body).await;
    assert_enqueued(status, &reply, head);

    let wrong = [("x-gitlab-event", "Push Hook"), ("x-gitlab-token", "guess")];
    assert_eq!(s.receiver.post("gitlab", &wrong, &body).await.0, 401);
    let tag = serde_json::to_vec(&fixture("gitlab/go-gitlab.webhooks.tag_push.json")).unwrap();
    let (status, reply) = s
        .receiver
        .post(
            "gitlab",
            &[
                ("x-gitlab-event", "Tag Push Hook"),
                ("x-gitlab-token", SECRET),
            ],
            &tag,
        )
        .await;
    assert_eq!(
        (status, reply["reason"].as_str()),
        (200, Some("tag pushes do not trigger syncs"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitea_forgejo_and_gogs_pushes_enqueue() {
    let s = setup("").await;
    let head = s.repo.head("staging");
    for (fixture_path, signature_header, event_header) in [
        (
            "gitea/go-playground.push-event.json",
            "x-gitea-signature",
            "x-gitea-event",
        ),
        (
            "gitea/forgejo-docs.push.json",
            "x-forgejo-signature",
            "x-forgejo-event",
        ),
        (
            "gogs/go-playground.push-event.json",
            "x-gogs-signature",
            "x-gogs-event",
        ),
    ] {
        let mut payload = fixture(fixture_path);
        payload["ref"] = "refs/heads/staging".into();
        payload["after"] = head.to_string().into();
        payload["repository"]["clone_url"] = format!("{REPO_URL}.git").into();
        let body = serde_json::to_vec(&payload).unwrap();
        let signature = hex_hmac(&body);
        // These hosts send GitHub's headers too; a wrong one must not matter.
        let headers = [
            (signature_header, signature.as_str()),
            (event_header, "push"),
            ("x-hub-signature-256", "sha256=00"),
        ];
        let (status, reply) = s.receiver.post("gitea", &headers, &body).await;
        assert_enqueued(status, &reply, head);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitbucket_cloud_and_data_center_pushes_enqueue() {
    let s = setup("").await;
    let head = s.repo.head("staging");

    let mut cloud = fixture("bitbucket-cloud/go-playground.repo-push.json");
    cloud["repository"]["links"]["html"]["href"] = REPO_URL.into();
    let change = &mut cloud["push"]["changes"][0];
    change["new"]["name"] = "staging".into();
    change["new"]["target"]["hash"] = head.to_string().into();
    let body = serde_json::to_vec(&cloud).unwrap();
    let signature = sign(SECRET.as_bytes(), &body);
    let headers = [
        ("x-event-key", "repo:push"),
        ("x-hub-signature", signature.as_str()),
        ("x-request-uuid", "bb-1"),
    ];
    let (status, reply) = s.receiver.post("bitbucket", &headers, &body).await;
    assert_enqueued(status, &reply, head);

    // Data Center: a branch update and a branch deletion in one delivery.
    let mut server = fixture("bitbucket-server/go-playground.repo-refs-changed.json");
    server["repository"]["links"]["clone"][0]["href"] = format!("{REPO_URL}.git").into();
    let deletion = server["changes"][0].clone();
    let mut update = deletion.clone();
    update["ref"]["id"] = "refs/heads/staging".into();
    update["toHash"] = head.to_string().into();
    update["type"] = "UPDATE".into();
    server["changes"] = json!([update, deletion]);
    let body = serde_json::to_vec(&server).unwrap();
    let signature = sign(SECRET.as_bytes(), &body);
    let headers = [
        ("x-event-key", "repo:refs_changed"),
        ("x-hub-signature", signature.as_str()),
        ("x-request-id", "bb-2"),
    ];
    let (status, reply) = s.receiver.post("bitbucket", &headers, &body).await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["pushes"][0]["status"], "enqueued");
    assert_eq!(
        reply["pushes"][1]["reason"],
        "branch `feature/wip` was deleted; nothing to deploy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_ci_trigger_enqueues_and_replays_are_duplicates() {
    let s = setup("").await;
    let head = s.repo.head("staging");
    let body = serde_json::to_vec(
        &json!({"repository": REPO_URL, "branch": "staging", "after": head.to_string()}),
    )
    .unwrap();
    let signature = sign(SECRET.as_bytes(), &body);
    let headers = [
        ("x-fleetsync-signature", signature.as_str()),
        ("x-fleetsync-delivery", "ci-42"),
    ];
    let (status, reply) = s.receiver.post("generic", &headers, &body).await;
    assert_enqueued(status, &reply, head);
    let (status, reply) = s.receiver.post("generic", &headers, &body).await;
    assert_eq!((status, reply), (200, json!({"status": "duplicate"})));
    assert_eq!(s.emulator.queue_depth(&s.queue_url).await, APPS.len());
    let metrics = s.receiver.metrics().await;
    assert!(
        metrics.contains(
            "fleetsync_webhook_deliveries_total{provider=\"generic\",outcome=\"duplicate\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_answered_and_counted_by_reason() {
    let s = setup("webhooks:\n  maxHeaders: 20\n  ratePerSecond: 0.001\n  rateBurst: 4\n").await;
    let body = push_payload("staging", s.repo.head("staging"));
    assert_eq!(
        s.receiver.deliver(&body, Some("sha256=00"), "bad").await.0,
        401
    );
    assert_eq!(s.receiver.post("svn", &[], &body).await.0, 404);
    let many: Vec<(String, String)> = (0..30)
        .map(|i| (format!("x-extra-{i}"), "1".to_owned()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(s.receiver.post("github", &many, &body).await.0, 431);
    // The 431 was refused before the rate was counted: two of the burst of four are spent; two
    // more, and the rate refills almost nothing.
    let (status, _) = s.receiver.deliver(&body, Some("sha256=00"), "fourth").await;
    assert_eq!(status, 401);
    assert_eq!(
        s.receiver
            .deliver(&body, Some("sha256=00"), "fifth")
            .await
            .0,
        401
    );
    assert_eq!(
        s.receiver
            .deliver(&body, Some("sha256=00"), "sixth")
            .await
            .0,
        429
    );

    let metrics = s.receiver.metrics().await;
    for line in [
        "fleetsync_webhook_refusals_total{provider=\"github\",reason=\"bad_signature\"} 3",
        "fleetsync_webhook_refusals_total{provider=\"github\",reason=\"too_many_headers\"} 1",
        "fleetsync_webhook_refusals_total{provider=\"github\",reason=\"rate_limited\"} 1",
        "fleetsync_webhook_refusals_total{provider=\"unknown\",reason=\"unknown_provider\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    assert!(!metrics.contains(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_past_the_in_flight_limit_get_503() {
    let s = setup("webhooks:\n  maxInFlight: 1\n").await;
    // A client that sends its headers and then stalls holds the only slot.
    let address = s.receiver.url.trim_start_matches("http://").to_owned();
    let mut stalled = std::net::TcpStream::connect(&address).unwrap();
    write!(
        stalled,
        "POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{"
    )
    .unwrap();
    stalled.flush().unwrap();
    let body = push_payload("staging", s.repo.head("staging"));
    let status = eventually(
        Duration::from_secs(10),
        "the stalled request to hold the slot",
        || async {
            let (status, _) = s.receiver.deliver(&body, Some("sha256=00"), "x").await;
            (status == 503).then_some(status)
        },
    )
    .await;
    assert_eq!(status, 503);
    drop(stalled);
    let status = eventually(Duration::from_secs(10), "the slot to free up", || async {
        let (status, _) = s.receiver.deliver(&body, Some("sha256=00"), "x").await;
        (status != 503).then_some(status)
    })
    .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_pushes_to_one_branch_costs_at_most_two_fetches() {
    let s = setup("").await;
    // A fresh receiver's first push also resolves every environment branch once, to learn
    // which of them read other repos: a cost paid once, not per push.
    let (status, body) = s
        .receiver
        .push("staging", s.repo.head("staging"), "warm")
        .await;
    assert_eq!(status, 202, "{body}");
    let warm = fetches(&s.receiver).await;
    let head = s.repo.head("main");
    let mut pushes = tokio::task::JoinSet::new();
    for i in 0..10 {
        let receiver = Receiver::remote(&s.receiver.url);
        pushes.spawn(async move { receiver.push("main", head, &format!("burst-{i}")).await });
    }
    let answers = pushes.join_all().await;
    for (status, body) in &answers {
        assert_eq!(*status, 202, "{body}");
        assert_eq!(body["commit"], head.to_string());
    }
    let fetches = fetches(&s.receiver).await - warm;
    assert!(
        (1..=2).contains(&fetches),
        "{fetches} fetches for 10 pushes"
    );
    assert_eq!(
        s.emulator.queue_depth(&s.queue_url).await,
        2 * APPS.len(),
        "one set of jobs for staging, one for main"
    );
}

async fn fetches(receiver: &Receiver) -> u64 {
    let metrics = receiver.metrics().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("fleetsync_git_fetches_total{repo=\"platform\"} "))
        .unwrap()
        .parse()
        .unwrap()
}
