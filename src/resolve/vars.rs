//! `${name}` in manifests: fleetsync's variables and the roots' `vars:`, expanded into the JSON
//! that ECS receives.

use serde_json::Value;

use super::Report;
use super::manifest::Environment;
use super::yaml::{Kind, Node, Pos};

/// The variables `${name}` in manifests may use, in the order error messages list them.
#[derive(Clone)]
pub(crate) struct Vars {
    pairs: Vec<(String, String)>,
}

impl Vars {
    pub(super) fn new(env: &Environment, commit: &str) -> Self {
        Vars {
            pairs: vec![
                ("environment".to_owned(), env.name.clone()),
                ("cluster".to_owned(), env.cluster.clone()),
                ("revision".to_owned(), commit.to_owned()),
                (
                    "short_revision".to_owned(),
                    commit.chars().take(7).collect(),
                ),
                // `pr-<number>` in a pull request's preview; empty in the environment itself,
                // so one manifest serves both.
                ("preview".to_owned(), String::new()),
            ],
        }
    }

    /// The same variables for files of another repository: `${revision}` is its commit.
    pub(super) fn with_revision(&self, commit: &str) -> Self {
        let mut vars = self.clone();
        vars.set("revision", commit.to_owned());
        vars.set("short_revision", commit.chars().take(7).collect());
        vars
    }

    pub(super) fn with_app(&self, app: &str) -> Self {
        let mut pairs = self.pairs.clone();
        pairs.push(("app".to_owned(), app.to_owned()));
        Vars { pairs }
    }

    /// Sets a root's variable; a nested root's value replaces its parent's.
    pub(super) fn set(&mut self, name: &str, value: String) {
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
    pub(super) fn expand(&self, s: &str, pos: Pos, report: &mut Report<'_>) -> String {
        substitute(s, pos, self, report)
    }

    /// Expands a value whose problems were already reported where it was read.
    pub(super) fn expand_quietly(&self, s: &str) -> String {
        let mut ignored = Vec::new();
        substitute(s, Pos::default(), self, &mut Report::new("", &mut ignored))
    }
}

/// JSON of `node` with `${var}` replaced in every string value; keys are left alone.
pub(super) fn interpolate(node: &Node, vars: &Vars, report: &mut Report<'_>) -> Value {
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
