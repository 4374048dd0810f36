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
        let port = free_port();
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

/// A loopback port nothing listens on, for a process the test starts to bind.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn scrape(url: &str) -> String {
    let response = reqwest::get(format!("{url}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let text = response.text().await.unwrap();
    // Prometheus's own Python client parses OpenMetrics strictly (one description per family,
    // cumulative buckets, `# EOF`): what it reads, a Prometheus server reads.
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    let mut parser = Command::new(python)
        .args([
            "-c",
            "import sys; from prometheus_client.openmetrics.parser import text_string_to_metric_families as p; list(p(sys.stdin.read()))",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut parser.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let parsed = parser.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    text
}

/// The value of one series (`name{labels}`) in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// What an operator graphs and alerts on: the queue's depth and the receiver's requests by
/// route and status from `serve`, jobs by outcome and how long they took from each `worker`,
/// and git fetches from both, in a format Prometheus reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_queue_requests_by_route_jobs_by_outcome_and_fetches() {
    let metrics_port = free_port();
    let fleet = Fleet::new(&format!(
        "  rolloutPollInterval: 100ms\n  metricsListen: 127.0.0.1:{metrics_port}\n"
    ))
    .await;
    let _serve = fleet.serve().await;
    let public = fleet.receiver.url.clone();
    let http = reqwest::Client::new();
    let odd_method = reqwest::Method::from_bytes(b"PROPFIND").unwrap();
    let answered = http.request(odd_method, format!("{public}/readyz")).send();
    assert_eq!(answered.await.unwrap().status(), 405);
    let missing = http.get(format!("{public}/wp-login.php")).send();
    assert_eq!(missing.await.unwrap().status(), 404);
    let head = fleet.repo.head("staging");
    let (status, body) = fleet.receiver.push("staging", head, "metrics").await;
    assert_eq!(status, 202, "{body}");
    let jobs = body["jobs"].as_array().unwrap().len();

    let receiver = scrape(&public).await;
    let visible = sample(&receiver, "fleetsync_queue_jobs{state=\"visible\"}");
    assert_eq!(visible, Some(jobs as f64), "{receiver}");
    for (series, value) in [
        (
            "fleetsync_http_requests_total{route=\"/webhooks/{provider}\",method=\"POST\",status=\"202\"}",
            1.0,
        ),
        (
            "fleetsync_http_requests_total{route=\"/readyz\",method=\"other\",status=\"405\"}",
            1.0,
        ),
        (
            "fleetsync_webhook_deliveries_total{provider=\"github\",outcome=\"enqueued\"}",
            1.0,
        ),
    ] {
        assert_eq!(
            sample(&receiver, series),
            Some(value),
            "{series} in\n{receiver}"
        );
    }
    // Paths no route serves are not counted: a scan cannot grow the label set.
    assert!(!receiver.contains("wp-login"), "{receiver}");
    let fetches = sample(&receiver, "fleetsync_git_fetches_total{repo=\"platform\"}").unwrap();
    assert!(fetches >= 1.0, "{receiver}");
    assert_eq!(
        sample(
            &receiver,
            "fleetsync_git_fetch_duration_seconds_count{repo=\"platform\"}"
        ),
        Some(fetches),
        "{receiver}"
    );

    let _worker = fleet.start(&["worker"]);
    let worker_url = format!("http://127.0.0.1:{metrics_port}");
    let completed = "{kind=\"sync\",outcome=\"completed\"}";
    let jobs_completed = format!("fleetsync_jobs_total{completed}");
    eventually(Duration::from_secs(60), "every job completed", || async {
        let text = reqwest::get(format!("{worker_url}/metrics")).await.ok()?;
        let text = text.text().await.ok()?;
        (sample(&text, &jobs_completed) == Some(jobs as f64)).then_some(())
    })
    .await;
    let worker = scrape(&worker_url).await;
    assert_eq!(
        sample(
            &worker,
            &format!("fleetsync_job_duration_seconds_count{completed}")
        ),
        Some(jobs as f64),
        "{worker}"
    );
    let took = sample(
        &worker,
        &format!("fleetsync_job_duration_seconds_sum{completed}"),
    );
    assert!(took.unwrap() > 0.0, "{worker}");
    // A create first checks its branch in the worker's own mirror.
    assert!(
        sample(&worker, "fleetsync_git_fetches_total{repo=\"platform\"}").unwrap() >= 1.0,
        "{worker}"
    );
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
    let serve_lines = lines(&serve_log);
    let pushes: Vec<_> = serve_lines
        .iter()
        .filter(|l| l["event"] == "push_enqueued")
        .collect();
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    assert_eq!(pushes[0]["jobs"], APPS.len(), "{pushes:?}");
    // One line per job, with the fields the worker's lines carry: a log query joins them on
    // `message_id`.
    let enqueued: Vec<_> = serve_lines
        .iter()
        .filter(|l| l["event"] == "enqueued")
        .collect();
    let mut apps: Vec<&str> = enqueued
        .iter()
        .map(|l| l["app"].as_str().unwrap())
        .collect();
    apps.sort();
    let mut expected = APPS.to_vec();
    expected.sort();
    assert_eq!(apps, expected, "{enqueued:?}");
    for line in &enqueued {
        assert_eq!(
            (
                &line["commit"],
                &line["delivery"],
                &line["actor"],
                &line["trigger"],
                &line["environment"]
            ),
            (
                &serde_json::json!(head.to_string()),
                &serde_json::json!("json-logs"),
                &serde_json::json!("binkkatal"),
                &serde_json::json!("push"),
                &serde_json::json!("staging")
            ),
            "{line}"
        );
    }
    let api_enqueued = enqueued.iter().find(|l| l["app"] == "api").unwrap();
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
                &span["environment"],
                &span["message_id"]
            ),
            (
                &serde_json::json!("push"),
                &serde_json::json!("binkkatal"),
                &serde_json::json!(head.to_string()),
                &serde_json::json!("staging"),
                &api_enqueued["message_id"]
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
