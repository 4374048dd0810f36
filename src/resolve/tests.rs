//! Resolver behaviour on in-memory config repos; the same cases run through git and the CLI in
//! tests/it/cli.rs.

use std::collections::HashMap;

use super::*;

#[derive(Clone)]
struct Repo(HashMap<String, String>);

impl Files for Repo {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, ReadError> {
        Ok(self.0.get(path).map(|text| text.clone().into_bytes()))
    }
}

const ROOT: &str = "\
apiVersion: fleetsync/v1
kind: Root
name: platform
environments:
  staging: { branch: staging, cluster: staging-cluster }
apps:
  - name: db
    path: apps/db
  - name: api
    path: apps/api
    dependsOn: [db]
";

fn app(name: &str, image: &str) -> String {
    format!(
        "apiVersion: fleetsync/v1\nkind: App\nname: {name}\ntaskDefinition:\n  containerDefinitions:\n    - {{ name: main, image: \"{image}\", memory: 512 }}\nservice:\n  desiredCount: 2\n"
    )
}

fn repo() -> Repo {
    Repo(HashMap::from([
        ("fleetsync.yaml".into(), ROOT.into()),
        ("apps/db/app.yaml".into(), app("db", "db:1")),
        ("apps/api/app.yaml".into(), app("api", "api:${environment}")),
    ]))
}

impl Repo {
    fn with(mut self, path: &str, text: &str) -> Self {
        self.0.insert(path.into(), text.into());
        self
    }
    fn without(mut self, path: &str) -> Self {
        self.0.remove(path);
        self
    }
}

fn problems(repo: &Repo) -> Vec<String> {
    match resolve(repo, DEFAULT_ROOT, "staging", "c0ffee") {
        Err(Error::Invalid(p)) => p.iter().map(Problem::to_string).collect(),
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn resolves_inputs_with_cluster_family_and_provenance_tags() {
    let state = resolve(&repo(), DEFAULT_ROOT, "staging", "c0ffee").unwrap();
    assert_eq!(state.cluster, "staging-cluster");
    let api = &state.apps[1];
    assert_eq!(api.depends_on, ["db"]);
    assert_eq!(api.register_task_definition["family"], "staging-api");
    assert_eq!(
        api.register_task_definition["containerDefinitions"][0]["image"],
        "api:staging"
    );
    assert_eq!(api.create_service["cluster"], "staging-cluster");
    assert_eq!(api.create_service["serviceName"], "api");
    assert_eq!(api.update_service["service"], "api");
    assert_eq!(api.update_service["desiredCount"], 2);
    let tags = api.register_task_definition["tags"].as_array().unwrap();
    assert!(tags.contains(&serde_json::json!({"key": "fleetsync:revision", "value": "c0ffee"})));
    let hash = serde_json::json!({"key": "fleetsync:task-definition-hash", "value": api.task_definition_hash});
    assert!(tags.contains(&hash));
    let service_tags = api.service_tags();
    assert!(service_tags.contains(&("fleetsync:spec-hash".into(), api.spec_hash.clone())));
    assert!(service_tags.contains(&("fleetsync:app".into(), "api".into())));
}

#[test]
fn a_service_only_change_keeps_the_task_definition_hash() {
    let a = resolve(&repo(), DEFAULT_ROOT, "staging", "c1").unwrap();
    let scaled = app("db", "db:1").replace("desiredCount: 2", "desiredCount: 4");
    let b = resolve(
        &repo().with("apps/db/app.yaml", &scaled),
        DEFAULT_ROOT,
        "staging",
        "c2",
    )
    .unwrap();
    assert_ne!(a.apps[0].spec_hash, b.apps[0].spec_hash);
    assert_eq!(
        a.apps[0].task_definition_hash,
        b.apps[0].task_definition_hash
    );
}

#[test]
fn spec_hash_ignores_commit_and_key_order_but_not_content() {
    let a = resolve(&repo(), DEFAULT_ROOT, "staging", "c1").unwrap();
    let b = resolve(&repo(), DEFAULT_ROOT, "staging", "c2").unwrap();
    assert_eq!(a.apps[0].spec_hash, b.apps[0].spec_hash);
    let reordered = "apiVersion: fleetsync/v1\nkind: App\nname: db\nservice:\n  desiredCount: 2\ntaskDefinition:\n  containerDefinitions:\n    - { memory: 512, image: \"db:1\", name: main }\n";
    let c = resolve(
        &repo().with("apps/db/app.yaml", reordered),
        DEFAULT_ROOT,
        "staging",
        "c3",
    )
    .unwrap();
    assert_eq!(a.apps[0].spec_hash, c.apps[0].spec_hash);
    let d = resolve(
        &repo().with("apps/db/app.yaml", &app("db", "db:2")),
        DEFAULT_ROOT,
        "staging",
        "c4",
    )
    .unwrap();
    assert_ne!(a.apps[0].spec_hash, d.apps[0].spec_hash);
    assert_eq!(
        a.apps[1].spec_hash, d.apps[1].spec_hash,
        "an unrelated app keeps its hash"
    );
}

#[test]
fn no_desired_count_leaves_the_live_count_alone() {
    let no_count = "apiVersion: fleetsync/v1\nkind: App\nname: db\ntaskDefinition:\n  containerDefinitions: [{ name: m, image: x }]\n";
    let state = resolve(
        &repo().with("apps/db/app.yaml", no_count),
        DEFAULT_ROOT,
        "staging",
        "c",
    )
    .unwrap();
    assert!(!state.apps[0].update_service.contains_key("desiredCount"));
}

#[test]
fn unknown_fields_are_located() {
    let root = ROOT.replace("name: platform\n", "name: platform\nautoSync: yes\n");
    assert_eq!(
        problems(&repo().with("fleetsync.yaml", &root)),
        [
            "fleetsync.yaml:4:1: unknown field `autoSync` in the root app; expected one of: apiVersion, kind, name, environments, apps, policy, vars, maxNesting, prune, previews"
        ]
    );
    let child = app("db", "db:1").replace("service:\n", "service:\n  cluster: other\n");
    let found = problems(&repo().with("apps/db/app.yaml", &child));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("apps/db/app.yaml:8:3: unknown field `cluster` in `service`"),
        "{found:?}"
    );
}

#[test]
fn missing_child_unknown_dependency_and_cycle_are_all_reported() {
    let root = ROOT.replace("dependsOn: [db]", "dependsOn: [db, cache]")
        + "  - name: loop-a\n    path: apps/a\n    dependsOn: [loop-b]\n  - name: loop-b\n    path: apps/b\n    dependsOn: [loop-a]\n";
    let repo = repo()
        .with("fleetsync.yaml", &root)
        .with("apps/a/app.yaml", &app("loop-a", "a"))
        .with("apps/b/app.yaml", &app("loop-b", "b"))
        .without("apps/db/app.yaml");
    let found = problems(&repo);
    assert!(found.contains(&"fleetsync.yaml:11:21: app `api` depends on unknown app `cache`; known apps: api, db, loop-a, loop-b".into()), "{found:?}");
    assert!(
        found
            .iter()
            .any(|p| p
                .starts_with("fleetsync.yaml:17:17: dependency cycle: loop-a → loop-b → loop-a")),
        "{found:?}"
    );
    assert!(
        found.contains(
            &"fleetsync.yaml:8:11: app `db`: apps/db/app.yaml does not exist at commit c0ffee"
                .into()
        ),
        "{found:?}"
    );
}

#[test]
fn undefined_variables_and_bad_task_definitions_are_located() {
    let bad = "apiVersion: fleetsync/v1\nkind: App\nname: db\ntaskDefinition: td.json\n";
    let td = "{\n  \"family\": \"${team}-db\",\n  \"containerDefinitions\": [\n    {\"name\": \"a\", \"image\": \"x\"},\n    {\"name\": \"a\"}\n  ]\n}\n";
    let found = problems(
        &repo()
            .with("apps/db/app.yaml", bad)
            .with("apps/db/td.json", td),
    );
    assert_eq!(
        found,
        [
            "apps/db/td.json:2:13: undefined variable `${team}`; defined: ${environment}, ${cluster}, ${revision}, ${short_revision}, ${preview}, ${app}",
            "apps/db/td.json:5:5: duplicate container name `a`; ECS requires unique names",
            "apps/db/td.json:5:5: every container needs an `image`",
        ]
    );
}

#[test]
fn syntax_errors_and_wrong_kinds_are_problems_not_panics() {
    let found = problems(&repo().with("apps/db/app.yaml", "kind: [unclosed\n"));
    assert_eq!(found.len(), 1);
    assert!(found[0].starts_with("apps/db/app.yaml:"), "{found:?}");
    let found = problems(&repo().with(
        "apps/db/app.yaml",
        &app("db", "x").replace("kind: App", "kind: Deployment"),
    ));
    assert_eq!(
        found,
        ["apps/db/app.yaml:2:7: expected `kind: App`, found `kind: Deployment`"]
    );
}

#[test]
fn reserved_tags_and_unknown_environment_are_refused() {
    let tagged = app("db", "x") + "  tags: [{ key: \"fleetsync:app\", value: x }]\n";
    let found = problems(&repo().with("apps/db/app.yaml", &tagged));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("tag key `fleetsync:app` is reserved"),
        "{found:?}"
    );
    let err = resolve(&repo(), DEFAULT_ROOT, "prod", "c").unwrap_err();
    assert_eq!(
        err.to_string(),
        "fleetsync.yaml:5:3: environment `prod` is not declared; declared: staging"
    );
}

#[test]
fn no_root_file_is_not_an_environment() {
    assert!(
        read_root(&repo().without("fleetsync.yaml"), DEFAULT_ROOT)
            .unwrap()
            .is_none()
    );
}

#[test]
fn dollar_dollar_brace_is_a_literal() {
    let with_shell = app("db", "db:1").replace(
        "memory: 512",
        "memory: 512, command: [\"echo $${PORT} ${environment}\"]",
    );
    let state = resolve(
        &repo().with("apps/db/app.yaml", &with_shell),
        DEFAULT_ROOT,
        "staging",
        "c",
    )
    .unwrap();
    let command = &state.apps[0].register_task_definition["containerDefinitions"][0]["command"][0];
    assert_eq!(command, "echo ${PORT} staging");
}

#[test]
fn non_utf8_files_are_problems_not_errors() {
    let mut repo = repo();
    repo.0.remove("apps/db/app.yaml");
    let bytes = Repo(repo.0.clone());
    struct Latin1(Repo);
    impl Files for Latin1 {
        fn read(&self, path: &str) -> Result<Option<Vec<u8>>, ReadError> {
            if path == "apps/db/app.yaml" {
                return Ok(Some(vec![b'k', b':', b' ', 0xE9]));
            }
            self.0.read(path)
        }
    }
    let err = resolve(&Latin1(bytes), DEFAULT_ROOT, "staging", "c").unwrap_err();
    assert_eq!(
        err.to_string(),
        "apps/db/app.yaml:1:1: not UTF-8 text; save the file as UTF-8"
    );
}

#[test]
fn a_branch_cannot_rebind_an_environment() {
    let trusted = read_root(&repo(), DEFAULT_ROOT).unwrap().unwrap();
    resolve_bound(&repo(), &NoSources, DEFAULT_ROOT, &trusted, "staging", "c").unwrap();
    let hijack = repo().with(
        "fleetsync.yaml",
        &ROOT.replace("cluster: staging-cluster", "cluster: production"),
    );
    let err =
        resolve_bound(&hijack, &NoSources, DEFAULT_ROOT, &trusted, "staging", "c").unwrap_err();
    assert_eq!(
        err.to_string(),
        "fleetsync.yaml:5:3: environment `staging` is bound to branch `staging` and cluster `staging-cluster` by the root on the default branch, but this root says branch `staging` and cluster `production`; change environment bindings on the default branch first"
    );
}

#[test]
fn a_branch_cannot_lift_the_policy_of_the_default_branch() {
    let governed = format!("{ROOT}policy:\n  images: [\"registry.example/*\"]\n");
    let trusted = read_root(&repo().with(DEFAULT_ROOT, &governed), DEFAULT_ROOT)
        .unwrap()
        .unwrap();
    let apps = repo()
        .with("apps/db/app.yaml", &app("db", "registry.example/db:1"))
        .with("apps/api/app.yaml", &app("api", "registry.example/api:1"));
    resolve_bound(
        &apps.clone().with(DEFAULT_ROOT, &governed),
        &NoSources,
        DEFAULT_ROOT,
        &trusted,
        "staging",
        "c",
    )
    .unwrap();
    // The branch drops the policy and names an image it forbids: the default branch's policy
    // still applies, and the disagreement is reported.
    let lifted = apps.with("apps/api/app.yaml", &app("api", "docker.io/evil:1"));
    let found = match resolve_bound(&lifted, &NoSources, DEFAULT_ROOT, &trusted, "staging", "c") {
        Err(Error::Invalid(p)) => p.iter().map(Problem::to_string).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        found,
        [
            "fleetsync.yaml:1:1: this root's policy differs from the root's on the default branch, which is the one that applies; change the policy on the default branch first",
            "apps/api/app.yaml:6:28: `docker.io/evil:1` is not allowed by policy.images of root `platform` (fleetsync.yaml:13:11 on the default branch); allowed: registry.example/*",
        ]
    );
}

mod nesting;
mod overlays;
mod policy;
mod sources;
mod vars_and_rules;

#[test]
fn prune_comes_from_the_default_branch_and_only_from_the_top_root() {
    let pruning = ROOT.replace("name: platform\n", "name: platform\nprune: true\n");
    let trusted = read_root(&repo().with(DEFAULT_ROOT, &pruning), DEFAULT_ROOT)
        .unwrap()
        .unwrap();
    let state = resolve_bound(
        &repo().with(DEFAULT_ROOT, &pruning),
        &NoSources,
        DEFAULT_ROOT,
        &trusted,
        "staging",
        "c",
    )
    .unwrap();
    assert!(state.prune);
    assert!(
        !resolve(&repo(), DEFAULT_ROOT, "staging", "c")
            .unwrap()
            .prune
    );

    // A branch cannot turn on deletion the default branch did not.
    let plain = read_root(&repo(), DEFAULT_ROOT).unwrap().unwrap();
    let err = resolve_bound(
        &repo().with(DEFAULT_ROOT, &pruning),
        &NoSources,
        DEFAULT_ROOT,
        &plain,
        "staging",
        "c",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "fleetsync.yaml:4:8: this root's `prune` differs from the root's on the default branch, which is the one that applies; change it on the default branch first"
    );

    let maybe = ROOT.replace("name: platform\n", "name: platform\nprune: maybe\n");
    assert_eq!(
        problems(&repo().with(DEFAULT_ROOT, &maybe)),
        ["fleetsync.yaml:4:8: `prune` must be true or false, found a string"]
    );
}

#[test]
fn a_preview_is_the_environment_renamed_confined_capped_and_tagged() {
    let previews = "previews: { from: staging, cluster: previews, desiredCount: 1 }\n";
    let main = repo().with("fleetsync.yaml", &format!("{ROOT}{previews}"));
    let trusted = read_root(&main, DEFAULT_ROOT).unwrap().unwrap();
    // The PR's own root asks for other previews: only the default branch's count.
    let pr = repo()
        .with(
            "fleetsync.yaml",
            &format!(
                "{}previews: {{ from: staging, cluster: elsewhere, desiredCount: 9 }}\n",
                ROOT.replace("name: platform", "name: renamed")
            ),
        )
        .with(
            "apps/api/app.yaml",
            &app("api", "api:${preview}").replace(
                "desiredCount: 2\n",
                "desiredCount: 2\n  loadBalancers: [{ targetGroupArn: tg, containerName: main, containerPort: 80 }]\n  healthCheckGracePeriodSeconds: 30\n",
            ),
        );
    let state = resolve_preview(&pr, &NoSources, DEFAULT_ROOT, &trusted, 42, "c").unwrap();
    assert_eq!(state.environment, "staging");
    assert_eq!(state.cluster, "previews");
    // Teardown finds a preview by the trusted root's name, whatever the PR calls its root.
    assert_eq!(state.root, "platform");
    assert_eq!(state.apps[1].root, "platform");
    assert!(!state.prune);
    let api = &state.apps[1];
    assert_eq!(api.preview, Some(42));
    assert_eq!(api.cluster, "previews");
    assert_eq!(api.create_service["cluster"], "previews");
    assert_eq!(api.create_service["serviceName"], "api-pr-42");
    assert_eq!(api.update_service["service"], "api-pr-42");
    assert_eq!(api.register_task_definition["family"], "staging-api-pr-42");
    assert_eq!(api.create_service["taskDefinition"], "staging-api-pr-42");
    assert_eq!(api.create_service["desiredCount"], 1);
    assert_eq!(api.update_service["desiredCount"], 1);
    for dropped in ["loadBalancers", "healthCheckGracePeriodSeconds"] {
        assert!(!api.create_service.contains_key(dropped), "{dropped}");
        assert!(!api.update_service.contains_key(dropped), "{dropped}");
    }
    assert_eq!(
        api.register_task_definition["containerDefinitions"][0]["image"],
        "api:pr-42"
    );
    assert!(
        api.service_tags()
            .contains(&("fleetsync:preview".into(), "42".into()))
    );
    let td_tags = api.register_task_definition["tags"].as_array().unwrap();
    assert!(td_tags.contains(&serde_json::json!({"key": "fleetsync:preview", "value": "42"})));
    // Not the environment's spec: a preview never looks in sync with staging.
    let staging = resolve_bound(&pr, &NoSources, DEFAULT_ROOT, &trusted, "staging", "c").unwrap();
    assert_ne!(staging.apps[1].spec_hash, api.spec_hash);
    assert_eq!(staging.apps[1].preview, None);

    let no_previews = read_root(&repo(), DEFAULT_ROOT).unwrap().unwrap();
    let err = resolve_preview(&pr, &NoSources, DEFAULT_ROOT, &no_previews, 42, "c").unwrap_err();
    assert!(err.to_string().contains("sets no `previews`"), "{err}");
}

#[test]
fn a_preview_with_ingress_routes_apps_with_a_load_balancer_within_the_quotas() {
    let listener = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/previews/1/2";
    let behind = |name: &str| {
        app(name, "x:1").replace(
            "desiredCount: 2\n",
            "desiredCount: 2\n  loadBalancers: [{ targetGroupArn: arn:tg/staging, containerName: main, containerPort: 8080 }]\n  healthCheckGracePeriodSeconds: 45\n",
        )
    };
    let previews = |max: u32| {
        format!(
            "{ROOT}previews:\n  from: staging\n  cluster: previews\n  maxActive: {max}\n  ingress: {{ listenerArn: {listener}, host: \"${{app}}-${{preview}}.preview.example.com\" }}\n"
        )
    };
    let pr = repo().with("apps/api/app.yaml", &behind("api"));
    let trusted = read_root(&repo().with("fleetsync.yaml", &previews(10)), DEFAULT_ROOT)
        .unwrap()
        .unwrap();
    let state = resolve_preview(&pr, &NoSources, DEFAULT_ROOT, &trusted, 42, "c").unwrap();
    let (db, api) = (&state.apps[0], &state.apps[1]);
    assert_eq!(db.ingress, None, "db has no load balancer");
    let ingress = api.ingress.as_ref().unwrap();
    assert_eq!(ingress.host, "api-pr-42.preview.example.com");
    assert_eq!(ingress.listener_arn, listener);
    assert_eq!(ingress.like_target_group, "arn:tg/staging");
    assert_eq!(
        (ingress.container_name.as_str(), ingress.container_port),
        ("main", 8080)
    );
    // Never the environment's target group: the worker adds the preview's own.
    assert!(!api.create_service.contains_key("loadBalancers"));
    let routed = api.routed("arn:tg/pr-42", "http://api-pr-42.preview.example.com");
    assert_eq!(
        routed.create_service["loadBalancers"][0]["targetGroupArn"],
        "arn:tg/pr-42"
    );
    assert_eq!(
        routed.update_service["loadBalancers"][0]["containerPort"],
        8080
    );
    assert_eq!(routed.url(), Some("http://api-pr-42.preview.example.com"));
    // ECS takes a grace period only with a load balancer: it comes back with the preview's.
    assert!(
        !api.create_service
            .contains_key("healthCheckGracePeriodSeconds")
    );
    assert_eq!(routed.update_service["healthCheckGracePeriodSeconds"], 45);
    assert_eq!(routed.spec_hash, api.spec_hash);

    // 40 previews × 3 apps behind a load balancer: more rules than one listener takes.
    let many = pr
        .with("apps/db/app.yaml", &behind("db"))
        .with(
            "fleetsync.yaml",
            &format!("{ROOT}  - name: web\n    path: apps/web\n").replace("\n\n", "\n"),
        )
        .with("apps/web/app.yaml", &behind("web"));
    let trusted = read_root(&repo().with("fleetsync.yaml", &previews(40)), DEFAULT_ROOT)
        .unwrap()
        .unwrap();
    let err = resolve_preview(&many, &NoSources, DEFAULT_ROOT, &trusted, 42, "c").unwrap_err();
    assert!(
        err.to_string()
            .contains("3 apps with a load balancer × `previews.maxActive` 40 = 120"),
        "{err}"
    );
    assert!(
        err.to_string().contains("lower `maxActive` to 33 or fewer"),
        "{err}"
    );
}
