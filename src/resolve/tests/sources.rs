//! Apps kept in other repositories (`source:`), read through [`Sources`].

use super::*;

/// Other repositories in memory: (repo, reference) → (commit, files).
struct Others(HashMap<(&'static str, &'static str), (&'static str, Repo)>);

impl Sources for Others {
    fn open(&self, repo: &str, reference: &str) -> Result<Opened, SourceError> {
        let (commit, files) = self.0.get(&(repo, reference)).ok_or_else(|| {
            SourceError::Missing(format!("`{reference}` is not a branch of `{repo}`"))
        })?;
        Ok(Opened {
            commit: (*commit).to_owned(),
            files: Box::new(files.clone()),
        })
    }
}

fn team_repo() -> Repo {
    Repo(HashMap::from([(
        "svc/app.yaml".into(),
        app("ledger", "ledger:${short_revision}-${environment}"),
    )]))
}

fn others() -> Others {
    Others(HashMap::from([
        (("team", "staging"), ("aaaaaaaaa1", team_repo())),
        (("team", "v1.0"), ("bbbbbbbbb2", team_repo())),
    ]))
}

fn listing(entry: &str) -> Repo {
    repo().with(
        "fleetsync.yaml",
        &ROOT.replace("apps:\n", &format!("apps:\n{entry}")),
    )
}

fn resolve_with_sources(config: &Repo, sources: &dyn Sources) -> Result<DesiredState, Error> {
    let trusted = read_root(config, DEFAULT_ROOT).unwrap().unwrap();
    resolve_bound(config, sources, DEFAULT_ROOT, &trusted, "staging", "c0ffee")
}

fn problems_with_sources(config: &Repo, sources: &dyn Sources) -> Vec<String> {
    match resolve_with_sources(config, sources) {
        Err(Error::Invalid(p)) => p.iter().map(Problem::to_string).collect(),
        other => panic!("expected problems, got {other:?}"),
    }
}

fn tag_value(tags: &Value, key: &str) -> Option<String> {
    tags.as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .and_then(|t| t["value"].as_str().map(str::to_owned))
}

#[test]
fn an_app_in_another_repo_is_read_at_the_environment_branch_there() {
    let config = listing("  - name: ledger\n    source: { repo: team, path: svc }\n");
    let state = resolve_with_sources(&config, &others()).unwrap();
    let ledger = state.apps.iter().find(|a| a.name == "ledger").unwrap();
    // `${revision}` in the app's own files is the commit of the repo they come from.
    assert_eq!(
        ledger.register_task_definition["containerDefinitions"][0]["image"],
        "ledger:aaaaaaa-staging"
    );
    let td_tags = &ledger.register_task_definition["tags"];
    assert_eq!(
        tag_value(td_tags, tag::SOURCE).as_deref(),
        Some("team@aaaaaaaaa1")
    );
    // The config repo's commit stays the app's revision: it decided to deploy it.
    assert_eq!(
        tag_value(&ledger.create_service["tags"], tag::REVISION).as_deref(),
        Some("c0ffee")
    );
    assert_eq!(
        state.sources,
        [SourceUse {
            repo: "team".into(),
            reference: "staging".into(),
            commit: "aaaaaaaaa1".into(),
        }]
    );
    // Apps of the config repo carry no source tag.
    let db = state.apps.iter().find(|a| a.name == "db").unwrap();
    assert_eq!(tag_value(&db.create_service["tags"], tag::SOURCE), None);
}

#[test]
fn a_pinned_ref_is_read_instead_of_the_branch() {
    let config = listing("  - name: ledger\n    source: { repo: team, path: svc, ref: v1.0 }\n");
    let state = resolve_with_sources(&config, &others()).unwrap();
    assert_eq!(state.sources[0].reference, "v1.0");
    assert_eq!(state.sources[0].commit, "bbbbbbbbb2");
}

#[test]
fn a_missing_repo_or_ref_is_a_problem_at_its_source() {
    let config = listing("  - name: ledger\n    source: { repo: team, path: svc, ref: v9 }\n");
    assert_eq!(
        problems_with_sources(&config, &others()),
        ["fleetsync.yaml:8:43: app `ledger`: `v9` is not a branch of `team`"]
    );
    // Without other repositories at all (validate with no --source), it says so.
    let plain = listing("  - name: ledger\n    source: { repo: team, path: svc }\n");
    assert_eq!(
        problems_with_sources(&plain, &NoSources),
        [
            "fleetsync.yaml:8:21: app `ledger`: repo `team` cannot be read here: only the config repo is"
        ]
    );
}

#[test]
fn problems_in_another_repo_name_it_with_its_ref() {
    let mut broken = team_repo();
    broken.0.insert(
        "svc/app.yaml".into(),
        app("ledger", "x").replace("desiredCount: 2", "desiredCount: 2\n  colour: red"),
    );
    let sources = Others(HashMap::from([(("team", "staging"), ("a1", broken))]));
    let config = listing("  - name: ledger\n    source: { repo: team, path: svc }\n");
    let found = problems_with_sources(&config, &sources);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("team@staging:svc/app.yaml:9:3: unknown field `colour`"),
        "{found:?}"
    );
    let missing = listing("  - name: ledger\n    source: { repo: team, path: nowhere }\n");
    assert_eq!(
        problems_with_sources(&missing, &others()),
        ["fleetsync.yaml:8:33: app `ledger`: nowhere/app.yaml does not exist at team@staging"]
    );
}

#[test]
fn path_goes_inside_source() {
    let config =
        listing("  - name: ledger\n    path: svc\n    source: { repo: team, path: svc }\n");
    let Err(Error::Invalid(found)) = read_root(&config, DEFAULT_ROOT) else {
        panic!("the root reads");
    };
    assert_eq!(
        found.iter().map(Problem::to_string).collect::<Vec<_>>(),
        [
            "fleetsync.yaml:8:11: an app entry with `source` takes its `path` inside `source`; remove this one"
        ]
    );
}

#[test]
fn a_root_in_another_repo_lists_apps_from_its_own_directories() {
    let team_root = "apiVersion: fleetsync/v1\nkind: Root\nname: payments\napps:\n  - name: ledger\n    path: svc\n";
    let team = team_repo().with("app.yaml", team_root);
    let sources = Others(HashMap::from([(("team", "staging"), ("a1", team))]));
    let config = listing("  - name: payments\n    source: { repo: team }\n");
    let state = resolve_with_sources(&config, &sources).unwrap();
    let names: Vec<_> = state.apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["ledger", "db", "api"]);
    let ledger = &state.apps[0];
    assert_eq!(
        tag_value(&ledger.create_service["tags"], tag::SOURCE).as_deref(),
        Some("team@a1")
    );
}

#[test]
fn an_app_in_another_repo_is_held_to_the_policies_above_it() {
    let config = repo().with(
        "fleetsync.yaml",
        &format!(
            "{}policy:\n  images: [\"db:*\", \"api:*\"]\n",
            ROOT.replace(
                "apps:\n",
                "apps:\n  - name: ledger\n    source: { repo: team, path: svc }\n"
            )
        ),
    );
    let found = problems_with_sources(&config, &others());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("team@staging:svc/app.yaml:")
            && found[0].contains("`ledger:aaaaaaa-staging` is not allowed by policy.images"),
        "{found:?}"
    );
}
