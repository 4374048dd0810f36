//! `fleetsync validate` and `fleetsync render`, run as the real binary on real git repositories.

use std::process::Command;

use crate::harness::ConfigRepo;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn fleetsync(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetsync"))
        .args(args)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// The app `name` in `render`'s output.
fn app_named<'a>(state: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    state["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap()
}

fn validate(repo: &ConfigRepo) -> Run {
    fleetsync(&["validate", "--repo", repo.path().to_str().unwrap()])
}

#[test]
fn example_repo_validates_in_every_environment() {
    let repo = ConfigRepo::example_with(str::to_owned);
    let run = validate(&repo);
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{}", run.stderr);
    assert!(
        run.stderr.contains("ok: staging (branch staging at"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("ok: production (branch main at"),
        "{}",
        run.stderr
    );
}

#[test]
fn render_prints_the_ecs_inputs_fleetsync_will_send() {
    let repo = ConfigRepo::example_with(str::to_owned);
    let run = fleetsync(&[
        "render",
        "--repo",
        repo.path().to_str().unwrap(),
        "--env",
        "production",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let state: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(state["environment"], "production");
    assert_eq!(state["commit"], repo.head("main").to_string());
    let api = app_named(&state, "api");
    assert_eq!(api["cluster"], "production");
    assert_eq!(api["dependsOn"], serde_json::json!(["accounts"]));
    assert_eq!(api["registerTaskDefinition"]["family"], "production-api");
    assert_eq!(
        api["registerTaskDefinition"]["executionRoleArn"],
        "arn:aws:iam::123456789012:role/ecs-exec-production"
    );
    assert_eq!(api["createService"]["cluster"], "production");
    assert_eq!(api["createService"]["serviceName"], "api");
    assert_eq!(api["updateService"]["service"], "api");
    let web = app_named(&state, "web");
    assert!(
        web["updateService"].get("desiredCount").is_none(),
        "web leaves its count to autoscaling"
    );
}

#[test]
fn render_at_a_ref_reads_that_commit() {
    let repo = ConfigRepo::example_with(str::to_owned);
    let old = repo.head("staging");
    repo.commit("staging", "apps/api/taskdef.json", |t| {
        Some(t.unwrap().replace("api:1.4.2", "api:9.9.9"))
    });
    let path = repo.path();
    let at_old = fleetsync(&[
        "render",
        "--repo",
        path.to_str().unwrap(),
        "--env",
        "staging",
        "--ref",
        &old.to_string(),
    ]);
    let at_head = fleetsync(&[
        "render",
        "--repo",
        path.to_str().unwrap(),
        "--env",
        "staging",
    ]);
    assert!(at_old.stdout.contains("api:1.4.2") && !at_old.stdout.contains("api:9.9.9"));
    assert!(at_head.stdout.contains("api:9.9.9"));
}

/// Each broken copy is broken on the staging branch only: production (main) stays valid, and
/// the problem is found because environments are read from their branches, not a work tree.
fn broken(path: &str, edit: impl FnOnce(&str) -> String) -> Run {
    let repo = ConfigRepo::example_with(str::to_owned);
    repo.commit("staging", path, |t| Some(edit(t.unwrap())));
    validate(&repo)
}

#[test]
fn unknown_field_is_reported_with_its_position() {
    let run = broken("apps/api/app.yaml", |t| t.replace("rollout:", "rollouts:"));
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stdout,
        "apps/api/app.yaml:24:1: unknown field `rollouts` in an app; expected one of: apiVersion, kind, name, taskDefinition, service, rollout\n"
    );
    assert!(
        run.stderr.contains("invalid: staging") && run.stderr.contains("ok: production"),
        "{}",
        run.stderr
    );
}

#[test]
fn missing_child_path_is_reported_at_the_root_entry() {
    let run = broken("fleetsync.yaml", |t| {
        t.replace("path: apps/web", "path: apps/webb")
    });
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.starts_with(
            "fleetsync.yaml:16:11: app `web`: apps/webb/app.yaml does not exist at commit "
        ),
        "{}",
        run.stdout
    );
}

#[test]
fn dependency_on_an_unknown_app_and_a_cycle_are_reported() {
    let run = broken("fleetsync.yaml", |t| {
        t.replace("dependsOn: [api]", "dependsOn: [cache]")
    });
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stdout,
        "fleetsync.yaml:17:17: app `web` depends on unknown app `cache`; known apps: accounts, api, fleetsync-worker, web\n"
    );

    let run = broken("fleetsync.yaml", |t| {
        t.replace(
            "path: apps/accounts",
            "path: apps/accounts\n    dependsOn: [web]",
        )
    });
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stdout,
        "fleetsync.yaml:15:17: dependency cycle: accounts → web → api → accounts\n"
    );
}

#[test]
fn a_staging_app_naming_a_production_secret_is_refused_by_the_root_policy() {
    let run = broken("apps/api/taskdef.json", |t| {
        t.replace(
            "secret:${environment}/api/database-url",
            "secret:production/api/database-url",
        )
    });
    assert_eq!(run.code, 1, "{}", run.stderr);
    let expected = "`arn:aws:secretsmanager:us-east-1:123456789012:secret:production/api/database-url` is not allowed by policy.secrets of root `platform` (fleetsync.yaml:28:5 on the default branch); allowed: arn:aws:secretsmanager:*:123456789012:secret:staging/*, arn:aws:ssm:*:123456789012:parameter/staging/*\n";
    assert!(
        run.stdout.starts_with("apps/api/taskdef.json:") && run.stdout.ends_with(expected),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("ok: production"), "{}", run.stderr);
}

#[test]
fn a_branch_that_drops_the_policy_is_still_held_to_the_default_branch_policy() {
    let repo = ConfigRepo::example_with(str::to_owned);
    repo.commit("staging", "fleetsync.yaml", |t| {
        let t = t.unwrap();
        Some(t[..t.find("policy:").unwrap()].to_owned())
    });
    repo.commit("staging", "apps/web/taskdef.json", |t| {
        Some(
            t.unwrap()
                .replace("public.ecr.aws/acme/web:", "docker.io/someone/web:"),
        )
    });
    let run = validate(&repo);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stdout.starts_with(
            "fleetsync.yaml:1:1: this root's policy differs from the root's on the default branch"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(
            "`docker.io/someone/web:3.8.1` is not allowed by policy.images of root `platform`"
        ),
        "{}",
        run.stdout
    );
}

#[test]
fn a_repo_without_a_policy_validates_with_one_warning() {
    let repo = ConfigRepo::example_with(|text| match text.find("policy:") {
        Some(at) if text.contains("kind: Root") => text[..at].to_owned(),
        _ => text.to_owned(),
    });
    let run = validate(&repo);
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{}", run.stderr);
    assert_eq!(
        run.stderr
            .matches("warning: fleetsync.yaml declares no `policy`")
            .count(),
        1,
        "{}",
        run.stderr
    );
    let governed = validate(&ConfigRepo::example_with(str::to_owned));
    assert!(!governed.stderr.contains("warning"), "{}", governed.stderr);
}

#[test]
fn not_a_repository_is_an_error_not_a_problem_list() {
    let dir = tempfile::tempdir().unwrap();
    let run = fleetsync(&["validate", "--repo", dir.path().to_str().unwrap()]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.starts_with("error: cannot open git repository"),
        "{}",
        run.stderr
    );
}

/// An app kept in another repository is read from a local clone named with `--source`; without
/// one, validate says which flag is missing.
#[test]
fn validate_and_render_read_apps_of_other_repos_from_local_clones() {
    let config = ConfigRepo::example_with(str::to_owned);
    let team = ConfigRepo::example_with(|t| t.replace("web:3.8.1", "web:4.0.0"));
    let root = |t: Option<&str>| {
        Some(t.unwrap().replace(
            "    path: apps/web\n",
            "    source: { repo: team, path: apps/web, ref: main }\n",
        ))
    };
    config.commit("staging", "fleetsync.yaml", root);
    config.commit("main", "fleetsync.yaml", root);
    let repo = config.path();
    let repo = repo.to_str().unwrap();

    let run = fleetsync(&["validate", "--repo", repo, "--env", "staging"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("fleetsync.yaml:16:21: app `web`: it is read from repo `team`; pass --source team=PATH to a clone of it"),
        "{}",
        run.stdout
    );

    let source = format!("team={}", team.path().display());
    let run = fleetsync(&["validate", "--repo", repo, "--source", &source]);
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{}", run.stderr);
    let run = fleetsync(&[
        "render", "--repo", repo, "--env", "staging", "--source", &source,
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let state: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let web = app_named(&state, "web");
    assert_eq!(
        web["registerTaskDefinition"]["containerDefinitions"][0]["image"],
        "public.ecr.aws/acme/web:4.0.0"
    );
    assert_eq!(
        state["sources"],
        serde_json::json!([{"repo": "team", "reference": "main", "commit": team.head("main").to_string()}])
    );
}

#[test]
fn render_and_validate_show_a_preview_as_previews_on_the_default_branch_define_it() {
    let repo = ConfigRepo::example_with(str::to_owned);
    let path = repo.path();
    let path = path.to_str().unwrap();
    let run = fleetsync(&[
        "render",
        "--repo",
        path,
        "--preview",
        "7",
        "--ref",
        "staging",
    ]);
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert!(run.stderr.contains("sets no `previews`"), "{}", run.stderr);

    repo.commit("main", "fleetsync.yaml", |t| {
        Some(format!(
            "{}previews: {{ from: staging, cluster: previews }}\n",
            t.unwrap()
        ))
    });
    let run = fleetsync(&[
        "render",
        "--repo",
        path,
        "--preview",
        "7",
        "--ref",
        "staging",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let state: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(state["environment"], "staging");
    let api = app_named(&state, "api");
    assert_eq!(api["cluster"], "previews");
    assert_eq!(api["preview"], 7);
    assert_eq!(api["createService"]["serviceName"], "api-pr-7");
    assert_eq!(api["createService"]["desiredCount"], 1);
    assert_eq!(api["registerTaskDefinition"]["family"], "staging-api-pr-7");

    // A preview cluster that is an environment's, on the default branch: validate says so.
    repo.commit("main", "fleetsync.yaml", |t| {
        Some(
            t.unwrap()
                .replace("cluster: previews }", "cluster: production }"),
        )
    });
    let run = validate(&repo);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains(
            "`previews.cluster` is `production`, which environment `production` is bound to"
        ),
        "{}",
        run.stdout
    );
}

#[test]
fn validate_refuses_previews_with_ingress_past_what_one_load_balancer_takes() {
    let repo = ConfigRepo::example_with(str::to_owned);
    let listener = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/previews/1/2";
    repo.commit("main", "fleetsync.yaml", |t| {
        Some(format!(
            "{}previews:\n  from: staging\n  cluster: previews\n  maxActive: 40\n  ingress: {{ listenerArn: {listener}, host: \"${{app}}-${{preview}}.preview.example.com\" }}\n",
            t.unwrap()
        ))
    });
    for app in ["accounts", "api", "web"] {
        repo.commit("staging", &format!("apps/{app}/app.yaml"), |t| {
            Some(t.unwrap().replacen(
                "service:\n",
                &format!("service:\n  loadBalancers: [{{ targetGroupArn: arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/staging-{app}/1, containerName: {app}, containerPort: 8080 }}]\n"),
                1,
            ))
        });
    }
    let run = validate(&repo);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(
            "3 apps with a load balancer × `previews.maxActive` 40 = 120 target groups and listener rules, past the 100"
        ),
        "{}",
        run.stdout
    );
    // Within the quotas, render shows where a preview of api would be reached.
    repo.commit("main", "fleetsync.yaml", |t| {
        Some(t.unwrap().replace("maxActive: 40", "maxActive: 30"))
    });
    assert_eq!(validate(&repo).code, 0);
    let path = repo.path();
    let args = [
        "render",
        "--repo",
        path.to_str().unwrap(),
        "--preview",
        "7",
        "--ref",
        "staging",
    ];
    let run = fleetsync(&args);
    let state: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_default();
    assert_eq!(
        app_named(&state, "api")["ingress"]["host"],
        "api-pr-7.preview.example.com",
        "{}{}",
        run.stdout,
        run.stderr
    );
}
