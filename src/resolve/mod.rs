//! Manifests at one commit → the desired state of one environment.
//!
//! Pure: it reads files through [`Files`] and knows nothing of git, HTTP or AWS. Everything that
//! is wrong with a config repo comes back at once as a list of [`Problem`]s, and any problem
//! fails the whole environment: nothing is half-resolved.

mod desired;
pub mod manifest;
mod overlay;
pub mod policy;
pub mod preview;
mod rules;
mod vars;
mod walk;
pub mod yaml;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::rc::Rc;

pub use desired::{
    DesiredApp, DesiredState, PreviewIngress, Provenance, RolloutSpec, SourceUse, tag,
};
pub use manifest::Environment;
pub use manifest::{DEFAULT_MAX_NESTING, MAX_NESTING_LIMIT};
use manifest::{Root, TaskDefinitionSource};
use policy::Policy;
use serde_json::{Map, Value};
pub(crate) use vars::Vars;
use vars::interpolate;
use walk::{Leaf, Origin, Walk, check_app_graph, join};
use yaml::{Kind, Node, Pos};

/// Where the root app lives unless the server config says otherwise.
pub const DEFAULT_ROOT: &str = "fleetsync.yaml";

/// Read access to the files of one commit of a config repo.
pub trait Files {
    /// The file's bytes, or `None` when there is no file at `path`.
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, ReadError>;
}

pub type ReadError = Box<dyn std::error::Error + Send + Sync>;

/// Why a [`Files`] refuses a file whatever it holds (too large, a symlink, a submodule): a
/// problem in the commit, reported at the file, where any other [`ReadError`] is worth a retry.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unusable(pub String);

/// The largest manifest or task definition file read. A file packs far smaller in git than it
/// inflates (8 MB of YAML packed to 22 KiB): [`Files`] check the size before reading.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// The other repositories of the server config, which app entries with `source:` read.
pub trait Sources {
    /// `repo` at `reference` (a branch, a tag or a full commit id): the commit it names and its
    /// files.
    fn open(&self, repo: &str, reference: &str) -> Result<Opened, SourceError>;
}

pub struct Opened {
    pub commit: String,
    pub files: Box<dyn Files>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// No such repository: a mistake in the manifest, reported at its `repo`.
    #[error("{0}")]
    UnknownRepo(String),
    /// No such branch, tag or commit: a mistake in the manifest, reported at its `ref`.
    #[error("{0}")]
    Missing(String),
    /// It could not be read (say, a fetch failed): worth trying again.
    #[error(transparent)]
    Read(ReadError),
}

/// For reading one repository alone: every `source:` is reported as unavailable.
pub struct NoSources;

impl Sources for NoSources {
    fn open(&self, repo: &str, _: &str) -> Result<Opened, SourceError> {
        Err(SourceError::UnknownRepo(format!(
            "repo `{repo}` cannot be read here: only the config repo is"
        )))
    }
}

/// One thing wrong with a config repo, located as `file:line:column`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}", render_problems(.0))]
    Invalid(Vec<Problem>),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: ReadError,
    },
}

fn render_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Collects problems for one file.
pub struct Report<'a> {
    file: &'a str,
    problems: &'a mut Vec<Problem>,
}

impl<'a> Report<'a> {
    pub fn new(file: &'a str, problems: &'a mut Vec<Problem>) -> Self {
        Report { file, problems }
    }
}

/// Reads and checks the root app alone. `Ok(None)` means there is no root file at all: that
/// commit is not a fleetsync environment, which is not an error.
pub fn read_root(files: &dyn Files, root_path: &str) -> Result<Option<Root>, Error> {
    let Some(node) = load(files, root_path)? else {
        return Ok(None);
    };
    let mut problems = Vec::new();
    let root = node
        .and_then(|node| manifest::read_root(&node, &mut Report::new(root_path, &mut problems)));
    match root {
        Some(root) if problems.is_empty() => Ok(Some(root)),
        _ if problems.is_empty() => Err(Error::Invalid(vec![Problem {
            file: root_path.to_owned(),
            line: 1,
            column: 1,
            message:
                "the root app is empty; it needs apiVersion, kind, name, environments and apps"
                    .into(),
        }])),
        _ => Err(Error::Invalid(problems)),
    }
}

/// Resolves one environment at one commit. The root read at this same commit decides what the
/// environment runs.
pub fn resolve(
    files: &dyn Files,
    root_path: &str,
    environment: &str,
    commit: &str,
) -> Result<DesiredState, Error> {
    resolve_with(
        files,
        &NoSources,
        root_path,
        environment,
        commit,
        None,
        None,
    )
}

/// Resolves an environment under a trusted root, the one on the default branch: it decides the
/// environment's branch and cluster and the top-level policy. The resolved root must agree with
/// both; otherwise whoever can push any branch could declare it production or lift its policy.
pub fn resolve_bound(
    files: &dyn Files,
    sources: &dyn Sources,
    root_path: &str,
    trusted: &Root,
    environment: &str,
    commit: &str,
) -> Result<DesiredState, Error> {
    resolve_with(
        files,
        sources,
        root_path,
        environment,
        commit,
        Some(trusted),
        None,
    )
}

/// Every active preview's apps with ingress cost a target group and a listener rule each: past
/// the load balancer's quotas the last previews would fail half made.
fn check_ingress_quotas(
    p: &preview::Preview,
    apps: &[DesiredApp],
    root_path: &str,
    problems: &mut Vec<Problem>,
) {
    let routed = apps.iter().filter(|a| a.ingress.is_some()).count() as u32;
    let needed = routed.saturating_mul(p.max_active);
    let limit = preview::MAX_TARGET_GROUPS.min(preview::MAX_RULES);
    if needed > limit {
        problems.push(Problem {
            file: root_path.to_owned(),
            line: 1,
            column: 1,
            message: format!(
                "`previews.ingress`: {routed} apps with a load balancer × `previews.maxActive` {} = {needed} target groups and listener rules, past the {limit} one Application Load Balancer takes; lower `maxActive` to {} or fewer",
                p.max_active,
                limit / routed.max(1)
            ),
        });
    }
}

/// Resolves pull request `number` at `commit` (its head) as a preview: exactly as the
/// environment `previews.from` of the trusted root would resolve it, with `${preview}` set, then
/// confined: every app renamed `…-pr-<number>`, in `previews.cluster`, its count capped, tagged
/// with the preview. `previews` is the trusted root's: a pull request cannot change its own.
pub fn resolve_preview(
    files: &dyn Files,
    sources: &dyn Sources,
    root_path: &str,
    trusted: &Root,
    number: u64,
    commit: &str,
) -> Result<DesiredState, Error> {
    let Some(previews) = &trusted.previews else {
        return Err(Error::Invalid(vec![Problem {
            file: root_path.to_owned(),
            line: 1,
            column: 1,
            message: "the root on the default branch sets no `previews`; add it there to preview pull requests".into(),
        }]));
    };
    let scope = previews.scope(number);
    resolve_with(
        files,
        sources,
        root_path,
        &previews.from,
        commit,
        Some(trusted),
        Some(&scope),
    )
}

fn resolve_with(
    files: &dyn Files,
    sources: &dyn Sources,
    root_path: &str,
    environment: &str,
    commit: &str,
    trusted: Option<&Root>,
    preview: Option<&preview::Preview>,
) -> Result<DesiredState, Error> {
    let mut root = read_root(files, root_path)?.ok_or_else(|| {
        Error::Invalid(vec![Problem {
            file: root_path.to_owned(),
            line: 1,
            column: 1,
            message: format!("no root app at commit {commit}; create {root_path} or set `root:` in the server config"),
        }])
    })?;
    let mut problems = Vec::new();
    let Some(env) = root.environments.iter().find(|e| e.name == environment) else {
        let known: Vec<_> = root.environments.iter().map(|e| e.name.as_str()).collect();
        Report::new(root_path, &mut problems).at(
            root.environments_pos,
            format!(
                "environment `{environment}` is not declared; declared: {}",
                known.join(", ")
            ),
        );
        return Err(Error::Invalid(problems));
    };
    let binding = trusted.map(|root| root.environments.iter().find(|e| e.name == environment));
    if let Some(None) = binding {
        Report::new(root_path, &mut problems).at(
            env.pos,
            format!("environment `{environment}` is not declared by the root on the default branch; declare it there first"),
        );
        return Err(Error::Invalid(problems));
    }
    if let Some(Some(trusted)) = binding
        && (trusted.branch != env.branch || trusted.cluster != env.cluster)
    {
        Report::new(root_path, &mut problems).at(
            env.pos,
            format!(
                "environment `{environment}` is bound to branch `{}` and cluster `{}` by the root on the default branch, but this root says branch `{}` and cluster `{}`; change environment bindings on the default branch first",
                trusted.branch, trusted.cluster, env.branch, env.cluster
            ),
        );
        return Err(Error::Invalid(problems));
    }

    let env = env.clone();
    let mut vars = Vars::new(&env, commit);
    if let Some(preview) = preview {
        vars.set("preview", preview.name());
    }
    let mut walk = Walk {
        files,
        sources,
        opened: Vec::new(),
        top_file: root_path,
        env: &env,
        vars: &vars,
        commit,
        max_nesting: root.max_nesting,
        leaves: Vec::new(),
        problems,
    };
    let mut scopes = Vec::new();
    let prune = match trusted {
        Some(trusted) => {
            let (own, theirs) = (root.prune.map(|p| p.0), trusted.prune.map(|p| p.0));
            if own.unwrap_or(false) != theirs.unwrap_or(false) {
                Report::new(root_path, &mut walk.problems).at(
                    root.prune.map_or(Pos::at(1, 1), |p| p.1),
                    "this root's `prune` differs from the root's on the default branch, which is the one that applies; change it on the default branch first",
                );
            }
            theirs.unwrap_or(false)
        }
        None => root.prune.is_some_and(|p| p.0),
    };
    let own_policy = root.policy.take();
    let policy = match trusted {
        Some(trusted) => {
            if own_policy.as_ref().map(Policy::rules) != trusted.policy.as_ref().map(Policy::rules)
            {
                let at = own_policy.as_ref().map_or(Pos::at(1, 1), |p| p.pos);
                Report::new(root_path, &mut walk.problems).at(
                    at,
                    "this root's policy differs from the root's on the default branch, which is the one that applies; change the policy on the default branch first",
                );
            }
            trusted.policy.clone()
        }
        None => own_policy,
    };
    if let Some(policy) = policy {
        let origin = if trusted.is_some() {
            Origin::DefaultBranch
        } else {
            Origin::Top
        };
        walk.add_scope(&mut scopes, policy, &root.name, root_path, origin);
    }
    let preview_policy = preview.and_then(|_| trusted?.previews.as_ref()?.policy.clone());
    if let Some(policy) = preview_policy {
        walk.add_scope(
            &mut scopes,
            policy,
            &root.name,
            root_path,
            Origin::DefaultBranch,
        );
    }
    // A preview's services carry the trusted root's name, whatever the PR calls its root:
    // teardown and the sweeper find them by it, and its FIFO groups are named after it.
    let root_name = match (preview, trusted) {
        (Some(_), Some(trusted)) => trusted.name.clone(),
        _ => root.name.clone(),
    };
    // A preview's cluster is no environment's: it has no neighbours.
    let neighbours: Vec<String> = trusted
        .map_or(&root.environments, |t| &t.environments)
        .iter()
        .filter(|e| e.cluster == env.cluster && e.name != env.name && preview.is_none())
        .map(|e| e.name.clone())
        .collect();
    let top_vars = Rc::new(walk.declare(&vars, &root.vars, root_path));
    walk.root(
        root,
        root_path,
        "",
        &[root_path.to_owned()],
        &scopes,
        &top_vars,
        None,
    )?;
    let Walk {
        mut leaves,
        mut problems,
        opened,
        ..
    } = walk;
    check_app_graph(&leaves, &mut problems);

    let provenance = Provenance {
        root: root_name.clone(),
        environment: env.name.clone(),
        commit: commit.to_owned(),
        source: None,
        preview: preview.cloned(),
    };
    let mut apps = Vec::with_capacity(leaves.len());
    let mut services = HashMap::new();
    for leaf in &mut leaves {
        let (files, provenance) = match leaf.source {
            None => (files, provenance.clone()),
            Some(i) => (
                &*opened[i].files,
                Provenance {
                    source: Some(SourceUse {
                        repo: opened[i].repo.clone(),
                        reference: opened[i].reference.clone(),
                        commit: opened[i].commit.clone(),
                    }),
                    ..provenance.clone()
                },
            ),
        };
        let resolved = resolve_app(files, &env, leaf, &vars, &provenance, &mut problems)?;
        // The manifest's tree is done with: with 10,000 apps, keeping every one until the end
        // would double the peak.
        leaf.node = None;
        let Some(app) = resolved else {
            continue;
        };
        let service = app.service_name().to_owned();
        if let Some(other) = services.insert(service.clone(), app.name.clone()) {
            Report::new(&leaf.listed_in, &mut problems).at(
                leaf.app_ref.name_pos,
                format!(
                    "apps `{other}` and `{}` both use service name `{service}` in cluster `{}`",
                    app.name, env.cluster
                ),
            );
        }
        if let Some(ingress) = &app.ingress
            && (ingress.host.len() > preview::MAX_HOST
                || !ingress
                    .host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')))
        {
            Report::new(&leaf.listed_in, &mut problems).at(
                leaf.app_ref.name_pos,
                format!(
                    "app `{}` would be reached at `{}`, which is not a host name of at most {} letters, digits, `.` and `-`; change `previews.ingress.host` or the app's name",
                    app.name,
                    ingress.host,
                    preview::MAX_HOST
                ),
            );
        }
        apps.push(DesiredApp {
            neighbours: neighbours.clone(),
            ..app
        });
    }
    if let Some(p) = preview {
        check_ingress_quotas(p, &apps, root_path, &mut problems);
    }
    if !problems.is_empty() {
        return Err(Error::Invalid(problems));
    }
    Ok(DesiredState {
        root: root_name,
        environment: env.name.clone(),
        cluster: preview.map_or(&env.cluster, |p| &p.cluster).clone(),
        commit: commit.to_owned(),
        // A preview is torn down as a whole, never pruned app by app.
        prune: prune && preview.is_none(),
        apps,
        sources: opened
            .into_iter()
            .map(|o| SourceUse {
                repo: o.repo,
                reference: o.reference,
                commit: o.commit,
            })
            .collect(),
    })
}

/// Reads and parses a YAML file. Outer `None`: no such file; inner `None`: unusable (reported).
fn load(files: &dyn Files, path: &str) -> Result<Option<Option<Node>>, Error> {
    load_as(files, path, path)
}

/// [`load`] for a file that problems name otherwise: `repo@ref:path` in another repository.
fn load_as(files: &dyn Files, path: &str, shown: &str) -> Result<Option<Option<Node>>, Error> {
    let bytes = match files.read(path) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(None),
        Err(source) => {
            return Err(match source.downcast_ref::<Unusable>() {
                Some(Unusable(message)) => Error::Invalid(vec![Problem {
                    file: shown.to_owned(),
                    line: 1,
                    column: 1,
                    message: message.clone(),
                }]),
                None => Error::Read {
                    path: shown.to_owned(),
                    source,
                },
            });
        }
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Err(Error::Invalid(vec![Problem {
            file: shown.to_owned(),
            line: 1,
            column: 1,
            message: "not UTF-8 text; save the file as UTF-8".into(),
        }]));
    };
    match yaml::parse(text) {
        Ok(node) => Ok(Some(node)),
        Err(e) => Err(Error::Invalid(vec![Problem {
            file: shown.to_owned(),
            line: e.pos.line,
            column: e.pos.column,
            message: format!("invalid YAML: {}", e.message),
        }])),
    }
}

/// Top-level keys RegisterTaskDefinition accepts.
const TASK_DEFINITION_FIELDS: &[&str] = &[
    "family",
    "taskRoleArn",
    "executionRoleArn",
    "networkMode",
    "containerDefinitions",
    "volumes",
    "placementConstraints",
    "requiresCompatibilities",
    "cpu",
    "memory",
    "tags",
    "pidMode",
    "ipcMode",
    "proxyConfiguration",
    "inferenceAccelerators",
    "ephemeralStorage",
    "runtimePlatform",
    "enableFaultInjection",
];

/// Top-level keys CreateService accepts that an app may set (fleetsync sets `cluster` and
/// `taskDefinition`).
const SERVICE_FIELDS: &[&str] = &[
    "serviceName",
    "loadBalancers",
    "serviceRegistries",
    "desiredCount",
    "launchType",
    "capacityProviderStrategy",
    "platformVersion",
    "role",
    "deploymentConfiguration",
    "placementConstraints",
    "placementStrategy",
    "networkConfiguration",
    "healthCheckGracePeriodSeconds",
    "schedulingStrategy",
    "deploymentController",
    "tags",
    "enableECSManagedTags",
    "propagateTags",
    "enableExecuteCommand",
    "serviceConnectConfiguration",
    "volumeConfigurations",
    "vpcLatticeConfigurations",
    "availabilityZoneRebalancing",
];

/// Where problems at an overlay's positions are filed until the overlay's path replaces it.
const OVERLAY_FILE: &str = "\0overlay";

/// One app with its environment's overlay applied, if it has one.
fn resolve_app(
    files: &dyn Files,
    env: &Environment,
    leaf: &Leaf,
    env_vars: &Vars,
    provenance: &Provenance,
    problems: &mut Vec<Problem>,
) -> Result<Option<DesiredApp>, Error> {
    let Some(node) = &leaf.node else {
        return Ok(None);
    };
    let real = join(&leaf.dir, &format!("env/{}.yaml", env.name));
    let path = format!("{}{real}", leaf.prefix);
    let overlay = match load_as(files, &real, &path) {
        Ok(None) => None,
        Ok(Some(None)) => None, // an empty overlay changes nothing
        Ok(Some(Some(mut overlay))) => {
            let before = problems.len();
            let mut report = Report::new(&path, problems);
            let allowed = ["taskDefinition", "service", "rollout"];
            manifest::Fields::new(&overlay, "an environment overlay", &allowed, &mut report);
            if problems.len() > before {
                return Ok(None);
            }
            overlay.mark_overlay();
            Some(overlay)
        }
        Err(Error::Invalid(found)) => {
            problems.extend(found);
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let before = problems.len();
    let result = match &overlay {
        None => resolve_app_at(files, env, leaf, node, None, env_vars, provenance, problems),
        Some(overlay) => {
            let mut app_patch = overlay.clone();
            if let Kind::Map(entries) = &mut app_patch.kind {
                entries.retain(|(k, _)| k.as_str() != Some("taskDefinition"));
            }
            let node = overlay::merge(node, &app_patch);
            let td_patch = overlay.get("taskDefinition");
            resolve_app_at(
                files, env, leaf, &node, td_patch, env_vars, provenance, problems,
            )
        }
    };
    for p in &mut problems[before..] {
        if p.file == OVERLAY_FILE {
            p.file.clone_from(&path);
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn resolve_app_at(
    files: &dyn Files,
    env: &Environment,
    leaf: &Leaf,
    node: &Node,
    td_patch: Option<&Node>,
    env_vars: &Vars,
    provenance: &Provenance,
    problems: &mut Vec<Problem>,
) -> Result<Option<DesiredApp>, Error> {
    let (app_ref, dir, app_path) = (&leaf.app_ref, &leaf.dir, &leaf.app_file);
    let before = problems.len();
    let Some(app) = manifest::read_app(node, &app_ref.name, &mut Report::new(app_path, problems))
    else {
        return Ok(None);
    };

    let vars = leaf.vars.with_app(&app_ref.name);
    let (td_file, td_node) = match &app.task_definition {
        TaskDefinitionSource::Inline(node) => (app_path.clone(), node.clone()),
        TaskDefinitionSource::File(name, pos) => {
            let real = join(dir, name);
            let path = format!("{}{real}", leaf.prefix);
            if let Err(why) = manifest::check_relative_path(name) {
                Report::new(app_path, problems).at(*pos, format!("taskDefinition `{name}` {why}"));
                return Ok(None);
            }
            match load_as(files, &real, &path) {
                Ok(Some(Some(node))) => (path, node),
                Ok(Some(None)) => {
                    Report::new(&path, problems)
                        .at(Pos::at(1, 1), "the task definition file is empty");
                    return Ok(None);
                }
                Ok(None) => {
                    Report::new(app_path, problems)
                        .at(*pos, format!("taskDefinition file {path} does not exist"));
                    return Ok(None);
                }
                Err(Error::Invalid(found)) => {
                    problems.extend(found);
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    };
    let td_node = match td_patch {
        Some(patch) => overlay::merge(&td_node, patch),
        None => td_node,
    };
    let task_definition = object(
        &td_node,
        "the task definition",
        TASK_DEFINITION_FIELDS,
        &vars,
        &mut Report::new(&td_file, problems),
    );
    check_containers(&td_node, &mut Report::new(&td_file, problems));
    let service = match &app.service {
        Some(node) => object(
            node,
            "`service`",
            SERVICE_FIELDS,
            &vars,
            &mut Report::new(app_path, problems),
        ),
        None => Some(Map::new()),
    };
    policy::check_app(
        &leaf.scopes,
        &policy::Subject {
            task_definition: &td_node,
            task_definition_file: &td_file,
            service: app.service.as_ref(),
            app_file: app_path,
        },
        &vars,
        env_vars,
        problems,
    );
    check_reserved_tags(
        &td_node,
        USER_TAGS_ON_TASK_DEFINITIONS,
        &mut Report::new(&td_file, problems),
    );
    check_tag_characters(
        &td_node,
        task_definition.as_ref(),
        &mut Report::new(&td_file, problems),
    );
    if let Some(node) = &app.service {
        check_reserved_tags(
            node,
            USER_TAGS_ON_SERVICES,
            &mut Report::new(app_path, problems),
        );
        check_tag_characters(node, service.as_ref(), &mut Report::new(app_path, problems));
    }
    if problems.len() > before {
        return Ok(None);
    }
    let (Some(task_definition), Some(service)) = (task_definition, service) else {
        return Ok(None);
    };
    rules::check(
        (&td_file, &td_node, &task_definition),
        (app_path, app.service.as_ref(), &service),
        problems,
    );
    if problems.len() > before {
        return Ok(None);
    }
    Ok(Some(DesiredApp::new(
        &app_ref.name,
        &env.cluster,
        provenance,
        app_ref.depends_on.iter().map(|(d, _)| d.clone()).collect(),
        task_definition,
        service,
        RolloutSpec {
            wait: app.rollout.wait,
            timeout_seconds: app.rollout.timeout.as_secs(),
        },
    )))
}

/// A mapping with known top-level keys, interpolated into JSON.
fn object(
    node: &Node,
    what: &str,
    allowed: &[&str],
    vars: &Vars,
    report: &mut Report<'_>,
) -> Option<Map<String, Value>> {
    manifest::Fields::new(node, what, allowed, report)?;
    match interpolate(node, vars, report) {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

fn check_containers(td: &Node, report: &mut Report<'_>) {
    let Kind::Map(entries) = &td.kind else { return };
    let Some((_, containers)) = entries
        .iter()
        .find(|(k, _)| k.as_str() == Some("containerDefinitions"))
    else {
        report.at(td.pos, "the task definition needs `containerDefinitions`");
        return;
    };
    let Kind::Seq(items) = &containers.kind else {
        report.at(containers.pos, "`containerDefinitions` must be a list");
        return;
    };
    if items.is_empty() {
        report.at(
            containers.pos,
            "`containerDefinitions` must list at least one container",
        );
    }
    let mut names = HashSet::new();
    for item in items {
        let json = item.to_json();
        match json.get("name").and_then(Value::as_str) {
            Some(name) if !names.insert(name.to_owned()) => {
                report.at(
                    item.pos,
                    format!("duplicate container name `{name}`; ECS requires unique names"),
                );
            }
            Some(_) => {}
            None => report.at(item.pos, "every container needs a `name`"),
        }
        if json
            .get("image")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            report.at(item.pos, "every container needs an `image`");
        }
    }
}

/// ECS allows 50 tags per resource; fleetsync's own take up to 11 on a task definition and up
/// to 17 on a service (`tag::*`, the audit trail's five among them).
const USER_TAGS_ON_TASK_DEFINITIONS: usize = 39;
const USER_TAGS_ON_SERVICES: usize = 33;

fn check_reserved_tags(node: &Node, max: usize, report: &mut Report<'_>) {
    let Kind::Map(entries) = &node.kind else {
        return;
    };
    let Some((
        _,
        Node {
            kind: Kind::Seq(tags),
            ..
        },
    )) = entries.iter().find(|(k, _)| k.as_str() == Some("tags"))
    else {
        return;
    };
    if tags.len() > max {
        report.at(
            node.get("tags").map_or(node.pos, |t| t.pos),
            format!(
                "{} tags, but at most {max} fit: ECS allows 50 per resource and fleetsync's provenance tags use the rest",
                tags.len()
            ),
        );
    }
    for t in tags {
        if let Some(key) = t.to_json().get("key").and_then(Value::as_str)
            && key.starts_with(tag::PREFIX)
        {
            report.at(
                t.pos,
                format!(
                    "tag key `{key}` is reserved: fleetsync sets `{}*` tags itself",
                    tag::PREFIX
                ),
            );
        }
    }
}

/// Tags whose key or value (variables substituted) has a character ECS refuses: it would
/// refuse the whole CreateService or RegisterTaskDefinition at deploy time; here the author
/// sees which tag and which character.
fn check_tag_characters(node: &Node, input: Option<&Map<String, Value>>, report: &mut Report<'_>) {
    let Some(Value::Array(tags)) = input.and_then(|i| i.get("tags")) else {
        return;
    };
    let nodes = match node.get("tags").map(|t| &t.kind) {
        Some(Kind::Seq(nodes)) => nodes.as_slice(),
        _ => &[],
    };
    for (i, t) in tags.iter().enumerate() {
        for field in ["key", "value"] {
            let Some(text) = t.get(field).and_then(Value::as_str) else {
                continue;
            };
            if let Some(bad) = text.chars().find(|c| !tag::is_allowed(*c)) {
                let at = nodes.get(i).map(|n| n.get(field).map_or(n.pos, |f| f.pos));
                report.at(
                    at.unwrap_or(node.pos),
                    format!(
                        "tag {field} {text:?} has {bad:?}, which ECS does not take: only letters, digits, spaces and _ . : / = + - @"
                    ),
                );
            }
        }
    }
}

/// App `a` of a one-app repo, resolved at commit `c1`: for tests of what comes after resolve.
#[cfg(test)]
pub(crate) fn example_app() -> DesiredApp {
    use std::collections::HashMap;
    struct Example(HashMap<&'static str, &'static str>);
    impl Files for Example {
        fn read(&self, path: &str) -> Result<Option<Vec<u8>>, ReadError> {
            Ok(self.0.get(path).map(|t| t.as_bytes().to_vec()))
        }
    }
    let repo = Example(HashMap::from([
        (
            "fleetsync.yaml",
            "apiVersion: fleetsync/v1\nkind: Root\nname: p\nenvironments: { s: { branch: s, cluster: c } }\napps: [{ name: a, path: a }]\n",
        ),
        (
            "a/app.yaml",
            "apiVersion: fleetsync/v1\nkind: App\nname: a\ntaskDefinition: { containerDefinitions: [{ name: m, image: x }] }\n",
        ),
    ]));
    resolve(&repo, "fleetsync.yaml", "s", "c1")
        .expect("the example resolves")
        .apps
        .remove(0)
}

#[cfg(test)]
mod tests;
