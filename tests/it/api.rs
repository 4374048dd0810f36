//! `POST /api/v1/sync` over a loopback socket: bearer tokens checked against SHA-256 digests,
//! every refusal answered with what to fix, and accepted syncs enqueued on SQS.

use crate::harness::*;

const TOKEN: &str = "fs_test_7f3a9c0e1b2d";

async fn call(receiver: &Receiver, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/api/v1/sync", receiver.url))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_asked_for_through_the_api_enqueues_that_environment_or_app() {
    let emulator = Emulator::start().await;
    let queue_url = emulator.create_queue("fleetsync.fifo").await;
    let repo = ConfigRepo::example(&emulator);
    let dir = tempfile::tempdir().unwrap();
    let digests = dir.path().join("api-token-hashes");
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(TOKEN));
    std::fs::write(&digests, format!("{}\n{digest}\n", "1".repeat(64))).unwrap();
    let extra = format!("api:\n  tokenHashes: file:{}\n", digests.display());
    let config = config(dir.path(), &repo.file_url(), &queue_url, &extra);
    let receiver = Receiver::start(&config, &emulator.aws).await;

    let staging = r#"{"repo": "platform", "environment": "staging"}"#;
    for token in [None, Some("wrong"), Some(digest.as_str())] {
        let (status, body) = call(&receiver, token, staging).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert_eq!(
            body["error"],
            "send a valid API token as `Authorization: Bearer <token>`"
        );
    }
    assert_eq!(emulator.queue_depth(&queue_url).await, 0);

    let (status, body) = call(
        &receiver,
        Some(TOKEN),
        r#"{"repo": "platform", "environment": "qa"}"#,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        body["error"],
        "no environment `qa` in repo `platform`; declared on its default branch: staging, production"
    );
    let (status, body) = call(
        &receiver,
        Some(TOKEN),
        r#"{"repo": "platform", "env": "staging"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `env`"),
        "{body}"
    );

    let (status, body) = call(
        &receiver,
        Some(TOKEN),
        r#"{"repo": "platform", "environment": "staging", "app": "api"}"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["jobs"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["jobs"][0]["app"], "api");

    // A second request is its own sync, not a duplicate of the first.
    let (status, body) = call(&receiver, Some(TOKEN), staging).await;
    assert_eq!(
        (status, body["jobs"].as_array().unwrap().len()),
        (202, 4),
        "{body}"
    );
    assert_eq!(emulator.queue_depth(&queue_url).await, 5);

    // Another receiver (or this one restarted) asked for the same sync: its own job too. Ids
    // were `api-<counter>`, the same on every receiver's first sync, and SQS dropped the
    // second for five minutes after the first, while the API answered with job ids.
    let api = r#"{"repo": "platform", "environment": "staging", "app": "api"}"#;
    for _ in 0..2 {
        let fresh = Receiver::start(&config, &emulator.aws).await;
        let (status, body) = call(&fresh, Some(TOKEN), api).await;
        assert_eq!(status, 202, "{body}");
    }
    assert_eq!(emulator.queue_depth(&queue_url).await, 7);
}

/// `GET /api/v1/previews` with `token`.
async fn get_previews(receiver: &Receiver, token: &str) -> (u16, serde_json::Value) {
    receiver.get("/api/v1/previews", token).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_tokens_do_only_what_their_scopes_allow_and_token_hashes_stay_admins() {
    let emulator = Emulator::start().await;
    let queue_url = emulator.create_queue("fleetsync.fifo").await;
    let repo = ConfigRepo::example(&emulator);
    let dir = tempfile::tempdir().unwrap();
    let digest = |token: &str| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token));
    let digests = dir.path().join("api-token-hashes");
    std::fs::write(&digests, digest(TOKEN)).unwrap();
    let extra = format!(
        "api:\n  tokenHashes: file:{}\n  tokens:\n    - {{ name: ci-staging, sha256: {}, scopes: [read, \"sync:staging\"] }}\n    - {{ name: deployer, sha256: {}, scopes: [\"sync:*\"] }}\n",
        digests.display(),
        digest("ci-token"),
        digest("deployer-token"),
    );
    let config = config(dir.path(), &repo.file_url(), &queue_url, &extra);
    let receiver = Receiver::start(&config, &emulator.aws).await;
    let staging = r#"{"repo": "platform", "environment": "staging"}"#;
    let production = r#"{"repo": "platform", "environment": "production"}"#;

    let (status, body) = call(&receiver, Some("ci-token"), staging).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = call(&receiver, Some("ci-token"), production).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error"],
        "token `ci-staging` may not do this: it needs scope `sync:production` (or admin), and has read, sync:staging"
    );
    assert_eq!(get_previews(&receiver, "ci-token").await.0, 200);

    // sync:* syncs anything and reads nothing.
    let (status, body) = call(&receiver, Some("deployer-token"), production).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = get_previews(&receiver, "deployer-token").await;
    assert_eq!(
        (status, &body["needed"]),
        (403, &serde_json::json!("read")),
        "{body}"
    );

    // A digest of api.tokenHashes is an admin token, as before scopes existed.
    let (status, body) = call(&receiver, Some(TOKEN), production).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(get_previews(&receiver, TOKEN).await.0, 200);
    assert_eq!(call(&receiver, Some("unknown"), staging).await.0, 401);

    // The description needs no token: a client generator has none yet.
    let response = reqwest::get(format!("{}/api/v1/openapi.json", receiver.url))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let document: serde_json::Value =
        serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    assert!(document["paths"]["/api/v1/sync"]["post"].is_object());
}
