//! The desired state: for each app, the exact ECS inputs fleetsync will send, and a spec hash
//! that identifies them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// Tags fleetsync puts on everything it deploys, so every ECS object says where it came from.
pub mod tag {
    pub const PREFIX: &str = "fleetsync:";
    pub const ROOT: &str = "fleetsync:root";
    pub const ENVIRONMENT: &str = "fleetsync:environment";
    pub const APP: &str = "fleetsync:app";
    pub const REVISION: &str = "fleetsync:revision";
    /// For an app kept in another repository (`source:`): that repository and its commit, as
    /// `repo@commit`. Emptied when the app moves back into the config repo; not written for
    /// other apps (two tags per app cost 14 MiB of the 10,000-app resolve).
    pub const SOURCE: &str = "fleetsync:source";
    /// On services: the hash of everything fleetsync sends for the app.
    pub const SPEC_HASH: &str = "fleetsync:spec-hash";
    /// On task definitions: the hash of the RegisterTaskDefinition input alone.
    pub const TASK_DEFINITION_HASH: &str = "fleetsync:task-definition-hash";
    /// On services: the task definition (`family:revision`) fleetsync set, so a change made
    /// elsewhere shows.
    pub const TASK_DEFINITION: &str = "fleetsync:task-definition";
    /// On services: a spec that failed for good. When its rollout failed, reconcile does not
    /// apply it again; a push that changes the spec, or a sync through the API, does.
    pub const FAILED_SPEC_HASH: &str = "fleetsync:failed-spec-hash";
    /// On services, beside `failed-spec-hash`: why it failed (`RolloutFailed`, `RolloutTimeout`,
    /// `PreflightRefused`, `DependenciesNotLive` or the AWS error code), a space, and the
    /// commit. One tag for both: ECS allows 50 per resource.
    pub const FAILURE: &str = "fleetsync:failure";
    /// With a failed rollout's mark: its cause and fix, when the stopped tasks told
    /// (`sync::diagnose`).
    pub const CAUSE: &str = "fleetsync:cause";
    /// When the failure marked was last told, and how many times: `<unix seconds> <count>`.
    pub const FAILURE_TOLD: &str = "fleetsync:failure-told";
    /// On services: the id of the deployment fleetsync's last update started, so an attempt
    /// that resumes watching it follows that deployment, not whichever one runs its task
    /// definition (the circuit breaker's rollback of a change to service fields alone runs the
    /// same one, and would read as success).
    pub const DEPLOYMENT: &str = "fleetsync:deployment";
    /// On services: which of the app's own tag keys fleetsync set, so that one the spec no
    /// longer has is removed while tags of other tooling stay. A key is 6 base64 characters of
    /// its SHA-256 (36 bits: a foreign key mistaken for one of ours is a one-in-ten-billion
    /// chance per key), concatenated: 38 keys fit ECS's 256-character value.
    pub const TAG_KEYS: &str = "fleetsync:tag-keys";
    /// On a preview's services and task definitions: the pull request's number. A preview
    /// updates or deletes only what carries its own.
    pub const PREVIEW: &str = "fleetsync:preview";
    /// On a preview's service with `previews.ingress`: where it is reached. Teardown removes
    /// the target group and rule of a service that has it.
    pub const URL: &str = "fleetsync:url";

    /// The audit trail, on services (the last deployment) and on the task definition
    /// revisions fleetsync registers (the deployment that registered each): what started it
    /// (`push`, `api`, `reconcile`, `rollback`, `preview`), on whose word (the pusher, the API
    /// token's name), the author of the commit deployed, and why (a push's head commit
    /// message, the reason given to the API, what reconcile found drifted).
    pub const TRIGGER: &str = "fleetsync:trigger";
    pub const ACTOR: &str = "fleetsync:actor";
    pub const COMMIT_AUTHOR: &str = "fleetsync:commit-author";
    pub const REASON: &str = "fleetsync:reason";
    /// On task definition revisions: how the last rollout of the revision ended (`completed`,
    /// `rolled-back`, `failed`), for history and for choosing what a rollback returns to.
    pub const RESULT: &str = "fleetsync:result";
    /// On services: the commit an API rollback moved away from. No push or reconcile of that
    /// commit applies while it is set; a newer commit, or an explicit sync, does.
    pub const ROLLED_BACK_FROM: &str = "fleetsync:rolled-back-from";

    /// ECS's limit on a tag value, in characters.
    pub const MAX_VALUE_CHARS: usize = 256;

    /// Whether ECS takes `c` in a tag key or value: its Tag shape's pattern,
    /// `^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$`.
    pub fn is_allowed(c: char) -> bool {
        use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};
        matches!(c, '_' | '.' | ':' | '/' | '=' | '+' | '-' | '@')
            || matches!(
                c.general_category_group(),
                GeneralCategoryGroup::Letter
                    | GeneralCategoryGroup::Separator
                    | GeneralCategoryGroup::Number
            )
    }

    /// Text from outside (a commit message, an author's name, a reason typed into the API) as
    /// a value ECS takes: characters it refuses and control characters become spaces, runs of
    /// spaces one, cut to 256 characters. A value may not start with `aws:` (reserved).
    pub fn value(text: &str) -> String {
        let mut out = String::with_capacity(text.len().min(MAX_VALUE_CHARS));
        let mut chars = 0;
        let mut space = true; // no leading space
        for c in text.chars() {
            if chars == MAX_VALUE_CHARS {
                break;
            }
            let c = if is_allowed(c) && !c.is_whitespace() {
                c
            } else {
                ' '
            };
            if c == ' ' {
                if space {
                    continue;
                }
                space = true;
            } else {
                space = false;
            }
            out.push(c);
            chars += 1;
        }
        if out.ends_with(' ') {
            out.pop();
        }
        if out.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("aws:")) {
            out.replace_range(3..4, "_");
        }
        out
    }

    /// The part of [`TAG_KEYS`] that stands for `key`.
    pub fn key_digest(key: &str) -> String {
        use base64::Engine;
        use sha2::Digest;
        let digest = sha2::Sha256::digest(key.as_bytes());
        let mut text = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&digest[..6]);
        text.truncate(KEY_DIGEST_LEN);
        text
    }

    pub const KEY_DIGEST_LEN: usize = 6;

    /// The keys among `keys` whose digest is in a [`TAG_KEYS`] value.
    pub fn set_by_us<'a>(recorded: &str, keys: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
        let recorded: std::collections::HashSet<&[u8]> =
            recorded.as_bytes().chunks(KEY_DIGEST_LEN).collect();
        keys.filter(|k| recorded.contains(key_digest(k).as_bytes()))
            .collect()
    }
}

/// Fields of a CreateService input that UpdateService also takes; the rest (launchType,
/// schedulingStrategy, role, ...) are fixed when a service is created.
const UPDATABLE_SERVICE_FIELDS: &[&str] = &[
    "desiredCount",
    "capacityProviderStrategy",
    "deploymentConfiguration",
    "availabilityZoneRebalancing",
    "networkConfiguration",
    "placementConstraints",
    "placementStrategy",
    "platformVersion",
    "healthCheckGracePeriodSeconds",
    "deploymentController",
    "enableExecuteCommand",
    "enableECSManagedTags",
    "loadBalancers",
    "propagateTags",
    "serviceRegistries",
    "serviceConnectConfiguration",
    "volumeConfigurations",
    "vpcLatticeConfigurations",
];

/// Where a desired state comes from.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub root: String,
    pub environment: String,
    pub commit: String,
    /// Set for an app read from another repository.
    pub source: Option<SourceUse>,
    /// Set when resolving a pull request's preview.
    pub preview: Option<super::preview::Preview>,
}

/// Fields a preview drops: they attach the service to load balancers and namespaces that its
/// environment's own service uses (and ECS takes a grace period only with a load balancer).
const PREVIEW_DROPPED_FIELDS: &[&str] = &[
    "loadBalancers",
    "serviceRegistries",
    "serviceConnectConfiguration",
    "healthCheckGracePeriodSeconds",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredState {
    pub root: String,
    pub environment: String,
    pub cluster: String,
    pub commit: String,
    /// Delete the services this root deployed to the environment and no longer lists.
    pub prune: bool,
    pub apps: Vec<DesiredApp>,
    /// The other repositories read (`source:` entries), and at which commit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceUse>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceUse {
    pub repo: String,
    /// As the manifest names it, or the environment's branch when it does not.
    pub reference: String,
    pub commit: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredApp {
    pub name: String,
    pub root: String,
    pub environment: String,
    pub cluster: String,
    pub commit: String,
    /// The other repository the app was read from, and its commit there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceUse>,
    pub depends_on: Vec<String>,
    /// Hash of the ECS inputs without fleetsync's own tags: equal hashes mean nothing to do.
    pub spec_hash: String,
    /// Hash of the task definition input alone: a service-only change reuses the live revision.
    pub task_definition_hash: String,
    pub register_task_definition: Map<String, Value>,
    /// `taskDefinition` holds the family; the worker pins the revision it registered.
    pub create_service: Map<String, Value>,
    /// Sent instead of `create_service` when the service exists, followed by TagResource.
    pub update_service: Map<String, Value>,
    pub rollout: RolloutSpec,
    /// The other environments of the root bound to the same cluster (by the root on the
    /// default branch): a service one of them deployed is theirs, not this app's to take.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub neighbours: Vec<String>,
    /// The pull request whose preview this app is part of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<u64>,
    /// A preview app's route through `previews.ingress`: the worker makes it and points the
    /// service at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<PreviewIngress>,
}

/// The target group and listener rule a preview app gets, made from the load balancer entry
/// of the `from` environment's service (whose own target group the preview never joins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviewIngress {
    pub listener_arn: String,
    pub host: String,
    /// The environment's target group: the preview's copies its VPC, protocol and health check.
    pub like_target_group: String,
    pub container_name: String,
    pub container_port: u16,
    /// The environment's `healthCheckGracePeriodSeconds`, which ECS takes only with a load
    /// balancer: restored with the preview's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period_seconds: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    pub wait: bool,
    pub timeout_seconds: u64,
}

impl DesiredApp {
    pub(super) fn new(
        name: &str,
        cluster: &str,
        provenance: &Provenance,
        depends_on: Vec<String>,
        mut task_definition: Map<String, Value>,
        mut service: Map<String, Value>,
        rollout: RolloutSpec,
    ) -> Self {
        // Task definitions are account-wide, not per cluster: without an explicit family, two
        // environments in one account would share (and overwrite) one revision history.
        task_definition
            .entry("family")
            .or_insert_with(|| Value::String(format!("{}-{name}", provenance.environment)));
        let mut family = task_definition["family"]
            .as_str()
            .unwrap_or(name)
            .to_owned();
        let mut service_name = service
            .get("serviceName")
            .and_then(Value::as_str)
            .unwrap_or(name)
            .to_owned();
        let preview = provenance.preview.as_ref();
        let cluster = preview.map_or(cluster, |p| p.cluster.as_str());
        let mut ingress = None;
        if let Some(p) = preview {
            // Confined by construction: whatever the pull request's files say, its services
            // and families carry its name and run in the preview cluster.
            let suffix = format!("-{}", p.name());
            family.push_str(&suffix);
            service_name.push_str(&suffix);
            task_definition.insert("family".into(), json!(family));
            ingress = p.ingress.as_ref().and_then(|i| {
                let entry = service
                    .get("loadBalancers")?
                    .as_array()?
                    .iter()
                    .find(|e| e.get("targetGroupArn").is_some())?;
                Some(PreviewIngress {
                    listener_arn: i.listener_arn.clone(),
                    host: i.host_for(name, &p.name(), &provenance.environment),
                    like_target_group: entry["targetGroupArn"].as_str()?.to_owned(),
                    container_name: entry.get("containerName")?.as_str()?.to_owned(),
                    container_port: entry.get("containerPort")?.as_u64()?.try_into().ok()?,
                    grace_period_seconds: service
                        .get("healthCheckGracePeriodSeconds")
                        .and_then(Value::as_u64),
                })
            });
            for field in PREVIEW_DROPPED_FIELDS {
                service.remove(*field);
            }
            if let Some(count) = service.get("desiredCount").and_then(Value::as_u64) {
                service.insert(
                    "desiredCount".into(),
                    json!(count.min(p.desired_count.into())),
                );
            } else if service.get("schedulingStrategy").and_then(Value::as_str) != Some("DAEMON") {
                service.insert("desiredCount".into(), json!(p.desired_count.min(1)));
            }
        }

        let mut create_service = Map::new();
        create_service.insert("cluster".into(), json!(cluster));
        create_service.extend(service);
        create_service.insert("serviceName".into(), json!(service_name));
        create_service.insert("taskDefinition".into(), json!(family));

        let task_definition_hash = hash(&json!({"registerTaskDefinition": task_definition}));
        let mut spec =
            json!({"registerTaskDefinition": task_definition, "createService": create_service});
        if let Some(ingress) = &ingress {
            spec["ingress"] = json!(ingress);
        }
        let spec_hash = hash(&spec);
        let td_tags = provenance_tags(
            name,
            provenance,
            (tag::TASK_DEFINITION_HASH, &task_definition_hash),
        );
        append_tags(&mut task_definition, &td_tags);
        // The service also names its task definition's hash, so a change to the service
        // alone reuses the revision it runs without reading it.
        let mut service_tags = provenance_tags(name, provenance, (tag::SPEC_HASH, &spec_hash));
        service_tags.push((
            tag::TASK_DEFINITION_HASH.to_owned(),
            task_definition_hash.clone(),
        ));
        let own_keys: String = user_tags(&create_service)
            .map(|(key, _)| tag::key_digest(key))
            .collect();
        service_tags.push((tag::TAG_KEYS.to_owned(), own_keys));
        append_tags(&mut create_service, &service_tags);

        let mut update_service = Map::new();
        update_service.insert("cluster".into(), json!(cluster));
        update_service.insert("service".into(), create_service["serviceName"].clone());
        update_service.insert("taskDefinition".into(), json!(family));
        for field in UPDATABLE_SERVICE_FIELDS {
            if let Some(v) = create_service.get(*field) {
                update_service.insert((*field).into(), v.clone());
            }
        }
        // CreateService needs a count for REPLICA services; later updates leave it alone when
        // the app declares none (Application Auto Scaling owns it then).
        if create_service
            .get("schedulingStrategy")
            .and_then(Value::as_str)
            != Some("DAEMON")
        {
            create_service.entry("desiredCount").or_insert(json!(1));
        }

        DesiredApp {
            name: name.to_owned(),
            root: provenance.root.clone(),
            environment: provenance.environment.clone(),
            cluster: cluster.to_owned(),
            commit: provenance.commit.clone(),
            source: provenance.source.clone(),
            depends_on,
            spec_hash,
            task_definition_hash,
            register_task_definition: task_definition,
            create_service,
            update_service,
            rollout,
            neighbours: Vec::new(),
            preview: preview.map(|p| p.number),
            ingress,
        }
    }

    pub fn service_name(&self) -> &str {
        self.create_service
            .get("serviceName")
            .and_then(Value::as_str)
            .unwrap_or(&self.name)
    }

    pub fn family(&self) -> &str {
        self.register_task_definition
            .get("family")
            .and_then(Value::as_str)
            .unwrap_or(&self.name)
    }

    /// The app of a preview with ingress, pointed at the target group made for it and tagged
    /// with where it is reached.
    pub fn routed(&self, target_group_arn: &str, url: &str) -> DesiredApp {
        let mut app = self.clone();
        if let Some(ingress) = &self.ingress {
            let entry = json!([{
                "targetGroupArn": target_group_arn,
                "containerName": ingress.container_name,
                "containerPort": ingress.container_port,
            }]);
            app.create_service
                .insert("loadBalancers".into(), entry.clone());
            app.update_service.insert("loadBalancers".into(), entry);
            if let Some(grace) = ingress.grace_period_seconds {
                for input in [&mut app.create_service, &mut app.update_service] {
                    input.insert("healthCheckGracePeriodSeconds".into(), json!(grace));
                }
            }
            append_tags(
                &mut app.create_service,
                &[(tag::URL.to_owned(), url.to_owned())],
            );
        }
        app
    }

    /// Where a routed preview app is reached.
    pub fn url(&self) -> Option<&str> {
        user_tags(&self.create_service)
            .find(|(k, _)| *k == tag::URL)
            .map(|(_, v)| v)
    }

    /// Every tag of the service (the app's own and fleetsync's), for TagResource after an
    /// update: UpdateService does not take tags.
    pub fn service_tags(&self) -> Vec<(String, String)> {
        user_tags(&self.create_service)
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Tags of `live` that fleetsync set for an earlier spec and this one no longer has: to
    /// be removed. Tags of other tooling, and fleetsync's own (`fleetsync:`), are never among
    /// them.
    pub fn stale_tags<'a>(
        &self,
        live: &'a std::collections::HashMap<String, String>,
    ) -> Vec<&'a str> {
        let Some(recorded) = live.get(tag::TAG_KEYS) else {
            return Vec::new();
        };
        let wanted: std::collections::HashSet<&str> =
            user_tags(&self.create_service).map(|(k, _)| k).collect();
        let candidates = live.keys().map(String::as_str).filter(|k| {
            !k.starts_with(tag::PREFIX) && !k.starts_with("aws:") && !wanted.contains(k)
        });
        tag::set_by_us(recorded, candidates)
    }
}

fn provenance_tags(app: &str, p: &Provenance, hash: (&str, &str)) -> Vec<(String, String)> {
    let source = p
        .source
        .as_ref()
        .map(|s| format!("{}@{}", s.repo, s.commit));
    [
        (tag::ROOT, p.root.as_str()),
        (tag::ENVIRONMENT, p.environment.as_str()),
        (tag::APP, app),
        (tag::REVISION, p.commit.as_str()),
        hash,
    ]
    .into_iter()
    .chain(source.as_deref().map(|s| (tag::SOURCE, s)))
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .chain(
        p.preview
            .as_ref()
            .map(|preview| (tag::PREVIEW.to_owned(), preview.number.to_string())),
    )
    .collect()
}

/// The tags an input declares itself: (key, value).
fn user_tags(input: &Map<String, Value>) -> impl Iterator<Item = (&str, &str)> {
    input
        .get("tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t.get("key")?.as_str()?, t.get("value")?.as_str()?)))
}

fn append_tags(input: &mut Map<String, Value>, tags: &[(String, String)]) {
    let list = input
        .entry("tags")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = list {
        list.extend(tags.iter().map(|(k, v)| json!({"key": k, "value": v})));
    }
}

/// 128 bits of SHA-256 over the canonical JSON (sorted keys).
fn hash(value: &Value) -> String {
    let canonical = canonical(value);
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    hex::encode(&digest[..16])
}

fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<_> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), canonical(&map[k])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}
