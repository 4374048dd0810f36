//! `<app>/env/<environment>.yaml` overlays.

use super::*;

const TWO_ENVS: &str = "\
apiVersion: fleetsync/v1
kind: Root
name: platform
environments:
  staging: { branch: staging, cluster: staging-cluster }
  production: { branch: main, cluster: production-cluster }
apps:
  - name: api
    path: apps/api
";

const API: &str = "\
apiVersion: fleetsync/v1
kind: App
name: api
taskDefinition: taskdef.yaml
service:
  desiredCount: 2
  healthCheckGracePeriodSeconds: 30
";

const TASKDEF: &str = "\
cpu: \"256\"
containerDefinitions:
  - name: api
    image: api:1
    environment:
      - { name: LOG_LEVEL, value: info }
      - { name: REGION, value: eu-west-1 }
  - name: proxy
    image: nginx:1
";

fn overlaid(overlay: &str) -> Repo {
    Repo(HashMap::new())
        .with(DEFAULT_ROOT, TWO_ENVS)
        .with("apps/api/app.yaml", API)
        .with("apps/api/taskdef.yaml", TASKDEF)
        .with("apps/api/env/production.yaml", overlay)
}

const PRODUCTION: &str = "\
service:
  desiredCount: 6
  healthCheckGracePeriodSeconds: null
taskDefinition:
  cpu: \"1024\"
  containerDefinitions:
    - name: api
      environment:
        - { name: LOG_LEVEL, value: warn }
        - { name: TIER, value: \"${environment}\" }
";

fn api(repo: &Repo, env: &str) -> DesiredApp {
    resolve(repo, DEFAULT_ROOT, env, "c")
        .unwrap()
        .apps
        .remove(0)
}

#[test]
fn an_overlay_patches_its_environment_only_merging_named_lists_by_name() {
    let repo = overlaid(PRODUCTION);
    let production = api(&repo, "production");
    assert_eq!(production.create_service["desiredCount"], 6);
    assert!(
        production
            .create_service
            .get("healthCheckGracePeriodSeconds")
            .is_none(),
        "null removes a field"
    );
    let td = &production.register_task_definition;
    assert_eq!(td["cpu"], "1024");
    assert_eq!(
        td["containerDefinitions"][0]["image"], "api:1",
        "untouched fields stay"
    );
    assert_eq!(
        td["containerDefinitions"][0]["environment"],
        serde_json::json!([
            {"name": "LOG_LEVEL", "value": "warn"},
            {"name": "REGION", "value": "eu-west-1"},
            {"name": "TIER", "value": "production"},
        ])
    );
    assert_eq!(td["containerDefinitions"][1]["image"], "nginx:1");

    let staging = api(&repo, "staging");
    let without = api(
        &overlaid("").without("apps/api/env/production.yaml"),
        "staging",
    );
    assert_eq!(
        staging.spec_hash, without.spec_hash,
        "staging has no overlay"
    );
    assert_eq!(staging.create_service["desiredCount"], 2);
}

#[test]
fn problems_inside_an_overlay_are_located_in_the_overlay() {
    let found = problems_in(&overlaid("service:\n  desiredCount: 6\nreplicas: 3\n"));
    assert_eq!(
        found,
        [
            "apps/api/env/production.yaml:3:1: unknown field `replicas` in an environment overlay; expected one of: taskDefinition, service, rollout"
        ]
    );
    let found = problems_in(&overlaid(
        "taskDefinition:\n  containerDefinitions:\n    - name: api\n      image: \"api:${tag}\"\n",
    ));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("apps/api/env/production.yaml:4:14: undefined variable `${tag}`"),
        "{found:?}"
    );
    let found = problems_in(&overlaid("service:\n  clusterName: x\n"));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("apps/api/env/production.yaml:2:3: unknown field `clusterName`"),
        "{found:?}"
    );
}

fn problems_in(repo: &Repo) -> Vec<String> {
    match resolve(repo, DEFAULT_ROOT, "production", "c") {
        Err(Error::Invalid(p)) => p.iter().map(Problem::to_string).collect(),
        other => panic!("expected problems, got {other:?}"),
    }
}
