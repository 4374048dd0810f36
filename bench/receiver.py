#!/usr/bin/env python3
"""Receiver benchmark: signed GitHub push webhooks per second over loopback, with wrk.

Run with scripts/bench-receiver.sh (it builds the release binaries and installs wrk). It measures,
in one run on this machine, with the server pinned to core 0 and wrk (1 thread) to core 1:
  bare       examples/bare_receiver: reads the body, answers 200 (the stack's floor)
  verify     the same, checking X-Hub-Signature-256 first (the floor of any verifying receiver)
  unwatched  fleetsync serve, a tag push: verify + parse + answer, no fetch
  watched    fleetsync serve, pushes to the staging branch: fetch coalesced, same head, no re-enqueue
and prints a Markdown table: req/s, p50, p99, and the server's peak RSS (VmHWM).
Every delivery has its own id, so none is answered as a replay.
"""
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret"
BODY_BYTES = 0
DURATION = os.environ.get("BENCH_DURATION", "10s")
CONNECTIONS = os.environ.get("BENCH_CONNECTIONS", "16")


def main():
    work = Path(tempfile.mkdtemp(prefix="fleetsync-bench-"))
    children = []
    try:
        rows = run(work, children)
    finally:
        for child in children:
            child.terminate()
            child.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    bare = rows[0][1]
    print(f"\nwrk -t1 -c{CONNECTIONS} -d{DURATION}, server on core 0, wrk on core 1, body {BODY_BYTES} bytes\n")
    print("| case | req/s | × bare | p50 | p99 | peak RSS |")
    print("|---|---|---|---|---|---|")
    for name, rps, p50, p99, rss in rows:
        print(f"| {name} | {rps:,.0f} | {rps / bare:.2f} | {p50} | {p99} | {rss} |")


def run(work, children):
    emulator = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "emulator.py"), "--port", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    children.append(emulator)
    emulator.stdout.readline()
    endpoint = emulator.stdout.readline().split()[-1]
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
               AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1", FLEETSYNC_WEBHOOK_SECRET=SECRET, RUST_LOG="warn")
    import boto3
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                       aws_secret_access_key="test")
    queue = sqs.create_queue(QueueName="bench.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]

    repo = work / "platform-config"
    shutil.copytree(ROOT / "example-repo", repo)
    git = lambda *a: subprocess.run(["git", "-C", str(repo), "-c", "user.name=b", "-c", "user.email=b@b.invalid", *a],
                                    check=True, capture_output=True, text=True).stdout.strip()
    git("init", "--quiet", "--initial-branch=main")
    git("add", ".")
    git("commit", "--quiet", "-m", "import")
    git("branch", "staging")
    head = git("rev-parse", "staging")

    rows = []
    port = free_port()
    bare = subprocess.Popen(["taskset", "-c", "0", str(ROOT / "target/release/examples/bare_receiver"), f"127.0.0.1:{port}"])
    children.append(bare)
    wait_listening(port)
    rows.append(("bare axum handler", *wrk(work, port, push_body("refs/tags/v1", head)), peak_rss(bare.pid)))
    bare.terminate()
    bare.wait()

    port = free_port()
    verify = subprocess.Popen(["taskset", "-c", "0", str(ROOT / "target/release/examples/bare_receiver"),
                               f"127.0.0.1:{port}", SECRET])
    children.append(verify)
    wait_listening(port)
    rows.append(("bare handler + HMAC-SHA256 check only", *wrk(work, port, push_body("refs/tags/v1", head)),
                 peak_rss(verify.pid)))
    verify.terminate()
    verify.wait()

    port = free_port()
    config = work / "fleetsync.yaml"
    config.write_text(f"""listen: 127.0.0.1:{port}
mirrorDir: {work / 'mirrors'}
queueUrl: {queue}
repos:
  - name: platform
    url: https://github.com/acme/platform-config
    fetchUrl: file://{repo}
    secret: env:FLEETSYNC_WEBHOOK_SECRET
webhooks:
  ratePerSecond: 1000000
  rateBurst: 1000000
""")
    serve = subprocess.Popen(["taskset", "-c", "0", str(ROOT / "target/release/fleetsync"), "serve", "--config", str(config)], env=env)
    children.append(serve)
    wait_listening(port)
    rows.append(("fleetsync: unwatched ref (tag push)", *wrk(work, port, push_body("refs/tags/v1", head)), "-"))
    rows.append(("fleetsync: watched branch, fetch coalesced", *wrk(work, port, push_body("refs/heads/staging", head)), peak_rss(serve.pid)))
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    fetches = re.search(r'fleetsync_git_fetches_total\{repo="platform"\} (\d+)', metrics)
    enqueued = re.search(r'outcome="enqueued"\} (\d+)', metrics)
    queued = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"])
    print(f"watched branch: {fetches.group(1) if fetches else 0} git fetches for "
          f"{enqueued.group(1) if enqueued else 0} deliveries answered 'enqueued'; "
          f"{queued['Attributes']['ApproximateNumberOfMessages']} jobs in the queue (one per staging app: one set)")
    return rows


def push_body(ref, head):
    """A real GitHub push payload (go-playground's fixture, 8 KiB) re-pointed at the bench repo."""
    payload = json.loads((ROOT / "tests/fixtures/webhooks/github/go-playground.push.json").read_text())
    payload.update(ref=ref, after=head)
    payload["repository"].update(clone_url="https://github.com/acme/platform-config.git",
                                 html_url="https://github.com/acme/platform-config",
                                 ssh_url="git@github.com:acme/platform-config.git")
    return json.dumps(payload)


def wrk(work, port, body):
    global BODY_BYTES
    BODY_BYTES = len(body.encode())
    signature = "sha256=" + hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
    script = work / "push.lua"
    script.write_text(f"""
wrk.method = "POST"
wrk.body = {lua_string(body)}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-GitHub-Event"] = "push"
wrk.headers["X-Hub-Signature-256"] = "{signature}"
local counter = 0
request = function()
  counter = counter + 1
  wrk.headers["X-GitHub-Delivery"] = "bench-" .. counter
  return wrk.format(nil, "/webhooks/github")
end
""")
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{DURATION}", "--latency",
                          "-s", str(script), f"http://127.0.0.1:{port}"], check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        raise SystemExit(f"bench: {non_2xx.group(1)} requests failed:\n{out}")
    return rps, p50, p99


def lua_string(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def peak_rss(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return f"{int(line.split()[1]) / 1024:.1f} MiB"
    return "?"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, limit=30):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bench: nothing listens on {port}")


if __name__ == "__main__":
    main()
