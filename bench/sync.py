#!/usr/bin/env python3
"""Sync benchmark: N changed apps through the queue, with 1 and 4 workers, next to ecs-deploy.

Run with scripts/bench-sync.sh (it builds the release binary and installs ecs-deploy into its
own virtualenv). Against the emulator, whose call log (FLEETSYNC_EMULATOR_CALL_LOG) records
every AWS call it serves, for each N in BENCH_APPS (default 1, 10, 100):
  setup       a config repo of N Fargate apps bound to a cluster of their own; a first push
              creates every service (not timed)
  fleetsync   one commit changes every app's image and is pushed to `fleetsync serve`; W
              `fleetsync worker` processes (W = 1, then 4, on a new image each time) apply it.
              Wall time runs from the webhook to the queue being empty: a worker deletes a job
              only once ECS reports its deployment COMPLETED.
  unchanged   a `fleetsync serve` reconciling every second, with nothing drifted: the reads one
              pass costs
  ecs-deploy  `ecs deploy CLUSTER SERVICE --image C IMAGE --timeout 0` for each service, one
              after the other (ecs-deploy 1.17 exits 1 with "failed due to timeout" after the
              update: --timeout 0 does not wait), then DescribeServices (10 per call, every
              second, as ecs-deploy's own wait does) until every deployment is COMPLETED.
ECS calls per app exclude the emulator's rollout polls only where said. The emulator settles a
deployment on the third DescribeServices that includes it (FLEETSYNC_EMULATOR_ROLLOUT_POLLS=2),
so rollout time here is counted in polls, not in the minutes a real deployment takes.
"""
import collections
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from receiver import free_port, wait_listening  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "target/release/fleetsync"
ECS_DEPLOY = Path(os.environ.get("ECS_DEPLOY", ROOT / ".venv-bench/bin/ecs"))
SECRET = "bench-secret"
SIZES = [int(n) for n in os.environ.get("BENCH_APPS", "1,10,100").split(",")]
WORKERS = [int(n) for n in os.environ.get("BENCH_WORKERS", "1,4").split(",")]
LIMIT = 1800


def main():
    work = Path(tempfile.mkdtemp(prefix="fleetsync-sync-bench-"))
    calls = work / "calls.log"
    calls.touch()
    children = []
    rows = []
    try:
        endpoint, network = start_emulator(calls, children)
        env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                   AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1", FLEETSYNC_WEBHOOK_SECRET=SECRET,
                   RUST_LOG=os.environ.get("BENCH_RUST_LOG", "warn"))
        aws = Aws(endpoint)
        for n in SIZES:
            rows += bench(work, n, network, env, aws, calls, children)
    finally:
        for child in children:
            child.terminate()
            child.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    print("\n| apps | tool | workers | wall time | ECS calls per app | of which writes | besides DescribeServices | DescribeServices (reads and rollout polls) | other AWS calls per app |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


def bench(work, n, network, env, aws, calls, children):
    cluster = f"bench-{n}"
    aws.ecs.create_cluster(clusterName=cluster)
    queue = aws.sqs.create_queue(QueueName=f"bench-{n}.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    repo = generate(work / f"repo-{n}", n, cluster, network)
    port = free_port()
    config = write_config(work, n, port, repo, queue, reconcile="0s")
    serve = spawn([str(BINARY), "serve", "--config", str(config)], env, children)
    rows = []
    try:
        wait_listening(port)
        head = git(repo, "rev-parse", "main")
        with workers(4, config, env, children):
            deliver(port, "0" * 40, head, "create")
            wait_drained(aws, queue)
        before = head
        for count in WORKERS:
            head = change_images(repo, n, f"2.0.{count}")
            log = CallLog(calls)
            with workers(count, config, env, children):
                started = time.monotonic()
                answer = deliver(port, before, head, f"change-{count}")
                if len(answer["jobs"]) != n:
                    raise SystemExit(f"bench: {len(answer['jobs'])} jobs for {n} changed apps")
                wait_drained(aws, queue)
                elapsed = time.monotonic() - started
            counted = log.read()
            check_completed(aws, cluster, n, f"2.0.{count}")
            rows.append(row(n, "fleetsync", count, elapsed, counted))
            before = head
    finally:
        serve.terminate()
        serve.wait(timeout=30)
        children.remove(serve)

    rows.append(unchanged(work, n, repo, queue, env, calls, children))

    version = "3.0.0"
    log = CallLog(calls)
    started = time.monotonic()
    for i in range(n):
        name = app_name(i)
        done = subprocess.run([str(ECS_DEPLOY), "deploy", cluster, name, "--image", name,
                               f"public.ecr.aws/acme/{name}:{version}", "--timeout", "0", "--region", "us-east-1"],
                              env=env, capture_output=True, text=True)
        if "Successfully changed task definition" not in done.stdout:
            raise SystemExit(f"bench: ecs-deploy did not update {name}:\n{done.stdout}\n{done.stderr}")
    wait_completed(aws, cluster, n)
    elapsed = time.monotonic() - started
    counted = log.read()
    check_completed(aws, cluster, n, version)  # after counting: its reads are the script's
    rows.append(row(n, "ecs-deploy", 1, elapsed, counted))
    return rows


def unchanged(work, n, repo, queue, env, calls, children):
    """The reads of reconcile passes over N apps that all run their spec."""
    port = free_port()
    config = write_config(work, f"{n}-reconcile", port, repo, queue, reconcile="1s")
    log = CallLog(calls)
    serve = spawn([str(BINARY), "serve", "--config", str(config)], dict(env, RUST_LOG="info"), children,
                  stderr=subprocess.PIPE)
    try:
        passes = 0
        for line in serve.stderr:
            if '"Reconciled."' in line or "Reconciled." in line:
                if '"enqueued":0' not in line.replace(" ", "") and "enqueued=0" not in line:
                    raise SystemExit(f"bench: reconcile found drift: {line}")
                passes += 1
                if passes == 3:
                    break
    finally:
        serve.terminate()
        serve.wait(timeout=30)
        children.remove(serve)
    counted = log.read()
    ecs = sum(v for k, v in counted.items() if k.startswith("ecs "))
    return (n, "fleetsync reconcile, nothing changed", "-", "-",
            f"{ecs / passes / n:.2f} ({ecs / passes:.0f} per pass)", 0, "-", "-", "-")


def row(n, tool, count, elapsed, counted):
    ecs = {k[4:]: v for k, v in counted.items() if k.startswith("ecs ")}
    writes = sum(v for k, v in ecs.items() if not k.startswith(("Describe", "List")))
    other = sum(v for k, v in counted.items() if not k.startswith(("ecs ", "sqs ")))
    # A DescribeServices reads up to ten services, for a job's first look or a rollout poll: the
    # log cannot tell which, so they are counted apart from the rest.
    reads = ecs.get("DescribeServices", 0)
    total = sum(ecs.values())
    detail = ", ".join(f"{k} {v / n:g}" for k, v in sorted(ecs.items()))
    return (n, tool, count, f"{elapsed:.1f} s", f"{total / n:.2f} ({detail})", f"{writes / n:.2f}",
            f"{(total - reads) / n:.2f}", f"{reads / n:.2f}", f"{other / n:.2f}")


class CallLog:
    """The AWS calls the emulator serves from now on."""

    def __init__(self, path):
        self.path = path
        self.start = path.stat().st_size

    def read(self):
        with open(self.path) as f:
            f.seek(self.start)
            return collections.Counter(line.strip() for line in f if line.strip())


class Aws:
    def __init__(self, endpoint):
        import boto3
        session = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                       aws_secret_access_key="test")
        self.ecs = boto3.client("ecs", **session)
        self.sqs = boto3.client("sqs", **session)


def wait_drained(aws, queue):
    """Until no job is queued or in flight (read from SQS: the ECS call log stays the workers')."""
    deadline = time.monotonic() + LIMIT
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
             "ApproximateNumberOfMessagesDelayed"]
    while time.monotonic() < deadline:
        attributes = aws.sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=names)["Attributes"]
        if sum(int(attributes[a]) for a in names) == 0:
            return
        time.sleep(0.1)
    raise SystemExit("bench: the queue did not drain")


def services(aws, cluster, n):
    names = [app_name(i) for i in range(n)]
    for at in range(0, n, 10):
        yield from aws.ecs.describe_services(cluster=cluster, services=names[at:at + 10])["services"]


def completed(service):
    primary = next(d for d in service["deployments"] if d["status"] == "PRIMARY")
    return primary["rolloutState"] == "COMPLETED" and len(service["deployments"]) == 1 \
        and service["taskDefinition"] == primary["taskDefinition"]


def check_completed(aws, cluster, n, version):
    for service in services(aws, cluster, n):
        done = completed(service)
        image = aws.ecs.describe_task_definition(taskDefinition=service["taskDefinition"])[
            "taskDefinition"]["containerDefinitions"][0]["image"]
        if not done or not image.endswith(f":{version}"):
            raise SystemExit(f"bench: {service['serviceName']} is not COMPLETED at {version}")


def wait_completed(aws, cluster, n):
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline:
        if all(completed(s) for s in services(aws, cluster, n)):
            return
        time.sleep(1)
    raise SystemExit("bench: ecs-deploy's deployments did not complete")


class workers:
    def __init__(self, count, config, env, children, stderr=None):
        self.args = (count, config, env, children)
        self.stderr = stderr

    def __enter__(self):
        count, config, env, children = self.args
        self.processes = []
        for i in range(count):
            # Each its own mirror directory, as each worker task has its own disk.
            own = config.with_name(f"{config.stem}-worker-{i}.yaml")
            text = config.read_text()
            mirrors = next(line for line in text.splitlines() if line.startswith("mirrorDir: "))
            own.write_text(text.replace(mirrors, f"{mirrors}-worker-{i}"))
            self.processes.append(spawn([str(BINARY), "worker", "--config", str(own)], env, children,
                                        self.stderr))

    def __exit__(self, *_):
        for p in self.processes:
            p.terminate()
        for p in self.processes:
            if p.wait(timeout=60) != 0:
                raise SystemExit(f"bench: a worker exited with {p.returncode}")
            self.args[3].remove(p)


def spawn(args, env, children, stderr=None):
    child = subprocess.Popen(args, env=env, stderr=stderr, text=True)
    children.append(child)
    return child


def app_name(i):
    return f"app-{i:03}"


def generate(repo, n, cluster, network):
    subnets, group = network
    apps = repo / "apps"
    apps.mkdir(parents=True)
    lines = ["apiVersion: fleetsync/v1", "kind: Root", "name: bench", "environments:",
             f"  staging: {{ branch: main, cluster: {cluster} }}", "apps:"]
    for i in range(n):
        name = app_name(i)
        lines.append(f"  - {{ name: {name}, path: apps/{name} }}")
        (apps / name).mkdir()
        (apps / name / "app.yaml").write_text(f"""apiVersion: fleetsync/v1
kind: App
name: {name}
taskDefinition: taskdef.json
service:
  desiredCount: 1
  launchType: FARGATE
  networkConfiguration:
    awsvpcConfiguration: {{ subnets: [{subnets}], securityGroups: [{group}] }}
rollout: {{ wait: true, timeout: 10m }}
""")
        (apps / name / "taskdef.json").write_text(task_definition(name, "1.0.0"))
    (repo / "fleetsync.yaml").write_text("\n".join(lines) + "\n")
    git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", f"{n} apps")
    return repo


def task_definition(name, version):
    return json.dumps({
        "family": name, "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"],
        "cpu": "256", "memory": "512",
        "containerDefinitions": [{"name": name, "image": f"public.ecr.aws/acme/{name}:{version}",
                                  "essential": True}],
    }, indent=2)


def change_images(repo, n, version):
    for i in range(n):
        (repo / "apps" / app_name(i) / "taskdef.json").write_text(task_definition(app_name(i), version))
    git(repo, "commit", "--quiet", "-am", f"every image to {version}")
    return git(repo, "rev-parse", "main")


def write_config(work, name, port, repo, queue, reconcile):
    config = work / f"fleetsync-{name}.yaml"
    config.write_text(f"""listen: 127.0.0.1:{port}
mirrorDir: {work / f'mirrors-{name}'}
queueUrl: {queue}
reconcileInterval: {reconcile}
repos:
  - name: bench
    url: https://github.com/acme/bench-config
    fetchUrl: file://{repo}
    secret: env:FLEETSYNC_WEBHOOK_SECRET
worker:
  # ecs-deploy's own wait polls every second (--sleep-time 1).
  rolloutPollInterval: 1s
""")
    return config


def deliver(port, before, after, delivery):
    body = json.dumps({"ref": "refs/heads/main", "before": before, "after": after,
                       "repository": {"clone_url": "https://github.com/acme/bench-config.git"}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/github", data=body, method="POST", headers={
        "Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def start_emulator(calls, children):
    emulator = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "emulator.py"), "--port", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env=dict(os.environ, FLEETSYNC_EMULATOR_CALL_LOG=str(calls)))
    children.append(emulator)
    # "default network subnets=A,B securityGroup=SG"
    fields = dict(f.split("=", 1) for f in emulator.stdout.readline().split()[2:])
    endpoint = emulator.stdout.readline().split()[-1]
    return endpoint, (fields["subnets"].replace(",", ", "), fields["securityGroup"])


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=b", "-c", "user.email=b@b.invalid", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
