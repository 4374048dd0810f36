//! `vars:` on roots, and the task definition rules ECS would refuse at deploy time.

use super::*;

#[test]
fn root_vars_reach_nested_apps_and_a_nested_root_may_override_them() {
    let root = ROOT
        .replace("apps:\n", "vars:\n  registry: \"123.dkr.ecr/${environment}\"\n  tier: \"1\"\napps:\n  - { name: team, path: team }\n");
    let team = "apiVersion: fleetsync/v1\nkind: Root\nname: team\nvars: { tier: \"2\" }\napps:\n  - { name: ledger, path: ledger }\n";
    let state = resolve(
        &repo()
            .with("fleetsync.yaml", &root)
            .with(
                "apps/api/app.yaml",
                &app("api", "${registry}/api:${short_revision}-${tier}"),
            )
            .with("team/app.yaml", team)
            .with(
                "team/ledger/app.yaml",
                &app("ledger", "${registry}/ledger:${tier}"),
            ),
        DEFAULT_ROOT,
        "staging",
        "c0ffee1234",
    )
    .unwrap();
    let image = |name: &str| {
        let app = state.apps.iter().find(|a| a.name == name).unwrap();
        app.register_task_definition["containerDefinitions"][0]["image"].clone()
    };
    assert_eq!(image("api"), "123.dkr.ecr/staging/api:c0ffee1-1");
    assert_eq!(image("ledger"), "123.dkr.ecr/staging/ledger:2");
}

#[test]
fn vars_cannot_redefine_fleetsyncs_own_and_undefined_ones_are_located() {
    let root = ROOT.replace(
        "apps:\n",
        "vars:\n  environment: prod\n  9lives: x\napps:\n",
    );
    assert_eq!(
        problems(&repo().with("fleetsync.yaml", &root)),
        [
            "fleetsync.yaml:7:3: `environment` is set by fleetsync; pick another variable name",
            "fleetsync.yaml:8:3: variable name `9lives` must be letters, digits and `_`, not starting with a digit",
        ]
    );
    let root = ROOT.replace("apps:\n", "vars: { tier: \"1\" }\napps:\n");
    assert_eq!(
        problems(
            &repo()
                .with("fleetsync.yaml", &root)
                .with("apps/db/app.yaml", &app("db", "${registry}/db:1"))
        ),
        [
            "apps/db/app.yaml:6:28: undefined variable `${registry}`; defined: ${environment}, ${cluster}, ${revision}, ${short_revision}, ${preview}, ${tier}, ${app}"
        ]
    );
}

/// An app whose task definition has `td` (top-level YAML lines) and whose service has `service`.
fn sized(td: &str, service: &str) -> String {
    format!(
        "apiVersion: fleetsync/v1\nkind: App\nname: db\ntaskDefinition:\n{td}  containerDefinitions: [{{ name: m, image: x }}]\nservice:\n  desiredCount: 1\n{service}"
    )
}

fn db_problems(text: &str) -> Vec<String> {
    problems(&repo().with("apps/db/app.yaml", text))
}

const NETWORK: &str = "  networkConfiguration: { awsvpcConfiguration: { subnets: [s] } }\n";

#[test]
fn fargate_sizes_ecs_refuses_are_refused_with_the_sizes_it_takes() {
    let fargate = "  requiresCompatibilities: [FARGATE]\n  networkMode: awsvpc\n";
    let ok = sized(
        &format!("{fargate}  cpu: \"1 vCPU\"\n  memory: \"3 GB\"\n"),
        NETWORK,
    );
    resolve(
        &repo().with("apps/db/app.yaml", &ok),
        DEFAULT_ROOT,
        "staging",
        "c",
    )
    .unwrap();
    assert_eq!(
        db_problems(&sized(
            &format!("{fargate}  cpu: \"256\"\n  memory: \"4096\"\n"),
            NETWORK
        )),
        [
            "apps/db/app.yaml:8:11: Fargate refuses memory \"4096\" with cpu \"256\"; with that cpu it takes 512 to 2048 MiB (512, 1024, 2048)"
        ]
    );
    assert_eq!(
        db_problems(&sized(
            &format!("{fargate}  cpu: 300\n  memory: 512\n"),
            NETWORK
        )),
        [
            "apps/db/app.yaml:7:8: Fargate has no task size with cpu 300; use 256, 512, 1024, 2048, 4096, 8192 or 16384"
        ]
    );
    assert_eq!(
        db_problems(&sized(
            "  requiresCompatibilities: [FARGATE]\n",
            "  launchType: FARGATE\n"
        )),
        [
            "apps/db/app.yaml:5:3: Fargate tasks need `networkMode: awsvpc` in the task definition",
            "apps/db/app.yaml:5:3: Fargate tasks need task-level `cpu` and `memory` in the task definition",
        ]
    );
}

#[test]
fn awsvpc_without_a_network_configuration_is_refused_at_the_service() {
    assert_eq!(
        db_problems(&sized("  networkMode: awsvpc\n", "")),
        [
            "apps/db/app.yaml:8:3: the task definition uses `networkMode: awsvpc`, so the service needs `networkConfiguration.awsvpcConfiguration` with its subnets and security groups"
        ]
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn tree(apps: &[(String, String, u8)], order: &[usize]) -> Repo {
        let mut root = String::from(
            "apiVersion: fleetsync/v1\nkind: Root\nname: p\nenvironments:\n  staging: { branch: staging, cluster: c }\napps:\n",
        );
        let mut repo = Repo(HashMap::new());
        for &i in order {
            let (name, image, count) = &apps[i];
            root.push_str(&format!("  - {{ name: {name}, path: apps/{name} }}\n"));
            let text =
                app(name, image).replace("desiredCount: 2", &format!("desiredCount: {count}"));
            repo = repo.with(&format!("apps/{name}/app.yaml"), &text);
        }
        repo.with(DEFAULT_ROOT, &root)
    }

    fn apps() -> impl Strategy<Value = (Vec<(String, String, u8)>, Vec<usize>)> {
        prop::collection::btree_map("[a-z]{1,8}", ("[a-z0-9.:/-]{1,20}", 0u8..10), 1..8)
            .prop_flat_map(|map| {
                let apps: Vec<_> = map.into_iter().map(|(n, (i, c))| (n, i, c)).collect();
                let order: Vec<usize> = (0..apps.len()).collect();
                (Just(apps), Just(order).prop_shuffle())
            })
    }

    proptest! {
        /// The same commit resolves to the same bytes, and the order apps are listed in the
        /// root changes no hash: a reordering must not redeploy anything.
        #[test]
        fn resolving_is_deterministic_and_blind_to_listing_order((apps, order) in apps()) {
            let listed: Vec<usize> = (0..apps.len()).collect();
            let a = resolve(&tree(&apps, &listed), DEFAULT_ROOT, "staging", "c1").unwrap();
            let again = resolve(&tree(&apps, &listed), DEFAULT_ROOT, "staging", "c1").unwrap();
            prop_assert_eq!(serde_json::to_vec(&a).unwrap(), serde_json::to_vec(&again).unwrap());
            let shuffled = resolve(&tree(&apps, &order), DEFAULT_ROOT, "staging", "c1").unwrap();
            for app in &a.apps {
                let same = shuffled.apps.iter().find(|s| s.name == app.name).unwrap();
                prop_assert_eq!(&app.spec_hash, &same.spec_hash);
                prop_assert_eq!(&app.task_definition_hash, &same.task_definition_hash);
                prop_assert_eq!(
                    serde_json::to_vec(app).unwrap(),
                    serde_json::to_vec(same).unwrap()
                );
            }
        }
    }
}

#[test]
fn variables_cannot_grow_a_value_past_what_ecs_takes() {
    let big = "x".repeat(4096);
    let root = ROOT.replace(
        "apps:\n",
        &format!("vars: {{ a: \"{big}\" }}\napps:\n  - {{ name: team, path: team }}\n"),
    );
    let team = format!(
        "apiVersion: fleetsync/v1\nkind: Root\nname: team\nvars: {{ a: \"{}\" }}\napps: []\n",
        "${a}".repeat(20)
    );
    let found = problems(
        &repo()
            .with("fleetsync.yaml", &root)
            .with("team/app.yaml", &team),
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("team/app.yaml:4:")
            && found[0].contains("longer than 65536 bytes once expanded"),
        "{found:?}"
    );
}

#[test]
fn more_tags_than_ecs_leaves_room_for_are_refused() {
    let tags: Vec<String> = (0..40)
        .map(|i| format!("{{ key: k{i}, value: v }}"))
        .collect();
    let text = app("db", "db:1").replace(
        "desiredCount: 2\n",
        &format!("desiredCount: 2\n  tags: [{}]\n", tags.join(", ")),
    );
    let found = db_problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("40 tags, but at most 33 fit"),
        "{found:?}"
    );
}

/// ECS refuses a whole CreateService whose tags hold a character its Tag pattern does not take;
/// the author is told which tag, where, once variables are substituted.
#[test]
fn a_tag_ecs_would_refuse_is_located_before_any_deploy() {
    let text = app("db", "db:1").replace(
        "desiredCount: 2\n",
        "desiredCount: 2\n  tags: [{ key: team, value: \"payments (EU)\" }, { key: ok, value: \"a b:c/d=e+f-g@h_i.j\" }]\n",
    );
    assert_eq!(
        db_problems(&text),
        [
            "apps/db/app.yaml:9:30: tag value \"payments (EU)\" has '(', which ECS does not take: only letters, digits, spaces and _ . : / = + - @"
        ]
    );
}

#[test]
fn text_from_outside_becomes_a_tag_value_ecs_takes() {
    use crate::resolve::tag;
    assert_eq!(
        tag::value("Fix login (#42), again\n\nbody"),
        "Fix login 42 again body"
    );
    assert_eq!(tag::value("  naïve  ünïcode\t"), "naïve ünïcode");
    assert_eq!(tag::value("AWS:root"), "AWS_root");
    let long = tag::value(&"é".repeat(300));
    assert_eq!(long.chars().count(), tag::MAX_VALUE_CHARS);
    for text in ["\u{1b}[31mred", "a\u{0}b", "👍 ship it", "देवनागरी"] {
        assert!(tag::value(text).chars().all(tag::is_allowed), "{text}");
    }
}

/// Rules whose breach only the queue or ECS would show, long after the push was answered: a
/// watch SQS cannot hold a message for, and deployments handed to another tool.
#[test]
fn a_rollout_sqs_cannot_hold_and_a_foreign_deployment_controller_are_located() {
    let long = app("api", "api:1") + "rollout: { timeout: 13h }\n";
    assert_eq!(
        problems(&repo().with("apps/api/app.yaml", &long)),
        [
            "apps/api/app.yaml:9:21: `rollout.timeout` may be at most 12h: SQS hides a job from other workers for at most 12 hours while one watches its rollout"
        ]
    );
    let foreign = app("api", "api:1") + "  deploymentController: { type: CODE_DEPLOY }\n";
    assert_eq!(
        problems(&repo().with("apps/api/app.yaml", &foreign)),
        [
            "apps/api/app.yaml:9:25: `deploymentController.type: CODE_DEPLOY` hands deployments to another tool, and fleetsync deploys through ECS rolling updates: remove it or set it to ECS"
        ]
    );
    let fine =
        app("api", "api:1") + "  deploymentController: { type: ECS }\nrollout: { timeout: 12h }\n";
    assert!(
        resolve(
            &repo().with("apps/api/app.yaml", &fine),
            DEFAULT_ROOT,
            "staging",
            "c0ffee"
        )
        .is_ok()
    );
}
