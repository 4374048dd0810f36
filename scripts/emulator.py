#!/usr/bin/env python3
"""fleetsync's AWS emulator: moto server plus a small model of ECS rolling deployments.

Usage:  .venv/bin/python scripts/emulator.py --port PORT [--host 127.0.0.1] [--example-account]
--example-account first creates what example-repo's apps reference (scripts/example_account.py).
Prints "default network subnets=A,B securityGroup=SG" (the default VPC's ids, which
fleetsync's example repo needs in place of its placeholders), then
"emulator ready on http://HOST:PORT" to stdout once it answers HTTP (request
logs go to stderr); exits 0 on SIGTERM/SIGINT. --port 0 picks a free port and prints it.

Why: moto (5.2.x) does not model ECS deployments. CreateService makes one PRIMARY
deployment that stays rolloutState IN_PROGRESS forever, UpdateService never adds a
deployment (forceNewDeployment only renames the existing one), and service events
are always empty. fleetsync's rollout watcher follows real ECS semantics, so this
file patches moto's ECS backend in-process (nothing else of moto is changed).

What is modelled (K = env FLEETSYNC_EMULATOR_ROLLOUT_POLLS, default 2):
  * Time is counted in DescribeServices calls that include the service (a service
    named twice in one call counts once). The first K such calls after a deployment
    starts show it IN_PROGRESS; the next call (K+1-th) shows it settled. K=0 settles
    on the first DescribeServices.
  * CreateService: moto's single PRIMARY deployment (IN_PROGRESS, runningCount 0)
    becomes COMPLETED ("ECS deployment ID completed.", runningCount = desiredCount,
    pendingCount 0); the service's runningCount becomes desiredCount.
  * UpdateService with a taskDefinition whose ARN differs from the PRIMARY's, or with
    forceNewDeployment=true: a new deployment (id "ecs-svc/<digits>", status PRIMARY,
    taskDefinition = full ARN, rolloutState IN_PROGRESS, "ECS deployment ID in
    progress.", desiredCount, pendingCount = desiredCount, runningCount 0, failedTasks
    0, createdAt/updatedAt, launchType) is put first; the former PRIMARY becomes
    ACTIVE. The service's taskDefinition is normalised to the full ARN (moto keeps
    what was passed, e.g. "web:3"). Otherwise a desiredCount change is copied into
    the PRIMARY deployment. On completion: ACTIVE deployments are removed and the
    service's runningCount = desiredCount.
  * Settling COMPLETED adds the event "(service NAME) has reached a steady state."
    Events are {"id": uuid, "createdAt": now, "message": ...}, newest first, at most 100.
  * Broken image: if any container image of the deployment's task definition contains
    "broken" (e.g. public.ecr.aws/acme/api:broken) the deployment settles FAILED with
    rolloutStateReason "ECS deployment circuit breaker: tasks failed to start.",
    failedTasks = max(desiredCount, 1), and the event "(service NAME) (deployment ID)
    deployment failed: tasks failed to start." The failed deployment stays PRIMARY and
    the previous one stays ACTIVE. Only when the service's deploymentConfiguration
    has deploymentCircuitBreaker.rollback = true (and an ACTIVE COMPLETED deployment
    PREV exists), in the same call: the event "(service NAME) rolling back to
    deployment PREV_ID." is added, PREV is replaced by a new PRIMARY rollback
    deployment (new id, PREV's task definition) that settles after K more calls,
    the failed one becomes status ACTIVE (rolloutState FAILED) and is removed when
    the rollback completes. A rollback deployment is never rolled back itself.
  * CreateService keeps deploymentConfiguration (moto drops it; UpdateService keeps it).
Timestamps are serialised by moto as usual (epoch seconds in the JSON protocol).
Everything else is plain moto; POST /moto-api/reset clears this state as well.

With FLEETSYNC_EMULATOR_CALL_LOG=PATH, every AWS call served is appended to PATH as one line,
"SERVICE Action" (e.g. "ecs RegisterTaskDefinition"), in the order served: what an account's
CloudTrail would show, so tests can count the calls fleetsync makes.
"""
import argparse
import os, random, signal, sys, threading, time, urllib.error, urllib.request, uuid

from moto.core.responses import BaseResponse
from moto.core.utils import utcnow
from moto.ecs import models as ecs_models
from moto.ecs import responses as ecs_responses
from moto.server import ThreadedMotoServer

POLLS = max(int(os.environ.get("FLEETSYNC_EMULATOR_ROLLOUT_POLLS", "2")), 0)
_lock = threading.RLock()
Backend = ecs_models.EC2ContainerServiceBackend
Response = ecs_responses.EC2ContainerServiceResponse
_orig_create = Backend.create_service
_orig_update = Backend.update_service
_orig_describe = Backend.describe_services
_orig_create_response = Response.create_service
_orig_call_action = BaseResponse.call_action
CALL_LOG = os.environ.get("FLEETSYNC_EMULATOR_CALL_LOG")


def _event(svc, message):
    ev = {"id": str(uuid.uuid4()), "createdAt": utcnow(), "message": message}
    svc.events = [ev] + list(svc.events)[:99]  # replace, never mutate: thread-safe reads


def _start_deployment(svc, td_arn, rollback=False):
    """Put a new IN_PROGRESS PRIMARY first; every other deployment becomes ACTIVE."""
    dep_id = f"ecs-svc/{random.randint(0, 32**12)}"
    now = utcnow()
    old = svc.deployments[0] if svc.deployments else {}
    for d in svc.deployments:
        d["status"] = "ACTIVE"
    dep = {
        "id": dep_id, "status": "PRIMARY", "taskDefinition": td_arn,
        "desiredCount": svc.desired_count, "pendingCount": svc.desired_count,
        "runningCount": 0, "failedTasks": 0, "createdAt": now, "updatedAt": now,
        "launchType": svc.launch_type, "platformVersion": old.get("platformVersion"),
        "platformFamily": old.get("platformFamily"),
        "networkConfiguration": old.get("networkConfiguration"),
        "rolloutState": "IN_PROGRESS", "rolloutStateReason": f"ECS deployment {dep_id} in progress.",
    }
    svc.deployments = [dep] + list(svc.deployments)
    svc.task_definition = td_arn
    svc._fleetsync = {"polls": 0, "rollback": rollback}


def _is_broken(backend, td_arn):
    try:
        td = backend.describe_task_definition(td_arn)
    except Exception:
        return False
    return any("broken" in (c.get("image") or "") for c in td.container_definitions)


def _advance(backend, svc):
    """One DescribeServices call that includes svc: move its PRIMARY rollout on."""
    if not svc.deployments or svc.deployments[0].get("rolloutState") != "IN_PROGRESS":
        return
    st = getattr(svc, "_fleetsync", None)
    if st is None:
        st = svc._fleetsync = {"polls": 0, "rollback": False}
    if st["polls"] < POLLS:
        st["polls"] += 1
        return
    dep = svc.deployments[0]
    dep["updatedAt"] = utcnow()
    dep["pendingCount"] = 0
    if _is_broken(backend, dep["taskDefinition"]):
        dep["rolloutState"] = "FAILED"
        dep["rolloutStateReason"] = "ECS deployment circuit breaker: tasks failed to start."
        dep["runningCount"] = 0
        dep["failedTasks"] = max(dep["desiredCount"] or 0, 1)
        _event(svc, f"(service {svc.name}) (deployment {dep['id']}) deployment failed: tasks failed to start.")
        config = getattr(svc, "deployment_configuration", None) or {}
        breaker = config.get("deploymentCircuitBreaker") or {}
        prev = next((d for d in svc.deployments[1:] if d["rolloutState"] == "COMPLETED"), None)
        if breaker.get("rollback") and prev is not None and not st["rollback"]:
            _event(svc, f"(service {svc.name}) rolling back to deployment {prev['id']}.")
            svc.deployments = [d for d in svc.deployments if d is not prev]
            _start_deployment(svc, prev["taskDefinition"], rollback=True)
    else:
        dep["rolloutState"] = "COMPLETED"
        dep["rolloutStateReason"] = f"ECS deployment {dep['id']} completed."
        dep["runningCount"] = dep["desiredCount"]
        svc.deployments = [dep]
        svc.running_count = svc.desired_count
        svc.pending_count = 0
        _event(svc, f"(service {svc.name}) has reached a steady state.")


def create_service(self, *args, **kwargs):
    with _lock:
        svc = _orig_create(self, *args, **kwargs)
        svc._fleetsync = {"polls": 0, "rollback": False}
        return svc


def update_service(self, service_properties):
    force = bool(service_properties.get("force_new_deployment"))
    service_properties["force_new_deployment"] = False  # modelled below instead
    td_str = service_properties.get("task_definition")
    with _lock:
        svc = _orig_update(self, service_properties)  # validates, applies plain fields
        if td_str:
            svc.task_definition = self.describe_task_definition(td_str).arn
        if svc.deployment_controller.get("type") != "ECS" or not svc.deployments:
            return svc
        primary = svc.deployments[0]
        if force or primary.get("taskDefinition") != svc.task_definition:
            _start_deployment(svc, svc.task_definition)
        else:
            primary["desiredCount"] = svc.desired_count
            if primary.get("rolloutState") == "COMPLETED":
                primary["runningCount"] = svc.desired_count
        return svc


def describe_services(self, cluster_str, service_names_or_arns):
    with _lock:
        services, failures = _orig_describe(self, cluster_str, service_names_or_arns)
        seen = set()
        for svc in services:
            if id(svc) not in seen:
                seen.add(id(svc))
                _advance(self, svc)
        return services, failures


def create_service_response(self):
    result = _orig_create_response(self)
    config = self._get_param("deploymentConfiguration")
    if config:
        result.result["service"].deployment_configuration = config
    return result


def call_action(self):
    with _lock, open(CALL_LOG, "a") as log:
        log.write(f"{self.service_name} {self._get_action()}\n")
    return _orig_call_action(self)


def install():
    if CALL_LOG:
        BaseResponse.call_action = call_action
    Backend.create_service = create_service
    Backend.update_service = update_service
    Backend.describe_services = describe_services
    Response.create_service = create_service_response


def _wait_until_answering(url, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer will do
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class _Session:
    """boto3 clients for this emulator, with the dummy credentials it accepts."""

    def __init__(self, url):
        self.url = url

    def client(self, service):
        import boto3

        return boto3.client(service, endpoint_url=self.url,
                            region_name=os.environ.get("AWS_REGION", "us-east-1"),
                            aws_access_key_id="test", aws_secret_access_key="test")


def _default_network(url):
    """Subnet and security group ids of the default VPC: moto checks awsvpc services against its
    own EC2, whose ids are random per start, so tests and the demo substitute these."""

    ec2 = _Session(url).client("ec2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    in_vpc = [{"Name": "vpc-id", "Values": [vpc]}]
    subnets = sorted(s["SubnetId"] for s in ec2.describe_subnets(Filters=in_vpc)["Subnets"])[:2]
    groups = ec2.describe_security_groups(Filters=in_vpc + [{"Name": "group-name", "Values": ["default"]}])
    return subnets, groups["SecurityGroups"][0]["GroupId"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--example-account", action="store_true",
                        help="create the roles, secrets and log groups example-repo references")
    args = parser.parse_args()
    install()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    _wait_until_answering(url)
    subnets, security_group = _default_network(url)
    if args.example_account:
        import example_account

        example_account.seed(_Session(url))
    print(f"default network subnets={','.join(subnets)} securityGroup={security_group}", flush=True)
    print(f"emulator ready on {url}", flush=True)
    while not stop.wait(0.2):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
