//! `previews:` on the top root: pull requests against one environment's branch run as copies of
//! that environment, confined to a cluster of their own. Read from the root on the default
//! branch only, like the environment bindings: a pull request cannot widen its own preview.

use std::time::Duration;

use super::Report;
use super::manifest::{Environment, Fields};
use super::policy::{self, Policy};
use super::yaml::{Node, Pos};

/// Previews active or waiting at once are recorded as tags on the preview cluster (ECS allows
/// 50 per resource; a few are left for the cluster's own).
pub const MAX_PREVIEWS: u32 = 40;

/// The most `ttl` may be: an idle preview costs money and one of the budget's places.
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct Previews {
    /// The environment whose branch PRs target, and whose overlays, vars and policy they use.
    pub from: String,
    /// The only cluster a preview touches.
    pub cluster: String,
    pub max_active: u32,
    /// Idle time since the PR's last push after which the sweeper tears a preview down.
    pub ttl: Duration,
    /// A cap on every app's desired count.
    pub desired_count: u32,
    pub allow_forks: bool,
    /// Only PRs carrying this label deploy (for a fork: given on the head it approves).
    pub label: Option<String>,
    /// Narrows the `from` environment's policy.
    pub policy: Option<Policy>,
    pub ingress: Option<Ingress>,
    pub pos: Pos,
}

/// `previews.ingress`: a host name per preview app, routed by a rule of one ALB listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingress {
    pub listener_arn: String,
    /// With `${app}`, `${preview}` and `${environment}` still in it.
    pub host: String,
}

impl Ingress {
    pub fn host_for(&self, app: &str, preview: &str, environment: &str) -> String {
        self.host
            .replace("${app}", app)
            .replace("${preview}", preview)
            .replace("${environment}", environment)
    }
}

/// What an ALB allows (Elastic Load Balancing's quotas): target groups per load balancer, which
/// AWS does not raise, and rules per listener by default. Every preview app with ingress costs
/// one of each.
pub const MAX_TARGET_GROUPS: u32 = 100;
pub const MAX_RULES: u32 = 100;

/// How long a host-header value may be (ALB's condition limit).
pub const MAX_HOST: usize = 128;

/// What makes a resolve a preview's: its number and the bounds `previews:` sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    pub number: u64,
    pub cluster: String,
    pub desired_count: u32,
    pub ingress: Option<Ingress>,
    /// `previews.maxActive`: with ingress, how many of each app's rules may exist at once.
    pub max_active: u32,
}

impl Preview {
    pub fn name(&self) -> String {
        name(self.number)
    }
}

/// `pr-<number>`: the suffix of a preview's services and families, and `${preview}`.
pub fn name(number: u64) -> String {
    format!("pr-{number}")
}

impl Previews {
    pub fn scope(&self, number: u64) -> Preview {
        Preview {
            number,
            cluster: self.cluster.clone(),
            desired_count: self.desired_count,
            ingress: self.ingress.clone(),
            max_active: self.max_active,
        }
    }
}

/// Reads `previews:` and checks it against the root's environments.
pub fn read(
    node: &Node,
    environments: &[Environment],
    report: &mut Report<'_>,
) -> Option<Previews> {
    let fields = Fields::new(
        node,
        "`previews`",
        &[
            "from",
            "cluster",
            "maxActive",
            "ttl",
            "desiredCount",
            "allowForks",
            "label",
            "policy",
            "ingress",
        ],
        report,
    )?;
    let from = fields.required_str_at("from", report);
    let cluster = fields.required_str_at("cluster", report);
    if let Some((from, pos)) = &from
        && !environments.is_empty()
        && !environments.iter().any(|e| e.name == *from)
    {
        let known: Vec<_> = environments.iter().map(|e| e.name.as_str()).collect();
        report.at(
            *pos,
            format!(
                "`previews.from` names environment `{from}`, which is not declared; declared: {}",
                known.join(", ")
            ),
        );
    }
    if let Some((cluster, pos)) = &cluster
        && let Some(env) = environments.iter().find(|e| e.cluster == *cluster)
    {
        report.at(
            *pos,
            format!(
                "`previews.cluster` is `{cluster}`, which environment `{}` is bound to; previews need a cluster no environment uses",
                env.name
            ),
        );
    }
    let number = |key: &str, default: u32, min: u32, max: u32, report: &mut Report<'_>| {
        let Some(node) = fields.get(key) else {
            return default;
        };
        match node.to_json().as_u64() {
            Some(n) if (u64::from(min)..=u64::from(max)).contains(&n) => n as u32,
            _ => {
                report.at(
                    node.pos,
                    format!("`previews.{key}` must be a whole number from {min} to {max}"),
                );
                default
            }
        }
    };
    let max_active = number("maxActive", 10, 1, MAX_PREVIEWS, report);
    let desired_count = number("desiredCount", 1, 0, 100, report);
    let flag =
        |key: &str, report: &mut Report<'_>| match fields.get(key).map(|n| (n.to_json(), n.pos)) {
            None => false,
            Some((serde_json::Value::Bool(b), _)) => b,
            Some((_, pos)) => {
                report.at(pos, format!("`previews.{key}` must be true or false"));
                false
            }
        };
    let allow_forks = flag("allowForks", report);
    let label = match fields.get("label") {
        Some(node) if node.to_json().is_null() => None,
        Some(_) => fields.optional_str_at("label", report),
        None => None,
    };
    if allow_forks && label.is_none() {
        report.at(
            fields.get("allowForks").map_or(node.pos, |n| n.pos),
            "`previews.allowForks: true` needs a `label`: a fork's PR deploys only once someone with the right to label approves its head",
        );
    }
    let ttl = match fields.get("ttl") {
        None => Duration::from_secs(72 * 3600),
        Some(node) => match node.as_str().and_then(parse_duration) {
            Some(ttl) if ttl >= Duration::from_secs(60) && ttl <= MAX_TTL => ttl,
            _ => {
                report.at(
                    node.pos,
                    "`previews.ttl` must be a duration from 1m to 30d, such as `72h`, `90m` or `3d`",
                );
                Duration::from_secs(72 * 3600)
            }
        },
    };
    let policy = fields.get("policy").and_then(|n| policy::read(n, report));
    let ingress = fields.get("ingress").and_then(|n| read_ingress(n, report));
    Some(Previews {
        from: from?.0,
        cluster: cluster?.0,
        max_active,
        ttl,
        desired_count,
        allow_forks,
        label: label.map(|l| l.0),
        policy,
        ingress,
        pos: node.pos,
    })
}

fn read_ingress(node: &Node, report: &mut Report<'_>) -> Option<Ingress> {
    let fields = Fields::new(node, "`previews.ingress`", &["listenerArn", "host"], report)?;
    let listener = fields.required_str_at("listenerArn", report);
    let host = fields.required_str_at("host", report);
    if let Some((arn, pos)) = &listener
        && !(arn.starts_with("arn:") && arn.contains(":listener/app/"))
    {
        report.at(
            *pos,
            format!(
                "`previews.ingress.listenerArn` is `{}`, not the ARN of an Application Load Balancer listener (arn:aws:elasticloadbalancing:REGION:ACCOUNT:listener/app/NAME/ID/ID)",
                bounded(arn)
            ),
        );
    }
    if let Some((host, pos)) = &host
        && let Err(why) = check_host(host)
    {
        report.at(*pos, format!("`previews.ingress.host` {why}"));
    }
    Some(Ingress {
        listener_arn: listener?.0,
        host: host?.0,
    })
}

/// A host template every preview app gets a host of its own from, in the characters a
/// host-header condition takes.
fn check_host(host: &str) -> Result<(), String> {
    let mut rest = host;
    let mut used = Vec::new();
    let mut literal = String::new();
    while let Some(start) = rest.find("${") {
        literal.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            return Err(format!("has an unclosed `${{` in `{}`", bounded(host)));
        };
        let name = &rest[start + 2..start + end];
        if !matches!(name, "app" | "preview" | "environment") {
            return Err(format!(
                "uses `${{{}}}`; it may use `${{app}}`, `${{preview}}` and `${{environment}}`",
                bounded(name)
            ));
        }
        if start == 0 && !used.is_empty() {
            return Err(format!(
                "puts two variables side by side in `{}`; separate them (with `-` or `.`) so that no two apps or previews can render the same host",
                bounded(host)
            ));
        }
        used.push(name);
        rest = &rest[start + end + 1..];
    }
    literal.push_str(rest);
    if !(used.contains(&"app") && used.contains(&"preview")) {
        return Err(format!(
            "is `{}`; it must use both `${{app}}` and `${{preview}}`, so that every app of every preview has a host of its own",
            bounded(host)
        ));
    }
    if let Some(c) = literal
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-')))
    {
        return Err(format!(
            "has `{c}`; a host name takes letters, digits, `.` and `-`"
        ));
    }
    if literal.len() > MAX_HOST {
        return Err(format!("is over {MAX_HOST} characters"));
    }
    Ok(())
}

/// Git's text in a message, cut to a readable length.
fn bounded(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// `90s`, `30m`, `72h`, `3d`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(seconds).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str) -> (Option<Previews>, Vec<String>) {
        let node = super::super::yaml::parse(text).unwrap().unwrap();
        let environments = vec![
            Environment {
                name: "staging".into(),
                branch: "staging".into(),
                cluster: "staging".into(),
                pos: Pos::default(),
            },
            Environment {
                name: "production".into(),
                branch: "main".into(),
                cluster: "production".into(),
                pos: Pos::default(),
            },
        ];
        let mut problems = Vec::new();
        let previews = read(
            &node,
            &environments,
            &mut Report::new("fleetsync.yaml", &mut problems),
        );
        (previews, problems.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn a_full_previews_block_reads_with_its_defaults() {
        let (previews, problems) = read_text("from: staging\ncluster: previews\nttl: 90m\n");
        assert!(problems.is_empty(), "{problems:?}");
        let previews = previews.unwrap();
        assert_eq!(previews.max_active, 10);
        assert_eq!(previews.desired_count, 1);
        assert_eq!(previews.ttl, Duration::from_secs(5400));
        assert!(!previews.allow_forks);
    }

    #[test]
    fn previews_that_could_reach_an_environment_are_refused() {
        let (_, problems) = read_text(
            "from: qa\ncluster: production\nmaxActive: 0\nallowForks: true\nttl: forever\nextra: 1\n",
        );
        let all = problems.join("\n");
        for expected in [
            "names environment `qa`, which is not declared",
            "which environment `production` is bound to",
            "`previews.maxActive` must be a whole number from 1 to 40",
            "needs a `label`",
            "`previews.ttl` must be a duration",
            "unknown field `extra`",
        ] {
            assert!(all.contains(expected), "{expected} not in:\n{all}");
        }
    }

    #[test]
    fn ingress_reads_and_its_host_must_name_every_app_of_every_preview() {
        let listener = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/previews/50dc6c495c0c9188/f2f7dc8efc522ab2";
        let (previews, problems) = read_text(&format!(
            "from: staging\ncluster: previews\ningress:\n  listenerArn: {listener}\n  host: \"${{app}}-${{preview}}.preview.example.com\"\n"
        ));
        assert!(problems.is_empty(), "{problems:?}");
        let ingress = previews.unwrap().ingress.unwrap();
        assert_eq!(
            ingress.host_for("api", "pr-7", "staging"),
            "api-pr-7.preview.example.com"
        );
        for (host, expected) in [
            (
                "${app}.example.com",
                "must use both `${app}` and `${preview}`",
            ),
            ("${app}-${pr}.example.com", "uses `${pr}`"),
            ("${preview}${app}.example.com", "side by side"),
            ("${app}_${preview}.example.com", "has `_`"),
            ("${app}-${preview", "unclosed"),
        ] {
            let (_, problems) = read_text(&format!(
                "from: staging\ncluster: previews\ningress: {{ listenerArn: {listener}, host: \"{host}\" }}\n"
            ));
            let all = problems.join("\n");
            assert!(all.contains(expected), "{host}: {expected} not in:\n{all}");
        }
        let (_, problems) = read_text(
            "from: staging\ncluster: previews\ningress: { listenerArn: arn:aws:elasticloadbalancing:us-east-1:1:loadbalancer/app/x/y, port: 80 }\n",
        );
        let all = problems.join("\n");
        for expected in [
            "not the ARN of an Application Load Balancer listener",
            "unknown field `port`",
            "`host`",
        ] {
            assert!(all.contains(expected), "{expected} not in:\n{all}");
        }
    }

    #[test]
    fn durations_read_in_every_unit() {
        assert_eq!(parse_duration("3d"), Some(Duration::from_secs(259_200)));
        assert_eq!(parse_duration("45s"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("12w"), None);
    }
}
