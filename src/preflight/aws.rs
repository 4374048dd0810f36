//! The reads preflight makes, as facts: the only module that imports the IAM, Secrets Manager,
//! SSM, EC2 and CloudWatch Logs SDKs. "Not found" is an answer (`None`, `false`, a missing id);
//! anything else that goes wrong is an [`Error`] naming the call.

use aws_sdk_ec2::types::Filter;
use aws_sdk_ssm::types::ParameterStringFilter;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
#[error("{operation} {target}: {code}: {message}")]
pub struct Error {
    pub operation: &'static str,
    pub target: String,
    pub code: String,
    pub message: String,
    retryable: bool,
}

impl Error {
    /// Throttling, 5xx and transport failures; AccessDenied and the like are not.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

fn error<E>(operation: &'static str, target: &str, err: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata,
{
    let (code, message, retryable) = match &err {
        SdkError::ServiceError(e) => {
            let code = e.err().code().unwrap_or("Unknown").to_owned();
            // Each service names throttling and its own failures differently; the status
            // does not vary.
            let status = e.raw().status().as_u16();
            let retryable = status == 429
                || status >= 500
                || code.contains("Throttl")
                || code == "RequestLimitExceeded";
            let message = e.err().message().unwrap_or_default().to_owned();
            (code, message, retryable)
        }
        SdkError::TimeoutError(_) => ("Timeout".into(), "the call timed out".into(), true),
        _ => (
            "Transport".into(),
            "the call did not reach AWS or its answer was unreadable".into(),
            true,
        ),
    };
    Error {
        operation,
        target: target.to_owned(),
        code,
        message,
        retryable,
    }
}

fn code<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Option<&str> {
    match err {
        SdkError::ServiceError(e) => e.err().code(),
        _ => None,
    }
}

/// A role's trust policy and the documents of its identity policies (inline and attached).
#[derive(Debug, Clone)]
pub struct Role {
    pub trust_policy: Value,
    pub policies: Vec<Value>,
}

pub struct Lookups {
    /// References to other regions are not checked: these clients only see their own.
    pub region: Option<String>,
    ec2: aws_sdk_ec2::Client,
    iam: aws_sdk_iam::Client,
    secrets: aws_sdk_secretsmanager::Client,
    ssm: aws_sdk_ssm::Client,
    logs: aws_sdk_cloudwatchlogs::Client,
}

impl Lookups {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Lookups {
            region: config.region().map(|r| r.to_string()),
            ec2: aws_sdk_ec2::Client::new(config),
            iam: aws_sdk_iam::Client::new(config),
            secrets: aws_sdk_secretsmanager::Client::new(config),
            ssm: aws_sdk_ssm::Client::new(config),
            logs: aws_sdk_cloudwatchlogs::Client::new(config),
        }
    }

    pub async fn missing_subnets(&self, ids: &[String]) -> Result<Vec<String>, Error> {
        let filter = Filter::builder()
            .name("subnet-id")
            .set_values(Some(ids.to_vec()))
            .build();
        let out = self
            .ec2
            .describe_subnets()
            .filters(filter)
            .send()
            .await
            .map_err(|e| error("ec2:DescribeSubnets", &ids.join(","), e))?;
        let found: Vec<_> = out.subnets().iter().filter_map(|s| s.subnet_id()).collect();
        Ok(missing(ids, &found))
    }

    pub async fn missing_security_groups(&self, ids: &[String]) -> Result<Vec<String>, Error> {
        let filter = Filter::builder()
            .name("group-id")
            .set_values(Some(ids.to_vec()))
            .build();
        let out = self
            .ec2
            .describe_security_groups()
            .filters(filter)
            .send()
            .await
            .map_err(|e| error("ec2:DescribeSecurityGroups", &ids.join(","), e))?;
        let found: Vec<_> = out
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id())
            .collect();
        Ok(missing(ids, &found))
    }

    /// The role and its policy documents, `None` when there is no such role.
    pub async fn role(&self, name: &str) -> Result<Option<Role>, Error> {
        let out = match self.iam.get_role().role_name(name).send().await {
            Ok(out) => out,
            Err(e) if code(&e) == Some("NoSuchEntity") => return Ok(None),
            Err(e) => return Err(error("iam:GetRole", name, e)),
        };
        let trust_policy = document(
            out.role()
                .and_then(|r| r.assume_role_policy_document())
                .unwrap_or_default(),
        );
        let mut policies = Vec::new();
        let inline = self
            .iam
            .list_role_policies()
            .role_name(name)
            .send()
            .await
            .map_err(|e| error("iam:ListRolePolicies", name, e))?;
        for policy in inline.policy_names() {
            let out = self
                .iam
                .get_role_policy()
                .role_name(name)
                .policy_name(policy)
                .send()
                .await
                .map_err(|e| error("iam:GetRolePolicy", policy, e))?;
            policies.push(document(out.policy_document()));
        }
        let attached = self
            .iam
            .list_attached_role_policies()
            .role_name(name)
            .send()
            .await
            .map_err(|e| error("iam:ListAttachedRolePolicies", name, e))?;
        for arn in attached
            .attached_policies()
            .iter()
            .filter_map(|p| p.policy_arn())
        {
            let policy = self
                .iam
                .get_policy()
                .policy_arn(arn)
                .send()
                .await
                .map_err(|e| error("iam:GetPolicy", arn, e))?;
            let Some(version) = policy.policy().and_then(|p| p.default_version_id()) else {
                continue;
            };
            let out = self
                .iam
                .get_policy_version()
                .policy_arn(arn)
                .version_id(version)
                .send()
                .await
                .map_err(|e| error("iam:GetPolicyVersion", arn, e))?;
            if let Some(text) = out.policy_version().and_then(|v| v.document()) {
                policies.push(document(text));
            }
        }
        Ok(Some(Role {
            trust_policy,
            policies,
        }))
    }

    /// The secret's full ARN (with the suffix Secrets Manager adds), `None` when it does not
    /// exist. DescribeSecret returns metadata only, never the value.
    pub async fn secret_arn(&self, id: &str) -> Result<Option<String>, Error> {
        match self.secrets.describe_secret().secret_id(id).send().await {
            Ok(out) => Ok(Some(out.arn().unwrap_or(id).to_owned())),
            Err(e) if code(&e) == Some("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(error("secretsmanager:DescribeSecret", id, e)),
        }
    }

    /// Whether the parameter exists. DescribeParameters returns metadata only, never the value.
    pub async fn parameter_exists(&self, name: &str) -> Result<bool, Error> {
        let filter = ParameterStringFilter::builder()
            .key("Name")
            .option("Equals")
            .values(name)
            .build()
            .expect("the filter's key is set");
        let out = self
            .ssm
            .describe_parameters()
            .parameter_filters(filter)
            .send()
            .await
            .map_err(|e| error("ssm:DescribeParameters", name, e))?;
        Ok(out.parameters().iter().any(|p| p.name() == Some(name)))
    }

    pub async fn log_group_exists(&self, name: &str) -> Result<bool, Error> {
        let out = self
            .logs
            .describe_log_groups()
            .log_group_name_prefix(name)
            .send()
            .await
            .map_err(|e| error("logs:DescribeLogGroups", name, e))?;
        Ok(out
            .log_groups()
            .iter()
            .any(|g| g.log_group_name() == Some(name)))
    }
}

fn missing(wanted: &[String], found: &[&str]) -> Vec<String> {
    wanted
        .iter()
        .filter(|id| !found.contains(&id.as_str()))
        .cloned()
        .collect()
}

/// IAM returns policy documents URL-encoded; an unreadable one counts as granting nothing.
fn document(text: &str) -> Value {
    let decoded = if text.trim_start().starts_with('{') {
        text.to_owned()
    } else {
        percent_encoding::percent_decode_str(text)
            .decode_utf8_lossy()
            .into_owned()
    };
    serde_json::from_str(&decoded).unwrap_or(Value::Null)
}
