//! The real `fleetsync serve` and `fleetsync worker` processes: one config file, AWS reached
//! only through `AWS_ENDPOINT_URL`, and a clean exit on SIGTERM (what ECS sends).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;

/// Kills the process if the test fails before it stopped it.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let mut child = std::mem::replace(&mut self.0, Command::new("true").spawn().unwrap());
        tokio::time::timeout(
            Duration::from_secs(20),
            tokio::task::spawn_blocking(move || child.wait().unwrap()),
        )
        .await
        .expect("stopped within 20s of SIGTERM")
        .unwrap()
    }
}

/// An emulator, the example config repo, and one config file for real `fleetsync` processes.
struct Fleet {
    emulator: Emulator,
    repo: ConfigRepo,
    queue_url: String,
    config: std::path::PathBuf,
    receiver: Receiver,
    _dir: tempfile::TempDir,
}

impl Fleet {
    async fn new(worker: &str) -> Fleet {
        let emulator = Emulator::start().await;
        emulator.create_clusters(&["staging", "production"]).await;
        let queue_url = emulator.create_queue("fleetsync.fifo").await;
        let repo = ConfigRepo::example(&emulator);
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("fleetsync.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\nmirrorDir: {}\nqueueUrl: {queue_url}\nrepos:\n  - name: platform\n    url: {REPO_URL}\n    fetchUrl: {}\n    secret: env:FLEETSYNC_WEBHOOK_SECRET\nworker:\n{worker}",
                dir.path().join("mirrors").display(),
                repo.file_url(),
            ),
        )
        .unwrap();
        Fleet {
            emulator,
            repo,
            queue_url,
            config,
            receiver: Receiver::remote(&format!("http://127.0.0.1:{port}")),
            _dir: dir,
        }
    }

    /// `fleetsync <args> --config <file>`, reaching AWS through AWS_ENDPOINT_URL only.
    fn start(&self, args: &[&str]) -> Process {
        self.start_logging(args, Stdio::null())
    }

    /// [`Fleet::start`], its log (stderr) to `log`.
    fn start_logging(&self, args: &[&str], log: impl Into<Stdio>) -> Process {
        let child = Command::new(env!("CARGO_BIN_EXE_fleetsync"))
            .args(args)
            .args(["--config", self.config.to_str().unwrap()])
            .env("AWS_ENDPOINT_URL", &self.emulator.endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("FLEETSYNC_WEBHOOK_SECRET", SECRET)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Process(child)
    }

    async fn serve(&self) -> Process {
        self.serve_logging(&["serve"], Stdio::null()).await
    }

    /// `serve` with `args`, its log to `log`, once it is ready.
    async fn serve_logging(&self, args: &[&str], log: impl Into<Stdio>) -> Process {
        let serve = self.start_logging(args, log);
        eventually(
            Duration::from_secs(30),
            "the receiver to listen",
            || async {
                reqwest::get(format!("{}/readyz", self.receiver.url))
                    .await
                    .ok()
                    .filter(|r| r.status() == 200)
                    .map(|_| ())
            },
        )
        .await;
        serve
    }
}

/// With `--log-format json`, a log query can follow one job through its states and say who
/// started it: every line is a JSON object with the job's fields and an `event`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_follow_each_job_through_its_states_with_who_started_it() {
    let fleet = Fleet::new("  rolloutPollInterval: 100ms\n").await;
    let logs = tempfile::tempdir().unwrap();
    let (serve_log, worker_log) = (logs.path().join("serve"), logs.path().join("worker"));
    let serve = fleet
        .serve_logging(
            &["serve", "--log-format", "json"],
            std::fs::File::create(&serve_log).unwrap(),
        )
        .await;
    let worker = fleet.start_logging(
        &["worker", "--grace", "5s", "--log-format", "json"],
        std::fs::File::create(&worker_log).unwrap(),
    );
    let head = fleet.repo.head("staging");
    let (status, body) = fleet.receiver.push("staging", head, "json-logs").await;
    assert_eq!(status, 202, "{body}");
    eventually(Duration::from_secs(60), "api deployed", || async {
        fleet
            .emulator
            .service("staging", "api")
            .await
            .filter(|s| s.revision() == head.to_string())
    })
    .await;
    eventually(Duration::from_secs(30), "the queue to drain", || async {
        (fleet.emulator.queue_depth(&fleet.queue_url).await == 0).then_some(())
    })
    .await;
    assert!(serve.terminate().await.success());
    assert!(worker.terminate().await.success());

    let lines = |path: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let enqueued: Vec<_> = lines(&serve_log)
        .into_iter()
        .filter(|l| l["event"] == "enqueued")
        .collect();
    assert_eq!(enqueued.len(), 1, "{enqueued:?}");
    assert_eq!(
        (
            &enqueued[0]["commit"],
            &enqueued[0]["delivery"],
            &enqueued[0]["actor"]
        ),
        (
            &serde_json::json!(head.to_string()),
            &serde_json::json!("json-logs"),
            &serde_json::json!("binkkatal")
        )
    );
    let api: Vec<serde_json::Value> = lines(&worker_log)
        .into_iter()
        .filter(|l| l["span"]["app"] == "api" && l["event"].is_string())
        .collect();
    let mut events: Vec<&str> = api.iter().map(|l| l["event"].as_str().unwrap()).collect();
    // api depends on accounts: it waits for accounts' rollout, once per change of what it
    // waits for (created, then settled).
    events.dedup();
    assert_eq!(
        events,
        [
            "started",
            "waiting",
            "registered",
            "rolling_out",
            "completed"
        ],
        "{api:?}"
    );
    for line in &api {
        let span = &line["span"];
        assert_eq!(
            (
                &span["trigger"],
                &span["actor"],
                &span["commit"],
                &span["environment"]
            ),
            (
                &serde_json::json!("push"),
                &serde_json::json!("binkkatal"),
                &serde_json::json!(head.to_string()),
                &serde_json::json!("staging")
            ),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_worker_deploy_a_push_and_stop_cleanly_on_sigterm() {
    let fleet = Fleet::new("  rolloutPollInterval: 100ms\n").await;
    let serve = fleet.serve().await;
    let worker = fleet.start(&["worker", "--grace", "5s"]);

    let head = fleet.repo.head("staging");
    let (status, body) = fleet.receiver.push("staging", head, "binary").await;
    assert_eq!(status, 202, "{body}");
    for app in APPS {
        eventually(Duration::from_secs(60), app, || async {
            fleet
                .emulator
                .service("staging", app)
                .await
                .filter(|s| s.revision() == head.to_string())
        })
        .await;
    }

    assert!(serve.terminate().await.success());
    assert!(worker.terminate().await.success());
}

/// What ECS does to a task at a scale-in or a host failure: no signal the worker can handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_rollout_leaves_its_jobs_to_another_that_finishes_them() {
    // Slow polls keep the rollouts in progress long enough to kill the worker during them; a
    // short visibility timeout hands its jobs over soon after it dies.
    let fleet = Fleet::new("  rolloutPollInterval: 3s\n  visibilityTimeout: 3s\n").await;
    let _serve = fleet.serve().await;
    let first = fleet.start(&["worker"]);
    let head = fleet.repo.head("staging");
    assert_eq!(fleet.receiver.push("staging", head, "kill").await.0, 202);
    // Watched with ListServices: the emulator's rollouts advance on DescribeServices calls.
    eventually(Duration::from_secs(60), "api created", || async {
        let out = fleet
            .emulator
            .ecs()
            .list_services()
            .cluster("staging")
            .send()
            .await
            .unwrap();
        out.service_arns()
            .iter()
            .any(|arn| arn.ends_with("/api"))
            .then_some(())
    })
    .await;
    let steady = |s: &Live| {
        s.events
            .iter()
            .any(|e| e.contains("has reached a steady state"))
    };
    let api = fleet.emulator.service("staging", "api").await.unwrap();
    assert!(
        !steady(&api),
        "killed before the rollout was watched to its end"
    );
    drop(first); // SIGKILL

    let _second = fleet.start(&["worker"]);
    for app in APPS {
        eventually(
            Duration::from_secs(90),
            &format!("{app} completed"),
            || async {
                fleet
                    .emulator
                    .service("staging", app)
                    .await
                    .filter(|s| s.revision() == head.to_string() && steady(s))
            },
        )
        .await;
    }
    eventually(Duration::from_secs(60), "the queue to drain", || async {
        (fleet.emulator.queue_depth(&fleet.queue_url).await == 0).then_some(())
    })
    .await;
    assert_eq!(
        fleet.emulator.revisions("staging-api").await,
        ["staging-api:1"],
        "the second attempt found the first one's work instead of redoing it"
    );
}

/// With `api.listen`, the API and `/metrics` answer only on their own address: the Git hosts'
/// listener (behind a public load balancer) serves webhooks and health checks alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_metrics_listen_apart_from_the_webhooks() {
    const TOKEN: &str = "fs_test_listen_apart";
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let dir = tempfile::tempdir().unwrap();
    let digests = dir.path().join("api-token-hashes");
    std::fs::write(
        &digests,
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(TOKEN)),
    )
    .unwrap();
    let port = free();
    let fleet = Fleet::new(&format!(
        "  rolloutPollInterval: 100ms\napi:\n  listen: 127.0.0.1:{port}\n  tokenHashes: file:{}\n",
        digests.display()
    ))
    .await;
    let _serve = fleet.serve().await;
    let operations = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let get = |url: String| {
        let client = client.clone();
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    let sync = |base: String| {
        let client = client.clone();
        async move {
            client
                .post(format!("{base}/api/v1/sync"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("content-type", "application/json")
                .body(r#"{"repo": "platform", "environment": "staging", "app": "api"}"#)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let public = fleet.receiver.url.clone();
    assert_eq!(get(format!("{public}/metrics")).await, 404);
    assert_eq!(sync(public.clone()).await, 404);
    assert_eq!(get(format!("{operations}/metrics")).await, 200);
    assert_eq!(sync(operations.clone()).await, 202);
    let (status, body) = fleet
        .receiver
        .push("staging", fleet.repo.head("staging"), "listen-apart")
        .await;
    assert_eq!(status, 202, "{body}");
    let on_operations = reqwest::Client::new()
        .post(format!("{operations}/webhooks/github"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(on_operations.status().as_u16(), 404);
    assert_eq!(
        fleet.emulator.queue_depth(&fleet.queue_url).await,
        1 + APPS.len()
    );
}
