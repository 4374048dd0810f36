//! Operating fleetsync through its API, answered from ECS alone: who deployed what, from which
//! commit and why (the audit tags on services and task definition revisions), an app's
//! history, and a rollback that reconcile does not undo. Against the emulator; ECS rollouts
//! and their failures are scripts/emulator.py's model of the deployment circuit breaker.

use std::time::Duration;

use serde_json::json;

use fleetsync::dispatch::{Outcome, Trigger, TriggerKind};

use crate::harness::*;

const LIMIT: Duration = Duration::from_secs(60);
/// Tokens by name: alice may do anything, bob may roll staging back, carol may read.
const ALICE: &str = "fs_test_alice_7d1e";
const BOB: &str = "fs_test_bob_3a90";
const CAROL: &str = "fs_test_carol_5c2b";

struct Setup {
    emulator: Emulator,
    repo: ConfigRepo,
    queue_url: String,
    config: fleetsync::config::Config,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let emulator = Emulator::start().await;
    let queue_url = emulator.create_queue("fleetsync.fifo").await;
    emulator.create_clusters(&["staging", "production"]).await;
    let repo = ConfigRepo::example(&emulator);
    let dir = tempfile::tempdir().unwrap();
    let digest = |t: &str| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(t));
    let api = format!(
        "api:\n  tokens:\n    - {{ name: alice, sha256: {}, scopes: [admin] }}\n    - {{ name: bob, sha256: {}, scopes: [read, \"rollback:staging\"] }}\n    - {{ name: carol, sha256: {}, scopes: [read] }}\n",
        digest(ALICE),
        digest(BOB),
        digest(CAROL)
    );
    let config = config(dir.path(), &repo.file_url(), &queue_url, &api);
    Setup {
        emulator,
        repo,
        queue_url,
        config,
        _dir: dir,
    }
}

impl Setup {
    async fn drained(&self) {
        eventually(LIMIT, "the queue to drain", || async {
            (self.emulator.queue_depth(&self.queue_url).await == 0).then_some(())
        })
        .await;
    }

    /// Pushes staging's head and waits for its api to run it; returns the service.
    async fn pushed(&self, receiver: &Receiver, delivery: &str) -> Live {
        let head = self.repo.head("staging");
        let (status, body) = receiver.push("staging", head, delivery).await;
        assert_eq!(status, 202, "{body}");
        let live = self.api_at(&head.to_string()).await;
        self.drained().await;
        live
    }

    async fn api_at(&self, commit: &str) -> Live {
        eventually(LIMIT, &format!("staging/api at {commit}"), || async {
            self.emulator
                .service("staging", "api")
                .await
                .filter(|s| s.revision() == commit)
        })
        .await
    }

    /// Commits an api image tag to staging.
    fn commit_api_image(&self, version: &str) -> git2::Oid {
        self.repo.commit_api_image("staging", version)
    }

    /// The tags of one task definition revision, as ECS keeps them.
    async fn revision_tags(&self, revision: &str) -> std::collections::HashMap<String, String> {
        let out = self
            .emulator
            .ecs()
            .describe_task_definition()
            .task_definition(revision)
            .include(aws_sdk_ecs::types::TaskDefinitionField::Tags)
            .send()
            .await
            .unwrap();
        out.tags()
            .iter()
            .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
            .collect()
    }

    async fn reconcile(&self) -> fleetsync::dispatch::Reconciled {
        let dispatcher =
            fleetsync::dispatch::Dispatcher::from_config(&self.config, &self.emulator.aws).unwrap();
        dispatcher.reconcile(&dispatcher.repos[0]).await.unwrap()
    }
}

fn audit(tags: &std::collections::HashMap<String, String>) -> [&str; 4] {
    ["trigger", "actor", "commit-author", "reason"].map(|k| {
        tags.get(&format!("fleetsync:{k}"))
            .map_or("(none)", String::as_str)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_deployment_says_on_ecs_who_asked_why_and_who_wrote_the_commit() {
    let s = setup().await;
    let receiver = Receiver::start(&s.config, &s.emulator.aws).await;
    let _worker = start_worker(&s.config, &s.emulator.aws);
    s.pushed(&receiver, "initial").await;

    // A push: the pusher (the fixture's sender), the head commit's author and first line, in
    // characters ECS takes (it refuses `(`, `#` and `,` in tag values).
    s.repo.commit_with_message(
        "staging",
        "apps/api/taskdef.json",
        "Bump api to 1.5.0 (#42): ünïcode, naïve\n\nThe body stays out.",
        |t| Some(t.unwrap().replace("api:1.4.2", "api:1.5.0")),
    );
    let api = s.pushed(&receiver, "bump").await;
    let expected = [
        "push",
        "binkkatal",
        "fleetsync tests",
        "Bump api to 1.5.0 42 : ünïcode naïve",
    ];
    assert_eq!(audit(&api.tags), expected);
    assert_eq!(api.task_definition, "staging-api:2");
    assert_eq!(audit(&s.revision_tags("staging-api:2").await), expected);

    // The API: the token's name and the reason given; `force` starts a new deployment of the
    // live spec without registering a revision.
    let deployment = api.tags["fleetsync:deployment"].clone();
    let (status, body) = receiver
        .api_post(
            "/api/v1/sync",
            ALICE,
            &json!({"repo": "platform", "environment": "staging", "apps": ["api"], "reason": "restart: rotate the DB password", "force": true}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let forced = eventually(LIMIT, "a forced deployment of api", || async {
        s.emulator
            .service("staging", "api")
            .await
            .filter(|a| a.tags["fleetsync:deployment"] != deployment)
    })
    .await;
    assert_eq!(
        audit(&forced.tags),
        [
            "api",
            "alice",
            "fleetsync tests",
            "restart: rotate the DB password"
        ]
    );
    assert_eq!(forced.task_definition, "staging-api:2");
    assert_eq!(
        s.emulator.revisions("staging-api").await,
        ["staging-api:1", "staging-api:2"]
    );
    let (status, body) = receiver
        .api_post(
            "/api/v1/sync",
            ALICE,
            &json!({"repo": "platform", "environment": "staging", "apps": ["api", "nope"]}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        body["error"],
        "no app `nope` in environment `staging`; it lists: accounts, api, web, fleetsync-worker"
    );
    s.drained().await;

    // Reconcile: what it found drifted. Someone moved the service in the console.
    s.emulator
        .ecs()
        .update_service()
        .cluster("staging")
        .service("api")
        .task_definition("staging-api:1")
        .send()
        .await
        .unwrap();
    let reconciled = s.reconcile().await;
    let staging: Vec<&str> = reconciled
        .enqueued
        .iter()
        .filter(|e| e.environment == "staging")
        .map(|e| e.app.as_str())
        .collect();
    assert_eq!(staging, ["api"]);
    // The worker updates the service, then tags it: wait for the tags of a new deployment, not
    // for the task definition alone.
    let healed = eventually(LIMIT, "api redeployed by reconcile", || async {
        s.emulator
            .service("staging", "api")
            .await
            .filter(|a| a.tags["fleetsync:deployment"] != forced.tags["fleetsync:deployment"])
    })
    .await;
    assert_eq!(healed.task_definition, "staging-api:2");
    assert_eq!(
        audit(&healed.tags),
        [
            "reconcile",
            "fleetsync",
            "fleetsync tests",
            "the service runs another task definition than fleetsync set"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lists_each_deployment_newest_first_with_how_its_rollout_ended() {
    let s = setup().await;
    let receiver = Receiver::start(&s.config, &s.emulator.aws).await;
    let _worker = start_worker(&s.config, &s.emulator.aws);
    let mut commits = vec![s.pushed(&receiver, "initial").await.revision().to_owned()];
    for version in ["1.5.0", "1.6.0"] {
        s.commit_api_image(version);
        commits.push(s.pushed(&receiver, version).await.revision().to_owned());
    }
    // The emulator fails this image's deployment, as ECS's circuit breaker would; with ECS's
    // own rollback off, fleetsync rolls back.
    s.repo.commit("staging", "apps/api/app.yaml", |t| {
        Some(t.unwrap().replace("rollback: true", "rollback: false"))
    });
    let broken = s.commit_api_image("broken");
    let (status, _) = receiver.push("staging", broken, "broken").await;
    assert_eq!(status, 202);
    eventually(LIMIT, "the broken rollout rolled back", || async {
        s.emulator
            .service("staging", "api")
            .await
            .filter(|a| a.tags.contains_key("fleetsync:failure"))
    })
    .await;
    s.drained().await;

    let (status, body) = receiver
        .get("/api/v1/environments/staging/apps/api/history", CAROL)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["family"], &body["service"]),
        (&json!("staging-api"), &json!("api"))
    );
    let deployments = body["deployments"].as_array().unwrap();
    let seen: Vec<_> = deployments
        .iter()
        .map(|d| {
            let text = |k: &str| d[k].as_str().unwrap_or("(none)").to_owned();
            (
                d["revision"].as_i64().unwrap(),
                text("commit"),
                text("result"),
                d["live"].as_bool().unwrap(),
                text("trigger"),
            )
        })
        .collect();
    let row = |n, commit: &str, result: &str, live| {
        (
            n,
            commit.to_owned(),
            result.to_owned(),
            live,
            "push".to_owned(),
        )
    };
    assert_eq!(
        seen,
        [
            row(4, &broken.to_string(), "rolled-back", false),
            row(3, &commits[2], "completed", true),
            row(2, &commits[1], "completed", false),
            row(1, &commits[0], "completed", false),
        ]
    );
    assert!(
        deployments[0]["registeredAt"]
            .as_str()
            .unwrap()
            .contains('T')
    );

    let (status, body) = receiver
        .get(
            "/api/v1/environments/staging/apps/api/history?limit=2",
            CAROL,
        )
        .await;
    assert_eq!(
        (status, body["deployments"].as_array().unwrap().len()),
        (200, 2)
    );
    let (status, body) = receiver
        .get(
            "/api/v1/environments/staging/apps/api/history?limit=0",
            CAROL,
        )
        .await;
    assert_eq!((status, &body["field"]), (400, &json!("limit")));
    let (status, body) = receiver
        .get("/api/v1/environments/staging/apps/nope/history", CAROL)
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = receiver
        .get(
            "/api/v1/environments/staging/apps/api/history",
            "not-a-token",
        )
        .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_holds_until_git_moves_on_and_reconcile_does_not_undo_it() {
    let s = setup().await;
    let receiver = Receiver::start(&s.config, &s.emulator.aws).await;
    let _worker = start_worker(&s.config, &s.emulator.aws);
    let good = s.pushed(&receiver, "initial").await.revision().to_owned();
    let bad = s.commit_api_image("1.5.0");
    s.pushed(&receiver, "bad").await;

    let rollback = |reason: &str| json!({"repo": "platform", "environment": "staging", "app": "api", "reason": reason});
    // Only a token with rollback:staging (or admin), and only with a reason.
    let (status, body) = receiver
        .api_post("/api/v1/rollback", CAROL, &rollback("leaks memory"))
        .await;
    assert_eq!((status, &body["needed"]), (403, &json!("rollback:staging")));
    let (status, body) = receiver
        .api_post("/api/v1/rollback", BOB, &rollback(" "))
        .await;
    assert_eq!((status, &body["field"]), (400, &json!("reason")));
    let mut to_live = rollback("leaks memory");
    to_live["to"] = json!(2);
    let (status, body) = receiver.api_post("/api/v1/rollback", BOB, &to_live).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "api already runs staging-api:2");

    let (status, body) = receiver
        .api_post("/api/v1/rollback", BOB, &rollback("1.5.0 leaks memory"))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (
            &body["rollback"]["to"],
            &body["rollback"]["commit"],
            &body["rollback"]["from"]
        ),
        (
            &json!("staging-api:1"),
            &json!(good),
            &json!(bad.to_string())
        )
    );
    // A copy of revision 1, carrying the rollback's own trail.
    let rolled_back = s.api_at(&good).await;
    assert_eq!(rolled_back.task_definition, "staging-api:3");
    assert_eq!(
        rolled_back.tags["fleetsync:rolled-back-from"],
        bad.to_string()
    );
    assert_eq!(audit(&rolled_back.tags)[..2], ["rollback", "bob"]);
    assert_eq!(audit(&rolled_back.tags)[3], "1.5.0 leaks memory");
    s.drained().await;
    let (status, body) = receiver
        .get("/api/v1/environments/staging/apps/api", CAROL)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (&body["sync"], &body["health"], &body["rolledBackFrom"]),
        (
            &json!("OutOfSync"),
            &json!("Healthy"),
            &json!(bad.to_string())
        )
    );
    assert_eq!(body["lastSync"]["trigger"], "rollback");
    let (_, history) = receiver
        .get(
            "/api/v1/environments/staging/apps/api/history?limit=1",
            CAROL,
        )
        .await;
    let newest = &history["deployments"][0];
    assert_eq!(
        (
            &newest["revision"],
            &newest["trigger"],
            &newest["result"],
            &newest["commit"]
        ),
        (
            &json!(3),
            &json!("rollback"),
            &json!("completed"),
            &json!(good)
        )
    );

    // Neither reconcile nor a redelivered push of the commit rolled away from brings it back.
    let reconciled = s.reconcile().await;
    assert!(
        reconciled
            .enqueued
            .iter()
            .all(|e| e.environment != "staging"),
        "{:?}",
        reconciled.enqueued
    );
    assert_eq!(reconciled.quarantined, 1);
    // The redelivery reaches a receiver that never saw the push: it enqueues api again.
    let other = fleetsync::dispatch::Dispatcher::from_config(&s.config, &s.emulator.aws).unwrap();
    let pusher = Trigger::new(TriggerKind::Push, "binkkatal");
    let pushed = other
        .push(
            &other.repos[0],
            "staging",
            (&good, &bad.to_string()),
            ("bad-again", &pusher),
        )
        .await
        .unwrap();
    match pushed.outcome {
        Outcome::Enqueued { jobs, .. } => assert!(jobs.iter().any(|j| j.app == "api")),
        other => panic!("{other:?}"),
    }
    s.drained().await;
    let still = s.emulator.service("staging", "api").await.unwrap();
    assert_eq!(
        (still.task_definition.as_str(), still.revision()),
        ("staging-api:3", good.as_str())
    );

    // A newer commit does.
    let fixed = s.commit_api_image("1.5.1");
    let fixed_live = s.pushed(&receiver, "fixed").await;
    assert_eq!(fixed_live.revision(), fixed.to_string());
    assert_eq!(fixed_live.tags["fleetsync:rolled-back-from"], "");
    assert_eq!(audit(&fixed_live.tags)[0], "push");
}

/// The real binary's operator verbs against the receiver's API.
struct Cli<'a> {
    server: &'a str,
    token: Option<&'a str>,
}

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Cli<'_> {
    async fn run(&self, args: &[&str], stdin: &str) -> Ran {
        use tokio::io::AsyncWriteExt;
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetsync"));
        command
            .args(args)
            .env("FLEETSYNC_SERVER", self.server)
            .env_remove("FLEETSYNC_TOKEN")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(token) = self.token {
            command.env("FLEETSYNC_TOKEN", token);
        }
        let mut child = command.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        let out = child.wait_with_output().await.unwrap();
        Ran {
            code: out.status.code().unwrap(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_syncs_waits_for_and_rolls_back_through_the_api() {
    let s = setup().await;
    let receiver = Receiver::start(&s.config, &s.emulator.aws).await;
    let _worker = start_worker(&s.config, &s.emulator.aws);
    let good = s.pushed(&receiver, "initial").await.revision().to_owned();
    s.commit_api_image("1.5.0");
    s.pushed(&receiver, "next").await;
    let alice = Cli {
        server: &receiver.url,
        token: Some(ALICE),
    };

    let hashed = alice.run(&["token", "hash"], "secret\n").await;
    assert_eq!(
        (hashed.code, hashed.stdout.trim()),
        (
            0,
            "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
        )
    );
    let empty = alice.run(&["token", "hash"], "").await;
    assert_eq!(empty.code, 2, "{}", empty.stderr);

    let status = alice.run(&["status"], "").await;
    assert_eq!(status.code, 0, "{}", status.stderr);
    let staging = status
        .stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("staging"))
        .unwrap_or_else(|| panic!("{}", status.stdout));
    assert!(staging.starts_with("platform"), "{staging}");
    assert!(staging.ends_with("Healthy:4"), "{staging}");
    let apps = alice
        .run(&["status", "--env", "staging", "-o", "json"], "")
        .await;
    let apps: serde_json::Value = serde_json::from_str(&apps.stdout).unwrap();
    assert_eq!(apps["apps"].as_array().unwrap().len(), 4);

    let force_and_wait = [
        "sync",
        "--env",
        "staging",
        "--app",
        "api",
        "--force",
        "--reason",
        "cli restart",
        "--wait",
        "--timeout",
        "60s",
    ];
    let synced = alice.run(&force_and_wait, "").await;
    assert_eq!(synced.code, 0, "{}{}", synced.stdout, synced.stderr);
    assert_eq!(synced.stdout, "enqueued 1 job(s) for staging: api\n");
    let api = s.emulator.service("staging", "api").await.unwrap();
    assert_eq!(audit(&api.tags)[3], "cli restart");
    // Forced again, with the same trigger and reason: `--wait` follows the new deployment to its
    // end, not the one before it, which looks the same in every tag.
    let again = alice.run(&force_and_wait, "").await;
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    let (id, state) = s
        .emulator
        .service("staging", "api")
        .await
        .unwrap()
        .primary
        .unwrap();
    assert_ne!(Some(&id), api.primary.as_ref().map(|(id, _)| id));
    assert_eq!(state, "COMPLETED");

    let rolled = alice
        .run(
            &[
                "rollback",
                "--env",
                "staging",
                "--app",
                "api",
                "--reason",
                "from the cli",
                "--wait",
                "--timeout",
                "60s",
            ],
            "",
        )
        .await;
    assert_eq!(rolled.code, 0, "{}{}", rolled.stdout, rolled.stderr);
    assert!(
        rolled.stdout.starts_with(&format!(
            "rolling api back to staging-api:1 (commit {})",
            &good[..7]
        )),
        "{}",
        rolled.stdout
    );
    let history = alice
        .run(&["history", "--env", "staging", "--app", "api"], "")
        .await;
    assert_eq!(history.code, 0, "{}", history.stderr);
    let lines: Vec<&str> = history.stdout.lines().collect();
    assert!(lines[0].starts_with("REVISION"), "{}", history.stdout);
    let newest: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        (newest[0], newest[1], newest[2], newest[3], newest[4]),
        ("3*", &good[..7], "completed", "rollback", "alice")
    );

    // A rollout that fails: `--wait` exits 1 and says why.
    s.repo.commit("staging", "apps/api/app.yaml", |t| {
        Some(t.unwrap().replace("rollback: true", "rollback: false"))
    });
    s.commit_api_image("broken");
    let failed = alice
        .run(
            &[
                "sync",
                "--env",
                "staging",
                "--app",
                "api",
                "--wait",
                "--timeout",
                "60s",
            ],
            "",
        )
        .await;
    assert_eq!(failed.code, 1, "{}{}", failed.stdout, failed.stderr);
    assert!(
        failed.stderr.contains(
            "api failed: RolloutFailed (ImageNotFound: the image or its tag does not exist in the registry. Fix: "
        ),
        "{}",
        failed.stderr
    );

    // Refusals exit 2 with the API's reason.
    let carol = Cli {
        server: &receiver.url,
        token: Some(CAROL),
    };
    let refused = carol.run(&["sync", "--env", "staging"], "").await;
    assert_eq!(refused.code, 2);
    assert!(
        refused.stderr.contains("it needs scope `sync:staging`"),
        "{}",
        refused.stderr
    );
    let anonymous = Cli {
        server: &receiver.url,
        token: None,
    };
    let refused = anonymous.run(&["status"], "").await;
    assert_eq!(refused.code, 2);
    assert!(
        refused.stderr.contains("set FLEETSYNC_TOKEN"),
        "{}",
        refused.stderr
    );
}
