#!/usr/bin/env python3
"""A pull request's preview next to a push: webhook sent → every app's service COMPLETED.

Run with scripts/bench-preview.sh (it builds the release binary). Against the emulator, with APPS
apps bound to one environment (`staging`, branch `main`) and `previews: { from: staging }` on the
root, one `fleetsync serve` and one `fleetsync worker` (`rolloutPollInterval: 1s`). ROUNDS times,
in one run:
  push     a commit on main changes every app's image and is pushed; timed from sending the
           webhook until every staging service runs it, its deployment COMPLETED (UpdateService
           on services that exist).
  preview  a PR branch off main changes every image; its head is published as refs/pull/N/head
           and a GitHub `pull_request` opened is sent; timed until every `<app>-pr-N` service
           of the preview cluster runs it, COMPLETED (CreateService, plus the preview's
           registry). The PR is then closed and its teardown drained, not timed.
Prints the median and the worst of each, and their ratio.
"""
import hashlib
import hmac
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from receiver import free_port, wait_listening  # noqa: E402
from sync import (BINARY, SECRET, Aws, app_name, change_images, completed, deliver, generate, git,  # noqa: E402
                  spawn, start_emulator, wait_drained, workers, write_config)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
APPS = int(os.environ.get("BENCH_APPS", "10"))
LIMIT = 120


def main():
    work = Path(tempfile.mkdtemp(prefix="fleetsync-preview-"))
    calls = work / "calls.log"
    calls.touch()
    children = []
    try:
        endpoint, network = start_emulator(calls, children)
        env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                   AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1", FLEETSYNC_WEBHOOK_SECRET=SECRET,
                   RUST_LOG=os.environ.get("BENCH_RUST_LOG", "warn"))
        pushes, previews = measure(work, network, env, Aws(endpoint), children)
    finally:
        for child in children:
            child.terminate()
            child.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{ROUNDS} rounds, {APPS} apps")
    print("| trigger | median | worst |")
    print("|---|---|---|")
    for name, times in (("push to staging → every service COMPLETED", pushes),
                        ("PR opened → every preview service COMPLETED", previews)):
        print(f"| {name} | {statistics.median(times):.1f} s | {max(times):.1f} s |")
    print(f"\nmedian ratio preview ÷ push: {statistics.median(previews) / statistics.median(pushes):.2f}")


def measure(work, network, env, aws, children):
    staging, previews = "bench-staging", "bench-previews"
    for cluster in (staging, previews):
        aws.ecs.create_cluster(clusterName=cluster)
    queue = aws.sqs.create_queue(QueueName="preview.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    repo = generate(work / "repo", APPS, staging, network)
    root = repo / "fleetsync.yaml"
    root.write_text(root.read_text() + f"previews: {{ from: staging, cluster: {previews}, maxActive: 5 }}\n")
    git(repo, "commit", "--quiet", "-am", "previews")
    port = free_port()
    config = write_config(work, "preview", port, repo, queue, reconcile="0s")
    spawn([str(BINARY), "serve", "--config", str(config)], env, children)
    wait_listening(port)
    before = git(repo, "rev-parse", "main")
    pushes, opened = [], []
    with workers(1, config, env, children):
        deliver(port, "0" * 40, before, "create")
        wait_drained(aws, queue)
        for i in range(ROUNDS):
            head = change_images(repo, APPS, f"2.0.{i}")
            started = time.monotonic()
            deliver(port, before, head, f"push-{i}")
            wait_running(aws, staging, [app_name(a) for a in range(APPS)], head)
            pushes.append(time.monotonic() - started)
            wait_drained(aws, queue)
            before = head

            number = 100 + i
            pr_head = pull_request_head(repo, number, f"3.0.{i}")
            started = time.monotonic()
            answer = pull_request(port, "opened", number, pr_head, f"opened-{i}")
            if answer.get("status") != "enqueued":
                raise SystemExit(f"bench: the PR was not enqueued: {answer}")
            wait_running(aws, previews, [f"{app_name(a)}-pr-{number}" for a in range(APPS)], pr_head)
            opened.append(time.monotonic() - started)
            wait_drained(aws, queue)
            pull_request(port, "closed", number, pr_head, f"closed-{i}")
            wait_drained(aws, queue)
    return pushes, opened


def pull_request_head(repo, number, version):
    git(repo, "checkout", "--quiet", "-b", f"pr-{number}", "main")
    head = change_images(repo, APPS, version)
    git(repo, "checkout", "--quiet", "main")
    git(repo, "update-ref", f"refs/pull/{number}/head", head)
    return head


def pull_request(port, action, number, head, delivery):
    repository = {"id": 1, "full_name": "acme/bench-config",
                  "clone_url": "https://github.com/acme/bench-config.git"}
    body = json.dumps({
        "action": action, "number": number, "repository": repository,
        "pull_request": {"number": number, "draft": False, "labels": [],
                         "head": {"sha": head, "ref": f"pr-{number}", "repo": repository},
                         "base": {"ref": "main", "repo": repository}},
    }).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/github", data=body, method="POST", headers={
        "Content-Type": "application/json", "X-GitHub-Event": "pull_request", "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def wait_running(aws, cluster, names, commit):
    """Until every service runs `commit` (its revision tag), its deployment COMPLETED."""
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline:
        done = 0
        for at in range(0, len(names), 10):
            found = aws.ecs.describe_services(cluster=cluster, services=names[at:at + 10], include=["TAGS"])
            for service in found["services"]:
                tags = {t["key"]: t["value"] for t in service.get("tags", [])}
                if service["status"] == "ACTIVE" and tags.get("fleetsync:revision") == commit \
                        and completed(service):
                    done += 1
        if done == len(names):
            return
        time.sleep(0.05)
    raise SystemExit(f"bench: {cluster} did not run {commit} within {LIMIT} s")


if __name__ == "__main__":
    main()
