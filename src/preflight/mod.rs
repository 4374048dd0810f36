//! Preflight: before anything is registered, check that what an app references exists and is
//! usable, and explain the classic ECS failures (a missing role, a secret the execution role
//! cannot read, a log group that is not there) as findings that name the app, the field and the
//! fix, instead of a task that never starts.
//!
//! Reads only: role and policy documents, secret and parameter metadata (never a value), subnet,
//! security group, cluster and log group descriptions. `aws.rs` is the only module that talks to
//! IAM, Secrets Manager, SSM, EC2 and CloudWatch Logs.

mod aws;

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::ecs::{self, Ecs};
use crate::resolve::DesiredApp;
use crate::resolve::policy::wildcard_match;
use aws::Lookups;
pub use aws::Role;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Ecs(#[from] ecs::Error),
    #[error(transparent)]
    Aws(#[from] aws::Error),
}

impl Error {
    /// Worth asking again later (throttling, 5xx, transport); AccessDenied is not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Ecs(e) => e.is_retryable(),
            Error::Aws(e) => e.is_retryable(),
        }
    }

    /// The AWS error code.
    pub fn code(&self) -> &str {
        match self {
            Error::Ecs(e) => e.code(),
            Error::Aws(e) => &e.code,
        }
    }
}

/// One reason an app would fail to deploy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub app: String,
    /// Where in the app's ECS inputs, e.g. `taskDefinition.executionRoleArn`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "app `{}`: {}: {}", self.app, self.field, self.message)
    }
}

/// How long the jobs of one delivery trust what preflight found present: the hundred jobs of
/// one push naming one role ask IAM once, not a hundred times. A later push asks again, so a
/// secret deleted since is refused before anything is written, as preflight promises. Absences
/// are never remembered and a refusal always rests on fresh reads, so a fix is seen at once.
pub const REMEMBER_FOUND: Duration = Duration::from_secs(300);

/// Past this many entries, the expired ones are dropped; the next sweep waits for twice what
/// is left, so a large push does not sweep on every answer.
const MEMORY_SWEEP: usize = 4096;

/// The AWS clients preflight reads with, and what they found present lately.
pub struct Preflight {
    ecs: Ecs,
    lookups: Lookups,
    memory: Memory,
}

/// Something found present: a role with its policies, a secret with its full ARN, or anything
/// else whose existence is all that is checked.
#[derive(Debug, Clone)]
enum Found {
    Present,
    Role(Role),
    Secret(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Cluster,
    Subnet,
    SecurityGroup,
    Role,
    Secret,
    Parameter,
    LogGroup,
}

/// Delivery, kind and name.
type Key = (String, Kind, String);

/// What was found present, and when.
#[derive(Debug, Default)]
struct Memory(Mutex<Remembered>);

#[derive(Debug, Default)]
struct Remembered {
    found: HashMap<Key, (Instant, Found)>,
    /// The size at which expired entries are dropped next (at least `MEMORY_SWEEP`).
    sweep_at: usize,
}

impl Memory {
    fn key(delivery: &str, kind: Kind, name: &str) -> Key {
        (delivery.to_owned(), kind, name.to_owned())
    }

    fn recall(&self, delivery: &str, kind: Kind, name: &str) -> Option<Found> {
        let memory = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (at, found) = memory.found.get(&Memory::key(delivery, kind, name))?;
        (at.elapsed() < REMEMBER_FOUND).then(|| found.clone())
    }

    fn remember(&self, delivery: &str, kind: Kind, name: &str, found: Found) {
        let mut memory = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if memory.found.len() >= memory.sweep_at.max(MEMORY_SWEEP) {
            memory
                .found
                .retain(|_, (at, _)| at.elapsed() < REMEMBER_FOUND);
            memory.sweep_at = 2 * memory.found.len();
        }
        let key = Memory::key(delivery, kind, name);
        memory.found.insert(key, (Instant::now(), found));
    }

    fn forget(&self, delivery: &str, kind: Kind, name: &str) {
        let mut memory = self.0.lock().unwrap_or_else(|e| e.into_inner());
        memory.found.remove(&Memory::key(delivery, kind, name));
    }
}

impl Preflight {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Preflight::with_ecs(config, Ecs::new(config))
    }

    /// Reads ECS through `ecs`, so a worker's preflight spends the worker's call budget.
    pub fn with_ecs(config: &aws_config::SdkConfig, ecs: Ecs) -> Self {
        Preflight {
            ecs,
            lookups: Lookups::new(config),
            memory: Memory::default(),
        }
    }

    /// A run of checks: one job's, or one plan's. Sessions of one `delivery` (the jobs of one
    /// push) share what they found present.
    pub fn session(&self, delivery: &str) -> Session<'_> {
        Session {
            ecs: &self.ecs,
            lookups: &self.lookups,
            memory: &self.memory,
            delivery: delivery.to_owned(),
            fresh: false,
            recalled: AtomicBool::new(false),
            active_cluster: None,
        }
    }
}

pub struct Session<'a> {
    ecs: &'a Ecs,
    lookups: &'a Lookups,
    memory: &'a Memory,
    delivery: String,
    /// Ask AWS even what the memory holds: the pass a refusal rests on.
    fresh: bool,
    /// This pass used a remembered answer.
    recalled: AtomicBool,
    /// What the caller saw itself: see `cluster_is_active`.
    active_cluster: Option<String>,
}

impl Session<'_> {
    /// What the caller already knows: `cluster` exists and is ACTIVE (a service was found in
    /// it), so checking the app costs no DescribeClusters.
    pub fn cluster_is_active(&mut self, cluster: &str) {
        self.active_cluster = Some(cluster.to_owned());
    }

    /// Every finding for `app`; `Err` only when AWS could not be asked (then nothing is known).
    pub async fn check(&mut self, app: &DesiredApp) -> Result<Vec<Finding>, Error> {
        self.recalled.store(false, Ordering::Relaxed);
        let found = self.check_pass(app).await?;
        if found.is_empty() || !self.recalled.load(Ordering::Relaxed) {
            return Ok(found);
        }
        // A remembered role may lack a grant added since: refuse only on what AWS says now (a
        // pass that remembered nothing already did).
        self.fresh = true;
        let found = self.check_pass(app).await;
        self.fresh = false;
        found
    }

    /// What the memory holds of `name`, unless this pass must ask AWS.
    fn recall(&self, kind: Kind, name: &str) -> Option<Found> {
        if self.fresh {
            return None;
        }
        let found = self.memory.recall(&self.delivery, kind, name);
        if found.is_some() {
            self.recalled.store(true, Ordering::Relaxed);
        }
        found
    }

    /// Remembers `name` when found, forgets it when not.
    fn learned(&self, kind: Kind, name: &str, found: Option<Found>) {
        match found {
            Some(found) => self.memory.remember(&self.delivery, kind, name, found),
            None => self.memory.forget(&self.delivery, kind, name),
        }
    }

    /// The ids among `ids` that do not exist, asking AWS only about those not remembered.
    async fn missing(&self, kind: Kind, ids: Vec<String>) -> Result<Vec<String>, Error> {
        let unknown: Vec<String> = ids
            .into_iter()
            .filter(|id| self.recall(kind, id).is_none())
            .collect();
        if unknown.is_empty() {
            return Ok(Vec::new());
        }
        let missing = match kind {
            Kind::Subnet => self.lookups.missing_subnets(&unknown).await?,
            _ => self.lookups.missing_security_groups(&unknown).await?,
        };
        for id in &unknown {
            let found = (!missing.contains(id)).then_some(Found::Present);
            self.learned(kind, id, found);
        }
        Ok(missing)
    }

    /// What is known of `name`: remembered, or what `lookup` finds (then remembered or
    /// forgotten).
    async fn remembered(
        &self,
        kind: Kind,
        name: &str,
        lookup: impl Future<Output = Result<Option<Found>, Error>>,
    ) -> Result<Option<Found>, Error> {
        if let Some(found) = self.recall(kind, name) {
            return Ok(Some(found));
        }
        let found = lookup.await?;
        self.learned(kind, name, found.clone());
        Ok(found)
    }

    async fn check_pass(&mut self, app: &DesiredApp) -> Result<Vec<Finding>, Error> {
        let mut found = Findings {
            app: &app.name,
            list: Vec::new(),
        };
        self.check_cluster(app, &mut found).await?;
        self.check_network(app, &mut found).await?;
        let td = &app.register_task_definition;
        let execution_role = match td.get("executionRoleArn").and_then(Value::as_str) {
            Some(arn) => {
                self.role(arn, "taskDefinition.executionRoleArn", &mut found)
                    .await?
            }
            None => None,
        };
        if let Some(arn) = td.get("taskRoleArn").and_then(Value::as_str) {
            self.role(arn, "taskDefinition.taskRoleArn", &mut found)
                .await?;
        }
        let containers = td
            .get("containerDefinitions")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        for (i, container) in containers.iter().enumerate() {
            let at = format!("taskDefinition.containerDefinitions[{i}]");
            for (field, reference) in secret_references(container) {
                let field = format!("{at}.{field}");
                self.check_secret(
                    reference,
                    &field,
                    td.get("executionRoleArn").and_then(Value::as_str),
                    execution_role.as_ref(),
                    &mut found,
                )
                .await?;
            }
            self.check_log_group(container, &at, &mut found).await?;
        }
        Ok(found.list)
    }

    async fn check_cluster(
        &mut self,
        app: &DesiredApp,
        found: &mut Findings<'_>,
    ) -> Result<(), Error> {
        let known = self.active_cluster.as_ref() == Some(&app.cluster);
        let status = match known || self.recall(Kind::Cluster, &app.cluster).is_some() {
            true => Some("ACTIVE".to_owned()),
            false => {
                let status = self.ecs.cluster_status(&app.cluster).await?;
                let active = status.as_deref() == Some("ACTIVE");
                self.learned(
                    Kind::Cluster,
                    &app.cluster,
                    active.then_some(Found::Present),
                );
                status
            }
        };
        match status.as_deref() {
            Some("ACTIVE") => {}
            None => found.add(
                "service.cluster",
                format!(
                    "cluster `{}` does not exist; create it, or bind the environment `{}` to an existing cluster in the root app",
                    app.cluster, app.environment
                ),
            ),
            Some(other) => found.add(
                "service.cluster",
                format!(
                    "cluster `{}` is {other}, not ACTIVE; ECS places no service on it",
                    app.cluster
                ),
            ),
        }
        Ok(())
    }

    async fn check_network(&self, app: &DesiredApp, found: &mut Findings<'_>) -> Result<(), Error> {
        let vpc = app
            .create_service
            .get("networkConfiguration")
            .and_then(|n| n.get("awsvpcConfiguration"));
        let ids = |key: &str| -> Vec<String> {
            vpc.and_then(|v| v.get(key))
                .and_then(Value::as_array)
                .map_or_else(Vec::new, |a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
        };
        let subnets = ids("subnets");
        if !subnets.is_empty() {
            for missing in self.missing(Kind::Subnet, subnets).await? {
                found.add(
                    "service.networkConfiguration.awsvpcConfiguration.subnets",
                    format!("subnet `{missing}` does not exist in this account and region"),
                );
            }
        }
        let groups = ids("securityGroups");
        if !groups.is_empty() {
            for missing in self.missing(Kind::SecurityGroup, groups).await? {
                found.add(
                    "service.networkConfiguration.awsvpcConfiguration.securityGroups",
                    format!("security group `{missing}` does not exist in this account and region"),
                );
            }
        }
        Ok(())
    }

    /// The role behind `arn`, after checking it exists and that ECS tasks may assume it.
    async fn role(
        &mut self,
        arn: &str,
        field: &str,
        found: &mut Findings<'_>,
    ) -> Result<Option<Role>, Error> {
        let name = arn.rsplit('/').next().unwrap_or(arn);
        let lookup = async { Ok(self.lookups.role(name).await?.map(Found::Role)) };
        let role = match self.remembered(Kind::Role, name, lookup).await? {
            Some(Found::Role(role)) => Some(role),
            _ => None,
        };
        let Some(role) = role else {
            found.add(
                field,
                format!("role `{name}` does not exist; create it or fix the ARN `{arn}`"),
            );
            return Ok(None);
        };
        if !trusts_ecs_tasks(&role.trust_policy) {
            found.add(
                field,
                format!(
                    "role `{name}` cannot be assumed by ecs-tasks.amazonaws.com, so tasks cannot use it; add that service principal to its trust policy"
                ),
            );
        }
        Ok(Some(role))
    }

    async fn check_secret(
        &self,
        reference: &str,
        field: &str,
        execution_role_arn: Option<&str>,
        execution_role: Option<&Role>,
        found: &mut Findings<'_>,
    ) -> Result<(), Error> {
        let region = reference.split(':').nth(3);
        if reference.starts_with("arn:") && region != self.lookups.region.as_deref() {
            return Ok(()); // another region's secret: these clients cannot see it
        }
        // What IAM evaluates: a secret's full ARN (with its random suffix), a parameter's ARN.
        let (resource, action, described) = if let Some(id) = secrets_manager_id(reference) {
            let lookup = async { Ok(self.lookups.secret_arn(id).await?.map(Found::Secret)) };
            let arn = match self.remembered(Kind::Secret, id, lookup).await? {
                Some(Found::Secret(arn)) => Some(arn),
                _ => None,
            };
            (
                arn,
                "secretsmanager:GetSecretValue",
                format!("secret `{id}`"),
            )
        } else {
            let name = parameter_name(reference);
            let lookup = async {
                let exists = self.lookups.parameter_exists(&name).await?;
                Ok(exists.then_some(Found::Present))
            };
            let exists = self
                .remembered(Kind::Parameter, &name, lookup)
                .await?
                .is_some();
            (
                exists.then(|| reference.to_owned()),
                "ssm:GetParameters",
                format!("parameter `{name}`"),
            )
        };
        let Some(resource) = resource else {
            found.add(
                field,
                format!("{described} does not exist; create it (fleetsync never copies or reads secret values)"),
            );
            return Ok(());
        };
        let Some(arn) = execution_role_arn else {
            found.add(
                field,
                "secrets are injected by the execution role, and the task definition has no executionRoleArn; add one that may read them".to_owned(),
            );
            return Ok(());
        };
        if let Some(role) = execution_role
            && resource.starts_with("arn:")
            && !role.allows(action, &resource)
        {
            let name = arn.rsplit('/').next().unwrap_or(arn);
            found.add(
                field,
                format!(
                    "execution role `{name}` cannot read {described}: secrets not injected at task start; grant {action} on `{reference}`"
                ),
            );
        }
        Ok(())
    }

    async fn check_log_group(
        &self,
        container: &Value,
        at: &str,
        found: &mut Findings<'_>,
    ) -> Result<(), Error> {
        let Some(log) = container.get("logConfiguration") else {
            return Ok(());
        };
        if log.get("logDriver").and_then(Value::as_str) != Some("awslogs") {
            return Ok(());
        }
        let options = log.get("options");
        let option = |key: &str| options.and_then(|o| o.get(key)).and_then(Value::as_str);
        if option("awslogs-create-group") == Some("true") {
            return Ok(());
        }
        let Some(group) = option("awslogs-group") else {
            return Ok(());
        };
        let lookup = async {
            let exists = self.lookups.log_group_exists(group).await?;
            Ok(exists.then_some(Found::Present))
        };
        if self
            .remembered(Kind::LogGroup, group, lookup)
            .await?
            .is_none()
        {
            found.add(
                &format!("{at}.logConfiguration.options.awslogs-group"),
                format!(
                    "log group `{group}` does not exist, and tasks fail to start without it; create it or set `awslogs-create-group: \"true\"` (the execution role then needs logs:CreateLogGroup)"
                ),
            );
        }
        Ok(())
    }
}

struct Findings<'a> {
    app: &'a str,
    list: Vec<Finding>,
}

impl Findings<'_> {
    fn add(&mut self, field: &str, message: String) {
        self.list.push(Finding {
            app: self.app.to_owned(),
            field: field.to_owned(),
            message,
        });
    }
}

/// Every `valueFrom` a container injects at start, with its field path.
fn secret_references(container: &Value) -> Vec<(String, &str)> {
    let mut out = Vec::new();
    let lists = [
        ("secrets", container.get("secrets")),
        (
            "logConfiguration.secretOptions",
            container
                .get("logConfiguration")
                .and_then(|l| l.get("secretOptions")),
        ),
    ];
    for (field, list) in lists {
        for (i, s) in list
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(v) = s.get("valueFrom").and_then(Value::as_str) {
                out.push((format!("{field}[{i}].valueFrom"), v));
            }
        }
    }
    if let Some(v) = container
        .get("repositoryCredentials")
        .and_then(|r| r.get("credentialsParameter"))
        .and_then(Value::as_str)
    {
        out.push(("repositoryCredentials.credentialsParameter".into(), v));
    }
    out
}

/// The secret a Secrets Manager `valueFrom` names, without ECS's
/// `:json-key:version-stage:version-id` suffix.
fn secrets_manager_id(reference: &str) -> Option<&str> {
    if !reference.starts_with("arn:") || reference.split(':').nth(2) != Some("secretsmanager") {
        return None;
    }
    let end = reference
        .match_indices(':')
        .nth(6)
        .map_or(reference.len(), |(i, _)| i);
    Some(&reference[..end])
}

/// An SSM parameter's name from its ARN (`…:parameter/prod/db` is `/prod/db`) or as written.
fn parameter_name(reference: &str) -> String {
    match reference.split_once(":parameter/") {
        Some((_, rest)) if rest.contains('/') => format!("/{rest}"),
        Some((_, rest)) => rest.to_owned(),
        None => reference.to_owned(),
    }
}

fn trusts_ecs_tasks(trust_policy: &Value) -> bool {
    statements(trust_policy).any(|s| {
        s.get("Effect").and_then(Value::as_str) == Some("Allow")
            && strings(s.get("Action"))
                .any(|a| iam_match(&a.to_ascii_lowercase(), "sts:assumerole"))
            && strings(s.get("Principal").and_then(|p| p.get("Service")))
                .any(|p| p == "ecs-tasks.amazonaws.com")
    })
}

impl Role {
    /// Whether the role's identity policies allow `action` on `resource`: an Allow statement
    /// matches and no unconditional Deny does. Preflight is there to catch a missing grant, so
    /// it leans towards "allowed" where it cannot evaluate: a conditional Allow counts, a
    /// conditional Deny does not, statements with NotAction or NotResource are skipped, and
    /// permission boundaries, SCPs and resource policies are not read.
    pub fn allows(&self, action: &str, resource: &str) -> bool {
        let action = action.to_ascii_lowercase();
        let matches = |s: &Value| {
            s.get("NotAction").is_none()
                && s.get("NotResource").is_none()
                && strings(s.get("Action")).any(|a| iam_match(&a.to_ascii_lowercase(), &action))
                && strings(s.get("Resource")).any(|r| iam_match(r, resource))
        };
        let effect = |s: &Value, e: &str| s.get("Effect").and_then(Value::as_str) == Some(e);
        let all = || self.policies.iter().flat_map(statements);
        all().any(|s| effect(s, "Allow") && matches(s))
            && !all().any(|s| effect(s, "Deny") && s.get("Condition").is_none() && matches(s))
    }
}

/// IAM's wildcards: `*` any run of characters, `?` exactly one.
fn iam_match(pattern: &str, text: &str) -> bool {
    wildcard_match(pattern, text, true)
}

fn statements(document: &Value) -> impl Iterator<Item = &Value> {
    match document.get("Statement") {
        Some(Value::Array(list)) => list.iter().collect::<Vec<_>>(),
        Some(one) => vec![one],
        None => Vec::new(),
    }
    .into_iter()
}

/// A policy element that is a string or a list of strings.
fn strings(value: Option<&Value>) -> impl Iterator<Item = &str> {
    match value {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
    .into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_references_name_the_secret_without_json_key_or_version() {
        let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:staging/db";
        assert_eq!(secrets_manager_id(arn), Some(arn));
        assert_eq!(secrets_manager_id(&format!("{arn}:password::")), Some(arn));
        assert_eq!(
            secrets_manager_id("arn:aws:ssm:us-east-1:1:parameter/x"),
            None
        );
        assert_eq!(
            parameter_name("arn:aws:ssm:us-east-1:1:parameter/staging/db"),
            "/staging/db"
        );
        assert_eq!(
            parameter_name("arn:aws:ssm:us-east-1:1:parameter/flat"),
            "flat"
        );
        assert_eq!(parameter_name("/staging/db"), "/staging/db");
    }

    #[test]
    fn allow_needs_a_matching_statement_and_deny_wins() {
        let role = Role {
            trust_policy: Value::Null,
            policies: vec![serde_json::json!({"Statement": [
                {"Effect": "Allow", "Action": ["secretsmanager:Get*"], "Resource": "arn:aws:secretsmanager:*:1:secret:staging/*"},
                {"Effect": "Deny", "Action": "secretsmanager:*", "Resource": "arn:aws:secretsmanager:*:1:secret:staging/root*"},
            ]})],
        };
        let get = "secretsmanager:GetSecretValue";
        assert!(role.allows(get, "arn:aws:secretsmanager:us-east-1:1:secret:staging/db"));
        assert!(!role.allows(
            get,
            "arn:aws:secretsmanager:us-east-1:1:secret:production/db"
        ));
        assert!(!role.allows(
            get,
            "arn:aws:secretsmanager:us-east-1:1:secret:staging/root-key"
        ));
        assert!(!role.allows(
            "ssm:GetParameters",
            "arn:aws:secretsmanager:us-east-1:1:secret:staging/db"
        ));
    }

    #[test]
    fn the_suffixed_arn_matches_the_pattern_aws_recommends_and_conditional_denies_are_skipped() {
        let full = "arn:aws:secretsmanager:us-east-1:1:secret:staging/db-AbCdEf";
        let role = Role {
            trust_policy: Value::Null,
            policies: vec![serde_json::json!({"Statement": [
                {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "arn:aws:secretsmanager:us-east-1:1:secret:staging/db-??????"},
                {"Effect": "Deny", "Action": "*", "Resource": "*", "Condition": {"StringNotEquals": {"aws:SourceVpce": "vpce-1"}}},
            ]})],
        };
        assert!(role.allows("secretsmanager:GetSecretValue", full));
        assert!(!role.allows(
            "secretsmanager:GetSecretValue",
            "arn:aws:secretsmanager:us-east-1:1:secret:staging/db-AbCdEfG"
        ));
    }

    #[test]
    fn trust_needs_the_ecs_tasks_principal() {
        let trust = |service: &str| serde_json::json!({"Statement": {"Effect": "Allow", "Principal": {"Service": [service]}, "Action": "sts:AssumeRole"}});
        assert!(trusts_ecs_tasks(&trust("ecs-tasks.amazonaws.com")));
        assert!(!trusts_ecs_tasks(&trust("ec2.amazonaws.com")));
    }
}
