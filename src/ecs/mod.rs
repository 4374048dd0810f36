//! The thin ECS layer: the only module that imports `aws_sdk_ecs`.
//!
//! It turns SDK shapes into the few facts `sync` needs and every SDK error into [`Error`], with
//! the AWS error code kept, so nothing above it matches on `SdkError`.

pub mod budget;
mod join;
mod raw;

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_ecs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ecs::types::{
    ClusterField, ServiceField, SortOrder, Tag, TaskDefinitionField, TaskDefinitionStatus,
};
use budget::{Budget, Spend};
use bytes::Bytes;
use serde_json::{Map, Value};

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("ECS {operation} {target}: {code}: {message}")]
    Api {
        operation: &'static str,
        target: String,
        code: String,
        message: String,
        retryable: bool,
    },
    #[error("ECS {operation} {target}: the response has no {missing}")]
    Incomplete {
        operation: &'static str,
        target: String,
        missing: &'static str,
    },
}

impl Error {
    /// Throttling, 5xx and transport failures: worth another attempt later. Everything else
    /// (invalid input, missing cluster, access denied) fails the same way every time.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Api {
                retryable: true,
                ..
            }
        )
    }

    /// ECS refused a deregistered (INACTIVE) revision: it runs no new deployment, but a copy
    /// registered from it does.
    pub fn is_inactive_task_definition(&self) -> bool {
        matches!(self, Error::Api { message, .. } if message.contains("TaskDefinition is inactive"))
    }

    pub fn code(&self) -> &str {
        match self {
            Error::Api { code, .. } => code,
            Error::Incomplete { .. } => "IncompleteResponse",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn api_error<E, R>(operation: &'static str, target: &str, err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let (code, message, retryable) = match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or("Unknown").to_owned();
            let message = e.message().unwrap_or_default().to_owned();
            // RegisterTaskDefinition's ClientException when several registrations of one
            // family race: the next attempt gets its revision.
            let contended = message.contains("Too many concurrent attempts");
            let retryable = code.contains("Throttl")
                || code == "ServerException"
                || code == "ServiceUnavailable"
                || contended;
            (code, message, retryable)
        }
        SdkError::TimeoutError(_) => (
            "Timeout".into(),
            DisplayErrorContext(&err).to_string(),
            true,
        ),
        SdkError::DispatchFailure(_) => (
            "DispatchFailure".into(),
            DisplayErrorContext(&err).to_string(),
            true,
        ),
        _ => (
            "ResponseError".into(),
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

/// A task that stopped, as DescribeTasks tells why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoppedTask {
    pub stop_code: String,
    pub stopped_reason: String,
    pub containers: Vec<StoppedContainer>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoppedContainer {
    pub name: String,
    pub reason: String,
    pub exit_code: Option<i32>,
}

/// A cluster's identity and tags.
#[derive(Debug, Clone)]
pub struct ClusterTags {
    pub arn: String,
    pub name: String,
    pub tags: HashMap<String, String>,
}

/// What `sync` needs to know about a live service.
#[derive(Debug, Clone)]
pub struct LiveService {
    pub arn: String,
    pub task_definition: String,
    pub desired_count: i32,
    pub running_count: i32,
    pub tags: HashMap<String, String>,
    /// Newest first, as ECS lists them.
    pub deployments: Vec<Deployment>,
    /// Newest first; ECS keeps the last 100.
    pub events: Vec<String>,
    /// Being deleted (DRAINING): neither updated nor created again until it is INACTIVE.
    pub draining: bool,
    /// The UpdateService fields it runs with (network, load balancers, capacity providers, …),
    /// as ECS answered them: what a rollback puts back.
    pub settings: Map<String, Value>,
}

#[derive(Debug, Clone)]
pub struct Deployment {
    pub id: String,
    /// PRIMARY, ACTIVE or INACTIVE.
    pub status: String,
    pub task_definition: String,
    /// IN_PROGRESS, COMPLETED or FAILED; absent for services behind a Classic Load Balancer.
    pub rollout_state: Option<String>,
    pub rollout_state_reason: Option<String>,
    pub desired_count: i32,
    pub running_count: i32,
}

/// A task definition revision, as history reads it.
#[derive(Debug, Clone)]
pub struct Revision {
    /// `family:revision`.
    pub id: String,
    pub number: i32,
    /// Not deregistered.
    pub active: bool,
    /// RFC 3339.
    pub registered_at: Option<String>,
    pub tags: HashMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct LiveTaskDefinition {
    pub arn: String,
    pub tags: HashMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct Ecs {
    client: aws_sdk_ecs::Client,
    /// Shared by every clone, so all jobs of a worker pace their calls together.
    budget: Arc<Budget>,
    /// Set on a worker's client: see [`Ecs::joining_reads`].
    joiner: Option<Arc<join::Joiner>>,
}

impl Ecs {
    /// A client without pacing (one-shot commands; the receiver's few reads).
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Ecs::with_budget(config, Budget::unlimited())
    }

    pub fn with_budget(config: &aws_config::SdkConfig, budget: Budget) -> Self {
        Ecs {
            client: aws_sdk_ecs::Client::new(config),
            budget: Arc::new(budget),
            joiner: None,
        }
    }

    /// Reads of one service made by concurrent jobs within a few milliseconds of each other go
    /// out together, ten to a DescribeServices call. For a worker; a one-shot command reads
    /// what it needs in batches itself.
    pub fn joining_reads(mut self) -> Self {
        self.joiner = Some(Arc::default());
        self
    }

    /// The service, or `None` when it does not exist or was deleted (INACTIVE).
    pub async fn describe_service(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<Option<LiveService>> {
        if let Some(joiner) = &self.joiner {
            return joiner.describe(self, cluster, service).await;
        }
        Ok(self
            .describe_services(cluster, &[service])
            .await?
            .remove(service))
    }

    /// The services that exist (not INACTIVE) among `names`, by name: one call per ten, the
    /// most DescribeServices takes.
    pub async fn describe_services(
        &self,
        cluster: &str,
        names: &[&str],
    ) -> Result<HashMap<String, LiveService>> {
        let mut found = HashMap::with_capacity(names.len());
        for batch in names.chunks(10) {
            let target = format!("{cluster}/{}", batch.join(","));
            self.budget.spend(Spend::Call).await;
            let answer = raw::Answer::default();
            let out = self
                .client
                .describe_services()
                .cluster(cluster)
                .set_services(Some(batch.iter().map(|s| (*s).to_owned()).collect()))
                .include(ServiceField::Tags)
                .customize()
                .interceptor(answer.clone())
                .send()
                .await
                .map_err(|e| api_error("DescribeServices", &target, e))?;
            let mut settings = answer.json().map(service_settings).unwrap_or_default();
            for s in out
                .services()
                .iter()
                .filter(|s| s.status() != Some("INACTIVE"))
            {
                let name = s.service_name().unwrap_or_default();
                let mut live = live_service(s);
                live.settings = settings.remove(name).unwrap_or_default();
                found.insert(name.to_owned(), live);
            }
        }
        Ok(found)
    }

    /// The latest ACTIVE revision of a family (or the revision `family:revision` names), or
    /// `None` when there is none.
    pub async fn describe_task_definition(
        &self,
        family: &str,
    ) -> Result<Option<LiveTaskDefinition>> {
        self.budget.spend(Spend::Call).await;
        let out = self
            .client
            .describe_task_definition()
            .task_definition(family)
            .include(TaskDefinitionField::Tags)
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            // ECS answers a family without ACTIVE revisions with a ClientException.
            Err(SdkError::ServiceError(e)) if e.err().code() == Some("ClientException") => {
                return Ok(None);
            }
            Err(e) => return Err(api_error("DescribeTaskDefinition", family, e)),
        };
        let arn = out
            .task_definition()
            .and_then(|t| t.task_definition_arn())
            .map(str::to_owned);
        Ok(arn.map(|arn| LiveTaskDefinition {
            arn,
            tags: tags(out.tags()),
        }))
    }

    /// Registers a copy of `revision` (ACTIVE or not) with its tags, as a new revision of its
    /// family; returns the copy's ARN. `overrides` replace (or add) tags of the same key: the
    /// copy is a deployment of its own, with its own audit trail.
    pub async fn copy_task_definition(
        &self,
        revision: &str,
        overrides: &[(String, String)],
    ) -> Result<String> {
        let incomplete = Error::Incomplete {
            operation: "DescribeTaskDefinition",
            target: revision.to_owned(),
            missing: "taskDefinition",
        };
        self.budget.spend(Spend::Call).await;
        let answer = raw::Answer::default();
        self.client
            .describe_task_definition()
            .task_definition(revision)
            .include(TaskDefinitionField::Tags)
            .customize()
            .interceptor(answer.clone())
            .send()
            .await
            .map_err(|e| api_error("DescribeTaskDefinition", revision, e))?;
        let Some(Value::Object(mut answer)) = answer.json() else {
            return Err(incomplete);
        };
        let Some(Value::Object(mut input)) = answer.remove("taskDefinition") else {
            return Err(incomplete);
        };
        // What ECS adds to a registered revision, which RegisterTaskDefinition does not take.
        for read_only in [
            "taskDefinitionArn",
            "revision",
            "status",
            "requiresAttributes",
            "compatibilities",
            "registeredAt",
            "registeredBy",
            "deregisteredAt",
            "deleteRequestedAt",
        ] {
            input.remove(read_only);
        }
        input.retain(|_, v| !v.is_null());
        let mut tags: Vec<Value> = match answer.remove("tags") {
            Some(Value::Array(tags)) => tags,
            _ => Vec::new(),
        };
        tags.retain(|t| {
            let key = t.get("key").and_then(Value::as_str);
            !overrides.iter().any(|(k, _)| Some(k.as_str()) == key)
        });
        tags.extend(
            overrides
                .iter()
                .map(|(k, v)| serde_json::json!({"key": k, "value": v})),
        );
        if !tags.is_empty() {
            input.insert("tags".into(), Value::Array(tags));
        }
        self.register_task_definition(&input).await
    }

    /// The newest `limit` revisions of `family` (at most 100), ACTIVE or deregistered, newest
    /// first, each with its tags: an app's deployment history.
    pub async fn revisions(&self, family: &str, limit: usize) -> Result<Vec<Revision>> {
        let limit = limit.clamp(1, 100);
        let mut ids = Vec::new();
        for status in [TaskDefinitionStatus::Active, TaskDefinitionStatus::Inactive] {
            // Newest first, so one page holds the newest `limit` of each status.
            self.budget.spend(Spend::Call).await;
            let out = self
                .client
                .list_task_definitions()
                .family_prefix(family)
                .status(status)
                .sort(SortOrder::Desc)
                .max_results(i32::try_from(limit).unwrap_or(100))
                .send()
                .await
                .map_err(|e| api_error("ListTaskDefinitions", family, e))?;
            ids.extend(
                out.task_definition_arns()
                    .iter()
                    .map(|arn| task_definition_id(arn).to_owned())
                    .filter_map(|id| {
                        let (f, n) = id.rsplit_once(':')?;
                        (f == family).then(|| (n.parse::<i32>().ok(), id.clone()))
                    })
                    .filter_map(|(n, id)| Some((n?, id))),
            );
        }
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.dedup();
        ids.truncate(limit);
        let mut revisions = Vec::with_capacity(ids.len());
        for (number, id) in ids {
            self.budget.spend(Spend::Call).await;
            let out = self
                .client
                .describe_task_definition()
                .task_definition(&id)
                .include(TaskDefinitionField::Tags)
                .send()
                .await
                .map_err(|e| api_error("DescribeTaskDefinition", &id, e))?;
            let td = out.task_definition();
            revisions.push(Revision {
                number,
                active: td.and_then(|t| t.status()) == Some(&TaskDefinitionStatus::Active),
                registered_at: td
                    .and_then(|t| t.registered_at())
                    .and_then(|at| at.fmt(aws_smithy_types::date_time::Format::DateTime).ok()),
                tags: tags(out.tags()),
                id,
            });
        }
        Ok(revisions)
    }

    /// Registers `input` (RegisterTaskDefinition JSON) as sent; returns the new revision's ARN.
    pub async fn register_task_definition(&self, input: &Map<String, Value>) -> Result<String> {
        let family = input
            .get("family")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.budget.spend(Spend::Register).await;
        let out = self
            .client
            .register_task_definition()
            .family(family)
            .customize()
            .interceptor(raw::JsonBody(to_body(input)))
            .send()
            .await
            .map_err(|e| api_error("RegisterTaskDefinition", family, e))?;
        out.task_definition()
            .and_then(|t| t.task_definition_arn())
            .map(str::to_owned)
            .ok_or(Error::Incomplete {
                operation: "RegisterTaskDefinition",
                target: family.to_owned(),
                missing: "taskDefinitionArn",
            })
    }

    /// CreateService with `input` as sent; returns the id of the service's first deployment,
    /// when ECS names it.
    pub async fn create_service(&self, input: &Map<String, Value>) -> Result<Option<String>> {
        let name = input
            .get("serviceName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let target = target(input, name);
        self.budget.spend(Spend::Call).await;
        let out = self
            .client
            .create_service()
            .service_name(name)
            .customize()
            .interceptor(raw::JsonBody(to_body(input)))
            .send()
            .await
            .map_err(|e| api_error("CreateService", &target, e))?;
        Ok(out.service().and_then(primary_deployment))
    }

    /// UpdateService with `input` as sent.
    /// Updates the service; returns the id of the deployment it now rolls out (a new one when the
    /// update starts one), when ECS names it.
    pub async fn update_service(&self, input: &Map<String, Value>) -> Result<Option<String>> {
        let name = input
            .get("service")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let target = target(input, name);
        self.budget.spend(Spend::Call).await;
        let out = self
            .client
            .update_service()
            .service(name)
            .customize()
            .interceptor(raw::JsonBody(to_body(input)))
            .send()
            .await
            .map_err(|e| api_error("UpdateService", &target, e))?;
        Ok(out.service().and_then(primary_deployment))
    }

    /// The names of every service in the cluster.
    pub async fn list_services(&self, cluster: &str) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut next = None;
        loop {
            self.budget.spend(Spend::Call).await;
            let out = self
                .client
                .list_services()
                .cluster(cluster)
                .set_next_token(next)
                .send()
                .await
                .map_err(|e| api_error("ListServices", cluster, e))?;
            names.extend(
                out.service_arns()
                    .iter()
                    .map(|arn| arn.rsplit('/').next().unwrap_or(arn).to_owned()),
            );
            next = out.next_token().map(str::to_owned);
            if next.is_none() {
                return Ok(names);
            }
        }
    }

    /// Scales the service to zero tasks, then deletes it. A service already being deleted
    /// (DRAINING) counts as deleted, so a retry goes on where the last attempt stopped.
    pub async fn delete_service(&self, cluster: &str, service: &str) -> Result<()> {
        let target = format!("{cluster}/{service}");
        let already =
            |e: &Error| matches!(e, Error::Api { code, .. } if code.contains("ServiceNotActive"));
        self.budget.spend(Spend::Call).await;
        let scaled = self
            .client
            .update_service()
            .cluster(cluster)
            .service(service)
            .desired_count(0)
            .send()
            .await
            .map_err(|e| api_error("UpdateService", &target, e));
        match scaled {
            Err(e) if already(&e) => return Ok(()),
            other => other?,
        };
        self.budget.spend(Spend::Call).await;
        let deleted = self
            .client
            .delete_service()
            .cluster(cluster)
            .service(service)
            .send()
            .await
            .map_err(|e| api_error("DeleteService", &target, e));
        match deleted {
            Err(e) if already(&e) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Tasks of `deployment` of a service that have stopped, with what ECS says of why: among
    /// the service's 100 newest stopped tasks (ECS keeps about an hour's worth). Filtered here
    /// by `startedBy`: ListTasks takes `startedBy` only as its one filter.
    pub async fn stopped_tasks(
        &self,
        cluster: &str,
        service: &str,
        deployment: &str,
    ) -> Result<Vec<StoppedTask>> {
        self.budget.spend(Spend::Call).await;
        let listed = self
            .client
            .list_tasks()
            .cluster(cluster)
            .service_name(service)
            .desired_status(aws_sdk_ecs::types::DesiredStatus::Stopped)
            .max_results(100)
            .send()
            .await
            .map_err(|e| api_error("ListTasks", service, e))?;
        if listed.task_arns().is_empty() {
            return Ok(Vec::new());
        }
        self.budget.spend(Spend::Call).await;
        let described = self
            .client
            .describe_tasks()
            .cluster(cluster)
            .set_tasks(Some(listed.task_arns().to_vec()))
            .send()
            .await
            .map_err(|e| api_error("DescribeTasks", deployment, e))?;
        Ok(described
            .tasks()
            .iter()
            .filter(|t| t.started_by() == Some(deployment))
            .map(|t| StoppedTask {
                stop_code: t
                    .stop_code()
                    .map(|c| c.as_str().to_owned())
                    .unwrap_or_default(),
                stopped_reason: t.stopped_reason().unwrap_or_default().to_owned(),
                containers: t
                    .containers()
                    .iter()
                    .map(|c| StoppedContainer {
                        name: c.name().unwrap_or_default().to_owned(),
                        reason: c.reason().unwrap_or_default().to_owned(),
                        exit_code: c.exit_code(),
                    })
                    .collect(),
            })
            .collect())
    }

    /// The ACTIVE revisions of a family, as `family:revision`.
    pub async fn list_task_definitions(&self, family: &str) -> Result<Vec<String>> {
        let mut found = Vec::new();
        let mut next = None;
        loop {
            self.budget.spend(Spend::Call).await;
            let out = self
                .client
                .list_task_definitions()
                .family_prefix(family)
                .status(TaskDefinitionStatus::Active)
                .set_next_token(next)
                .send()
                .await
                .map_err(|e| api_error("ListTaskDefinitions", family, e))?;
            // A prefix: `api` also lists `api-worker`.
            found.extend(
                out.task_definition_arns()
                    .iter()
                    .map(|arn| task_definition_id(arn).to_owned())
                    .filter(|id| id.rsplit_once(':').is_some_and(|(f, _)| f == family)),
            );
            next = out.next_token().map(str::to_owned);
            if next.is_none() {
                return Ok(found);
            }
        }
    }

    pub async fn deregister_task_definition(&self, task_definition: &str) -> Result<()> {
        self.budget.spend(Spend::Register).await;
        self.client
            .deregister_task_definition()
            .task_definition(task_definition)
            .send()
            .await
            .map_err(|e| api_error("DeregisterTaskDefinition", task_definition, e))?;
        Ok(())
    }

    /// The cluster's status (ACTIVE, INACTIVE, …), `None` when there is no such cluster.
    pub async fn cluster_status(&self, cluster: &str) -> Result<Option<String>> {
        self.budget.spend(Spend::Call).await;
        let out = self
            .client
            .describe_clusters()
            .clusters(cluster)
            .send()
            .await
            .map_err(|e| api_error("DescribeClusters", cluster, e))?;
        Ok(out
            .clusters()
            .first()
            .and_then(|c| c.status().map(str::to_owned)))
    }

    /// An ACTIVE cluster's ARN and tags; `None` when there is no such cluster (or it is being
    /// deleted).
    pub async fn cluster_tags(&self, cluster: &str) -> Result<Option<ClusterTags>> {
        Ok(self.describe_clusters(&[cluster]).await?.pop())
    }

    /// The ACTIVE clusters among `clusters` (names or ARNs, at most 100), with their tags.
    pub async fn describe_clusters(&self, clusters: &[&str]) -> Result<Vec<ClusterTags>> {
        self.budget.spend(Spend::Call).await;
        let out = self
            .client
            .describe_clusters()
            .set_clusters(Some(clusters.iter().map(|c| (*c).to_owned()).collect()))
            .include(ClusterField::Tags)
            .send()
            .await
            .map_err(|e| api_error("DescribeClusters", &clusters.join(","), e))?;
        Ok(out
            .clusters()
            .iter()
            .filter(|c| c.status() == Some("ACTIVE"))
            .map(|c| ClusterTags {
                arn: c.cluster_arn().unwrap_or_default().to_owned(),
                name: c.cluster_name().unwrap_or_default().to_owned(),
                tags: tags(c.tags()),
            })
            .collect())
    }

    /// Every cluster of the account in this region, by ARN.
    pub async fn list_clusters(&self) -> Result<Vec<String>> {
        let mut arns = Vec::new();
        let mut next = None;
        loop {
            self.budget.spend(Spend::Call).await;
            let out = self
                .client
                .list_clusters()
                .set_next_token(next)
                .send()
                .await
                .map_err(|e| api_error("ListClusters", "", e))?;
            arns.extend(out.cluster_arns().iter().cloned());
            next = out.next_token().map(str::to_owned);
            if next.is_none() {
                return Ok(arns);
            }
        }
    }

    pub async fn untag_resource(&self, arn: &str, keys: &[&str]) -> Result<()> {
        self.budget.spend(Spend::Call).await;
        self.client
            .untag_resource()
            .resource_arn(arn)
            .set_tag_keys(Some(keys.iter().map(|k| (*k).to_owned()).collect()))
            .send()
            .await
            .map_err(|e| api_error("UntagResource", arn, e))?;
        Ok(())
    }

    pub async fn tag_resource(&self, arn: &str, tags: &[(String, String)]) -> Result<()> {
        let tags = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        self.budget.spend(Spend::Call).await;
        self.client
            .tag_resource()
            .resource_arn(arn)
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| api_error("TagResource", arn, e))?;
        Ok(())
    }
}

/// What `sync` needs of a DescribeServices answer.
fn live_service(s: &aws_sdk_ecs::types::Service) -> LiveService {
    LiveService {
        arn: s.service_arn().unwrap_or_default().to_owned(),
        task_definition: s.task_definition().unwrap_or_default().to_owned(),
        desired_count: s.desired_count(),
        running_count: s.running_count(),
        tags: tags(s.tags()),
        deployments: s
            .deployments()
            .iter()
            .map(|d| Deployment {
                id: d.id().unwrap_or_default().to_owned(),
                status: d.status().unwrap_or_default().to_owned(),
                task_definition: d.task_definition().unwrap_or_default().to_owned(),
                rollout_state: d.rollout_state().map(|r| r.as_str().to_owned()),
                rollout_state_reason: d.rollout_state_reason().map(str::to_owned),
                desired_count: d.desired_count(),
                running_count: d.running_count(),
            })
            .collect(),
        events: s
            .events()
            .iter()
            .filter_map(|e| e.message().map(str::to_owned))
            .collect(),
        draining: s.status() == Some("DRAINING"),
        settings: Map::new(),
    }
}

/// UpdateService's fields that DescribeServices shows on the service itself.
const SERVICE_SETTINGS: [&str; 14] = [
    "availabilityZoneRebalancing",
    "capacityProviderStrategy",
    "deploymentConfiguration",
    "deploymentController",
    "enableECSManagedTags",
    "enableExecuteCommand",
    "healthCheckGracePeriodSeconds",
    "loadBalancers",
    "networkConfiguration",
    "placementConstraints",
    "placementStrategy",
    "platformVersion",
    "propagateTags",
    "serviceRegistries",
];

/// UpdateService's fields that DescribeServices shows only on each deployment.
const DEPLOYMENT_SETTINGS: [&str; 3] = [
    "serviceConnectConfiguration",
    "volumeConfigurations",
    "vpcLatticeConfigurations",
];

/// Each service's settings in a DescribeServices answer, by name, as ECS wrote them: the
/// service's own, and its PRIMARY deployment's.
fn service_settings(answer: Value) -> HashMap<String, Map<String, Value>> {
    let Value::Object(mut answer) = answer else {
        return HashMap::new();
    };
    let Some(Value::Array(services)) = answer.remove("services") else {
        return HashMap::new();
    };
    let mut by_name = HashMap::with_capacity(services.len());
    for service in services {
        let Value::Object(mut service) = service else {
            continue;
        };
        let Some(Value::String(name)) = service.remove("serviceName") else {
            continue;
        };
        let primary = service
            .get("deployments")
            .and_then(Value::as_array)
            .and_then(|ds| ds.iter().find(|d| d["status"] == "PRIMARY"))
            .cloned();
        let mut settings = Map::new();
        for key in SERVICE_SETTINGS {
            if let Some(value) = service.remove(key) {
                settings.insert(key.to_owned(), value);
            }
        }
        if let Some(Value::Object(mut primary)) = primary {
            for key in DEPLOYMENT_SETTINGS {
                if let Some(value) = primary.remove(key) {
                    settings.insert(key.to_owned(), value);
                }
            }
        }
        by_name.insert(name, settings);
    }
    by_name
}

fn to_body(input: &Map<String, Value>) -> Bytes {
    Bytes::from(serde_json::to_vec(input).expect("a JSON map always serialises"))
}

fn target(input: &Map<String, Value>, name: &str) -> String {
    let cluster = input
        .get("cluster")
        .and_then(Value::as_str)
        .unwrap_or("default");
    format!("{cluster}/{name}")
}

fn tags(tags: &[Tag]) -> HashMap<String, String> {
    tags.iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
        .collect()
}

/// `family:revision` of a task definition ARN (or of `family:revision` itself), so ARNs and the
/// short form ECS sometimes echoes compare equal.
pub fn task_definition_id(arn_or_id: &str) -> &str {
    arn_or_id
        .rsplit_once("task-definition/")
        .map_or(arn_or_id, |(_, id)| id)
}

fn primary_deployment(service: &aws_sdk_ecs::types::Service) -> Option<String> {
    service
        .deployments()
        .iter()
        .find(|d| d.status() == Some("PRIMARY"))
        .and_then(|d| d.id())
        .map(str::to_owned)
}
