//! Real components for the integration tests: an AWS emulator process per test, config repos as
//! real git repositories in temp dirs, and fleetsync's receiver and worker on loopback sockets.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use fleetsync::config::Config;
use fleetsync::dispatch::Dispatcher;
use fleetsync::sync::Worker;
use git2::{Oid, Repository, Signature};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// The apps of example-repo.
pub const APPS: [&str; 4] = ["accounts", "api", "web", "fleetsync-worker"];

pub const REPO_URL: &str = "https://github.com/acme/platform-config";
pub const SECRET: &str = "It's a Secret to Everybody";

/// One moto server (with scripts/emulator.py's rollout model) for one test: tests never share
/// AWS state, so they need no unique names and no resets.
pub struct Emulator {
    child: Child,
    /// Every AWS call the emulator served, one "service Action" per line.
    call_log: tempfile::NamedTempFile,
    pub endpoint: String,
    pub subnets: Vec<String>,
    pub security_group: String,
    pub aws: SdkConfig,
}

impl Emulator {
    pub async fn start() -> Emulator {
        Self::start_with(&[]).await
    }

    /// With the emulator's optional AWS behaviours switched on by their variables
    /// (scripts/emulator.py: `FLEETSYNC_EMULATOR_STALE_READS`, `FLEETSYNC_EMULATOR_THROTTLE`).
    pub async fn start_with(env: &[(&str, &str)]) -> Emulator {
        let root = env!("CARGO_MANIFEST_DIR");
        let python = format!("{root}/.venv/bin/python");
        assert!(
            Path::new(&python).exists(),
            "the AWS emulator is not installed ({python} is missing): run the tests with scripts/test.sh, which installs it"
        );
        let call_log = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(python)
            .envs(env.iter().copied())
            .env("FLEETSYNC_EMULATOR_CALL_LOG", call_log.path())
            .arg(format!("{root}/scripts/emulator.py"))
            .args(["--port", "0", "--example-account"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the emulator");
        let stdout = child.stdout.take().expect("piped stdout");
        let (endpoint, subnets, security_group) = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let network = lines.next().expect("emulator printed nothing").unwrap();
            let ready = lines.next().expect("emulator did not get ready").unwrap();
            let mut subnets = Vec::new();
            let mut security_group = String::new();
            for field in network.trim_start_matches("default network ").split(' ') {
                match field.split_once('=') {
                    Some(("subnets", v)) => subnets = v.split(',').map(str::to_owned).collect(),
                    Some(("securityGroup", v)) => security_group = v.to_owned(),
                    _ => {}
                }
            }
            (
                ready.trim_start_matches("emulator ready on ").to_owned(),
                subnets,
                security_group,
            )
        })
        .await
        .unwrap();
        let aws = aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(&endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_ecs::config::Credentials::new(
                "test", "test", None, None, "emulator",
            ))
            .load()
            .await;
        Emulator {
            child,
            call_log,
            endpoint,
            subnets,
            security_group,
            aws,
        }
    }

    /// The AWS calls served so far, as "service Action", in order.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.call_log.path())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The ECS calls served so far, as their action names, in order.
    pub fn ecs_calls(&self) -> Vec<String> {
        self.calls()
            .iter()
            .filter_map(|line| line.strip_prefix("ecs "))
            .map(str::to_owned)
            .collect()
    }

    /// Starts a fault at the emulator's control endpoint (`scripts/emulator.py` says which).
    pub async fn fault(&self, spec: &str) {
        let answer = reqwest::Client::new()
            .post(format!("{}/fleetsync-emulator/faults", self.endpoint))
            .body(spec.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    }

    pub fn ecs(&self) -> aws_sdk_ecs::Client {
        aws_sdk_ecs::Client::new(&self.aws)
    }

    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.aws)
    }

    pub async fn create_clusters(&self, names: &[&str]) {
        for name in names {
            self.ecs()
                .create_cluster()
                .cluster_name(*name)
                .send()
                .await
                .unwrap();
        }
    }

    /// Deletes a secret example_account.py created, as someone cleaning up by hand would.
    pub async fn delete_secret(&self, name: &str) {
        aws_sdk_secretsmanager::Client::new(&self.aws)
            .delete_secret()
            .secret_id(name)
            .force_delete_without_recovery(true)
            .send()
            .await
            .unwrap();
    }

    pub async fn create_queue(&self, name: &str) -> String {
        let out = self
            .sqs()
            .create_queue()
            .queue_name(name)
            .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
            .send()
            .await
            .unwrap();
        out.queue_url().unwrap().to_owned()
    }

    /// A FIFO queue whose redrive policy moves a job to `dead_letters` (created too) after
    /// `max_receives` receives, as deploy/cloudformation.yaml sets it up.
    pub async fn create_queue_with_dead_letters(
        &self,
        name: &str,
        dead_letters: &str,
        max_receives: u32,
    ) -> (String, String) {
        use aws_sdk_sqs::types::QueueAttributeName::{FifoQueue, RedrivePolicy};
        let dead_letter_url = self.create_queue(dead_letters).await;
        let policy = serde_json::json!({
            "deadLetterTargetArn": format!("arn:aws:sqs:us-east-1:123456789012:{dead_letters}"),
            "maxReceiveCount": max_receives,
        });
        let out = self
            .sqs()
            .create_queue()
            .queue_name(name)
            .attributes(FifoQueue, "true")
            .attributes(RedrivePolicy, policy.to_string())
            .send()
            .await
            .unwrap();
        (out.queue_url().unwrap().to_owned(), dead_letter_url)
    }

    /// The URL SQS would give a queue of this name, whether or not it exists.
    pub fn queue_url(&self, name: &str) -> String {
        format!("{}/123456789012/{name}", self.endpoint)
    }

    pub async fn queue_depth(&self, url: &str) -> usize {
        use aws_sdk_sqs::types::QueueAttributeName::{
            ApproximateNumberOfMessages, ApproximateNumberOfMessagesNotVisible,
        };
        let out = self
            .sqs()
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(ApproximateNumberOfMessages)
            .attribute_names(ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let attrs = out.attributes().unwrap();
        [
            ApproximateNumberOfMessages,
            ApproximateNumberOfMessagesNotVisible,
        ]
        .iter()
        .map(|a| attrs[a].parse::<usize>().unwrap())
        .sum()
    }

    /// The live service: its task definition (family:revision) and tags.
    pub async fn service(&self, cluster: &str, name: &str) -> Option<Live> {
        let out = self
            .ecs()
            .describe_services()
            .cluster(cluster)
            .services(name)
            .include(aws_sdk_ecs::types::ServiceField::Tags)
            .send()
            .await
            .unwrap();
        let s = out.services().first()?;
        Some(Live {
            events: s
                .events()
                .iter()
                .map(|e| e.message().unwrap().to_owned())
                .collect(),
            task_definition: fleetsync::ecs::task_definition_id(s.task_definition().unwrap())
                .to_owned(),
            primary: s
                .deployments()
                .iter()
                .find(|d| d.status() == Some("PRIMARY"))
                .map(|d| {
                    let state = d.rollout_state().map(|r| r.as_str().to_owned());
                    (d.id().unwrap().to_owned(), state.unwrap_or_default())
                }),
            tags: s
                .tags()
                .iter()
                .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
                .collect(),
        })
    }

    /// Every revision registered for a family, oldest first.
    pub async fn revisions(&self, family: &str) -> Vec<String> {
        let out = self
            .ecs()
            .list_task_definitions()
            .family_prefix(family)
            .send()
            .await
            .unwrap();
        out.task_definition_arns()
            .iter()
            .map(|a| fleetsync::ecs::task_definition_id(a).to_owned())
            .filter(|id| id.rsplit_once(':').is_some_and(|(f, _)| f == family))
            .collect()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    pub task_definition: String,
    /// Service events, newest first.
    pub events: Vec<String>,
    /// The PRIMARY deployment's id and rollout state.
    pub primary: Option<(String, String)>,
    pub tags: std::collections::HashMap<String, String>,
}

impl Live {
    pub fn revision(&self) -> &str {
        &self.tags["fleetsync:revision"]
    }
}

/// A bare git repository holding example-repo, with `main` (production) and `staging`.
pub struct ConfigRepo {
    _dir: TempDir,
    pub repo: Repository,
}

impl ConfigRepo {
    /// example-repo with its network placeholders replaced by `emulator`'s default VPC ids.
    pub fn example(emulator: &Emulator) -> ConfigRepo {
        let subnets = (
            emulator.subnets[0].clone(),
            emulator.subnets[1].clone(),
            emulator.security_group.clone(),
        );
        Self::example_with(move |text| {
            text.replace("subnet-EXAMPLE1", &subnets.0)
                .replace("subnet-EXAMPLE2", &subnets.1)
                .replace("sg-EXAMPLE", &subnets.2)
        })
    }

    pub fn example_with(edit: impl Fn(&str) -> String) -> ConfigRepo {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path().join("platform-config.git")).unwrap();
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("example-repo");
        let mut tree = repo.treebuilder(None).unwrap().write().unwrap();
        for file in files_under(&source) {
            let relative = file
                .strip_prefix(&source)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            let text = edit(&std::fs::read_to_string(&file).unwrap());
            let blob = repo.blob(text.as_bytes()).unwrap();
            tree = write_path(
                &repo,
                Some(tree),
                &relative.split('/').collect::<Vec<_>>(),
                Some(blob),
            );
        }
        let config = ConfigRepo { _dir: dir, repo };
        let commit = config.commit_tree(tree, &[], "Import example-repo");
        config
            .repo
            .reference("refs/heads/main", commit, true, "main")
            .unwrap();
        config
            .repo
            .reference("refs/heads/staging", commit, true, "staging")
            .unwrap();
        config.repo.set_head("refs/heads/main").unwrap();
        config
    }

    pub fn path(&self) -> PathBuf {
        self.repo.path().to_owned()
    }

    pub fn file_url(&self) -> String {
        format!("file://{}", self.repo.path().display())
    }

    pub fn head(&self, branch: &str) -> Oid {
        self.repo
            .refname_to_id(&format!("refs/heads/{branch}"))
            .unwrap()
    }

    /// Commits api's image at tag `tag` on `branch` (the emulator's ECS never starts tag
    /// `broken`).
    pub fn commit_api_image(&self, branch: &str, tag: &str) -> Oid {
        self.commit(branch, "apps/api/taskdef.json", |t| {
            let t = t.expect("example-repo's apps/api/taskdef.json");
            let image = "public.ecr.aws/acme/api:";
            let at = t.find(image).expect("the api image") + image.len();
            let end = at + t[at..].find('"').expect("the image's closing quote");
            Some(format!("{}{tag}{}", &t[..at], &t[end..]))
        })
    }

    /// Commits an edit of one file (`None` deletes it) on `branch`, without a work tree.
    pub fn commit(
        &self,
        branch: &str,
        path: &str,
        edit: impl FnOnce(Option<&str>) -> Option<String>,
    ) -> Oid {
        self.commit_with_message(branch, path, &format!("Edit {path}"), edit)
    }

    /// [`ConfigRepo::commit`] with its message.
    pub fn commit_with_message(
        &self,
        branch: &str,
        path: &str,
        message: &str,
        edit: impl FnOnce(Option<&str>) -> Option<String>,
    ) -> Oid {
        let parent = self.repo.find_commit(self.head(branch)).unwrap();
        let base = parent.tree().unwrap();
        let old = base.get_path(Path::new(path)).ok().map(|e| {
            String::from_utf8(
                e.to_object(&self.repo)
                    .unwrap()
                    .as_blob()
                    .unwrap()
                    .content()
                    .to_vec(),
            )
            .unwrap()
        });
        let blob = edit(old.as_deref()).map(|text| self.repo.blob(text.as_bytes()).unwrap());
        let tree = write_path(
            &self.repo,
            Some(base.id()),
            &path.split('/').collect::<Vec<_>>(),
            blob,
        );
        let commit = self.commit_tree(tree, &[&parent], message);
        self.repo
            .reference(&format!("refs/heads/{branch}"), commit, true, "commit")
            .unwrap();
        commit
    }

    fn commit_tree(&self, tree: Oid, parents: &[&git2::Commit<'_>], message: &str) -> Oid {
        let who = Signature::now("fleetsync tests", "tests@fleetsync.invalid").unwrap();
        let tree = self.repo.find_tree(tree).unwrap();
        self.repo
            .commit(None, &who, &who, message, &tree, parents)
            .unwrap()
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path))
        } else {
            files.push(path)
        }
    }
    files.sort();
    files
}

/// A tree equal to `base` with `blob` at `path` (or the path removed when `blob` is `None`).
fn write_path(repo: &Repository, base: Option<Oid>, path: &[&str], blob: Option<Oid>) -> Oid {
    let base_tree = base.map(|id| repo.find_tree(id).unwrap());
    let mut builder = repo.treebuilder(base_tree.as_ref()).unwrap();
    match (path, blob) {
        ([name], Some(blob)) => {
            builder.insert(name, blob, 0o100644).unwrap();
        }
        ([name], None) => {
            builder.remove(name).unwrap();
        }
        ([dir, rest @ ..], _) => {
            let existing = base_tree
                .as_ref()
                .and_then(|t| t.get_name(dir))
                .map(|e| e.id());
            let subtree = write_path(repo, existing, rest, blob);
            builder.insert(dir, subtree, 0o040000).unwrap();
        }
        ([], _) => unreachable!("empty path"),
    }
    builder.write().unwrap()
}

/// fleetsync's config file for this test, parsed the way `serve` and `worker` parse it.
pub fn config(dir: &Path, fetch_url: &str, queue_url: &str, extra: &str) -> Config {
    config_with_repos(dir, &[("platform", REPO_URL, fetch_url)], queue_url, extra)
}

/// [`config`] watching several repos: (name, url, fetch URL), all signed with [`SECRET`].
pub fn config_with_repos(
    dir: &Path,
    repos: &[(&str, &str, &str)],
    queue_url: &str,
    extra: &str,
) -> Config {
    let repos: Vec<_> = repos.iter().map(|&(n, u, f)| (n, u, f, "")).collect();
    config_of(dir, &repos, queue_url, extra)
}

/// [`config`] with `repo_extra` (YAML lines indented for the repo's entry, `gitHost:` say)
/// under the repo.
pub fn config_with_repo_extra(
    dir: &Path,
    fetch_url: &str,
    queue_url: &str,
    repo_extra: &str,
    extra: &str,
) -> Config {
    config_of(
        dir,
        &[("platform", REPO_URL, fetch_url, repo_extra)],
        queue_url,
        extra,
    )
}

fn config_of(
    dir: &Path,
    repos: &[(&str, &str, &str, &str)],
    queue_url: &str,
    extra: &str,
) -> Config {
    let secret_file = dir.join("webhook-secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let repos: String = repos
        .iter()
        .map(|(name, url, fetch_url, repo_extra)| {
            format!(
                "  - name: {name}\n    url: {url}\n    fetchUrl: {fetch_url}\n    secret: file:{}\n{repo_extra}",
                secret_file.display()
            )
        })
        .collect();
    let text = format!(
        "listen: 127.0.0.1:0\nmirrorDir: {mirrors}\nqueueUrl: {queue_url}\nmaxBodyBytes: 65536\nrepos:\n{repos}worker:\n  concurrency: 4\n  visibilityTimeout: 30s\n  rolloutPollInterval: 50ms\n{extra}",
        mirrors = dir.join("mirrors").display(),
    );
    Config::parse(&dir.join("fleetsync-server.yaml"), &text).unwrap()
}

/// The receiver on an ephemeral loopback port.
pub struct Receiver {
    pub url: String,
    shutdown: CancellationToken,
}

impl Receiver {
    pub async fn start(config: &Config, aws: &SdkConfig) -> Receiver {
        let dispatcher = Arc::new(Dispatcher::from_config(config, aws).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let (public, operations) = fleetsync::webhook::receiver_routes(dispatcher, config).unwrap();
        tokio::spawn(fleetsync::webhook::serve(
            listener,
            public.merge(operations),
            config.webhooks.header_timeout,
            shutdown.clone(),
        ));
        Receiver {
            url: format!("http://{addr}"),
            shutdown,
        }
    }

    /// A receiver running elsewhere (a `fleetsync serve` process).
    pub fn remote(url: &str) -> Receiver {
        Receiver {
            url: url.to_owned(),
            shutdown: CancellationToken::new(),
        }
    }

    /// Delivers a push for `branch` as GitHub does, signed with `secret`.
    pub async fn push(&self, branch: &str, after: Oid, delivery: &str) -> (u16, serde_json::Value) {
        self.push_from(branch, None, after, delivery).await
    }

    /// A push whose `before` is `before`, as a Git host reports consecutive pushes.
    pub async fn push_from(
        &self,
        branch: &str,
        before: Option<Oid>,
        after: Oid,
        delivery: &str,
    ) -> (u16, serde_json::Value) {
        self.push_to(REPO_URL, branch, before, after, delivery)
            .await
    }

    /// A push to the repo at `repo_url` (GitHub's `html_url`).
    pub async fn push_to(
        &self,
        repo_url: &str,
        branch: &str,
        before: Option<Oid>,
        after: Oid,
        delivery: &str,
    ) -> (u16, serde_json::Value) {
        let body = push_payload_for(repo_url, branch, before, after);
        self.deliver(&body, Some(&sign(SECRET.as_bytes(), &body)), delivery)
            .await
    }

    pub async fn deliver(
        &self,
        body: &[u8],
        signature: Option<&str>,
        delivery: &str,
    ) -> (u16, serde_json::Value) {
        let mut headers = vec![
            ("content-type", "application/json"),
            ("x-github-event", "push"),
            ("x-github-delivery", delivery),
        ];
        headers.extend(signature.map(|s| ("x-hub-signature-256", s)));
        self.post("github", &headers, body).await
    }

    /// POSTs `body` to `/webhooks/{provider}` with exactly these headers.
    pub async fn post(
        &self,
        provider: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, serde_json::Value) {
        let mut request = reqwest::Client::new()
            .post(format!("{}/webhooks/{provider}", self.url))
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// GETs `path` of the API with `token`: the status and the JSON answer.
    pub async fn get(&self, path: &str, token: &str) -> (u16, serde_json::Value) {
        let request = reqwest::Client::new().get(format!("{}{path}", self.url));
        api_call(request, token).await
    }

    /// POSTs `body` as JSON to `path` of the API with `token`: the status and the answer.
    pub async fn api_post(
        &self,
        path: &str,
        token: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let request = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .body(body.to_string());
        api_call(request, token).await
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn api_call(request: reqwest::RequestBuilder, token: &str) -> (u16, serde_json::Value) {
    let response = request.bearer_auth(token).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

/// A real GitHub push payload (go-playground's fixture) re-pointed at our repo and commit.
pub fn push_payload(branch: &str, after: Oid) -> Vec<u8> {
    push_payload_from(branch, None, after)
}

/// A push from `before` (the fixture's unrelated commit when `None`) to `after`.
pub fn push_payload_from(branch: &str, before: Option<Oid>, after: Oid) -> Vec<u8> {
    push_payload_for(REPO_URL, branch, before, after)
}

/// A push to the repo at `repo_url`.
pub fn push_payload_for(repo_url: &str, branch: &str, before: Option<Oid>, after: Oid) -> Vec<u8> {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/webhooks/github/go-playground.push.json"
    );
    let mut payload: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
    payload["ref"] = format!("refs/heads/{branch}").into();
    payload["after"] = after.to_string().into();
    if let Some(before) = before {
        payload["before"] = before.to_string().into();
    }
    let repository = &mut payload["repository"];
    repository["clone_url"] = format!("{repo_url}.git").into();
    repository["html_url"] = repo_url.into();
    let path = repo_url.trim_start_matches("https://github.com/");
    repository["ssh_url"] = format!("git@github.com:{path}.git").into();
    serde_json::to_vec(&payload).unwrap()
}

/// The apps of the jobs a push's answer lists, in order.
pub fn job_apps(body: &serde_json::Value) -> Vec<&str> {
    body["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["app"].as_str())
        .collect()
}

pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The worker, consuming until the returned token is cancelled.
pub fn start_worker(config: &Config, aws: &SdkConfig) -> CancellationToken {
    let worker = Arc::new(Worker::from_config(config, aws).unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(worker.run(shutdown.clone(), Duration::from_secs(5)));
    shutdown
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
