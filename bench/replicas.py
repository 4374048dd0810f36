#!/usr/bin/env python3
"""Receiver replicas: what a push costs when pushes go round robin, and resolving on an aged mirror.

Run with scripts/bench-replicas.sh (it builds the release binary). A generated config repo of
BENCH_APPS apps (default 100, as bench/app_scale.py makes it), `fleetsync serve` against the
emulator, jobs drained from the queue as they arrive. It measures:
  round robin    one case with 1 receiver, one with 2 (each its own mirror, the same queue), each
                 case with a fresh queue and fresh receivers. The first push to staging (before =
                 40 zeros) goes to receiver A and enqueues every app; then BENCH_PUSHES pushes
                 (default 20), each one commit changing one app's image (another app each time),
                 before = the previous head, delivered to A, or to B, A, B, ... with 2 receivers.
                 A push is diffed against the specs its parent resolves to, which every replica
                 finds the same way, so every later push must enqueue exactly 1 job: the table
                 prints jobs per push and its ratio to one receiver, and the median request → 202.
  aged mirror    one receiver; after its first push, BENCH_FETCHES pushes (default 1,000), each
                 one commit to staging (apps in turn, each a new image version), so its mirror
                 has fetched that many times. Prints the median push → 202 of pushes 1-20 and of
                 the last 20; then, with the receiver stopped, `fleetsync validate --env staging`
                 (a fresh process: wall time and peak RSS) on that mirror and on a `git clone
                 --mirror` of the source repo made then, 5 runs each interleaved, median.
Every push must answer 202, or the script stops. A later push that enqueues other than the one
app it changed is printed with its answer, and makes the script exit 1 after the tables.
"""
import hashlib
import hmac
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app_scale import drain, generate, git, start_emulator, task_definition  # noqa: E402
from receiver import free_port, peak_rss, wait_listening  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUILT = ROOT / "target/release/fleetsync"
SECRET = "bench-secret"
APPS = int(os.environ.get("BENCH_APPS", "100"))
PUSHES = int(os.environ.get("BENCH_PUSHES", "20"))
FETCHES = int(os.environ.get("BENCH_FETCHES", "1000"))
# Optional: a binary of an earlier commit, run in the same round-robin case for comparison.
BEFORE = os.environ.get("BENCH_BEFORE")
DRAINERS = 4
WINDOW = 20  # pushes at each end of the aged-mirror run whose latencies are compared
VALIDATE_RUNS = 5
ZEROS = "0" * 40
unexpected = []  # (case, push, answer) of later pushes that enqueued other than their one app


def main():
    started = time.monotonic()
    load = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="fleetsync-replicas-"))
    children = []
    try:
        # A copy: a build finishing during the run must not swap the binary between cases.
        binary = work / "fleetsync"
        shutil.copy2(BUILT, binary)
        built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(BUILT.stat().st_mtime))
        _, endpoint = start_emulator(children)
        rounds = [round_robin(work, binary, endpoint, children, receivers) for receivers in (1, 2)]
        if BEFORE:
            earlier = work / "fleetsync-before"
            shutil.copy2(BEFORE, earlier)
            rounds.append(round_robin(work, earlier, endpoint, children, 2, f"before ({BEFORE})"))
        aged = aged_mirror(work, binary, endpoint, children)
        # The receiver's memory after the same pushes, side by side with the earlier build.
        aged_before = aged_mirror(work, earlier, endpoint, children, "before") if BEFORE else None
    finally:
        for child in children:
            child.terminate()
            child.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nbinary {BUILT} (built {built}), {APPS} apps per environment, "
          f"{os.cpu_count()} cores, load average {load:.2f} at start, {os.getloadavg()[0]:.2f} at end\n")
    print("Round robin: the first push to A enqueues every app, then one app changes per push.\n")
    print("| case | pushes | jobs enqueued after the first push | jobs per push | × one receiver | median push → 202 |")
    print("|---|---|---|---|---|---|")
    one = sum(rounds[0]["jobs"]) / len(rounds[0]["jobs"])
    for r in rounds:
        per_push = sum(r["jobs"]) / len(r["jobs"])
        print(f"| {r['case']} | {len(r['jobs'])} | {sum(r['jobs']):,} | {per_push:.2f} | "
              f"{per_push / one:.2f} | {ms(statistics.median(r['latencies']))} |")
    for r in rounds:
        print(f"{r['case']}: first push {r['first_jobs']} jobs in {ms(r['first_latency'])}; "
              f"later pushes, jobs each: {r['jobs']}")

    print(f"\nAged mirror: {FETCHES:,} pushes after the first, one receiver "
          f"({aged['fetches']} git fetches counted by /metrics, {aged['rate']:.1f} pushes/s "
          f"including the commits; receiver RSS {aged['rss_now']} after them, peak {aged['rss']}).\n")
    if aged_before:
        print(f"The same {FETCHES:,} pushes to the earlier build ({BEFORE}): RSS {aged_before['rss_now']} "
              f"after them, peak {aged_before['rss']}.\n")
    print("| pushes | median push → 202 |")
    print("|---|---|")
    print(f"| 1-{WINDOW} | {ms(statistics.median(aged['latencies'][:WINDOW]))} |")
    print(f"| last {WINDOW} ({FETCHES - WINDOW + 1:,}-{FETCHES:,}) | "
          f"{ms(statistics.median(aged['latencies'][-WINDOW:]))} |")
    print(f"\n`fleetsync validate --repo <mirror> --env staging`, {VALIDATE_RUNS} runs each, interleaved:\n")
    print("| mirror | packs | validate median | × fresh | validate peak RSS (median) |")
    print("|---|---|---|---|---|")
    fresh = statistics.median(aged["validate"]["fresh"]["times"])
    for kind, label in (("aged", f"receiver's, after {FETCHES:,} fetches"), ("fresh", "fresh `git clone --mirror`")):
        v = aged["validate"][kind]
        median = statistics.median(v["times"])
        print(f"| {label} | {v['packs']} | {ms(median)} | {median / fresh:.2f} | "
              f"{statistics.median(v['rss']) / 1024:.1f} MiB |")
    for kind in ("aged", "fresh"):
        v = aged["validate"][kind]
        print(f"{kind}: {v['loose']} loose objects; runs {', '.join(ms(t) for t in v['times'])}")
    print(f"\nwall time {time.monotonic() - started:.0f} s")
    if unexpected:
        for case, push, answer in unexpected:
            print(f"UNEXPECTED: {case}, push {push} enqueued {len(answer.get('jobs', []))} jobs: "
                  f"{json.dumps(answer)}", file=sys.stderr)
        raise SystemExit(f"bench: {len(unexpected)} later pushes enqueued other than the one app they changed")


def round_robin(work, binary, endpoint, children, receivers, before=None):
    """`before` labels an earlier binary: its later pushes are counted, not checked."""
    case = "1 receiver" if receivers == 1 else f"{receivers} receivers, round robin"
    name = f"rr-{receivers}"
    if before:
        case, name = f"{case}, {before}", f"{name}-before"
    repo = generate(work / f"repo-{name}", APPS)
    git(repo, "checkout", "--quiet", "staging")
    queue = new_queue(endpoint, name)
    started = [start_receiver(work, binary, f"{name}-{'ab'[i]}", repo, queue, endpoint, children)
               for i in range(receivers)]
    jobs, latencies = [], []
    try:
        with draining(endpoint, queue):
            head = git(repo, "rev-parse", "staging")
            answer, first_latency = push(started[0][1], ZEROS, head, f"{name}-first", case)
            if len(answer["jobs"]) != APPS:
                raise SystemExit(f"bench: {case}: the first push enqueued {len(answer['jobs'])} jobs, "
                                 f"not {APPS}: {json.dumps(answer)}")
            for k in range(PUSHES):
                # B, A, B, ... with 2 receivers: every later push lands on the other replica.
                port = started[(k + 1) % receivers][1]
                app, after = change(repo, k % APPS, f"1.0.{k + 1}")
                answer, elapsed = push(port, head, after, f"{name}-{k + 1}", case)
                jobs.append(len(answer["jobs"]))
                latencies.append(elapsed)
                if not before:
                    check(case, k + 1, app, answer)
                head = after
    finally:
        for serve, _, _ in started:
            stop(serve, children)
    return {"case": case, "jobs": jobs, "latencies": latencies, "first_jobs": APPS,
            "first_latency": first_latency}


def aged_mirror(work, binary, endpoint, children, name="aged"):
    import re
    case = "aged mirror"
    repo = generate(work / f"repo-{name}", APPS)
    git(repo, "checkout", "--quiet", "staging")
    queue = new_queue(endpoint, name)
    serve, port, mirrors = start_receiver(work, binary, name, repo, queue, endpoint, children)
    latencies = []
    try:
        with draining(endpoint, queue):
            head = git(repo, "rev-parse", "staging")
            answer, _ = push(port, ZEROS, head, f"{name}-first", case)
            if len(answer["jobs"]) != APPS:
                raise SystemExit(f"bench: {case}: the first push enqueued {len(answer['jobs'])} jobs, not {APPS}")
            began = time.monotonic()
            for j in range(FETCHES):
                app, after = change(repo, j % APPS, f"2.{j // APPS}.{j % APPS + 1}")
                answer, elapsed = push(port, head, after, f"{name}-{j + 1}", case)
                latencies.append(elapsed)
                check(case, j + 1, app, answer)
                head = after
                if (j + 1) % 100 == 0:
                    print(f"bench: {j + 1} pushes, {(j + 1) / (time.monotonic() - began):.1f}/s, "
                          f"last {ms(elapsed)}", file=sys.stderr, flush=True)
            rate = FETCHES / (time.monotonic() - began)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        fetches = re.search(r'fleetsync_git_fetches_total\{repo="platform"\} (\d+)', metrics)
        rss = peak_rss(serve.pid)
        rss_now = current_rss(serve.pid)
    finally:
        stop(serve, children)
    aged = mirrors / "platform.git"
    fresh = work / f"fresh-{name}.git"
    # file://, not a path: a local path clone would hardlink the source's loose objects.
    subprocess.run(["git", "clone", "--quiet", "--mirror", f"file://{repo}", str(fresh)], check=True)
    runs = {"aged": (aged, [], []), "fresh": (fresh, [], [])}
    for _ in range(VALIDATE_RUNS):
        for path, times, peaks in runs.values():
            elapsed, maxrss = validate(binary, path)
            times.append(elapsed)
            peaks.append(maxrss)
    return {
        "latencies": latencies, "rate": rate, "rss": rss, "rss_now": rss_now,
        "fetches": fetches.group(1) if fetches else "?",
        "validate": {kind: {"packs": len(list((path / "objects/pack").glob("*.pack"))),
                            "loose": loose_objects(path), "times": times, "rss": peaks}
                     for kind, (path, times, peaks) in runs.items()},
    }


def current_rss(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return f"{int(line.split()[1]) / 1024:.1f} MiB"
    return "?"


def change(repo, index, version):
    """Commits a new image version of one app on staging (checked out); (app, commit)."""
    name = f"app-{index:05}"
    (repo / "apps" / name / "taskdef.json").write_text(json.dumps(task_definition(name, version), indent=2))
    git(repo, "commit", "--quiet", "-am", f"{name} {version}")
    return name, git(repo, "rev-parse", "HEAD")


def check(case, number, app, answer):
    """A later push must enqueue exactly the app it changed; anything else is reported."""
    if [job.get("app") for job in answer["jobs"]] != [app]:
        unexpected.append((case, number, answer))


def push(port, before, after, delivery, case):
    status, answer, elapsed = deliver(port, before, after, delivery)
    if status != 202:
        raise SystemExit(f"bench: {case}: push {delivery} ({before[:7]}..{after[:7]}) answered "
                         f"{status}, not 202: {json.dumps(answer)}")
    return answer, elapsed


def deliver(port, before, after, delivery):
    """One signed GitHub push to staging; (status, answer, seconds from request to answer)."""
    body = json.dumps({"ref": "refs/heads/staging", "before": before, "after": after,
                       "repository": {"clone_url": "https://github.com/acme/platform-config.git"}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/github", data=body, method="POST", headers={
        "Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    elapsed = time.monotonic() - started
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = {"raw": raw.decode(errors="replace")}
    return status, answer, elapsed


def new_queue(endpoint, name):
    import boto3
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                       aws_secret_access_key="test")
    return sqs.create_queue(QueueName=f"replicas-{name}.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]


def start_receiver(work, binary, name, repo, queue, endpoint, children):
    """`fleetsync serve` with a mirrorDir of its own; (process, port, mirrorDir)."""
    port = free_port()
    mirrors = work / f"mirrors-{name}"
    config = work / f"fleetsync-{name}.yaml"
    config.write_text(f"""listen: 127.0.0.1:{port}
mirrorDir: {mirrors}
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
    serve = subprocess.Popen([str(binary), "serve", "--config", str(config)], env=env)
    children.append(serve)
    wait_listening(port)
    return serve, port, mirrors


def stop(serve, children):
    serve.terminate()
    serve.wait(timeout=30)
    children.remove(serve)


@contextmanager
def draining(endpoint, queue):
    """Drain threads (app_scale.drain) for as long as the block runs, then until the queue is empty."""
    done = threading.Event()
    drainers = [threading.Thread(target=drain, args=(endpoint, queue, done)) for _ in range(DRAINERS)]
    for d in drainers:
        d.start()
    try:
        yield
    finally:
        done.set()
        for d in drainers:
            d.join()


def validate(binary, repo):
    """`fleetsync validate --repo REPO --env staging` as a fresh process: (seconds, ru_maxrss KiB)."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen([str(binary), "validate", "--repo", str(repo), "--env", "staging"],
                                 stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.monotonic() - started
        if os.waitstatus_to_exitcode(status) != 0:
            stderr.seek(0)
            raise SystemExit(f"bench: validate {repo} failed: {stderr.read().decode()}")
    return elapsed, usage.ru_maxrss


def loose_objects(repo):
    objects = repo / "objects"
    return sum(1 for d in objects.glob("??") if d.is_dir() for _ in d.iterdir())


def ms(seconds):
    return f"{seconds * 1000:,.1f} ms"


if __name__ == "__main__":
    main()
