//! deploy/cloudformation.yaml: no wildcard IAM action, every AWS call the code makes is granted
//! to the role that makes it, and the task definitions register against the emulator.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml::Value;

use crate::harness::Emulator;

fn template() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/cloudformation.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn resources(template: &Value, kind: &str) -> Vec<(String, Value)> {
    let Value::Mapping(resources) = &template["Resources"] else {
        panic!("no Resources")
    };
    resources
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some(kind))
        .map(|(name, r)| (name.as_str().unwrap().to_owned(), r["Properties"].clone()))
        .collect()
}

/// IAM actions of the AWS operations called in `src/<file>`: every `.client.<operation>()`.
/// Batch operations are authorised by their single-message action.
fn code_actions(file: &str, service: &str) -> BTreeSet<String> {
    calls(file, "client", service)
}

/// IAM actions of every `.<receiver>.<operation>()` in `src/<file>`.
fn calls(file: &str, receiver: &str, service: &str) -> BTreeSet<String> {
    let source =
        std::fs::read_to_string(format!("{}/src/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let joined: String = source.split_whitespace().collect();
    let needle = format!(".{receiver}.");
    joined
        .match_indices(&needle)
        .map(|(i, _)| {
            let op: String = joined[i + needle.len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let pascal: String = op
                .split('_')
                .map(|w| w[..1].to_uppercase() + &w[1..])
                .collect();
            format!("{service}:{}", pascal.trim_end_matches("Batch"))
        })
        .collect()
}

/// Actions each role grants, by logical id.
fn granted(template: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut roles = BTreeMap::new();
    for (name, role) in resources(template, "AWS::IAM::Role") {
        let actions: &mut BTreeSet<String> = roles.entry(name).or_default();
        for policy in role["Policies"].as_sequence().unwrap() {
            for statement in policy["PolicyDocument"]["Statement"].as_sequence().unwrap() {
                match &statement["Action"] {
                    Value::String(a) => {
                        actions.insert(a.clone());
                    }
                    Value::Sequence(list) => {
                        actions.extend(list.iter().map(|a| a.as_str().unwrap().to_owned()))
                    }
                    other => panic!("unexpected Action {other:?}"),
                }
            }
        }
    }
    roles
}

#[test]
fn no_iam_action_is_a_wildcard() {
    for (role, actions) in granted(&template()) {
        for action in actions {
            assert!(
                !action.contains('*'),
                "{role} grants the wildcard action {action}"
            );
        }
    }
}

#[test]
fn each_role_is_granted_exactly_the_calls_its_process_makes() {
    let roles = granted(&template());
    let ecs = code_actions("ecs/mod.rs", "ecs");
    let sqs = code_actions("queue/mod.rs", "sqs");
    assert!(
        ecs.contains("ecs:RegisterTaskDefinition") && sqs.contains("sqs:ReceiveMessage"),
        "{ecs:?} {sqs:?}"
    );

    // The receiver sends jobs (dispatch → queue::Queue::send), counts the dead-letter queue
    // (queue::Queue::dead_letters) and, to reconcile and show status, reads services
    // (dispatch → ecs::Ecs::describe_services), and for history and rollbacks an app's task
    // definition revisions (ecs::Ecs::revisions); for previews it keeps their registry on the
    // preview cluster's tags and lists clusters and services to sweep; nothing else. The worker
    // reads the redrive policy too (GetQueueAttributes), but never sends or looks up another
    // queue, nor lists clusters.
    let receiver_only = ["sqs:GetQueueUrl", "sqs:SendMessage", "ecs:ListClusters"];
    let receiver_ecs = [
        "ecs:DescribeClusters",
        "ecs:DescribeServices",
        "ecs:DescribeTaskDefinition",
        "ecs:ListClusters",
        "ecs:ListServices",
        "ecs:ListTaskDefinitions",
        "ecs:TagResource",
        "ecs:UntagResource",
    ];
    let receiver_sqs = [
        "sqs:GetQueueAttributes",
        "sqs:GetQueueUrl",
        "sqs:SendMessage",
    ];
    let receiver = &roles["ReceiverTaskRole"];
    assert_eq!(
        receiver.iter().collect::<Vec<_>>(),
        [&receiver_ecs[..], &receiver_sqs].concat()
    );
    assert!(
        receiver_sqs.iter().all(|a| sqs.contains(*a))
            && receiver_ecs.iter().all(|a| ecs.contains(*a)),
        "{sqs:?} {ecs:?}"
    );
    // Whitespace dropped: rustfmt breaks long call chains over lines.
    let dispatch: String = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/dispatch"))
        .unwrap()
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
        .collect::<String>()
        .split_whitespace()
        .collect();
    let ecs_calls: Vec<_> = dispatch
        .match_indices("self.ecs.")
        .map(|(i, _)| dispatch[i + 9..].chars().take(32).collect::<String>())
        .collect();
    assert!(!ecs_calls.is_empty(), "reconcile and status read services");
    let receiver_calls = [
        "describe_services(",
        "describe_service(",
        "describe_task_definition(",
        "revisions(",
        "list_services(",
        "describe_clusters(",
        "list_clusters(",
        "cluster_tags(",
        "tag_resource(",
        "untag_resource(",
    ];
    assert!(
        ecs_calls
            .iter()
            .all(|c| receiver_calls.iter().any(|r| c.starts_with(r))),
        "the receiver calls ECS beyond what its role grants: {ecs_calls:?}"
    );

    // The worker makes every other call: all ECS calls, and the rest of the queue's.
    let worker = &roles["WorkerTaskRole"];
    let mut needed: BTreeSet<_> = ecs
        .iter()
        .chain(&sqs)
        .filter(|a| !receiver_only.contains(&a.as_str()))
        .cloned()
        .collect();
    needed.insert("iam:PassRole".into()); // RegisterTaskDefinition names task and execution roles
    // Preflight's reads, one SDK client per service in src/preflight/aws.rs.
    for (receiver, service) in [
        ("iam", "iam"),
        ("secrets", "secretsmanager"),
        ("ssm", "ssm"),
        ("ec2", "ec2"),
        ("logs", "logs"),
    ] {
        let found = calls("preflight/aws.rs", receiver, service);
        assert!(
            !found.is_empty(),
            "no {service} call found in src/preflight/aws.rs"
        );
        needed.extend(found);
    }
    // Preview ingress: one ELB client in src/ingress.rs; tags given to CreateTargetGroup and
    // CreateRule need AddTags as well.
    let ingress = calls("ingress.rs", "client", "elasticloadbalancing");
    assert!(
        ingress.contains("elasticloadbalancing:CreateRule"),
        "{ingress:?}"
    );
    needed.extend(ingress);
    needed.insert("elasticloadbalancing:AddTags".into());
    let worker_aws: BTreeSet<_> = worker.iter().cloned().collect();
    assert_eq!(
        worker_aws, needed,
        "worker role vs the calls in src/ecs, src/queue and src/preflight"
    );
}

/// CloudFormation's PascalCase task definition properties as RegisterTaskDefinition's
/// camelCase input, with intrinsic functions replaced by plausible values.
fn to_api(value: &Value, in_options: bool) -> serde_json::Value {
    match value {
        Value::Mapping(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let k = k.as_str().unwrap();
                    let key = if in_options {
                        k.to_owned()
                    } else {
                        k[..1].to_lowercase() + &k[1..]
                    };
                    (key, to_api(v, k == "Options"))
                })
                .collect(),
        ),
        Value::Sequence(items) => {
            serde_json::Value::Array(items.iter().map(|v| to_api(v, false)).collect())
        }
        Value::Tagged(tagged) => {
            let target = tagged.value.as_str().unwrap_or_default();
            serde_json::Value::String(match tagged.tag.to_string().as_str() {
                "!GetAtt" => format!(
                    "arn:aws:iam::123456789012:role/{}",
                    target.trim_end_matches(".Arn")
                ),
                "!Ref" if target == "Image" => {
                    "123456789012.dkr.ecr.us-east-1.amazonaws.com/fleetsync:test".into()
                }
                "!Ref" if target == "AWS::Region" => "us-east-1".into(),
                "!Ref" if target == "WebhookSecret" || target == "ApiTokenHashes" => {
                    "arn:aws:secretsmanager:us-east-1:123456789012:secret:fleetsync-AbCdEf".into()
                }
                "!Sub" => target.replace("${", "<").replace('}', ">"),
                _ => format!("/ecs/fleetsync/{target}"),
            })
        }
        Value::Number(n) => serde_json::to_value(n).unwrap(),
        Value::String(s) => serde_json::Value::String(s.clone()),
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Null => serde_json::Value::Null,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_definitions_register_against_the_emulator() {
    let emulator = Emulator::start().await;
    let ecs = fleetsync::ecs::Ecs::new(&emulator.aws);
    let definitions = resources(&template(), "AWS::ECS::TaskDefinition");
    assert_eq!(definitions.len(), 2);
    for (name, properties) in definitions {
        let serde_json::Value::Object(input) = to_api(&properties, false) else {
            panic!("{name}")
        };
        let arn = ecs
            .register_task_definition(&input)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let family = input["family"].as_str().unwrap();
        assert!(
            arn.ends_with(&format!("task-definition/{family}:1")),
            "{arn}"
        );
    }
}

/// The text of an intrinsic function (`!Ref X`, `!Sub ...`).
fn tagged(value: &Value) -> Option<&str> {
    match value {
        Value::Tagged(t) => t.value.as_str(),
        _ => None,
    }
}

/// The receiver's API reads token digests from Secrets Manager, injected at task start, and its
/// config points the API at them; the default digest matches no token.
#[test]
fn the_receiver_gets_its_api_token_digests_from_secrets_manager() {
    let template = template();
    let definitions = resources(&template, "AWS::ECS::TaskDefinition");
    let (_, receiver) = definitions
        .iter()
        .find(|(name, _)| name == "ReceiverTaskDefinition")
        .unwrap();
    let container = &receiver["ContainerDefinitions"][0];
    let injected = container["Secrets"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|s| s["Name"].as_str() == Some("FLEETSYNC_API_TOKEN_HASHES"))
        .expect("the digests are injected");
    assert_eq!(tagged(&injected["ValueFrom"]), Some("ApiTokenHashes"));
    let config = tagged(&container["Environment"][0]["Value"]).unwrap();
    assert!(
        config.contains("tokenHashes: env:FLEETSYNC_API_TOKEN_HASHES"),
        "{config}"
    );

    let (_, secret) = resources(&template, "AWS::SecretsManager::Secret")
        .into_iter()
        .find(|(name, _)| name == "ApiTokenHashes")
        .unwrap();
    let placeholder = secret["SecretString"].as_str().unwrap();
    assert!(
        fleetsync::api::TokenHashes::parse(placeholder).is_ok(),
        "the placeholder parses, so the receiver starts"
    );

    let statements = &template["Resources"]["ReceiverExecutionRole"]["Properties"]["Policies"][0]["PolicyDocument"]
        ["Statement"];
    let readable: Vec<_> = statements
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|s| s["Action"][0].as_str() == Some("secretsmanager:GetSecretValue"))
        .flat_map(|s| s["Resource"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|r| tagged(&r).map(str::to_owned))
        .collect();
    assert_eq!(readable, ["WebhookSecret", "ApiTokenHashes"]);
}

/// The FLEETSYNC_CONFIG a task definition of the template passes its container, with the
/// template's `${…}` filled in from the parameters' defaults (and the stack's own resources
/// stubbed), parsed as `serve` and `worker` parse it.
fn shipped_config(definition: &str) -> fleetsync::config::Config {
    let template = template();
    let definitions = resources(&template, "AWS::ECS::TaskDefinition");
    let (_, task) = definitions
        .iter()
        .find(|(name, _)| name == definition)
        .unwrap();
    let mut text = tagged(&task["ContainerDefinitions"][0]["Environment"][0]["Value"])
        .unwrap()
        .to_owned();
    let Value::Mapping(parameters) = &template["Parameters"] else {
        panic!("no Parameters")
    };
    for (name, parameter) in parameters {
        if let Some(default) = parameter["Default"].as_u64() {
            text = text.replace(
                &format!("${{{}}}", name.as_str().unwrap()),
                &default.to_string(),
            );
        }
    }
    let text = text
        .replace("${JobQueue}", "https://sqs/q.fifo")
        .replace("${ConfigRepoName}", "platform")
        .replace(
            "${ConfigRepoUrl}",
            "https://github.com/acme/platform-config",
        );
    fleetsync::config::Config::parse(std::path::Path::new("FLEETSYNC_CONFIG"), &text).unwrap()
}

fn default_of(name: &str) -> f64 {
    template()["Parameters"][name]["Default"].as_u64().unwrap() as f64
}

/// Behind the load balancer every peer address is one of its nodes: the shipped receiver config
/// must key its limits on the client the balancer names, or one client's failures would
/// rate-limit every Git host delivery through that node.
#[test]
fn the_receiver_behind_the_load_balancer_trusts_its_forwarded_for() {
    let config = shipped_config("ReceiverTaskDefinition");
    assert!(config.webhooks.trust_forwarded_for);
}

/// Four workers each spending their own ECS budget sent four times what the account allows:
/// the shipped worker config divides the account's budget by the most workers that run.
#[test]
fn the_workers_share_one_account_budget() {
    let worker = shipped_config("WorkerTaskDefinition").worker;
    let workers = default_of("WorkerMaxCount");
    assert_eq!(
        worker.ecs_calls_per_second * workers,
        default_of("EcsCallsPerSecond")
    );
    assert_eq!(
        worker.ecs_registers_per_second * workers,
        default_of("EcsRegistersPerSecond")
    );
}
