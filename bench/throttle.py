#!/usr/bin/env python3
"""One ECS budget per account: 100 changed apps with 1, 4 and 8 workers against a throttling ECS.

Run with scripts/bench-throttle.sh. The emulator throttles ECS per operation with token buckets
shared by every caller, as ECS does per account and Region ("Request throttling for the Amazon
ECS API"; FLEETSYNC_EMULATOR_THROTTLE): RegisterTaskDefinition 1 per second with a burst of 5,
every other operation the workers call 20 per second with a burst of 100. AWS publishes no
per-action numbers in the pages the library holds; these are the rates fleetsync's defaults
assume (`ecsRegistersPerSecond: 1`, `ecsCallsPerSecond: 20`). A config repo of BENCH_APPS apps
(default 100) on one cluster; a first push creates them (not timed). Then for W = 1, 4, 8: one
commit changes every image and is pushed; W `fleetsync worker`s, each configured with
`accountBudget: {callsPerSecond: 20, registersPerSecond: 1}` and `maxWorkers: W`, apply it.
Timed from the webhook to an empty queue. Prints wall time, the ECS calls the emulator
throttled, the jobs that failed (must be 0: every service at the new image, unmarked), and the
wall time next to the bucket's floor: (N - burst) / sustained rate of registrations.
"""
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from receiver import free_port, wait_listening  # noqa: E402
from sync import (BINARY, SECRET, Aws, app_name, change_images, check_completed, deliver, generate,  # noqa: E402
                  git, spawn, start_emulator, wait_drained, workers)

APPS = int(os.environ.get("BENCH_APPS", "100"))
WORKERS = [int(n) for n in os.environ.get("BENCH_WORKERS", "1,4,8").split(",")]
REGISTER_RATE, REGISTER_BURST = 1, 5
BUCKETS = (f"RegisterTaskDefinition={REGISTER_RATE}/{REGISTER_BURST},DescribeServices=20/100,"
           "UpdateService=20/100,TagResource=20/100,DescribeTaskDefinition=20/100,CreateService=20/100")


def main():
    work = Path(tempfile.mkdtemp(prefix="fleetsync-throttle-"))
    calls = work / "calls.log"
    calls.touch()
    children = []
    os.environ["FLEETSYNC_EMULATOR_THROTTLE"] = BUCKETS
    rows = []
    try:
        endpoint, network = start_emulator(calls, children)
        env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                   AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1", FLEETSYNC_WEBHOOK_SECRET=SECRET,
                   RUST_LOG="warn")
        aws = Aws(endpoint)
        cluster = "throttle"
        aws.ecs.create_cluster(clusterName=cluster)
        queue = aws.sqs.create_queue(QueueName="throttle.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
        repo = generate(work / "repo", APPS, cluster, network)
        port = free_port()
        spawn([str(BINARY), "serve", "--config", str(config(work, "serve", port, repo, queue, 1))], env, children)
        wait_listening(port)
        before = git(repo, "rev-parse", "main")
        with workers(4, config(work, "setup", port, repo, queue, 4), env, children):
            deliver(port, "0" * 40, before, "create")
            wait_drained(aws, queue)
        for w in WORKERS:
            time.sleep(REGISTER_BURST / REGISTER_RATE + 1)  # the buckets full again
            version = f"3.{w}.0"
            head = change_images(repo, APPS, version)
            log_from = len(calls.read_text().splitlines())
            stderr = work / f"workers-{w}.log"
            with open(stderr, "w") as errors:
                with workers(w, config(work, f"w{w}", port, repo, queue, w), env, children, errors):
                    started = time.monotonic()
                    answer = deliver(port, before, head, f"change-{w}")
                    if len(answer["jobs"]) != APPS:
                        raise SystemExit(f"bench: {len(answer['jobs'])} jobs, not {APPS}")
                    wait_drained(aws, queue)
                    elapsed = time.monotonic() - started
            before = head
            lines = calls.read_text().splitlines()[log_from:]
            throttled = sum(1 for line in lines if line.startswith("ecs ") and line.endswith(" throttled"))
            failed = stderr.read_text().count("Job failed")
            check_completed(aws, cluster, APPS, version)
            unmarked = all(not failure_mark(aws, cluster, app_name(i)) for i in range(APPS))
            rows.append((w, elapsed, throttled, failed, unmarked))
    finally:
        for child in children:
            child.terminate()
            child.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    floor = (APPS - REGISTER_BURST) / REGISTER_RATE
    print(f"\n{APPS} changed apps; emulator buckets {BUCKETS}; floor {floor:.0f} s")
    print("| workers | wall time | × floor | ECS calls throttled | jobs failed | every service at the new image, unmarked |")
    print("|---|---|---|---|---|---|")
    for w, elapsed, throttled, failed, unmarked in rows:
        print(f"| {w} | {elapsed:.1f} s | {elapsed / floor:.2f} | {throttled} | {failed} | {'yes' if unmarked else 'no'} |")
    if any(failed or not unmarked for _, _, _, failed, unmarked in rows):
        sys.exit(1)


def failure_mark(aws, cluster, name):
    arn = aws.ecs.describe_services(cluster=cluster, services=[name])["services"][0]["serviceArn"]
    tags = {t["key"]: t["value"] for t in aws.ecs.list_tags_for_resource(resourceArn=arn).get("tags", [])}
    return tags.get("fleetsync:failure")


def config(work, name, port, repo, queue, max_workers):
    path = work / f"fleetsync-{name}.yaml"
    path.write_text(f"""listen: 127.0.0.1:{port}
mirrorDir: {work / f'mirrors-{name}'}
queueUrl: {queue}
reconcileInterval: 0s
repos:
  - name: bench
    url: https://github.com/acme/bench-config
    fetchUrl: file://{repo}
    secret: env:FLEETSYNC_WEBHOOK_SECRET
worker:
  rolloutPollInterval: 1s
  accountBudget: {{ callsPerSecond: 20, registersPerSecond: {REGISTER_RATE} }}
  maxWorkers: {max_workers}
""")
    return path


if __name__ == "__main__":
    main()
