//! openapi.yaml against the running API: schemathesis (PyPI) generates requests from the
//! description (its examples, the edges of every schema, and random and wrong inputs) and
//! checks each answer: no 5xx but the documented 503, only documented status codes and
//! content types, bodies that match their schemas, wrong inputs refused, and no route that
//! answers without a token.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

const TOKEN: &str = "fs_schema_5d1e77a0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_api_answers_as_openapi_yaml_describes() {
    let emulator = Emulator::start().await;
    emulator.create_clusters(&["staging", "production"]).await;
    let queue_url = emulator.create_queue("fleetsync.fifo").await;
    let repo = ConfigRepo::example(&emulator);
    let dir = tempfile::tempdir().unwrap();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(TOKEN));
    let extra = format!(
        "api:\n  tokens:\n    - {{ name: schemathesis, sha256: {digest}, scopes: [admin] }}\n"
    );
    let config = config(dir.path(), &repo.file_url(), &queue_url, &extra);
    let receiver = Receiver::start(&config, &emulator.aws).await;
    let _worker = start_worker(&config, &emulator.aws);
    // Deployed apps, so that reads answer with history and live services, not only 404s.
    let head = repo.head("staging");
    let (status, body) = receiver.push("staging", head, "schema").await;
    assert_eq!(status, 202, "{body}");
    eventually(Duration::from_secs(60), "staging deployed", || async {
        emulator
            .service("staging", "api")
            .await
            .filter(|s| s.revision() == head.to_string())
    })
    .await;

    let root = env!("CARGO_MANIFEST_DIR");
    let reports = tempfile::tempdir().unwrap();
    let run = tokio::task::spawn_blocking({
        let url = receiver.url.clone();
        let reports = reports.path().to_owned();
        move || {
            Command::new(format!("{root}/.venv/bin/schemathesis"))
                .args(["run", &format!("{root}/openapi.yaml"), "--url", &url])
                .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
                .args(["--checks", "all", "--workers", "1", "--seed", "7"])
                // Bounded: a few examples per operation and phase.
                .args(["--max-examples", "30"])
                .args(["--request-timeout", "20", "--no-color"])
                .args(["--report-dir", reports.to_str().unwrap()])
                .args(["--generation-database", "none"])
                .env("SCHEMATHESIS_HOOKS", "")
                // Its caches (`.schemathesis/`) go with the reports, not into the checkout.
                .current_dir(&reports)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        }
    });
    let output = tokio::time::timeout(Duration::from_secs(400), run)
        .await
        .expect("schemathesis ended within its time budget")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Every operation was tested, none skipped for want of a schema.
    let document: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(format!("{root}/openapi.yaml")).unwrap())
            .unwrap();
    let operations: usize = document["paths"]
        .as_mapping()
        .unwrap()
        .values()
        .map(|path| path.as_mapping().unwrap().len())
        .sum();
    assert!(
        stdout.contains(&format!("Tested: {operations}\n")),
        "{operations} operations: {stdout}"
    );
}
