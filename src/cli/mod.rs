//! Subcommands. `validate` exits 0 when the repo is valid, 1 on problems, 2 on errors; `plan`
//! exits 0 without changes, 2 with changes, 1 on problems or errors. The operator's verbs over
//! a receiver's API (`status`, `sync`, `history`, `rollback`) are in `remote.rs`.

mod remote;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use clap::{Parser, Subcommand};
use tracing::{info, warn};

use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::ecs::Ecs;
use crate::preflight::Preflight;
use crate::repo::{Local, LocalSources};
use crate::resolve::{self, DEFAULT_ROOT, Problem};
use crate::sync::{Worker, plan};
use crate::{shutdown, webhook};

#[derive(Parser)]
#[command(
    name = "fleetsync",
    version,
    about = "GitOps for AWS ECS: App of Apps in Git, one branch per environment"
)]
pub struct Cli {
    /// `json`: one JSON object per line, with the job's fields (app, commit, trigger, actor,
    /// reason) and an `event` naming each state change of a job, for log queries.
    #[arg(
        long,
        global = true,
        env = "FLEETSYNC_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Receive Git webhooks and enqueue sync jobs.
    Serve {
        /// A config file, or `env:NAME` to read it from an environment variable.
        #[arg(long)]
        config: String,
    },
    /// Consume sync jobs and apply them to ECS.
    Worker {
        /// A config file, or `env:NAME` to read it from an environment variable.
        #[arg(long)]
        config: String,
        /// How long running jobs may finish after SIGTERM before they are handed back.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        grace: Duration,
    },
    /// Check every environment of a config repo; prints `path:line:column: message` per problem.
    Validate {
        /// A git repository, bare or not; environments are read from their branches.
        #[arg(long)]
        repo: PathBuf,
        /// Only this environment.
        #[arg(long)]
        env: Option<String>,
        /// Path of the root app in the repo.
        #[arg(long, default_value = DEFAULT_ROOT)]
        root: String,
        /// The branch whose root binds environments and sets the top policy, as on the server.
        #[arg(long, default_value = "main")]
        default_branch: String,
        /// Another repository that apps name in `source:`, as NAME=PATH to a local clone;
        /// repeat it for each.
        #[arg(long = "source", value_name = "NAME=PATH", value_parser = parse_source)]
        sources: Vec<(String, PathBuf)>,
    },
    /// Print the desired state of one environment as JSON.
    Render {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long, required_unless_present = "preview")]
        env: Option<String>,
        /// Render pull request N's preview at `--ref` (its head): what `previews:` on the
        /// default branch would deploy for it.
        #[arg(long, value_name = "N", requires = "git_ref", conflicts_with = "env")]
        preview: Option<u64>,
        /// Commit, branch or tag to render instead of the environment's branch head.
        #[arg(long = "ref")]
        git_ref: Option<String>,
        #[arg(long, default_value = DEFAULT_ROOT)]
        root: String,
        #[arg(long, default_value = "main")]
        default_branch: String,
        /// Another repository that apps name in `source:`, as NAME=PATH to a local clone;
        /// repeat it for each.
        #[arg(long = "source", value_name = "NAME=PATH", value_parser = parse_source)]
        sources: Vec<(String, PathBuf)>,
    },
    /// Show what syncing one environment would change in ECS, and what would stop it (preflight).
    /// Exits 0 without changes, 2 with changes, 1 on problems or errors: usable in CI.
    Plan {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long, required_unless_present = "preview")]
        env: Option<String>,
        /// Plan pull request N's preview at `--ref` (its head).
        #[arg(long, value_name = "N", requires = "git_ref", conflicts_with = "env")]
        preview: Option<u64>,
        /// Commit, branch or tag to plan instead of the environment's branch head (e.g. a
        /// pull request's head).
        #[arg(long = "ref")]
        git_ref: Option<String>,
        #[arg(long, default_value = DEFAULT_ROOT)]
        root: String,
        #[arg(long, default_value = "main")]
        default_branch: String,
        /// Another repository that apps name in `source:`, as NAME=PATH to a local clone;
        /// repeat it for each.
        #[arg(long = "source", value_name = "NAME=PATH", value_parser = parse_source)]
        sources: Vec<(String, PathBuf)>,
    },
    /// Show environments, an environment's apps, or one app, as a running receiver sees them.
    Status {
        #[command(flatten)]
        server: Server,
        #[arg(long)]
        env: Option<String>,
        #[arg(long, requires = "env")]
        app: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: remote::Output,
    },
    /// Sync an environment (or some of its apps) at its branch head now.
    Sync {
        #[command(flatten)]
        server: Server,
        #[arg(long)]
        env: String,
        /// Only this app; repeat it for each.
        #[arg(long = "app")]
        apps: Vec<String>,
        /// Recorded on what the sync deploys.
        #[arg(long)]
        reason: Option<String>,
        /// Start a new deployment even of a spec that is live.
        #[arg(long)]
        force: bool,
        /// Follow the rollout: exit 0 once Healthy, 1 when Degraded or not done in time.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// An app's deployments, newest first (`*` marks the one running).
    History {
        #[command(flatten)]
        server: Server,
        #[arg(long)]
        env: String,
        #[arg(long)]
        app: String,
        #[arg(long, default_value_t = 10)]
        limit: usize,
        #[arg(short, long, value_enum, default_value = "table")]
        output: remote::Output,
    },
    /// Put an app back on an earlier revision that completed its rollout; Git's commit stays
    /// out until Git moves on.
    Rollback {
        #[command(flatten)]
        server: Server,
        #[arg(long)]
        env: String,
        #[arg(long)]
        app: String,
        /// The revision to return to (see `history`); the newest earlier one that completed
        /// by default.
        #[arg(long)]
        to: Option<i32>,
        /// Why: recorded on the service and the revision.
        #[arg(long)]
        reason: String,
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print the SHA-256 digest of the token read from stdin, for `api.tokens[].sha256`.
    Hash,
}

/// Where the API is, and with which config repo; the token comes from FLEETSYNC_TOKEN only.
#[derive(clap::Args)]
struct Server {
    #[arg(long, env = "FLEETSYNC_SERVER")]
    server: String,
    /// The watched repo; may be left out while only one declares the environment.
    #[arg(long)]
    repo: Option<String>,
}

impl Server {
    fn remote(&self) -> anyhow::Result<remote::Remote> {
        remote::Remote::new(&self.server, std::env::var("FLEETSYNC_TOKEN").ok())
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => serve(&config).await,
        Command::Worker { config, grace } => worker(&config, grace).await,
        Command::Validate {
            repo,
            env,
            root,
            default_branch,
            sources,
        } => validate(
            &repo,
            env.as_deref(),
            &Trusted::new(&root, &default_branch, sources),
        ),
        Command::Render {
            repo,
            env,
            preview,
            git_ref,
            root,
            default_branch,
            sources,
        } => render(
            &repo,
            &Target::of(env, preview),
            git_ref.as_deref(),
            &Trusted::new(&root, &default_branch, sources),
        ),
        // Exit code 2 means "changes" here, as in `terraform plan -detailed-exitcode`, so an
        // error must not exit 2 as it does elsewhere.
        Command::Plan {
            repo,
            env,
            preview,
            git_ref,
            root,
            default_branch,
            sources,
        } => Ok(plan(
            &repo,
            &Target::of(env, preview),
            git_ref.as_deref(),
            &Trusted::new(&root, &default_branch, sources),
        )
        .await
        .unwrap_or_else(|e| {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        })),
        Command::Status {
            server,
            env,
            app,
            output,
        } => {
            let target = (server.repo.as_deref(), env.as_deref(), app.as_deref());
            remote::status(&server.remote()?, target, output).await
        }
        Command::Sync {
            server,
            env,
            apps,
            reason,
            force,
            wait,
            timeout,
        } => {
            let args = remote::SyncArgs {
                repo: server.repo.as_deref(),
                env: &env,
                apps: &apps,
                reason: reason.as_deref(),
                force,
                wait: wait.then_some(timeout),
            };
            remote::sync(&server.remote()?, &args).await
        }
        Command::History {
            server,
            env,
            app,
            limit,
            output,
        } => {
            let target = (server.repo.as_deref(), env.as_str(), app.as_str());
            remote::history(&server.remote()?, target, limit, output).await
        }
        Command::Rollback {
            server,
            env,
            app,
            to,
            reason,
            wait,
            timeout,
        } => {
            let args = remote::RollbackArgs {
                repo: server.repo.as_deref(),
                env: &env,
                app: &app,
                to,
                reason: &reason,
                wait: wait.then_some(timeout),
            };
            remote::rollback(&server.remote()?, &args).await
        }
        Command::Token {
            command: TokenCommand::Hash,
        } => {
            println!("{}", remote::token_hash(&mut std::io::stdin().lock())?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// AWS settings from the standard chain (AWS_ENDPOINT_URL included), with adaptive retries so
/// throttling slows fleetsync down instead of failing jobs.
async fn aws_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::adaptive().with_max_attempts(5))
        .load()
        .await
}

async fn serve(path: &str) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let dispatcher = Arc::new(Dispatcher::from_config(&config, &aws_config().await)?);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (`listen` in {})", config.listen, path))?;
    info!(message = "Receiver listening.", address = %listener.local_addr()?, queue = %config.queue_url);
    let shutdown = shutdown::on_signals()?;
    // Learn now which environments read other repos, so the first push does not wait for it.
    let warm = dispatcher.clone();
    tokio::spawn(async move {
        warm.refresh_readers().await;
    });
    if let Some(every) = config.reconcile_interval {
        tokio::spawn(dispatcher.clone().reconcile_every(every, shutdown.clone()));
    }
    let (public, operations) =
        webhook::receiver_routes(dispatcher.clone(), &config).map_err(anyhow::Error::msg)?;
    let timeout = config.webhooks.header_timeout;
    match config.api_listen {
        None => webhook::serve(listener, public.merge(operations), timeout, shutdown).await?,
        Some(address) => {
            let own = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} (`api.listen` in {path})"))?;
            info!(message = "API and metrics listening.", address = %own.local_addr()?);
            let (a, b) = tokio::join!(
                webhook::serve(listener, public, timeout, shutdown.clone()),
                webhook::serve(own, operations, timeout, shutdown),
            );
            a?;
            b?;
        }
    }
    // Pushes whose Git host stopped waiting are still being enqueued: let them finish.
    dispatcher.tasks.close();
    if tokio::time::timeout(Duration::from_secs(30), dispatcher.tasks.wait())
        .await
        .is_err()
    {
        warn!(
            message = "Receiver stopped with pushes still being enqueued; reconcile enqueues what they missed."
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn worker(path: &str, grace: Duration) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let worker = Arc::new(Worker::from_config(&config, &aws_config().await)?);
    info!(message = "Worker started.", queue = %config.queue_url, concurrency = worker.config.concurrency);
    // Up until the last job has drained, so the scrape sees how the worker ended.
    let metrics_done = tokio_util::sync::CancellationToken::new();
    let metrics = match config.worker.metrics_listen {
        None => None,
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| {
                    format!("cannot listen on {address} (`worker.metricsListen` in {path})")
                })?;
            info!(message = "Metrics listening.", address = %listener.local_addr()?);
            let scraped = worker.clone();
            let router = crate::metrics::router(move |registry| scraped.register_metrics(registry));
            let timeout = config.webhooks.header_timeout;
            Some(tokio::spawn(webhook::serve(
                listener,
                router,
                timeout,
                metrics_done.clone(),
            )))
        }
    };
    worker.run(shutdown::on_signals()?, grace).await;
    metrics_done.cancel();
    if let Some(server) = metrics {
        server.await??;
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(repo: &Path, only: Option<&str>, trusted: &Trusted<'_>) -> anyhow::Result<ExitCode> {
    let root_path = trusted.root_path;
    let local = Local::open(repo)?;
    let root = match trusted.read(&local, repo)? {
        Ok(root) => root,
        Err(problems) => return Ok(print_problems(&problems)),
    };
    if root.policy.is_none() {
        eprintln!(
            "warning: {root_path} declares no `policy`, so its apps may name any role, image, secret and cluster"
        );
    }
    let environments: Vec<_> = match only {
        Some(name) => vec![find_environment(&root, name, root_path)?],
        None => root.environments.iter().collect(),
    };
    let mut all = Vec::new();
    for env in environments {
        let Some(commit) = local.branch_head(&env.branch)? else {
            all.push(Problem {
                file: root_path.to_owned(),
                line: env.pos.line,
                column: env.pos.column,
                message: format!(
                    "environment `{}`: branch `{}` does not exist in {}",
                    env.name,
                    env.branch,
                    repo.display()
                ),
            });
            continue;
        };
        let snapshot = local.snapshot(commit)?;
        // What only a preview checks (its hosts, the load balancer's quotas), on the branch
        // previews copy.
        if root.previews.as_ref().is_some_and(|p| p.from == env.name) {
            let preview = resolve::resolve_preview(
                &snapshot,
                &trusted.sources,
                root_path,
                &root,
                1,
                &commit.to_string(),
            );
            if let Err(resolve::Error::Invalid(problems)) = preview {
                let bound = |p: &Problem| p.message.contains("previews.ingress");
                all.extend(problems.into_iter().filter(bound));
            }
        }
        match resolve::resolve_bound(
            &snapshot,
            &trusted.sources,
            root_path,
            &root,
            &env.name,
            &commit.to_string(),
        ) {
            Ok(state) => eprintln!(
                "ok: {} (branch {} at {:.12}): {} apps",
                env.name,
                env.branch,
                state.commit,
                state.apps.len()
            ),
            Err(resolve::Error::Invalid(problems)) => {
                eprintln!(
                    "invalid: {} (branch {} at {:.12}): {} problems",
                    env.name,
                    env.branch,
                    commit.to_string(),
                    problems.len()
                );
                all.extend(problems);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(print_problems(&all))
}

/// An environment, or a pull request's preview.
enum Target {
    Environment(String),
    Preview(u64),
}

impl Target {
    fn of(env: Option<String>, preview: Option<u64>) -> Self {
        match (preview, env) {
            (Some(n), _) => Target::Preview(n),
            (None, env) => Target::Environment(env.unwrap_or_default()),
        }
    }

    /// The environment whose branch and bindings it reads.
    fn environment<'r>(
        &'r self,
        root: &'r resolve::manifest::Root,
        root_path: &str,
    ) -> anyhow::Result<&'r str> {
        match self {
            Target::Environment(env) => Ok(env),
            Target::Preview(_) => root.previews.as_ref().map(|p| p.from.as_str()).with_context(|| {
                format!("the root ({root_path}) on the default branch sets no `previews`; add it there to preview pull requests")
            }),
        }
    }

    fn resolve(
        &self,
        files: &dyn resolve::Files,
        trusted: &Trusted<'_>,
        root: &resolve::manifest::Root,
        commit: git2::Oid,
    ) -> Result<resolve::DesiredState, resolve::Error> {
        let (sources, root_path, commit) =
            (&trusted.sources, trusted.root_path, &commit.to_string());
        match self {
            Target::Environment(env) => {
                resolve::resolve_bound(files, sources, root_path, root, env, commit)
            }
            Target::Preview(n) => {
                resolve::resolve_preview(files, sources, root_path, root, *n, commit)
            }
        }
    }
}

fn render(
    repo: &Path,
    target: &Target,
    git_ref: Option<&str>,
    trusted: &Trusted<'_>,
) -> anyhow::Result<ExitCode> {
    let local = Local::open(repo)?;
    let (root, commit) = match environment_at(&local, repo, target, git_ref, trusted)? {
        Ok(found) => found,
        Err(problems) => return Ok(print_problems(&problems)),
    };
    match target.resolve(&local.snapshot(commit)?, trusted, &root, commit) {
        Ok(state) => {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &state)?;
            writeln!(out)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(resolve::Error::Invalid(problems)) => Ok(print_problems(&problems)),
        Err(e) => Err(e.into()),
    }
}

async fn plan(
    repo: &Path,
    target: &Target,
    git_ref: Option<&str>,
    trusted: &Trusted<'_>,
) -> anyhow::Result<ExitCode> {
    let root_path = trusted.root_path;
    let local = Local::open(repo)?;
    let (root, commit) = match environment_at(&local, repo, target, git_ref, trusted)? {
        Ok(found) => found,
        Err(problems) => return Ok(print_problems(&problems)),
    };
    let env = target.environment(&root, root_path)?;
    let resolve_at = |commit: git2::Oid| {
        target
            .resolve(&local.snapshot(commit)?, trusted, &root, commit)
            .map_err(anyhow::Error::from)
    };
    let state = match resolve_at(commit) {
        Ok(state) => state,
        Err(e) => match e.downcast::<resolve::Error>() {
            Ok(resolve::Error::Invalid(problems)) => return Ok(print_problems(&problems)),
            Ok(e) => return Err(e.into()),
            Err(e) => return Err(e),
        },
    };
    let aws = aws_config().await;
    let (ecs, preflight) = (Ecs::new(&aws), Preflight::new(&aws));
    let at_commit = |sha: &str| {
        let oid = git2::Oid::from_str(sha).ok()?;
        local.contains(oid).then(|| resolve_at(oid).ok())?
    };
    let plans = plan::plan(&ecs, &preflight, &state, at_commit)
        .await
        .with_context(|| format!("cannot plan environment `{env}` against AWS"))?;

    let mut out = std::io::stdout().lock();
    let branch = &find_environment(&root, env, root_path)?.branch;
    match target {
        Target::Environment(_) => writeln!(
            out,
            "Plan for {} (branch {branch}, cluster {}) at {:.12}:",
            state.environment, state.cluster, state.commit
        )?,
        Target::Preview(n) => writeln!(
            out,
            "Plan for preview {} of {} (cluster {}) at {:.12}:",
            resolve::preview::name(*n),
            state.environment,
            state.cluster,
            state.commit
        )?,
    }
    for p in &plans {
        write!(out, "{p}")?;
    }
    let count = |f: fn(&plan::Action) -> bool| plans.iter().filter(|p| f(&p.action)).count();
    let findings: usize = plans.iter().map(|p| p.findings.len()).sum();
    writeln!(
        out,
        "{} to create, {} to update, {} unchanged; {findings} preflight problems.",
        count(|a| *a == plan::Action::Create),
        count(|a| matches!(a, plan::Action::Update { .. })),
        count(|a| *a == plan::Action::Unchanged),
    )?;
    Ok(if findings > 0 {
        ExitCode::from(1)
    } else if plans.iter().any(plan::AppPlan::changes_something) {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// The trusted root, and the commit `env` is read at: `--ref`, or the head of its branch.
fn environment_at(
    local: &Local,
    repo: &Path,
    target: &Target,
    git_ref: Option<&str>,
    trusted: &Trusted<'_>,
) -> anyhow::Result<Result<(resolve::manifest::Root, git2::Oid), Vec<Problem>>> {
    let root = match trusted.read(local, repo)? {
        Ok(root) => root,
        Err(problems) => return Ok(Err(problems)),
    };
    let env = target.environment(&root, trusted.root_path)?;
    let environment = find_environment(&root, env, trusted.root_path)?;
    let commit = match git_ref {
        Some(spec) => local.rev(spec)?,
        None => local.branch_head(&environment.branch)?.with_context(|| {
            format!(
                "environment `{env}`: branch `{}` does not exist in {}",
                environment.branch,
                repo.display()
            )
        })?,
    };
    Ok(Ok((root, commit)))
}

/// Where the trusted root is: the root file on the default branch, which names the
/// environments, binds them to branches and clusters, and sets the top policy.
/// With it, the other repositories apps may be kept in (`--source`).
struct Trusted<'a> {
    root_path: &'a str,
    default_branch: &'a str,
    sources: LocalSources,
}

impl<'a> Trusted<'a> {
    fn new(root_path: &'a str, default_branch: &'a str, sources: Vec<(String, PathBuf)>) -> Self {
        Trusted {
            root_path,
            default_branch,
            sources: LocalSources(sources),
        }
    }

    fn read(
        &self,
        local: &Local,
        repo: &Path,
    ) -> anyhow::Result<Result<resolve::manifest::Root, Vec<Problem>>> {
        let (root_path, branch) = (self.root_path, self.default_branch);
        let head = local.branch_head(branch)?.with_context(|| {
            format!(
                "{}: no branch `{branch}` (nor origin/{branch}), whose {root_path} binds the environments; fetch it (git fetch origin {branch}) or name another with --default-branch",
                repo.display()
            )
        })?;
        match resolve::read_root(&local.snapshot(head)?, root_path) {
            Ok(Some(root)) => Ok(Ok(root)),
            Ok(None) => bail!(
                "{}: no {root_path} on `{branch}` ({head:.12}); is this a fleetsync config repo? (--root names another path)",
                repo.display()
            ),
            Err(resolve::Error::Invalid(problems)) => Ok(Err(problems)),
            Err(e) => Err(e.into()),
        }
    }
}

fn find_environment<'r>(
    root: &'r resolve::manifest::Root,
    name: &str,
    root_path: &str,
) -> anyhow::Result<&'r resolve::manifest::Environment> {
    root.environments
        .iter()
        .find(|e| e.name == name)
        .with_context(|| {
            let declared: Vec<_> = root.environments.iter().map(|e| e.name.as_str()).collect();
            format!(
                "environment `{name}` is not declared in {root_path} on the default branch; declared: {}",
                declared.join(", ")
            )
        })
}

/// `NAME=PATH` of `--source`.
fn parse_source(arg: &str) -> Result<(String, PathBuf), String> {
    match arg.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_owned(), PathBuf::from(path)))
        }
        _ => Err(format!(
            "`{arg}` is not NAME=PATH (the repo's name in `source:`, `=`, a local clone)"
        )),
    }
}

/// Prints each distinct problem once (environments on one commit share files) and returns the
/// exit code: 0 without problems, 1 with.
fn print_problems(problems: &[Problem]) -> ExitCode {
    let mut seen = std::collections::HashSet::new();
    let mut out = std::io::stdout().lock();
    for p in problems {
        let line = p.to_string();
        if seen.insert(line.clone()) {
            let _ = writeln!(out, "{line}");
        }
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
