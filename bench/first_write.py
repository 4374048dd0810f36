#!/usr/bin/env python3
"""First write: how long from a push's webhook to the UpdateService that starts its rollout.

Run with scripts/bench-first-write.sh (it builds the release binary). Against the emulator, whose
call log (FLEETSYNC_EMULATOR_CALL_LOG) gets a line the moment it serves a call, one app bound to
its own cluster, created by a first push (not timed), one `fleetsync serve` and one
`fleetsync worker` (default settings but `rolloutPollInterval: 1s`):
  fleetsync  ROUNDS times: a commit changes the app's image and is pushed; timed from sending the
             webhook until the call log shows its UpdateService. The rollout then finishes and
             the queue drains before the next round.
  floor      in the same run, the calls that path cannot do without, made one after the other
             from this process with boto3 against the same emulator: SendMessage,
             ReceiveMessage, DescribeServices, the preflight's DescribeSubnets and
             DescribeSecurityGroups, RegisterTaskDefinition, UpdateService. No git, no signature,
             no HTTP to fleetsync: what is left is the price of the calls alone.
Prints the median and the worst of each, and their ratio.
"""
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from receiver import free_port, wait_listening  # noqa: E402
from sync import (BINARY, SECRET, Aws, change_images, deliver, generate, git, spawn,  # noqa: E402
                  start_emulator, task_definition, wait_drained, workers, write_config)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20"))
LIMIT = 60


def main():
    work = Path(tempfile.mkdtemp(prefix="fleetsync-first-write-"))
    calls = work / "calls.log"
    calls.touch()
    children = []
    try:
        endpoint, network = start_emulator(calls, children)
        env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                   AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1", FLEETSYNC_WEBHOOK_SECRET=SECRET,
                   RUST_LOG=os.environ.get("BENCH_RUST_LOG", "warn"))
        aws = Aws(endpoint)
        fleetsync, floor = measure(work, network, env, aws, endpoint, calls, children)
    finally:
        for child in children:
            child.terminate()
            child.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{ROUNDS} rounds, one app")
    print("| path | median | worst |")
    print("|---|---|---|")
    for name, times in (("fleetsync: webhook sent → UpdateService served", fleetsync),
                        ("floor: the same calls from one boto3 script", floor)):
        print(f"| {name} | {statistics.median(times) * 1000:.0f} ms | {max(times) * 1000:.0f} ms |")
    print(f"\nmedian ratio fleetsync ÷ floor: {statistics.median(fleetsync) / statistics.median(floor):.2f}")


def measure(work, network, env, aws, endpoint, calls, children):
    cluster = "first-write"
    aws.ecs.create_cluster(clusterName=cluster)
    queue = aws.sqs.create_queue(QueueName="first-write.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    repo = generate(work / "repo", 1, cluster, network)
    port = free_port()
    config = write_config(work, "first-write", port, repo, queue, reconcile="0s")
    spawn([str(BINARY), "serve", "--config", str(config)], env, children)
    wait_listening(port)
    before = git(repo, "rev-parse", "main")
    fleetsync = []
    with workers(1, config, env, children):
        deliver(port, "0" * 40, before, "create")
        wait_drained(aws, queue)
        for i in range(ROUNDS):
            head = change_images(repo, 1, f"2.0.{i}")
            log = Tail(calls)
            started = time.monotonic()
            answer = deliver(port, before, head, f"change-{i}")
            if len(answer["jobs"]) != 1:
                raise SystemExit(f"bench: {len(answer['jobs'])} jobs for one changed app")
            log.wait_for("ecs UpdateService")
            fleetsync.append(time.monotonic() - started)
            wait_drained(aws, queue)
            before = head
    return fleetsync, floor(aws, endpoint, cluster, queue, network)


def floor(aws, endpoint, cluster, queue, network):
    import boto3
    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                       aws_secret_access_key="test")
    subnets, group = network
    name = "app-000"
    times = []
    for i in range(ROUNDS):
        started = time.monotonic()
        aws.sqs.send_message(QueueUrl=queue, MessageBody="{}", MessageGroupId="floor",
                             MessageDeduplicationId=f"floor-{i}")
        received = aws.sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)["Messages"]
        aws.ecs.describe_services(cluster=cluster, services=[name])
        ec2.describe_subnets(SubnetIds=[s.strip() for s in subnets.split(",")])
        ec2.describe_security_groups(GroupIds=[group])
        definition = json.loads(task_definition(name, f"9.0.{i}"))
        arn = aws.ecs.register_task_definition(**definition)["taskDefinition"]["taskDefinitionArn"]
        aws.ecs.update_service(cluster=cluster, service=name, taskDefinition=arn)
        times.append(time.monotonic() - started)
        aws.sqs.delete_message(QueueUrl=queue, ReceiptHandle=received[0]["ReceiptHandle"])
    return times


class Tail:
    """The emulator's call log from now on, read as it grows."""

    def __init__(self, path):
        self.file = open(path)
        self.file.seek(0, os.SEEK_END)

    def wait_for(self, call):
        deadline = time.monotonic() + LIMIT
        pending = ""
        while time.monotonic() < deadline:
            pending += self.file.read()
            lines = pending.split("\n")
            pending = lines.pop()
            if any(line.strip() == call for line in lines):
                self.file.close()
                return
            time.sleep(0.001)
        raise SystemExit(f"bench: no {call} within {LIMIT} s")


if __name__ == "__main__":
    main()
