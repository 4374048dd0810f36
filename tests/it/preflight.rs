//! Preflight against the emulator, which models IAM, Secrets Manager, SSM, EC2, CloudWatch Logs
//! and ECS clusters as AWS answers them. The emulator starts with what example-repo references
//! (scripts/example_account.py); each case removes one thing and expects the finding a user
//! would otherwise meet as a task that never starts.

use fleetsync::preflight::{Finding, Preflight};
use fleetsync::resolve::DesiredApp;

use crate::harness::*;

const EXEC_ROLE: &str = "ecs-exec-staging";

/// staging's apps from example-repo, resolved as the receiver would.
fn staging(emulator: &Emulator) -> Vec<DesiredApp> {
    let repo = ConfigRepo::example(emulator);
    let local = fleetsync::repo::Local::open(&repo.path()).unwrap();
    let head = repo.head("staging");
    fleetsync::resolve::resolve(
        &local.snapshot(head).unwrap(),
        "fleetsync.yaml",
        "staging",
        &head.to_string(),
    )
    .unwrap()
    .apps
}

async fn findings(emulator: &Emulator, app: &DesiredApp) -> Vec<String> {
    Preflight::new(&emulator.aws)
        .session("d-1")
        .check(app)
        .await
        .unwrap()
        .iter()
        .map(Finding::to_string)
        .collect()
}

/// Deletes the execution role's policy that lets it read staging's secrets.
async fn revoke_secret_reads(emulator: &Emulator) -> aws_sdk_iam::Client {
    let iam = aws_sdk_iam::Client::new(&emulator.aws);
    iam.delete_role_policy()
        .role_name(EXEC_ROLE)
        .policy_name("read-staging-secrets")
        .send()
        .await
        .unwrap();
    iam
}

async fn ready() -> (Emulator, DesiredApp) {
    let emulator = Emulator::start().await;
    emulator.create_clusters(&["staging"]).await;
    let api = staging(&emulator)
        .into_iter()
        .find(|a| a.name == "api")
        .unwrap();
    (emulator, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_repo_passes_preflight_in_a_provisioned_account() {
    let emulator = Emulator::start().await;
    emulator.create_clusters(&["staging"]).await;
    let preflight = Preflight::new(&emulator.aws);
    let mut session = preflight.session("d-1");
    for app in staging(&emulator) {
        assert_eq!(session.check(&app).await.unwrap(), [], "{}", app.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_cluster_subnet_or_security_group_is_named() {
    let emulator = Emulator::start().await;
    let mut api = staging(&emulator)
        .into_iter()
        .find(|a| a.name == "api")
        .unwrap();
    let vpc = &mut api.create_service["networkConfiguration"]["awsvpcConfiguration"];
    vpc["subnets"][1] = "subnet-0000000000000000a".into();
    vpc["securityGroups"][0] = "sg-0000000000000000b".into();
    assert_eq!(
        findings(&emulator, &api).await,
        [
            "app `api`: service.cluster: cluster `staging` does not exist; create it, or bind the environment `staging` to an existing cluster in the root app",
            "app `api`: service.networkConfiguration.awsvpcConfiguration.subnets: subnet `subnet-0000000000000000a` does not exist in this account and region",
            "app `api`: service.networkConfiguration.awsvpcConfiguration.securityGroups: security group `sg-0000000000000000b` does not exist in this account and region",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_role_that_cannot_read_the_secrets_is_explained() {
    let (emulator, api) = ready().await;
    revoke_secret_reads(&emulator).await;
    let found = findings(&emulator, &api).await;
    assert_eq!(found.len(), 3, "two secrets and one parameter: {found:#?}");
    assert_eq!(
        found[0],
        "app `api`: taskDefinition.containerDefinitions[0].secrets[0].valueFrom: execution role `ecs-exec-staging` cannot read secret `arn:aws:secretsmanager:us-east-1:123456789012:secret:staging/api/database-url`: secrets not injected at task start; grant secretsmanager:GetSecretValue on `arn:aws:secretsmanager:us-east-1:123456789012:secret:staging/api/database-url`"
    );
    assert!(
        found[2].contains("cannot read parameter `/staging/api/rate-limit-per-minute`")
            && found[2].contains("grant ssm:GetParameters on"),
        "{found:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_untrusting_role_is_named_with_its_field() {
    let (emulator, api) = ready().await;
    let iam = aws_sdk_iam::Client::new(&emulator.aws);
    iam.delete_role()
        .role_name("ecs-staging-app-api")
        .send()
        .await
        .unwrap();
    let ec2_trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    iam.update_assume_role_policy()
        .role_name(EXEC_ROLE)
        .policy_document(ec2_trust)
        .send()
        .await
        .unwrap();
    assert_eq!(
        findings(&emulator, &api).await,
        [
            "app `api`: taskDefinition.executionRoleArn: role `ecs-exec-staging` cannot be assumed by ecs-tasks.amazonaws.com, so tasks cannot use it; add that service principal to its trust policy",
            "app `api`: taskDefinition.taskRoleArn: role `ecs-staging-app-api` does not exist; create it or fix the ARN `arn:aws:iam::123456789012:role/ecs-staging-app-api`",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secrets_parameters_and_log_groups_are_named_without_reading_values() {
    let (emulator, api) = ready().await;
    emulator.delete_secret("staging/api/stripe-api-key").await;
    aws_sdk_ssm::Client::new(&emulator.aws)
        .delete_parameter()
        .name("/staging/api/rate-limit-per-minute")
        .send()
        .await
        .unwrap();
    aws_sdk_cloudwatchlogs::Client::new(&emulator.aws)
        .delete_log_group()
        .log_group_name("/ecs/staging/api")
        .send()
        .await
        .unwrap();
    assert_eq!(
        findings(&emulator, &api).await,
        [
            "app `api`: taskDefinition.containerDefinitions[0].secrets[1].valueFrom: secret `arn:aws:secretsmanager:us-east-1:123456789012:secret:staging/api/stripe-api-key` does not exist; create it (fleetsync never copies or reads secret values)",
            "app `api`: taskDefinition.containerDefinitions[0].secrets[2].valueFrom: parameter `/staging/api/rate-limit-per-minute` does not exist; create it (fleetsync never copies or reads secret values)",
            "app `api`: taskDefinition.containerDefinitions[0].logConfiguration.options.awslogs-group: log group `/ecs/staging/api` does not exist, and tasks fail to start without it; create it or set `awslogs-create-group: \"true\"` (the execution role then needs logs:CreateLogGroup)",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_written_as_aws_recommends_is_read_against_the_full_secret_arn() {
    let (emulator, api) = ready().await;
    let iam = aws_sdk_iam::Client::new(&emulator.aws);
    // Exact grants with the `-??????` suffix pattern: they match the secrets' real ARNs, not the
    // suffix-less references in the task definition.
    let secret = |name: &str| {
        format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:staging/api/{name}-??????")
    };
    let document = serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
         "Resource": [secret("database-url"), secret("stripe-api-key")]},
        {"Effect": "Allow", "Action": "ssm:GetParameters",
         "Resource": "arn:aws:ssm:us-east-1:123456789012:parameter/staging/api/rate-limit-per-minute"},
    ]});
    iam.put_role_policy()
        .role_name(EXEC_ROLE)
        .policy_name("read-staging-secrets")
        .policy_document(document.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(findings(&emulator, &api).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_of_one_push_ask_aws_once_for_what_they_reference() {
    let (emulator, api) = ready().await;
    let preflight = Preflight::new(&emulator.aws);
    let before = emulator.calls().len();
    assert_eq!(preflight.session("push-1").check(&api).await.unwrap(), []);
    let first = emulator.calls().split_off(before);
    for read in [
        "iam GetRole",
        "secretsmanager DescribeSecret",
        "ec2 DescribeSubnets",
    ] {
        assert!(first.iter().any(|c| c == read), "{read} in {first:?}");
    }

    // The push's next jobs, each with its own session, as the worker runs them.
    let before = emulator.calls().len();
    for _ in 0..3 {
        assert_eq!(preflight.session("push-1").check(&api).await.unwrap(), []);
    }
    assert_eq!(emulator.calls().split_off(before), Vec::<String>::new());

    // The next push asks again: what was deleted since is refused before any write.
    emulator.delete_secret("staging/api/stripe-api-key").await;
    let refused = preflight.session("push-2").check(&api).await.unwrap();
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert!(
        refused[0].message.contains("does not exist"),
        "{refused:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_added_after_a_refusal_is_seen_by_the_next_job_of_the_same_push() {
    let (emulator, api) = ready().await;
    let iam = revoke_secret_reads(&emulator).await;
    let preflight = Preflight::new(&emulator.aws);
    let before = emulator.calls().len();
    let refused = preflight.session("push-1").check(&api).await.unwrap();
    assert_eq!(refused.len(), 3, "{refused:#?}");
    let roles_read = emulator.calls().split_off(before);
    let roles_read = roles_read.iter().filter(|c| *c == "iam GetRole").count();
    assert_eq!(
        roles_read, 2,
        "nothing was remembered, so the refusal's reads were fresh: each role read once"
    );

    // The role the refusal read is remembered; the grant added since must still count.
    let grant = serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["secretsmanager:GetSecretValue", "ssm:GetParameters"],
         "Resource": "*"},
    ]});
    iam.put_role_policy()
        .role_name(EXEC_ROLE)
        .policy_name("read-everything")
        .policy_document(grant.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.session("push-1").check(&api).await.unwrap(), []);
}
