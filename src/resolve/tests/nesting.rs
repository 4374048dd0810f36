//! Roots nested in roots: an app of apps of apps.

use super::*;

const TEAM: &str = "\
apiVersion: fleetsync/v1
kind: Root
name: payments
apps:
  - name: ledger
    path: ledger
  - name: billing
    path: ./billing/
    dependsOn: [ledger, db]
";

fn nested() -> Repo {
    let root = ROOT.replace(
        "apps:\n",
        "apps:\n  - name: payments\n    path: teams/payments\n",
    );
    repo()
        .with("fleetsync.yaml", &root)
        .with("teams/payments/app.yaml", TEAM)
        .with("teams/payments/ledger/app.yaml", &app("ledger", "ledger:1"))
        .with(
            "teams/payments/billing/app.yaml",
            &app("billing", "billing:${environment}"),
        )
}

#[test]
fn a_nested_root_adds_its_apps_to_the_environment_with_paths_from_its_directory() {
    let state = resolve(&nested(), DEFAULT_ROOT, "staging", "c0ffee").unwrap();
    let names: Vec<_> = state.apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["ledger", "billing", "db", "api"]);
    let billing = &state.apps[1];
    assert_eq!(
        billing.register_task_definition["containerDefinitions"][0]["image"], "billing:staging",
        "the nested root's apps get the environment of the top root"
    );
    assert_eq!(
        billing.depends_on,
        ["ledger", "db"],
        "dependsOn reaches across roots"
    );
    assert_eq!(billing.create_service["cluster"], "staging-cluster");
}

#[test]
fn a_nested_root_cannot_declare_environments() {
    let team = TEAM.replace(
        "apps:\n",
        "environments:\n  production: { branch: main, cluster: prod }\napps:\n",
    );
    let found = problems(&nested().with("teams/payments/app.yaml", &team));
    assert_eq!(
        found,
        [
            "teams/payments/app.yaml:5:3: a nested root inherits the environments of the root above it; remove `environments`"
        ]
    );
}

#[test]
fn app_names_stay_unique_across_nested_roots() {
    let team = TEAM.replace(
        "name: ledger\n    path: ledger",
        "name: db\n    path: ledger",
    );
    let found = problems(
        &nested()
            .with("teams/payments/app.yaml", &team)
            .with("teams/payments/ledger/app.yaml", &app("db", "ledger:1")),
    );
    assert!(
        found.iter().any(|p| p.starts_with("fleetsync.yaml:")
            && p.contains("app `db` is listed twice (first at teams/payments/app.yaml:5:11)")),
        "{found:?}"
    );
}

#[test]
fn a_root_that_lists_itself_is_a_cycle_with_its_chain() {
    let team = TEAM.replace("path: ledger", "path: .");
    let found = problems(&nested().with("teams/payments/app.yaml", &team));
    assert_eq!(
        found,
        [
            "teams/payments/app.yaml:6:11: nesting cycle: fleetsync.yaml → teams/payments/app.yaml → teams/payments/app.yaml"
        ]
    );
}

/// A chain of `levels` roots, each listing the next one directory down, above `top`'s apps.
fn chain(top: &str, levels: usize) -> Repo {
    let mut repo = repo().with(
        "fleetsync.yaml",
        &top.replace("apps:\n", "apps:\n  - name: l1\n    path: l\n"),
    );
    let mut dir = "l".to_owned();
    for level in 1..=levels {
        let next = level + 1;
        repo = repo.with(
            &format!("{dir}/app.yaml"),
            &format!("apiVersion: fleetsync/v1\nkind: Root\nname: l{level}\napps:\n  - {{ name: l{next}, path: l }}\n"),
        );
        dir.push_str("/l");
    }
    repo.with(
        &format!("{dir}/app.yaml"),
        &app(&format!("l{}", levels + 1), "leaf:1"),
    )
}

#[test]
fn nesting_depth_is_bounded() {
    let found = problems(&chain(ROOT, DEFAULT_MAX_NESTING + 1));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains(&format!(
            "roots nest deeper than {DEFAULT_MAX_NESTING} levels: fleetsync.yaml → l/app.yaml → "
        )),
        "{found:?}"
    );
    assert!(found[0].ends_with("raise `maxNesting` on the top root if this is meant"));
}

#[test]
fn max_nesting_on_the_top_root_sets_the_bound() {
    let deeper = ROOT.replace("apps:\n", "maxNesting: 12\napps:\n");
    let state = resolve(&chain(&deeper, 12), DEFAULT_ROOT, "staging", "c0ffee").unwrap();
    assert!(
        state.apps.iter().any(|a| a.name == "l13"),
        "twelve nested roots resolve under maxNesting 12"
    );

    let shallower = ROOT.replace("apps:\n", "maxNesting: 2\napps:\n");
    let found = problems(&chain(&shallower, 3));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("roots nest deeper than 2 levels: fleetsync.yaml → l/app.yaml → l/l/app.yaml → l/l/l/app.yaml"), "{found:?}");
}

#[test]
fn max_nesting_is_bounded_and_only_on_the_top_root() {
    let huge = ROOT.replace("apps:\n", "maxNesting: 1000\napps:\n");
    let found = problems(&repo().with("fleetsync.yaml", &huge));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].ends_with(&format!(
            "`maxNesting` must be a whole number from 0 (no nested roots) to {MAX_NESTING_LIMIT}"
        )),
        "{found:?}"
    );
    let team = TEAM.replace("apps:\n", "maxNesting: 3\napps:\n");
    let found = problems(&nested().with("teams/payments/app.yaml", &team));
    assert_eq!(
        found,
        ["teams/payments/app.yaml:4:13: only the top root sets `maxNesting`; remove it here"]
    );
}

#[test]
fn a_nested_root_named_differently_from_its_entry_is_refused() {
    let team = TEAM.replace("name: payments", "name: pay");
    let found = problems(&nested().with("teams/payments/app.yaml", &team));
    assert_eq!(
        found,
        [
            "teams/payments/app.yaml:3:7: root is named `pay` but fleetsync.yaml lists it as `payments`; the names must match"
        ]
    );
}

#[test]
fn a_broken_app_in_a_nested_root_fails_the_whole_environment() {
    let found = problems(&nested().without("teams/payments/ledger/app.yaml"));
    assert_eq!(
        found,
        [
            "teams/payments/app.yaml:6:11: app `ledger`: teams/payments/ledger/app.yaml does not exist at commit c0ffee"
        ]
    );
}
