//! `fleetsync plan`: what a sync of one environment would change, without writing anything.
//!
//! The live service's tags say which commit fleetsync last applied, so the diff is between the
//! ECS inputs resolved at that commit and at the planned one: field by field, in the user's own
//! terms, not ECS's expanded description with its defaults.

use std::collections::HashMap;
use std::fmt;

use serde_json::{Map, Value};

use super::Error;
use crate::ecs::Ecs;
use crate::preflight::{Finding, Preflight};
use crate::resolve::{DesiredApp, DesiredState, tag};

#[derive(Debug)]
pub struct AppPlan {
    pub app: String,
    pub service: String,
    pub action: Action,
    pub findings: Vec<Finding>,
}

#[derive(Debug, PartialEq)]
pub enum Action {
    Unchanged,
    Create,
    Update {
        /// The commit the live service was synced from, when fleetsync synced it.
        from: Option<String>,
        changes: Vec<Change>,
        /// Why the changes are unknown or incomplete, e.g. a change made in the console.
        note: Option<String>,
    },
}

/// One changed field; `None` on a side means the field is absent there.
#[derive(Debug, PartialEq)]
pub struct Change {
    pub path: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl AppPlan {
    pub fn changes_something(&self) -> bool {
        self.action != Action::Unchanged
    }
}

/// Plans every app of `state`. `at_commit` resolves the same environment at another commit (the
/// live one); it returns `None` when that commit is unknown to the repository.
pub async fn plan(
    ecs: &Ecs,
    preflight: &Preflight,
    state: &DesiredState,
    at_commit: impl Fn(&str) -> Option<DesiredState>,
) -> Result<Vec<AppPlan>, Error> {
    let mut session = preflight.session("plan");
    let mut plans = Vec::with_capacity(state.apps.len());
    // Most updated apps were synced from the same commit: resolve each such commit once.
    let mut earlier: HashMap<String, Option<DesiredState>> = HashMap::new();
    for app in &state.apps {
        let live = ecs
            .describe_service(&app.cluster, app.service_name())
            .await?;
        let action = match live {
            None => Action::Create,
            Some(live) if live.tags.get(tag::SPEC_HASH) == Some(&app.spec_hash) => {
                Action::Unchanged
            }
            Some(live) => {
                let from = live.tags.get(tag::REVISION).cloned();
                let before = from.as_ref().and_then(|commit| {
                    let state = earlier
                        .entry(commit.clone())
                        .or_insert_with(|| at_commit(commit));
                    state
                        .as_ref()?
                        .apps
                        .iter()
                        .find(|a| a.name == app.name)
                        .cloned()
                });
                match before {
                    Some(before) => {
                        let drifted = live.tags.get(tag::SPEC_HASH) != Some(&before.spec_hash);
                        Action::Update {
                            changes: diff_app(&before, app),
                            note: drifted.then(|| {
                                "the live service's spec differs from what that commit resolves to (changed outside fleetsync?); syncing restores the commit's spec".to_owned()
                            }),
                            from,
                        }
                    }
                    None => Action::Update {
                        note: Some(match &from {
                            Some(commit) => format!(
                                "its commit {commit:.12} is not in this repository (force-pushed away?), so the changes cannot be listed"
                            ),
                            None => "the live service was not synced by fleetsync; its settings are replaced by the app's".to_owned(),
                        }),
                        from,
                        changes: Vec::new(),
                    },
                }
            }
        };
        let findings = if action == Action::Unchanged {
            Vec::new()
        } else {
            session.check(app).await?
        };
        plans.push(AppPlan {
            app: app.name.clone(),
            service: app.service_name().to_owned(),
            action,
            findings,
        });
    }
    Ok(plans)
}

fn diff_app(before: &DesiredApp, after: &DesiredApp) -> Vec<Change> {
    let mut changes = Vec::new();
    diff(
        "taskDefinition",
        &without_own_tags(&before.register_task_definition),
        &without_own_tags(&after.register_task_definition),
        &mut changes,
    );
    diff(
        "service",
        &without_own_tags(&before.create_service),
        &without_own_tags(&after.create_service),
        &mut changes,
    );
    changes
}

/// The inputs without fleetsync's provenance tags, which change with every commit.
fn without_own_tags(input: &Map<String, Value>) -> Value {
    let mut input = input.clone();
    if let Some(Value::Array(tags)) = input.get_mut("tags") {
        tags.retain(|t| {
            !t.get("key")
                .and_then(Value::as_str)
                .is_some_and(|k| k.starts_with(tag::PREFIX))
        });
        if tags.is_empty() {
            input.remove("tags");
        }
    }
    Value::Object(input)
}

/// Field-by-field differences. Lists whose items all have a `name` (containers, environment,
/// secrets) are compared by name, so inserting a container does not show as every later one
/// changing.
pub fn diff(path: &str, before: &Value, after: &Value, out: &mut Vec<Change>) {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, old) in a {
                let at = format!("{path}.{key}");
                match b.get(key) {
                    Some(new) => diff(&at, old, new, out),
                    None => out.push(Change {
                        path: at,
                        before: Some(old.clone()),
                        after: None,
                    }),
                }
            }
            for (key, new) in b.iter().filter(|(k, _)| !a.contains_key(*k)) {
                out.push(Change {
                    path: format!("{path}.{key}"),
                    before: None,
                    after: Some(new.clone()),
                });
            }
        }
        (Value::Array(a), Value::Array(b)) if named(a) && named(b) => {
            let name = |v: &Value| v["name"].as_str().unwrap_or_default().to_owned();
            let find = |list: &[Value], n: &str| list.iter().find(|v| name(v) == n).cloned();
            for old in a {
                let n = name(old);
                let at = format!("{path}[{n}]");
                match find(b, &n) {
                    Some(new) => diff(&at, old, &new, out),
                    None => out.push(Change {
                        path: at,
                        before: Some(old.clone()),
                        after: None,
                    }),
                }
            }
            for new in b.iter().filter(|v| find(a, &name(v)).is_none()) {
                out.push(Change {
                    path: format!("{path}[{}]", name(new)),
                    before: None,
                    after: Some(new.clone()),
                });
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (old, new)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), old, new, out);
            }
        }
        _ if before != after => out.push(Change {
            path: path.to_owned(),
            before: Some(before.clone()),
            after: Some(after.clone()),
        }),
        _ => {}
    }
}

fn named(items: &[Value]) -> bool {
    !items.is_empty()
        && items
            .iter()
            .all(|v| v.get("name").is_some_and(Value::is_string))
}

impl fmt::Display for AppPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.action {
            Action::Unchanged => writeln!(f, "  {}: no changes", self.app)?,
            Action::Create => writeln!(f, "+ {}: create service {}", self.app, self.service)?,
            Action::Update {
                from,
                changes,
                note,
            } => {
                match from {
                    Some(commit) => writeln!(
                        f,
                        "~ {}: update service {} (live at {commit:.12})",
                        self.app, self.service
                    )?,
                    None => writeln!(f, "~ {}: update service {}", self.app, self.service)?,
                }
                for c in changes {
                    writeln!(f, "{c}")?;
                }
                if let Some(note) = note {
                    writeln!(f, "    note: {note}")?;
                }
            }
        }
        for finding in &self.findings {
            writeln!(f, "    ! {}: {}", finding.field, finding.message)?;
        }
        Ok(())
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.before, &self.after) {
            (Some(a), Some(b)) => write!(f, "    ~ {}: {a} → {b}", self.path),
            (None, Some(b)) => write!(f, "    + {}: {b}", self.path),
            (Some(a), None) => write!(f, "    - {}: {a}", self.path),
            (None, None) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines(before: Value, after: Value) -> Vec<String> {
        let mut out = Vec::new();
        diff("td", &before, &after, &mut out);
        out.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn named_lists_compare_by_name_and_fields_by_path() {
        let before = json!({"cpu": "256", "containerDefinitions": [
            {"name": "api", "image": "api:1", "environment": [{"name": "A", "value": "1"}]},
            {"name": "proxy", "image": "nginx:1"}]});
        let after = json!({"cpu": "512", "containerDefinitions": [
            {"name": "sidecar", "image": "otel:1"},
            {"name": "api", "image": "api:2", "environment": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}]});
        assert_eq!(
            lines(before, after),
            [
                r#"    ~ td.cpu: "256" → "512""#,
                r#"    ~ td.containerDefinitions[api].image: "api:1" → "api:2""#,
                r#"    + td.containerDefinitions[api].environment[B]: {"name":"B","value":"2"}"#,
                r#"    - td.containerDefinitions[proxy]: {"name":"proxy","image":"nginx:1"}"#,
                r#"    + td.containerDefinitions[sidecar]: {"name":"sidecar","image":"otel:1"}"#,
            ]
        );
    }

    #[test]
    fn equal_inputs_have_no_changes() {
        let v = json!({"a": [1, 2], "b": {"c": null}});
        assert!(lines(v.clone(), v).is_empty());
    }
}
