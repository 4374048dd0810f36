//! A YAML tree that remembers where every node came from.
//!
//! serde_yaml reports positions only for its own parse errors; `validate` must point at the exact
//! key or value behind a semantic problem (an unknown `dependsOn`, a wrong type), so manifests are
//! parsed once into this spanned tree and read by hand. JSON is YAML, so `taskdef.json` goes
//! through the same parser and gets the same precise locations.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, SpannedEventReceiver};
use serde_json::Value;

/// 1-based line and column of a node in its file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
    /// In an environment overlay merged into the app, not in the file the app was read from.
    pub overlay: bool,
}

impl Pos {
    pub const fn at(line: usize, column: usize) -> Self {
        Pos {
            line,
            column,
            overlay: false,
        }
    }

    fn of(span: Span) -> Self {
        Pos::at(span.start.line(), span.start.col() + 1)
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub pos: Pos,
    pub kind: Kind,
}

#[derive(Clone, Debug)]
pub enum Kind {
    /// A scalar and whether it was quoted (quoted scalars are always strings).
    Scalar(String, bool),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// A syntax error, with the position the parser stopped at.
#[derive(Debug)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// How deep collections may nest in one file. ECS inputs nest a handful of levels; the bound
/// keeps every recursive walk of the tree (clone, drop, JSON conversion) far from the stack's
/// end, whatever a commit holds: saphyr bounds flow nesting, not block nesting.
pub const MAX_DEPTH: usize = 64;

/// Nodes one file may hold, aliases' copies included: with [`MAX_DEPTH`], what one manifest can
/// cost the receivers in memory and time.
pub const MAX_NODES: usize = 250_000;

/// Parses one YAML (or JSON) document. An empty document is an empty mapping's absence: `None`.
/// Parsing stops at the first problem: what follows it costs nothing.
pub fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    let mut builder = Builder::default();
    for next in Parser::new_from_str(text) {
        let (event, span) = next.map_err(|e| SyntaxError {
            pos: Pos::at(e.marker().line(), e.marker().col() + 1),
            message: e.info().to_owned(),
        })?;
        builder.on_event(event, span);
        if let Some(message) = builder.error {
            return Err(SyntaxError {
                pos: builder.error_pos,
                message,
            });
        }
    }
    Ok(builder.done)
}

impl Node {
    /// Marks every position in the tree as the overlay's.
    pub fn mark_overlay(&mut self) {
        self.pos.overlay = true;
        match &mut self.kind {
            Kind::Scalar(..) => {}
            Kind::Seq(items) => items.iter_mut().for_each(Node::mark_overlay),
            Kind::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
                k.mark_overlay();
                v.mark_overlay();
            }),
        }
    }

    /// The value of `key` when this node is a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The items when this node is a list; nothing otherwise (its type is reported elsewhere).
    pub fn items(&self) -> &[Node] {
        match &self.kind {
            Kind::Seq(items) => items,
            _ => &[],
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar(s, _) => Some(s),
            _ => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            Kind::Scalar(..) => match self.to_json() {
                Value::String(_) => "a string",
                Value::Bool(_) => "a boolean",
                Value::Null => "null",
                _ => "a number",
            },
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }

    /// The node as JSON, typing plain scalars by the YAML 1.2 core schema.
    pub fn to_json(&self) -> Value {
        match &self.kind {
            Kind::Scalar(s, true) => Value::String(s.clone()),
            Kind::Scalar(s, false) => plain_scalar(s),
            Kind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            Kind::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.as_str().unwrap_or_default().to_owned(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

fn plain_scalar(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::from(i);
    }
    let looks_numeric = s
        .bytes()
        .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
        && s.bytes().any(|b| b.is_ascii_digit());
    if looks_numeric && let Ok(f) = s.parse::<f64>() {
        return Value::from(f);
    }
    Value::String(s.to_owned())
}

#[derive(Default)]
struct Builder {
    /// Open collections: the node under construction and, for mappings, a pending key.
    stack: Vec<(Node, Option<Node>)>,
    /// Anchored nodes with their [`Cost`], known before any alias copies them.
    anchors: HashMap<usize, (Node, Cost)>,
    /// Anchor ids of the open collections, parallel to `stack`.
    open_anchors: Vec<usize>,
    done: Option<Node>,
    /// What aliases copied so far.
    aliased: Cost,
    /// Nodes in the tree so far, copies included.
    nodes: usize,
    error: Option<String>,
    error_pos: Pos,
}

impl Builder {
    fn fail(&mut self, pos: Pos, message: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(message.into());
            self.error_pos = pos;
        }
    }

    fn push_value(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            let cost = Cost::of(&node);
            self.anchors.insert(anchor, (node.clone(), cost));
        }
        let Some((parent, pending_key)) = self.stack.last_mut() else {
            if self.done.is_some() {
                self.fail(
                    node.pos,
                    "a manifest holds one YAML document; found a second one",
                );
            }
            self.done = Some(node);
            return;
        };
        let problem = match &mut parent.kind {
            Kind::Seq(items) => {
                items.push(node);
                None
            }
            Kind::Map(entries) => match pending_key.take() {
                Some(key) => {
                    // A repeated key would silently win over the first; say so instead.
                    let duplicate = entries.iter().any(|(k, _)| k.as_str() == key.as_str());
                    let problem = duplicate.then(|| {
                        (
                            key.pos,
                            format!("duplicate key `{}`", key.as_str().unwrap_or_default()),
                        )
                    });
                    entries.push((key, node));
                    problem
                }
                None if matches!(node.kind, Kind::Scalar(..)) => {
                    *pending_key = Some(node);
                    None
                }
                None => {
                    // Keep the tree balanced: a placeholder key absorbs the value that follows.
                    *pending_key = Some(Node {
                        pos: node.pos,
                        kind: Kind::Scalar(String::new(), true),
                    });
                    Some((node.pos, "mapping keys must be plain strings".to_owned()))
                }
            },
            Kind::Scalar(..) => unreachable!("scalars are never pushed as parents"),
        };
        if let Some((pos, message)) = problem {
            self.fail(pos, message);
        }
    }
}

/// Nodes, and bytes of text, aliases may copy in one file. Aliases share nothing once expanded,
/// so a few nested anchors ("billion laughs"), or one long string named many times, would
/// otherwise exhaust memory.
const MAX_ALIASED_NODES: usize = 10_000;
const MAX_ALIASED_BYTES: usize = 1 << 20;

/// What a copy of a subtree costs.
#[derive(Clone, Copy, Default)]
struct Cost {
    nodes: usize,
    bytes: usize,
}

impl Cost {
    /// Recursive, within [`MAX_DEPTH`].
    fn of(node: &Node) -> Cost {
        let mut cost = Cost { nodes: 1, bytes: 0 };
        let mut add = |c: Cost| {
            cost.nodes += c.nodes;
            cost.bytes += c.bytes;
        };
        match &node.kind {
            Kind::Scalar(s, _) => add(Cost {
                nodes: 0,
                bytes: s.len(),
            }),
            Kind::Seq(items) => items.iter().for_each(|i| add(Cost::of(i))),
            Kind::Map(entries) => entries.iter().for_each(|(k, v)| {
                add(Cost::of(k));
                add(Cost::of(v));
            }),
        }
        cost
    }
}

impl<'input> SpannedEventReceiver<'input> for Builder {
    fn on_event(&mut self, event: Event<'input>, span: Span) {
        let pos = Pos::of(span);
        if matches!(
            event,
            Event::Scalar(..) | Event::SequenceStart(..) | Event::MappingStart(..)
        ) {
            self.nodes += 1;
            if self.nodes > MAX_NODES {
                return self.fail(pos, format!("more than {MAX_NODES} values in one file"));
            }
        }
        if matches!(event, Event::SequenceStart(..) | Event::MappingStart(..))
            && self.stack.len() >= MAX_DEPTH
        {
            return self.fail(
                pos,
                format!("lists and mappings nest more than {MAX_DEPTH} levels deep"),
            );
        }
        match event {
            Event::Scalar(value, style, anchor, _) => {
                let quoted = !matches!(style, ScalarStyle::Plain);
                self.push_value(
                    Node {
                        pos,
                        kind: Kind::Scalar(value.into_owned(), quoted),
                    },
                    anchor,
                );
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push((
                    Node {
                        pos,
                        kind: Kind::Seq(Vec::new()),
                    },
                    None,
                ));
                self.open_anchors.push(anchor);
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push((
                    Node {
                        pos,
                        kind: Kind::Map(Vec::new()),
                    },
                    None,
                ));
                self.open_anchors.push(anchor);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let (Some((node, _)), Some(anchor)) = (self.stack.pop(), self.open_anchors.pop())
                {
                    self.push_value(node, anchor);
                }
            }
            Event::Alias(anchor) => {
                let Some((node, cost)) = self.anchors.get(&anchor) else {
                    return self.fail(pos, "alias to an unknown anchor");
                };
                // Counted before the copy is made: the copy is what a bomb costs.
                self.aliased.nodes += cost.nodes;
                self.aliased.bytes += cost.bytes;
                self.nodes += cost.nodes;
                if self.aliased.nodes > MAX_ALIASED_NODES {
                    return self.fail(
                        pos,
                        format!("aliases expand to more than {MAX_ALIASED_NODES} nodes"),
                    );
                }
                if self.aliased.bytes > MAX_ALIASED_BYTES {
                    return self.fail(pos, "aliases copy more than 1 MiB of text");
                }
                let node = Node {
                    pos,
                    ..node.clone()
                };
                self.push_value(node, 0);
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_point_at_the_value() {
        let node = parse("a: 1\nlist:\n  - x\n  - 'y'\n").unwrap().unwrap();
        let Kind::Map(entries) = &node.kind else {
            panic!("not a map")
        };
        assert_eq!(entries[0].0.pos, Pos::at(1, 1));
        let Kind::Seq(items) = &entries[1].1.kind else {
            panic!("not a seq")
        };
        assert_eq!(items[1].pos, Pos::at(4, 5));
        assert_eq!(
            node.to_json(),
            serde_json::json!({"a": 1, "list": ["x", "y"]})
        );
    }

    #[test]
    fn quoted_numbers_stay_strings_and_json_parses() {
        let node = parse(r#"{"cpu": "256", "port": 80, "on": true, "x": null, "f": 1.5}"#).unwrap();
        let json = node.unwrap().to_json();
        assert_eq!(
            json,
            serde_json::json!({"cpu": "256", "port": 80, "on": true, "x": null, "f": 1.5})
        );
    }

    #[test]
    fn anchors_and_aliases_expand() {
        let node = parse("base: &b {a: 1}\ncopy: *b\n").unwrap().unwrap();
        assert_eq!(
            node.to_json(),
            serde_json::json!({"base": {"a": 1}, "copy": {"a": 1}})
        );
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.line >= 1, "{err:?}");
        assert!(!err.message.is_empty());
    }

    #[test]
    fn duplicate_keys_second_documents_and_alias_bombs_are_refused() {
        let err = parse("a: 1\nb:\n  c: 1\n  c: 2\n").unwrap_err();
        assert_eq!(
            (err.pos, err.message.as_str()),
            (Pos::at(4, 3), "duplicate key `c`")
        );
        let err = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(
            err.message,
            "a manifest holds one YAML document; found a second one"
        );
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse(&bomb).unwrap_err();
        assert_eq!(err.message, "aliases expand to more than 10000 nodes");
    }

    /// A 10 KB app.yaml of 5,000 nested block lists aborted every receiver on a 2 MiB stack.
    #[test]
    fn deep_block_nesting_is_refused_at_its_line_without_overflowing_the_stack() {
        let deep = "- ".repeat(5_000) + "x\n";
        let err = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || parse(&deep).unwrap_err())
            .unwrap()
            .join()
            .expect("parsing overflowed the stack");
        assert_eq!(
            (err.pos.line, err.message.as_str()),
            (1, "lists and mappings nest more than 64 levels deep")
        );
        let fits = "- ".repeat(MAX_DEPTH) + "x\n";
        assert!(parse(&fits).is_ok());
    }

    /// A 400 KB file of aliases took 17.5 s of CPU before the refusal: parsing went on past it.
    #[test]
    fn alias_copies_are_refused_before_they_are_made_and_parsing_stops_there() {
        let long = "y".repeat(64 * 1024);
        let mut text = format!("a: &a {long}\nl:\n");
        for _ in 0..20_000 {
            text.push_str("  - *a\n");
        }
        let err = parse(&text).unwrap_err();
        // The 17th copy passes 1 MiB: nothing after that line is read.
        assert_eq!(
            (err.pos.line, err.message.as_str()),
            (19, "aliases copy more than 1 MiB of text")
        );
        let wide = "- x\n".repeat(MAX_NODES + 1);
        assert_eq!(
            parse(&wide).unwrap_err().message,
            "more than 250000 values in one file"
        );
    }

    /// The shape of what a commit may hold, as the fuzz target (fuzz/fuzz_targets/manifest.rs)
    /// explores it, run by the tests on every build: whatever the text, the parser answers on a
    /// small stack, and what it accepts is within the bounds.
    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        const FRAGMENTS: &[&str] = &[
            "- ", "a: ", "b: ", "[", "]", "{", "}", ", ", "\n", "  ", "&a ", "&b ", "*a", "*b",
            "x", "'q'", "\"", "? ", "---\n", "|\n", "#", ": ", "!!str ", "1", "~",
        ];

        fn depth(node: &Node) -> usize {
            let mut deepest = 0;
            let mut stack = vec![(node, 0)];
            while let Some((node, level)) = stack.pop() {
                deepest = deepest.max(level);
                match &node.kind {
                    Kind::Scalar(..) => {}
                    Kind::Seq(items) => stack.extend(items.iter().map(|n| (n, level + 1))),
                    Kind::Map(pairs) => {
                        for (k, v) in pairs {
                            stack.push((k, level + 1));
                            stack.push((v, level + 1));
                        }
                    }
                }
            }
            deepest
        }

        fn on_a_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(f)
                .unwrap()
                .join()
                .expect("the parser overflowed a 256 KiB stack or panicked")
        }

        proptest! {
            #[test]
            fn any_text_is_parsed_or_refused_within_the_bounds(
                picks in proptest::collection::vec(0..FRAGMENTS.len(), 0..600)
            ) {
                let text: String = picks.iter().map(|&i| FRAGMENTS[i]).collect();
                if let Ok(Some(node)) = on_a_small_stack(move || parse(&text)) {
                    prop_assert!(depth(&node) <= MAX_DEPTH);
                }
            }

            #[test]
            fn nesting_is_accepted_up_to_the_limit_and_refused_past_it(
                levels in proptest::collection::vec(0..3usize, 1..120)
            ) {
                // Block lists, then flow lists and mappings inside: every level is a collection.
                let block = levels.iter().take_while(|&&l| l == 0).count();
                let mut text = "- ".repeat(block);
                let mut close = String::new();
                for &level in &levels[block..] {
                    if level == 1 {
                        text.push('[');
                        close.insert(0, ']');
                    } else {
                        text.push_str("{k: ");
                        close.insert(0, '}');
                    }
                }
                text.push('x');
                text.push_str(&close);
                text.push('\n');
                let collections = levels.len();
                let parsed = on_a_small_stack(move || parse(&text).map(|n| n.map(|n| depth(&n))));
                match parsed {
                    Ok(found) => {
                        prop_assert!(collections <= MAX_DEPTH, "{collections} levels accepted");
                        prop_assert_eq!(found, Some(collections));
                    }
                    Err(e) => prop_assert!(
                        collections > MAX_DEPTH,
                        "{collections} levels refused: {}", e.message
                    ),
                }
            }
        }
    }

    #[test]
    fn empty_document_is_none() {
        assert!(parse("").unwrap().is_none());
        assert!(parse("# only a comment\n").unwrap().is_none());
    }
}
