#!/usr/bin/env python3
"""Check that a running scripts/emulator.py models ECS rollouts as documented there.

Usage: .venv/bin/python scripts/emulator-selfcheck.py --endpoint http://127.0.0.1:PORT
       [--polls K]   (K must match the emulator's FLEETSYNC_EMULATOR_ROLLOUT_POLLS)
Starts nothing itself; prints the deployments at each step; exits 1 on a mismatch.
"""
import argparse
import os
import sys
import uuid

import boto3

FAILED_REASON = "ECS deployment circuit breaker: tasks failed to start."


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--polls", type=int, default=int(os.environ.get("FLEETSYNC_EMULATOR_ROLLOUT_POLLS", "2")))
    args = p.parse_args()
    ecs = boto3.client("ecs", endpoint_url=args.endpoint, region_name="us-east-1",
                       aws_access_key_id="test", aws_secret_access_key="test")
    cluster = f"selfcheck-{uuid.uuid4().hex[:8]}"
    family = cluster  # fresh family: revisions 1 (good) and 2 (broken) even on a used emulator
    ecs.create_cluster(clusterName=cluster)

    def register(image):
        return ecs.register_task_definition(
            family=family, networkMode="bridge", requiresCompatibilities=["EC2"],
            containerDefinitions=[{"name": "api", "image": image, "memory": 128, "essential": True}],
        )["taskDefinition"]["taskDefinitionArn"]

    good = register("public.ecr.aws/acme/api:1.0")
    broken = register("public.ecr.aws/acme/api:broken")

    def describe():
        return ecs.describe_services(cluster=cluster, services=["api"])["services"][0]

    def show(step, svc):
        print(f"== {step}: service taskDefinition={svc['taskDefinition']} runningCount={svc['runningCount']}")
        for d in svc["deployments"]:
            print(f"   {d['status']:8} {d['id']} {d['rolloutState']:11} run={d['runningCount']}/{d['desiredCount']}"
                  f" failed={d.get('failedTasks')} td={d['taskDefinition'].split('/')[-1]} | {d['rolloutStateReason']}")
        print("   events:", [e["message"] for e in svc.get("events", [])][:3], flush=True)

    def wait_for(step, dep_id, state):
        """Exactly K polls show IN_PROGRESS, the next one shows `state`."""
        for i in range(args.polls + 1):
            svc = describe()
            show(f"{step} poll {i + 1}", svc)
            dep = next(d for d in svc["deployments"] if d["id"] == dep_id)
            want = "IN_PROGRESS" if i < args.polls else state
            check(dep["rolloutState"] == want, f"{step} poll {i + 1}: {dep['rolloutState']} != {want}")
        return svc

    def update(step, **kw):
        svc = ecs.update_service(cluster=cluster, service="api", **kw)["service"]
        show(step, svc)
        return svc

    svc = ecs.create_service(cluster=cluster, serviceName="api", taskDefinition=f"{family}:1",
                             desiredCount=2, launchType="EC2")["service"]
    show("create", svc)
    check(len(svc["deployments"]) == 1 and svc["deployments"][0]["rolloutState"] == "IN_PROGRESS", "create: one IN_PROGRESS")
    first = svc["deployments"][0]["id"]
    svc = wait_for("create", first, "COMPLETED")
    check(svc["runningCount"] == 2 and svc["deployments"][0]["runningCount"] == 2, "create: runningCount = desired")
    check(svc["events"][0]["message"] == "(service api) has reached a steady state.", "create: steady-state event")

    svc = update("update to revision 2 (broken)", taskDefinition=f"{family}:2")
    deps = svc["deployments"]
    check(svc["taskDefinition"] == broken, "update: service taskDefinition is the full ARN")
    check([d["status"] for d in deps] == ["PRIMARY", "ACTIVE"] and deps[1]["id"] == first, "update: new PRIMARY, old ACTIVE")
    check(deps[0]["taskDefinition"] == broken and deps[0]["runningCount"] == 0, "update: new deployment fields")
    failing = deps[0]["id"]
    svc = wait_for("broken", failing, "FAILED")
    deps = svc["deployments"]
    check(deps[0]["rolloutStateReason"] == FAILED_REASON and deps[0]["status"] == "PRIMARY", "broken: FAILED PRIMARY")
    check(len(deps) == 2 and deps[1]["id"] == first and deps[1]["status"] == "ACTIVE", "broken: previous kept ACTIVE")
    check(svc["events"][0]["message"] == f"(service api) (deployment {failing}) deployment failed: tasks failed to start.",
          "broken: failure event")
    for _ in range(args.polls + 1):  # no rollback without deploymentCircuitBreaker.rollback
        check([d["id"] for d in describe()["deployments"]] == [failing, first], "broken: stays FAILED, no rollback")

    svc = update("update back to revision 1", taskDefinition=f"{family}:1")
    svc = wait_for("back to revision 1", svc["deployments"][0]["id"], "COMPLETED")
    check(len(svc["deployments"]) == 1 and svc["taskDefinition"] == good, "back: ACTIVE removed, good td")

    svc = update("same td: no deployment", taskDefinition=good, desiredCount=3)
    check(len(svc["deployments"]) == 1 and svc["deployments"][0]["desiredCount"] == 3, "same td: no new deployment")
    svc = update("forceNewDeployment", forceNewDeployment=True)
    check(len(svc["deployments"]) == 2 and svc["deployments"][1]["status"] == "ACTIVE", "force: new deployment")
    svc = wait_for("force", svc["deployments"][0]["id"], "COMPLETED")
    prev = svc["deployments"][0]["id"]

    svc = update("broken with rollback breaker", taskDefinition=f"{family}:2", deploymentConfiguration={
        "deploymentCircuitBreaker": {"enable": True, "rollback": True}})
    failing = svc["deployments"][0]["id"]
    svc = wait_for("rollback", failing, "FAILED")
    deps = svc["deployments"]
    check([d["status"] for d in deps] == ["PRIMARY", "ACTIVE"] and deps[1]["id"] == failing, "rollback: failed is ACTIVE")
    check(deps[0]["taskDefinition"] == good and deps[0]["id"] not in (prev, failing), "rollback: new PRIMARY on old td")
    check(svc["events"][0]["message"] == f"(service api) rolling back to deployment {prev}.", "rollback: event")
    svc = wait_for("rollback completes", deps[0]["id"], "COMPLETED")
    check(len(svc["deployments"]) == 1 and svc["taskDefinition"] == good, "rollback: failed removed")
    print("emulator self-check: OK")


if __name__ == "__main__":
    main()
