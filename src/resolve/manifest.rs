//! The manifest format v1: a `kind: Root` that lists apps per environment, and a `kind: App`
//! per child. Reading is strict: every unknown key, wrong type or missing field is a
//! [`Problem`] at its exact position, and reading goes on so one run reports them all.

use std::time::Duration;

use super::policy::Policy;
use super::yaml::{Kind, Node, Pos};
use super::{Problem, Report};

pub const API_VERSION: &str = "fleetsync/v1";

#[derive(Debug)]
pub struct Root {
    pub name: String,
    /// Empty for a nested root: it inherits the environments of the root above it.
    pub environments: Vec<Environment>,
    pub apps: Vec<AppRef>,
    /// Position of the `environments` key, for problems about an environment that is missing.
    pub environments_pos: Pos,
    pub policy: Option<Policy>,
    /// `vars:`, for `${name}` in this root's apps and the roots below it.
    pub vars: Vec<(String, String, Pos)>,
    /// How many levels of roots may nest below this one (`maxNesting`, top root only).
    pub max_nesting: usize,
    /// `prune: true` (top root only): services this root deployed and no longer lists are
    /// deleted. With where it was set, for problems about it.
    pub prune: Option<(bool, Pos)>,
    /// `previews:` (top root only): pull requests run as confined copies of an environment.
    pub previews: Option<super::preview::Previews>,
}

/// Nesting allowed when the top root does not say.
pub const DEFAULT_MAX_NESTING: usize = 8;
/// The most `maxNesting` may allow: it bounds what one push can make fleetsync read.
pub const MAX_NESTING_LIMIT: usize = 32;

#[derive(Debug, Clone)]
pub struct Environment {
    pub name: String,
    pub branch: String,
    pub cluster: String,
    pub pos: Pos,
}

#[derive(Debug)]
pub struct AppRef {
    pub name: String,
    pub name_pos: Pos,
    /// The app's directory in the repository it comes from.
    pub path: String,
    pub path_pos: Pos,
    /// Set when the app lives in another repository than the root that lists it.
    pub source: Option<Source>,
    pub depends_on: Vec<(String, Pos)>,
}

/// `source: { repo, path, ref }`: a child kept in another repository of the server config.
#[derive(Debug, Clone)]
pub struct Source {
    pub repo: String,
    /// A branch, tag or commit; `None` means the environment's branch in that repository.
    pub reference: Option<String>,
    /// Where `repo` and `ref` were written.
    pub pos: Pos,
    pub ref_pos: Option<Pos>,
}

#[derive(Debug)]
pub struct App {
    pub task_definition: TaskDefinitionSource,
    pub service: Option<Node>,
    pub rollout: Rollout,
}

#[derive(Debug)]
pub enum TaskDefinitionSource {
    /// A path relative to the app's directory, and where it was named.
    File(String, Pos),
    Inline(Node),
}

#[derive(Debug, Clone, Copy)]
pub struct Rollout {
    pub wait: bool,
    pub timeout: Duration,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            wait: true,
            timeout: Duration::from_secs(600),
        }
    }
}

/// Reads the root app. Returns `None` when it is too broken to use (the problems say why).
pub fn read_root(node: &Node, report: &mut Report<'_>) -> Option<Root> {
    read_any_root(node, false, report)
}

/// Reads a child `app.yaml` that is itself `kind: Root`: an app of apps below the top root.
pub fn read_nested_root(node: &Node, report: &mut Report<'_>) -> Option<Root> {
    read_any_root(node, true, report)
}

/// Whether a child manifest is a nested root rather than an app.
pub fn is_root(node: &Node) -> bool {
    node.get("kind").and_then(Node::as_str) == Some("Root")
}

fn read_any_root(node: &Node, nested: bool, report: &mut Report<'_>) -> Option<Root> {
    let map = Fields::new(
        node,
        "the root app",
        &[
            "apiVersion",
            "kind",
            "name",
            "environments",
            "apps",
            "policy",
            "vars",
            "maxNesting",
            "prune",
            "previews",
        ],
        report,
    )?;
    header(&map, "Root", report);
    let name = map.required_str("name", report);
    let environments_node = if nested {
        if let Some(env) = map.get("environments") {
            report.at(
                env.pos,
                "a nested root inherits the environments of the root above it; remove `environments`",
            );
        }
        None
    } else {
        map.required("environments", report)
    };
    let apps_node = map.required("apps", report);
    let policy = map
        .get("policy")
        .and_then(|node| super::policy::read(node, report));
    let vars = map
        .get("vars")
        .map_or_else(Vec::new, |node| read_vars(node, report));
    // Settings of the whole tree: a nested root that sets one is told so, and it is ignored.
    let top_only = |key: &str, report: &mut Report<'_>| {
        let node = map.get(key)?;
        if nested {
            report.at(
                node.pos,
                format!("only the top root sets `{key}`; remove it here"),
            );
            return None;
        }
        Some(node)
    };
    let prune = top_only("prune", report).and_then(|node| match node.to_json() {
        serde_json::Value::Bool(b) => Some((b, node.pos)),
        _ => {
            report.at(
                node.pos,
                format!("`prune` must be true or false, found {}", node.type_name()),
            );
            None
        }
    });
    let max_nesting = top_only("maxNesting", report).map_or(DEFAULT_MAX_NESTING, |node| {
        match node.to_json().as_u64() {
            Some(n) if n <= MAX_NESTING_LIMIT as u64 => n as usize,
            _ => {
                report.at(
                    node.pos,
                    format!("`maxNesting` must be a whole number from 0 (no nested roots) to {MAX_NESTING_LIMIT}"),
                );
                DEFAULT_MAX_NESTING
            }
        }
    });

    let mut environments = Vec::new();
    if let Some(node) = environments_node {
        if let Kind::Map(entries) = &node.kind {
            for (key, value) in entries {
                let env_name = key.as_str().unwrap_or_default();
                if !is_simple_name(env_name, 63) {
                    report.at(
                        key.pos,
                        format!(
                            "environment name `{env_name}` must be 1-63 letters, digits, `-` or `_`"
                        ),
                    );
                }
                let what = format!("environment `{env_name}`");
                let Some(fields) = Fields::new(value, &what, &["branch", "cluster"], report) else {
                    continue;
                };
                let (Some(branch), Some(cluster)) = (
                    fields.required_str("branch", report),
                    fields.required_str("cluster", report),
                ) else {
                    continue;
                };
                environments.push(Environment {
                    name: env_name.to_owned(),
                    branch,
                    cluster,
                    pos: key.pos,
                });
            }
            if entries.is_empty() {
                report.at(
                    node.pos,
                    "`environments` must declare at least one environment",
                );
            }
        } else {
            report.at(
                node.pos,
                format!(
                    "`environments` must be a mapping, found {}",
                    node.type_name()
                ),
            );
        }
    }

    let previews = top_only("previews", report)
        .and_then(|node| super::preview::read(node, &environments, report));

    let mut apps = Vec::new();
    if let Some(node) = apps_node {
        match &node.kind {
            Kind::Seq(items) => {
                for item in items {
                    let Some(fields) = Fields::new(
                        item,
                        "an app entry",
                        &["name", "path", "source", "dependsOn"],
                        report,
                    ) else {
                        continue;
                    };
                    let name = fields.required_str_at("name", report);
                    let place = match fields.get("source") {
                        Some(node) => {
                            if let Some(path) = fields.get("path") {
                                report.at(path.pos, "an app entry with `source` takes its `path` inside `source`; remove this one");
                            }
                            read_source(node, report)
                        }
                        None => fields
                            .required_str_at("path", report)
                            .map(|(path, pos)| (path, pos, None)),
                    };
                    let (Some((name, name_pos)), Some((path, path_pos, source))) = (name, place)
                    else {
                        continue;
                    };
                    if !is_simple_name(&name, 255) {
                        report.at(name_pos, format!("app name `{name}` must be 1-255 letters, digits, `-` or `_` (it names the ECS service)"));
                    }
                    if let Err(why) = check_relative_path(&path) {
                        report.at(path_pos, format!("app `{name}`: path `{path}` {why}"));
                    }
                    let depends_on = fields.str_list("dependsOn", report);
                    apps.push(AppRef {
                        name,
                        name_pos,
                        path,
                        path_pos,
                        source,
                        depends_on,
                    });
                }
            }
            _ => report.at(
                node.pos,
                format!("`apps` must be a list, found {}", node.type_name()),
            ),
        }
    }

    Some(Root {
        name: name?,
        environments,
        apps,
        environments_pos: environments_node.map_or(node.pos, |n| n.pos),
        policy,
        vars,
        max_nesting,
        prune,
        previews,
    })
}

/// `source: { repo, path, ref }` → the path in that repository (`.` when not given), where
/// it was written, and the source.
fn read_source(node: &Node, report: &mut Report<'_>) -> Option<(String, Pos, Option<Source>)> {
    let fields = Fields::new(node, "`source`", &["repo", "path", "ref"], report)?;
    let repo = fields.required_str_at("repo", report);
    let (path, path_pos) = fields
        .optional_str_at("path", report)
        .unwrap_or_else(|| (".".to_owned(), node.pos));
    let reference = fields.optional_str_at("ref", report);
    let (repo, pos) = repo?;
    Some((
        path,
        path_pos,
        Some(Source {
            repo,
            ref_pos: reference.as_ref().map(|(_, p)| *p),
            reference: reference.map(|(r, _)| r),
            pos,
        }),
    ))
}

/// Names fleetsync defines itself; a root cannot redefine them.
pub const BUILT_IN_VARS: &[&str] = &[
    "environment",
    "cluster",
    "revision",
    "short_revision",
    "preview",
    "app",
];

fn read_vars(node: &Node, report: &mut Report<'_>) -> Vec<(String, String, Pos)> {
    let Kind::Map(entries) = &node.kind else {
        report.at(
            node.pos,
            format!(
                "`vars` must be a mapping of names to strings, found {}",
                node.type_name()
            ),
        );
        return Vec::new();
    };
    let mut vars = Vec::new();
    for (key, value) in entries {
        let name = key.as_str().unwrap_or_default();
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            report.at(
                key.pos,
                format!("variable name `{name}` must be letters, digits and `_`, not starting with a digit"),
            );
        } else if BUILT_IN_VARS.contains(&name) {
            report.at(
                key.pos,
                format!("`{name}` is set by fleetsync; pick another variable name"),
            );
        } else {
            match value.to_json() {
                serde_json::Value::String(s) => vars.push((name.to_owned(), s, value.pos)),
                serde_json::Value::Number(n) => {
                    vars.push((name.to_owned(), n.to_string(), value.pos))
                }
                _ => report.at(
                    value.pos,
                    format!(
                        "variable `{name}` must be a string or a number, found {}",
                        value.type_name()
                    ),
                ),
            }
        }
    }
    vars
}

/// Reads a child app. `expected_name` is the name the root gave it.
pub fn read_app(node: &Node, expected_name: &str, report: &mut Report<'_>) -> Option<App> {
    let allowed = [
        "apiVersion",
        "kind",
        "name",
        "taskDefinition",
        "service",
        "rollout",
    ];
    let map = Fields::new(node, "an app", &allowed, report)?;
    header(&map, "App", report);
    if let Some((name, pos)) = map.required_str_at("name", report)
        && name != expected_name
    {
        report.at(pos, format!("app is named `{name}` but the root lists it as `{expected_name}`; the names must match"));
    }
    let task_definition = match map.required("taskDefinition", report) {
        Some(node) => match &node.kind {
            Kind::Scalar(path, _) => TaskDefinitionSource::File(path.clone(), node.pos),
            Kind::Map(_) => TaskDefinitionSource::Inline(node.clone()),
            Kind::Seq(_) => {
                report.at(node.pos, "`taskDefinition` must be a file name beside app.yaml or a mapping, found a list");
                return None;
            }
        },
        None => return None,
    };
    let service = map.get("service").cloned();
    if let Some(service) = &service
        && !matches!(service.kind, Kind::Map(_))
    {
        report.at(
            service.pos,
            format!(
                "`service` must be a mapping of CreateService fields, found {}",
                service.type_name()
            ),
        );
    }
    let mut rollout = Rollout::default();
    if let Some(node) = map.get("rollout")
        && let Some(fields) = Fields::new(node, "`rollout`", &["wait", "timeout"], report)
    {
        if let Some(wait) = fields.get("wait") {
            match wait.to_json() {
                serde_json::Value::Bool(b) => rollout.wait = b,
                _ => report.at(wait.pos, "`rollout.wait` must be true or false"),
            }
        }
        if let Some(timeout) = fields.get("timeout") {
            match timeout.as_str().map(humantime::parse_duration) {
                // A worker holds the job's message while it watches: SQS keeps a message
                // hidden for at most 12 hours.
                Some(Ok(d)) if d > MAX_ROLLOUT_TIMEOUT => report.at(
                    timeout.pos,
                    "`rollout.timeout` may be at most 12h: SQS hides a job from other workers for at most 12 hours while one watches its rollout",
                ),
                Some(Ok(d)) if !d.is_zero() => rollout.timeout = d,
                _ => report.at(
                    timeout.pos,
                    "`rollout.timeout` must be a duration such as `90s` or `10m`",
                ),
            }
        }
    }
    Some(App {
        task_definition,
        service,
        rollout,
    })
}

const MAX_ROLLOUT_TIMEOUT: Duration = Duration::from_secs(12 * 3600);

fn header(map: &Fields<'_>, kind: &str, report: &mut Report<'_>) {
    if let Some((version, pos)) = map.required_str_at("apiVersion", report)
        && version != API_VERSION
    {
        report.at(
            pos,
            format!("unsupported apiVersion `{version}`; this fleetsync reads `{API_VERSION}`"),
        );
    }
    if let Some((found, pos)) = map.required_str_at("kind", report)
        && found != kind
    {
        report.at(
            pos,
            format!("expected `kind: {kind}`, found `kind: {found}`"),
        );
    }
}

pub fn is_simple_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Paths in manifests stay inside the config repo, so a child can never read outside it.
pub fn check_relative_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("is empty");
    }
    if path.starts_with('/') {
        return Err("must be relative to the repository root");
    }
    if path.split('/').any(|part| part == "..") {
        return Err("must not contain `..`");
    }
    Ok(())
}

/// `node` as a non-empty string, or a problem at it naming `key`.
fn non_empty_str(key: &str, node: &Node, report: &mut Report<'_>) -> Option<(String, Pos)> {
    match node.to_json() {
        serde_json::Value::String(s) if !s.is_empty() => Some((s, node.pos)),
        _ => {
            report.at(
                node.pos,
                format!(
                    "`{key}` must be a non-empty string, found {}",
                    node.type_name()
                ),
            );
            None
        }
    }
}

/// The keys of one mapping, checked against the keys it may have.
pub struct Fields<'a> {
    node: &'a Node,
    entries: &'a [(Node, Node)],
    what: String,
}

impl<'a> Fields<'a> {
    /// Reports a non-mapping or unknown keys; returns `None` only for a non-mapping.
    pub fn new(
        node: &'a Node,
        what: &str,
        allowed: &[&str],
        report: &mut Report<'_>,
    ) -> Option<Self> {
        let Kind::Map(entries) = &node.kind else {
            report.at(
                node.pos,
                format!("{what} must be a mapping, found {}", node.type_name()),
            );
            return None;
        };
        let mut seen: Vec<&str> = Vec::new();
        for (key, _) in entries {
            let k = key.as_str().unwrap_or_default();
            if !allowed.contains(&k) {
                report.at(
                    key.pos,
                    format!(
                        "unknown field `{k}` in {what}; expected one of: {}",
                        allowed.join(", ")
                    ),
                );
            } else if seen.contains(&k) {
                report.at(key.pos, format!("duplicate field `{k}` in {what}"));
            }
            seen.push(k);
        }
        Some(Fields {
            node,
            entries,
            what: what.to_owned(),
        })
    }

    pub fn get(&self, key: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    pub fn required(&self, key: &str, report: &mut Report<'_>) -> Option<&'a Node> {
        let found = self.get(key);
        if found.is_none() {
            report.at(
                self.node.pos,
                format!("missing field `{key}` in {}", self.what),
            );
        }
        found
    }

    pub fn required_str_at(&self, key: &str, report: &mut Report<'_>) -> Option<(String, Pos)> {
        non_empty_str(key, self.required(key, report)?, report)
    }

    /// `None` when absent, or when not a non-empty string (reported).
    pub fn optional_str_at(&self, key: &str, report: &mut Report<'_>) -> Option<(String, Pos)> {
        non_empty_str(key, self.get(key)?, report)
    }

    pub fn required_str(&self, key: &str, report: &mut Report<'_>) -> Option<String> {
        self.required_str_at(key, report).map(|(s, _)| s)
    }

    pub fn str_list(&self, key: &str, report: &mut Report<'_>) -> Vec<(String, Pos)> {
        let Some(node) = self.get(key) else {
            return Vec::new();
        };
        let Kind::Seq(items) = &node.kind else {
            report.at(
                node.pos,
                format!(
                    "`{key}` must be a list of names, found {}",
                    node.type_name()
                ),
            );
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|item| match item.to_json() {
                serde_json::Value::String(s) => Some((s, item.pos)),
                _ => {
                    report.at(
                        item.pos,
                        format!("`{key}` entries must be names, found {}", item.type_name()),
                    );
                    None
                }
            })
            .collect()
    }
}

impl Report<'_> {
    /// Records a problem, keeping the caller's code free of `Problem` construction.
    pub fn at(&mut self, pos: Pos, message: impl Into<String>) {
        let file = if pos.overlay {
            super::OVERLAY_FILE
        } else {
            self.file
        };
        self.problems.push(Problem {
            file: file.to_owned(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
        });
    }
}
