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

/// go-gitlab's push fixture, re-pointed at the test's repo and `head` of `branch`.
fn gitlab_push(branch: &str, head: git2::Oid) -> Vec<u8> {
    let mut payload = fixture("gitlab/go-gitlab.webhooks.push.json");
    payload["ref"] = format!("refs/heads/{branch}").into();
    payload["after"] = head.to_string().into();
    payload["project"]["git_http_url"] = format!("{REPO_URL}.git").into();
    serde_json::to_vec(&payload).unwrap()
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
    let body = gitlab_push("staging", head);
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
    let s = setup("webhooks:\n  maxHeaders: 20\n  ratePerSecond: 0.001\n  rateBurst: 3\n").await;
    let body = push_payload("staging", s.repo.head("staging"));
    assert_eq!(s.receiver.post("svn", &[], &body).await.0, 404);
    let many: Vec<(String, String)> = (0..30)
        .map(|i| (format!("x-extra-{i}"), "1".to_owned()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(s.receiver.post("github", &many, &body).await.0, 431);
    // Only failed verifications spend the rate: the 404 and the 431 spent none of three.
    for delivery in ["bad-1", "bad-2", "bad-3"] {
        let (status, _) = s.receiver.deliver(&body, Some("sha256=00"), delivery).await;
        assert_eq!(status, 401);
    }
    let (status, _) = s.receiver.deliver(&body, Some("sha256=00"), "bad-4").await;
    assert_eq!(status, 429);

    let metrics = s.receiver.metrics().await;
    for line in [
        "fleetsync_webhook_refusals_total{provider=\"github\",reason=\"bad_signature\"} 4",
        "fleetsync_webhook_refusals_total{provider=\"github\",reason=\"too_many_headers\"} 1",
        "fleetsync_webhook_refusals_total{provider=\"unknown\",reason=\"unknown_provider\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    assert!(!metrics.contains(SECRET));
}

/// One client over the rate made every Git host delivery from the same address 429: behind a
/// load balancer without trustForwardedFor, that is every delivery. Unverified traffic must not
/// spend what verified deliveries need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unsigned_requests_does_not_rate_limit_a_signed_push() {
    let s = setup("webhooks:\n  ratePerSecond: 1\n  rateBurst: 5\n").await;
    let head = s.repo.head("staging");
    let body = push_payload("staging", head);
    let mut limited = 0;
    for i in 0..200 {
        let (status, _) = s
            .receiver
            .deliver(&body, Some("sha256=00"), &format!("flood-{i}"))
            .await;
        assert!(status == 401 || status == 429, "{status}");
        limited += usize::from(status == 429);
    }
    assert!(
        limited > 150,
        "the flood was rate-limited: {limited} of 200"
    );
    let (status, reply) = s.receiver.push("staging", head, "real").await;
    assert_enqueued(status, &reply, head);
}

/// `axum::serve` had no timers: 256 stalled requests held every place and every real delivery
/// got 503. A body is now read before a delivery takes a place, within bodyTimeout, and
/// headers within headerTimeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_holds_no_place_and_is_cut_off() {
    let s = setup("webhooks:\n  maxInFlight: 1\n  headerTimeout: 1s\n  bodyTimeout: 1s\n").await;
    let address = s.receiver.url.trim_start_matches("http://").to_owned();
    let stall = |request: &str| {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        stream.flush().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
    };
    let mut stalled_body =
        stall("POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{");
    let mut stalled_headers = stall("POST /webhooks/github HTTP/1.1\r\nHost: x\r\n");

    let head = s.repo.head("staging");
    let (status, reply) = s.receiver.push("staging", head, "while-stalled").await;
    assert_enqueued(status, &reply, head);

    let answer = tokio::task::spawn_blocking(move || {
        let read_all = |stream: &mut std::net::TcpStream| {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(stream, &mut text);
            text
        };
        (read_all(&mut stalled_body), read_all(&mut stalled_headers))
    })
    .await
    .unwrap();
    assert!(
        answer.0.starts_with("HTTP/1.1 408"),
        "a stalled body is answered 408: {answer:?}"
    );
    assert!(
        !answer.1.starts_with("HTTP/1.1 2"),
        "a stalled header is cut off: {answer:?}"
    );
}

/// Bodies not yet verified are held within one memory budget, whatever maxInFlight allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_not_yet_verified_share_one_memory_budget() {
    let s = setup("webhooks:\n  unverifiedBodyBytes: 8192\n  bodyTimeout: 30s\n").await;
    let address = s.receiver.url.trim_start_matches("http://").to_owned();
    let mut slow = std::net::TcpStream::connect(&address).unwrap();
    let part = format!(
        "POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n{}",
        " ".repeat(7 * 1024)
    );
    slow.write_all(part.as_bytes()).unwrap();
    slow.flush().unwrap();
    let body = push_payload("staging", s.repo.head("staging"));
    let (status, reply) = eventually(
        Duration::from_secs(10),
        "the slow body to hold the budget",
        || async {
            let answer = s.receiver.deliver(&body, Some("sha256=00"), "x").await;
            (answer.0 == 503).then_some(answer)
        },
    )
    .await;
    assert_eq!(
        (status, reply["reason"].as_str()),
        (
            503,
            Some("too many bodies being received; deliver again later")
        )
    );
    drop(slow);
    let status = eventually(Duration::from_secs(10), "the budget to free up", || async {
        let (status, _) = s.receiver.deliver(&body, Some("sha256=00"), "x").await;
        (status != 503).then_some(status)
    })
    .await;
    assert_eq!(status, 401);
}

/// A push of a configured repo signed with another repo's secret answered 200 "not watched",
/// so the Git host's delivery log never said the secret was wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_signed_with_another_repos_secret_is_401() {
    let s = setup("").await;
    let dir = tempfile::tempdir().unwrap();
    let other_secret = dir.path().join("other-secret");
    std::fs::write(&other_secret, "another repo's secret").unwrap();
    let platform_secret = dir.path().join("platform-secret");
    std::fs::write(&platform_secret, SECRET).unwrap();
    let text = format!(
        "listen: 127.0.0.1:0\nmirrorDir: {}\nqueueUrl: {}\nrepos:\n  - name: platform\n    url: {REPO_URL}\n    fetchUrl: {}\n    secret: file:{}\n  - name: team\n    url: https://github.com/acme/team\n    fetchUrl: {}\n    secret: file:{}\n",
        dir.path().join("m").display(),
        s.queue_url,
        s.repo.file_url(),
        platform_secret.display(),
        s.repo.file_url(),
        other_secret.display(),
    );
    let two = fleetsync::config::Config::parse(&dir.path().join("c.yaml"), &text).unwrap();
    let receiver = Receiver::start(&two, &s.emulator.aws).await;
    let body = push_payload("staging", s.repo.head("staging"));
    let signature = sign(b"another repo's secret", &body);
    let (status, reply) = receiver.deliver(&body, Some(&signature), "crossed").await;
    assert_eq!(status, 401, "{reply}");
    assert_eq!(
        reply["reason"],
        "signature does not match the secret of repo `platform`; check the webhook secret"
    );
    assert_eq!(s.emulator.queue_depth(&s.queue_url).await, 0);
}

/// A GitLab project with a signing token next to its secret token sends both schemes; a
/// receiver configured with the plain token answered 401 to every delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_deliveries_carrying_both_schemes_verify_by_the_configured_secret() {
    let s = setup("").await;
    let head = s.repo.head("staging");
    let body = gitlab_push("staging", head);
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let headers = [
        ("x-gitlab-event", "Push Hook"),
        ("x-gitlab-token", SECRET),
        ("webhook-id", "msg_1"),
        ("webhook-timestamp", timestamp.as_str()),
        (
            "webhook-signature",
            "v1,c2lnbmVkIHdpdGggYSBzaWduaW5nIHRva2Vu",
        ),
    ];
    let (status, reply) = s.receiver.post("gitlab", &headers, &body).await;
    assert_enqueued(status, &reply, head);
}

/// A lagging fetch URL (a mirror, a Geo secondary) was answered 202 with the old head, and
/// the redelivery within the replay window was a "duplicate".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_the_fetch_url_does_not_have_yet_is_503_and_not_remembered() {
    let s = setup("").await;
    let before = s.repo.head("staging");
    // The commit exists upstream but the fetch URL's branch does not point at it yet.
    let pushed = s
        .repo
        .commit("staging", "README.md", |_| Some("next\n".into()));
    s.repo
        .repo
        .reference("refs/heads/staging", before, true, "lagging mirror")
        .unwrap();
    let (status, reply) = s
        .receiver
        .push_from("staging", Some(before), pushed, "lagging")
        .await;
    assert_eq!(status, 503, "{reply}");
    assert_eq!(
        reply["reason"],
        "not enqueued, deliver again later: the config repo's fetch URL does not have the pushed commit yet"
    );
    // The fetches found the branch where the push started: nothing had changed, so nothing
    // was sent (a fresh receiver sent every app of the old head).
    assert_eq!(s.emulator.queue_depth(&s.queue_url).await, 0);
    s.repo
        .repo
        .reference("refs/heads/staging", pushed, true, "caught up")
        .unwrap();
    let (status, reply) = s
        .receiver
        .push_from("staging", Some(before), pushed, "lagging")
        .await;
    assert_eq!(status, 202, "the redelivery is not a duplicate: {reply}");
    assert_eq!(reply["commit"], pushed.to_string());
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

/// Two receivers behind a load balancer take pushes in turn. "Only what changed" rested on
/// what the receiver itself had enqueued, so every push that reached the other one enqueued
/// every app of the environment: N replicas cost N times what one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_another_replica_enqueues_only_the_apps_it_changed() {
    let s = setup("").await;
    let other_dir = tempfile::tempdir().unwrap();
    let other = config(other_dir.path(), &s.repo.file_url(), &s.queue_url, "");
    let other = Receiver::start(&other, &s.emulator.aws).await;
    let first = s.repo.head("staging");
    let (status, body) = s.receiver.push("staging", first, "first").await;
    assert_enqueued(status, &body, first);

    let second = s.repo.commit("staging", "apps/api/taskdef.json", |text| {
        Some(text.unwrap().replace("api:1.4.2", "api:1.5.0"))
    });
    let (status, body) = other
        .push_from("staging", Some(first), second, "second")
        .await;
    assert_eq!(status, 202, "{body}");
    let apps = job_apps(&body);
    assert_eq!(apps, ["api"], "{body}");
    assert_eq!(body["unchanged"], APPS.len() - 1);

    // Back on the first receiver, which last saw `first`, not `second`.
    let third = s.repo.commit("staging", "apps/web/taskdef.json", |text| {
        Some(text.unwrap().replace("web:3.8.1", "web:3.9.0"))
    });
    let (status, body) = s
        .receiver
        .push_from("staging", Some(second), third, "third")
        .await;
    assert_eq!(status, 202, "{body}");
    let apps = job_apps(&body);
    assert_eq!(apps, ["web"], "{body}");
    assert_eq!(
        s.emulator.queue_depth(&s.queue_url).await,
        APPS.len() + 2,
        "one set for the first push, one job for each later one"
    );
}

/// Every delivery was checked against every watched repo's secret: with many repos, one
/// HMAC of the body per repo. The repo named in the URL is the only candidate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_to_a_repos_own_route_is_checked_against_that_repo_only() {
    let s = setup("").await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_repos(
        dir.path(),
        &[
            ("team", "https://github.com/acme/team", &s.repo.file_url()),
            ("platform", REPO_URL, &s.repo.file_url()),
        ],
        &s.queue_url,
        "",
    );
    let receiver = Receiver::start(&config, &s.emulator.aws).await;
    let head = s.repo.head("staging");
    let body = push_payload("staging", head);
    let signature = sign(SECRET.as_bytes(), &body);
    let headers = [
        ("content-type", "application/json"),
        ("x-github-event", "push"),
        ("x-github-delivery", "own-route"),
        ("x-hub-signature-256", signature.as_str()),
    ];
    let (status, reply) = receiver.post("github/platform", &headers, &body).await;
    assert_enqueued(status, &reply, head);

    // Both repos share the secret here: a hook pointed at the wrong repo's route is told so.
    let mut headers = headers;
    headers[2].1 = "wrong-route";
    let (status, reply) = receiver.post("github/team", &headers, &body).await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(
        reply["reason"],
        "this is the route of repo `team`, and the push is not about it; point the webhook at /webhooks/github/<the repo's name>"
    );
    let other_secret = sign(b"not the secret", &body);
    headers[3].1 = other_secret.as_str();
    let (status, reply) = receiver.post("github/platform", &headers, &body).await;
    assert_eq!(status, 401, "{reply}");

    let (status, reply) = receiver.post("github/nobody", &headers, &body).await;
    assert_eq!(status, 404, "{reply}");
    assert!(
        reply["reason"]
            .as_str()
            .unwrap()
            .starts_with("no watched repo has that name"),
        "{reply}"
    );
    let metrics = receiver.metrics().await;
    assert!(
        metrics.contains("reason=\"unknown_repo\""),
        "refusals are counted: {metrics}"
    );
}

/// Replays were keyed on the delivery id alone, a header no signature covers: a new push that
/// came with an id seen before was answered "duplicate", and a GitLab delivery's signed
/// `webhook-id` was never used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_the_same_signed_delivery_about_the_same_commit() {
    let s = setup("").await;
    let first = s.repo.head("staging");
    let (status, body) = s.receiver.push("staging", first, "reused-id").await;
    assert_enqueued(status, &body, first);
    let second = s.repo.commit("staging", "apps/api/taskdef.json", |text| {
        Some(text.unwrap().replace("api:1.4.2", "api:1.5.0"))
    });
    let (status, accepted) = s
        .receiver
        .push_from("staging", Some(first), second, "reused-id")
        .await;
    assert_eq!(
        status, 202,
        "another commit is another delivery: {accepted}"
    );
    assert_eq!(accepted["jobs"].as_array().unwrap().len(), 1, "{accepted}");
    let (status, body) = s
        .receiver
        .push_from("staging", Some(first), second, "reused-id")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "duplicate");
    // GitHub's delivery id is not signed: the same push under a new id is answered with the
    // jobs already durable for that head, and nothing more is sent.
    let depth = s.emulator.queue_depth(&s.queue_url).await;
    let (status, again) = s
        .receiver
        .push_from("staging", Some(first), second, "fresh-id")
        .await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["jobs"], accepted["jobs"], "{again}");
    assert_eq!(s.emulator.queue_depth(&s.queue_url).await, depth);

    // GitLab with a signing token: the signed `webhook-id` names the delivery, whatever
    // unsigned id headers say.
    let dir = tempfile::tempdir().unwrap();
    let key = b"a signing token for the test";
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let secret_file = dir.path().join("signing-token");
    std::fs::write(&secret_file, format!("whsec_{}", b64.encode(key))).unwrap();
    let text = format!(
        "listen: 127.0.0.1:0\nmirrorDir: {}\nqueueUrl: {}\nrepos:\n  - name: platform\n    url: {REPO_URL}\n    fetchUrl: {}\n    secret: file:{}\n",
        dir.path().join("m").display(),
        s.queue_url,
        s.repo.file_url(),
        secret_file.display(),
    );
    let signed = fleetsync::config::Config::parse(&dir.path().join("c.yaml"), &text).unwrap();
    let receiver = Receiver::start(&signed, &s.emulator.aws).await;
    let body = gitlab_push("staging", second);
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let signature = {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        mac.update(format!("msg_2Kd8.{timestamp}.").as_bytes());
        mac.update(&body);
        format!("v1,{}", b64.encode(mac.finalize().into_bytes()))
    };
    let deliver = |idempotency_key: &'static str| {
        let headers = [
            ("x-gitlab-event", "Push Hook".to_owned()),
            ("idempotency-key", idempotency_key.to_owned()),
            ("webhook-id", "msg_2Kd8".to_owned()),
            ("webhook-timestamp", timestamp.clone()),
            ("webhook-signature", signature.clone()),
        ];
        let (receiver, body) = (&receiver, &body);
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            receiver.post("gitlab", &headers, body).await
        }
    };
    let (status, reply) = deliver("first-key").await;
    assert_eq!(status, 202, "{reply}");
    let (status, reply) = deliver("another-key").await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["status"], "duplicate", "{reply}");
}
