#!/usr/bin/env python3
"""fleetsync's AWS emulator: moto server plus small models of what AWS does and moto does not.

Usage:  .venv/bin/python scripts/emulator.py --port PORT [--host 127.0.0.1] [--example-account]
--example-account first creates what example-repo's apps reference (scripts/example_account.py).
Prints "default network subnets=A,B securityGroup=SG" (the default VPC's ids, which
fleetsync's example repo needs in place of its placeholders), then
"emulator ready on http://HOST:PORT" to stdout once it answers HTTP (request
logs go to stderr); exits 0 on SIGTERM/SIGINT. --port 0 picks a free port and prints it.

Why: moto (5.2.x) does not model ECS deployments. CreateService makes one PRIMARY
deployment that stays rolloutState IN_PROGRESS forever, UpdateService never adds a
deployment (forceNewDeployment only renames the existing one), and service events
are always empty. Nor does it refuse what AWS refuses (below). fleetsync follows real
AWS semantics, so this file patches moto's ECS and SQS backends in-process.

ECS rollouts (K = env FLEETSYNC_EMULATOR_ROLLOUT_POLLS, default 2):
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
  * The failed deployment's tasks stop as ECS stops them (failedTasks of them, startedBy the
    deployment id; moto runs no tasks for services): ListTasks (desiredStatus STOPPED,
    serviceName) and DescribeTasks answer them, with the stopCode, stoppedReason and container
    reason/exitCode of AWS's stopped-task error pages by the image's mark: `broken-oom`
    (OutOfMemoryError, exit 137), `broken-exit` (exit 3), `broken-secret`
    (ResourceInitializationError AccessDeniedException on secretsmanager:GetSecretValue),
    `broken-health` (Task failed ELB health checks); any other `broken…`:
    CannotPullContainerError "… not found".
  * CreateService keeps deploymentConfiguration (moto drops it; UpdateService keeps it).
Timestamps are serialised by moto as usual (epoch seconds in the JSON protocol).

ECS refusals and lifecycle, always on (pages of the ECS API Reference,
docs.aws.amazon.com/AmazonECS/latest/APIReference/, unless said otherwise):
  * CreateService naming a service that is ACTIVE or DRAINING in the cluster fails with
    InvalidParameterException "Creation of service was not idempotent." (moto replaces
    the service). Except, per "Ensuring idempotency" (ECS_Idempotency.html): a retry
    with the same clientToken and the same parameters as the request that created it
    answers that service again and changes nothing. An INACTIVE service's name is free.
  * DeleteService (API_DeleteService.html): the answer and the next D DescribeServices
    calls that include the service show status DRAINING, the call after that INACTIVE
    (D = env FLEETSYNC_EMULATOR_DRAIN_CALLS, default 1; counted like rollout polls).
    An INACTIVE service stays describable with status INACTIVE for good (AWS: "may
    be cleaned up and purged" later, then ServiceNotFoundException; not modelled).
    As that page says, a DRAINING or INACTIVE service is no longer in ListServices
    (moto lists it), and UpdateService or DeleteService of it fails with
    ServiceNotActiveException "Service was not ACTIVE." (API_UpdateService.html errors).
  * A taskDefinition naming an INACTIVE (deregistered) revision
    (API_DeregisterTaskDefinition.html: it "can't be used to run new tasks or create new
    services" nor be set by UpdateService): CreateService and UpdateService fail with ClientException
    "TaskDefinition is inactive" (the text real UpdateService answers), RunTask with
    InvalidParameterException "TaskDefinition is inactive" (what RunTask is reported
    to answer). Services already running it keep running. A family without a revision
    still resolves to its latest revision, INACTIVE or not (AWS: latest ACTIVE).
  * Tags (the developer guide's "Amazon ECS resource tagging",
    AmazonECS/latest/developerguide/ecs-using-tags.html, and the API's Tags/TagKey/TagValue
    shapes): at most 50 tags per resource, keys prefixed "aws:" not counted, keys 1-128
    and values 0-256 characters. CreateService, RegisterTaskDefinition and TagResource
    (counting the tags the resource keeps) fail with InvalidParameterException "Too many
    tags: a resource can have at most 50 tags, this request would leave N." / "Tag key KEY
    exceeds the maximum length of 128 characters." / "Tag value of KEY exceeds the maximum
    length of 256 characters." (the real texts were not found; the code is ECS's usual).
    Keys and values must match the Tag shape's pattern ^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$
    (API_Tag.html); otherwise the call fails with InvalidParameterException in the wording
    AWS's request validation uses for patterns: "1 validation error detected: Value 'V' at
    'tags.N.member.value' failed to satisfy constraint: Member must satisfy regular
    expression pattern: ^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$".
  * RegisterTaskDefinition records registeredAt, which DescribeTaskDefinition returns
    (API_TaskDefinition.html; moto keeps none).

SQS FIFO, always on (SQS API Reference, API_SendMessage.html / API_SendMessageBatch.html, and
the developer guide's "Using the message deduplication ID in Amazon SQS",
SQSDeveloperGuide/using-messagededuplicationid-property.html):
  * MessageGroupId and MessageDeduplicationId, when given (on any queue): 1-128 characters, each
    alphanumeric or punctuation (!"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~). Otherwise SendMessage
    fails with InvalidParameterValue "Value V for parameter P is invalid. Reason: P can
    only include alphanumeric and punctuation characters. 1 to 128 in length." and a
    SendMessageBatch entry lands in Failed (Code InvalidParameterValue, SenderFault true,
    Message "P can only include ... 1 to 128 in length") while the others are sent.
  * Deduplication: a deduplication id (given, or the body's SHA-256 with
    ContentBasedDeduplication; per group with DeduplicationScope=messageGroup) is
    remembered for 5 minutes from its first send, even after that message was deleted
    or purged (moto forgets on delete). A send within the window succeeds and enqueues
    nothing; its answer carries the original's MessageId and SequenceNumber (and the
    MD5s of what was sent, so SDK checksums pass). Env FLEETSYNC_EMULATOR_DEDUP_SECONDS
    shortens the window for tests (default 300).
  * Long polling (ReceiveMessage WaitTimeSeconds; the developer guide's "Amazon SQS short and
    long polling", sqs-short-and-long-polling.html: it "returns messages as soon as they
    become available") and FIFO groups (a group is held back only while a message of it is
    in flight, "Amazon SQS FIFO queue message grouping"): moto decides at the start of a long
    poll which groups are in flight and keeps that while it waits, so a group whose in-flight
    message is deleted meanwhile stays blocked until the poll ends. Here a long poll looks
    again every 20 ms, with the groups in flight as they are then.

Switched on by env, off by default (tests turn them on):
  * FLEETSYNC_EMULATOR_STALE_READS=N: read-after-write eventual consistency, which AWS
    documents for its APIs (e.g. "Eventual consistency in the Amazon EC2 API",
    ec2/latest/devguide/eventual-consistency.html: a resource just created may be reported
    missing; no ECS page of its own was found). For the first N DescribeServices calls that
    include a service after its CreateService it is in `failures` as MISSING; for the first N after
    an UpdateService that started a deployment, its deployments and taskDefinition are
    shown as they were before that update (an update while the service is still MISSING
    to readers keeps it MISSING for N more). Stale calls do not advance rollouts or draining.
  * FLEETSYNC_EMULATOR_THROTTLE="Op=rate/burst,...", e.g. "UpdateService=5/10": a token
    bucket per ECS operation shared by all callers, refilled at `rate` per second up to
    `burst`, starting full ("Request throttling for the Amazon ECS API",
    APIReference/request-throttling.html). A call finding it empty answers HTTP 400
    {"__type": "ThrottlingException", "message": "Rate exceeded"} and is not served.

Fault control endpoint on the same port (not an AWS API; JSON in and out):
  POST /fleetsync-emulator/faults {"service": "sqs", "status": 500, "seconds": 5}
      every call to that service answers that status (default 500) for that long, with
      the error body AWS would send in the request's protocol (JSON __type/message, query
      XML ErrorResponse, EC2's Response/Errors): code ServiceUnavailable for 503, else
      ServerException for ecs and InternalError for other services; "code" and "message"
      override them.
  POST ... {"service": "ecs", "throttle_seconds": 3}: every call to it is throttled as above.
  POST ... {"service": "ecs", "delay_seconds": 2, "seconds": 30}: every call to it is served
      at once but answered that much later: an AWS API slow to answer under load, a change
      already made when its answer arrives (a client that gives up has not undone it).
      Any of them may add "operation": "Action" to hit only that action, and "times": n to
      end after answering n calls (a race lost once: e.g. elbv2 CreateRule answering 400
      PriorityInUse because another writer took the priority). A POST for a service
      replaces its fault; {"service": S, "seconds": 0} ends it.
  GET  /fleetsync-emulator/faults: {"faults": [...active...], "throttled": {"ecs Op": n},
      "faulted": {"sqs Op": n}};   DELETE: ends every fault (counts are kept).
Faults, buckets and counts are the server's: POST /moto-api/reset does not clear them.
Everything else is plain moto; POST /moto-api/reset clears the models' state as well.

With FLEETSYNC_EMULATOR_CALL_LOG=PATH, every AWS call is appended to PATH as one line, in
order: "SERVICE Action" (e.g. "ecs RegisterTaskDefinition") when served (errors included,
as CloudTrail shows them), "SERVICE Action throttled" when throttled, "SERVICE Action fault
STATUS" when a fault answered it; so tests can count the calls fleetsync makes.
"""
import argparse
import collections, copy, functools, hashlib, inspect, json, re
import os, random, signal, sys, threading, time, urllib.error, urllib.request, uuid, unicodedata

from moto.core.responses import ActionResult, BaseResponse
from moto.core.utils import utcnow
from moto.ecs import models as ecs_models
from moto.ecs import responses as ecs_responses
from moto.ecs.exceptions import ECSException, EcsClientException, InvalidParameterException
from moto.moto_server.werkzeug_app import DomainDispatcherApplication
from moto.server import ThreadedMotoServer
from moto.sqs import models as sqs_models
from moto.sqs.exceptions import InvalidParameterValue
from moto.utilities.utils import get_partition


def _env_int(name, default):
    return max(int(os.environ.get(name, default)), 0)


POLLS = _env_int("FLEETSYNC_EMULATOR_ROLLOUT_POLLS", 2)
DRAIN_CALLS = _env_int("FLEETSYNC_EMULATOR_DRAIN_CALLS", 1)
STALE_READS = _env_int("FLEETSYNC_EMULATOR_STALE_READS", 0)
DEDUP_SECONDS = float(os.environ.get("FLEETSYNC_EMULATOR_DEDUP_SECONDS", "300"))
CALL_LOG = os.environ.get("FLEETSYNC_EMULATOR_CALL_LOG")
MAX_TAGS, MAX_TAG_KEY, MAX_TAG_VALUE = 50, 128, 256
_lock = threading.RLock()  # guards the state of every model below, the buckets and the call log
Backend = ecs_models.EC2ContainerServiceBackend
Response = ecs_responses.EC2ContainerServiceResponse
SQSBackend = sqs_models.SQSBackend
_orig_create = Backend.create_service
_orig_update = Backend.update_service
_orig_describe = Backend.describe_services
_orig_delete = Backend.delete_service
_orig_list = Backend.list_services
_orig_run_task = Backend.run_task
_orig_register = Backend.register_task_definition
_orig_tag = Backend.tag_resource
_orig_create_response = Response.create_service
_orig_send = SQSBackend.send_message
_orig_send_batch = SQSBackend.send_message_batch
_orig_call_action = BaseResponse.call_action
_orig_dispatch = DomainDispatcherApplication.__call__


def _args(fn, *args, **kwargs):
    """The arguments of a call to moto's `fn` by name: moto's responses pass some positionally."""
    return inspect.signature(fn).bind(*args, **kwargs).arguments


# --- ECS rollouts -------------------------------------------------------------------------

def _state(svc):
    st = getattr(svc, "_fleetsync", None)
    if st is None:
        st = svc._fleetsync = {"polls": 0, "rollback": False, "drain": 0}
    return st


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
    _state(svc).update(polls=0, rollback=rollback)


def _broken_image(backend, td_arn):
    """The first container whose image is marked broken, as (name, image), or None."""
    try:
        td = backend.describe_task_definition(td_arn)
    except Exception:
        return None
    return next(((c.get("name") or "", c.get("image") or "") for c in td.container_definitions
                 if "broken" in (c.get("image") or "")), None)


def _is_broken(backend, td_arn):
    return _broken_image(backend, td_arn) is not None


# Why the tasks of a broken deployment stopped, by the image's mark: stopCode, stoppedReason and
# the container's reason and exit code, in the words "Amazon ECS stopped task error messages"
# (AmazonECS/latest/developerguide/stopped-task-error-codes.html and the pages it links) shows.
_STOPS = {
    "broken-oom": ("EssentialContainerExited", "Essential container in task exited",
                   "OutOfMemoryError: Container killed due to memory usage", 137),
    "broken-exit": ("EssentialContainerExited", "Essential container in task exited", "", 3),
    "broken-secret": (
        "TaskFailedToStart",
        "ResourceInitializationError: unable to pull secrets or registry auth: execution resource "
        "retrieval failed: unable to retrieve secret from asm: service call has been retried 1 "
        "time(s): failed to fetch secret arn:aws:secretsmanager:us-east-1:123456789012:secret:db "
        "from secrets manager: AccessDeniedException: User: arn:aws:sts::123456789012:assumed-role/"
        "ecs-exec/task is not authorized to perform: secretsmanager:GetSecretValue on resource: "
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:db because no identity-based policy "
        "allows the secretsmanager:GetSecretValue action", "", None),
    "broken-health": ("ServiceSchedulerInitiated",
                      "Task failed ELB health checks in (target-group arn:aws:elasticloadbalancing:"
                      "us-east-1:123456789012:targetgroup/app/0123456789abcdef)", "", None),
}
# Any other mark: the image does not exist.
_NOT_FOUND = ("TaskFailedToStart", "CannotPullContainerError: pull image manifest has been retried "
              "7 time(s): failed to resolve ref {image}: {image}: not found", "", None)
# Stopped tasks, by task ARN: what ListTasks (desiredStatus STOPPED, startedBy) and DescribeTasks
# answer for the deployments this model failed (moto runs no tasks for services).
_stopped = {}


def _stop_tasks(backend, svc, dep):
    name, image = _broken_image(backend, dep["taskDefinition"])
    mark = image.rsplit(":", 1)[-1]
    stop_code, reason, container_reason, exit_code = _STOPS.get(mark, _NOT_FOUND)
    for _ in range(dep["failedTasks"]):
        arn = f"arn:aws:ecs:{backend.region_name}:{backend.account_id}:task/{svc.cluster_name}/{uuid.uuid4().hex}"
        container = {"name": name, "image": image, "lastStatus": "STOPPED"}
        if container_reason:
            container["reason"] = container_reason
        if exit_code is not None:
            container["exitCode"] = exit_code
        _stopped[arn] = {
            "taskArn": arn, "clusterArn": svc.cluster_arn, "taskDefinitionArn": dep["taskDefinition"],
            "startedBy": dep["id"], "group": f"service:{svc.name}", "lastStatus": "STOPPED",
            "desiredStatus": "STOPPED", "stopCode": stop_code,
            "stoppedReason": reason.format(image=image), "containers": [container],
        }


def _stopped_tasks_answer(self, action):
    """ListTasks/DescribeTasks about the stopped tasks above; None for moto to answer."""
    params = self._get_params()
    with _lock:
        return _stopped_answer(action, params)


def _stopped_answer(action, params):
    if action == "ListTasks" and params.get("desiredStatus") == "STOPPED" and params.get("serviceName"):
        group = f"service:{params['serviceName'].split('/')[-1]}"
        arns = [a for a, t in _stopped.items() if t["group"] == group]
        return {"taskArns": arns[-int(params.get("maxResults") or 100):]}
    if action == "DescribeTasks" and params.get("tasks") and all(a in _stopped for a in params["tasks"]):
        return {"tasks": [_stopped[a] for a in params["tasks"]], "failures": []}
    return None


def _advance(backend, svc):
    """One DescribeServices call that includes svc: move its PRIMARY rollout on."""
    if not svc.deployments or svc.deployments[0].get("rolloutState") != "IN_PROGRESS":
        return
    st = _state(svc)
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
        _stop_tasks(backend, svc, dep)
        _event(svc, f"(service {svc.name}) (deployment {dep['id']}) deployment failed: "
                    "tasks failed to start.")
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


def _look(backend, svc):
    """What one DescribeServices call shows of svc: None for MISSING, a stale copy, or svc
    itself after moving its rollout and draining on (stale looks move neither)."""
    st = _state(svc)
    stale = st.get("stale")
    if stale and stale["left"] > 0:
        stale["left"] -= 1
        if stale["view"] is None:
            return None
        view = copy.copy(svc)
        view.deployments, view.task_definition = stale["view"]
        return view
    if svc.status == "DRAINING":
        if st["drain"] < DRAIN_CALLS:
            st["drain"] += 1
        else:
            svc.status = "INACTIVE"
    _advance(backend, svc)
    return svc


def _went_stale(svc, view):
    """A write readers will not see for STALE_READS calls; view: what they see meanwhile."""
    if STALE_READS:
        st = _state(svc)
        old = st.get("stale")
        if old and old["left"] and old["view"] is None:
            view = None  # not even created yet, as far as readers know
        st["stale"] = {"left": STALE_READS, "view": view}


# --- ECS refusals and lifecycle -----------------------------------------------------------

class ServiceNotActive(ECSException):
    code = "ServiceNotActiveException"
    message = "Service was not ACTIVE."


def _require_active_revision(backend, td_str, error):
    if td_str and backend.describe_task_definition(td_str).status == "INACTIVE":
        raise error("TaskDefinition is inactive")


TAG_PATTERN = r"^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$"


def _tag_text_allowed(text):
    return all(unicodedata.category(c)[0] in "LZN" or c in "_.:/=+-@" for c in text)


def _check_tags(tags):
    """tags: what the resource would carry, as [{"key", "value"}]."""
    tags = tags or []
    for i, t in enumerate(tags, 1):
        key, value = t.get("key") or "", t.get("value") or ""
        for field, text in (("key", key), ("value", value)):
            if not _tag_text_allowed(text):
                raise InvalidParameterException(
                    f"1 validation error detected: Value '{text}' at 'tags.{i}.member.{field}' "
                    f"failed to satisfy constraint: Member must satisfy regular expression pattern: {TAG_PATTERN}")
        if len(key) > MAX_TAG_KEY:
            raise InvalidParameterException(
                f"Tag key {key} exceeds the maximum length of {MAX_TAG_KEY} characters.")
        if len(value) > MAX_TAG_VALUE:
            raise InvalidParameterException(
                f"Tag value of {key} exceeds the maximum length of {MAX_TAG_VALUE} characters.")
    user = sum(1 for t in tags if not (t.get("key") or "").lower().startswith("aws:"))
    if user > MAX_TAGS:
        raise InvalidParameterException(
            f"Too many tags: a resource can have at most {MAX_TAGS} tags, this request would leave {user}.")


def create_service(self, *args, **kwargs):
    a = _args(_orig_create, self, *args, **kwargs)
    with _lock:
        cluster = self._get_cluster(a["cluster_str"])
        old = self.services.get(f"{cluster.name}:{a['service_name']}")
        if old is not None and old.status != "INACTIVE":
            raise InvalidParameterException("Creation of service was not idempotent.")
        _require_active_revision(self, a.get("task_definition_str"), EcsClientException)
        _check_tags(a.get("tags"))
        svc = _orig_create(self, *args, **kwargs)
        svc._fleetsync = {"polls": 0, "rollback": False, "drain": 0}
        _went_stale(svc, None)
        return svc


def update_service(self, service_properties):
    with _lock:
        cluster = service_properties.get("cluster") or "default"
        svc = self._get_service(cluster, service_properties["service"])
        if svc.status != "ACTIVE":
            raise ServiceNotActive()
        td_str = service_properties.get("task_definition")
        _require_active_revision(self, td_str, EcsClientException)
        before = (copy.deepcopy(svc.deployments), svc.task_definition)
        force = bool(service_properties.get("force_new_deployment"))
        service_properties["force_new_deployment"] = False  # modelled below instead
        svc = _orig_update(self, service_properties)  # validates, applies plain fields
        if td_str:
            svc.task_definition = self.describe_task_definition(td_str).arn
        if svc.deployment_controller.get("type") != "ECS" or not svc.deployments:
            return svc
        primary = svc.deployments[0]
        if force or primary.get("taskDefinition") != svc.task_definition:
            _start_deployment(svc, svc.task_definition)
            _went_stale(svc, before)
        else:
            primary["desiredCount"] = svc.desired_count
            if primary.get("rolloutState") == "COMPLETED":
                primary["runningCount"] = svc.desired_count
        return svc


def describe_services(self, cluster_str, service_names_or_arns):
    with _lock:
        services, failures = _orig_describe(self, cluster_str, service_names_or_arns)
        looks, shown = {}, []
        for svc in services:
            if id(svc) not in looks:  # named twice in one call: one look
                looks[id(svc)] = _look(self, svc)
            view = looks[id(svc)]
            if view is None:  # as moto answers a name it does not know
                partition, region = get_partition(self.region_name), self.region_name
                arn = f"arn:{partition}:ecs:{region}:{self.account_id}:service/{svc.name}"
                failures.append({"arn": arn, "reason": "MISSING"})
            else:
                shown.append(view)
        return shown, failures


def delete_service(self, cluster_name, service_name, force):
    with _lock:
        if self._get_service(cluster_name, service_name).status != "ACTIVE":
            raise ServiceNotActive()
        svc = _orig_delete(self, cluster_name, service_name, force)  # refuses if scaled above 0
        svc.status = "DRAINING"
        _state(svc)["drain"] = 0
        return svc


def list_services(self, cluster_str, *args, **kwargs):
    with _lock:
        gone = {s.arn for s in self.services.values() if s.status != "ACTIVE"}
        return [arn for arn in _orig_list(self, cluster_str, *args, **kwargs) if arn not in gone]


def run_task(self, *args, **kwargs):
    with _lock:
        td_str = _args(_orig_run_task, self, *args, **kwargs)["task_definition_str"]
        _require_active_revision(self, td_str, InvalidParameterException)
        return _orig_run_task(self, *args, **kwargs)


def register_task_definition(self, *args, **kwargs):
    _check_tags(_args(_orig_register, self, *args, **kwargs).get("tags"))
    with _lock:
        td = _orig_register(self, *args, **kwargs)
        td.registered_at = utcnow()
        return td


def tag_resource(self, arn, tags):
    with _lock:
        resource = self._get_resource(arn, self._parse_resource_arn(arn))
        kept = {t["key"]: t["value"] for t in getattr(resource, "tags", None) or []}
        _check_tags([{"key": k, "value": v} for k, v in {**kept, **tags}.items()])
        return _orig_tag(self, arn, tags)


def create_service_response(self):
    token = self._get_param("clientToken")
    request = json.dumps(self._get_params(), sort_keys=True, default=str)
    with _lock:
        if token:  # a retry of the request that created the service: answer it again
            key = f"{self._get_param('cluster', 'default').split('/')[-1]}:{self._get_param('serviceName')}"
            old = self.ecs_backend.services.get(key)
            if old and old.status != "INACTIVE" and _state(old).get("request") == (token, request):
                return ActionResult({"service": old})
        result = _orig_create_response(self)
        svc = result.result["service"]
        _state(svc)["request"] = (token, request)
        config = self._get_param("deploymentConfiguration")
        if config:
            svc.deployment_configuration = config
        return result


# --- SQS FIFO -----------------------------------------------------------------------------

_FIFO_ID = re.compile(r"[A-Za-z0-9!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]{1,128}")
_FIFO_ID_REASON = "{} can only include alphanumeric and punctuation characters. 1 to 128 in length"


def _bad_fifo_id(group_id, deduplication_id):
    """(parameter, value) of the first id SQS refuses, or None."""
    for name, value in (("MessageGroupId", group_id), ("MessageDeduplicationId", deduplication_id)):
        if value is not None and not _FIFO_ID.fullmatch(value):
            return name, value
    return None


def send_message(self, queue_name, message_body, message_attributes=None, delay_seconds=None,
                 deduplication_id=None, group_id=None, system_attributes=None, validate_group_id=True):
    bad = _bad_fifo_id(group_id, deduplication_id)
    if bad:
        raise InvalidParameterValue(
            f"Value {bad[1]} for parameter {bad[0]} is invalid. Reason: {_FIFO_ID_REASON.format(bad[0])}.")
    send = functools.partial(_orig_send, self, queue_name, message_body, message_attributes, delay_seconds,
                             deduplication_id, group_id, system_attributes, validate_group_id)
    queue = self.get_queue(queue_name)
    key = deduplication_id
    if key is None and queue.attributes.get("ContentBasedDeduplication") == "true":
        key = hashlib.sha256(message_body.encode("utf-8")).hexdigest()  # as moto computes it
    if not queue.fifo_queue or key is None:
        return send()  # moto's own refusals
    if queue.attributes.get("DeduplicationScope") == "messageGroup":
        key = (group_id, key)
    # Refuse what the first send would have refused, before answering as a duplicate.
    self._validate_message(queue, message_body, int(delay_seconds or 0), deduplication_id, group_id,
                           validate_group_id)
    with _lock:
        # Insertion order is expiry order: the window is the same for every id.
        seen = queue.__dict__.setdefault("_fleetsync_dedup", collections.OrderedDict())
        now = time.monotonic()
        while seen and next(iter(seen.values()))[0] <= now:
            seen.popitem(last=False)
        if key in seen:
            dup = copy.copy(seen[key][1])  # the original's id and sequence number
            dup.body, dup.message_attributes = message_body, message_attributes or {}
            return dup
        message = send()
        seen[key] = (now + DEDUP_SECONDS, message)
        return message


def send_message_batch(self, queue_name, entries):
    ids = [e.get("Id") or "" for e in entries.values()]
    failed = {}
    # Whole-call refusals (too many entries, bad or repeated Ids) stay moto's.
    if len(ids) <= 10 and len(set(ids)) == len(ids) and all(re.fullmatch(r"[\w-]{1,80}", i) for i in ids):
        for k, e in entries.items():
            bad = _bad_fifo_id(e.get("MessageGroupId"), e.get("MessageDeduplicationId"))
            if bad:
                failed[k] = {"Id": e["Id"], "SenderFault": True, "Code": "InvalidParameterValue",
                             "Message": _FIFO_ID_REASON.format(bad[0])}
    rest = {k: e for k, e in entries.items() if k not in failed}
    if not rest and failed:
        self.get_queue(queue_name)  # QueueDoesNotExist first
        return [], list(failed.values())
    messages, more = _orig_send_batch(self, queue_name, rest)
    return messages, more + list(failed.values())


_orig_receive = SQSBackend.receive_message


def receive_message(self, queue_name, count, wait_seconds_timeout, visibility_timeout,
                    message_attribute_names=None):
    deadline = time.monotonic() + (wait_seconds_timeout or 0)
    while True:
        messages = _orig_receive(self, queue_name, count, 0, visibility_timeout, message_attribute_names)
        if messages or time.monotonic() >= deadline:
            return messages
        time.sleep(0.02)


# --- Throttling and faults ----------------------------------------------------------------

def _parse_throttle(spec):
    """"Op=rate/burst,..." -> {Op: bucket}; buckets start full."""
    buckets = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        try:
            op, limits = item.split("=")
            rate, burst = (float(x) for x in limits.split("/"))
        except ValueError:
            sys.exit(f"FLEETSYNC_EMULATOR_THROTTLE: {item!r} is not Operation=rate/burst")
        buckets[op.strip()] = {"rate": rate, "burst": burst, "tokens": burst, "at": time.monotonic()}
    return buckets


_buckets = _parse_throttle(os.environ.get("FLEETSYNC_EMULATOR_THROTTLE", ""))
_faults = {}  # service -> fault, from the control endpoint
_counts = {"throttled": collections.Counter(), "faulted": collections.Counter()}
THROTTLED = {"throttle": True}


def _take_token(action):
    b = _buckets.get(action)
    if b is None:
        return True
    now = time.monotonic()
    b["tokens"] = min(b["burst"], b["tokens"] + (now - b["at"]) * b["rate"])
    b["at"] = now
    if b["tokens"] < 1:
        return False
    b["tokens"] -= 1
    return True


def _verdict(service, action):
    """None to serve the call, else the fault that answers it."""
    fault = _faults.get(service)
    if fault and fault["until"] <= time.monotonic():
        del _faults[service]
        fault = None
    if fault and fault.get("operation") in (None, action):
        if fault.get("times") is not None:
            fault["times"] -= 1
            if fault["times"] <= 0:
                del _faults[service]
        return fault
    if service == "ecs" and not _take_token(action):
        return THROTTLED
    return None


def _error_response(self, fault):
    if fault.get("throttle"):
        status, code, message = 400, "ThrottlingException", "Rate exceeded"
    else:
        status, code, message = fault["status"], fault["code"], fault["message"]
    request_id = str(uuid.uuid4())
    headers = {"x-amzn-RequestId": request_id}
    if self.headers.get("X-Amz-Target"):  # awsJson protocols
        headers["Content-Type"] = self.headers.get("Content-Type") or "application/x-amz-json-1.1"
        return status, headers, json.dumps({"__type": code, "message": message})
    headers["Content-Type"] = "text/xml"
    error = f"<Code>{code}</Code><Message>{message}</Message>"
    if self.service_name == "ec2":  # the EC2 query protocol has its own error shape
        return status, headers, (f"<Response><Errors><Error>{error}</Error></Errors>"
                                 f"<RequestID>{request_id}</RequestID></Response>")
    kind = "Sender" if status < 500 else "Receiver"
    return status, headers, (f"<ErrorResponse><Error><Type>{kind}</Type>{error}</Error>"
                             f"<RequestId>{request_id}</RequestId></ErrorResponse>")


def call_action(self):
    service, action = self.service_name, self._get_action()
    with _lock:
        fault = _verdict(service, action)
        line = f"{service} {action}"
        delay = fault.get("delay") if fault else None
        if delay:
            fault = None
        if fault is not None:
            kind = "throttled" if fault.get("throttle") else "faulted"
            _counts[kind][line] += 1
            line += " throttled" if kind == "throttled" else f" fault {fault['status']}"
        if CALL_LOG:
            with open(CALL_LOG, "a") as log:
                log.write(line + "\n")
    if fault is None and service == "ecs" and action in ("ListTasks", "DescribeTasks"):
        stopped = _stopped_tasks_answer(self, action)
        if stopped is not None:
            return 200, {"Content-Type": "application/x-amz-json-1.1"}, json.dumps(stopped)
    if fault is None:
        answer = _orig_call_action(self)
        if delay:
            time.sleep(delay)
        return answer
    return _error_response(self, fault)


def _new_fault(spec):
    service = spec["service"]
    if "throttle_seconds" in spec:
        fault, seconds = dict(THROTTLED), float(spec["throttle_seconds"])
    elif "delay_seconds" in spec:
        fault, seconds = {"delay": float(spec["delay_seconds"])}, float(spec["seconds"])
    else:
        status, seconds = int(spec.get("status", 500)), float(spec["seconds"])
        code = ("ServiceUnavailable" if status == 503 else "ServerException" if service == "ecs"
                else "InternalError")
        fault = {"status": status, "code": spec.get("code", code),
                 "message": spec.get("message", "We encountered an internal error. Please try again.")}
    return service, dict(fault, service=service, operation=spec.get("operation"),
                         times=spec.get("times"), until=time.monotonic() + seconds)


def _faults_app(environ, start_response):
    """The control endpoint: /fleetsync-emulator/faults (see the module docstring)."""
    from werkzeug.wrappers import Request, Response

    request = Request(environ)
    status = 200
    with _lock:
        if request.method == "POST":
            try:
                service, fault = _new_fault(json.loads(request.get_data() or b"{}"))
                _faults[service] = fault
            except (ValueError, TypeError, KeyError) as e:
                status = 400
                body = {"error": f"want {{service, status, seconds}} or {{service, throttle_seconds}}: "
                                 f"{e!r}"}
        elif request.method == "DELETE":
            _faults.clear()
        elif request.method != "GET":
            status, body = 405, {"error": "GET, POST or DELETE"}
        if status == 200:
            now = time.monotonic()
            body = {"faults": [dict(f, until=None, seconds_left=round(f["until"] - now, 3))
                               for f in _faults.values() if f["until"] > now],
                    "throttled": dict(_counts["throttled"]), "faulted": dict(_counts["faulted"])}
    return Response(json.dumps(body), status, mimetype="application/json")(environ, start_response)


def dispatch(self, environ, start_response):
    if environ.get("PATH_INFO", "").rstrip("/") == "/fleetsync-emulator/faults":
        return _faults_app(environ, start_response)
    return _orig_dispatch(self, environ, start_response)


def install():
    BaseResponse.call_action = call_action
    DomainDispatcherApplication.__call__ = dispatch
    Backend.create_service = create_service
    Backend.update_service = update_service
    Backend.describe_services = describe_services
    Backend.delete_service = delete_service
    Backend.list_services = list_services
    Backend.run_task = run_task
    Backend.register_task_definition = register_task_definition
    Backend.tag_resource = tag_resource
    Response.create_service = create_service_response
    SQSBackend.send_message = send_message
    SQSBackend.send_message_batch = send_message_batch
    SQSBackend.receive_message = receive_message
    sqs_models.DEDUPLICATION_TIME_IN_SECONDS = 0  # moto's in-queue dedup: the model above decides


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
