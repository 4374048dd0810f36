//! Why a rollout failed, in words a user can act on: the stopped tasks of the failed
//! deployment (ECS keeps them about an hour, so they are read at once) matched against a
//! catalogue of causes by stable tokens (error classes, AWS error codes, IAM actions), never
//! by whole sentences, whose wording ECS changes.

use crate::ecs::{StoppedContainer, StoppedTask};

/// A cause and its fix, with the evidence quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// Stable: what the failure tag, the status API and notifications key on.
    pub code: &'static str,
    pub cause: String,
    pub fix: String,
    /// ECS's words, bounded.
    pub evidence: String,
}

impl std::fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // ECS's words name accounts, roles and secrets: they go to the worker's log only,
        // not to commit statuses and notifications.
        write!(f, "{}: {}; fix: {}", self.code, self.cause, self.fix)
    }
}

/// Stops that say nothing against the rollout: a person, or Spot, stopped the task. (ECS's own
/// stops, ServiceSchedulerInitiated, are a scale-in unless a cause below explains them.)
const BENIGN: &[&str] = &["SpotInterruption", "UserInitiated"];

/// (every token that must appear, code, cause, fix), most specific first.
const CATALOGUE: &[(&[&str], &str, &str, &str)] = &[
    (
        // Before the secret entries: a missing log group is a ResourceNotFoundException too.
        &["ResourceInitializationError", "logger"],
        "LogGroupMissing",
        "the log group of the awslogs configuration does not exist or the execution role may not write to it",
        "create the log group (or set awslogs-create-group with logs:CreateLogGroup), and grant the execution role logs:CreateLogStream and logs:PutLogEvents",
    ),
    (
        &["CannotPullContainerError", "not found"],
        "ImageNotFound",
        "the image or its tag does not exist in the registry",
        "push the image, or correct the image in the task definition",
    ),
    (
        &["CannotPullContainerError", "i/o timeout"],
        "NoRouteToRegistry",
        "the tasks' subnets have no route to the image registry",
        "give the subnets a NAT gateway, VPC endpoints for ECR (ecr.api, ecr.dkr and the S3 gateway), or assignPublicIp: ENABLED in a public subnet",
    ),
    (
        &["CannotPullContainerError", "Client.Timeout"],
        "NoRouteToRegistry",
        "the tasks' subnets have no route to the image registry",
        "give the subnets a NAT gateway, VPC endpoints for ECR (ecr.api, ecr.dkr and the S3 gateway), or assignPublicIp: ENABLED in a public subnet",
    ),
    (
        &["CannotPullContainerError", "toomanyrequests"],
        "RegistryRateLimit",
        "the registry refused the pull for too many requests",
        "pull through ECR (a pull-through cache or a copy of the image), or authenticate to the registry",
    ),
    (
        &["CannotPullContainerError", "403"],
        "RegistryAuth",
        "the execution role may not pull the image",
        "grant the execution role ecr:GetAuthorizationToken, ecr:BatchGetImage and ecr:GetDownloadUrlForLayer (or the registry's credentials in repositoryCredentials)",
    ),
    (
        &["CannotPullContainerError", "unauthorized"],
        "RegistryAuth",
        "the execution role may not pull the image",
        "grant the execution role ecr:GetAuthorizationToken, ecr:BatchGetImage and ecr:GetDownloadUrlForLayer (or the registry's credentials in repositoryCredentials)",
    ),
    (
        &["CannotPullContainerError"],
        "ImagePullFailed",
        "the image could not be pulled",
        "read the reason ECS gives below",
    ),
    (
        &["ResourceInitializationError", "i/o timeout"],
        "NoRouteToAws",
        "the tasks' subnets cannot reach Secrets Manager, SSM or CloudWatch Logs",
        "give the subnets a NAT gateway or VPC endpoints for secretsmanager, ssm and logs",
    ),
    (
        &["ResourceInitializationError", "AccessDenied"],
        "SecretNotReadable",
        "the execution role may not read a secret, parameter or its KMS key",
        "grant the execution role the action on the resource ECS names",
    ),
    (
        &["ResourceInitializationError", "ResourceNotFoundException"],
        "SecretMissing",
        "a secret or parameter the task definition names does not exist",
        "create it, or correct its ARN in `secrets`",
    ),
    (
        &["OutOfMemoryError"],
        "OutOfMemory",
        "a container was killed for using more memory than it may",
        "raise the memory of the container or of the task",
    ),
    (
        &["exec format error"],
        "CpuArchitecture",
        "the image is built for another CPU architecture",
        "build the image for the runtimePlatform.cpuArchitecture of the task, or change it",
    ),
    (
        &["ELB health checks"],
        "LoadBalancerHealthCheck",
        "the tasks failed the load balancer's health checks",
        "check the health check path and port of the target group, the security group from the load balancer, and healthCheckGracePeriodSeconds",
    ),
    (
        &["container health checks"],
        "ContainerHealthCheck",
        "a container failed its own health check",
        "fix the healthCheck command, or raise its startPeriod",
    ),
    (
        &["EssentialContainerExited"],
        "ContainerExited",
        "an essential container exited",
        "read the logs of the container",
    ),
];

/// Evidence shown at most, so one task's wall of text cannot fill a tag or a message.
const MAX_EVIDENCE: usize = 300;

/// The cause most of the deployment's stopped tasks share, if the catalogue knows it.
pub fn diagnose(tasks: &[StoppedTask]) -> Option<Diagnosis> {
    let found: Vec<Diagnosis> = tasks
        .iter()
        .filter(|t| !BENIGN.contains(&t.stop_code.as_str()))
        .filter_map(explain)
        .collect();
    let count = |code: &str| found.iter().filter(|d| d.code == code).count();
    let rank = |code: &str| CATALOGUE.iter().position(|c| c.1 == code);
    // The most frequent cause; ties to the catalogue's order.
    found
        .iter()
        .max_by_key(|d| (count(d.code), std::cmp::Reverse(rank(d.code))))
        .cloned()
}

fn explain(task: &StoppedTask) -> Option<Diagnosis> {
    let words = std::iter::once(task.stop_code.as_str())
        .chain(std::iter::once(task.stopped_reason.as_str()))
        .chain(task.containers.iter().map(|c| c.reason.as_str()))
        .collect::<Vec<_>>()
        .join("\n");
    let exited = task
        .containers
        .iter()
        .find(|c| c.exit_code.is_some_and(|code| code != 0));
    let matched = CATALOGUE
        .iter()
        .find(|(tokens, ..)| tokens.iter().all(|t| words.contains(t)));
    // Exit code 137 is SIGKILL: the kernel's OOM killer, when ECS says nothing more specific.
    let killed = task.stop_code == "EssentialContainerExited"
        && exited.is_some_and(|c| c.exit_code == Some(137));
    let (_, code, cause, fix) = match matched {
        Some(entry) if !(killed && entry.1 == "ContainerExited") => Some(entry),
        _ if killed => CATALOGUE.iter().find(|c| c.1 == "OutOfMemory"),
        other => other,
    }?;
    let mut cause = (*cause).to_owned();
    let mut fix = (*fix).to_owned();
    if let Some(StoppedContainer {
        name,
        exit_code: Some(exit),
        ..
    }) = exited
    {
        cause = format!("{cause} - container {name} exit code {exit}");
    }
    if *code == "SecretNotReadable"
        && let Some((action, resource)) = denied(&words)
    {
        fix = format!("grant the execution role {action} on {resource}");
    }
    let evidence = [task.stopped_reason.as_str()]
        .into_iter()
        .chain(task.containers.iter().map(|c| c.reason.as_str()))
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    Some(Diagnosis {
        code,
        cause,
        fix,
        evidence: bounded(&evidence),
    })
}

/// "… is not authorized to perform: ACTION on resource: ARN …"
fn denied(words: &str) -> Option<(&str, &str)> {
    let after = words.split("perform: ").nth(1)?;
    let action = after.split_whitespace().next()?;
    let resource = after
        .split("resource: ")
        .nth(1)?
        .split_whitespace()
        .next()?;
    Some((action, resource.trim_end_matches(['.', ','])))
}

fn bounded(text: &str) -> String {
    match text.char_indices().nth(MAX_EVIDENCE) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stopped-task answers as ECS documents them ("Amazon ECS stopped task error messages",
    /// AmazonECS/latest/developerguide/stopped-task-error-codes.html, and the
    /// CannotPullContainer and ResourceInitializationError pages it links).
    fn task(stop_code: &str, reason: &str, container: (&str, Option<i32>)) -> StoppedTask {
        StoppedTask {
            stop_code: stop_code.into(),
            stopped_reason: reason.into(),
            containers: vec![StoppedContainer {
                name: "api".into(),
                reason: container.0.into(),
                exit_code: container.1,
            }],
        }
    }

    #[test]
    fn documented_stops_map_to_their_cause_and_fix() {
        let cases = [
            (
                task(
                    "TaskFailedToStart",
                    "CannotPullContainerError: pull image manifest has been retried 5 time(s): failed to resolve ref public.ecr.aws/acme/api:9.9: public.ecr.aws/acme/api:9.9: not found",
                    ("", None),
                ),
                "ImageNotFound",
            ),
            (
                task(
                    "TaskFailedToStart",
                    "CannotPullContainerError: pull image manifest has been retried 5 time(s): failed to do request: Head \"https://123456789012.dkr.ecr.us-east-1.amazonaws.com/v2/api/manifests/1\": dial tcp 52.1.2.3:443: i/o timeout",
                    ("", None),
                ),
                "NoRouteToRegistry",
            ),
            (
                task(
                    "TaskFailedToStart",
                    "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval failed: unable to retrieve secret from asm: service call has been retried 1 time(s): failed to fetch secret arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf from secrets manager: AccessDeniedException: User: arn:aws:sts::123456789012:assumed-role/ecs-exec/1 is not authorized to perform: secretsmanager:GetSecretValue on resource: arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf because no identity-based policy allows the secretsmanager:GetSecretValue action",
                    ("", None),
                ),
                "SecretNotReadable",
            ),
            (
                task(
                    "EssentialContainerExited",
                    "Essential container in task exited",
                    (
                        "OutOfMemoryError: Container killed due to memory usage",
                        Some(137),
                    ),
                ),
                "OutOfMemory",
            ),
            (
                task(
                    "EssentialContainerExited",
                    "Essential container in task exited",
                    ("", Some(3)),
                ),
                "ContainerExited",
            ),
            (
                task(
                    "TaskFailedToStart",
                    "ResourceInitializationError: failed to validate logger args: create stream has been retried 1 times: failed to create Cloudwatch log stream: ResourceNotFoundException: The specified log group does not exist. : exit status 1",
                    ("", None),
                ),
                "LogGroupMissing",
            ),
            (
                task(
                    "TaskFailedToStart",
                    "CannotPullContainerError: pull image manifest has been retried 5 time(s): Get https://public.ecr.aws/v2/: net/http: request canceled while waiting for connection (Client.Timeout exceeded while awaiting headers)",
                    ("", None),
                ),
                "NoRouteToRegistry",
            ),
            (
                task(
                    "TaskFailedToStart",
                    "CannotPullContainerError: toomanyrequests: You have reached your pull rate limit",
                    ("", None),
                ),
                "RegistryRateLimit",
            ),
            (
                task(
                    "ServiceSchedulerInitiated",
                    "Task failed ELB health checks in (target-group arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/api/1)",
                    ("", None),
                ),
                "LoadBalancerHealthCheck",
            ),
        ];
        for (stopped, code) in cases {
            let found = explain(&stopped).unwrap_or_else(|| panic!("no cause for {stopped:?}"));
            assert_eq!(found.code, code, "{stopped:?}");
        }
        let denied = explain(&task(
            "TaskFailedToStart",
            "ResourceInitializationError: … AccessDeniedException: User: x is not authorized to perform: ssm:GetParameters on resource: arn:aws:ssm:us-east-1:123456789012:parameter/db because …",
            ("", None),
        ))
        .unwrap();
        assert_eq!(
            denied.fix,
            "grant the execution role ssm:GetParameters on arn:aws:ssm:us-east-1:123456789012:parameter/db"
        );
        let exited = explain(&task(
            "EssentialContainerExited",
            "Essential container in task exited",
            ("", Some(3)),
        ))
        .unwrap();
        assert!(
            exited.cause.contains("container api exit code 3"),
            "{exited}"
        );
    }

    #[test]
    fn the_most_common_cause_wins_and_benign_stops_do_not_count() {
        let pull = task(
            "TaskFailedToStart",
            "CannotPullContainerError: x: not found",
            ("", None),
        );
        let oom = task(
            "EssentialContainerExited",
            "Essential container in task exited",
            ("", Some(137)),
        );
        let scaled = task("UserInitiated", "Task stopped by user", ("", Some(143)));
        let found = diagnose(&[oom.clone(), pull.clone(), pull, scaled.clone()]).unwrap();
        assert_eq!(found.code, "ImageNotFound");
        assert_eq!(diagnose(&[scaled]), None);
        assert_eq!(diagnose(&[]), None);
        assert_eq!(diagnose(&[oom]).unwrap().code, "OutOfMemory");
    }
}
