#!/usr/bin/env python3
"""The fleetsync demo, on the local AWS emulator. Run it through scripts/demo.sh.

1. starts the emulator (scripts/emulator.py) and creates the SQS FIFO queue and the ECS clusters;
2. makes a git copy of example-repo/ with branches main (production) and staging;
3. starts `fleetsync serve` and `fleetsync worker` with one config file;
4. deploys both environments with a signed GitHub push webhook each, and prints ECS ("before");
5. commits a new api image to staging, shows `fleetsync plan` for it, delivers its signed push,
   waits for the rollout and prints ECS again ("after"): staging's api runs a new task
   definition revision tagged with the new commit, production is untouched;
6. commits a staging change that names a production secret: the push is refused (200, status invalid) by the
   root's policy, and nothing reaches ECS.
Everything it starts is stopped when it ends, even on failure or Ctrl+C.
"""
import hashlib
import hmac
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
BINARY = ROOT / "target" / "debug" / "fleetsync"
REPO_URL = "https://github.com/acme/platform-config"
CLUSTERS = ["staging", "production"]
APPS = ["accounts", "api", "web", "fleetsync-worker"]


def main():
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    children = []
    try:
        run(children)
    finally:
        for child in reversed(children):
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()


def run(children):
    step("Starting the AWS emulator (moto server + ECS rollout model)")
    emulator = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "emulator.py"), "--port", "0",
                                 "--example-account"],
                                stdout=subprocess.PIPE, stderr=open(WORK / "emulator.log", "w"), text=True)
    children.append(emulator)
    network = dict(f.split("=", 1) for f in emulator.stdout.readline().split()[2:])
    endpoint = emulator.stdout.readline().split()[-1]
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                      AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1")
    print(f"  endpoint {endpoint}")
    sqs, ecs = boto3.client("sqs"), boto3.client("ecs")
    queue_url = sqs.create_queue(QueueName="fleetsync.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    for cluster in CLUSTERS:
        ecs.create_cluster(clusterName=cluster)
    print(f"  queue {queue_url}\n  clusters {', '.join(CLUSTERS)}")

    step("Making a git copy of example-repo/ with its environment branches")
    repo = WORK / "platform-config"
    shutil.copytree(ROOT / "example-repo", repo)
    subnets = network["subnets"].split(",")
    for path in repo.rglob("*"):
        if path.is_file():
            text = path.read_text()
            text = text.replace("subnet-EXAMPLE1", subnets[0]).replace("subnet-EXAMPLE2", subnets[1])
            path.write_text(text.replace("sg-EXAMPLE", network["securityGroup"]))
    git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", "Import example-repo")
    git(repo, "branch", "staging")
    print(f"  {repo} (branches main → production, staging → staging)")

    step("Starting fleetsync serve and fleetsync worker")
    secret = secrets.token_hex(20)
    config = WORK / "fleetsync.yaml"
    port = free_port()
    config.write_text(f"""listen: 127.0.0.1:{port}
mirrorDir: {WORK / 'mirrors'}
queueUrl: {queue_url}
repos:
  - name: platform
    url: {REPO_URL}
    fetchUrl: file://{repo}
    secret: env:FLEETSYNC_WEBHOOK_SECRET
worker:
  concurrency: 4
  rolloutPollInterval: 1s
""")
    env = dict(os.environ, FLEETSYNC_WEBHOOK_SECRET=secret, RUST_LOG=os.environ.get("RUST_LOG", "info"))
    for role in ("serve", "worker"):
        log = open(WORK / f"{role}.log", "w")
        children.append(subprocess.Popen([str(BINARY), role, "--config", str(config)], env=env, stdout=log, stderr=log))
    receiver = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_ok(f"{receiver}/readyz"), "the receiver to listen")
    print(f"  receiver {receiver}, logs in {WORK}/serve.log and worker.log")

    step("Deploying both environments: a signed push for main and for staging")
    initial = git(repo, "rev-parse", "main")
    for branch in ("main", "staging"):
        deliver(receiver, secret, branch, initial)
    wait_for(lambda: all(revision_tag(ecs, c, app) == initial for c in CLUSTERS for app in APPS),
             "both environments to be live")
    step("BEFORE")
    show(ecs)

    step("Committing a new api image to staging and delivering its signed push webhook")
    taskdef = repo / "apps" / "api" / "taskdef.json"
    git(repo, "checkout", "--quiet", "staging")
    taskdef.write_text(taskdef.read_text().replace("api:1.4.2", "api:1.5.0"))
    git(repo, "commit", "--quiet", "-am", "api 1.5.0 on staging")
    change = git(repo, "rev-parse", "staging")
    print(f"  commit {change[:12]}: public.ecr.aws/acme/api:1.4.2 → 1.5.0")
    plan = subprocess.run([str(BINARY), "plan", "--repo", str(repo), "--env", "staging"],
                          capture_output=True, text=True)
    print(f"  fleetsync plan --env staging (exit {plan.returncode}: 2 means changes):")
    print("".join(f"    {line}\n" for line in (plan.stdout + plan.stderr).splitlines()), end="")
    if plan.returncode != 2:
        raise SystemExit("the plan should show the api change")
    deliver(receiver, secret, "staging", change, before=initial)
    wait_for(lambda: revision_tag(ecs, "staging", "api") == change, "staging/api to roll out")
    step("AFTER")
    show(ecs)
    print("\nstaging/api runs a new revision from the new commit; production and the other apps are unchanged.")

    step("Guardrails: a staging commit that names a production secret is refused before anything deploys")
    taskdef.write_text(taskdef.read_text().replace("secret:${environment}/api/database-url",
                                                   "secret:production/api/database-url"))
    git(repo, "commit", "--quiet", "-am", "api reads production's database on staging")
    breach = git(repo, "rev-parse", "staging")
    deliver(receiver, secret, "staging", breach, before=change, expect=(200, "invalid"))
    if revision_tag(ecs, "staging", "api") != change:
        raise SystemExit("demo: the refused commit must not reach ECS")
    print("  staging/api still runs the previous commit: the root's policy bounds every child app.")


def deliver(receiver, secret, branch, commit, before="0" * 40, expect=(202, "enqueued")):
    """A push as GitHub sends it: JSON body, X-Hub-Signature-256 over the raw bytes."""
    body = json.dumps({
        "ref": f"refs/heads/{branch}", "before": before, "after": commit, "created": False, "deleted": False,
        "forced": False, "repository": {"full_name": "acme/platform-config", "html_url": REPO_URL,
                                        "clone_url": REPO_URL + ".git"},
        "sender": {"login": "demo"},
    }).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(f"{receiver}/webhooks/github", data=body, method="POST", headers={
        "Content-Type": "application/json", "X-GitHub-Event": "push",
        "X-GitHub-Delivery": f"demo-{branch}-{commit[:12]}", "X-Hub-Signature-256": signature})
    try:
        with urllib.request.urlopen(request) as response:
            status, reply = response.status, json.load(response)
    except urllib.error.HTTPError as e:
        status, reply = e.code, json.load(e)
    jobs = ", ".join(f"{j['environment']}/{j['app']}" for j in reply.get("jobs", []))
    unchanged = f" ({reply['unchanged']} unchanged apps: no job)" if reply.get("unchanged") else ""
    print(f"  POST /webhooks/github ({branch} @ {commit[:12]}) → {status} {reply['status']}: "
          f"{jobs or reply.get('reason') or ''}{unchanged}")
    for environment in reply.get("problems", []):
        for problem in environment["problems"]:
            print(f"    {problem}")
    if (status, reply["status"]) != expect:
        raise SystemExit(f"demo: expected {expect} from the receiver, got {status}: {reply}")


def show(ecs):
    print(f"  {'service':<30} {'task definition':<32} {'fleetsync:revision':<20} rollout")
    for cluster in CLUSTERS:
        arns = ecs.list_services(cluster=cluster)["serviceArns"]
        services = ecs.describe_services(cluster=cluster, services=arns, include=["TAGS"])["services"] if arns else []
        for s in sorted(services, key=lambda s: s["serviceName"]):
            tags = {t["key"]: t["value"] for t in s.get("tags", [])}
            primary = next(d for d in s["deployments"] if d["status"] == "PRIMARY")
            print(f"  {cluster + '/' + s['serviceName']:<30} {s['taskDefinition'].split('/')[-1]:<32} "
                  f"{tags.get('fleetsync:revision', '-')[:12]:<20} {primary.get('rolloutState', '-')}")
    families = ecs.list_task_definitions()["taskDefinitionArns"]
    print("  task definition revisions: " + ", ".join(sorted(a.split("/")[-1] for a in families)))


def revision_tag(ecs, cluster, service):
    found = ecs.describe_services(cluster=cluster, services=[service], include=["TAGS"])["services"]
    tags = {t["key"]: t["value"] for t in found[0].get("tags", [])} if found else {}
    done = found and found[0]["deployments"][0].get("rolloutState") == "COMPLETED"
    return tags.get("fleetsync:revision") if done else None


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=demo", "-c", "user.email=demo@fleetsync.invalid",
                           *args], check=True, capture_output=True, text=True).stdout.strip()


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def wait_for(check, what, limit=90):
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}; see the logs in {WORK}")
        time.sleep(0.3)


def step(text):
    print(f"\n== {text}", flush=True)


if __name__ == "__main__":
    main()
