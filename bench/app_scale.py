#!/usr/bin/env python3
"""App-of-Apps at scale: a generated config repo of 100, 1,000 and 10,000 apps in 3 environments.

Run with scripts/bench-app-scale.sh (it builds the release binary). For each size it measures:
  full resolve   `fleetsync validate --env staging`: read both roots, resolve every app of one
                 environment (a fresh process: wall time and peak RSS, so startup is included)
  one-child push `fleetsync serve` against the emulator: the first push to staging enqueues every
                 app (drained as it arrives: moto's FIFO queue slows with every message it
                 holds); then one child's task definition changes and is pushed. The second
                 delivery is timed from request to 202 (fetch + resolve + diff + enqueue) and must
                 answer exactly one job. The receiver's peak RSS is read after both.
"""
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from receiver import free_port, peak_rss, wait_listening  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "target/release/fleetsync"
SECRET = "bench-secret"
SIZES = [int(n) for n in os.environ.get("BENCH_SIZES", "100,1000,10000").split(",")]
# Sizes whose one-child push is measured. moto's FIFO queue slows with every message it holds
# (2,500 held sends took 465 s), so the first push's jobs are drained while they arrive.
PUSH_SIZES = [int(n) for n in os.environ.get("BENCH_PUSH_SIZES", "100,1000,10000").split(",")]
DRAINERS = 4
ENVIRONMENTS = {"staging": "staging", "qa": "qa", "production": "main"}


def main():
    work = Path(tempfile.mkdtemp(prefix="fleetsync-scale-"))
    children = []
    rows = []
    try:
        emulator, endpoint = start_emulator(children)
        for n in SIZES:
            repo = generate(work / f"repo-{n}", n)
            resolved = full_resolve(repo)  # first: the push below adds a loose commit
            pushed = one_child_push(work, repo, n, endpoint, children) if n in PUSH_SIZES else None
            rows.append((n, *resolved, pushed))
    finally:
        for child in children:
            child.terminate()
            child.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    print("\n| apps per environment | full resolve | its peak RSS | one-child push → 202 | jobs | receiver peak RSS |")
    print("|---|---|---|---|---|---|")
    for n, resolve_s, resolve_rss, pushed in rows:
        push = "not measured | - | -"
        if pushed:
            push_s, jobs, serve_rss = pushed
            push = f"{push_s * 1000:,.0f} ms | {jobs} | {serve_rss}"
        print(f"| {n:,} | {resolve_s * 1000:,.0f} ms | {resolve_rss} | {push} |")


def generate(repo, n):
    """A root listing `n` apps, each with its app.yaml and task definition, on 3 branches."""
    apps = repo / "apps"
    apps.mkdir(parents=True)
    lines = ["apiVersion: fleetsync/v1", "kind: Root", "name: platform", "environments:"]
    lines += [f"  {env}: {{ branch: {branch}, cluster: {env} }}" for env, branch in ENVIRONMENTS.items()]
    lines.append("apps:")
    for i in range(n):
        name = f"app-{i:05}"
        lines.append(f"  - {{ name: {name}, path: apps/{name} }}")
        (apps / name).mkdir()
        (apps / name / "app.yaml").write_text(f"""apiVersion: fleetsync/v1
kind: App
name: {name}
taskDefinition: taskdef.json
service:
  desiredCount: 2
  launchType: FARGATE
  networkConfiguration:
    awsvpcConfiguration: {{ subnets: [subnet-1, subnet-2], securityGroups: [sg-1] }}
  tags: [{{ key: app, value: {name} }}]
""")
        (apps / name / "taskdef.json").write_text(json.dumps(task_definition(name, "1.0.0"), indent=2))
    (repo / "fleetsync.yaml").write_text("\n".join(lines) + "\n")
    git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", f"{n} apps")
    git(repo, "repack", "-a", "-d", "-q")  # packed, as a fetched mirror is
    for env, branch in ENVIRONMENTS.items():
        if branch != "main":
            git(repo, "branch", branch)
    return repo


def task_definition(name, version):
    return {
        "family": f"{name}-${{environment}}",
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "cpu": "256",
        "memory": "512",
        "containerDefinitions": [{
            "name": name,
            "image": f"public.ecr.aws/acme/{name}:{version}",
            "essential": True,
            "portMappings": [{"containerPort": 8080}],
            # No ${revision} here: it would change every app's spec on every commit.
            "environment": [{"name": "ENVIRONMENT", "value": "${environment}"}],
        }],
    }


def full_resolve(repo):
    started = time.monotonic()
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen([str(BINARY), "validate", "--repo", str(repo), "--env", "staging"],
                                 stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.monotonic() - started
        if os.waitstatus_to_exitcode(status) != 0:
            stderr.seek(0)
            raise SystemExit(f"bench: validate failed: {stderr.read().decode()}")
    return elapsed, f"{usage.ru_maxrss / 1024:.1f} MiB"


def one_child_push(work, repo, n, endpoint, children):
    import boto3
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                       aws_secret_access_key="test")
    queue = sqs.create_queue(QueueName=f"scale-{n}.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    port = free_port()
    config = work / f"fleetsync-{n}.yaml"
    config.write_text(f"""listen: 127.0.0.1:{port}
mirrorDir: {work / f'mirrors-{n}'}
queueUrl: {queue}
reconcileInterval: 0s
repos:
  - name: platform
    url: https://github.com/acme/platform-config
    fetchUrl: file://{repo}
    secret: env:FLEETSYNC_WEBHOOK_SECRET
""")
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
               AWS_REGION="us-east-1", FLEETSYNC_WEBHOOK_SECRET=SECRET, RUST_LOG="warn")
    serve = subprocess.Popen([str(BINARY), "serve", "--config", str(config)], env=env)
    children.append(serve)
    try:
        wait_listening(port)
        first = git(repo, "rev-parse", "staging")
        done = threading.Event()
        drainers = [threading.Thread(target=drain, args=(endpoint, queue, done)) for _ in range(DRAINERS)]
        for d in drainers:
            d.start()
        try:
            answer, _ = deliver(port, "0" * 40, first, "first")
        finally:
            done.set()
            for d in drainers:
                d.join()
        if len(answer["jobs"]) != n:
            raise SystemExit(f"bench: the first push enqueued {len(answer['jobs'])} jobs, not {n}")
        git(repo, "checkout", "--quiet", "staging")
        changed = repo / "apps" / f"app-{n // 2:05}" / "taskdef.json"
        changed.write_text(json.dumps(task_definition(f"app-{n // 2:05}", "1.0.1"), indent=2))
        git(repo, "commit", "--quiet", "-am", "one child changes")
        git(repo, "checkout", "--quiet", "main")
        answer, elapsed = deliver(port, first, git(repo, "rev-parse", "staging"), "second")
        return elapsed, len(answer["jobs"]), peak_rss(serve.pid)
    finally:
        serve.terminate()
        serve.wait(timeout=30)
        children.remove(serve)


def drain(endpoint, queue, done):
    """Deletes jobs as they arrive until `done` is set and the queue is empty."""
    import boto3
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                       aws_secret_access_key="test")
    while True:
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10,
                                       WaitTimeSeconds=1).get("Messages", [])
        if messages:
            sqs.delete_message_batch(QueueUrl=queue, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])
        elif done.is_set():
            return


def deliver(port, before, after, delivery):
    body = json.dumps({"ref": "refs/heads/staging", "before": before, "after": after,
                       "repository": {"clone_url": "https://github.com/acme/platform-config.git"}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/github", data=body, method="POST", headers={
        "Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()})
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=600) as response:
        answer = json.loads(response.read())
    return answer, time.monotonic() - started


def start_emulator(children):
    emulator = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "emulator.py"), "--port", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    children.append(emulator)
    emulator.stdout.readline()
    return emulator, emulator.stdout.readline().split()[-1]


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=b", "-c", "user.email=b@b.invalid",
                           "-c", "gc.auto=0", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
