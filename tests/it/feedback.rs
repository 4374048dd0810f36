//! Commit statuses on the Git host: what the author sees on the commit, per environment and
//! app. A local HTTP server stands in for each host's API (it keeps what is posted and answers
//! reads as the host does); what fleetsync sends GitHub is checked against GitHub's published
//! OpenAPI description (scripts/github-openapi.py fetches it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fleetsync::config::HostKind;
use fleetsync::feedback::{Hosts, Posted};
use fleetsync::queue::{CommentJob, PreviewChange, Rollup, StatusJob, StatusState};
use serde_json::{Value, json};

use crate::harness::*;

const GITHUB_TOKEN: &str = "ghp_standin0123456789";

/// A Git host's API on loopback: records every request, keeps posted statuses, and answers
/// `outage` requests with 503 and `Retry-After: 1` first (a host having a bad minute).
#[derive(Clone)]
pub(crate) struct StandIn {
    kind: HostKind,
    pub requests: Arc<Mutex<Vec<Value>>>,
    /// (commit, status with an id), oldest first.
    posted: Arc<Mutex<Vec<(String, Value)>>>,
    /// Pull request comments: {id, number, body}.
    pub comments: Arc<Mutex<Vec<Value>>>,
    /// GitHub Deployments as created, with an id; and their statuses, with `deployment_id`.
    pub deployments: Arc<Mutex<Vec<Value>>>,
    pub deployment_statuses: Arc<Mutex<Vec<Value>>>,
    outage: Arc<AtomicUsize>,
}

impl StandIn {
    pub(crate) async fn start(kind: HostKind) -> (StandIn, String) {
        let host = StandIn {
            kind,
            requests: Default::default(),
            posted: Default::default(),
            comments: Default::default(),
            deployments: Default::default(),
            deployment_statuses: Default::default(),
            outage: Default::default(),
        };
        let router = axum::Router::new()
            .fallback(answer)
            .with_state(host.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        (host, url)
    }

    /// The latest status of each context (each key, on Bitbucket) on `sha`, newest first.
    pub(crate) fn latest(&self, sha: &str) -> Vec<Value> {
        let posted = self.posted.lock().unwrap();
        let mut latest: Vec<Value> = Vec::new();
        for (commit, status) in posted.iter().rev() {
            let key = |s: &Value| s.get("key").unwrap_or(&s[context_key(s)]).clone();
            if commit == sha && !latest.iter().any(|l| key(l) == key(status)) {
                latest.push(status.clone());
            }
        }
        latest
    }

    /// Each context's posted statuses, as (state, description), oldest first.
    fn by_context(&self) -> HashMap<String, Vec<(String, String)>> {
        let mut by: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for (_, s) in self.posted.lock().unwrap().iter() {
            let context = s[context_key(s)].as_str().unwrap().to_owned();
            let state = s["state"].as_str().unwrap().to_owned();
            let description = s["description"].as_str().unwrap_or_default().to_owned();
            by.entry(context).or_default().push((state, description));
        }
        by
    }
}

/// GitHub and Gitea name a status's context `context`; GitLab and Bitbucket `name`.
fn context_key(status: &Value) -> &'static str {
    if status.get("context").is_some() {
        "context"
    } else {
        "name"
    }
}

async fn answer(State(host): State<StandIn>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let body: Option<Value> = serde_json::from_slice(&bytes).ok();
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    host.requests.lock().unwrap().push(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": query,
        "body": body,
        "authorization": header("authorization").or_else(|| header("private-token")),
        "signature": header("x-fleetsync-signature"),
        "raw": String::from_utf8_lossy(&bytes),
    }));
    if host
        .outage
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")], "").into_response();
    }
    let path: Vec<&str> = parts.uri.path().split('/').collect();
    match (host.kind, parts.method.as_str(), path.as_slice()) {
        // GitHub: GET /repos/{owner}/{repo}/commits/{ref}/status, the combined status.
        (HostKind::Github, "GET", ["", "repos", _, _, "commits", sha, "status"]) => {
            axum::Json(json!({"state": "pending", "statuses": host.latest(sha)})).into_response()
        }
        // Gitea: the combined status as GitHub's, the state under `status`.
        (HostKind::Gitea, "GET", ["", "repos", _, _, "commits", sha, "status"]) => {
            let statuses: Vec<Value> = host
                .latest(sha)
                .into_iter()
                .map(|mut s| {
                    s["status"] = s["state"].take();
                    s
                })
                .collect();
            axum::Json(json!({"state": "pending", "statuses": statuses})).into_response()
        }
        // GitHub and Gitea: POST /repos/{owner}/{repo}/statuses/{sha}.
        (HostKind::Github | HostKind::Gitea, "POST", ["", "repos", _, _, "statuses", sha])
        // GitLab: POST /projects/:id/statuses/:sha.
        | (HostKind::Gitlab, "POST", ["", "projects", _, "statuses", sha])
        // Bitbucket: POST /repositories/{workspace}/{slug}/commit/{commit}/statuses/build.
        | (HostKind::Bitbucket, "POST", ["", "repositories", _, _, "commit", sha, "statuses", "build"]) => {
            let mut posted = host.posted.lock().unwrap();
            let mut status = body.unwrap_or_default();
            status["id"] = json!(posted.len() + 1);
            posted.push(((*sha).to_owned(), status.clone()));
            (StatusCode::CREATED, axum::Json(status)).into_response()
        }
        // GitLab: every status, oldest first, its state under `status`; `name` filters.
        (HostKind::Gitlab, "GET", ["", "projects", _, "repository", "commits", sha, "statuses"]) => {
            let posted = host.posted.lock().unwrap();
            let list: Vec<Value> = posted
                .iter()
                .filter(|(c, s)| c == sha && query.get("name").is_none_or(|n| s["name"] == n.as_str()))
                .map(|(_, s)| {
                    let mut s = s.clone();
                    s["status"] = s["state"].take();
                    s
                })
                .collect();
            axum::Json(list).into_response()
        }
        // Bitbucket keeps one status per key.
        (HostKind::Bitbucket, "GET", ["", "repositories", _, _, "commit", sha, "statuses", "build", key]) => {
            let key = percent_encoding::percent_decode_str(key).decode_utf8().unwrap();
            match host.latest(sha).into_iter().find(|s| s["key"] == *key) {
                Some(s) => axum::Json(s).into_response(),
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }
        (HostKind::Bitbucket, "GET", ["", "repositories", _, _, "commit", sha, "statuses"]) => {
            axum::Json(json!({"pagelen": 100, "values": host.latest(sha)})).into_response()
        }
        // Pull request comments: GitHub's and Gitea's issue comments, GitLab's notes,
        // Bitbucket's comments (its text under `content.raw`).
        (HostKind::Github | HostKind::Gitea, "GET", ["", "repos", _, _, "issues", n, "comments"])
        | (HostKind::Gitlab, "GET", ["", "projects", _, "merge_requests", n, "notes"])
        | (HostKind::Bitbucket, "GET", ["", "repositories", _, _, "pullrequests", n, "comments"]) => {
            let comments = host.comments.lock().unwrap();
            let list: Vec<Value> = comments
                .iter()
                .filter(|c| n.parse().ok() == c["number"].as_u64())
                .map(|c| match host.kind {
                    HostKind::Bitbucket => json!({"id": c["id"], "content": {"raw": c["body"]}}),
                    _ => json!({"id": c["id"], "body": c["body"]}),
                })
                .collect();
            match host.kind {
                HostKind::Bitbucket => axum::Json(json!({"values": list})).into_response(),
                _ => axum::Json(list).into_response(),
            }
        }
        (HostKind::Github | HostKind::Gitea, "POST", ["", "repos", _, _, "issues", n, "comments"])
        | (HostKind::Gitlab, "POST", ["", "projects", _, "merge_requests", n, "notes"])
        | (HostKind::Bitbucket, "POST", ["", "repositories", _, _, "pullrequests", n, "comments"]) => {
            let mut comments = host.comments.lock().unwrap();
            let id = comments.len() as u64 + 101;
            let text = comment_text(host.kind, body.as_ref());
            comments.push(json!({"id": id, "number": n.parse::<u64>().unwrap(), "body": text}));
            (StatusCode::CREATED, axum::Json(json!({"id": id}))).into_response()
        }
        (HostKind::Github | HostKind::Gitea, "PATCH", ["", "repos", _, _, "issues", "comments", id])
        | (HostKind::Gitlab, "PUT", ["", "projects", _, "merge_requests", _, "notes", id])
        | (HostKind::Bitbucket, "PUT", ["", "repositories", _, _, "pullrequests", _, "comments", id]) => {
            let mut comments = host.comments.lock().unwrap();
            let Some(comment) = comments.iter_mut().find(|c| id.parse().ok() == c["id"].as_u64()) else {
                return StatusCode::NOT_FOUND.into_response();
            };
            comment["body"] = json!(comment_text(host.kind, body.as_ref()));
            axum::Json(comment.clone()).into_response()
        }
        // GitHub Deployments.
        (HostKind::Github, "GET", ["", "repos", _, _, "deployments"]) => {
            let deployments = host.deployments.lock().unwrap();
            let list: Vec<Value> = deployments
                .iter()
                .filter(|d| query.get("environment").is_none_or(|e| d["environment"] == e.as_str()))
                .filter(|d| query.get("sha").is_none_or(|sha| d["ref"] == sha.as_str()))
                .cloned()
                .collect();
            axum::Json(list).into_response()
        }
        (HostKind::Github, "POST", ["", "repos", _, _, "deployments"]) => {
            let mut deployments = host.deployments.lock().unwrap();
            let mut deployment = body.unwrap_or_default();
            deployment["id"] = json!(deployments.len() + 501);
            deployments.push(deployment.clone());
            (StatusCode::CREATED, axum::Json(deployment)).into_response()
        }
        (HostKind::Github, "POST", ["", "repos", _, _, "deployments", id, "statuses"]) => {
            let mut status = body.unwrap_or_default();
            status["deployment_id"] = json!(id.parse::<u64>().unwrap());
            host.deployment_statuses.lock().unwrap().push(status.clone());
            (StatusCode::CREATED, axum::Json(status)).into_response()
        }
        // A notification sink's URL.
        (_, "POST", _) => (StatusCode::CREATED, axum::Json(json!({}))).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

fn comment_text(kind: HostKind, body: Option<&Value>) -> String {
    let body = body.cloned().unwrap_or_default();
    let text = match kind {
        HostKind::Bitbucket => &body["content"]["raw"],
        _ => &body["body"],
    };
    text.as_str().unwrap_or_default().to_owned()
}

struct Fleet {
    emulator: Emulator,
    repo: ConfigRepo,
    queue_url: String,
    receiver: Receiver,
    _worker: tokio_util::sync::CancellationToken,
    _dir: tempfile::TempDir,
}

async fn fleet(host_url: &str) -> Fleet {
    fleet_with(host_url, "").await
}

/// [`fleet`] with `server_extra` in the server config (its `notifications`).
async fn fleet_with(host_url: &str, server_extra: &str) -> Fleet {
    let emulator = Emulator::start().await;
    emulator.create_clusters(&["staging", "production"]).await;
    let queue_url = emulator.create_queue("fleetsync.fifo").await;
    let repo = ConfigRepo::example(&emulator);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("github-token");
    std::fs::write(&token, GITHUB_TOKEN).unwrap();
    let git_host = format!(
        "    gitHost: {{ api: {host_url}, provider: github, token: file:{} }}\n",
        token.display()
    );
    let extra = format!("api:\n  publicUrl: https://fleetsync.example.com/\n{server_extra}");
    let config =
        config_with_repo_extra(dir.path(), &repo.file_url(), &queue_url, &git_host, &extra);
    let receiver = Receiver::start(&config, &emulator.aws).await;
    let worker = start_worker(&config, &emulator.aws);
    Fleet {
        emulator,
        repo,
        queue_url,
        receiver,
        _worker: worker,
        _dir: dir,
    }
}

/// Every context of `commit` has reached an end on the host.
async fn all_ended(host: &StandIn, contexts: &[String]) -> HashMap<String, Vec<(String, String)>> {
    eventually(Duration::from_secs(90), "every status to end", || async {
        let by = host.by_context();
        contexts
            .iter()
            .all(|c| {
                by.get(c)
                    .and_then(|s| s.last())
                    .is_some_and(|(state, _)| state != "pending")
            })
            .then_some(by)
    })
    .await
}

/// What fleetsync sent GitHub, checked against GitHub's OpenAPI description.
pub(crate) fn assert_github_contract(host: &StandIn) {
    let root = env!("CARGO_MANIFEST_DIR");
    let requests: String = host
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| format!("{r}\n"))
        .collect();
    let mut check = std::process::Command::new(format!("{root}/.venv/bin/python"))
        .arg(format!("{root}/scripts/github-contract.py"))
        .arg(format!("{root}/.venv/github-openapi-23.0.2.json"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("scripts/test.sh installs the checker and GitHub's description");
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), requests.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_shows_on_its_commit_queued_rolling_out_then_deployed_through_an_outage() {
    let (host, url) = StandIn::start(HostKind::Github).await;
    let (sink, sink_url) = StandIn::start(HostKind::Gitea).await;
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "shh").unwrap();
    let notifications = format!(
        "notifications:\n  - webhook: {{ url: {sink_url}/hook, secret: file:{} }}\n    on: [deployed]\n",
        secret.path().display()
    );
    let f = fleet_with(&url, &notifications).await;
    // The host's bad minute starts with the push: statuses wait it out, none is lost.
    host.outage.store(4, Ordering::SeqCst);
    let head = f.repo.head("staging");
    let (status, body) = f.receiver.push("staging", head, "statuses").await;
    assert_eq!(status, 202, "{body}");
    let contexts: Vec<String> = APPS
        .iter()
        .map(|a| format!("fleetsync/staging/{a}"))
        .collect();
    let by = all_ended(&host, &contexts).await;

    let api = &by["fleetsync/staging/api"];
    assert_eq!(
        api,
        &[
            ("pending".to_owned(), "queued".to_owned()),
            ("pending".to_owned(), "rolling out staging-api:1".to_owned()),
            ("success".to_owned(), "deployed staging-api:1".to_owned()),
        ]
    );
    for context in &contexts {
        let states = &by[context];
        assert_eq!(states[0], ("pending".into(), "queued".into()), "{context}");
        assert_eq!(states.last().unwrap().0, "success", "{context}: {states:?}");
        // Posted once each: a state the host shows is not posted again.
        assert!(
            states.windows(2).all(|w| w[0] != w[1]),
            "{context}: {states:?}"
        );
    }
    // The push fanned out to four apps: the environment's roll-up ends once all four have.
    let rollup = eventually(Duration::from_secs(30), "the roll-up's end", || async {
        let states = host.by_context().remove("fleetsync/staging")?;
        (states.last()?.0 != "pending").then_some(states)
    })
    .await;
    assert_eq!(
        rollup,
        [
            ("pending".to_owned(), "queued 4 apps".to_owned()),
            ("success".to_owned(), "4 apps deployed".to_owned()),
        ]
    );
    // Sinks hear of the push once, in a digest, not once per app.
    let digest = eventually(Duration::from_secs(30), "the digest", || async {
        let requests = sink.requests.lock().unwrap();
        requests
            .iter()
            .find(|r| r["method"] == "POST")
            .map(|r| r["body"].clone())
    })
    .await;
    assert_eq!(
        (&digest["event"], &digest["environment"], &digest["app"]),
        (&json!("deployed"), &json!("staging"), &Value::Null)
    );
    assert_eq!(
        (&digest["code"], &digest["summary"]),
        (&json!("PushDeployed"), &json!("4 apps deployed"))
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let told = sink
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r["method"] == "POST")
        .count();
    assert_eq!(told, 1);
    let posted = host.posted.lock().unwrap().clone();
    assert!(posted.iter().all(|(commit, _)| *commit == head.to_string()));
    let api_status = posted
        .iter()
        .find(|(_, s)| s["context"] == "fleetsync/staging/api")
        .unwrap();
    assert_eq!(
        api_status.1["target_url"],
        "https://fleetsync.example.com/api/v1/environments/staging/apps/api?repo=platform"
    );
    let requests = host.requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .all(|r| r["authorization"] == format!("Bearer {GITHUB_TOKEN}")),
        "{requests:?}"
    );
    assert_github_contract(&host);
    // Deploys were not held up by the host: the queue holds nothing more.
    assert_eq!(f.emulator.queue_depth(&f.queue_url).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_rollout_fails_its_commit_and_a_broken_config_fails_its_environment() {
    let (host, url) = StandIn::start(HostKind::Github).await;
    let f = fleet(&url).await;
    let head = f.repo.head("staging");
    assert_eq!(f.receiver.push("staging", head, "first").await.0, 202);
    let contexts: Vec<String> = APPS
        .iter()
        .map(|a| format!("fleetsync/staging/{a}"))
        .collect();
    all_ended(&host, &contexts).await;

    // An image that never starts, without ECS's own rollback: fleetsync rolls back. The
    // push deploys accounts too, which succeeds: the roll-up fails, naming api.
    f.repo.commit("staging", "apps/accounts/app.yaml", |t| {
        Some(t.unwrap().replace("accounts:2.3.0", "accounts:2.3.1"))
    });
    f.repo.commit("staging", "apps/api/app.yaml", |t| {
        Some(t.unwrap().replace("rollback: true", "rollback: false"))
    });
    let broken = f.repo.commit_api_image("staging", "broken");
    // As a host reports it: the push moved the branch from `head`.
    let pushed = f
        .receiver
        .push_from("staging", Some(head), broken, "broken");
    assert_eq!(pushed.await.0, 202);
    let on_broken = |host: &StandIn| -> Vec<(String, String)> {
        host.posted
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, s)| *c == broken.to_string() && s["context"] == "fleetsync/staging/api")
            .map(|(_, s)| {
                let text = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
                (text("state"), text("description"))
            })
            .collect()
    };
    let states = eventually(Duration::from_secs(90), "api's failure", || async {
        let states = on_broken(&host);
        states
            .last()
            .filter(|(s, _)| s == "failure")
            .map(|_| states.clone())
    })
    .await;
    assert_eq!(states[0], ("pending".into(), "queued".into()));
    assert_eq!(states[1].1, "rolling out staging-api:2");
    assert!(states[2].1.starts_with("rolled back: "), "{states:?}");
    assert!(states[2].1.chars().count() <= 140, "{states:?}");
    assert!(!states.iter().any(|(s, _)| s == "success"), "{states:?}");
    let rollup = eventually(Duration::from_secs(60), "the roll-up's failure", || async {
        let posted = host.posted.lock().unwrap();
        posted
            .iter()
            .find(|(c, s)| {
                *c == broken.to_string()
                    && s["context"] == "fleetsync/staging"
                    && s["state"] != "pending"
            })
            .map(|(_, s)| s.clone())
    })
    .await;
    assert_eq!(
        (&rollup["state"], &rollup["description"]),
        (&json!("failure"), &json!("1 of 2 apps failed: api"))
    );
    assert_eq!(
        rollup["target_url"],
        "https://fleetsync.example.com/api/v1/environments/staging/apps?repo=platform"
    );

    // A root that does not parse: the commit fails on its environment's context, with where.
    let bad = f.repo.commit("staging", "fleetsync.yaml", |t| {
        Some(format!("{}\n  - [unclosed\n", t.unwrap()))
    });
    // Answered 200 `invalid`: a redelivery would not make it resolve.
    assert_eq!(f.receiver.push("staging", bad, "bad").await.0, 200);
    let failure = eventually(
        Duration::from_secs(60),
        "the environment's failure",
        || async {
            host.posted
                .lock()
                .unwrap()
                .iter()
                .find(|(c, s)| *c == bad.to_string() && s["context"] == "fleetsync/staging")
                .map(|(_, s)| s.clone())
        },
    )
    .await;
    assert_eq!(failure["state"], "failure");
    let description = failure["description"].as_str().unwrap();
    assert!(
        description.starts_with("does not resolve: fleetsync.yaml:"),
        "{description}"
    );
    assert_github_contract(&host);
}

/// GitLab, Gitea/Forgejo and Bitbucket Cloud each get the status in their own words: their
/// paths, state names, authentication, and Bitbucket's 40-character key and required link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_host_gets_the_status_in_its_own_words() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken").unwrap();
    for (kind, provider) in [
        (HostKind::Gitlab, "gitlab"),
        (HostKind::Gitea, "gitea"),
        (HostKind::Bitbucket, "bitbucket"),
    ] {
        let (host, url) = StandIn::start(kind).await;
        let git_host = format!(
            "    gitHost: {{ api: {url}, provider: {provider}, token: file:{} }}\n",
            token.display()
        );
        let config = config_with_repo_extra(
            dir.path(),
            "file:///nowhere",
            "https://sqs.invalid/q",
            &git_host,
            "",
        );
        let hosts = Hosts::from_config(&config).unwrap();
        let context = "fleetsync/production-eu-west-1/payments-reconciliation".to_owned();
        let mut job = StatusJob::new(
            "platform",
            "0123abc",
            context.clone(),
            StatusState::RollingOut,
        );
        job.description = "rolling out production-payments:7".into();
        assert_eq!(hosts.post(&job).await.unwrap().0, Posted::Posted);
        let requests = host.requests.lock().unwrap().clone();
        let post = requests.iter().find(|r| r["method"] == "POST").unwrap();
        let (path, body, auth) = (&post["path"], &post["body"], &post["authorization"]);
        match kind {
            HostKind::Gitlab => {
                assert_eq!(path, "/projects/acme%2Fplatform-config/statuses/0123abc");
                assert_eq!(
                    (&body["state"], &body["name"]),
                    (&json!("running"), &json!(context))
                );
                assert_eq!(auth, "t0ken");
            }
            HostKind::Gitea => {
                assert_eq!(path, "/repos/acme/platform-config/statuses/0123abc");
                assert_eq!(
                    (&body["state"], &body["context"]),
                    (&json!("pending"), &json!(context))
                );
                assert_eq!(auth, "token t0ken");
            }
            HostKind::Bitbucket => {
                assert_eq!(
                    path,
                    "/repositories/acme/platform-config/commit/0123abc/statuses/build"
                );
                assert_eq!(body["state"], "INPROGRESS");
                assert!(body["key"].as_str().unwrap().len() <= 40, "{body}");
                assert_eq!(body["name"], json!(context));
                assert_eq!(body["url"], REPO_URL);
                assert_eq!(auth, "Bearer t0ken");
            }
            HostKind::Github => unreachable!(),
        }

        // Two apps of one push end: the second's end also ends the environment's roll-up,
        // each read back from the host in its own words.
        let rollup = Rollup {
            context: "fleetsync/production-eu-west-1".into(),
            apps: 2,
            target_url: None,
        };
        let end = |context: &str, state| {
            let mut job = StatusJob::new("platform", "0123abc", context.to_owned(), state);
            job.description = format!("{state:?}");
            job.rollup = Some(rollup.clone());
            job
        };
        let paid = end(&context, StatusState::Success);
        assert_eq!(hosts.post(&paid).await.unwrap(), (Posted::Posted, None));
        assert_eq!(host.by_context().get(&rollup.context), None);
        let ledger = end(
            "fleetsync/production-eu-west-1/ledger",
            StatusState::Failure,
        );
        let (posted, ended) = hosts.post(&ledger).await.unwrap();
        assert_eq!(posted, Posted::Posted);
        assert_eq!(
            ended.map(|r| r.description).as_deref(),
            Some("1 of 2 apps failed: ledger")
        );
        // An end the host shows already is not posted again.
        assert_eq!(hosts.post(&ledger).await.unwrap(), (Posted::Behind, None));
        let failed = match kind {
            HostKind::Gitlab => "failed",
            HostKind::Gitea => "failure",
            _ => "FAILED",
        };
        assert_eq!(
            host.by_context()[&rollup.context],
            [(failed.to_owned(), "1 of 2 apps failed: ledger".to_owned())],
            "{kind:?}"
        );

        // A preview's comment: written once, then edited in place.
        let change = PreviewChange::Enqueued {
            apps: vec!["payments".into()],
            removed: Vec::new(),
        };
        hosts
            .comment(&CommentJob::new("platform", 12, "0123abc", change))
            .await
            .unwrap();
        let change = PreviewChange::App {
            app: "payments".into(),
            state: StatusState::Success,
            description: "deployed production-payments-pr-12:1".into(),
            environment: "production".into(),
            url: None,
        };
        hosts
            .comment(&CommentJob::new("platform", 12, "0123abc", change))
            .await
            .unwrap();
        let comments = host.comments.lock().unwrap().clone();
        assert_eq!(comments.len(), 1, "{kind:?}: {comments:?}");
        let body = comments[0]["body"].as_str().unwrap();
        assert!(
            body.contains("| `payments` | ✅ deployed: deployed production-payments-pr-12:1 |"),
            "{kind:?}: {body}"
        );
        let writes: Vec<(String, String)> = host
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r["method"] != "GET")
            .filter(|r| {
                let path = r["path"].as_str().unwrap();
                path.contains("/comments") || path.contains("/notes")
            })
            .map(|r| {
                (
                    r["method"].as_str().unwrap().to_owned(),
                    r["path"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let (create, edit) = match kind {
            HostKind::Gitlab => (
                "/projects/acme%2Fplatform-config/merge_requests/12/notes",
                (
                    "PUT",
                    "/projects/acme%2Fplatform-config/merge_requests/12/notes/101",
                ),
            ),
            HostKind::Gitea => (
                "/repos/acme/platform-config/issues/12/comments",
                ("PATCH", "/repos/acme/platform-config/issues/comments/101"),
            ),
            _ => (
                "/repositories/acme/platform-config/pullrequests/12/comments",
                (
                    "PUT",
                    "/repositories/acme/platform-config/pullrequests/12/comments/101",
                ),
            ),
        };
        assert_eq!(
            writes,
            [
                ("POST".to_owned(), create.to_owned()),
                (edit.0.to_owned(), edit.1.to_owned())
            ],
            "{kind:?}"
        );
    }
}

/// A Slack incoming webhook, a generic webhook and an SNS topic (read back from an SQS queue
/// subscribed to it on the emulator, as AWS delivers it): each told once per transition, by
/// the events and environments it asked for, the generic one's body signed with its secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_tell_each_sink_once_per_transition_and_repeats_stay_quiet() {
    let (slack, slack_url) = StandIn::start(HostKind::Gitea).await;
    let (hook, hook_url) = StandIn::start(HostKind::Gitea).await;
    let emulator = Emulator::start().await;
    emulator.create_clusters(&["staging", "production"]).await;
    let queue_url = emulator.create_queue("fleetsync.fifo").await;
    let sns = aws_sdk_sns::Client::new(&emulator.aws);
    let topic = sns.create_topic().name("fleetsync").send().await.unwrap();
    let topic_arn = topic.topic_arn().unwrap().to_owned();
    let inbox = emulator
        .sqs()
        .create_queue()
        .queue_name("inbox")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    sns.subscribe()
        .topic_arn(&topic_arn)
        .protocol("sqs")
        .endpoint("arn:aws:sqs:us-east-1:123456789012:inbox")
        .attributes("RawMessageDelivery", "true")
        .send()
        .await
        .unwrap();

    let repo = ConfigRepo::example(&emulator);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let slack_secret = write("slack-url", &format!("{slack_url}/services/T0/B0/x"));
    let hook_secret = write("hook-secret", "shh-notify");
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest("notify-token"));
    // Inside the harness's `worker:`: a failure left alone is told again after 10 s, 20 s, …
    let extra = format!(
        "  remindFailuresAfter: 10s\napi:\n  tokens:\n    - {{ name: ops, sha256: {digest}, scopes: [admin] }}\nnotifications:\n  - slack: {{ webhookUrl: file:{slack_secret} }}\n    on: [failed, rolledBack, refused]\n    environments: [staging]\n  - webhook: {{ url: {hook_url}/hook, secret: file:{hook_secret} }}\n    on: [any]\n  - sns: {{ topicArn: {topic_arn} }}\n    on: [refused, rolledBack]\n"
    );
    let config = config(dir.path(), &repo.file_url(), &queue_url, &extra);
    let receiver = Receiver::start(&config, &emulator.aws).await;
    let _worker = start_worker(&config, &emulator.aws);

    let posts = |host: &StandIn| -> Vec<Value> {
        let requests = host.requests.lock().unwrap();
        requests
            .iter()
            .filter(|r| r["method"] == "POST")
            .cloned()
            .collect()
    };
    let head = repo.head("staging");
    assert_eq!(receiver.push("staging", head, "first").await.0, 202);
    eventually(Duration::from_secs(60), "four deploys told", || async {
        (posts(&hook).len() == APPS.len()).then_some(())
    })
    .await;
    let deployed = posts(&hook);
    assert!(
        deployed.iter().all(|p| p["body"]["event"] == "deployed"),
        "{deployed:?}"
    );
    assert!(posts(&slack).is_empty(), "Slack asked only for failures");

    // An app whose secret is gone: refused before ECS, and again when synced through the API.
    emulator.delete_secret("staging/api/stripe-api-key").await;
    let refused = repo.commit_api_image("staging", "1.6.0");
    assert_eq!(receiver.push("staging", refused, "refused").await.0, 202);
    let slack_refused = eventually(Duration::from_secs(60), "Slack told", || async {
        posts(&slack).first().cloned()
    })
    .await;
    let first_told = std::time::Instant::now();
    let text = slack_refused["body"]["text"].as_str().unwrap();
    assert!(
        text.starts_with(&format!(
            "staging/api refused at {}: PreflightRefused",
            &refused.to_string()[..7]
        )),
        "{text}"
    );
    let sync_again = || async {
        let again = reqwest::Client::new()
            .post(format!("{}/api/v1/sync", receiver.url))
            .bearer_auth("notify-token")
            .body(r#"{"repo": "platform", "environment": "staging", "app": "api", "reason": "again"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 202);
    };
    sync_again().await;
    // The second refusal ends (its failure marked again) without a second message.
    eventually(Duration::from_secs(60), "the second refusal", || async {
        (emulator.queue_depth(&queue_url).await == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(posts(&slack).len(), 1, "{:?}", posts(&slack));
    let refusals: Vec<Value> = posts(&hook)
        .into_iter()
        .filter(|p| p["body"]["event"] == "refused")
        .collect();
    assert_eq!(refusals.len(), 1, "{refusals:?}");

    // The generic webhook's body is signed with its secret, as its receiver checks it.
    let signed = hook.requests.lock().unwrap().clone();
    let last = signed.iter().rev().find(|r| r["method"] == "POST").unwrap();
    assert_eq!(last["body"]["code"], "PreflightRefused");
    let expected = sign(b"shh-notify", last["raw"].as_str().unwrap().as_bytes());
    assert_eq!(last["signature"], expected);

    // SNS: only what it asked for, once.
    let messages = emulator
        .sqs()
        .receive_message()
        .queue_url(&inbox)
        .max_number_of_messages(10)
        .wait_time_seconds(2)
        .send()
        .await
        .unwrap();
    let bodies: Vec<Value> = messages
        .messages()
        .iter()
        .map(|m| serde_json::from_str(m.body().unwrap()).unwrap())
        .collect();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(
        (&bodies[0]["event"], &bodies[0]["app"], &bodies[0]["commit"]),
        (
            &json!("refused"),
            &json!("api"),
            &json!(refused.to_string())
        )
    );

    // Left alone past the reminder's spacing, the refusal is told again, saying so; the next
    // time within the doubled spacing is quiet again.
    tokio::time::sleep(Duration::from_secs(11).saturating_sub(first_told.elapsed())).await;
    sync_again().await;
    let reminder = eventually(Duration::from_secs(60), "the reminder", || async {
        posts(&slack).get(1).cloned()
    })
    .await;
    let text = reminder["body"]["text"].as_str().unwrap();
    assert!(
        text.contains("still failing (told 1×): PreflightRefused"),
        "{text}"
    );
    sync_again().await;
    eventually(Duration::from_secs(60), "the third refusal", || async {
        (emulator.queue_depth(&queue_url).await == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(posts(&slack).len(), 2, "{:?}", posts(&slack));
}
