//! Manifests at one commit → the desired state of one environment.
//!
//! Pure: it reads files through [`Files`] and knows nothing of git, HTTP or AWS. Everything that
//! is wrong with a config repo comes back at once as a list of [`Problem`]s, and any problem
//! fails the whole environment: nothing is half-resolved.

mod desired;
pub mod manifest;
mod overlay;
pub mod policy;
mod rules;
pub mod yaml;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::rc::Rc;

pub use desired::{DesiredApp, DesiredState, Provenance, RolloutSpec, tag};
pub use manifest::Environment;
use manifest::{Root, TaskDefinitionSource};
use policy::{Policy, Scope};
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

/// Resolves an environment under a trusted root, the one on the default branch: it decides the
/// environment's branch and cluster and the top-level policy. The resolved root must agree with
/// both; otherwise whoever can push any branch could declare it production or lift its policy.
pub fn resolve_bound(
    files: &dyn Files,
    root_path: &str,
    trusted: &Root,
    environment: &str,
    commit: &str,
) -> Result<DesiredState, Error> {
    resolve_with(files, root_path, environment, commit, Some(trusted))
}

fn resolve_with(
    files: &dyn Files,
    root_path: &str,
    environment: &str,
    commit: &str,
    trusted: Option<&Root>,
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
    let vars = Vars::new(&env, commit);
    let mut walk = Walk {
        files,
        top_file: root_path,
        env: &env,
        vars: &vars,
        commit,
        leaves: Vec::new(),
        problems,
    };
    let mut scopes = Vec::new();
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
    let root_name = root.name.clone();
    let top_vars = Rc::new(walk.declare(&vars, &root.vars, root_path));
    walk.root(
        root,
        root_path,
        "",
        &[root_path.to_owned()],
        &scopes,
        &top_vars,
    )?;
    let Walk {
        leaves,
        mut problems,
        ..
    } = walk;
    check_app_graph(&leaves, &mut problems);

    let provenance = Provenance {
        root: root_name.clone(),
        environment: env.name.clone(),
        commit: commit.to_owned(),
    };
    let mut apps = Vec::with_capacity(leaves.len());
    let mut services = HashMap::new();
    for leaf in &leaves {
        let Some(app) = resolve_app(files, &env, leaf, &vars, &provenance, &mut problems)? else {
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
        apps.push(app);
    }
    if !problems.is_empty() {
        return Err(Error::Invalid(problems));
    }
    Ok(DesiredState {
        root: root_name,
        environment: env.name.clone(),
        cluster: env.cluster.clone(),
        commit: commit.to_owned(),
        apps,
    })
}

/// Where a policy was read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The top root at the commit being resolved.
    Top,
    /// The top root on the default branch, which binds the environment.
    DefaultBranch,
    Nested,
}

/// Roots nested deeper than this are refused: it bounds what one push can make fleetsync read.
pub const MAX_NESTING: usize = 8;

/// A child app found by walking the root and the roots nested in it.
struct Leaf {
    app_ref: manifest::AppRef,
    /// The app's directory from the repository root.
    dir: String,
    app_file: String,
    /// The root file that lists the app.
    listed_in: String,
    /// `None` when the manifest could not be read (reported): the name still counts as
    /// listed, so its dependents get no second, misleading problem.
    node: Option<Node>,
    /// The policies above the app, outermost first.
    scopes: Vec<Rc<Scope>>,
    /// The variables its strings may use: fleetsync's and those of the roots above it.
    vars: Rc<Vars>,
}

/// The walk from the top root through nested roots down to apps, for one environment.
struct Walk<'a> {
    files: &'a dyn Files,
    top_file: &'a str,
    env: &'a Environment,
    vars: &'a Vars,
    commit: &'a str,
    leaves: Vec<Leaf>,
    problems: Vec<Problem>,
}

impl Walk<'_> {
    /// Checks a root's policy against the ones above it and the environment's cluster.
    fn add_scope(
        &mut self,
        scopes: &mut Vec<Rc<Scope>>,
        policy: Policy,
        root: &str,
        file: &str,
        origin: Origin,
    ) {
        let before = self.problems.len();
        let mut report = Report::new(file, &mut self.problems);
        policy::check_patterns(&policy, self.vars, &mut report);
        if self.problems.len() > before {
            return; // a broken pattern would refuse every app: report it alone
        }
        let mut report = Report::new(file, &mut self.problems);
        policy::check_narrowing(&policy, scopes, self.vars, &mut report);
        let scope = Rc::new(Scope {
            policy,
            root: root.to_owned(),
            file: file.to_owned(),
            top: origin != Origin::Nested,
            from_default_branch: origin == Origin::DefaultBranch,
        });
        policy::check_cluster(
            &scope,
            &self.env.cluster,
            self.vars,
            &mut Report::new(self.top_file, &mut self.problems),
            self.env.pos,
        );
        scopes.push(scope);
    }

    /// `outer` plus a root's own `vars:`, whose values may use the variables above them.
    fn declare(&mut self, outer: &Vars, declared: &[(String, String, Pos)], file: &str) -> Vars {
        let mut vars = outer.clone();
        let mut report = Report::new(file, &mut self.problems);
        for (name, value, pos) in declared {
            let before = report.problems.len();
            let value = outer.expand(value, *pos, &mut report);
            if report.problems.len() == before {
                vars.set(name, value);
            }
        }
        vars
    }

    fn root(
        &mut self,
        root: Root,
        file: &str,
        dir: &str,
        chain: &[String],
        scopes: &[Rc<Scope>],
        vars: &Rc<Vars>,
    ) -> Result<(), Error> {
        for app_ref in root.apps {
            let dir = join(dir, &app_ref.path);
            let app_file = if dir.is_empty() {
                "app.yaml".to_owned()
            } else {
                format!("{dir}/app.yaml")
            };
            let mut report = Report::new(file, &mut self.problems);
            let unusable = |app_ref, dir, app_file| Leaf {
                app_ref,
                dir,
                app_file,
                listed_in: file.to_owned(),
                node: None,
                scopes: Vec::new(),
                vars: vars.clone(),
            };
            if chain.contains(&app_file) {
                report.at(
                    app_ref.path_pos,
                    format!("nesting cycle: {} → {app_file}", chain.join(" → ")),
                );
                self.leaves.push(unusable(app_ref, dir, app_file));
                continue;
            }
            let node = match load(self.files, &app_file) {
                Ok(Some(Some(node))) => node,
                Ok(Some(None)) => {
                    Report::new(&app_file, &mut self.problems)
                        .at(Pos::at(1, 1), "the app manifest is empty");
                    self.leaves.push(unusable(app_ref, dir, app_file));
                    continue;
                }
                Ok(None) => {
                    report.at(
                        app_ref.path_pos,
                        format!(
                            "app `{}`: {app_file} does not exist at commit {}",
                            app_ref.name, self.commit
                        ),
                    );
                    self.leaves.push(unusable(app_ref, dir, app_file));
                    continue;
                }
                Err(Error::Invalid(found)) => {
                    self.problems.extend(found);
                    self.leaves.push(unusable(app_ref, dir, app_file));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if !manifest::is_root(&node) {
                self.leaves.push(Leaf {
                    app_ref,
                    dir,
                    app_file,
                    listed_in: file.to_owned(),
                    node: Some(node),
                    scopes: scopes.to_vec(),
                    vars: vars.clone(),
                });
                continue;
            }
            if chain.len() >= MAX_NESTING {
                report.at(
                    app_ref.path_pos,
                    format!(
                        "roots nest deeper than {MAX_NESTING} levels: {} → {app_file}",
                        chain.join(" → ")
                    ),
                );
                continue;
            }
            if let Some((_, pos)) = app_ref.depends_on.first() {
                report.at(
                    *pos,
                    format!(
                        "`{}` is a nested root; dependsOn is for apps, so name the apps it waits for in their own entries",
                        app_ref.name
                    ),
                );
            }
            let before = self.problems.len();
            let mut report = Report::new(&app_file, &mut self.problems);
            let nested = manifest::read_nested_root(&node, &mut report);
            let Some(mut nested) = nested.filter(|_| self.problems.len() == before) else {
                self.leaves.push(unusable(app_ref, dir, app_file));
                continue;
            };
            let mut report = Report::new(&app_file, &mut self.problems);
            if nested.name != app_ref.name {
                report.at(
                    node.get("name").map_or(node.pos, |n| n.pos),
                    format!(
                        "root is named `{}` but {file} lists it as `{}`; the names must match",
                        nested.name, app_ref.name
                    ),
                );
            }
            let mut inner = scopes.to_vec();
            if let Some(policy) = nested.policy.take() {
                let name = nested.name.clone();
                self.add_scope(&mut inner, policy, &name, &app_file, Origin::Nested);
            }
            let mut chain = chain.to_vec();
            chain.push(app_file.clone());
            let inner_vars = Rc::new(self.declare(vars, &nested.vars, &app_file));
            self.root(nested, &app_file, &dir, &chain, &inner, &inner_vars)?;
        }
        Ok(())
    }
}

/// `dir/path` with empty and `.` segments dropped (`..` is refused when manifests are read).
fn join(dir: &str, path: &str) -> String {
    dir.split('/')
        .chain(path.split('/'))
        .filter(|part| !part.is_empty() && *part != ".")
        .collect::<Vec<_>>()
        .join("/")
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

/// Unique names across all roots of the environment, known dependencies, no cycles.
fn check_app_graph(leaves: &[Leaf], problems: &mut Vec<Problem>) {
    let mut names: HashMap<&str, &Leaf> = HashMap::new();
    for leaf in leaves {
        let name = leaf.app_ref.name.as_str();
        if let Some(first) = names.get(name) {
            let at = first.app_ref.name_pos;
            Report::new(&leaf.listed_in, problems).at(
                leaf.app_ref.name_pos,
                format!(
                    "app `{name}` is listed twice (first at {}:{}:{}); app names are unique in an environment, nested roots included",
                    first.listed_in, at.line, at.column
                ),
            );
        } else {
            names.insert(name, leaf);
        }
    }
    let known: HashSet<&str> = names.keys().copied().collect();
    for leaf in leaves {
        let app = &leaf.app_ref;
        let mut report = Report::new(&leaf.listed_in, problems);
        for (dep, pos) in &app.depends_on {
            if dep == &app.name {
                report.at(*pos, format!("app `{}` depends on itself", app.name));
            } else if !known.contains(dep.as_str()) {
                report.at(
                    *pos,
                    format!(
                        "app `{}` depends on unknown app `{dep}`; known apps: {}",
                        app.name,
                        sorted(&known)
                    ),
                );
            }
        }
    }
    // Depth-first search with colours; each cycle is reported once, at the edge that closes it.
    let edges: BTreeMap<&str, Vec<(&str, Pos, &str)>> = leaves
        .iter()
        .map(|l| {
            (
                l.app_ref.name.as_str(),
                l.app_ref
                    .depends_on
                    .iter()
                    .map(|(d, p)| (d.as_str(), *p, l.listed_in.as_str()))
                    .collect(),
            )
        })
        .collect();
    let mut done = HashSet::new();
    for leaf in leaves {
        let mut path = Vec::new();
        visit(
            leaf.app_ref.name.as_str(),
            &edges,
            &mut path,
            &mut done,
            problems,
        );
    }
}

type Edges<'a> = BTreeMap<&'a str, Vec<(&'a str, Pos, &'a str)>>;

fn visit<'a>(
    node: &'a str,
    edges: &Edges<'a>,
    path: &mut Vec<&'a str>,
    done: &mut HashSet<&'a str>,
    problems: &mut Vec<Problem>,
) {
    if done.contains(node) {
        return;
    }
    path.push(node);
    for &(dep, pos, file) in edges.get(node).into_iter().flatten() {
        if dep == node {
            continue; // reported as a self-dependency
        }
        if let Some(start) = path.iter().position(|n| *n == dep) {
            let mut chain: Vec<&str> = path[start..].to_vec();
            chain.push(dep);
            Report::new(file, problems).at(pos, format!("dependency cycle: {}", chain.join(" → ")));
        } else if edges.contains_key(dep) {
            visit(dep, edges, path, done, problems);
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
    let path = join(&leaf.dir, &format!("env/{}.yaml", env.name));
    let overlay = match load(files, &path) {
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
            let path = join(dir, name);
            if let Err(why) = manifest::check_relative_path(name) {
                Report::new(app_path, problems).at(*pos, format!("taskDefinition `{name}` {why}"));
                return Ok(None);
            }
            match load(files, &path) {
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
    if let Some(node) = &app.service {
        check_reserved_tags(
            node,
            USER_TAGS_ON_SERVICES,
            &mut Report::new(app_path, problems),
        );
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

/// ECS allows 50 tags per resource; fleetsync's own take 5 on a task definition and up to 7 on
/// a service.
const USER_TAGS_ON_TASK_DEFINITIONS: usize = 45;
const USER_TAGS_ON_SERVICES: usize = 43;

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

/// The variables `${name}` in manifests may use, in the order error messages list them.
#[derive(Clone)]
pub(crate) struct Vars {
    pairs: Vec<(String, String)>,
}

impl Vars {
    fn new(env: &Environment, commit: &str) -> Self {
        Vars {
            pairs: vec![
                ("environment".to_owned(), env.name.clone()),
                ("cluster".to_owned(), env.cluster.clone()),
                ("revision".to_owned(), commit.to_owned()),
                (
                    "short_revision".to_owned(),
                    commit.chars().take(7).collect(),
                ),
            ],
        }
    }

    fn with_app(&self, app: &str) -> Self {
        let mut pairs = self.pairs.clone();
        pairs.push(("app".to_owned(), app.to_owned()));
        Vars { pairs }
    }

    /// Sets a root's variable; a nested root's value replaces its parent's.
    fn set(&mut self, name: &str, value: String) {
        match self.pairs.iter_mut().find(|(n, _)| n == name) {
            Some(pair) => pair.1 = value,
            None => self.pairs.push((name.to_owned(), value)),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn names(&self) -> String {
        self.pairs
            .iter()
            .map(|(n, _)| format!("${{{n}}}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Expands `s`, reporting undefined variables at `pos`.
    fn expand(&self, s: &str, pos: Pos, report: &mut Report<'_>) -> String {
        substitute(s, pos, self, report)
    }

    /// Expands a value whose problems were already reported where it was read.
    fn expand_quietly(&self, s: &str) -> String {
        let mut ignored = Vec::new();
        substitute(s, Pos::default(), self, &mut Report::new("", &mut ignored))
    }
}

/// JSON of `node` with `${var}` replaced in every string value; keys are left alone.
fn interpolate(node: &Node, vars: &Vars, report: &mut Report<'_>) -> Value {
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

/// The longest a string may become by expansion (a task definition is at most 64 KiB in all).
const MAX_EXPANDED: usize = 64 * 1024;

fn substitute(s: &str, pos: Pos, vars: &Vars, report: &mut Report<'_>) -> String {
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
            // Variables made of variables could otherwise grow a value exponentially.
            Some(value) if out.len() + value.len() > MAX_EXPANDED => {
                report.at(
                    pos,
                    format!("`{name}` makes this value longer than {MAX_EXPANDED} bytes once expanded; ECS takes nothing that large"),
                );
                return String::new();
            }
            Some(value) => out.push_str(value),
            None => report.at(
                pos,
                format!(
                    "undefined variable `${{{name}}}`; defined: {}",
                    vars.names()
                ),
            ),
        }
        rest = &rest[start + 3 + len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
