#!/usr/bin/env python3
"""Check with boto3 that scripts/emulator.py models what its docstring says.

Usage: .venv/bin/python scripts/emulator-selfcheck.py [--endpoint http://127.0.0.1:PORT]
       [--polls K] [--drain-calls D]   (K, D must match the emulator's FLEETSYNC_EMULATOR_ROLLOUT_POLLS
                                        and FLEETSYNC_EMULATOR_DRAIN_CALLS)
The always-on behaviours are checked against --endpoint, or against an emulator this script starts
with those K and D (and the off-by-default switches off). The switched-on behaviours and the fault
endpoint are always checked against a second emulator it starts itself, with
FLEETSYNC_EMULATOR_STALE_READS=2, FLEETSYNC_EMULATOR_THROTTLE=ListClusters=2/3,
FLEETSYNC_EMULATOR_DRAIN_CALLS=2, FLEETSYNC_EMULATOR_DEDUP_SECONDS=1 and a call log.
Prints the deployments at each rollout step and one line per other check; exits 1 on a mismatch.
"""
import argparse
import atexit
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

FAILED_REASON = "ECS deployment circuit breaker: tasks failed to start."
SWITCHES = ("FLEETSYNC_EMULATOR_STALE_READS", "FLEETSYNC_EMULATOR_THROTTLE", "FLEETSYNC_EMULATOR_DEDUP_SECONDS")
ID_REASON = "{} can only include alphanumeric and punctuation characters. 1 to 128 in length"
NOT_IDEMPOTENT = ("InvalidParameterException", "Creation of service was not idempotent.")
CONTAINERS = [{"name": "api", "image": "public.ecr.aws/acme/api:1.0", "memory": 128, "essential": True}]


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)


def ok(what):
    print(f"ok: {what}", flush=True)


def start_emulator(env):
    """A fresh emulator with `env` on top of ours (minus the off-by-default switches); its URL."""
    env = {**{k: v for k, v in os.environ.items() if k not in SWITCHES}, **env}
    script = Path(__file__).resolve().parent / "emulator.py"
    child = subprocess.Popen([sys.executable, str(script), "--port", "0"], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    atexit.register(lambda: (child.terminate(), child.wait()))
    child.stdout.readline()  # default network
    ready = child.stdout.readline()
    check(ready.startswith("emulator ready on "), f"emulator did not start: {ready!r}")
    return ready.split()[-1]


def clients(endpoint, *services, **config):
    return [boto3.client(s, endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                         aws_secret_access_key="test", config=Config(**config)) for s in services]


def error(call, **kw):
    """(code, message, HTTP status) of the error `call` answers; FAIL if it succeeds."""
    try:
        call(**kw)
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["Error"]["Message"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    check(False, f"{call.__name__}({kw}) should have failed")


def fresh_cluster(ecs):
    """A new cluster and a family of the same name with one revision: checks never collide."""
    name = f"selfcheck-{uuid.uuid4().hex[:8]}"
    ecs.create_cluster(clusterName=name)
    ecs.register_task_definition(family=name, containerDefinitions=CONTAINERS)
    return name


def status(ecs, cluster, name):
    out = ecs.describe_services(cluster=cluster, services=[name])
    return out["services"][0]["status"] if out["services"] else out["failures"][0]["reason"]


def check_rollouts(ecs, polls):
    cluster = f"selfcheck-{uuid.uuid4().hex[:8]}"
    family = cluster  # fresh family: revisions 1 (good) and 2 (broken) even on a used emulator
    ecs.create_cluster(clusterName=cluster)

    def register(image):
        return ecs.register_task_definition(
            family=family, networkMode="bridge", requiresCompatibilities=["EC2"],
            containerDefinitions=[{"name": "api", "image": image, "memory": 128, "essential": True}],
        )["taskDefinition"]["taskDefinitionArn"]

    good = register("public.ecr.aws/acme/api:1.0")
    broken = register("public.ecr.aws/acme/api:broken")

    def describe():
        return ecs.describe_services(cluster=cluster, services=["api"])["services"][0]

    def show(step, svc):
        print(f"== {step}: service taskDefinition={svc['taskDefinition']} runningCount={svc['runningCount']}")
        for d in svc["deployments"]:
            print(f"   {d['status']:8} {d['id']} {d['rolloutState']:11} run={d['runningCount']}/{d['desiredCount']}"
                  f" failed={d.get('failedTasks')} td={d['taskDefinition'].split('/')[-1]} | {d['rolloutStateReason']}")
        print("   events:", [e["message"] for e in svc.get("events", [])][:3], flush=True)

    def wait_for(step, dep_id, state):
        """Exactly K polls show IN_PROGRESS, the next one shows `state`."""
        for i in range(polls + 1):
            svc = describe()
            show(f"{step} poll {i + 1}", svc)
            dep = next(d for d in svc["deployments"] if d["id"] == dep_id)
            want = "IN_PROGRESS" if i < polls else state
            check(dep["rolloutState"] == want, f"{step} poll {i + 1}: {dep['rolloutState']} != {want}")
        return svc

    def update(step, **kw):
        svc = ecs.update_service(cluster=cluster, service="api", **kw)["service"]
        show(step, svc)
        return svc

    svc = ecs.create_service(cluster=cluster, serviceName="api", taskDefinition=f"{family}:1",
                             desiredCount=2, launchType="EC2")["service"]
    show("create", svc)
    check(len(svc["deployments"]) == 1 and svc["deployments"][0]["rolloutState"] == "IN_PROGRESS", "create: one IN_PROGRESS")
    first = svc["deployments"][0]["id"]
    svc = wait_for("create", first, "COMPLETED")
    check(svc["runningCount"] == 2 and svc["deployments"][0]["runningCount"] == 2, "create: runningCount = desired")
    check(svc["events"][0]["message"] == "(service api) has reached a steady state.", "create: steady-state event")

    svc = update("update to revision 2 (broken)", taskDefinition=f"{family}:2")
    deps = svc["deployments"]
    check(svc["taskDefinition"] == broken, "update: service taskDefinition is the full ARN")
    check([d["status"] for d in deps] == ["PRIMARY", "ACTIVE"] and deps[1]["id"] == first, "update: new PRIMARY, old ACTIVE")
    check(deps[0]["taskDefinition"] == broken and deps[0]["runningCount"] == 0, "update: new deployment fields")
    failing = deps[0]["id"]
    svc = wait_for("broken", failing, "FAILED")
    deps = svc["deployments"]
    check(deps[0]["rolloutStateReason"] == FAILED_REASON and deps[0]["status"] == "PRIMARY", "broken: FAILED PRIMARY")
    check(len(deps) == 2 and deps[1]["id"] == first and deps[1]["status"] == "ACTIVE", "broken: previous kept ACTIVE")
    check(svc["events"][0]["message"] == f"(service api) (deployment {failing}) deployment failed: tasks failed to start.",
          "broken: failure event")
    for _ in range(polls + 1):  # no rollback without deploymentCircuitBreaker.rollback
        check([d["id"] for d in describe()["deployments"]] == [failing, first], "broken: stays FAILED, no rollback")

    svc = update("update back to revision 1", taskDefinition=f"{family}:1")
    svc = wait_for("back to revision 1", svc["deployments"][0]["id"], "COMPLETED")
    check(len(svc["deployments"]) == 1 and svc["taskDefinition"] == good, "back: ACTIVE removed, good td")

    svc = update("same td: no deployment", taskDefinition=good, desiredCount=3)
    check(len(svc["deployments"]) == 1 and svc["deployments"][0]["desiredCount"] == 3, "same td: no new deployment")
    svc = update("forceNewDeployment", forceNewDeployment=True)
    check(len(svc["deployments"]) == 2 and svc["deployments"][1]["status"] == "ACTIVE", "force: new deployment")
    svc = wait_for("force", svc["deployments"][0]["id"], "COMPLETED")
    prev = svc["deployments"][0]["id"]

    svc = update("broken with rollback breaker", taskDefinition=f"{family}:2", deploymentConfiguration={
        "deploymentCircuitBreaker": {"enable": True, "rollback": True}})
    failing = svc["deployments"][0]["id"]
    svc = wait_for("rollback", failing, "FAILED")
    deps = svc["deployments"]
    check([d["status"] for d in deps] == ["PRIMARY", "ACTIVE"] and deps[1]["id"] == failing, "rollback: failed is ACTIVE")
    check(deps[0]["taskDefinition"] == good and deps[0]["id"] not in (prev, failing), "rollback: new PRIMARY on old td")
    check(svc["events"][0]["message"] == f"(service api) rolling back to deployment {prev}.", "rollback: event")
    svc = wait_for("rollback completes", deps[0]["id"], "COMPLETED")
    check(len(svc["deployments"]) == 1 and svc["taskDefinition"] == good, "rollback: failed removed")
    ok("rollout model")


def check_service_lifecycle(ecs, drain_calls):
    c = fresh_cluster(ecs)

    def create(name, **kw):
        return ecs.create_service(cluster=c, serviceName=name, taskDefinition=f"{c}:1", desiredCount=1, **kw)["service"]

    create("api")
    check(error(ecs.create_service, cluster=c, serviceName="api", taskDefinition=f"{c}:1",
                desiredCount=1)[:2] == NOT_IDEMPOTENT, "CreateService of an ACTIVE name")
    first = create("web", clientToken="token-1")
    check(create("web", clientToken="token-1")["deployments"] == first["deployments"],
          "same clientToken, same request: the same service again")
    check(error(ecs.create_service, cluster=c, serviceName="web", taskDefinition=f"{c}:1", desiredCount=2,
                clientToken="token-1")[:2] == NOT_IDEMPOTENT, "same clientToken, other parameters")
    ok("CreateService of an existing name: not idempotent (unless a same-token retry)")

    ecs.update_service(cluster=c, service="api", desiredCount=0)
    check(ecs.delete_service(cluster=c, service="api")["service"]["status"] == "DRAINING", "DeleteService answers DRAINING")
    arns = ecs.list_services(cluster=c)["serviceArns"]
    check([a.split("/")[-1] for a in arns] == ["web"], f"ListServices leaves DRAINING out: {arns}")
    not_active = ("ServiceNotActiveException", "Service was not ACTIVE.")
    check(error(ecs.update_service, cluster=c, service="api", desiredCount=1)[:2] == not_active, "UpdateService of DRAINING")
    check(error(ecs.delete_service, cluster=c, service="api")[:2] == not_active, "DeleteService of DRAINING")
    check(error(ecs.create_service, cluster=c, serviceName="api", taskDefinition=f"{c}:1",
                desiredCount=1)[:2] == NOT_IDEMPOTENT, "CreateService of a DRAINING name")
    seen = [status(ecs, c, "api") for _ in range(drain_calls + 2)]
    check(seen == ["DRAINING"] * drain_calls + ["INACTIVE"] * 2, f"{drain_calls} DRAINING looks, then INACTIVE: {seen}")
    check(create("api")["status"] == "ACTIVE" and status(ecs, c, "api") == "ACTIVE", "an INACTIVE name is free again")
    ok(f"DeleteService: DRAINING for {drain_calls} DescribeServices, then INACTIVE; ServiceNotActiveException")

    old = ecs.describe_task_definition(taskDefinition=f"{c}:1")["taskDefinition"]["taskDefinitionArn"]
    ecs.register_task_definition(family=c, containerDefinitions=CONTAINERS)
    ecs.deregister_task_definition(taskDefinition=old)
    inactive = "TaskDefinition is inactive"
    check(error(ecs.update_service, cluster=c, service="web", taskDefinition=old)[:2] == ("ClientException", inactive),
          "UpdateService to an INACTIVE revision")
    check(error(ecs.create_service, cluster=c, serviceName="new", taskDefinition=old, desiredCount=1)[:2]
          == ("ClientException", inactive), "CreateService on an INACTIVE revision")
    check(error(ecs.run_task, cluster=c, taskDefinition=old)[:2] == ("InvalidParameterException", inactive),
          "RunTask of an INACTIVE revision")
    check(ecs.update_service(cluster=c, service="web", desiredCount=2)["service"]["taskDefinition"] == old,
          "a service on an INACTIVE revision still scales")
    ok("INACTIVE task definition refused by CreateService/UpdateService (ClientException), RunTask (InvalidParameter)")


def check_tags(ecs):
    c = fresh_cluster(ecs)

    def tags(n, prefix="k"):
        return [{"key": f"{prefix}{i}", "value": "v"} for i in range(n)]

    def register(t):
        return ecs.register_task_definition(family=c, containerDefinitions=CONTAINERS, tags=t)

    too_many = ("InvalidParameterException",
                "Too many tags: a resource can have at most 50 tags, this request would leave 51.")
    check(error(register, t=tags(51))[:2] == too_many, "RegisterTaskDefinition with 51 tags")
    arn = register(tags(49) + tags(3, "aws:x"))["taskDefinition"]["taskDefinitionArn"]  # aws: tags are not counted
    check(error(ecs.create_service, cluster=c, serviceName="api", taskDefinition=f"{c}:1", desiredCount=1,
                tags=tags(51))[:2] == too_many, "CreateService with 51 tags")
    ecs.tag_resource(resourceArn=arn, tags=tags(1, "new"))  # 50
    ecs.tag_resource(resourceArn=arn, tags=tags(49))  # overwrites: still 50
    check(error(ecs.tag_resource, resourceArn=arn, tags=tags(1, "more"))[:2] == too_many, "TagResource to 51")
    code, message, _ = error(ecs.tag_resource, resourceArn=arn, tags=[{"key": "k" * 129, "value": "v"}])
    check(code == "InvalidParameterException" and "maximum length of 128" in message, "tag key of 129")
    code, message, _ = error(ecs.tag_resource, resourceArn=arn, tags=[{"key": "k0", "value": "v" * 257}])
    check(code == "InvalidParameterException" and "maximum length of 256" in message, "tag value of 257")
    ecs.tag_resource(resourceArn=arn, tags=[{"key": "k0", "value": "v" * 256}])
    ok("tags: at most 50 user tags (aws: not counted), keys 128, values 256")


def fifo_queue(sqs, **attributes):
    name = f"selfcheck-{uuid.uuid4().hex[:8]}.fifo"
    return sqs.create_queue(QueueName=name, Attributes={"FifoQueue": "true", **attributes})["QueueUrl"]


def drain_queue(sqs, url):
    """Receives and deletes everything visible; the bodies."""
    bodies = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not got:
            return bodies
        for m in got:
            bodies.append(m["Body"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def check_sqs(sqs):
    q = fifo_queue(sqs)
    punctuation = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
    sqs.send_message(QueueUrl=q, MessageBody="x", MessageGroupId="g" + punctuation, MessageDeduplicationId="d" * 128)
    for group, dedup, bad in [("a b", "d", "MessageGroupId"), ("g", "d" * 129, "MessageDeduplicationId"),
                              ("é", "d", "MessageGroupId"), ("g", "", "MessageDeduplicationId")]:
        code, message, status = error(sqs.send_message, QueueUrl=q, MessageBody="x", MessageGroupId=group,
                                      MessageDeduplicationId=dedup)
        want = f"Value {dedup if bad == 'MessageDeduplicationId' else group} for parameter {bad} is invalid. " \
               f"Reason: {ID_REASON.format(bad)}."
        check((code, message, status) == ("InvalidParameterValue", want, 400), f"SendMessage {bad}: {message}")
    out = sqs.send_message_batch(QueueUrl=q, Entries=[
        {"Id": "bad", "MessageBody": "x", "MessageGroupId": "g g", "MessageDeduplicationId": "b1"},
        {"Id": "good", "MessageBody": "y", "MessageGroupId": "g", "MessageDeduplicationId": "b2"}])
    check([s["Id"] for s in out["Successful"]] == ["good"], "batch: the valid entry is sent")
    check(out["Failed"] == [{"Id": "bad", "SenderFault": True, "Code": "InvalidParameterValue",
                             "Message": ID_REASON.format("MessageGroupId")}], f"batch: the bad entry fails: {out['Failed']}")
    ok("FIFO MessageGroupId/MessageDeduplicationId validation (SendMessage error, batch entry in Failed)")

    drain_queue(sqs, q)
    first = sqs.send_message(QueueUrl=q, MessageBody="one", MessageGroupId="g", MessageDeduplicationId="once")
    check(drain_queue(sqs, q) == ["one"], "the first send is delivered")
    again = sqs.send_message(QueueUrl=q, MessageBody="other", MessageGroupId="g", MessageDeduplicationId="once")
    check((again["MessageId"], again["SequenceNumber"]) == (first["MessageId"], first["SequenceNumber"]),
          "a duplicate answers the original's MessageId and SequenceNumber")
    out = sqs.send_message_batch(QueueUrl=q, Entries=[
        {"Id": "1", "MessageBody": "one", "MessageGroupId": "g", "MessageDeduplicationId": "once"},
        {"Id": "2", "MessageBody": "two", "MessageGroupId": "g", "MessageDeduplicationId": "twice"}])
    check({s["Id"]: s["MessageId"] for s in out["Successful"]}["1"] == first["MessageId"], "batch duplicate: original id")
    check(drain_queue(sqs, q) == ["two"], "a duplicate after delete enqueues nothing")

    content = fifo_queue(sqs, ContentBasedDeduplication="true")
    sqs.send_message(QueueUrl=content, MessageBody="same", MessageGroupId="g")
    drain_queue(sqs, content)
    sqs.send_message(QueueUrl=content, MessageBody="same", MessageGroupId="h")
    check(drain_queue(sqs, content) == [], "content-based: the body's hash is the id, across groups (queue scope)")
    scoped = fifo_queue(sqs, DeduplicationScope="messageGroup", FifoThroughputLimit="perMessageGroupId")
    for group in "gh":
        sqs.send_message(QueueUrl=scoped, MessageBody=group, MessageGroupId=group, MessageDeduplicationId="d")
    check(sorted(drain_queue(sqs, scoped)) == ["g", "h"], "DeduplicationScope=messageGroup: per group")
    ok("FIFO deduplication remembered after delete, original MessageId answered")


def check_stale_reads(ecs, polls):
    c = fresh_cluster(ecs)
    ecs.register_task_definition(family=c, containerDefinitions=CONTAINERS)
    ecs.create_service(cluster=c, serviceName="api", taskDefinition=f"{c}:1", desiredCount=1)
    for i in range(2):
        out = ecs.describe_services(cluster=c, services=["api", "api"])
        check(out["services"] == [] and [f["reason"] for f in out["failures"]] == ["MISSING"] * 2,
              f"stale read {i + 1} after CreateService: MISSING")
    for i in range(polls + 1):  # the stale looks did not count as rollout polls
        dep = ecs.describe_services(cluster=c, services=["api"])["services"][0]["deployments"][0]
        check(dep["rolloutState"] == ("IN_PROGRESS" if i < polls else "COMPLETED"), f"create poll {i + 1} after stale reads")
    old = ecs.describe_services(cluster=c, services=["api"])["services"][0]
    new = ecs.update_service(cluster=c, service="api", taskDefinition=f"{c}:2")["service"]
    check(new["taskDefinition"].endswith(f"{c}:2") and len(new["deployments"]) == 2, "UpdateService answers the new state")
    for i in range(2):
        svc = ecs.describe_services(cluster=c, services=["api"])["services"][0]
        check((svc["taskDefinition"], svc["deployments"]) == (old["taskDefinition"], old["deployments"]),
              f"stale read {i + 1} after UpdateService: the deployments before it")
    for i in range(polls + 1):
        svc = ecs.describe_services(cluster=c, services=["api"])["services"][0]
        check(svc["deployments"][0]["id"] == new["deployments"][0]["id"] and svc["deployments"][0]["rolloutState"]
              == ("IN_PROGRESS" if i < polls else "COMPLETED"), f"update poll {i + 1} after stale reads")
    ecs.update_service(cluster=c, service="api", desiredCount=3)
    check(ecs.describe_services(cluster=c, services=["api"])["services"][0]["desiredCount"] == 3,
          "an update that starts no deployment is read at once")
    ok("FLEETSYNC_EMULATOR_STALE_READS=2: MISSING after create, old deployments after update, polls not advanced")


def check_switched(endpoint, polls, call_log):
    ecs, sqs = clients(endpoint, "ecs", "sqs", retries={"total_max_attempts": 1})
    check_stale_reads(ecs, polls)

    c = fresh_cluster(ecs)
    ecs.create_service(cluster=c, serviceName="api", taskDefinition=f"{c}:1", desiredCount=0)
    ecs.delete_service(cluster=c, service="api")
    seen = [status(ecs, c, "api") for _ in range(4)]
    check(seen == ["MISSING", "MISSING", "DRAINING", "DRAINING"] and status(ecs, c, "api") == "INACTIVE",
          f"FLEETSYNC_EMULATOR_DRAIN_CALLS=2 (after 2 stale reads): {seen}")
    ok("FLEETSYNC_EMULATOR_DRAIN_CALLS=2: two DRAINING looks, then INACTIVE")

    q = fifo_queue(sqs)
    first = sqs.send_message(QueueUrl=q, MessageBody="a", MessageGroupId="g", MessageDeduplicationId="d")
    drain_queue(sqs, q)
    check(sqs.send_message(QueueUrl=q, MessageBody="a", MessageGroupId="g", MessageDeduplicationId="d")["MessageId"]
          == first["MessageId"] and drain_queue(sqs, q) == [], "within the window: duplicate")
    time.sleep(1.1)
    check(sqs.send_message(QueueUrl=q, MessageBody="a", MessageGroupId="g", MessageDeduplicationId="d")["MessageId"]
          != first["MessageId"] and drain_queue(sqs, q) == ["a"], "after the window: a new message")
    ok("FLEETSYNC_EMULATOR_DEDUP_SECONDS=1: the window ends")

    time.sleep(1.5)  # a full bucket: 3 tokens
    for i in range(3):
        ecs.list_clusters()
    throttled = ("ThrottlingException", "Rate exceeded", 400)
    check(error(ecs.list_clusters) == throttled, "the 4th ListClusters at once is throttled")
    ecs.describe_clusters(clusters=[c])  # other operations have no bucket
    time.sleep(0.6)  # 2 tokens a second
    ecs.list_clusters()
    check(error(ecs.list_clusters) == throttled, "one token came back, not two")
    ok("FLEETSYNC_EMULATOR_THROTTLE=ListClusters=2/3: token bucket, ThrottlingException 'Rate exceeded' (HTTP 400)")

    def control(method, body=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{endpoint}/fleetsync-emulator/faults", data=data, method=method)
        with urllib.request.urlopen(request) as r:
            return json.load(r)

    iam, ec2 = clients(endpoint, "iam", "ec2", retries={"total_max_attempts": 1})
    control("POST", {"service": "sqs", "status": 500, "seconds": 1})
    control("POST", {"service": "iam", "status": 503, "seconds": 1})
    control("POST", {"service": "ec2", "status": 500, "seconds": 1, "operation": "DescribeVpcs"})
    check(error(sqs.list_queues) == ("InternalError", "We encountered an internal error. Please try again.", 500),
          "sqs fault: 500 InternalError (JSON)")
    check(error(iam.list_roles)[::2] == ("ServiceUnavailable", 503), "iam fault: 503 ServiceUnavailable (query XML)")
    check(error(ec2.describe_vpcs)[::2] == ("InternalError", 500), "ec2 fault on DescribeVpcs (EC2 XML)")
    ec2.describe_subnets()  # not that operation
    ecs.describe_clusters(clusters=[c])  # not that service
    state = control("GET")
    check(sorted(f["service"] for f in state["faults"]) == ["ec2", "iam", "sqs"], f"GET lists the faults: {state}")
    time.sleep(1.1)
    sqs.list_queues()
    iam.list_roles()
    control("POST", {"service": "ecs", "throttle_seconds": 5})
    check(error(ecs.describe_clusters, clusters=[c]) == throttled, "ecs throttle_seconds: throttled")
    control("DELETE")
    ecs.describe_clusters(clusters=[c])
    state = control("GET")
    check(state["faults"] == [] and state["throttled"] == {"ecs ListClusters": 2, "ecs DescribeClusters": 1},
          f"throttled counts: {state['throttled']}")
    check(state["faulted"] == {"sqs ListQueues": 1, "iam ListRoles": 1, "ec2 DescribeVpcs": 1}, f"faulted: {state}")
    ok("POST/GET/DELETE /fleetsync-emulator/faults: status faults by service (and operation), throttle_seconds")

    lines = Path(call_log).read_text().splitlines()
    check(lines.count("ecs ListClusters throttled") == 2 and lines.count("ecs ListClusters") == 4,
          "call log: throttled ListClusters apart from the served ones")
    check("sqs ListQueues fault 500" in lines and "ecs DescribeClusters throttled" in lines, "call log: faults")
    ok("FLEETSYNC_EMULATOR_CALL_LOG: 'SERVICE Action throttled' / 'SERVICE Action fault STATUS' lines")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint")
    p.add_argument("--polls", type=int, default=int(os.environ.get("FLEETSYNC_EMULATOR_ROLLOUT_POLLS", "2")))
    p.add_argument("--drain-calls", type=int, default=int(os.environ.get("FLEETSYNC_EMULATOR_DRAIN_CALLS", "1")))
    args = p.parse_args()
    env = {"FLEETSYNC_EMULATOR_ROLLOUT_POLLS": str(args.polls)}
    endpoint = args.endpoint or start_emulator({**env, "FLEETSYNC_EMULATOR_DRAIN_CALLS": str(args.drain_calls)})
    ecs, sqs = clients(endpoint, "ecs", "sqs")
    check_rollouts(ecs, args.polls)
    check_service_lifecycle(ecs, args.drain_calls)
    check_tags(ecs)
    check_sqs(sqs)

    call_log = tempfile.NamedTemporaryFile(prefix="emulator-calls-", suffix=".log")
    switched = start_emulator({**env, "FLEETSYNC_EMULATOR_STALE_READS": "2", "FLEETSYNC_EMULATOR_DRAIN_CALLS": "2",
                               "FLEETSYNC_EMULATOR_THROTTLE": "ListClusters=2/3",
                               "FLEETSYNC_EMULATOR_DEDUP_SECONDS": "1", "FLEETSYNC_EMULATOR_CALL_LOG": call_log.name})
    check_switched(switched, args.polls, call_log.name)
    print("emulator self-check: OK")


if __name__ == "__main__":
    main()
