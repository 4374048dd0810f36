//! A root's `policy:` bounds what its apps may name: roles, images, secrets, clusters, launch
//! types. Nested roots inherit every policy above them and may narrow it, never widen it, so an
//! app is checked against each policy on its way up to the top root.
//!
//! Patterns are globs where only `*` is special (it matches any run of characters, `/` and `:`
//! included), written after `${environment}` and `${cluster}` interpolation: that is what keeps
//! a staging app out of production's roles and secrets.

use std::rc::Rc;

use super::manifest::Fields;
use super::yaml::{Node, Pos};
use super::{Report, Vars};

/// Names of plain `environment` values that look like credentials, unless a root says otherwise.
pub const DEFAULT_CREDENTIAL_NAMES: &[&str] = &[
    "PASSWORD",
    "PASSWD",
    "SECRET",
    "TOKEN",
    "API_KEY",
    "APIKEY",
    "PRIVATE_KEY",
    "ACCESS_KEY",
    "CREDENTIAL",
];

const LAUNCH_TYPES: &[&str] = &["EC2", "FARGATE", "EXTERNAL"];

#[derive(Debug, Default, Clone)]
pub struct Policy {
    /// Where `policy:` is, for problems about the policy as a whole.
    pub pos: Pos,
    pub task_roles: Option<Rule>,
    pub execution_roles: Option<Rule>,
    pub images: Option<Rule>,
    pub secrets: Option<Rule>,
    pub clusters: Option<Rule>,
    pub launch_types: Option<Rule>,
    pub required_tags: Option<Rule>,
    pub credential_names: Option<Rule>,
    pub privileged: Option<(bool, Pos)>,
}

/// One list in a policy, with where it was written.
#[derive(Debug, Clone)]
pub struct Rule {
    pub pos: Pos,
    pub items: Vec<(String, Pos)>,
}

/// A policy with the root that declared it, for messages that name where a rule comes from.
#[derive(Debug)]
pub struct Scope {
    pub policy: Policy,
    pub root: String,
    pub file: String,
    /// The top root's policy, read from the default branch when resolving a bound environment.
    pub top: bool,
    pub from_default_branch: bool,
}

impl Scope {
    fn origin(&self, key: &str, pos: Pos) -> String {
        let branch = if self.from_default_branch {
            " on the default branch"
        } else {
            ""
        };
        format!(
            "policy.{key} of root `{}` ({}:{}:{}{branch})",
            self.root, self.file, pos.line, pos.column
        )
    }
}

impl Policy {
    /// The rules without positions, to compare two roots' policies.
    pub fn rules(&self) -> Vec<(&'static str, Option<Vec<&str>>)> {
        fn items(r: &Option<Rule>) -> Option<Vec<&str>> {
            r.as_ref()
                .map(|r| r.items.iter().map(|(s, _)| s.as_str()).collect())
        }
        let privileged = self
            .privileged
            .map(|(b, _)| if b { "true" } else { "false" });
        vec![
            ("taskRoles", items(&self.task_roles)),
            ("executionRoles", items(&self.execution_roles)),
            ("images", items(&self.images)),
            ("secrets", items(&self.secrets)),
            ("clusters", items(&self.clusters)),
            ("launchTypes", items(&self.launch_types)),
            ("requiredTags", items(&self.required_tags)),
            ("credentialNames", items(&self.credential_names)),
            ("privileged", privileged.map(|p| vec![p])),
        ]
    }
}

pub fn read(node: &Node, report: &mut Report<'_>) -> Option<Policy> {
    let fields = Fields::new(
        node,
        "`policy`",
        &[
            "taskRoles",
            "executionRoles",
            "images",
            "secrets",
            "clusters",
            "launchTypes",
            "requiredTags",
            "credentialNames",
            "privileged",
        ],
        report,
    )?;
    let mut rule = |key: &str| {
        let node = fields.get(key)?;
        let items = fields.str_list(key, report);
        Some(Rule {
            pos: node.pos,
            items,
        })
    };
    let mut policy = Policy {
        pos: node.pos,
        task_roles: rule("taskRoles"),
        execution_roles: rule("executionRoles"),
        images: rule("images"),
        secrets: rule("secrets"),
        clusters: rule("clusters"),
        launch_types: rule("launchTypes"),
        required_tags: rule("requiredTags"),
        credential_names: rule("credentialNames"),
        privileged: None,
    };
    for (name, pos) in policy.launch_types.iter().flat_map(|r| &r.items) {
        if !LAUNCH_TYPES.contains(&name.as_str()) {
            report.at(
                *pos,
                format!(
                    "unknown launch type `{name}`; ECS has: {}",
                    LAUNCH_TYPES.join(", ")
                ),
            );
        }
    }
    if let Some(node) = fields.get("privileged") {
        match node.to_json() {
            serde_json::Value::Bool(b) => policy.privileged = Some((b, node.pos)),
            _ => report.at(node.pos, "`policy.privileged` must be true or false"),
        }
    }
    Some(policy)
}

/// `*` matches any run of characters; every other character matches itself.
///
/// Used for coverage too: a parent pattern that matches a child pattern read as plain text
/// (its `*` taken literally) matches everything the child pattern matches, because a literal
/// `*` in the text can only be consumed by a `*` of the parent.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    wildcard_match(pattern, text, false)
}

/// `*` matches any run of characters and, when `any_one`, `?` matches exactly one (IAM's
/// wildcards); every other character matches itself.
pub fn wildcard_match(pattern: &str, text: &str, any_one: bool) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if p.get(pi) == Some(&'*') {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if p
            .get(pi)
            .is_some_and(|&c| c == t[ti] || (any_one && c == '?'))
        {
            pi += 1;
            ti += 1;
        } else if let Some((star, from)) = backtrack {
            pi = star + 1;
            ti = from + 1;
            backtrack = Some((star, from + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// An image against a pattern: the registry host is matched on its own, with `*` never
/// crossing a `.`, so `123456789012.dkr.ecr.*.amazonaws.com/*` cannot be satisfied by a host the
/// image's author controls (`…dkr.ecr.evil.example/x.amazonaws.com/y`). The rest is a glob.
pub fn image_match(pattern: &str, image: &str) -> bool {
    match (pattern.split_once('/'), image.split_once('/')) {
        (Some((p_host, p_rest)), Some((i_host, i_rest))) => {
            host_match(p_host, i_host) && glob_match(p_rest, i_rest)
        }
        (Some(_), None) => false,
        (None, _) => glob_match(pattern, image),
    }
}

/// Each `.`-separated label of the host matched on its own.
fn host_match(pattern: &str, host: &str) -> bool {
    let (p, h): (Vec<_>, Vec<_>) = (pattern.split('.').collect(), host.split('.').collect());
    p.len() == h.len() && p.iter().zip(&h).all(|(p, h)| glob_match(p, h))
}

fn matches(key: &str, pattern: &str, value: &str) -> bool {
    if key == "images" {
        image_match(pattern, value)
    } else {
        glob_match(pattern, value)
    }
}

/// The glob-valued rules, by key, as (key, rule) pairs of one policy.
fn glob_rules(p: &Policy) -> [(&'static str, Option<&Rule>); 5] {
    [
        ("taskRoles", p.task_roles.as_ref()),
        ("executionRoles", p.execution_roles.as_ref()),
        ("images", p.images.as_ref()),
        ("secrets", p.secrets.as_ref()),
        ("clusters", p.clusters.as_ref()),
    ]
}

fn patterns(rule: &Rule, vars: &Vars) -> Vec<String> {
    rule.items
        .iter()
        .map(|(p, _)| vars.expand_quietly(p))
        .collect()
}

/// Patterns may use the environment's variables only: a policy bounds all apps alike.
pub(super) fn check_patterns(policy: &Policy, vars: &Vars, report: &mut Report<'_>) {
    for (_, rule) in glob_rules(policy) {
        for (pattern, pos) in rule.into_iter().flat_map(|r| &r.items) {
            vars.expand(pattern, *pos, report);
        }
    }
}

/// A nested root's policy must stay inside every policy above it.
pub(super) fn check_narrowing(
    child: &Policy,
    ancestors: &[Rc<Scope>],
    vars: &Vars,
    report: &mut Report<'_>,
) {
    for (i, (key, rule)) in glob_rules(child).into_iter().enumerate() {
        let Some(rule) = rule else { continue };
        for ancestor in ancestors {
            let Some(bound) = glob_rules(&ancestor.policy)[i].1 else {
                continue;
            };
            let allowed = patterns(bound, vars);
            for (pattern, pos) in &rule.items {
                let pattern = vars.expand_quietly(pattern);
                if !allowed.iter().any(|a| matches(key, a, &pattern)) {
                    report.at(
                        *pos,
                        format!(
                            "policy.{key} `{pattern}` widens {}, which allows only: {}; a nested root may narrow its parent's policy, never widen it",
                            ancestor.origin(key, bound.pos),
                            allowed.join(", ")
                        ),
                    );
                }
            }
        }
    }
    if let Some(rule) = &child.launch_types {
        for ancestor in ancestors {
            let Some(bound) = &ancestor.policy.launch_types else {
                continue;
            };
            for (name, pos) in &rule.items {
                if !bound.items.iter().any(|(b, _)| b == name) {
                    report.at(
                        *pos,
                        format!(
                            "policy.launchTypes `{name}` widens {}; a nested root may narrow its parent's policy, never widen it",
                            ancestor.origin("launchTypes", bound.pos)
                        ),
                    );
                }
            }
        }
    }
    if let Some((true, pos)) = child.privileged {
        for ancestor in ancestors {
            if let Some((false, at)) = ancestor.policy.privileged {
                report.at(
                    pos,
                    format!(
                        "policy.privileged: true widens {}; a nested root may narrow its parent's policy, never widen it",
                        ancestor.origin("privileged", at)
                    ),
                );
            }
        }
    }
}

/// The environment's cluster against one policy; checked once per root, not once per app.
pub(super) fn check_cluster(
    scope: &Scope,
    cluster: &str,
    vars: &Vars,
    report: &mut Report<'_>,
    at: Pos,
) {
    let Some(rule) = &scope.policy.clusters else {
        return;
    };
    let allowed = patterns(rule, vars);
    if !allowed.iter().any(|a| glob_match(a, cluster)) {
        report.at(
            at,
            format!(
                "cluster `{cluster}` is not allowed by {}; allowed: {}",
                scope.origin("clusters", rule.pos),
                allowed.join(", ")
            ),
        );
    }
}

/// What one app's manifests name, as read from its files (with positions for messages).
pub struct Subject<'a> {
    pub task_definition: &'a Node,
    pub task_definition_file: &'a str,
    pub service: Option<&'a Node>,
    pub app_file: &'a str,
}

/// One app against every policy on its way up, plus the rule that holds without any policy:
/// credentials are references, never plain values.
/// `values` expands the app's strings exactly as its ECS inputs are expanded (so what is checked
/// is what is sent); `patterns` expands the policy's.
pub(super) fn check_app(
    chain: &[Rc<Scope>],
    app: &Subject<'_>,
    values: &Vars,
    vars: &Vars,
    problems: &mut Vec<super::Problem>,
) {
    let td = app.task_definition;
    let containers = td.get("containerDefinitions").map_or(&[][..], Node::items);
    let mut td_report = Report::new(app.task_definition_file, problems);

    let mut named: Vec<(&str, &Node)> = Vec::new();
    if let Some(n) = td.get("taskRoleArn") {
        named.push(("taskRoles", n));
    }
    if let Some(n) = td.get("executionRoleArn") {
        named.push(("executionRoles", n));
    }
    for c in containers {
        if let Some(n) = c.get("image") {
            named.push(("images", n));
        }
        let secret_lists = [
            c.get("secrets"),
            c.get("logConfiguration")
                .and_then(|l| l.get("secretOptions")),
        ];
        for s in secret_lists.into_iter().flatten().flat_map(Node::items) {
            if let Some(n) = s.get("valueFrom") {
                named.push(("secrets", n));
            }
        }
        if let Some(n) = c
            .get("repositoryCredentials")
            .and_then(|r| r.get("credentialsParameter"))
        {
            named.push(("secrets", n));
        }
    }
    for v in td.get("volumes").map_or(&[][..], Node::items) {
        if let Some(n) = v
            .get("fsxWindowsFileServerVolumeConfiguration")
            .and_then(|f| f.get("authorizationConfig"))
            .and_then(|a| a.get("credentialsParameter"))
        {
            named.push(("secrets", n));
        }
    }

    for scope in chain {
        for (key, node) in &named {
            let Some(rule) = glob_rules(&scope.policy)
                .into_iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, r)| r)
            else {
                continue;
            };
            let Some(value) = node.as_str().map(|s| values.expand_quietly(s)) else {
                continue;
            };
            let allowed = patterns(rule, vars);
            if !allowed.iter().any(|a| matches(key, a, &value)) {
                td_report.at(
                    node.pos,
                    format!(
                        "`{value}` is not allowed by {}; allowed: {}",
                        scope.origin(key, rule.pos),
                        allowed.join(", ")
                    ),
                );
            }
        }
        if let Some((false, at)) = scope.policy.privileged {
            for (node, what) in privileges(td, containers, values) {
                td_report.at(
                    node.pos,
                    format!(
                        "{what} is not allowed by {}",
                        scope.origin("privileged", at)
                    ),
                );
            }
        }
    }

    check_plain_credentials(chain, containers, values, &mut td_report);

    let mut app_report = Report::new(app.app_file, problems);
    for scope in chain {
        check_service(scope, app.service, app.app_file, &mut app_report);
    }
}

/// What `privileged: false` refuses: privileged containers and the host namespaces and
/// capabilities that amount to the same.
fn privileges<'n>(td: &'n Node, containers: &'n [Node], values: &Vars) -> Vec<(&'n Node, String)> {
    let text = |n: &Node| n.as_str().map(|s| values.expand_quietly(s));
    let mut found = Vec::new();
    for (key, what) in [
        ("networkMode", "networkMode: host"),
        ("pidMode", "pidMode: host"),
        ("ipcMode", "ipcMode: host"),
    ] {
        if let Some(n) = td.get(key)
            && text(n).as_deref() == Some("host")
        {
            found.push((n, what.to_owned()));
        }
    }
    for c in containers {
        if let Some(n) = c.get("privileged")
            && n.to_json() == serde_json::Value::Bool(true)
        {
            found.push((n, "a privileged container".to_owned()));
        }
        let added = c
            .get("linuxParameters")
            .and_then(|l| l.get("capabilities"))
            .and_then(|c| c.get("add"))
            .map_or(&[][..], Node::items);
        for n in added {
            if let Some(cap) = text(n)
                && matches!(
                    cap.to_ascii_uppercase().trim_start_matches("CAP_"),
                    "SYS_ADMIN" | "ALL"
                )
            {
                found.push((n, format!("capability {cap}")));
            }
        }
    }
    found
}

fn check_service(scope: &Scope, service: Option<&Node>, _file: &str, report: &mut Report<'_>) {
    let at = service.map_or(Pos::at(1, 1), |s| s.pos);
    if let Some(rule) = &scope.policy.required_tags {
        let keys: Vec<String> = service
            .and_then(|s| s.get("tags"))
            .map_or(&[][..], Node::items)
            .iter()
            .filter_map(|t| t.get("key").and_then(Node::as_str).map(str::to_owned))
            .collect();
        for (tag, _) in &rule.items {
            if !keys.contains(tag) {
                report.at(
                    at,
                    format!(
                        "the service needs tag `{tag}` (required by {}); add `{{ key: {tag}, value: ... }}` to service.tags",
                        scope.origin("requiredTags", rule.pos)
                    ),
                );
            }
        }
    }
    if let Some(rule) = &scope.policy.launch_types {
        let allowed: Vec<&str> = rule.items.iter().map(|(s, _)| s.as_str()).collect();
        for (launch_type, pos) in launch_types(service, at) {
            if launch_type == "UNSET" {
                report.at(
                    pos,
                    format!(
                        "{} allows only {}, so the service must say which: set `launchType` or `capacityProviderStrategy` (the cluster's default strategy is not known from Git)",
                        scope.origin("launchTypes", rule.pos),
                        allowed.join(", ")
                    ),
                );
            } else if !allowed.contains(&launch_type.as_str()) {
                report.at(
                    pos,
                    format!(
                        "launch type {launch_type} is not allowed by {}; allowed: {}",
                        scope.origin("launchTypes", rule.pos),
                        allowed.join(", ")
                    ),
                );
            }
        }
    }
}

/// The launch types a service runs on: its `launchType`, else what its capacity providers
/// imply (Fargate's own providers, or EC2 for any other). With neither, ECS uses the cluster's
/// default strategy, which cannot be known from Git: `UNSET`, which no rule allows.
fn launch_types(service: Option<&Node>, at: Pos) -> Vec<(String, Pos)> {
    if let Some(n) = service.and_then(|s| s.get("launchType"))
        && let Some(s) = n.as_str()
    {
        return vec![(s.to_owned(), n.pos)];
    }
    let providers = service
        .and_then(|s| s.get("capacityProviderStrategy"))
        .map_or(&[][..], Node::items);
    if providers.is_empty() {
        return vec![("UNSET".to_owned(), at)];
    }
    providers
        .iter()
        .filter_map(|p| {
            let name = p.get("capacityProvider")?.as_str()?;
            let launch_type = if name.starts_with("FARGATE") {
                "FARGATE"
            } else {
                "EC2"
            };
            Some((launch_type.to_owned(), p.pos))
        })
        .collect()
}

/// Plain `environment` values whose names look like credentials. The top root's
/// `credentialNames` replaces the default list; nested roots can only add to it.
fn check_plain_credentials(
    chain: &[Rc<Scope>],
    containers: &[Node],
    values: &Vars,
    report: &mut Report<'_>,
) {
    let top = chain.first().filter(|s| s.top);
    let mut names: Vec<String> = match top.and_then(|s| s.policy.credential_names.as_ref()) {
        Some(rule) => rule
            .items
            .iter()
            .map(|(s, _)| s.to_ascii_uppercase())
            .collect(),
        None => DEFAULT_CREDENTIAL_NAMES
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
    };
    for scope in chain.iter().filter(|s| !s.top) {
        if let Some(rule) = &scope.policy.credential_names {
            names.extend(rule.items.iter().map(|(s, _)| s.to_ascii_uppercase()));
        }
    }
    for c in containers {
        for entry in c.get("environment").map_or(&[][..], Node::items) {
            let Some(name) = entry
                .get("name")
                .and_then(Node::as_str)
                .map(|n| values.expand_quietly(n))
            else {
                continue;
            };
            let upper = name.to_ascii_uppercase();
            if let Some(hit) = names.iter().find(|n| upper.contains(n.as_str())) {
                report.at(
                    entry.pos,
                    format!(
                        "`{name}` looks like a credential ({hit}) but has a plain value, which anyone who can describe the task definition can read; move it to `secrets` with `valueFrom` (a Secrets Manager or SSM Parameter Store ARN)"
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;
    use proptest::prelude::*;

    #[test]
    fn globs_match_only_with_star() {
        assert!(glob_match(
            "arn:aws:iam::1:role/staging-*",
            "arn:aws:iam::1:role/staging-api"
        ));
        assert!(!glob_match(
            "arn:aws:iam::1:role/staging-*",
            "arn:aws:iam::1:role/prod-api"
        ));
        assert!(glob_match(
            "*.dkr.ecr.*.amazonaws.com/*",
            "1.dkr.ecr.eu-west-1.amazonaws.com/a:1"
        ));
        assert!(!glob_match("staging", "staging-2"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a?", "ab"), "`?` is a plain character");
    }

    #[test]
    fn coverage_reads_the_child_pattern_as_text() {
        assert!(glob_match("role/staging-*", "role/staging-team-*"));
        assert!(!glob_match("role/staging-*", "role/*"));
        assert!(!glob_match("*b*", "*"));
    }

    proptest! {
        /// Coverage is sound: whatever a covered child pattern matches, its parent matches.
        #[test]
        fn a_covered_pattern_matches_nothing_its_parent_refuses(
            parent in "[ab*]{0,5}",
            child in "[ab*]{0,5}",
            text in "[ab]{0,6}",
        ) {
            if glob_match(&parent, &child) && glob_match(&child, &text) {
                prop_assert!(glob_match(&parent, &text));
            }
        }
    }
}
