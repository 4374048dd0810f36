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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_worker_deploy_a_push_and_stop_cleanly_on_sigterm() {
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
            "listen: 127.0.0.1:{port}\nmirrorDir: {}\nqueueUrl: {queue_url}\nrepos:\n  - name: platform\n    url: {REPO_URL}\n    fetchUrl: {}\n    secret: env:FLEETSYNC_WEBHOOK_SECRET\nworker:\n  rolloutPollInterval: 100ms\n",
            dir.path().join("mirrors").display(),
            repo.file_url(),
        ),
    )
    .unwrap();
    let start = |args: &[&str]| {
        let child = Command::new(env!("CARGO_BIN_EXE_fleetsync"))
            .args(args)
            .args(["--config", config.to_str().unwrap()])
            .env("AWS_ENDPOINT_URL", &emulator.endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("FLEETSYNC_WEBHOOK_SECRET", SECRET)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Process(child)
    };
    let serve = start(&["serve"]);
    let worker = start(&["worker", "--grace", "5s"]);
    let receiver = Receiver::remote(&format!("http://127.0.0.1:{port}"));
    eventually(
        Duration::from_secs(30),
        "the receiver to listen",
        || async {
            reqwest::get(format!("{}/readyz", receiver.url))
                .await
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ())
        },
    )
    .await;

    let head = repo.head("staging");
    let (status, body) = receiver.push("staging", head, "binary").await;
    assert_eq!(status, 202, "{body}");
    for app in APPS {
        eventually(Duration::from_secs(60), app, || async {
            emulator
                .service("staging", app)
                .await
                .filter(|s| s.revision() == head.to_string())
        })
        .await;
    }

    assert!(serve.terminate().await.success());
    assert!(worker.terminate().await.success());
}
