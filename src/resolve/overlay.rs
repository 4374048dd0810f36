//! Per-environment overlays: `<app>/env/<environment>.yaml` patches the app without a copy of it
//! on another branch.
//!
//! The patch is a JSON Merge Patch (RFC 7386) — mappings merge key by key, `null` removes a key,
//! anything else replaces — except that lists whose items all carry a `name` (containers,
//! `environment`, `secrets`, …) merge item by item on that name, so an overlay can change one
//! container's image or one variable without restating the list.

use super::yaml::{Kind, Node};

/// `base` with `patch` applied. Positions of patched values are the patch's.
pub fn merge(base: &Node, patch: &Node) -> Node {
    match (&base.kind, &patch.kind) {
        (Kind::Map(old), Kind::Map(new)) => {
            let mut entries: Vec<(Node, Node)> = Vec::with_capacity(old.len() + new.len());
            for (key, value) in old {
                match find(new, key) {
                    Some(p) if is_null(p) => {}
                    Some(p) => entries.push((key.clone(), merge(value, p))),
                    None => entries.push((key.clone(), value.clone())),
                }
            }
            for (key, value) in new {
                if find(old, key).is_none() && !is_null(value) {
                    entries.push((key.clone(), value.clone()));
                }
            }
            Node {
                pos: base.pos,
                kind: Kind::Map(entries),
            }
        }
        (Kind::Seq(old), Kind::Seq(new)) if named(old) && named(new) => {
            let mut items: Vec<Node> = old
                .iter()
                .map(|item| match new.iter().find(|p| name(p) == name(item)) {
                    Some(p) => merge(item, p),
                    None => item.clone(),
                })
                .collect();
            items.extend(
                new.iter()
                    .filter(|p| !old.iter().any(|item| name(item) == name(p)))
                    .cloned(),
            );
            Node {
                pos: base.pos,
                kind: Kind::Seq(items),
            }
        }
        _ => patch.clone(),
    }
}

fn find<'a>(entries: &'a [(Node, Node)], key: &Node) -> Option<&'a Node> {
    entries
        .iter()
        .find(|(k, _)| k.as_str() == key.as_str())
        .map(|(_, v)| v)
}

fn is_null(node: &Node) -> bool {
    matches!(node.kind, Kind::Scalar(..)) && node.to_json().is_null()
}

fn name(node: &Node) -> Option<&str> {
    node.get("name").and_then(Node::as_str)
}

fn named(items: &[Node]) -> bool {
    !items.is_empty() && items.iter().all(|i| name(i).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::yaml::parse;

    fn merged(base: &str, patch: &str) -> serde_json::Value {
        let (base, patch) = (
            parse(base).unwrap().unwrap(),
            parse(patch).unwrap().unwrap(),
        );
        merge(&base, &patch).to_json()
    }

    #[test]
    fn mappings_merge_null_removes_and_plain_lists_replace() {
        assert_eq!(
            merged(
                "{a: 1, b: {c: 2, d: 3}, l: [1, 2]}",
                "{b: {c: 9, d: null}, l: [3], e: 4}"
            ),
            serde_json::json!({"a": 1, "b": {"c": 9}, "l": [3], "e": 4})
        );
    }

    #[test]
    fn named_lists_merge_item_by_item() {
        let base = "[{name: api, image: a:1, environment: [{name: A, value: '1'}, {name: B, value: '2'}]}, {name: proxy, image: p:1}]";
        let patch = "[{name: api, image: a:2, environment: [{name: B, value: '3'}, {name: C, value: '4'}]}, {name: sidecar, image: s:1}]";
        assert_eq!(
            merged(base, patch),
            serde_json::json!([
                {"name": "api", "image": "a:2", "environment": [
                    {"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}]},
                {"name": "proxy", "image": "p:1"},
                {"name": "sidecar", "image": "s:1"},
            ])
        );
    }
}
