#!/usr/bin/env python3
"""Checks fleetsync's container image as a user runs it. Run by scripts/image.sh after the build:

    .venv/bin/python scripts/image-check.py [IMAGE]        (default fleetsync:test)

1. the image's config: User 65532:65532, the ENTRYPOINT and CMD deploy/cloudformation.yaml relies
   on, SSL_CERT_FILE; its filesystem (podman export): no shell, the binary owned by root and
   read-only to the user, only the mirror dir owned by 65532;
2. there is no shell: `podman run --entrypoint /bin/sh` fails;
3. `fleetsync --version` answers with Cargo.toml's version;
4. `serve`, with the image's CMD and the config in FLEETSYNC_CONFIG, against the AWS emulator
   (scripts/emulator.py, on the host; the container shares the host network): /readyz answers
   200, its process runs as uid/gid 65532, a signed GitHub push webhook is answered 202 and its
   jobs are on the SQS FIFO queue; the config repo is a local git repo bind-mounted read-only
   and fetched through a file:// URL into the image's mirror dir;
5. SIGTERM (`podman kill --signal TERM`, what ECS sends) stops it with exit code 0 in < 10 s.
Prints "image size: N MB". Exits 1 with the failed check on stderr; every step has a timeout and
the containers, the emulator and the temporary repo are removed whatever happens.
podman runs as containers.md says: runc, cgroupfs, CONTAINERS_CONF=.ci/containers.conf.
"""
import hashlib
import hmac
import io
import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parent.parent
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs"]
UID = 65532
REPO_URL = "https://github.com/acme/platform-config"
SECRET = secrets.token_hex(20)
SHELLS = {"sh", "bash", "dash", "ash", "zsh", "busybox"}
GRACE = 10.0  # seconds SIGTERM may take; ECS's default stopTimeout is 30
LIMIT = 300  # the whole check


class Failure(Exception):
    pass


def main():
    image = sys.argv[1] if len(sys.argv) > 1 else "fleetsync:test"
    os.environ.setdefault("CONTAINERS_CONF", str(ROOT / ".ci" / "containers.conf"))
    signal.signal(signal.SIGALRM, overtime)
    signal.alarm(LIMIT)
    cleanup = []
    try:
        check(image, cleanup)
    except Failure as e:
        print(f"image-check: FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.alarm(0)
        for undo in reversed(cleanup):
            try:
                undo()
            except Exception as e:  # keep cleaning up
                print(f"image-check: cleanup: {e}", file=sys.stderr)
    print(f"image-check: {image} passed", flush=True)
    return 0


def overtime(*_):
    raise Failure(f"the check took more than {LIMIT}s")


def check(image, cleanup):
    tag = f"fleetsync-image-check-{os.getpid()}"
    containers = []
    cleanup.append(lambda: containers and podman("rm", "--force", "--time", "0", *containers, check=False))

    # 1. what the image says and holds
    found = json.loads(podman("image", "inspect", image).stdout)
    if not found:
        raise Failure(f"no image {image}")
    config = found[0]["Config"]
    size = found[0]["Size"]
    print(f"image size: {size / 1e6:.1f} MB ({size} bytes)", flush=True)
    user = config.get("User", "")
    if user != f"{UID}:{UID}":
        raise Failure(f"the image's User is {user!r}, not {UID}:{UID}")
    if config.get("Entrypoint") != ["/usr/local/bin/fleetsync"]:
        raise Failure(f"ENTRYPOINT is {config.get('Entrypoint')}")
    if config.get("Cmd") != ["serve", "--config", "env:FLEETSYNC_CONFIG"]:
        raise Failure(f"CMD is {config.get('Cmd')}")
    if "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" not in config.get("Env", []):
        raise Failure(f"SSL_CERT_FILE is not set: {config.get('Env')}")
    ok(f"config: User {user}, ENTRYPOINT {config['Entrypoint'][0]}, CMD {' '.join(config['Cmd'])}")

    created = f"{tag}-fs"
    podman("create", "--name", created, image)
    containers.append(created)
    files = {}
    with tarfile.open(fileobj=io.BytesIO(podman("export", created, text=False).stdout)) as tar:
        for member in tar:
            files["/" + member.name.removeprefix("./").lstrip("/")] = member
    shells = sorted(p for p, m in files.items() if Path(p).name in SHELLS)
    if shells:
        raise Failure(f"the image holds a shell: {shells}")
    binary = files.get("/usr/local/bin/fleetsync")
    if binary is None or not binary.isfile() or binary.uid != 0 or binary.mode & 0o022 or not binary.mode & 0o001:
        raise Failure(f"/usr/local/bin/fleetsync must be a root-owned file the user may run, not write: "
                      f"{binary and (binary.uid, oct(binary.mode))}")
    mirrors = files.get("/var/lib/fleetsync/mirrors")
    if mirrors is None or not mirrors.isdir() or (mirrors.uid, mirrors.gid) != (UID, UID):
        raise Failure(f"/var/lib/fleetsync/mirrors must be a directory owned by {UID}:{UID}: "
                      f"{mirrors and (mirrors.uid, mirrors.gid)}")
    theirs = sorted(p for p, m in files.items() if m.uid == UID and p != "/var/lib/fleetsync/mirrors")
    if theirs:
        raise Failure(f"only the mirror dir should belong to {UID}: {theirs}")
    for path in ("/etc/ssl/certs/ca-certificates.crt", "/etc/passwd", "/etc/group"):
        if path not in files:
            raise Failure(f"{path} missing")
    libraries = sorted(p for p, m in files.items() if m.isfile() and ".so" in Path(p).name)
    ok(f"filesystem: {sum(m.isfile() for m in files.values())} files, no shell, binary root-owned 0{binary.mode & 0o7777:o}, "
       f"mirror dir {UID}:{UID}; libraries {', '.join(Path(p).name for p in libraries)}")

    # 2. no shell to run
    shell = podman("run", "--rm", "--entrypoint", "/bin/sh", image, "-c", "echo a shell ran", check=False)
    if shell.returncode == 0 or "a shell ran" in shell.stdout:
        raise Failure(f"`podman run --entrypoint /bin/sh` ran a shell: {shell.stdout!r}")
    ok(f"no shell: `--entrypoint /bin/sh` exits {shell.returncode} ({last_line(shell.stderr)})")

    # 3. the version
    want = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
    version = podman("run", "--rm", image, "--version").stdout.strip()
    if version != f"fleetsync {want}":
        raise Failure(f"`fleetsync --version` answered {version!r}, not 'fleetsync {want}'")
    ok(f"--version: {version}")

    # 4. serve against the emulator
    endpoint, network = start_emulator(cleanup)
    aws = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
               aws_secret_access_key="test")
    sqs, ecs = boto3.client("sqs", **aws), boto3.client("ecs", **aws)
    queue_url = sqs.create_queue(QueueName="fleetsync.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    for cluster in ("staging", "production"):
        ecs.create_cluster(clusterName=cluster)

    work = Path(tempfile.mkdtemp(prefix="fleetsync-image-check-"))
    cleanup.append(lambda: shutil.rmtree(work) if os.geteuid() == 0 else as_container_user("rm", "-rf", str(work)))
    repo, head = config_repo(work, network)
    port = free_port()
    fleetsync_config = f"""listen: 127.0.0.1:{port}
mirrorDir: /var/lib/fleetsync/mirrors
queueUrl: {queue_url}
# no drift reconcile: the jobs on the queue are the push's alone
reconcileInterval: 0s
repos:
  - name: platform
    url: {REPO_URL}
    fetchUrl: file:///config-repo
    secret: env:FLEETSYNC_WEBHOOK_SECRET
"""
    serve = f"{tag}-serve"
    podman("run", "--detach", "--name", serve, "--network=host", "--volume", f"{repo}:/config-repo:ro",
           "--env", f"FLEETSYNC_CONFIG={fleetsync_config}", "--env", f"FLEETSYNC_WEBHOOK_SECRET={SECRET}",
           "--env", f"AWS_ENDPOINT_URL={endpoint}", "--env", "AWS_ACCESS_KEY_ID=test",
           "--env", "AWS_SECRET_ACCESS_KEY=test", "--env", "AWS_REGION=us-east-1", "--env", "RUST_LOG=info",
           image)
    containers.append(serve)
    try:
        serve_checks(serve, f"http://127.0.0.1:{port}", head, sqs, queue_url)
    except Failure:
        logs = podman("logs", serve, check=False)
        print(f"image-check: serve's log:\n{logs.stdout}{logs.stderr}", file=sys.stderr)
        raise


def serve_checks(serve, receiver, head, sqs, queue_url):
    started = time.monotonic()
    while not ready(f"{receiver}/readyz"):
        if inspect(serve, "{{.State.Running}}") != "true":
            raise Failure(f"serve exited with {inspect(serve, '{{.State.ExitCode}}')} before it answered /readyz")
        if time.monotonic() - started > 30:
            raise Failure("serve did not answer 200 on /readyz within 30s")
        time.sleep(0.2)
    ok(f"serve: /readyz 200 after {time.monotonic() - started:.1f}s")

    pid = inspect(serve, "{{.State.Pid}}")
    status = Path(f"/proc/{pid}/status").read_text()
    ids = {k: v.split() for k, v in re.findall(r"^(Uid|Gid):\s+(.*)$", status, re.M)}
    # /proc shows the host's ids; the container's are those through its user namespace's maps.
    inside = {"Uid": [container_id(pid, "uid", i) for i in ids["Uid"]],
              "Gid": [container_id(pid, "gid", i) for i in ids["Gid"]]}
    if any(i != UID for i in inside["Uid"] + inside["Gid"]):
        raise Failure(f"serve's process runs as real/effective/saved/fs uids {inside['Uid']} "
                      f"gids {inside['Gid']}, not {UID}")
    ok(f"serve's process (host pid {pid}) runs as uid {UID} gid {UID}")

    delivery = f"image-check-{secrets.token_hex(8)}"
    status, reply = deliver(receiver, "staging", head, delivery)
    if status != 202 or not reply.get("jobs"):
        raise Failure(f"the push was answered {status}, not 202 with jobs: {reply}")
    jobs = sorted(f"{j['environment']}/{j['app']}" for j in reply["jobs"])
    ok(f"push webhook: 202 {reply.get('status')}: {', '.join(jobs)}")

    received = []
    deadline = time.monotonic() + 20
    while len(received) < len(jobs) and time.monotonic() < deadline:
        out = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                  VisibilityTimeout=300)
        received += out.get("Messages", [])
    if len(received) != len(jobs):
        raise Failure(f"{len(received)} messages on the queue for {len(jobs)} jobs")
    strays = [m["Body"][:200] for m in received if delivery not in m["Body"]]
    if strays:
        raise Failure(f"messages on the queue that are not the push's jobs: {strays}")
    ok(f"queue: {len(received)} job messages of delivery {delivery} received from {queue_url.rsplit('/', 1)[-1]}")

    # 5. SIGTERM, as ECS stops a task
    started = time.monotonic()
    podman("kill", "--signal", "TERM", serve)
    code = podman("wait", serve, timeout=GRACE + 20).stdout.strip()
    took = time.monotonic() - started
    if code != "0":
        raise Failure(f"serve exited with {code} on SIGTERM, not 0")
    if took >= GRACE:
        raise Failure(f"serve took {took:.1f}s to stop on SIGTERM (limit {GRACE:.0f}s)")
    ok(f"SIGTERM: serve exited 0 in {took:.2f}s")


def container_id(pid, kind, host_id):
    for line in Path(f"/proc/{pid}/{kind}_map").read_text().splitlines():
        inside, outside, count = map(int, line.split())
        if outside <= int(host_id) < outside + count:
            return inside + int(host_id) - outside
    raise Failure(f"host {kind} {host_id} of serve's process is not mapped into its container")


def start_emulator(cleanup):
    """scripts/emulator.py on a free port; returns its URL and the default network's ids."""
    log = tempfile.TemporaryFile(mode="w+")
    emulator = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "emulator.py"), "--port", "0",
                                 "--example-account"], stdout=subprocess.PIPE, stderr=log, text=True)

    def stop():
        emulator.terminate()
        try:
            emulator.wait(timeout=10)
        except subprocess.TimeoutExpired:
            emulator.kill()
            emulator.wait(timeout=10)
    cleanup.append(stop)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in emulator.stdout], daemon=True).start()
    network, endpoint = None, None
    deadline = time.monotonic() + 60
    while endpoint is None:
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            log.seek(0)
            raise Failure(f"the emulator did not start within 60s: {log.read()[-2000:]}")
        if line.startswith("default network"):
            network = dict(f.split("=", 1) for f in line.split()[2:])
        elif line.startswith("emulator ready on"):
            endpoint = line.split()[-1]
    ok(f"emulator: {endpoint}")
    return endpoint, network


def config_repo(work, network):
    """example-repo as a git repo with main and staging, its placeholders the emulator's network."""
    repo = work / "platform-config"
    shutil.copytree(ROOT / "example-repo", repo)
    subnets = network["subnets"].split(",")
    for path in repo.rglob("*"):
        if path.is_file():
            text = path.read_text().replace("subnet-EXAMPLE1", subnets[0]).replace("subnet-EXAMPLE2", subnets[1])
            path.write_text(text.replace("sg-EXAMPLE", network["securityGroup"]))
    git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", "Import example-repo")
    git(repo, "branch", "staging")
    head = git(repo, "rev-parse", "staging")
    # libgit2 opens a file:// remote only if it belongs to the user fetching (git's
    # safe.directory check), so the bind-mounted repo must be owned by the image's user.
    as_container_user("chown", "-R", f"{UID}:{UID}", str(repo))
    return repo, head


def as_container_user(*command):
    """Runs a file command as root would for the containers: rootless podman maps their ids."""
    command = list(command) if os.geteuid() == 0 else PODMAN + ["unshare", *command]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=60)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        raise Failure(f"`{' '.join(command)}` failed: {getattr(e, 'stderr', b'').decode(errors='replace')}")


def deliver(receiver, branch, commit, delivery):
    """A push as GitHub sends it: JSON body, X-Hub-Signature-256 over the raw bytes."""
    body = json.dumps({
        "ref": f"refs/heads/{branch}", "before": "0" * 40, "after": commit, "created": False, "deleted": False,
        "forced": False, "repository": {"full_name": "acme/platform-config", "html_url": REPO_URL,
                                        "clone_url": REPO_URL + ".git"},
        "sender": {"login": "image-check"},
    }).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(f"{receiver}/webhooks/github", data=body, method="POST", headers={
        "Content-Type": "application/json", "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": signature})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except OSError as e:
        raise Failure(f"the push webhook got no answer: {e}")


def podman(*args, check=True, timeout=120, text=True):
    try:
        done = subprocess.run(PODMAN + list(args), capture_output=True, text=text, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failure(f"`podman {' '.join(args[:3])} …` took more than {timeout}s")
    if check and done.returncode != 0:
        stderr = done.stderr if text else done.stderr.decode(errors="replace")
        raise Failure(f"`podman {' '.join(args[:3])} …` exited {done.returncode}: {stderr.strip()[-2000:]}")
    return done


def inspect(container, template):
    return podman("inspect", "--format", template, container).stdout.strip()


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=image-check",
                           "-c", "user.email=image-check@fleetsync.invalid", *args],
                          check=True, capture_output=True, text=True, timeout=60).stdout.strip()


def ready(url):
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def last_line(text):
    lines = text.strip().splitlines()
    line = lines[-1] if lines else "no output"
    return line[line.rfind("exec: ") :] if "exec: " in line else line[-160:]


def ok(message):
    print(f"image-check: ok: {message}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
