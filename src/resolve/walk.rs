//! The walk from the top root through the roots nested in it down to the apps of one
//! environment: paths relative to each root, inherited policies and variables, cycles and depth,
//! and the app graph (unique names, known dependencies, no cycles).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use super::manifest::{self, Environment, Root};
use super::policy::{self, Policy, Scope};
use super::vars::Vars;
use super::yaml::{Node, Pos};
use super::{Error, Files, Problem, Report, SourceError, Sources, load_as};

/// Where a policy was read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// The top root at the commit being resolved.
    Top,
    /// The top root on the default branch, which binds the environment.
    DefaultBranch,
    Nested,
}

/// A child app found by walking the root and the roots nested in it.
pub(super) struct Leaf {
    pub(super) app_ref: manifest::AppRef,
    /// The repository the app is read from: an index into [`Walk::opened`], `None` for the
    /// config repo.
    pub(super) source: Option<usize>,
    /// What problems put before a path of that repository (`repo@ref:`; empty for the config
    /// repo).
    pub(super) prefix: String,
    /// The app's directory from the root of its repository.
    pub(super) dir: String,
    /// `app.yaml` in `dir`, as problems name it (with `prefix`).
    pub(super) app_file: String,
    /// The root file that lists the app.
    pub(super) listed_in: String,
    /// `None` when the manifest could not be read (reported): the name still counts as
    /// listed, so its dependents get no second, misleading problem.
    pub(super) node: Option<Node>,
    /// The policies above the app, outermost first.
    pub(super) scopes: Vec<Rc<Scope>>,
    /// The variables its strings may use: fleetsync's and those of the roots above it.
    pub(super) vars: Rc<Vars>,
}

/// Another repository at the commit a reference named when the walk first needed it.
pub(super) struct OpenedSource {
    pub(super) repo: String,
    pub(super) reference: String,
    pub(super) commit: String,
    pub(super) files: Box<dyn Files>,
}

/// The walk from the top root through nested roots down to apps, for one environment.
pub(super) struct Walk<'a> {
    pub(super) files: &'a dyn Files,
    pub(super) sources: &'a dyn Sources,
    /// Other repositories read so far, each (repository, reference) once.
    pub(super) opened: Vec<OpenedSource>,
    pub(super) top_file: &'a str,
    pub(super) env: &'a Environment,
    pub(super) vars: &'a Vars,
    pub(super) commit: &'a str,
    /// Roots nested deeper are refused (the top root's `maxNesting`).
    pub(super) max_nesting: usize,
    pub(super) leaves: Vec<Leaf>,
    pub(super) problems: Vec<Problem>,
}

impl Walk<'_> {
    /// Checks a root's policy against the ones above it and the environment's cluster.
    pub(super) fn add_scope(
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
    pub(super) fn declare(
        &mut self,
        outer: &Vars,
        declared: &[(String, String, Pos)],
        file: &str,
    ) -> Vars {
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

    /// The files of the config repo (`None`) or of an opened repository, and what problems
    /// put before their paths.
    fn files_of(&self, source: Option<usize>) -> (&dyn Files, String) {
        match source {
            None => (self.files, String::new()),
            Some(i) => {
                let o = &self.opened[i];
                (&*o.files, format!("{}@{}:", o.repo, o.reference))
            }
        }
    }

    /// Opens `source` once per walk. `Ok(None)`: it does not exist (reported at `source`).
    fn open(
        &mut self,
        source: &manifest::Source,
        app: &str,
        file: &str,
    ) -> Result<Option<usize>, Error> {
        let reference = source.reference.as_deref().unwrap_or(&self.env.branch);
        if let Some(i) = self
            .opened
            .iter()
            .position(|o| o.repo == source.repo && o.reference == reference)
        {
            return Ok(Some(i));
        }
        match self.sources.open(&source.repo, reference) {
            Ok(opened) => {
                self.opened.push(OpenedSource {
                    repo: source.repo.clone(),
                    reference: reference.to_owned(),
                    commit: opened.commit,
                    files: opened.files,
                });
                Ok(Some(self.opened.len() - 1))
            }
            Err(SourceError::UnknownRepo(why)) => {
                Report::new(file, &mut self.problems).at(source.pos, format!("app `{app}`: {why}"));
                Ok(None)
            }
            Err(SourceError::Missing(why)) => {
                Report::new(file, &mut self.problems).at(
                    source.ref_pos.unwrap_or(source.pos),
                    format!("app `{app}`: {why}"),
                );
                Ok(None)
            }
            Err(SourceError::Read(e)) => Err(Error::Read {
                path: format!("{}@{reference}", source.repo),
                source: e,
            }),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn root(
        &mut self,
        root: Root,
        file: &str,
        dir: &str,
        chain: &[String],
        scopes: &[Rc<Scope>],
        vars: &Rc<Vars>,
        source: Option<usize>,
    ) -> Result<(), Error> {
        for app_ref in root.apps {
            // An app in another repository: its path is from that repository's root, and
            // `${revision}` is that repository's commit.
            let (source, dir, vars) = match &app_ref.source {
                None => (source, join(dir, &app_ref.path), vars.clone()),
                Some(s) => match self.open(s, &app_ref.name, file)? {
                    Some(i) => {
                        let commit = &self.opened[i].commit;
                        (
                            Some(i),
                            join("", &app_ref.path),
                            Rc::new(vars.with_revision(commit)),
                        )
                    }
                    None => {
                        self.leaves.push(Leaf {
                            app_ref,
                            source,
                            prefix: String::new(),
                            dir: String::new(),
                            app_file: String::new(),
                            listed_in: file.to_owned(),
                            node: None,
                            scopes: Vec::new(),
                            vars: vars.clone(),
                        });
                        continue;
                    }
                },
            };
            let real_file = join(&dir, "app.yaml");
            let (files, prefix) = self.files_of(source);
            let app_file = format!("{prefix}{real_file}");
            let loaded = if chain.contains(&app_file) {
                None
            } else {
                Some(load_as(files, &real_file, &app_file))
            };
            let mut report = Report::new(file, &mut self.problems);
            let unusable = |app_ref, dir, app_file| Leaf {
                app_ref,
                source,
                prefix: prefix.clone(),
                dir,
                app_file,
                listed_in: file.to_owned(),
                node: None,
                scopes: Vec::new(),
                vars: vars.clone(),
            };
            let Some(loaded) = loaded else {
                report.at(
                    app_ref.path_pos,
                    format!("nesting cycle: {} → {app_file}", chain.join(" → ")),
                );
                self.leaves.push(unusable(app_ref, dir, app_file));
                continue;
            };
            let node = match loaded {
                Ok(Some(Some(node))) => node,
                Ok(Some(None)) => {
                    Report::new(&app_file, &mut self.problems)
                        .at(Pos::at(1, 1), "the app manifest is empty");
                    self.leaves.push(unusable(app_ref, dir, app_file));
                    continue;
                }
                Ok(None) => {
                    let at = match &app_ref.source {
                        Some(_) => prefix.trim_end_matches(':').to_owned(),
                        None => format!("commit {}", self.commit),
                    };
                    report.at(
                        app_ref.path_pos,
                        format!("app `{}`: {real_file} does not exist at {at}", app_ref.name),
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
                    source,
                    prefix,
                    dir,
                    app_file,
                    listed_in: file.to_owned(),
                    node: Some(node),
                    scopes: scopes.to_vec(),
                    vars,
                });
                continue;
            }
            if chain.len() > self.max_nesting {
                report.at(
                    app_ref.path_pos,
                    format!(
                        "roots nest deeper than {} levels: {} → {app_file}; raise `maxNesting` on the top root if this is meant",
                        self.max_nesting,
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
            let inner_vars = Rc::new(self.declare(&vars, &nested.vars, &app_file));
            self.root(nested, &app_file, &dir, &chain, &inner, &inner_vars, source)?;
        }
        Ok(())
    }
}

/// `dir/path` with empty and `.` segments dropped (`..` is refused when manifests are read).
pub(super) fn join(dir: &str, path: &str) -> String {
    dir.split('/')
        .chain(path.split('/'))
        .filter(|part| !part.is_empty() && *part != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Unique names across all roots of the environment, known dependencies, no cycles.
pub(super) fn check_app_graph(leaves: &[Leaf], problems: &mut Vec<Problem>) {
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
