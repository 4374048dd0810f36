//! The reconcile trigger: every environment at its branch head against ECS, on an interval,
//! enqueuing what drifted from Git (a missed webhook, a change in the console).

use super::*;

impl Dispatcher {
    /// Resolves every environment of `repo` at its branch head and enqueues the apps whose
    /// service is missing, runs another spec, or was moved to another task definition outside
    /// fleetsync: what a missed webhook or a change in the console leaves behind. A spec whose
    /// rollout failed and was rolled back stays quarantined until a push changes it.
    ///
    /// A job's delivery id is derived from the live state reconcile saw, so the same drift found
    /// by several receivers at once has one deduplication id and SQS keeps one job.
    pub async fn reconcile(&self, repo: &WatchedRepo) -> Result<Reconciled, Error> {
        let (mirror, config) = (repo.mirror.clone(), repo.config.clone());
        let branches = tokio::task::spawn_blocking(move || environment_branches(&mirror, &config))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        let mut report = Reconciled::default();
        // Not a config repo: one kept only for `source:`.
        let Some(branches) = branches else {
            return Ok(report);
        };
        if branches.is_empty() {
            report.problems.push(EnvironmentProblems {
                environment: None,
                problems: vec![format!(
                    "the root on the default branch `{}` declares no usable environment; nothing to reconcile",
                    repo.config.default_branch
                )],
            });
        }
        for branch in branches {
            let plan = {
                // The branch's lock, shared with pushes, covers the fetch only: ECS and SQS
                // calls below must not hold webhook deliveries up.
                let state = self.branch_state(&repo.config.name, &branch);
                let _turn = state.last.lock().await;
                match self.plan(repo, &branch).await {
                    Ok(plan) => plan,
                    Err(e) => {
                        warn!(message = "Cannot read an environment branch; reconciling the others.", repo = %repo.config.name, %branch, error = %e);
                        report.unread.push(format!("{branch}: {e}"));
                        continue;
                    }
                }
            };
            let Plan::Resolved { results, head, .. } = plan else {
                continue;
            };
            let mut jobs = Vec::new();
            let mut prunes = Vec::new();
            for EnvironmentResult {
                environment,
                result,
                ..
            } in results
            {
                let state = match result {
                    Ok(state) => state,
                    Err(found) => {
                        report.problems.push(EnvironmentProblems {
                            environment,
                            problems: found.iter().map(Problem::to_string).collect(),
                        });
                        continue;
                    }
                };
                // One id per commit: receivers reconciling together send one job, and SQS
                // takes it again once its deduplication window (5 minutes) has passed.
                prunes.extend(prune_job(
                    &repo.config.name,
                    &branch,
                    RECONCILE_DELIVERY,
                    &state,
                ));
                let names: Vec<&str> = state.apps.iter().map(|a| a.service_name()).collect();
                // One environment's unreadable cluster does not stop the others.
                let live = match self.ecs.describe_services(&state.cluster, &names).await {
                    Ok(live) => live,
                    Err(e) => {
                        report.problems.push(EnvironmentProblems {
                            environment: Some(state.environment.clone()),
                            problems: vec![format!("cannot read its services: {e}")],
                        });
                        continue;
                    }
                };
                let index = dependency_index(&state.apps);
                let mut drifts: Vec<Drift> = state
                    .apps
                    .iter()
                    .map(|app| drift(app, live.get(app.service_name())))
                    .collect();
                hold_back_dependents(&state.apps, &mut drifts);
                for (app, drift) in state.apps.iter().zip(drifts) {
                    let live = live.get(app.service_name());
                    match drift {
                        Drift::InSync => report.in_sync += 1,
                        Drift::Quarantined => report.quarantined += 1,
                        Drift::Drifted(why) => jobs.push(
                            SyncJob::new(
                                &repo.config.name,
                                &branch,
                                &reconcile_delivery(live),
                                app.clone(),
                            )
                            .with_dependencies(&index)
                            .triggered_by(
                                Trigger::new(TriggerKind::Reconcile, "fleetsync")
                                    .because(why)
                                    .about_commit(&head.author, &head.summary),
                            ),
                        ),
                    }
                }
            }
            report.enqueued.extend(self.queue.send(&jobs).await?);
            self.queue.send_prune(&prunes).await?;
            report.prune += prunes.len();
        }
        Ok(report)
    }

    /// Reconciles every repo each `every` until `shutdown`; the first run is one interval
    /// after start, when the receiver is serving.
    pub async fn reconcile_every(
        self: Arc<Self>,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            for repo in &self.repos {
                match self.reconcile(repo).await {
                    Ok(r) => info!(
                        message = "Reconciled.",
                        repo = %repo.config.name,
                        enqueued = r.enqueued.len(),
                        in_sync = r.in_sync,
                        quarantined = r.quarantined,
                        prune = r.prune,
                        invalid_environments = r.problems.len(),
                        unread_branches = r.unread.len()
                    ),
                    Err(e) => {
                        warn!(message = "Reconcile failed; next interval tries again.", repo = %repo.config.name, error = %e)
                    }
                }
                match self.sweep_previews(repo).await {
                    Ok(s) if !s.torn_down.is_empty() || !s.promoted.is_empty() => info!(
                        message = "Previews swept.",
                        repo = %repo.config.name,
                        torn_down = ?s.torn_down,
                        promoted = ?s.promoted
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        warn!(message = "Sweeping previews failed; next interval tries again.", repo = %repo.config.name, error = %e)
                    }
                }
            }
        }
    }
}

/// What one reconcile of a repo found.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub enqueued: Vec<Enqueued>,
    pub in_sync: usize,
    pub quarantined: usize,
    /// Prune jobs sent, one per environment of a root with `prune: true`.
    pub prune: usize,
    pub problems: Vec<EnvironmentProblems>,
    /// Branches that could not be fetched or read, with why: the next interval tries again,
    /// and the repo's other branches are reconciled meanwhile.
    pub unread: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drift {
    InSync,
    /// And what differs: the reason its job records.
    Drifted(&'static str),
    /// Runs another spec because this one failed its rollout, or depends on such an app: its
    /// job could only wait for a dependency that will not change until a push.
    Quarantined,
}

/// Quarantines every drifted app that depends, directly or not, on a quarantined one.
fn hold_back_dependents(apps: &[DesiredApp], drifts: &mut [Drift]) {
    loop {
        let held: std::collections::HashSet<&str> = apps
            .iter()
            .zip(drifts.iter())
            .filter(|(_, d)| **d == Drift::Quarantined)
            .map(|(a, _)| a.name.as_str())
            .collect();
        let mut changed = false;
        for (app, drift) in apps.iter().zip(drifts.iter_mut()) {
            if matches!(drift, Drift::Drifted(_))
                && app.depends_on.iter().any(|d| held.contains(d.as_str()))
            {
                *drift = Drift::Quarantined;
                changed = true;
            }
        }
        if !changed {
            return;
        }
    }
}

fn drift(app: &DesiredApp, live: Option<&LiveService>) -> Drift {
    let Some(live) = live else {
        return Drift::Drifted("the service does not exist");
    };
    let moved = live
        .tags
        .get(tag::TASK_DEFINITION)
        .is_some_and(|set| task_definition_id(set) != task_definition_id(&live.task_definition));
    if live.tags.get(tag::SPEC_HASH) == Some(&app.spec_hash) {
        if moved {
            Drift::Drifted("the service runs another task definition than fleetsync set")
        } else {
            Drift::InSync
        }
    } else if status::quarantined(live, &app.spec_hash)
        || live.tags.get(tag::ROLLED_BACK_FROM) == Some(&app.commit)
    {
        Drift::Quarantined
    } else {
        Drift::Drifted("the service runs another spec than Git's")
    }
}

/// The delivery id of a reconcile job: the same on every receiver that sees the same drift,
/// and different once the service changes again, so SQS (which keeps deduplication ids for
/// five minutes) never drops the job for a new drift as a repeat of the last.
fn reconcile_delivery(live: Option<&LiveService>) -> String {
    let seen = live.map_or_else(
        || "missing".to_owned(),
        |l| {
            let spec = l.tags.get(tag::SPEC_HASH).map_or("", String::as_str);
            format!("{} {spec}", task_definition_id(&l.task_definition))
        },
    );
    let digest = Sha256::digest(seen.as_bytes());
    format!("{RECONCILE_DELIVERY}:{}", hex::encode(&digest[..8]))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::resolve::tag;

    fn app(spec: &str) -> DesiredApp {
        let mut app = resolve::example_app();
        app.spec_hash = spec.to_owned();
        app
    }

    fn live(spec: &str, set: &str, runs: &str, failed: Option<&str>) -> LiveService {
        let mut tags = HashMap::from([
            (tag::SPEC_HASH.to_owned(), spec.to_owned()),
            (tag::TASK_DEFINITION.to_owned(), set.to_owned()),
        ]);
        if let Some(f) = failed {
            tags.insert(tag::FAILED_SPEC_HASH.to_owned(), f.to_owned());
        }
        LiveService {
            arn: "arn".into(),
            task_definition: format!("arn:aws:ecs:us-east-1:1:task-definition/{runs}"),
            desired_count: 1,
            running_count: 1,
            tags,
            deployments: Vec::new(),
            events: Vec::new(),
            draining: false,
            settings: Default::default(),
        }
    }

    #[test]
    fn drift_quarantines_only_a_failed_spec_that_is_not_running() {
        let h = app("h");
        assert!(matches!(drift(&h, None), Drift::Drifted(_)));
        assert!(matches!(
            drift(&h, Some(&live("h", "a:2", "a:2", None))),
            Drift::InSync
        ));
        assert!(matches!(
            drift(&h, Some(&live("g", "a:1", "a:1", None))),
            Drift::Drifted(_)
        ));
        assert!(matches!(
            drift(&h, Some(&live("g", "a:1", "a:1", Some("h")))),
            Drift::Quarantined
        ));
        // Refused before any write (say, a secret was missing): sent again, it may pass now.
        let mut refused = live("g", "a:1", "a:1", Some("h"));
        refused
            .tags
            .insert(tag::FAILURE.to_owned(), "PreflightRefused c1".to_owned());
        assert!(matches!(drift(&h, Some(&refused)), Drift::Drifted(_)));
        // Rolled back from this commit through the API: held until Git moves on.
        let mut rolled_back = live("g", "a:1", "a:1", None);
        rolled_back
            .tags
            .insert(tag::ROLLED_BACK_FROM.to_owned(), h.commit.clone());
        assert!(matches!(drift(&h, Some(&rolled_back)), Drift::Quarantined));
        let mut newer = h.clone();
        newer.commit = format!("{}-next", h.commit);
        assert!(matches!(
            drift(&newer, Some(&rolled_back)),
            Drift::Drifted(_)
        ));
        // It failed once, succeeded later, then was moved in the console: that is drift.
        assert!(matches!(
            drift(&h, Some(&live("h", "a:2", "a:1", Some("h")))),
            Drift::Drifted(_)
        ));
    }

    #[test]
    fn dependents_of_a_quarantined_app_are_held_back_all_the_way_down() {
        let named = |name: &str, deps: &[&str]| {
            let mut a = app("h");
            a.name = name.to_owned();
            a.depends_on = deps.iter().map(|d| (*d).to_owned()).collect();
            a
        };
        let apps = [
            named("web", &["api"]),
            named("api", &["db"]),
            named("db", &[]),
            named("cron", &[]),
        ];
        let mut drifts = [
            Drift::Drifted("x"),
            Drift::Drifted("x"),
            Drift::Quarantined,
            Drift::Drifted("x"),
        ];
        hold_back_dependents(&apps, &mut drifts);
        assert_eq!(
            drifts,
            [
                Drift::Quarantined,
                Drift::Quarantined,
                Drift::Quarantined,
                Drift::Drifted("x")
            ]
        );
    }

    #[test]
    fn reconcile_delivery_ids_follow_what_was_seen() {
        let a = live("g", "a:1", "a:1", None);
        let b = live("g", "a:1", "a:3", None);
        assert_eq!(
            reconcile_delivery(Some(&a)),
            reconcile_delivery(Some(&a.clone()))
        );
        assert_ne!(reconcile_delivery(Some(&a)), reconcile_delivery(Some(&b)));
        assert_ne!(reconcile_delivery(Some(&a)), reconcile_delivery(None));
        assert!(reconcile_delivery(None).starts_with("reconcile:"));
    }
}
