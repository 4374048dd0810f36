#!/usr/bin/env python3
"""Fault campaign: the production shape under faults, on a fixed seed; prints one line of figures
and exits 1 if anything was lost.

Run with scripts/chaos.sh (a short run is part of the test command; CHAOS_PUSHES=200 is the long
run BENCHMARKS.md records). Against the emulator: a config repo of CHAOS_APPS apps (app-001
dependsOn app-000) in two environments, staging (branch `staging`) and production (branch
`main`), each on its own cluster; 2 `fleetsync serve` replicas (each its own mirror, both
reconciling every CHAOS_RECONCILE seconds) and 3 `fleetsync worker`s (visibility timeout 30 s)
on one SQS FIFO queue
whose redrive policy moves a message to a dead-letter queue after 10 receives. After a first
push deploys both environments, CHAOS_PUSHES pushes follow, each one commit changing one app's
image on one branch, delivered to a receiver picked at random; some deliveries are replayed
(the same delivery id again, to the other receiver) and some are held back and delivered after
the next one (out of order). Between pushes, on the seed's schedule, one fault at a time:
  kill-worker       a worker gets SIGKILL mid-job and is started again (ECS's scheduler would)
  restart-receiver  a receiver gets SIGTERM and is started again; deliveries meanwhile are
                    refused at its port
  sqs-500 / sqs-503 every SQS call answers 500 InternalError or 503 ServiceUnavailable for 3 s
  sqs-refused       SQS refuses connections for 3 s, and those open are cut: fleetsync reaches
                    SQS through a TCP gate (AWS_ENDPOINT_URL_SQS) that the campaign shuts
  ecs-throttle      every ECS call answers ThrottlingException for 3 s
  git-down          the config repo's fetch URL leads nowhere for 3 s (every fetch fails)

Then faults stop and the campaign waits for quiescence (every app of both environments running
its branch head's image, one COMPLETED deployment, no failure mark), at most one reconcile
interval plus the rollouts' time, and asserts:
  - every environment runs exactly its branch head (nothing lost, nothing stale);
  - no task definition was registered twice for one image, none registered for an older push
    after a newer one of its app, and no worker rolled a service back;
  - deliveries answered 202 were applied or superseded, and deliveries answered 5xx or refused
    were healed, within that bound (every head is live);
  - the dead-letter queue is empty.
"""
import hashlib
import hmac
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from receiver import free_port, wait_listening  # noqa: E402
from sync import BINARY, SECRET, Aws, git, start_emulator  # noqa: E402

SEED = int(os.environ.get("CHAOS_SEED", "7"))
PUSHES = int(os.environ.get("CHAOS_PUSHES", "30"))
APPS = int(os.environ.get("CHAOS_APPS", "4"))
RECONCILE = int(os.environ.get("CHAOS_RECONCILE", "10"))
RECEIVERS, WORKERS = 2, 3
BRANCHES = {"staging": "staging", "production": "main"}
FAULTS = ["kill-worker", "restart-receiver", "sqs-500", "sqs-503", "sqs-refused", "ecs-throttle", "git-down"]
FAULT_SECONDS = 3
ROLLOUTS = 60  # seconds past one reconcile interval the last changes may take to roll out
ZEROS = "0" * 40


def app_name(i):
    return f"app-{i:03}"


def main():
    rng = random.Random(SEED)
    work = Path(tempfile.mkdtemp(prefix="fleetsync-chaos-"))
    children = []
    try:
        endpoint, network = start_emulator(work / "calls.log", children)
        aws = Aws(endpoint)
        fleet = Fleet(work, endpoint, network, children)
        figures, problems = campaign(rng, fleet, aws)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=30)
        if os.environ.get("CHAOS_KEEP"):
            print(f"chaos: logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(" ".join(f"{k}={v}" for k, v in figures.items()))
    for problem in problems:
        print(f"chaos: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)


class Fleet:
    """The repo, the queues and the processes under test."""

    def __init__(self, work, endpoint, network, children):
        self.work, self.children = work, children
        self.gate = Gate(int(endpoint.rsplit(":", 1)[1]))
        self.env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ENDPOINT_URL_SQS=f"http://127.0.0.1:{self.gate.port}",
                        AWS_ACCESS_KEY_ID="test",
                        AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1",
                        FLEETSYNC_WEBHOOK_SECRET=SECRET,
                        RUST_LOG=os.environ.get("CHAOS_RUST_LOG", "warn"))
        aws = Aws(endpoint)
        for environment in BRANCHES:
            aws.ecs.create_cluster(clusterName=environment)
        dead = aws.sqs.create_queue(QueueName="chaos-dead.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
        dead_arn = aws.sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        redrive = json.dumps({"deadLetterTargetArn": dead_arn, "maxReceiveCount": 10})
        self.dead = dead
        self.queue = aws.sqs.create_queue(QueueName="chaos.fifo", Attributes={
            "FifoQueue": "true", "RedrivePolicy": redrive})["QueueUrl"]
        self.repo = generate(work / "repo", network)
        # Receivers and workers fetch through this link; "git-down" removes it for a while.
        self.link = work / "fetch"
        self.link.symlink_to(self.repo)
        self.receivers = [self.start(f"receiver-{i}", "serve", free_port()) for i in range(RECEIVERS)]
        self.workers = [self.start(f"worker-{i}", "worker", free_port()) for i in range(WORKERS)]
        for _, _, port, _ in self.receivers:
            wait_listening(port)

    def start(self, name, command, port):
        config = self.work / f"{name}.yaml"
        config.write_text(f"""listen: 127.0.0.1:{port}
mirrorDir: {self.work / f'mirrors-{name}'}
queueUrl: {self.queue}
reconcileInterval: {RECONCILE}s
repos:
  - name: chaos
    url: https://github.com/acme/chaos-config
    fetchUrl: file://{self.link}
    secret: env:FLEETSYNC_WEBHOOK_SECRET
worker:
  rolloutPollInterval: 1s
  # Half the default: a killed worker's jobs come back sooner, and SQS outages must still last
  # over 15 s before a job is given up (with 10 s, seed 11's long run registered one revision
  # twice: see BENCHMARKS.md).
  visibilityTimeout: 30s
""")
        log = open(self.work / f"{name}.log", "a")
        process = subprocess.Popen([str(BINARY), command, "--config", str(config)], env=self.env,
                                   stdout=subprocess.DEVNULL, stderr=log)
        self.children.append(process)
        return [name, process, port, config]

    def restart(self, entry, how):
        name, process, port, _ = entry
        process.send_signal(how)
        process.wait(timeout=60)
        self.children.remove(process)
        entry[:] = self.start(name, "serve" if name.startswith("receiver") else "worker", port)
        if name.startswith("receiver"):
            wait_listening(port)

    def logs(self, prefix):
        return "".join(p.read_text(errors="replace") for p in sorted(self.work.glob(f"{prefix}-*.log")))


class Gate:
    """A TCP relay in front of the emulator for SQS: shut, it refuses connections and cuts the
    open ones, as an unreachable endpoint does."""

    def __init__(self, target):
        self.target, self.port = target, free_port()
        self.lock, self.open, self.server = threading.Lock(), set(), None
        self.accepted = 0
        self.listen()

    def listen(self):
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self.accept, args=(self.server,), daemon=True).start()

    def accept(self, server):
        while True:
            try:
                client, _ = server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return
            with self.lock:
                self.open.update((client, upstream))
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    def pump(self, source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.close()
            except OSError:
                pass

    def shut(self, seconds):
        self.server.close()
        with self.lock:
            cut, self.open = self.open, set()
        for s in cut:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def back():
            time.sleep(seconds)
            self.listen()
        threading.Thread(target=back, daemon=True).start()


def generate(repo, network):
    subnets, group = network
    lines = ["apiVersion: fleetsync/v1", "kind: Root", "name: chaos", "environments:"]
    lines += [f"  {e}: {{ branch: {b}, cluster: {e} }}" for e, b in BRANCHES.items()]
    lines.append("apps:")
    for i in range(APPS):
        name = app_name(i)
        depends = f", dependsOn: [{app_name(0)}]" if i == 1 else ""
        lines.append(f"  - {{ name: {name}, path: apps/{name}{depends} }}")
        (repo / "apps" / name).mkdir(parents=True)
        (repo / "apps" / name / "app.yaml").write_text(f"""apiVersion: fleetsync/v1
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
        write_image(repo, name, "1.0.0")
    (repo / "fleetsync.yaml").write_text("\n".join(lines) + "\n")
    git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", f"{APPS} apps")
    git(repo, "branch", "staging")
    return repo


def write_image(repo, name, version):
    (repo / "apps" / name / "taskdef.json").write_text(json.dumps({
        "family": f"${{environment}}-{name}", "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"],
        "cpu": "256", "memory": "512",
        "containerDefinitions": [{"name": name, "image": f"public.ecr.aws/acme/{name}:{version}",
                                  "essential": True}],
    }, indent=2))


def deliver(port, branch, before, after, delivery):
    """One signed GitHub push; its HTTP status, or "refused" when nothing answered."""
    body = json.dumps({"ref": f"refs/heads/{branch}", "before": before, "after": after,
                       "repository": {"clone_url": "https://github.com/acme/chaos-config.git"}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/github", data=body, method="POST", headers={
        "Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return "refused"


def fault_request(endpoint, spec):
    request = urllib.request.Request(f"{endpoint}/fleetsync-emulator/faults", data=json.dumps(spec).encode(),
                                     method="POST")
    urllib.request.urlopen(request, timeout=10).close()


def campaign(rng, fleet, aws):
    endpoint = fleet.env["AWS_ENDPOINT_URL"]
    # app → version, per environment: what the branch head says.
    expected = {e: {app_name(i): "1.0.0" for i in range(APPS)} for e in BRANCHES}
    heads = {e: git(fleet.repo, "rev-parse", b) for e, b in BRANCHES.items()}
    for environment, branch in BRANCHES.items():
        status = deliver(fleet.receivers[0][2], branch, ZEROS, heads[environment], f"first-{environment}")
        if status != 202:
            return {"first-push": status}, [f"the first push to {branch} answered {status}"]
    problems = []
    if converged(aws, fleet, expected, 300) is None:
        return {}, ["the first push did not deploy both environments"] + lost(aws, fleet, expected)

    answers, faults, held = {}, {}, None
    delivered = replayed = out_of_order = 0
    for i in range(PUSHES):
        environment = rng.choice(list(BRANCHES))
        branch, app = BRANCHES[environment], app_name(rng.randrange(APPS))
        version = f"2.0.{i}"
        git(fleet.repo, "checkout", "--quiet", branch)
        write_image(fleet.repo, app, version)
        git(fleet.repo, "commit", "--quiet", "-am", f"{environment}: {app} {version}")
        before, after = heads[environment], git(fleet.repo, "rev-parse", branch)
        heads[environment] = after
        expected[environment][app] = version
        push = (branch, before, after, f"push-{i}")
        roll = rng.random()
        sends = []
        if held is not None:
            sends = [push, held]  # the held one arrives after the one pushed after it
            held = None
            out_of_order += 1
        elif roll < 0.15:
            held = push
        else:
            sends = [push]
        if roll > 0.85 and sends:
            sends.append(sends[0])  # a replay: the Git host delivers it again
            replayed += 1
        for send in sends:
            port = rng.choice(fleet.receivers)[2]
            status = deliver(port, *send)
            answers[status] = answers.get(status, 0) + 1
            delivered += 1
        if rng.random() < 0.35:
            kind = rng.choice(FAULTS)
            faults[kind] = faults.get(kind, 0) + 1
            inject(kind, rng, fleet, endpoint)
        time.sleep(rng.uniform(0.1, 0.8))
    if held is not None:
        status = deliver(rng.choice(fleet.receivers)[2], *held)
        answers[status] = answers.get(status, 0) + 1
        delivered += 1

    # Faults are over once the last timed one ran out and every process is up.
    time.sleep(FAULT_SECONDS + 1)
    quiet = time.monotonic()
    limit = RECONCILE + ROLLOUTS
    settled = converged(aws, fleet, expected, limit)
    figures = {
        "seed": SEED,
        "deliveries": delivered,
        "answered": "/".join(f"{k}:{v}" for k, v in sorted(answers.items(), key=str)),
        "replayed": replayed,
        "out_of_order": out_of_order,
        "faults": sum(faults.values()),
        "by_kind": "/".join(f"{k}:{v}" for k, v in sorted(faults.items())),
    }
    missing = lost(aws, fleet, expected)
    apps = APPS * len(BRANCHES)
    figures["converged"] = f"{apps - len(missing)}/{apps}"
    figures["converge_s"] = "-" if settled is None else f"{settled - quiet:.1f}"
    if settled is None:
        problems.append(f"not every head is live {limit} s after the faults ended: " + "; ".join(missing))
        problems += post_mortem(aws, fleet)
    duplicates, regressions = registrations(aws)
    figures["duplicate_registrations"] = len(duplicates)
    problems += duplicates + regressions
    rolled_back = [line for line in fleet.logs("worker").splitlines() if "rolled back to" in line]
    figures["rolled_back"] = len(rolled_back)
    problems += [f"a worker rolled back: {line}" for line in rolled_back[:5]]
    dead = int(aws.sqs.get_queue_attributes(QueueUrl=fleet.dead, AttributeNames=["ApproximateNumberOfMessages"])[
        "Attributes"]["ApproximateNumberOfMessages"])
    figures["dead_letters"] = dead
    if dead:
        problems.append(f"{dead} message(s) in the dead-letter queue")
    figures["sqs_connections"] = fleet.gate.accepted
    figures["lost"] = len(missing)
    return figures, problems


def post_mortem(aws, fleet):
    """What a failed run needs to be understood where its logs are gone (CI): who is still
    running, what the queue holds, and what the processes said that was worse than a retry."""
    lines = []
    for name, process, _, _ in fleet.receivers + fleet.workers:
        code = process.poll()
        lines.append(f"{name}: {'running' if code is None else f'exited with {code}'}")
    attributes = aws.sqs.get_queue_attributes(QueueUrl=fleet.queue, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    lines.append(f"queue: {attributes['ApproximateNumberOfMessages']} visible, "
                 f"{attributes['ApproximateNumberOfMessagesNotVisible']} in flight")
    for log in sorted(fleet.work.glob("*.log")):
        if log.name == "calls.log":
            continue
        said = [line for line in log.read_text(errors="replace").splitlines()
                if "panicked" in line or " ERROR " in line or " WARN " in line]
        lines += [f"{log.stem}: {line[:400]}" for line in said[-8:]]
    return lines


def inject(kind, rng, fleet, endpoint):
    if kind == "kill-worker":
        fleet.restart(rng.choice(fleet.workers), signal.SIGKILL)
    elif kind == "restart-receiver":
        entry = rng.choice(fleet.receivers)
        threading.Thread(target=fleet.restart, args=(entry, signal.SIGTERM), daemon=True).start()
    elif kind in ("sqs-500", "sqs-503"):
        fault_request(endpoint, {"service": "sqs", "status": int(kind[-3:]), "seconds": FAULT_SECONDS})
    elif kind == "sqs-refused" and fleet.gate.server.fileno() != -1:
        fleet.gate.shut(FAULT_SECONDS)
    elif kind == "ecs-throttle":
        fault_request(endpoint, {"service": "ecs", "throttle_seconds": FAULT_SECONDS})
    elif kind == "git-down" and fleet.link.is_symlink():
        fleet.link.unlink()

        def back():
            time.sleep(FAULT_SECONDS)
            fleet.link.symlink_to(fleet.repo)
        threading.Thread(target=back, daemon=True).start()


def services(aws, environment):
    names = [app_name(i) for i in range(APPS)]
    for at in range(0, len(names), 10):
        yield from aws.ecs.describe_services(cluster=environment, services=names[at:at + 10])["services"]


def lost(aws, fleet, expected):
    """What is not as the branch heads say: "environment/app: why"."""
    wrong = []
    for environment in BRANCHES:
        found = {s["serviceName"]: s for s in services(aws, environment) if s["status"] == "ACTIVE"}
        for app, version in expected[environment].items():
            service = found.get(app)
            if service is None:
                wrong.append(f"{environment}/{app}: no service")
                continue
            image = aws.ecs.describe_task_definition(taskDefinition=service["taskDefinition"])[
                "taskDefinition"]["containerDefinitions"][0]["image"]
            deployments = service["deployments"]
            tags = {t["key"]: t["value"] for t in aws.ecs.list_tags_for_resource(
                resourceArn=service["serviceArn"]).get("tags", [])}
            if not image.endswith(f":{version}"):
                wrong.append(f"{environment}/{app}: runs {image.rsplit(':', 1)[-1]}, its head says {version}")
            elif len(deployments) != 1 or deployments[0].get("rolloutState") != "COMPLETED":
                wrong.append(f"{environment}/{app}: rollout not settled")
            elif tags.get("fleetsync:failure"):
                wrong.append(f"{environment}/{app}: marked failed ({tags['fleetsync:failure']})")
    return wrong


def converged(aws, fleet, expected, limit):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not lost(aws, fleet, expected):
            return time.monotonic()
        time.sleep(0.5)
    return None


def registrations(aws):
    """Task definitions registered twice for one image, and older pushes registered after newer."""
    duplicates, regressions = [], []
    for environment in BRANCHES:
        for i in range(APPS):
            family = f"{environment}-{app_name(i)}"
            arns = []
            for status in ("ACTIVE", "INACTIVE"):
                arns += aws.ecs.list_task_definitions(familyPrefix=family, status=status)["taskDefinitionArns"]
            revisions = sorted(arns, key=lambda a: int(a.rsplit(":", 1)[1]))
            images = [aws.ecs.describe_task_definition(taskDefinition=a)["taskDefinition"][
                "containerDefinitions"][0]["image"].rsplit(":", 1)[1] for a in revisions]
            seen = set()
            for image in images:
                if image in seen:
                    duplicates.append(f"{family}: {image} registered twice")
                seen.add(image)
            pushes = [tuple(int(p) for p in image.split(".")) for image in images]
            if pushes != sorted(pushes):
                regressions.append(f"{family}: an older push registered after a newer one: {images}")
    return duplicates, regressions


if __name__ == "__main__":
    main()
