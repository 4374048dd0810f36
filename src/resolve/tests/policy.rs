//! A root's policy bounds its apps and the roots nested in it.

use super::*;

const ACCOUNT: &str = "arn:aws:iam::123456789012";

fn policy() -> String {
    format!(
        "policy:
  taskRoles: [\"{ACCOUNT}:role/${{environment}}-app-*\"]
  executionRoles: [\"{ACCOUNT}:role/ecs-exec-${{environment}}\"]
  images: [\"123456789012.dkr.ecr.*.amazonaws.com/*\"]
  secrets: [\"arn:aws:secretsmanager:*:123456789012:secret:${{environment}}/*\"]
  clusters: [\"${{environment}}-*\"]
  requiredTags: [team]
  launchTypes: [FARGATE]
  privileged: false
"
    )
}

/// An app that satisfies `policy()` in staging, with `extra` lines added to its container.
fn good_app(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: fleetsync/v1
kind: App
name: {name}
taskDefinition:
  taskRoleArn: \"{ACCOUNT}:role/staging-app-{name}\"
  executionRoleArn: \"{ACCOUNT}:role/ecs-exec-staging\"
  containerDefinitions:
    - name: main
      image: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/{name}:1
      secrets:
        - {{ name: DB_PASSWORD, valueFrom: \"arn:aws:secretsmanager:eu-west-1:123456789012:secret:staging/db\" }}
{extra}  networkMode: awsvpc
  cpu: \"256\"
  memory: \"512\"
service:
  launchType: FARGATE
  tags: [{{ key: team, value: payments }}]
  networkConfiguration: {{ awsvpcConfiguration: {{ subnets: [subnet-1] }} }}
"
    )
}

fn governed() -> Repo {
    repo()
        .with("fleetsync.yaml", &format!("{ROOT}{}", policy()))
        .with("apps/db/app.yaml", &good_app("db", ""))
        .with("apps/api/app.yaml", &good_app("api", ""))
}

fn problems_with_app(text: &str) -> Vec<String> {
    problems(&governed().with("apps/api/app.yaml", text))
}

/// `text` as staging's api resolves under the policy.
fn allowed(text: &str) {
    let repo = governed().with("apps/api/app.yaml", text);
    if let Err(e) = resolve(&repo, DEFAULT_ROOT, "staging", "c0ffee") {
        panic!("refused: {e}");
    }
}

#[test]
fn apps_inside_the_policy_resolve_as_without_one() {
    let state = resolve(&governed(), DEFAULT_ROOT, "staging", "c0ffee").unwrap();
    assert_eq!(state.apps.len(), 2);
}

#[test]
fn a_staging_app_naming_a_production_role_is_refused_with_the_rule_and_its_root() {
    let text = good_app("api", "").replace("role/staging-app-api", "role/production-app-api");
    assert_eq!(
        problems_with_app(&text),
        [format!(
            "apps/api/app.yaml:5:16: `{ACCOUNT}:role/production-app-api` is not allowed by policy.taskRoles of root `platform` (fleetsync.yaml:13:14); allowed: {ACCOUNT}:role/staging-app-*"
        )]
    );
}

#[test]
fn each_rule_refuses_what_it_does_not_allow() {
    let cases = [
        (
            "role/ecs-exec-staging",
            "role/ecs-exec-production",
            "policy.executionRoles",
        ),
        (
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com/api:1",
            "docker.io/library/api:1",
            "policy.images",
        ),
        (
            "secret:staging/db",
            "secret:production/db",
            "policy.secrets",
        ),
        (
            "launchType: FARGATE",
            "launchType: EC2",
            "policy.launchTypes",
        ),
        (
            "tags: [{ key: team, value: payments }]",
            "tags: []",
            "policy.requiredTags",
        ),
    ];
    for (from, to, rule) in cases {
        let text = good_app("api", "").replace(from, to);
        let found = problems_with_app(&text);
        assert_eq!(found.len(), 1, "{rule}: {found:?}");
        assert!(found[0].contains(rule), "{rule}: {found:?}");
        assert!(
            found[0].contains("of root `platform` (fleetsync.yaml:"),
            "{found:?}"
        );
    }
}

#[test]
fn privileged_containers_are_refused_when_the_policy_says_so() {
    let found = problems_with_app(&good_app("api", "      privileged: true\n"));
    assert_eq!(
        found,
        [
            "apps/api/app.yaml:12:19: a privileged container is not allowed by policy.privileged of root `platform` (fleetsync.yaml:20:15)"
        ]
    );
}

#[test]
fn a_cluster_outside_the_policy_fails_the_environment_once() {
    let root = format!("{ROOT}{}", policy())
        .replace("cluster: staging-cluster", "cluster: production-main");
    let found = problems(&governed().with("fleetsync.yaml", &root));
    assert_eq!(
        found,
        [
            "fleetsync.yaml:5:3: cluster `production-main` is not allowed by policy.clusters of root `platform` (fleetsync.yaml:17:13); allowed: staging-*"
        ]
    );
}

#[test]
fn a_plain_credential_is_refused_even_without_a_policy() {
    let text = app("api", "api:1").replace(
        "memory: 512 }",
        "memory: 512, environment: [{ name: DB_PASSWORD, value: hunter2 }, { name: LOG_LEVEL, value: info }] }",
    );
    let found = problems(&repo().with("apps/api/app.yaml", &text));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("apps/api/app.yaml:6:"), "{found:?}");
    assert!(
        found[0].contains("`DB_PASSWORD` looks like a credential (PASSWORD) but has a plain value")
            && found[0].contains("move it to `secrets` with `valueFrom`"),
        "{found:?}"
    );
    assert!(
        !found[0].contains("hunter2"),
        "the value itself is never repeated"
    );
}

#[test]
fn credential_names_are_configurable_on_the_top_root() {
    let text = app("api", "api:1").replace(
        "memory: 512 }",
        "memory: 512, environment: [{ name: TOKEN_TTL, value: \"300\" }, { name: SIGNING_PEPPER, value: x }] }",
    );
    let root = format!("{ROOT}policy:\n  credentialNames: [PEPPER]\n");
    let found = problems(
        &repo()
            .with("fleetsync.yaml", &root)
            .with("apps/api/app.yaml", &text),
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("`SIGNING_PEPPER` looks like a credential (PEPPER)"),
        "{found:?}"
    );
}

const TEAM: &str = "\
apiVersion: fleetsync/v1
kind: Root
name: payments
apps:
  - name: ledger
    path: ledger
";

fn nested(team_policy: &str) -> Repo {
    let root = format!("{ROOT}{}", policy()).replace(
        "apps:\n",
        "apps:\n  - name: payments\n    path: teams/payments\n",
    );
    governed()
        .with("fleetsync.yaml", &root)
        .with("teams/payments/app.yaml", &format!("{TEAM}{team_policy}"))
        .with("teams/payments/ledger/app.yaml", &good_app("ledger", ""))
}

#[test]
fn a_nested_root_inherits_and_may_narrow_the_policy() {
    let narrower =
        format!("policy:\n  taskRoles: [\"{ACCOUNT}:role/${{environment}}-app-ledger\"]\n");
    resolve(&nested(&narrower), DEFAULT_ROOT, "staging", "c").unwrap();
    // Inherited: the team's app is held to the top root's rules without restating them.
    let found = problems(&nested("").with(
        "teams/payments/ledger/app.yaml",
        &good_app("ledger", "").replace("staging/db", "production/db"),
    ));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("teams/payments/ledger/app.yaml:"),
        "{found:?}"
    );
    assert!(
        found[0].contains("policy.secrets of root `platform`"),
        "{found:?}"
    );
    // Narrowed: the team's own rule binds its app even where the parent would allow it.
    let found = problems(&nested(&narrower).with(
        "teams/payments/ledger/app.yaml",
        &good_app("ledger", "").replace("staging-app-ledger", "staging-app-other"),
    ));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("policy.taskRoles of root `payments` (teams/payments/app.yaml:8:14)"),
        "{found:?}"
    );
}

#[test]
fn a_nested_root_that_widens_its_parent_is_refused() {
    let wider = format!(
        "policy:\n  taskRoles: [\"{ACCOUNT}:role/*\"]\n  launchTypes: [FARGATE, EC2]\n  privileged: true\n"
    );
    let found = problems(&nested(&wider));
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(
        found
            .iter()
            .all(|p| p.starts_with("teams/payments/app.yaml:")
                && p.contains("of root `platform` (fleetsync.yaml:")
                && p.ends_with("a nested root may narrow its parent's policy, never widen it")),
        "{found:?}"
    );
    assert!(
        found[0].contains(&format!("policy.taskRoles `{ACCOUNT}:role/*` widens")),
        "{found:?}"
    );
    assert!(
        found[1].contains("policy.launchTypes `EC2` widens"),
        "{found:?}"
    );
    assert!(
        found[2].contains("policy.privileged: true widens"),
        "{found:?}"
    );
}

#[test]
fn a_policy_pattern_with_an_unknown_variable_is_an_error() {
    let root = format!("{ROOT}policy:\n  images: [\"${{team}}/*\"]\n");
    let found = problems(&repo().with("fleetsync.yaml", &root));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("fleetsync.yaml:13:12: undefined variable `${team}`"),
        "{found:?}"
    );
}

#[test]
fn values_are_checked_as_ecs_receives_them_with_every_variable_expanded() {
    // `${app}` is `api` here: the checked image must be the deployed one.
    let sneaky = good_app("api", "").replace(
        "image: 123456789012.dkr.ecr.",
        "image: 123456789012${app}.dkr.ecr.",
    );
    let found = problems_with_app(&sneaky);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("`123456789012api.dkr.ecr.eu-west-1.amazonaws.com/api:1` is not allowed by policy.images"),
        "{found:?}"
    );
    let fine = good_app("api", "").replace("amazonaws.com/api:1", "amazonaws.com/${app}:2");
    allowed(&fine);
}

#[test]
fn an_image_pattern_cannot_be_satisfied_by_another_registry_host() {
    let escape = good_app("api", "").replace(
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/api:1",
        "123456789012.dkr.ecr.evil.example/x.amazonaws.com/api:1",
    );
    let found = problems_with_app(&escape);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("is not allowed by policy.images"),
        "{found:?}"
    );
}

#[test]
fn privileged_false_also_refuses_host_namespaces_and_admin_capabilities() {
    let text = good_app(
        "api",
        "      linuxParameters: { capabilities: { add: [NET_BIND_SERVICE, SYS_ADMIN] } }\n",
    )
    .replace(
        "  containerDefinitions:",
        "  pidMode: host\n  containerDefinitions:",
    );
    let found = problems_with_app(&text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].contains("pidMode: host is not allowed by policy.privileged"),
        "{found:?}"
    );
    assert!(
        found[1].contains("capability SYS_ADMIN is not allowed by policy.privileged"),
        "{found:?}"
    );
}

#[test]
fn a_launch_type_rule_needs_the_service_to_say_its_launch_type() {
    let found = problems_with_app(&good_app("api", "").replace("  launchType: FARGATE\n", ""));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("allows only FARGATE, so the service must say which: set `launchType` or `capacityProviderStrategy`"),
        "{found:?}"
    );
    let spot = good_app("api", "").replace(
        "launchType: FARGATE",
        "capacityProviderStrategy: [{ capacityProvider: FARGATE_SPOT, weight: 1 }]",
    );
    allowed(&spot);
}

#[test]
fn a_nested_root_cannot_replace_the_default_credential_names() {
    // The top root has no policy at all: the defaults still hold below it.
    let root = ROOT.replace(
        "apps:\n",
        "apps:\n  - name: payments\n    path: teams/payments\n",
    );
    let leaky = app("ledger", "l:1").replace(
        "memory: 512 }",
        "memory: 512, environment: [{ name: DB_PASSWORD, value: x }, { name: XYZ_KEY, value: y }] }",
    );
    let found = problems(
        &repo()
            .with("fleetsync.yaml", &root)
            .with(
                "teams/payments/app.yaml",
                &format!("{TEAM}policy:\n  credentialNames: [XYZ]\n"),
            )
            .with("teams/payments/ledger/app.yaml", &leaky),
    );
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].contains("`DB_PASSWORD` looks like a credential (PASSWORD)"),
        "{found:?}"
    );
    assert!(
        found[1].contains("`XYZ_KEY` looks like a credential (XYZ)"),
        "{found:?}"
    );
}
