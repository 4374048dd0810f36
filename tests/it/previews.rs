//! Pull-request previews end to end: real PR payloads (tests/fixtures) re-pointed at a local
//! repo, signed and delivered over HTTP to the receiver; the worker applies them to the
//! emulator's ECS. The registry of active and waiting previews lives on the preview cluster's
//! tags (ECS TagResource/DescribeClusters, which moto models).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

const CLUSTERS: &[&str] = &["staging", "production", "previews"];
const LIMIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "fs_test_previews_7e21";

struct Setup {
    emulator: Emulator,
    repo: ConfigRepo,
    queue_url: String,
    config: fleetsync::config::Config,
    receiver: Receiver,
    _dir: tempfile::TempDir,
}

/// example-repo with `previews:` (plus `extra` keys) on main, and a receiver watching it.
async fn setup(extra: &str) -> Setup {
    setup_with(extra, ("", "")).await
}

/// [`setup`] with `repo_extra` keys on the watched repo (a `gitHost`) and `server_extra` in
/// the server config.
async fn setup_with(extra: &str, (repo_extra, server_extra): (&str, &str)) -> Setup {
    let emulator = Emulator::start().await;
    let queue_url = emulator.create_queue("fleetsync.fifo").await;
    emulator.create_clusters(CLUSTERS).await;
    let repo = ConfigRepo::example(&emulator);
    let previews = format!("previews:\n  from: staging\n  cluster: previews\n{extra}");
    repo.commit("main", "fleetsync.yaml", |t| {
        Some(format!("{}{previews}", t.unwrap()))
    });
    let dir = tempfile::tempdir().unwrap();
    let digests = dir.path().join("api-token-hashes");
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(TOKEN));
    std::fs::write(&digests, digest).unwrap();
    let api = format!(
        "api:\n  tokenHashes: file:{}\n  publicUrl: https://fleetsync.example.com\n{server_extra}",
        digests.display()
    );
    let config = config_with_repo_extra(dir.path(), &repo.file_url(), &queue_url, repo_extra, &api);
    let receiver = Receiver::start(&config, &emulator.aws).await;
    Setup {
        emulator,
        repo,
        queue_url,
        config,
        receiver,
        _dir: dir,
    }
}

fn fixture(path: &str) -> Value {
    let file = format!(
        "{}/tests/fixtures/webhooks/{path}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap()
}

impl Setup {
    /// A PR branch `pr-<n>` off staging with api at `image`, published as GitHub publishes a
    /// PR's head: `refs/pull/<n>/head`.
    fn open_branch(&self, number: u64, image: &str) -> git2::Oid {
        let branch = format!("pr-{number}");
        let staging = self.repo.head("staging");
        self.repo
            .repo
            .reference(&format!("refs/heads/{branch}"), staging, true, "pr")
            .unwrap();
        self.push_to_branch(number, image)
    }

    /// A new commit on the PR's branch with api at `image`.
    fn push_to_branch(&self, number: u64, image: &str) -> git2::Oid {
        let branch = format!("pr-{number}");
        let head = self.repo.commit(&branch, "apps/api/taskdef.json", |t| {
            let t = t.unwrap();
            let current = t.split("api:").nth(1).unwrap().split('"').next().unwrap();
            Some(t.replace(&format!("api:{current}"), &format!("api:{image}")))
        });
        self.publish(number, head);
        head
    }

    fn publish(&self, number: u64, head: git2::Oid) {
        for reference in [
            format!("refs/pull/{number}/head"),
            format!("refs/merge-requests/{number}/head"),
            format!("refs/pull-requests/{number}/from"),
        ] {
            self.repo
                .repo
                .reference(&reference, head, true, "pr")
                .unwrap();
        }
    }

    /// GitHub's `pull_request` payload for `action`, re-pointed at PR `number` of our repo.
    fn github_payload(&self, action: &str, number: u64, head: git2::Oid) -> Value {
        let name = match action {
            "opened" | "reopened" | "ready_for_review" => "opened",
            "closed" => "closed",
            "labeled" | "unlabeled" => "labeled",
            _ => "synchronize",
        };
        let mut payload = fixture(&format!("github/pull_request-{name}.payload.json"));
        payload["action"] = action.into();
        payload["number"] = number.into();
        let pr = &mut payload["pull_request"];
        pr["number"] = number.into();
        pr["draft"] = false.into();
        pr["labels"] = json!([]);
        pr["head"]["sha"] = head.to_string().into();
        pr["head"]["ref"] = format!("pr-{number}").into();
        pr["base"]["ref"] = "staging".into();
        let repository = json!({"id": 1001, "full_name": "acme/platform-config", "clone_url": format!("{REPO_URL}.git"), "html_url": REPO_URL});
        pr["head"]["repo"] = repository.clone();
        pr["base"]["repo"] = repository.clone();
        payload["repository"] = repository;
        payload
    }

    async fn deliver_github(&self, payload: &Value, delivery: &str) -> (u16, Value) {
        let body = serde_json::to_vec(payload).unwrap();
        let signature = sign(SECRET.as_bytes(), &body);
        let headers = [
            ("content-type", "application/json"),
            ("x-github-event", "pull_request"),
            ("x-github-delivery", delivery),
            ("x-hub-signature-256", signature.as_str()),
        ];
        self.receiver.post("github", &headers, &body).await
    }

    async fn github(&self, action: &str, number: u64, head: git2::Oid) -> (u16, Value) {
        let payload = self.github_payload(action, number, head);
        let delivery = format!("{action}-{number}-{head}");
        self.deliver_github(&payload, &delivery).await
    }

    async fn drained(&self) {
        eventually(LIMIT, "the queue to drain", || async {
            (self.emulator.queue_depth(&self.queue_url).await == 0).then_some(())
        })
        .await;
    }

    /// An ACTIVE service of `cluster`, with its desired count, image and tags.
    async fn active(&self, cluster: &str, service: &str) -> Option<Running> {
        let out = self
            .emulator
            .ecs()
            .describe_services()
            .cluster(cluster)
            .services(service)
            .include(aws_sdk_ecs::types::ServiceField::Tags)
            .send()
            .await
            .unwrap();
        let s = out.services().first()?;
        if s.status() != Some("ACTIVE") {
            return None;
        }
        let td = self
            .emulator
            .ecs()
            .describe_task_definition()
            .task_definition(s.task_definition().unwrap())
            .send()
            .await
            .unwrap();
        let td = td.task_definition().unwrap();
        Some(Running {
            desired: s.desired_count(),
            family: td.family().unwrap().to_owned(),
            images: td
                .container_definitions()
                .iter()
                .filter_map(|c| c.image().map(str::to_owned))
                .collect(),
            tags: s
                .tags()
                .iter()
                .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
                .collect(),
            load_balancers: s.load_balancers().len(),
        })
    }

    /// Waits until every app of the example runs in the preview of PR `number` at `commit`.
    async fn preview_live_at(&self, number: u64, commit: git2::Oid) -> HashMap<String, Running> {
        let mut live = HashMap::new();
        for app in APPS {
            let service = format!("{app}-pr-{number}");
            let running = eventually(LIMIT, &format!("{service} at {commit}"), || async {
                self.active("previews", &service)
                    .await
                    .filter(|r| r.tags.get("fleetsync:revision") == Some(&commit.to_string()))
            })
            .await;
            live.insert(app.to_owned(), running);
        }
        live
    }

    /// Waits until nothing of PR `number`'s preview is left: no ACTIVE service, no ACTIVE
    /// task definition.
    async fn preview_gone(&self, number: u64) {
        for app in APPS {
            let service = format!("{app}-pr-{number}");
            eventually(LIMIT, &format!("{service} to be deleted"), || async {
                self.active("previews", &service)
                    .await
                    .is_none()
                    .then_some(())
            })
            .await;
            let family = format!("staging-{app}-pr-{number}");
            eventually(LIMIT, &format!("{family} to be deregistered"), || async {
                self.active_revisions(&family)
                    .await
                    .is_empty()
                    .then_some(())
            })
            .await;
        }
    }

    async fn active_revisions(&self, family: &str) -> Vec<String> {
        let out = self
            .emulator
            .ecs()
            .list_task_definitions()
            .family_prefix(family)
            .status(aws_sdk_ecs::types::TaskDefinitionStatus::Active)
            .send()
            .await
            .unwrap();
        out.task_definition_arns()
            .iter()
            .map(|a| fleetsync::ecs::task_definition_id(a).to_owned())
            .filter(|id| id.rsplit_once(':').is_some_and(|(f, _)| f == family))
            .collect()
    }

    async fn services_of(&self, cluster: &str) -> Vec<String> {
        let out = self
            .emulator
            .ecs()
            .list_services()
            .cluster(cluster)
            .send()
            .await
            .unwrap();
        out.service_arns()
            .iter()
            .map(|a| a.rsplit('/').next().unwrap().to_owned())
            .collect()
    }

    async fn previews_api(&self) -> Value {
        let (status, body) = self.receiver.get("/api/v1/previews", TOKEN).await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

#[derive(Debug)]
struct Running {
    desired: i32,
    family: String,
    images: Vec<String>,
    tags: HashMap<String, String>,
    load_balancers: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_runs_as_a_confined_preview_follows_its_pushes_and_is_gone_once_closed() {
    let s = setup("").await;
    let _worker = start_worker(&s.config, &s.emulator.aws);
    let head = s.open_branch(7, "1.5.0");

    let (status, body) = s.github("opened", 7, head).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "enqueued", "{body}");
    assert_eq!(body["preview"], "pr-7");
    assert_eq!(job_apps(&body).len(), APPS.len(), "{body}");

    let live = s.preview_live_at(7, head).await;
    let api = &live["api"];
    assert_eq!(api.images, ["public.ecr.aws/acme/api:1.5.0"]);
    assert_eq!(api.family, "staging-api-pr-7");
    // api asks for 2 tasks; previews cap every app at `desiredCount` (1 by default).
    assert_eq!(api.desired, 1);
    assert_eq!(api.load_balancers, 0);
    for (key, value) in [
        ("fleetsync:preview", "7"),
        ("fleetsync:environment", "staging"),
        ("fleetsync:root", "platform"),
        ("fleetsync:app", "api"),
    ] {
        assert_eq!(api.tags.get(key).map(String::as_str), Some(value), "{key}");
    }
    // Only the preview cluster was touched.
    assert!(s.services_of("staging").await.is_empty());
    assert!(s.services_of("production").await.is_empty());

    let listed = s.previews_api().await;
    let preview = &listed["previews"][0];
    assert_eq!(preview["preview"], "pr-7", "{listed}");
    assert_eq!(preview["state"], "active");
    assert_eq!(preview["head"], head.to_string());
    assert_eq!(preview["apps"].as_array().unwrap().len(), APPS.len());
    assert!(preview["expiresInSeconds"].as_u64().unwrap() > 71 * 3600);

    // A push to the PR: the preview follows its head.
    let next = s.push_to_branch(7, "1.6.0");
    let (status, body) = s.github("synchronize", 7, next).await;
    assert_eq!(
        (status, &body["status"]),
        (202, &json!("enqueued")),
        "{body}"
    );
    // Only api changed: the other apps' specs are the same, and their services untouched.
    let api = eventually(LIMIT, "api-pr-7 at the new head", || async {
        s.active("previews", "api-pr-7")
            .await
            .filter(|r| r.tags.get("fleetsync:revision") == Some(&next.to_string()))
    })
    .await;
    assert_eq!(api.images, ["public.ecr.aws/acme/api:1.6.0"]);
    s.drained().await;
    let web = s.active("previews", "web-pr-7").await.unwrap();
    assert_eq!(web.tags["fleetsync:revision"], head.to_string());

    let (status, body) = s.github("closed", 7, next).await;
    assert_eq!(
        (status, &body["status"]),
        (202, &json!("tearing-down")),
        "{body}"
    );
    s.preview_gone(7).await;
    s.drained().await;
    assert!(
        s.previews_api().await["previews"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A close delivered again finds nothing to do, and fails nothing.
    let (status, body) = s
        .deliver_github(&s.github_payload("closed", 7, next), "closed-again")
        .await;
    assert!(status == 202 || status == 200, "{status} {body}");
    s.drained().await;
    s.preview_gone(7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pr_that_binds_staging_to_production_reaches_no_cluster_but_the_previews() {
    let s = setup("").await;
    let _worker = start_worker(&s.config, &s.emulator.aws);
    s.open_branch(8, "1.5.0");
    let head = s.repo.commit("pr-8", "fleetsync.yaml", |t| {
        Some(t.unwrap().replace(
            "staging:    { branch: staging, cluster: staging }",
            "staging:    { branch: staging, cluster: production }",
        ))
    });
    s.publish(8, head);
    let (status, body) = s.github("opened", 8, head).await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("invalid")),
        "{body}"
    );
    assert!(
        body["problems"][0].as_str().unwrap().contains(
            "bound to branch `staging` and cluster `staging` by the root on the default branch"
        ),
        "{body}"
    );
    s.drained().await;
    for cluster in CLUSTERS {
        assert!(s.services_of(cluster).await.is_empty(), "{cluster}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drafts_forks_and_missing_labels_deploy_nothing_and_say_why() {
    let s = setup("  allowForks: true\n  label: preview\n").await;
    let head = s.open_branch(9, "1.5.0");

    let mut draft = s.github_payload("opened", 9, head);
    draft["pull_request"]["draft"] = true.into();
    draft["pull_request"]["labels"] = json!([{"name": "preview"}]);
    let (status, body) = s.deliver_github(&draft, "draft").await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("skipped")),
        "{body}"
    );
    assert!(body["reason"].as_str().unwrap().contains("draft"), "{body}");

    let (status, body) = s.github("opened", 9, head).await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("skipped")),
        "{body}"
    );
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("does not carry the label `preview`"),
        "{body}"
    );

    // A fork: its head repository is another one (by id), whatever the branch is called.
    let fork = |action: &str, head: git2::Oid| {
        let mut payload = s.github_payload(action, 9, head);
        payload["pull_request"]["head"]["repo"] =
            json!({"id": 2002, "full_name": "mallory/platform-config"});
        payload["pull_request"]["labels"] = json!([{"name": "preview"}]);
        payload["label"] = json!({"name": "preview"});
        payload
    };
    let (status, body) = s
        .deliver_github(&fork("synchronize", head), "fork-push")
        .await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("skipped")),
        "{body}"
    );
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("comes from a fork"),
        "{body}"
    );
    assert_eq!(s.emulator.queue_depth(&s.queue_url).await, 0);

    // Labelling approves the head it was given on.
    let (status, body) = s.deliver_github(&fork("labeled", head), "fork-label").await;
    assert_eq!(
        (status, &body["status"]),
        (202, &json!("enqueued")),
        "{body}"
    );
    assert_eq!(body["commit"], head.to_string());

    // A push after the label is not approved by it.
    let pushed = s.push_to_branch(9, "1.6.0");
    let (status, body) = s
        .deliver_github(&fork("synchronize", pushed), "fork-push-2")
        .await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("skipped")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_deploy_nothing_unless_previews_allow_them() {
    let s = setup("").await;
    let head = s.open_branch(10, "1.5.0");
    let mut payload = s.github_payload("opened", 10, head);
    payload["pull_request"]["head"]["repo"] = Value::Null; // the fork was deleted since
    let (status, body) = s.deliver_github(&payload, "fork").await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("skipped")),
        "{body}"
    );
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("`previews.allowForks` is false"),
        "{body}"
    );
    assert_eq!(s.emulator.queue_depth(&s.queue_url).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_active_a_pr_waits_and_deploys_once_another_is_closed() {
    let s = setup("  maxActive: 1\n").await;
    let _worker = start_worker(&s.config, &s.emulator.aws);
    let first = s.open_branch(11, "1.5.0");
    let second = s.open_branch(12, "1.6.0");

    let (status, body) = s.github("opened", 11, first).await;
    assert_eq!(
        (status, &body["status"]),
        (202, &json!("enqueued")),
        "{body}"
    );
    let (status, body) = s.github("opened", 12, second).await;
    assert_eq!(
        (status, &body["status"]),
        (202, &json!("waiting")),
        "{body}"
    );
    s.preview_live_at(11, first).await;
    s.drained().await;
    assert!(s.active("previews", "api-pr-12").await.is_none());
    let listed = s.previews_api().await;
    let states: Vec<(&str, &str)> = listed["previews"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["preview"].as_str().unwrap(), p["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("pr-11", "active"), ("pr-12", "waiting")]);

    let (status, body) = s.github("closed", 11, first).await;
    assert_eq!(status, 202, "{body}");
    s.preview_gone(11).await;
    let live = s.preview_live_at(12, second).await;
    assert_eq!(live["api"].images, ["public.ecr.aws/acme/api:1.6.0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_tears_down_a_preview_whose_close_never_came() {
    let s = setup("  ttl: 1h\n").await;
    let _worker = start_worker(&s.config, &s.emulator.aws);
    let head = s.open_branch(13, "1.5.0");
    assert_eq!(s.github("opened", 13, head).await.0, 202);
    s.preview_live_at(13, head).await;
    s.drained().await;

    let dispatcher =
        fleetsync::dispatch::Dispatcher::from_config(&s.config, &s.emulator.aws).unwrap();
    let swept = dispatcher
        .sweep_previews(&dispatcher.repos[0])
        .await
        .unwrap();
    assert!(swept.torn_down.is_empty(), "pushed moments ago: {swept:?}");

    // Two hours without a push: the registry says when the PR was last pushed to.
    let cluster = s
        .emulator
        .ecs()
        .describe_clusters()
        .clusters("previews")
        .include(aws_sdk_ecs::types::ClusterField::Tags)
        .send()
        .await
        .unwrap();
    let cluster = cluster.clusters().first().unwrap();
    let entry = cluster
        .tags()
        .iter()
        .find(|t| t.key() == Some("fleetsync:pr:platform:13"))
        .unwrap();
    let mut parts: Vec<String> = entry
        .value()
        .unwrap()
        .split(' ')
        .map(str::to_owned)
        .collect();
    let two_hours_ago = parts[2].parse::<u64>().unwrap() - 7200;
    parts[2] = two_hours_ago.to_string();
    s.emulator
        .ecs()
        .tag_resource()
        .resource_arn(cluster.cluster_arn().unwrap())
        .tags(
            aws_sdk_ecs::types::Tag::builder()
                .key("fleetsync:pr:platform:13")
                .value(parts.join(" "))
                .build(),
        )
        .send()
        .await
        .unwrap();

    let swept = dispatcher
        .sweep_previews(&dispatcher.repos[0])
        .await
        .unwrap();
    assert_eq!(swept.torn_down, ["pr-13"]);
    s.preview_gone(13).await;
    s.drained().await;

    // Once `previews` is gone from the default branch, so is every preview it made.
    let head = s.open_branch(15, "1.6.0");
    assert_eq!(s.github("opened", 15, head).await.0, 202);
    s.preview_live_at(15, head).await;
    s.repo.commit("main", "fleetsync.yaml", |t| {
        Some(t.unwrap().split("previews:").next().unwrap().to_owned())
    });
    let swept = dispatcher
        .sweep_previews(&dispatcher.repos[0])
        .await
        .unwrap();
    assert_eq!(swept.torn_down, ["pr-15"]);
    s.preview_gone(15).await;
    let (status, body) = s.github("synchronize", 15, head).await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("ignored")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teardown_that_fails_half_way_leaves_nothing_once_retried() {
    let s = setup("").await;
    let head = s.open_branch(14, "1.5.0");
    let worker = start_worker(&s.config, &s.emulator.aws);
    assert_eq!(s.github("opened", 14, head).await.0, 202);
    s.preview_live_at(14, head).await;
    s.drained().await;
    // ECS refuses to deregister task definitions for a while (stands in for a worker dying
    // between deleting a service and deregistering its revisions): the job is retried.
    s.emulator
        .fault(r#"{"service": "ecs", "operation": "DeregisterTaskDefinition", "status": 500, "code": "ServerException", "seconds": 3}"#)
        .await;
    assert_eq!(s.github("closed", 14, head).await.0, 202);
    s.preview_gone(14).await;
    s.drained().await;
    worker.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_gitea_and_bitbucket_pull_requests_open_previews() {
    let s = setup("  maxActive: 10\n").await;
    let hex_hmac = |body: &[u8]| {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    };

    // GitLab: a Merge Request Hook, head at refs/merge-requests/N/head.
    let head = s.open_branch(21, "1.5.0");
    let mut gitlab = fixture("gitlab/go-gitlab.webhooks.merge_request.json");
    let attrs = &mut gitlab["object_attributes"];
    attrs["iid"] = 21.into();
    attrs["action"] = "open".into();
    attrs["target_branch"] = "staging".into();
    attrs["source_branch"] = "pr-21".into();
    attrs["last_commit"]["id"] = head.to_string().into();
    gitlab["project"]["git_http_url"] = format!("{REPO_URL}.git").into();
    gitlab["project"]["web_url"] = REPO_URL.into();
    let body = serde_json::to_vec(&gitlab).unwrap();
    let headers = [
        ("x-gitlab-event", "Merge Request Hook"),
        ("x-gitlab-token", SECRET),
    ];
    let (status, reply) = s.receiver.post("gitlab", &headers, &body).await;
    assert_eq!(
        (status, &reply["preview"]),
        (202, &json!("pr-21")),
        "{reply}"
    );

    // Gitea: GitHub's shape with its own headers.
    let head = s.open_branch(22, "1.5.0");
    let mut gitea = fixture("gitea/go-playground.pull-request-event.json");
    gitea["number"] = 22.into();
    let pr = &mut gitea["pull_request"];
    pr["head"]["sha"] = head.to_string().into();
    pr["base"]["ref"] = "staging".into();
    pr["head"]["repo"] = pr["base"]["repo"].clone();
    gitea["repository"]["clone_url"] = format!("{REPO_URL}.git").into();
    let body = serde_json::to_vec(&gitea).unwrap();
    let signature = hex_hmac(&body);
    let headers = [
        ("x-gitea-event", "pull_request"),
        ("x-gitea-signature", signature.as_str()),
    ];
    let (status, reply) = s.receiver.post("gitea", &headers, &body).await;
    assert_eq!(
        (status, &reply["preview"]),
        (202, &json!("pr-22")),
        "{reply}"
    );

    // Bitbucket Cloud keeps no PR ref: the source branch is fetched.
    let head = s.open_branch(23, "1.5.0");
    let mut cloud = fixture("bitbucket-cloud/go-playground.pull-request-created.json");
    cloud["repository"]["links"]["html"]["href"] = REPO_URL.into();
    let pr = &mut cloud["pullrequest"];
    pr["id"] = 23.into();
    pr["source"]["branch"]["name"] = "pr-23".into();
    pr["source"]["commit"]["hash"] = head.to_string()[..12].into();
    pr["destination"]["branch"]["name"] = "staging".into();
    let body = serde_json::to_vec(&cloud).unwrap();
    let signature = sign(SECRET.as_bytes(), &body);
    let headers = [
        ("x-event-key", "pullrequest:created"),
        ("x-hub-signature", signature.as_str()),
    ];
    let (status, reply) = s.receiver.post("bitbucket", &headers, &body).await;
    assert_eq!(
        (status, &reply["preview"]),
        (202, &json!("pr-23")),
        "{reply}"
    );
    assert_eq!(reply["commit"], head.to_string());

    // Bitbucket Data Center: opened, then merged.
    let head = s.open_branch(24, "1.5.0");
    for (event, fixture_name) in [
        ("pr:opened", "go-playground.pr-opened.json"),
        ("pr:merged", "go-playground.pr-merged.json"),
    ] {
        let mut server = fixture(&format!("bitbucket-server/{fixture_name}"));
        let pr = &mut server["pullRequest"];
        pr["id"] = 24.into();
        pr["fromRef"]["latestCommit"] = head.to_string().into();
        pr["toRef"]["id"] = "refs/heads/staging".into();
        pr["toRef"]["repository"]["links"]["clone"][0]["href"] = format!("{REPO_URL}.git").into();
        pr["fromRef"]["repository"] = pr["toRef"]["repository"].clone();
        let body = serde_json::to_vec(&server).unwrap();
        let signature = sign(SECRET.as_bytes(), &body);
        let headers = [
            ("x-event-key", event),
            ("x-hub-signature", signature.as_str()),
        ];
        let (status, reply) = s.receiver.post("bitbucket", &headers, &body).await;
        let expected = if event == "pr:opened" {
            "enqueued"
        } else {
            "tearing-down"
        };
        assert_eq!(
            (status, &reply["status"]),
            (202, &json!(expected)),
            "{reply}"
        );
    }
}

/// The pull request hears of its preview in one comment, edited in place on every change, and
/// on GitHub in a Deployment per head (`preview/pr-7`, transient), marked inactive once the
/// preview is torn down. A local server stands in for GitHub's API; what fleetsync sent it is
/// checked against GitHub's OpenAPI description.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pull_request_hears_of_its_preview_in_one_comment_and_a_deployment() {
    use crate::feedback::StandIn;
    use fleetsync::config::HostKind;
    let (host, url) = StandIn::start(HostKind::Github).await;
    let (sink, sink_url) = StandIn::start(HostKind::Gitea).await;
    let secrets = tempfile::tempdir().unwrap();
    let (token, hook_secret) = (secrets.path().join("token"), secrets.path().join("hook"));
    std::fs::write(&token, "ghp_previews").unwrap();
    std::fs::write(&hook_secret, "shh").unwrap();
    let git_host = format!(
        "    gitHost: {{ api: {url}, provider: github, token: file:{} }}\n",
        token.display()
    );
    let notifications = format!(
        "notifications:\n  - webhook: {{ url: {sink_url}/hook, secret: file:{} }}\n    on: [previewReady]\n",
        hook_secret.display()
    );
    let s = setup_with("", (&git_host, &notifications)).await;
    // api is reached at a host of its own: the comment and the Deployment say where.
    let _alb = with_ingress(&s).await;
    let _worker = start_worker(&s.config, &s.emulator.aws);
    let comment = || -> String {
        let comments = host.comments.lock().unwrap();
        assert!(
            comments.len() <= 1,
            "one comment per pull request: {comments:?}"
        );
        comments
            .first()
            .map(|c| c["body"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let deployed = |body: &str, commit: git2::Oid| {
        let at = format!("at `{}`", &commit.to_string()[..7]);
        (body.contains(&at) && body.matches("✅ deployed").count() == APPS.len()).then_some(())
    };

    let head = s.open_branch(7, "1.5.0");
    assert_eq!(s.github("opened", 7, head).await.0, 202);
    eventually(LIMIT, "the comment to show every app deployed", || async {
        deployed(&comment(), head)
    })
    .await;
    let body = comment();
    assert!(body.contains("### Preview `pr-7`"), "{body}");
    // The app's status on the head links to where it runs; web, with no load balancer, to
    // the previews API.
    let statuses = host.latest(&head.to_string());
    let link = |context: &str| {
        statuses
            .iter()
            .find(|s| s["context"] == context)
            .map(|s| s["target_url"].clone())
    };
    assert_eq!(
        link("fleetsync/pr-7/api"),
        Some(json!("http://api-pr-7.preview.example.com")),
        "{statuses:?}"
    );
    assert_eq!(
        link("fleetsync/pr-7/web"),
        Some(json!("https://fleetsync.example.com/api/v1/previews")),
        "{statuses:?}"
    );
    assert!(
        body.contains("| `api` | ✅ deployed: deployed staging-api-pr-7:1 at http://api-pr-7.preview.example.com |"),
        "{body}"
    );

    // A push: the same comment follows the new head; web, unchanged, stays listed.
    let next = s.push_to_branch(7, "1.6.0");
    assert_eq!(s.github("synchronize", 7, next).await.0, 202);
    eventually(LIMIT, "the comment to follow the push", || async {
        deployed(&comment(), next)
    })
    .await;
    assert!(
        comment().contains("deployed staging-api-pr-7:2"),
        "{}",
        comment()
    );
    // Told once per head that became ready, and nothing else.
    let ready = eventually(LIMIT, "previewReady for both heads", || async {
        let posts: Vec<Value> = sink
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r["method"] == "POST")
            .map(|r| r["body"].clone())
            .collect();
        (posts.len() >= 2).then_some(posts)
    })
    .await;
    let told: Vec<(&str, &str, &str)> = ready
        .iter()
        .map(|b| {
            let text = |k: &str| b[k].as_str().unwrap_or_default();
            (text("event"), text("commit"), text("summary"))
        })
        .collect();
    let summary = format!("preview pr-7: {} apps deployed", APPS.len());
    let (head_id, next_id) = (head.to_string(), next.to_string());
    assert_eq!(
        told,
        [
            ("previewReady", head_id.as_str(), summary.as_str()),
            ("previewReady", next_id.as_str(), summary.as_str())
        ]
    );

    // One Deployment per head, as GitHub wants a preview's.
    let deployments = host.deployments.lock().unwrap().clone();
    let refs: Vec<&str> = deployments
        .iter()
        .map(|d| d["ref"].as_str().unwrap())
        .collect();
    assert_eq!(refs, [head.to_string(), next.to_string()]);
    for d in &deployments {
        assert_eq!(d["environment"], "preview/pr-7");
        assert_eq!(
            (&d["transient_environment"], &d["auto_merge"]),
            (&json!(true), &json!(false))
        );
        assert_eq!(d["required_contexts"], json!([]));
    }
    let states_of = |id: &Value| -> Vec<String> {
        host.deployment_statuses
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s["deployment_id"] == *id)
            .map(|s| s["state"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = states_of(&deployments[0]["id"]);
    assert_eq!(
        first.first().map(String::as_str),
        Some("queued"),
        "{first:?}"
    );
    assert_eq!(
        first.last().map(String::as_str),
        Some("success"),
        "{first:?}"
    );
    let success = host
        .deployment_statuses
        .lock()
        .unwrap()
        .iter()
        .find(|s| s["deployment_id"] == deployments[0]["id"] && s["state"] == "success")
        .cloned()
        .unwrap();
    assert_eq!(
        success["environment_url"], "http://api-pr-7.preview.example.com",
        "{success}"
    );

    // Closed: torn down, said in the same comment, and every Deployment inactive.
    assert_eq!(s.github("closed", 7, next).await.0, 202);
    s.preview_gone(7).await;
    eventually(LIMIT, "the comment to say torn down", || async {
        comment().contains("Torn down").then_some(())
    })
    .await;
    s.drained().await;
    for d in &deployments {
        let states = states_of(&d["id"]);
        assert_eq!(
            states.last().map(String::as_str),
            Some("inactive"),
            "{states:?}"
        );
    }
    let writes: Vec<String> = host
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r["path"].as_str().unwrap().contains("/comments") && r["method"] != "GET")
        .map(|r| r["method"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        writes.iter().filter(|m| *m == "POST").count(),
        1,
        "{writes:?}"
    );
    assert!(
        writes.iter().filter(|m| *m == "PATCH").count() >= 3,
        "{writes:?}"
    );
    crate::feedback::assert_github_contract(&host);
}

/// An ALB with one HTTP listener and the target group staging's api uses, on the emulator's
/// network: what `previews.ingress` points at.
struct Balancer {
    elb: aws_sdk_elasticloadbalancingv2::Client,
    listener: String,
    staging_target_group: String,
    vpc: String,
}

impl Balancer {
    async fn create(emulator: &Emulator) -> Balancer {
        use aws_sdk_elasticloadbalancingv2::types::{
            Action, ActionTypeEnum, FixedResponseActionConfig, ProtocolEnum, TargetTypeEnum,
        };
        let elb = aws_sdk_elasticloadbalancingv2::Client::new(&emulator.aws);
        let subnets = aws_sdk_ec2::Client::new(&emulator.aws)
            .describe_subnets()
            .set_subnet_ids(Some(emulator.subnets.clone()))
            .send()
            .await
            .unwrap();
        let vpc = subnets.subnets()[0].vpc_id().unwrap().to_owned();
        let balancer = elb
            .create_load_balancer()
            .name("previews")
            .set_subnets(Some(emulator.subnets.clone()))
            .send()
            .await
            .unwrap();
        let balancer = balancer.load_balancers()[0]
            .load_balancer_arn()
            .unwrap()
            .to_owned();
        let not_found = Action::builder()
            .r#type(ActionTypeEnum::FixedResponse)
            .fixed_response_config(
                FixedResponseActionConfig::builder()
                    .status_code("404")
                    .build(),
            )
            .build();
        let listener = elb
            .create_listener()
            .load_balancer_arn(&balancer)
            .protocol(ProtocolEnum::Http)
            .port(80)
            .default_actions(not_found)
            .send()
            .await
            .unwrap();
        let listener = listener.listeners()[0].listener_arn().unwrap().to_owned();
        let staging = elb
            .create_target_group()
            .name("staging-api")
            .protocol(ProtocolEnum::Http)
            .port(8080)
            .vpc_id(&vpc)
            .target_type(TargetTypeEnum::Ip)
            .health_check_path("/healthz")
            .send()
            .await
            .unwrap();
        let staging_target_group = staging.target_groups()[0]
            .target_group_arn()
            .unwrap()
            .to_owned();
        Balancer {
            elb,
            listener,
            staging_target_group,
            vpc,
        }
    }

    /// The listener's rules besides its default: (host, target group ARN, priority).
    async fn rules(&self) -> Vec<(String, String, String)> {
        let out = self
            .elb
            .describe_rules()
            .listener_arn(&self.listener)
            .send()
            .await
            .unwrap();
        out.rules()
            .iter()
            .filter(|r| r.is_default() != Some(true) && r.priority() != Some("default"))
            .map(|r| {
                let host = r
                    .conditions()
                    .iter()
                    .flat_map(|c| {
                        let config = c.host_header_config().map(|h| h.values());
                        config.unwrap_or_default().iter().chain(c.values())
                    })
                    .next()
                    .cloned()
                    .unwrap_or_default();
                let target = r.actions()[0].target_group_arn().unwrap_or_default();
                (host, target.to_owned(), r.priority().unwrap().to_owned())
            })
            .collect()
    }

    async fn target_group(
        &self,
        name: &str,
    ) -> Option<aws_sdk_elasticloadbalancingv2::types::TargetGroup> {
        let out = self.elb.describe_target_groups().names(name).send().await;
        out.ok()?.target_groups().first().cloned()
    }
}

/// `previews.ingress` on main, through a new ALB listener, and a load balancer for staging's
/// api (web has none).
async fn with_ingress(s: &Setup) -> Balancer {
    // Stands in for Elastic Load Balancing: moto's elbv2 keeps load balancers, listeners,
    // rules (with PriorityInUse) and target groups, but routes no traffic and checks no health.
    let alb = Balancer::create(&s.emulator).await;
    s.repo.commit("main", "fleetsync.yaml", |t| {
        Some(format!(
            "{}  ingress:\n    listenerArn: {}\n    host: \"${{app}}-${{preview}}.preview.example.com\"\n",
            t.unwrap(),
            alb.listener
        ))
    });
    // staging's api sits behind its own target group; web has no load balancer.
    let target = alb.staging_target_group.clone();
    s.repo.commit("staging", "apps/api/app.yaml", |t| {
        Some(t.unwrap().replace(
            "  desiredCount: 2\n",
            &format!("  desiredCount: 2\n  loadBalancers: [{{ targetGroupArn: {target}, containerName: api, containerPort: 8080 }}]\n"),
        ))
    });
    alb
}

/// The target group the service names in its `loadBalancers`.
async fn service_target_group(emulator: &Emulator, service: &str) -> Option<String> {
    let out = emulator
        .ecs()
        .describe_services()
        .cluster("previews")
        .services(service)
        .send()
        .await
        .unwrap();
    let s = out.services().first()?;
    Some(s.load_balancers().first()?.target_group_arn()?.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_with_ingress_is_reached_at_its_own_host_and_leaves_no_rule_once_closed() {
    let s = setup("").await;
    let alb = with_ingress(&s).await;
    let _worker = start_worker(&s.config, &s.emulator.aws);
    // The first rule fleetsync creates finds its priority taken meanwhile, as when another
    // writer on the listener wins a race: CreateRule answers PriorityInUse once.
    s.emulator
        .fault(r#"{"service": "elbv2", "status": 400, "code": "PriorityInUse", "message": "Priority '1' is currently in use", "operation": "CreateRule", "times": 1, "seconds": 600}"#)
        .await;

    let mut heads = Vec::new();
    for number in [7, 8] {
        let head = s.open_branch(number, "1.5.0");
        let (status, body) = s.github("opened", number, head).await;
        assert_eq!(
            (status, &body["status"]),
            (202, &json!("enqueued")),
            "{body}"
        );
        heads.push(head);
    }
    for (number, head) in [7, 8].into_iter().zip(&heads) {
        s.preview_live_at(number, *head).await;
        let name = fleetsync::ingress::target_group_name("platform", number, "api");
        let group = alb
            .target_group(&name)
            .await
            .unwrap_or_else(|| panic!("no target group {name}"));
        let arn = group.target_group_arn().unwrap().to_owned();
        // Its own target group, never staging's, copied from staging's.
        assert_eq!(
            service_target_group(&s.emulator, &format!("api-pr-{number}")).await,
            Some(arn.clone())
        );
        assert_ne!(arn, alb.staging_target_group);
        assert_eq!(group.port(), Some(8080));
        assert_eq!(group.vpc_id(), Some(alb.vpc.as_str()));
        assert_eq!(group.health_check_path(), Some("/healthz"));
        let host = format!("api-pr-{number}.preview.example.com");
        assert!(
            alb.rules()
                .await
                .iter()
                .any(|(h, t, _)| *h == host && *t == arn),
            "no rule for {host}: {:?}",
            alb.rules().await
        );
        assert_eq!(
            service_target_group(&s.emulator, &format!("web-pr-{number}")).await,
            None
        );
    }
    let rules = alb.rules().await;
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert_ne!(rules[0].2, rules[1].2, "one priority per rule: {rules:?}");
    let faults = reqwest::get(format!("{}/fleetsync-emulator/faults", s.emulator.endpoint))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let faults: Value = serde_json::from_str(&faults).unwrap();
    assert_eq!(faults["faulted"]["elbv2 CreateRule"], 1, "{faults}");

    // Where to click: the previews API, per app that has ingress.
    let listed = s.previews_api().await;
    let preview = listed["previews"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["number"] == 7)
        .unwrap()
        .clone();
    let url = |app: &str| {
        preview["apps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["app"] == app)
            .map(|a| a["url"].clone())
    };
    assert_eq!(
        url("api"),
        Some(json!("http://api-pr-7.preview.example.com")),
        "{listed}"
    );
    assert_eq!(url("web"), Some(Value::Null), "{listed}");

    let (status, body) = s.github("closed", 7, heads[0]).await;
    assert_eq!(
        (status, &body["status"]),
        (202, &json!("tearing-down")),
        "{body}"
    );
    s.preview_gone(7).await;
    let gone = fleetsync::ingress::target_group_name("platform", 7, "api");
    eventually(LIMIT, "pr-7's target group to be deleted", || async {
        alb.target_group(&gone).await.is_none().then_some(())
    })
    .await;
    let rules = alb.rules().await;
    assert_eq!(rules.len(), 1, "only pr-8's rule is left: {rules:?}");
    assert_eq!(rules[0].0, "api-pr-8.preview.example.com");
    // The environment's own target group is never touched.
    assert!(alb.target_group("staging-api").await.is_some());
}
