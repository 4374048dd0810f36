//! The server config file shared by `serve` and `worker`.
//!
//! Parsing does no IO beyond reading the file; secrets are only named here (`env:` / `file:`)
//! and read by [`SecretRef::load`] in the process that needs them, so a worker never holds a
//! webhook secret.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// `owner` says whose secret: "secret of repo `platform`", "api.tokenHashes".
    #[error("{owner}: {message}")]
    Secret { owner: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub mirror_dir: PathBuf,
    pub queue_url: String,
    /// Largest webhook body accepted, in bytes.
    pub max_body_bytes: usize,
    pub repos: Vec<RepoConfig>,
    pub worker: WorkerConfig,
    pub webhooks: WebhookConfig,
    /// How often `serve` resolves every environment and enqueues apps that drifted from Git;
    /// `None` disables it.
    pub reconcile_interval: Option<Duration>,
    /// Where the API's token digests are (`api.tokenHashes`); no API without them.
    pub api_token_hashes: Option<SecretRef>,
    /// `api.tokens`: named tokens with scopes, by the SHA-256 digest of each.
    pub api_tokens: Vec<ApiToken>,
    /// `api.listen`: the API and `/metrics` on an address of their own, so that only the
    /// webhook routes (and health checks) face the Git hosts. `None`: all on `listen`.
    pub api_listen: Option<SocketAddr>,
    /// `api.publicUrl`: where people reach the API, for the links fleetsync posts (a commit
    /// status's `target_url`).
    pub public_url: Option<String>,
    pub notifications: Vec<Notification>,
}

/// An API token, known by its digest: its name is the actor in logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub name: String,
    pub sha256: [u8; 32],
    pub scopes: Vec<Scope>,
}

/// What a token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every GET of the API.
    Read,
    /// Syncs of one environment (`sync:<environment>`), or of any (`sync:*`: `None`).
    Sync(Option<String>),
    /// Rollbacks of one environment.
    Rollback(String),
    /// Everything.
    Admin,
}

impl Scope {
    pub fn parse(text: &str) -> Option<Scope> {
        let simple = |name: &str| {
            crate::resolve::manifest::is_simple_name(name, 63).then(|| name.to_owned())
        };
        match text.split_once(':') {
            None if text == "read" => Some(Scope::Read),
            None if text == "admin" => Some(Scope::Admin),
            Some(("sync", "*")) => Some(Scope::Sync(None)),
            Some(("sync", env)) => simple(env).map(|e| Scope::Sync(Some(e))),
            Some(("rollback", env)) => simple(env).map(Scope::Rollback),
            _ => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Read => f.write_str("read"),
            Scope::Sync(None) => f.write_str("sync:*"),
            Scope::Sync(Some(env)) => write!(f, "sync:{env}"),
            Scope::Rollback(env) => write!(f, "rollback:{env}"),
            Scope::Admin => f.write_str("admin"),
        }
    }
}

/// How the receiver protects itself. Every limit answers with its own status code, never with
/// unbounded memory or a crash.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// More request headers than this: 431.
    pub max_headers: usize,
    /// Deliveries being handled at once; more: 503.
    pub max_in_flight: usize,
    /// Sustained deliveries per second per source IP, and the burst above it; more: 429.
    pub rate_per_second: f64,
    pub rate_burst: f64,
    /// Take the client address from the last X-Forwarded-For hop (behind a load balancer).
    pub trust_forwarded_for: bool,
    /// Delivery ids remembered to answer replays with "duplicate", and for how long.
    pub replay_window: Duration,
    pub replay_capacity: usize,
    /// Oldest Standard Webhooks timestamp (GitLab's `webhook-signature`) accepted.
    pub timestamp_tolerance: Duration,
    /// Header carrying the generic provider's HMAC-SHA256 of the body.
    pub generic_signature_header: String,
    /// How long a client may take to send its request headers, and then its body: a stalled
    /// client is cut off, never left holding what real deliveries need.
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// Bytes of bodies not yet verified held at once, over all clients; past it: 503.
    pub unverified_body_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct RepoConfig {
    pub name: String,
    /// The URL as configured, for messages.
    pub url: String,
    /// `host/owner/name`, what webhook payloads are matched against.
    pub identity: String,
    pub fetch_url: String,
    pub root: String,
    /// The branch whose root binds environments to branches and clusters.
    pub default_branch: String,
    pub secret: SecretRef,
    /// `gitHost`: where commit statuses are posted; `None`: nothing is posted.
    pub git_host: Option<GitHost>,
}

/// A Git host's API, and the token fleetsync posts commit statuses with.
#[derive(Debug, Clone)]
pub struct GitHost {
    /// The API's base URL: `https://api.github.com`, `https://gitlab.example.com/api/v4`, …
    pub api: String,
    pub provider: HostKind,
    pub token: SecretRef,
    /// `owner/name` on the host (GitLab: the project's full path), from the repo's `url`.
    pub project: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostKind {
    Github,
    Gitlab,
    Gitea,
    Bitbucket,
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Jobs one worker runs at once.
    pub concurrency: usize,
    /// How long a received job stays invisible to other workers; extended while it runs.
    pub visibility_timeout: Duration,
    /// How often a rollout is polled.
    pub rollout_poll_interval: Duration,
    /// ECS calls per second this worker makes at most, all jobs together.
    pub ecs_calls_per_second: f64,
    /// RegisterTaskDefinition calls per second, within the above: ECS's tightest quota.
    pub ecs_registers_per_second: f64,
    /// `worker.metricsListen`: where the worker serves `/metrics`; `None`: nowhere.
    pub metrics_listen: Option<SocketAddr>,
    /// `worker.remindFailuresAfter`: a failure that persists is told again after this, then
    /// after twice as long each time (up to a day); zero: told once.
    pub remind_failures_after: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    listen: Option<SocketAddr>,
    mirror_dir: PathBuf,
    queue_url: String,
    max_body_bytes: Option<usize>,
    repos: Vec<RawRepo>,
    #[serde(default)]
    worker: RawWorker,
    #[serde(default)]
    webhooks: RawWebhooks,
    #[serde(default, with = "humantime_serde_opt")]
    reconcile_interval: Option<Duration>,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    notifications: Vec<RawNotification>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawNotification {
    slack: Option<RawSlack>,
    webhook: Option<RawWebhookSink>,
    sns: Option<RawSns>,
    on: Vec<Event>,
    #[serde(default)]
    environments: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSlack {
    #[serde(deserialize_with = "secret_text")]
    webhook_url: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhookSink {
    url: String,
    #[serde(deserialize_with = "secret_text")]
    secret: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSns {
    topic_arn: String,
}

/// `notifications[]`: where messages about deploys go, for which events and environments.
#[derive(Debug, Clone)]
pub struct Notification {
    pub sink: Sink,
    /// Empty: every event.
    pub on: Vec<Event>,
    /// Empty: every environment.
    pub environments: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum Sink {
    /// A Slack incoming webhook, whose URL is the secret.
    Slack {
        webhook_url: SecretRef,
    },
    /// A JSON POST signed `X-Fleetsync-Signature: sha256=<hex HMAC of the body>`.
    Webhook {
        url: String,
        secret: SecretRef,
    },
    Sns {
        topic_arn: String,
    },
}

/// What a notification is about: a transition of (environment, app, commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Event {
    Deployed,
    Failed,
    RolledBack,
    /// Preflight, policy or a config that does not resolve stopped it before ECS.
    Refused,
    Superseded,
    /// Every app of a pull request's preview runs its head (told by the PR comment's worker,
    /// so for repos with a `gitHost`).
    PreviewReady,
    Any,
}

impl Notification {
    pub fn wants(&self, event: Event, environment: &str) -> bool {
        (self.on.contains(&Event::Any) || self.on.contains(&event))
            && (self.environments.is_empty() || self.environments.iter().any(|e| e == environment))
    }
}

fn notifications(raw: Vec<RawNotification>) -> std::result::Result<Vec<Notification>, String> {
    raw.into_iter()
        .enumerate()
        .map(|(i, n)| {
            let secret = |text: &str, field: &str| {
                SecretRef::parse(text).map_err(|m| format!("notifications[{i}].{field}: {m}"))
            };
            let sink = match (n.slack, n.webhook, n.sns) {
                (Some(slack), None, None) => Sink::Slack {
                    webhook_url: secret(&slack.webhook_url, "slack.webhookUrl")?,
                },
                (None, Some(hook), None) => Sink::Webhook {
                    url: hook.url,
                    secret: secret(&hook.secret, "webhook.secret")?,
                },
                (None, None, Some(sns)) if sns.topic_arn.starts_with("arn:") => Sink::Sns {
                    topic_arn: sns.topic_arn,
                },
                (None, None, Some(sns)) => {
                    return Err(format!(
                        "notifications[{i}].sns.topicArn: `{}` is not an ARN",
                        sns.topic_arn
                    ));
                }
                _ => {
                    return Err(format!(
                        "notifications[{i}]: give exactly one of `slack`, `webhook` or `sns`"
                    ));
                }
            };
            if n.on.is_empty() {
                return Err(format!(
                    "notifications[{i}].on: name the events (deployed, failed, rolledBack, refused, superseded, or any)"
                ));
            }
            Ok(Notification {
                sink,
                on: n.on,
                environments: n.environments,
            })
        })
        .collect()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawApi {
    token_hashes: Option<String>,
    #[serde(default)]
    tokens: Vec<RawToken>,
    listen: Option<SocketAddr>,
    public_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    sha256: String,
    scopes: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawWebhooks {
    max_headers: Option<usize>,
    max_in_flight: Option<usize>,
    rate_per_second: Option<f64>,
    rate_burst: Option<f64>,
    #[serde(default)]
    trust_forwarded_for: bool,
    #[serde(default, with = "humantime_serde_opt")]
    header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    body_timeout: Option<Duration>,
    unverified_body_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    replay_window: Option<Duration>,
    replay_capacity: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    timestamp_tolerance: Option<Duration>,
    generic_signature_header: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRepo {
    name: String,
    url: String,
    fetch_url: Option<String>,
    root: Option<String>,
    default_branch: Option<String>,
    #[serde(deserialize_with = "secret_text")]
    secret: String,
    git_host: Option<RawGitHost>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGitHost {
    api: String,
    provider: Option<HostKind>,
    #[serde(deserialize_with = "secret_text")]
    token: String,
}

/// The `secret` field as text. A value of another type is refused without quoting it: it may
/// be the secret itself, pasted inline.
fn secret_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_yaml::Value::deserialize(d)? {
        serde_yaml::Value::String(text) => Ok(text),
        _ => Err(serde::de::Error::custom(
            "`secret` must be `env:VARIABLE` or `file:PATH`",
        )),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawWorker {
    concurrency: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    visibility_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    rollout_poll_interval: Option<Duration>,
    ecs_calls_per_second: Option<f64>,
    ecs_registers_per_second: Option<f64>,
    account_budget: Option<RawAccountBudget>,
    max_workers: Option<u32>,
    metrics_listen: Option<SocketAddr>,
    #[serde(default, with = "humantime_serde_opt")]
    remind_failures_after: Option<Duration>,
}

/// ECS throttles per account and Region, not per process: the rate all workers share.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAccountBudget {
    calls_per_second: f64,
    registers_per_second: f64,
}

/// `10s`-style durations in the config file.
mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        humantime::parse_duration(&text).map(Some).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration like `30s` or `5m`: {e}"
            ))
        })
    }
}

impl Config {
    /// Reads the config from a file, or from an environment variable with `env:NAME` (how a
    /// task definition passes it to a container that has no config file).
    pub fn load(source: &str) -> Result<Self> {
        if let Some(name) = source.strip_prefix("env:") {
            let label = PathBuf::from(format!("${name}"));
            let text = std::env::var(name).map_err(|_| Error::Invalid {
                path: label.clone(),
                message: format!("environment variable {name} is not set"),
            })?;
            return Self::parse(&label, &text);
        }
        let path = Path::new(source);
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            Error::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.to_string(),
            }
        })?;
        let invalid = |message: String| Error::Invalid {
            path: path.to_owned(),
            message,
        };
        if raw.repos.is_empty() {
            return Err(invalid(
                "`repos` is empty: list at least one config repo to watch".into(),
            ));
        }
        let mut repos: Vec<RepoConfig> = Vec::with_capacity(raw.repos.len());
        for r in raw.repos {
            if !crate::resolve::manifest::is_simple_name(&r.name, 100) {
                return Err(invalid(format!(
                    "repo name `{}` must be letters, digits, `-` or `_`",
                    r.name
                )));
            }
            let identity = repo_identity(&r.url)
                .ok_or_else(|| invalid(format!("repo `{}`: `{}` is not a git URL (https://host/owner/name or git@host:owner/name)", r.name, r.url)))?;
            if let Some(other) = repos
                .iter()
                .find(|o| o.name == r.name || o.identity == identity)
            {
                return Err(invalid(format!(
                    "repos `{}` and `{}` have the same name or URL",
                    other.name, r.name
                )));
            }
            let secret = SecretRef::parse(&r.secret).map_err(|message| Error::Secret {
                owner: format!("secret of repo `{}`", r.name),
                message,
            })?;
            let git_host = r
                .git_host
                .map(|host| git_host((&r.name, &identity), host, invalid))
                .transpose()?;
            repos.push(RepoConfig {
                git_host,
                fetch_url: r.fetch_url.unwrap_or_else(|| r.url.clone()),
                root: r
                    .root
                    .unwrap_or_else(|| crate::resolve::DEFAULT_ROOT.to_owned()),
                default_branch: r.default_branch.unwrap_or_else(|| "main".to_owned()),
                name: r.name,
                url: r.url,
                identity,
                secret,
            });
        }
        if raw
            .webhooks
            .rate_per_second
            .is_some_and(|r| r.is_nan() || r <= 0.0)
        {
            return Err(invalid("`webhooks.ratePerSecond` must be above 0".into()));
        }
        let rate = |value: Option<f64>, default: f64, field: &str| match value {
            None => Ok(default),
            Some(r) if r.is_finite() && r >= 0.01 => Ok(r),
            Some(_) => Err(invalid(format!(
                "`worker.{field}` must be at least 0.01 (calls per second)"
            ))),
        };
        // A worker's share of the account's budget: every worker may be running at once.
        let (calls, registers) = match (&raw.worker.account_budget, raw.worker.max_workers) {
            (None, None) => (
                rate(raw.worker.ecs_calls_per_second, 20.0, "ecsCallsPerSecond")?,
                rate(
                    raw.worker.ecs_registers_per_second,
                    1.0,
                    "ecsRegistersPerSecond",
                )?,
            ),
            (Some(budget), Some(workers @ 1..))
                if raw.worker.ecs_calls_per_second.is_none()
                    && raw.worker.ecs_registers_per_second.is_none() =>
            {
                let share = |r: f64, field: &str| {
                    rate(Some(r / f64::from(workers)), 0.0, field)
                        .map_err(|_| invalid(format!("`worker.accountBudget.{field}` divided by `worker.maxWorkers` ({workers}) must be at least 0.01 calls per second")))
                };
                (
                    share(budget.calls_per_second, "callsPerSecond")?,
                    share(budget.registers_per_second, "registersPerSecond")?,
                )
            }
            _ => {
                return Err(invalid(
                    "`worker.accountBudget` needs `worker.maxWorkers` (at least 1), the most workers the deployment runs, and replaces `ecsCallsPerSecond` and `ecsRegistersPerSecond`".into(),
                ));
            }
        };
        let worker = WorkerConfig {
            ecs_calls_per_second: calls,
            ecs_registers_per_second: registers,
            concurrency: raw.worker.concurrency.unwrap_or(4).max(1),
            visibility_timeout: raw
                .worker
                .visibility_timeout
                .unwrap_or(Duration::from_secs(60))
                .max(Duration::from_secs(2)),
            rollout_poll_interval: raw
                .worker
                .rollout_poll_interval
                .unwrap_or(Duration::from_secs(5)),
            metrics_listen: raw.worker.metrics_listen,
            remind_failures_after: raw
                .worker
                .remind_failures_after
                .unwrap_or(Duration::from_secs(3600)),
        };
        Ok(Config {
            listen: raw
                .listen
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080))),
            mirror_dir: raw.mirror_dir,
            queue_url: raw.queue_url,
            // GitHub's cap for push events: it never redelivers a delivery refused as too large.
            max_body_bytes: raw.max_body_bytes.unwrap_or(25 << 20),
            repos,
            worker,
            api_token_hashes: raw
                .api
                .token_hashes
                .map(|text| {
                    SecretRef::parse(&text).map_err(|message| Error::Secret {
                        owner: "api.tokenHashes".into(),
                        message,
                    })
                })
                .transpose()?,
            api_tokens: api_tokens(&raw.api.tokens).map_err(invalid)?,
            api_listen: raw.api.listen,
            notifications: notifications(raw.notifications).map_err(invalid)?,
            public_url: raw
                .api
                .public_url
                .map(|url| url.trim_end_matches('/').to_owned()),
            reconcile_interval: match raw.reconcile_interval {
                None => Some(Duration::from_secs(180)),
                Some(d) if d.is_zero() => None,
                Some(d) => Some(d),
            },
            webhooks: WebhookConfig {
                max_headers: raw.webhooks.max_headers.unwrap_or(64),
                max_in_flight: raw.webhooks.max_in_flight.unwrap_or(256).max(1),
                rate_per_second: raw.webhooks.rate_per_second.unwrap_or(50.0),
                rate_burst: raw.webhooks.rate_burst.unwrap_or(100.0),
                trust_forwarded_for: raw.webhooks.trust_forwarded_for,
                header_timeout: raw
                    .webhooks
                    .header_timeout
                    .unwrap_or(Duration::from_secs(10)),
                body_timeout: raw.webhooks.body_timeout.unwrap_or(Duration::from_secs(10)),
                unverified_body_bytes: raw.webhooks.unverified_body_bytes.unwrap_or(64 << 20),
                replay_window: raw
                    .webhooks
                    .replay_window
                    .unwrap_or(Duration::from_secs(600)),
                replay_capacity: raw.webhooks.replay_capacity.unwrap_or(10_000),
                timestamp_tolerance: raw
                    .webhooks
                    .timestamp_tolerance
                    .unwrap_or(Duration::from_secs(300)),
                generic_signature_header: raw
                    .webhooks
                    .generic_signature_header
                    .unwrap_or_else(|| "X-Fleetsync-Signature".to_owned())
                    .to_ascii_lowercase(),
            },
        })
    }
}

/// `repos[].gitHost`: the provider named, or known from the repo's host.
fn git_host(
    (repo, identity): (&str, &str),
    raw: RawGitHost,
    invalid: impl Fn(String) -> Error,
) -> Result<GitHost> {
    let (host, project) = identity.split_once('/').unwrap_or((identity, ""));
    let provider = match (raw.provider, host) {
        (Some(kind), _) => kind,
        (None, "github.com") => HostKind::Github,
        (None, "gitlab.com") => HostKind::Gitlab,
        (None, "bitbucket.org") => HostKind::Bitbucket,
        (None, "codeberg.org") => HostKind::Gitea,
        (None, other) => {
            return Err(invalid(format!(
                "repo `{repo}`: cannot tell which Git host {other} is; set `gitHost.provider` (github, gitlab, gitea or bitbucket)"
            )));
        }
    };
    let api = raw.api.trim_end_matches('/').to_owned();
    if !(api.starts_with("https://") || api.starts_with("http://")) {
        return Err(invalid(format!(
            "repo `{repo}`: `gitHost.api` must be an http(s) URL, not `{api}`"
        )));
    }
    let token = SecretRef::parse(&raw.token).map_err(|message| Error::Secret {
        owner: format!("gitHost token of repo `{repo}`"),
        message,
    })?;
    Ok(GitHost {
        api,
        provider,
        token,
        project: project.to_owned(),
    })
}

/// Where a secret is kept. Inline secrets are refused: config files end up in Git and tickets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl SecretRef {
    fn parse(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            Some(("env", name)) if !name.is_empty() => Ok(SecretRef::Env(name.to_owned())),
            Some(("file", path)) if !path.is_empty() => Ok(SecretRef::File(path.into())),
            // Deliberately not echoing `text`: it may be the secret itself, pasted inline.
            _ => Err(
                "`secret` must be `env:VARIABLE` or `file:PATH`; inline secrets are not accepted"
                    .into(),
            ),
        }
    }

    /// Reads the secret. Empty secrets are an error: accepting unsigned webhooks is never a
    /// fallback.
    /// `owner` names the secret in errors, e.g. "secret of repo `platform`".
    pub fn load(&self, owner: &str) -> Result<Secret> {
        let err = |message: String| Error::Secret {
            owner: owner.to_owned(),
            message,
        };
        let value = match self {
            SecretRef::Env(name) => std::env::var(name)
                .map_err(|_| err(format!("environment variable {name} is not set")))?,
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        };
        if value.is_empty() {
            return Err(err(format!("{} is empty", self.describe())));
        }
        Ok(Secret(value.into_bytes()))
    }

    fn describe(&self) -> String {
        match self {
            SecretRef::Env(name) => format!("environment variable {name}"),
            SecretRef::File(path) => format!("file {}", path.display()),
        }
    }
}

/// Secret bytes that never print.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `host/owner/name` of a clone, HTML or SSH URL: lower-cased, without scheme, user, port or
/// `.git`, so the three URLs a Git host puts in a payload all match one configured repo.
pub fn repo_identity(url: &str) -> Option<String> {
    let url = url.trim().trim_end_matches('/');
    let (host, path) = if let Some((_, rest)) = url.split_once("://") {
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        rest.split_once('/')?
    } else {
        // scp-like syntax: git@host:owner/name.git
        let (userhost, path) = url.split_once(':')?;
        (userhost.rsplit_once('@').map_or(userhost, |(_, h)| h), path)
    };
    let host = host.split(':').next()?.to_ascii_lowercase();
    let path = path
        .trim_matches('/')
        .trim_end_matches(".git")
        .to_ascii_lowercase();
    if host.is_empty() || path.is_empty() {
        return None;
    }
    Some(format!("{host}/{path}"))
}

/// `api.tokens`, checked: each names itself, holds a digest (never a token), and scopes fleetsync
/// knows. A message never repeats a digest field's text: it may be a token pasted by mistake.
fn api_tokens(raw: &[RawToken]) -> std::result::Result<Vec<ApiToken>, String> {
    let mut tokens: Vec<ApiToken> = Vec::with_capacity(raw.len());
    for (i, t) in raw.iter().enumerate() {
        let at = format!("`api.tokens[{i}]`");
        if !crate::resolve::manifest::is_simple_name(&t.name, 63) {
            return Err(format!(
                "{at}: `name` must be 1-63 letters, digits, `-` or `_`: it names the actor in logs"
            ));
        }
        if tokens.iter().any(|o| o.name == t.name) {
            return Err(format!("{at}: another token is named `{}`", t.name));
        }
        let mut sha256 = [0u8; 32];
        if t.sha256.len() != 64
            || t.sha256.bytes().any(|b| b.is_ascii_uppercase())
            || hex::decode_to_slice(&t.sha256, &mut sha256).is_err()
        {
            return Err(format!(
                "{at} (`{}`): `sha256` is not a SHA-256 digest in lowercase hex; store `printf %s \"$TOKEN\" | sha256sum`, never the token",
                t.name
            ));
        }
        if t.scopes.is_empty() {
            return Err(format!(
                "{at} (`{}`): `scopes` is empty; the token could do nothing",
                t.name
            ));
        }
        let scopes = t
            .scopes
            .iter()
            .map(|s| {
                Scope::parse(s).ok_or_else(|| {
                    format!(
                        "{at} (`{}`): unknown scope `{s}`; use read, sync:<environment>, sync:*, rollback:<environment> or admin",
                        t.name
                    )
                })
            })
            .collect::<std::result::Result<_, _>>()?;
        tokens.push(ApiToken {
            name: t.name.clone(),
            sha256,
            scopes,
        });
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_budget_is_shared_by_the_most_workers_that_run() {
        let with = |worker: &str| {
            Config::parse(Path::new("c.yaml"), &format!("{MINIMAL}worker:\n{worker}"))
        };
        let config = with(
            "  accountBudget: { callsPerSecond: 40, registersPerSecond: 2 }\n  maxWorkers: 8\n",
        )
        .unwrap();
        assert_eq!(
            (
                config.worker.ecs_calls_per_second,
                config.worker.ecs_registers_per_second
            ),
            (5.0, 0.25)
        );
        let err = with("  accountBudget: { callsPerSecond: 40, registersPerSecond: 2 }\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs `worker.maxWorkers`"), "{err}");
    }

    #[test]
    fn a_git_host_is_known_by_its_url_or_named_and_its_token_is_never_inline() {
        let with = |url: &str, host: &str| {
            let text = format!(
                "mirrorDir: /m\nqueueUrl: q\nrepos:\n  - name: platform\n    url: {url}\n    secret: env:S\n    gitHost: {host}\n"
            );
            Config::parse(Path::new("c.yaml"), &text)
        };
        let github = with(
            "https://github.com/Acme/platform-config.git",
            "{ api: https://api.github.com/, token: env:T }",
        )
        .unwrap();
        let host = github.repos[0].git_host.as_ref().unwrap();
        assert_eq!(
            (host.provider, host.api.as_str(), host.project.as_str()),
            (
                HostKind::Github,
                "https://api.github.com",
                "acme/platform-config"
            )
        );
        let unknown = with(
            "https://git.acme.internal/team/config",
            "{ api: https://git.acme.internal/api/v1, token: env:T }",
        )
        .unwrap_err()
        .to_string();
        assert!(unknown.contains("set `gitHost.provider`"), "{unknown}");
        let gitea = with(
            "https://git.acme.internal/team/config",
            "{ api: https://git.acme.internal/api/v1, provider: gitea, token: env:T }",
        )
        .unwrap();
        assert_eq!(
            gitea.repos[0].git_host.as_ref().unwrap().provider,
            HostKind::Gitea
        );
        let inline = with(
            "https://github.com/acme/config",
            "{ api: https://api.github.com, token: ghp_pasted }",
        )
        .unwrap_err()
        .to_string();
        assert!(
            !inline.contains("ghp_pasted") && inline.contains("gitHost token"),
            "{inline}"
        );
    }

    #[test]
    fn api_tokens_are_named_digests_with_known_scopes() {
        let with = |tokens: &str| {
            Config::parse(
                Path::new("c.yaml"),
                &format!("{MINIMAL}api:\n  tokens:\n{tokens}"),
            )
        };
        let digest = "a".repeat(64);
        let config = with(&format!(
            "    - {{ name: ci-staging, sha256: {digest}, scopes: [read, \"sync:staging\", \"sync:*\", \"rollback:production\", admin] }}\n"
        ))
        .unwrap();
        let token = &config.api_tokens[0];
        assert_eq!(token.name, "ci-staging");
        assert_eq!(
            token.scopes,
            [
                Scope::Read,
                Scope::Sync(Some("staging".into())),
                Scope::Sync(None),
                Scope::Rollback("production".into()),
                Scope::Admin
            ]
        );
        for (tokens, expected) in [
            (
                format!("    - {{ name: ci, sha256: {digest}, scopes: [write] }}\n"),
                "unknown scope `write`",
            ),
            (
                "    - { name: ci, sha256: hunter2, scopes: [read] }\n".to_owned(),
                "`sha256` is not a SHA-256 digest",
            ),
            (
                format!("    - {{ name: ci, sha256: {digest}, scopes: [] }}\n"),
                "`scopes` is empty",
            ),
            (
                format!(
                    "    - {{ name: ci, sha256: {digest}, scopes: [read] }}\n    - {{ name: ci, sha256: {digest}, scopes: [read] }}\n"
                ),
                "another token is named `ci`",
            ),
        ] {
            let err = with(&tokens).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
            assert!(
                !err.contains("hunter2"),
                "a pasted token is never repeated: {err}"
            );
        }
    }

    #[test]
    fn clone_html_and_ssh_urls_share_an_identity() {
        for url in [
            "https://github.com/Acme/platform-config",
            "https://github.com/acme/platform-config.git",
            "git@github.com:acme/platform-config.git",
            "ssh://git@github.com:22/acme/platform-config.git",
            "git://github.com/acme/platform-config.git",
            "https://token@github.com/acme/platform-config/",
        ] {
            assert_eq!(
                repo_identity(url).as_deref(),
                Some("github.com/acme/platform-config"),
                "{url}"
            );
        }
        assert_eq!(repo_identity("not a url"), None);
    }

    const MINIMAL: &str = "mirrorDir: /tmp/m\nqueueUrl: http://q\nrepos:\n  - name: platform\n    url: https://github.com/acme/platform-config\n    secret: env:X\n";

    #[test]
    fn defaults_fill_in_and_unknown_keys_are_located() {
        let config = Config::parse(Path::new("c.yaml"), MINIMAL).unwrap();
        assert_eq!(
            config.repos[0].fetch_url,
            "https://github.com/acme/platform-config"
        );
        assert_eq!(config.repos[0].root, "fleetsync.yaml");
        assert_eq!(config.max_body_bytes, 25 << 20);
        let err = Config::parse(Path::new("c.yaml"), &format!("{MINIMAL}lisen: x\n")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("c.yaml:7:1: unknown field `lisen`"),
            "{err}"
        );
    }

    #[test]
    fn inline_secrets_are_refused_without_echoing_them() {
        let text = MINIMAL.replace("env:X", "hunter2");
        let err = Config::parse(Path::new("c.yaml"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("inline secrets are not accepted"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let text = MINIMAL.replace("env:X", "1234567890");
        let err = Config::parse(Path::new("c.yaml"), &text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`secret` must be") && !err.contains("1234567890"),
            "{err}"
        );
    }

    #[test]
    fn empty_or_missing_secrets_fail_to_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "\n").unwrap();
        let err = SecretRef::File(path.clone())
            .load("platform")
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("is empty"), "{err}");
        std::fs::write(&path, "s3cret\n").unwrap();
        let secret = SecretRef::File(path).load("platform").unwrap();
        assert_eq!(secret.expose(), b"s3cret");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        let err = SecretRef::Env("FLEETSYNC_TEST_UNSET_VAR".into())
            .load("platform")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("FLEETSYNC_TEST_UNSET_VAR is not set")
        );
    }
}
