//! Manifests at one commit → the desired state of one environment.
//!
//! Pure: it reads files through [`Files`] and knows nothing of git, HTTP or AWS. Everything that
//! is wrong with a config repo comes back at once as a list of [`Problem`]s, and any problem
//! fails the whole environment: nothing is half-resolved.

mod desired;
pub mod manifest;
pub mod yaml;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

pub use desired::{DesiredApp, DesiredState, Provenance, RolloutSpec, tag};
pub use manifest::Environment;
use manifest::{Root, TaskDefinitionSource};
use serde_json::{Map, Value};
use yaml::{Kind, Node, Pos};

/// Where the root app lives unless the server config says otherwise.
pub const DEFAULT_ROOT: &str = "fleetsync.yaml";

/// Read access to the files of one commit of a config repo.
pub trait Files {
    /// The file's bytes, or `None` when there is no file at `path`.
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, ReadError>;
}

pub type ReadError = Box<dyn std::error::Error + Send + Sync>;

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
    resolve_with(files, root_path, environment, commit, None)
}

/// Resolves an environment whose binding (branch and cluster) comes from a trusted root, the
/// one on the default branch. The resolved root must bind it the same way: otherwise a push to
/// any branch could declare itself production.
pub fn resolve_bound(
    files: &dyn Files,
    root_path: &str,
    binding: &Environment,
    commit: &str,
) -> Result<DesiredState, Error> {
    resolve_with(files, root_path, &binding.name, commit, Some(binding))
}

fn resolve_with(
    files: &dyn Files,
    root_path: &str,
    environment: &str,
    commit: &str,
    binding: Option<&Environment>,
) -> Result<DesiredState, Error> {
    let root = read_root(files, root_path)?.ok_or_else(|| {
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
    if let Some(trusted) = binding
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

    check_app_graph(&root, &mut Report::new(root_path, &mut problems));
    let provenance = Provenance {
        root: root.name.clone(),
        environment: env.name.clone(),
        commit: commit.to_owned(),
    };
    let mut apps = Vec::with_capacity(root.apps.len());
    let mut services = HashMap::new();
    for app_ref in &root.apps {
        let Some(app) = resolve_app(files, root_path, env, app_ref, &provenance, &mut problems)?
        else {
            continue;
        };
        let service = app.service_name().to_owned();
        if let Some(other) = services.insert(service.clone(), app.name.clone()) {
            Report::new(root_path, &mut problems).at(
                app_ref.name_pos,
                format!(
                    "apps `{other}` and `{}` both use service name `{service}` in cluster `{}`",
                    app.name, env.cluster
                ),
            );
        }
        apps.push(app);
    }
    if !problems.is_empty() {
        return Err(Error::Invalid(problems));
    }
    Ok(DesiredState {
        root: root.name,
        environment: env.name.clone(),
        cluster: env.cluster.clone(),
        commit: commit.to_owned(),
        apps,
    })
}

/// Reads and parses a YAML file. Outer `None`: no such file; inner `None`: unusable (reported).
fn load(files: &dyn Files, path: &str) -> Result<Option<Option<Node>>, Error> {
    let Some(bytes) = files.read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?
    else {
        return Ok(None);
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Err(Error::Invalid(vec![Problem {
            file: path.to_owned(),
            line: 1,
            column: 1,
            message: "not UTF-8 text; save the file as UTF-8".into(),
        }]));
    };
    match yaml::parse(text) {
        Ok(node) => Ok(Some(node)),
        Err(e) => Err(Error::Invalid(vec![Problem {
            file: path.to_owned(),
            line: e.pos.line,
            column: e.pos.column,
            message: format!("invalid YAML: {}", e.message),
        }])),
    }
}

/// Unique names, known dependencies, no cycles.
fn check_app_graph(root: &Root, report: &mut Report<'_>) {
    let mut names = HashSet::new();
    for app in &root.apps {
        if !names.insert(app.name.as_str()) {
            report.at(app.name_pos, format!("app `{}` is listed twice", app.name));
        }
    }
    for app in &root.apps {
        for (dep, pos) in &app.depends_on {
            if dep == &app.name {
                report.at(*pos, format!("app `{}` depends on itself", app.name));
            } else if !names.contains(dep.as_str()) {
                report.at(
                    *pos,
                    format!(
                        "app `{}` depends on unknown app `{dep}`; known apps: {}",
                        app.name,
                        sorted(&names)
                    ),
                );
            }
        }
    }
    // Depth-first search with colours; each cycle is reported once, at the edge that closes it.
    let edges: BTreeMap<&str, Vec<(&str, Pos)>> = root
        .apps
        .iter()
        .map(|a| {
            (
                a.name.as_str(),
                a.depends_on.iter().map(|(d, p)| (d.as_str(), *p)).collect(),
            )
        })
        .collect();
    let mut done = HashSet::new();
    for app in &root.apps {
        let mut path = Vec::new();
        visit(app.name.as_str(), &edges, &mut path, &mut done, report);
    }
}

fn visit<'a>(
    node: &'a str,
    edges: &BTreeMap<&'a str, Vec<(&'a str, Pos)>>,
    path: &mut Vec<&'a str>,
    done: &mut HashSet<&'a str>,
    report: &mut Report<'_>,
) {
    if done.contains(node) {
        return;
    }
    path.push(node);
    for &(dep, pos) in edges.get(node).into_iter().flatten() {
        if dep == node {
            continue; // reported as a self-dependency
        }
        if let Some(start) = path.iter().position(|n| *n == dep) {
            let mut chain: Vec<&str> = path[start..].to_vec();
            chain.push(dep);
            report.at(pos, format!("dependency cycle: {}", chain.join(" → ")));
        } else if edges.contains_key(dep) {
            visit(dep, edges, path, done, report);
        }
    }
    path.pop();
    done.insert(node);
}

fn sorted(names: &HashSet<&str>) -> String {
    let mut v: Vec<_> = names.iter().copied().collect();
    v.sort_unstable();
    v.join(", ")
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

fn resolve_app(
    files: &dyn Files,
    root_path: &str,
    env: &Environment,
    app_ref: &manifest::AppRef,
    provenance: &Provenance,
    problems: &mut Vec<Problem>,
) -> Result<Option<DesiredApp>, Error> {
    let dir = app_ref.path.trim_end_matches('/');
    let app_path = format!("{dir}/app.yaml");
    let node = match load(files, &app_path) {
        Ok(Some(Some(node))) => node,
        Ok(Some(None)) => {
            Report::new(&app_path, problems)
                .at(Pos { line: 1, column: 1 }, "the app manifest is empty");
            return Ok(None);
        }
        Ok(None) => {
            Report::new(root_path, problems).at(
                app_ref.path_pos,
                format!(
                    "app `{}`: {app_path} does not exist at commit {}",
                    app_ref.name, provenance.commit
                ),
            );
            return Ok(None);
        }
        Err(Error::Invalid(found)) => {
            problems.extend(found);
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let before = problems.len();
    let Some(app) = manifest::read_app(&node, &app_ref.name, &mut Report::new(&app_path, problems))
    else {
        return Ok(None);
    };

    let vars = Vars {
        environment: &env.name,
        cluster: &env.cluster,
        revision: &provenance.commit,
        app: &app_ref.name,
    };
    let (td_file, td_node) = match &app.task_definition {
        TaskDefinitionSource::Inline(node) => (app_path.clone(), node.clone()),
        TaskDefinitionSource::File(name, pos) => {
            let path = format!("{dir}/{name}");
            if let Err(why) = manifest::check_relative_path(name) {
                Report::new(&app_path, problems).at(*pos, format!("taskDefinition `{name}` {why}"));
                return Ok(None);
            }
            match load(files, &path) {
                Ok(Some(Some(node))) => (path, node),
                Ok(Some(None)) => {
                    Report::new(&path, problems).at(
                        Pos { line: 1, column: 1 },
                        "the task definition file is empty",
                    );
                    return Ok(None);
                }
                Ok(None) => {
                    Report::new(&app_path, problems)
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
            &mut Report::new(&app_path, problems),
        ),
        None => Some(Map::new()),
    };
    check_reserved_tags(&td_node, &mut Report::new(&td_file, problems));
    if let Some(node) = &app.service {
        check_reserved_tags(node, &mut Report::new(&app_path, problems));
    }
    if problems.len() > before {
        return Ok(None);
    }
    let (Some(task_definition), Some(service)) = (task_definition, service) else {
        return Ok(None);
    };
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
    vars: &Vars<'_>,
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

fn check_reserved_tags(node: &Node, report: &mut Report<'_>) {
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

struct Vars<'a> {
    environment: &'a str,
    cluster: &'a str,
    revision: &'a str,
    app: &'a str,
}

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        Some(match name {
            "environment" => self.environment,
            "cluster" => self.cluster,
            "revision" => self.revision,
            "app" => self.app,
            _ => return None,
        })
    }
}

/// JSON of `node` with `${var}` replaced in every string value; keys are left alone.
fn interpolate(node: &Node, vars: &Vars<'_>, report: &mut Report<'_>) -> Value {
    match &node.kind {
        Kind::Scalar(..) => match node.to_json() {
            Value::String(s) if s.contains("${") => {
                Value::String(substitute(&s, node.pos, vars, report))
            }
            other => other,
        },
        Kind::Seq(items) => {
            Value::Array(items.iter().map(|n| interpolate(n, vars, report)).collect())
        }
        Kind::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().unwrap_or_default().to_owned(),
                        interpolate(v, vars, report),
                    )
                })
                .collect(),
        ),
    }
}

fn substitute(s: &str, pos: Pos, vars: &Vars<'_>, report: &mut Report<'_>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        // `$${` is a literal `${`, for values such as shell commands that use their own.
        if rest[..start].ends_with('$') {
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let Some(len) = rest[start + 2..].find('}') else {
            report.at(pos, format!("unclosed `${{` in `{s}`"));
            return s.to_owned();
        };
        let name = &rest[start + 2..start + 2 + len];
        match vars.get(name) {
            Some(value) => out.push_str(value),
            None => report.at(pos, format!("undefined variable `${{{name}}}`; defined: ${{environment}}, ${{cluster}}, ${{revision}}, ${{app}}")),
        }
        rest = &rest[start + 3 + len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
