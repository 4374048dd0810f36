//! Preview ingress (`previews.ingress`): per preview app, a target group and a `host-header`
//! rule on one Application Load Balancer listener. Only this module talks to Elastic Load
//! Balancing. Both are found again by the target group's name, made from the root, the preview
//! and the app, and carry the preview's tags: nothing is touched that lacks them.

use aws_sdk_elasticloadbalancingv2 as elb;
use aws_sdk_elasticloadbalancingv2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use elb::types::{
    Action, ActionTypeEnum, HostHeaderConditionConfig, ProtocolEnum, Rule, RuleCondition, Tag,
    TargetGroup, TargetTypeEnum,
};
use sha2::{Digest, Sha256};
use tracing::info;

use crate::resolve::{PreviewIngress, tag};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Elastic Load Balancing {operation} {target}: {code}: {message}")]
    Api {
        operation: &'static str,
        target: String,
        code: String,
        message: String,
        retryable: bool,
    },
    #[error(
        "`previews.ingress`: target group {arn}, which the environment's service names in `loadBalancers`, does not exist; the preview's target group copies its VPC and health check"
    )]
    NoTemplate { arn: String },
    #[error(
        "target group {name} exists without preview {preview}'s tags of root {root}: fleetsync leaves it alone; delete or rename it"
    )]
    NotOurs {
        name: String,
        preview: u64,
        root: String,
    },
    #[error("listener {listener} has no free rule priority")]
    NoPriority { listener: String },
    #[error("Elastic Load Balancing {operation} {target}: the answer has no {missing}")]
    Incomplete {
        operation: &'static str,
        target: String,
        missing: &'static str,
    },
}

impl Error {
    /// Throttling, 5xx, transport failures, and a target group a rule still uses.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Api {
                retryable: true,
                ..
            }
        )
    }

    pub fn code(&self) -> &str {
        match self {
            Error::Api { code, .. } => code,
            Error::NoTemplate { .. } => "TargetGroupNotFound",
            Error::NotOurs { .. } => "NotOurs",
            Error::NoPriority { .. } => "PriorityInUse",
            Error::Incomplete { .. } => "IncompleteResponse",
        }
    }
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn api_error<E, R>(operation: &'static str, target: &str, err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let (code, message, retryable) = match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or("Unknown").to_owned();
            let retryable = code.contains("Throttl")
                || matches!(
                    code.as_str(),
                    "InternalFailure" | "ServiceUnavailable" | "ResourceInUse"
                );
            (code, e.message().unwrap_or_default().to_owned(), retryable)
        }
        _ => (
            "DispatchFailure".into(),
            DisplayErrorContext(&err).to_string(),
            true,
        ),
    };
    Error::Api {
        operation,
        target: target.to_owned(),
        code,
        message,
        retryable,
    }
}

fn is_code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>, wanted: &str) -> bool {
    matches!(err, SdkError::ServiceError(s) if s.err().code() == Some(wanted))
}

/// One preview app's route.
pub struct Route<'a> {
    pub root: &'a str,
    pub preview: u64,
    pub app: &'a str,
    pub spec: &'a PreviewIngress,
}

/// Where a preview app is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub target_group_arn: String,
    pub url: String,
}

/// Listener rule priorities ALB takes.
const PRIORITIES: u32 = 50_000;

/// How many taken priorities a rule creation steps past, when another writer on the listener
/// takes the one it read as free.
const PRIORITY_TRIES: u32 = 5;

#[derive(Clone)]
pub struct Ingress {
    client: elb::Client,
}

impl Ingress {
    pub fn new(aws: &aws_config::SdkConfig) -> Self {
        Ingress {
            client: elb::Client::new(aws),
        }
    }

    /// Makes the app's target group and rule, or finds them made by an earlier attempt.
    pub async fn ensure(&self, route: &Route<'_>) -> Result<Routed> {
        let name = target_group_name(route.root, route.preview, route.app);
        let tags = own_tags(route.root, route.preview, route.app);
        let target_group = match self.target_group(&name).await? {
            Some(found) => {
                self.check_ours(&found, &name, route.root, route.preview)
                    .await?;
                found
            }
            None => self.create_target_group(&name, route.spec, &tags).await?,
        };
        let arn = target_group
            .target_group_arn()
            .unwrap_or_default()
            .to_owned();
        let spec = route.spec;
        let listener = self
            .client
            .describe_listeners()
            .listener_arns(&spec.listener_arn)
            .send()
            .await
            .map_err(|e| api_error("DescribeListeners", &spec.listener_arn, e))?;
        let listener = listener.listeners().first();
        let url = url(
            &spec.host,
            listener.and_then(|l| l.protocol()),
            listener.and_then(|l| l.port()),
        );
        let rules = self.rules(&spec.listener_arn).await?;
        match rules.iter().find(|r| forwards_to(r, &arn)) {
            Some(rule) if hosts(rule) == [spec.host.as_str()] => {}
            Some(rule) => {
                let rule_arn = rule.rule_arn().unwrap_or_default();
                self.client
                    .modify_rule()
                    .rule_arn(rule_arn)
                    .conditions(host_condition(&spec.host))
                    .send()
                    .await
                    .map_err(|e| api_error("ModifyRule", rule_arn, e))?;
            }
            None => self.create_rule(spec, &arn, &rules, &tags).await?,
        }
        Ok(Routed {
            target_group_arn: arn,
            url,
        })
    }

    /// Deletes the app's rules and target group; what is gone already counts as done. True when
    /// there was a target group to delete.
    pub async fn remove(&self, root: &str, preview: u64, app: &str) -> Result<bool> {
        let name = target_group_name(root, preview, app);
        let Some(target_group) = self.target_group(&name).await? else {
            return Ok(false);
        };
        self.check_ours(&target_group, &name, root, preview).await?;
        let arn = target_group.target_group_arn().unwrap_or_default();
        for balancer in target_group.load_balancer_arns() {
            let listeners = self
                .client
                .describe_listeners()
                .load_balancer_arn(balancer)
                .send()
                .await
                .map_err(|e| api_error("DescribeListeners", balancer, e))?;
            for listener in listeners.listeners() {
                let listener = listener.listener_arn().unwrap_or_default();
                for rule in self.rules(listener).await? {
                    if !forwards_to(&rule, arn) {
                        continue;
                    }
                    let rule_arn = rule.rule_arn().unwrap_or_default();
                    match self.client.delete_rule().rule_arn(rule_arn).send().await {
                        Ok(_) => info!(message = "Preview rule deleted.", rule = %rule_arn),
                        Err(e) if is_code(&e, "RuleNotFound") => {}
                        Err(e) => return Err(api_error("DeleteRule", rule_arn, e)),
                    }
                }
            }
        }
        match self
            .client
            .delete_target_group()
            .target_group_arn(arn)
            .send()
            .await
        {
            Ok(_) => info!(message = "Preview target group deleted.", target_group = %name),
            Err(e) if is_code(&e, "TargetGroupNotFound") => {}
            Err(e) => return Err(api_error("DeleteTargetGroup", arn, e)),
        }
        Ok(true)
    }

    async fn target_group(&self, name: &str) -> Result<Option<TargetGroup>> {
        match self
            .client
            .describe_target_groups()
            .names(name)
            .send()
            .await
        {
            Ok(out) => Ok(out.target_groups().first().cloned()),
            Err(e) if is_code(&e, "TargetGroupNotFound") => Ok(None),
            Err(e) => Err(api_error("DescribeTargetGroups", name, e)),
        }
    }

    async fn check_ours(
        &self,
        target_group: &TargetGroup,
        name: &str,
        root: &str,
        preview: u64,
    ) -> Result<()> {
        let arn = target_group.target_group_arn().unwrap_or_default();
        let described = self
            .client
            .describe_tags()
            .resource_arns(arn)
            .send()
            .await
            .map_err(|e| api_error("DescribeTags", arn, e))?;
        let tags = described
            .tag_descriptions()
            .iter()
            .flat_map(|d| d.tags())
            .filter_map(|t| Some((t.key()?, t.value().unwrap_or_default())));
        let preview_text = preview.to_string();
        let (mut of_preview, mut of_root) = (false, false);
        for (key, value) in tags {
            of_preview |= key == tag::PREVIEW && value == preview_text;
            of_root |= key == tag::ROOT && value == root;
        }
        if of_preview && of_root {
            Ok(())
        } else {
            Err(Error::NotOurs {
                name: name.to_owned(),
                preview,
                root: root.to_owned(),
            })
        }
    }

    /// The preview's target group: the environment's settings, the container's port.
    async fn create_target_group(
        &self,
        name: &str,
        spec: &PreviewIngress,
        tags: &[Tag],
    ) -> Result<TargetGroup> {
        let like = match self
            .client
            .describe_target_groups()
            .target_group_arns(&spec.like_target_group)
            .send()
            .await
        {
            Ok(out) => out.target_groups().first().cloned(),
            Err(e) if is_code(&e, "TargetGroupNotFound") => None,
            Err(e) => {
                return Err(api_error(
                    "DescribeTargetGroups",
                    &spec.like_target_group,
                    e,
                ));
            }
        };
        let Some(like) = like else {
            return Err(Error::NoTemplate {
                arn: spec.like_target_group.clone(),
            });
        };
        let created = self
            .client
            .create_target_group()
            .name(name)
            .protocol(like.protocol().cloned().unwrap_or(ProtocolEnum::Http))
            .port(spec.container_port.into())
            .set_vpc_id(like.vpc_id().map(str::to_owned))
            .target_type(like.target_type().cloned().unwrap_or(TargetTypeEnum::Ip))
            .set_health_check_protocol(like.health_check_protocol().cloned())
            .set_health_check_path(like.health_check_path().map(str::to_owned))
            .set_matcher(like.matcher().cloned())
            .set_tags(Some(tags.to_vec()))
            .send()
            .await;
        match created {
            Ok(out) => {
                info!(message = "Preview target group created.", target_group = %name);
                out.target_groups()
                    .first()
                    .cloned()
                    .ok_or_else(|| Error::Incomplete {
                        operation: "CreateTargetGroup",
                        target: name.into(),
                        missing: "target group",
                    })
            }
            // Made meanwhile by an attempt this one outlived.
            Err(e) if is_code(&e, "DuplicateTargetGroupName") => self
                .target_group(name)
                .await?
                .ok_or_else(|| api_error("CreateTargetGroup", name, e)),
            Err(e) => Err(api_error("CreateTargetGroup", name, e)),
        }
    }

    async fn rules(&self, listener: &str) -> Result<Vec<Rule>> {
        let mut rules = Vec::new();
        let mut marker = None;
        loop {
            let page = self
                .client
                .describe_rules()
                .listener_arn(listener)
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| api_error("DescribeRules", listener, e))?;
            rules.extend_from_slice(page.rules());
            marker = page.next_marker().map(str::to_owned);
            if marker.is_none() {
                return Ok(rules);
            }
        }
    }

    async fn create_rule(
        &self,
        spec: &PreviewIngress,
        target_group: &str,
        rules: &[Rule],
        tags: &[Tag],
    ) -> Result<()> {
        let mut taken: std::collections::HashSet<u32> = rules
            .iter()
            .filter_map(|r| r.priority()?.parse().ok())
            .collect();
        // The lowest free: a rule for one host matches nothing else, so ahead of the
        // listener's broader rules (a wildcard host, a path) is where it must be to be reached.
        for _ in 0..PRIORITY_TRIES {
            let Some(priority) = (1..=PRIORITIES).find(|p| !taken.contains(p)) else {
                break;
            };
            taken.insert(priority);
            let created = self
                .client
                .create_rule()
                .listener_arn(&spec.listener_arn)
                .priority(priority as i32)
                .conditions(host_condition(&spec.host))
                .actions(
                    Action::builder()
                        .r#type(ActionTypeEnum::Forward)
                        .target_group_arn(target_group)
                        .build(),
                )
                .set_tags(Some(tags.to_vec()))
                .send()
                .await;
            match created {
                Ok(_) => {
                    info!(message = "Preview rule created.", host = %spec.host, priority);
                    return Ok(());
                }
                // Another writer took it; or an earlier try of this very call made the rule.
                Err(e) if is_code(&e, "PriorityInUse") => {
                    let now = self.rules(&spec.listener_arn).await?;
                    if now.iter().any(|r| forwards_to(r, target_group)) {
                        return Ok(());
                    }
                    taken.extend(now.iter().filter_map(|r| r.priority()?.parse::<u32>().ok()));
                }
                Err(e) => return Err(api_error("CreateRule", &spec.listener_arn, e)),
            }
        }
        Err(Error::NoPriority {
            listener: spec.listener_arn.clone(),
        })
    }
}

/// At most 32 characters of letters, digits and single hyphens, as ELB requires; unique per
/// root, preview and app (the hash shrinks to 8 characters for the longest numbers).
pub fn target_group_name(root: &str, preview: u64, app: &str) -> String {
    let digest = hex::encode(Sha256::digest(format!("{root}\0{app}")));
    let number = preview.to_string();
    let room = (32 - 4 - number.len()).min(12);
    format!("fs-{number}-{}", &digest[..room])
}

fn own_tags(root: &str, preview: u64, app: &str) -> Vec<Tag> {
    [
        (tag::ROOT, root.to_owned()),
        (tag::PREVIEW, preview.to_string()),
        (tag::APP, app.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| Tag::builder().key(k).value(v).build())
    .collect()
}

fn host_condition(host: &str) -> RuleCondition {
    RuleCondition::builder()
        .field("host-header")
        .host_header_config(HostHeaderConditionConfig::builder().values(host).build())
        .build()
}

/// A rule that forwards to `target_group` alone: one fleetsync made. A weighted rule that
/// shares it is someone else's to change.
fn forwards_to(rule: &Rule, target_group: &str) -> bool {
    rule.actions().iter().any(|a| {
        let groups = a
            .forward_config()
            .map(|f| f.target_groups())
            .unwrap_or_default();
        let only_ours = !groups.is_empty()
            && groups
                .iter()
                .all(|t| t.target_group_arn() == Some(target_group));
        (a.target_group_arn() == Some(target_group) && groups.len() <= 1) || only_ours
    })
}

fn hosts(rule: &Rule) -> Vec<&str> {
    rule.conditions()
        .iter()
        .filter(|c| c.field() == Some("host-header"))
        .flat_map(|c| {
            let configured = c
                .host_header_config()
                .map(|h| h.values())
                .unwrap_or_default();
            configured.iter().chain(c.values())
        })
        .map(String::as_str)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The address a browser uses: the listener's scheme, and its port unless it is the scheme's.
fn url(host: &str, protocol: Option<&ProtocolEnum>, port: Option<i32>) -> String {
    let (scheme, default) = match protocol {
        Some(ProtocolEnum::Http) => ("http", 80),
        _ => ("https", 443),
    };
    match port {
        Some(port) if port != default => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_group_names_fit_elb_and_differ_per_root_preview_and_app() {
        let name = target_group_name("platform", u64::MAX, "a-very-long-app-name");
        assert!(name.len() <= 32, "{name}");
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        assert!(!name.contains("--") && !name.ends_with('-'));
        let names = [
            target_group_name("platform", 7, "api"),
            target_group_name("platform", 7, "web"),
            target_group_name("platform", 8, "api"),
            target_group_name("other", 7, "api"),
        ];
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
    }

    #[test]
    fn urls_follow_the_listener() {
        let host = "api-pr-7.preview.example.com";
        assert_eq!(
            url(host, Some(&ProtocolEnum::Https), Some(443)),
            format!("https://{host}")
        );
        assert_eq!(
            url(host, Some(&ProtocolEnum::Http), Some(8080)),
            format!("http://{host}:8080")
        );
    }
}
