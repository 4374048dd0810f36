//! The operator's verbs over a running receiver's API, as `argocd app …` and `ecspresso` users
//! expect them: `status`, `sync`, `history`, `rollback`. The server comes from `--server` or
//! `FLEETSYNC_SERVER`, the token from `FLEETSYNC_TOKEN` only (a flag would show it in `ps`).
//!
//! Exit codes: 0 done (and, with `--wait`, Healthy); 1 the rollout failed, was rolled back or
//! did not finish in time; 2 the request was refused or could not be sent.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// A client of one fleetsync API.
pub struct Remote {
    server: String,
    token: String,
    http: reqwest::Client,
}

/// An answer the API refused: its status and its `error` (with the field to fix).
#[derive(Debug, thiserror::Error)]
#[error("{server} answered {status}: {message}")]
pub struct Refused {
    server: String,
    status: u16,
    message: String,
}

/// How often `--wait` looks at the app's status.
const POLL: Duration = Duration::from_secs(2);

impl Remote {
    pub fn new(server: &str, token: Option<String>) -> anyhow::Result<Self> {
        let token = token
            .filter(|t| !t.trim().is_empty())
            .context("set FLEETSYNC_TOKEN to an API token (`fleetsync token hash` prints the digest the server config holds)")?;
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            bail!(
                "--server (or FLEETSYNC_SERVER) must be an http:// or https:// URL, not `{server}`"
            );
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Remote {
            server: server.trim_end_matches('/').to_owned(),
            token: token.trim().to_owned(),
            http,
        })
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach fleetsync at {}", self.server))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("no answer from {}", self.server))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(body);
        }
        let mut message = body["error"]
            .as_str()
            .map_or_else(|| body.to_string(), str::to_owned);
        if let Some(problems) = body["problems"].as_array() {
            for p in problems {
                message.push_str(&format!("\n  {}", p.as_str().unwrap_or_default()));
            }
        }
        Err(Refused {
            server: self.server.clone(),
            status: status.as_u16(),
            message,
        }
        .into())
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(self.http.get(format!("{}{path}", self.server)))
            .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let request = self
            .http
            .post(format!("{}{path}", self.server))
            .header("content-type", "application/json")
            .body(body.to_string());
        self.call(request).await
    }

    /// The repo declaring `environment`: `repo` when given, else the only one that does.
    async fn repo_of(&self, repo: Option<&str>, environment: &str) -> anyhow::Result<String> {
        if let Some(repo) = repo {
            return Ok(repo.to_owned());
        }
        let listed = self.get("/api/v1/environments").await?;
        let repos: Vec<&str> = listed["environments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["environment"] == environment)
            .filter_map(|e| e["repo"].as_str())
            .collect();
        match repos.as_slice() {
            [one] => Ok((*one).to_owned()),
            [] => bail!("no watched repo declares environment `{environment}`"),
            many => bail!(
                "repos {} all declare environment `{environment}`; pass --repo",
                many.join(", ")
            ),
        }
    }
}

/// Output format of the read verbs.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

fn query(repo: Option<&str>) -> String {
    repo.map_or_else(String::new, |r| {
        format!(
            "?repo={}",
            form_urlencoded::byte_serialize(r.as_bytes()).collect::<String>()
        )
    })
}

fn segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn short(commit: &Value) -> String {
    commit.as_str().unwrap_or("-").chars().take(7).collect()
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// Rows as columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

pub async fn status(
    remote: &Remote,
    (repo, env, app): (Option<&str>, Option<&str>, Option<&str>),
    output: Output,
) -> anyhow::Result<ExitCode> {
    let (path, body) = match (env, app) {
        (None, None) => {
            let path = format!("/api/v1/environments{}", query(repo));
            let body = remote.get(&path).await?;
            (path, body)
        }
        (Some(env), None) => {
            let path = format!("/api/v1/environments/{}/apps{}", segment(env), query(repo));
            let body = remote.get(&path).await?;
            (path, body)
        }
        (Some(env), Some(app)) => {
            let path = format!(
                "/api/v1/environments/{}/apps/{}{}",
                segment(env),
                segment(app),
                query(repo)
            );
            let body = remote.get(&path).await?;
            (path, body)
        }
        (None, Some(_)) => bail!("--app needs --env"),
    };
    let mut out = std::io::stdout().lock();
    if let Output::Json = output {
        writeln!(out, "{}", serde_json::to_string_pretty(&body)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if path.starts_with("/api/v1/environments?") || path == "/api/v1/environments" {
        let rows: Vec<Vec<String>> = body["environments"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let counts = |v: &Value| {
                    v.as_object().map_or_else(String::new, |m| {
                        m.iter()
                            .map(|(k, n)| format!("{k}:{n}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                };
                vec![
                    text(&e["repo"]).to_owned(),
                    text(&e["environment"]).to_owned(),
                    text(&e["branch"]).to_owned(),
                    text(&e["cluster"]).to_owned(),
                    short(&e["commit"]),
                    counts(&e["sync"]),
                    counts(&e["health"]),
                ]
            })
            .collect();
        let header = [
            "REPO", "ENV", "BRANCH", "CLUSTER", "COMMIT", "SYNC", "HEALTH",
        ];
        write!(out, "{}", table(&header, &rows))?;
    } else if app.is_none() {
        let rows: Vec<Vec<String>> = body["apps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(app_row)
            .collect();
        let header = [
            "APP",
            "SERVICE",
            "SYNC",
            "HEALTH",
            "GIT",
            "LIVE",
            "TASK DEFINITION",
            "LAST SYNC",
        ];
        write!(out, "{}", table(&header, &rows))?;
    } else {
        for (label, value) in [
            ("app", text(&body["app"]).to_owned()),
            ("service", text(&body["service"]).to_owned()),
            ("sync", text(&body["sync"]).to_owned()),
            ("health", text(&body["health"]).to_owned()),
            ("git commit", text(&body["revision"]).to_owned()),
            ("live commit", text(&body["liveRevision"]).to_owned()),
            ("task definition", text(&body["taskDefinition"]).to_owned()),
            ("last sync", last_sync(&body["lastSync"])),
        ] {
            writeln!(out, "{label:<16} {value}")?;
        }
        if let Some(from) = body["rolledBackFrom"].as_str() {
            writeln!(
                out,
                "{:<16} rolled back from {from}; Git's commit stays out until Git moves on",
                "note"
            )?;
        }
        if let Some(failure) = body["failure"].as_str() {
            writeln!(out, "{:<16} {failure}", "failure")?;
        }
        if body["cause"].is_string() {
            writeln!(out, "{:<16} {}", "cause", text(&body["cause"]))?;
        }
        for event in body["events"].as_array().into_iter().flatten() {
            writeln!(out, "{:<16} {}", "event", text(event))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn app_row(a: &Value) -> Vec<String> {
    let mut sync = text(&a["sync"]).to_owned();
    if a["rolledBackFrom"].is_string() {
        sync.push_str(" (rolled back)");
    }
    vec![
        text(&a["app"]).to_owned(),
        text(&a["service"]).to_owned(),
        sync,
        text(&a["health"]).to_owned(),
        short(&a["revision"]),
        short(&a["liveRevision"]),
        text(&a["taskDefinition"]).to_owned(),
        last_sync(&a["lastSync"]),
    ]
}

fn last_sync(l: &Value) -> String {
    if l.is_null() {
        return "-".into();
    }
    let mut said = format!("{} by {}", text(&l["trigger"]), text(&l["actor"]));
    if let Some(reason) = l["reason"].as_str().filter(|r| !r.is_empty()) {
        said.push_str(&format!(": {reason}"));
    }
    said
}

pub struct SyncArgs<'a> {
    pub repo: Option<&'a str>,
    pub env: &'a str,
    pub apps: &'a [String],
    pub reason: Option<&'a str>,
    pub force: bool,
    pub wait: Option<Duration>,
}

pub async fn sync(remote: &Remote, args: &SyncArgs<'_>) -> anyhow::Result<ExitCode> {
    let repo = remote.repo_of(args.repo, args.env).await?;
    // A forced sync of a live spec changes nothing but the deployment: it is done once each
    // app runs a deployment other than the one it ran before the sync.
    let before: HashMap<String, Value> = match (args.wait, args.force) {
        (Some(_), true) => apps_of(remote, &repo, args.env)
            .await?
            .into_iter()
            .filter_map(|a| Some((a["app"].as_str()?.to_owned(), a["deployment"].clone())))
            .collect(),
        _ => HashMap::new(),
    };
    let mut body = json!({"repo": repo, "environment": args.env, "force": args.force});
    if !args.apps.is_empty() {
        body["apps"] = json!(args.apps);
    }
    if let Some(reason) = args.reason {
        body["reason"] = json!(reason);
    }
    let answer = remote.post("/api/v1/sync", &body).await?;
    let jobs: Vec<String> = answer["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["environment"] == args.env)
        .filter_map(|j| j["app"].as_str().map(str::to_owned))
        .collect();
    println!(
        "enqueued {} job(s) for {}: {}",
        jobs.len(),
        args.env,
        jobs.join(", ")
    );
    let Some(timeout) = args.wait else {
        return Ok(ExitCode::SUCCESS);
    };
    let done = |a: &Value| {
        a["sync"] == "Synced"
            && a["health"] == "Healthy"
            && (!args.force
                || a["app"]
                    .as_str()
                    .is_some_and(|app| before.get(app) != Some(&a["deployment"])))
    };
    wait(remote, &repo, args.env, &jobs, timeout, done).await
}

pub struct RollbackArgs<'a> {
    pub repo: Option<&'a str>,
    pub env: &'a str,
    pub app: &'a str,
    pub to: Option<i32>,
    pub reason: &'a str,
    pub wait: Option<Duration>,
}

pub async fn rollback(remote: &Remote, args: &RollbackArgs<'_>) -> anyhow::Result<ExitCode> {
    let repo = remote.repo_of(args.repo, args.env).await?;
    let mut body =
        json!({"repo": repo, "environment": args.env, "app": args.app, "reason": args.reason});
    if let Some(to) = args.to {
        body["to"] = json!(to);
    }
    let answer = remote.post("/api/v1/rollback", &body).await?;
    let r = &answer["rollback"];
    println!(
        "rolling {} back to {} (commit {}), away from {}",
        args.app,
        text(&r["to"]),
        short(&r["commit"]),
        short(&r["from"])
    );
    let Some(timeout) = args.wait else {
        return Ok(ExitCode::SUCCESS);
    };
    let commit = r["commit"].clone();
    let done = move |a: &Value| {
        a["rolledBackFrom"].is_string() && a["liveRevision"] == commit && a["health"] == "Healthy"
    };
    wait(
        remote,
        &repo,
        args.env,
        &[args.app.to_owned()],
        timeout,
        done,
    )
    .await
}

/// Every app of `env`, as the status API shows them.
async fn apps_of(remote: &Remote, repo: &str, env: &str) -> anyhow::Result<Vec<Value>> {
    let status = remote
        .get(&format!(
            "/api/v1/environments/{}/apps{}",
            segment(env),
            query(Some(repo))
        ))
        .await?;
    Ok(status["apps"].as_array().cloned().unwrap_or_default())
}

/// Follows `apps` until each is `done` (exit 0), one is Degraded (1), or `timeout` passes (1).
/// On a terminal one line is rewritten as states change; otherwise each change is a line.
async fn wait(
    remote: &Remote,
    repo: &str,
    env: &str,
    apps: &[String],
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<ExitCode> {
    let terminal = std::io::stderr().is_terminal();
    let deadline = Instant::now() + timeout;
    let mut said = String::new();
    loop {
        let listed = apps_of(remote, repo, env).await?;
        let watched: Vec<&Value> = listed
            .iter()
            .filter(|a| apps.iter().any(|name| a["app"] == **name))
            .collect();
        let now: Vec<String> = watched
            .iter()
            .map(|a| {
                format!(
                    "{} {}/{}",
                    text(&a["app"]),
                    text(&a["sync"]),
                    text(&a["health"])
                )
            })
            .collect();
        let line = now.join(", ");
        if line != said {
            if terminal {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
            said = line;
        }
        if let Some(failed) = watched.iter().find(|a| a["health"] == "Degraded") {
            if terminal {
                eprintln!();
            }
            let cause = Some(&failed["cause"])
                .filter(|c| c.is_string())
                .map(|c| format!(" ({})", text(c)))
                .unwrap_or_default();
            eprintln!(
                "{} failed: {}{cause}",
                text(&failed["app"]),
                failed["failure"]
                    .as_str()
                    .unwrap_or("its rollout did not complete")
            );
            return Ok(ExitCode::from(1));
        }
        if watched.len() == apps.len() && watched.iter().all(|a| done(a)) {
            if terminal {
                eprintln!();
            }
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() + POLL > deadline {
            if terminal {
                eprintln!();
            }
            eprintln!("not done within {}", humantime::format_duration(timeout));
            return Ok(ExitCode::from(1));
        }
        tokio::time::sleep(POLL).await;
    }
}

pub async fn history(
    remote: &Remote,
    (repo, env, app): (Option<&str>, &str, &str),
    limit: usize,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let repo = remote.repo_of(repo, env).await?;
    let path = format!(
        "/api/v1/environments/{}/apps/{}/history?repo={}&limit={limit}",
        segment(env),
        segment(app),
        form_urlencoded::byte_serialize(repo.as_bytes()).collect::<String>()
    );
    let body = remote.get(&path).await?;
    let mut out = std::io::stdout().lock();
    if let Output::Json = output {
        writeln!(out, "{}", serde_json::to_string_pretty(&body)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = body["deployments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let live = if d["live"] == true { "*" } else { "" };
            vec![
                format!("{}{live}", d["revision"]),
                short(&d["commit"]),
                text(&d["result"]).to_owned(),
                text(&d["trigger"]).to_owned(),
                text(&d["actor"]).to_owned(),
                text(&d["registeredAt"]).to_owned(),
                text(&d["reason"]).to_owned(),
            ]
        })
        .collect();
    let header = [
        "REVISION",
        "COMMIT",
        "RESULT",
        "TRIGGER",
        "ACTOR",
        "REGISTERED",
        "REASON",
    ];
    write!(out, "{}", table(&header, &rows))?;
    Ok(ExitCode::SUCCESS)
}

/// `fleetsync token hash`: the digest of the token on stdin, for `api.tokens[].sha256`. A
/// trailing newline (from `echo`) is not part of the token.
pub fn token_hash(input: &mut impl std::io::Read) -> anyhow::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut token = String::new();
    input
        .take(64 * 1024)
        .read_to_string(&mut token)
        .context("the token on stdin is not UTF-8 text")?;
    let token = token.strip_suffix('\n').unwrap_or(&token);
    let token = token.strip_suffix('\r').unwrap_or(token);
    if token.is_empty() {
        bail!("no token on stdin; pipe it in: `printf %s \"$TOKEN\" | fleetsync token hash`");
    }
    Ok(hex::encode(sha2::Sha256::digest(token.as_bytes())))
}
