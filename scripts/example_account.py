"""Creates in an AWS account what example-repo's apps reference, as the platform team's own
infrastructure code would: execution and task roles (trusting ecs-tasks.amazonaws.com, the
execution role allowed to read its environment's secrets), the secrets and SSM parameters (dummy
values), and the awslogs log groups. fleetsync's preflight checks all of these before it
deploys, so the demo and the tests start from an account where example-repo is deployable.

The names are read from example-repo itself, so an app added there is provisioned here too.
"""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "123456789012"
ENVIRONMENTS = ("staging", "production")

TRUST = json.dumps({"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}]})


def references():
    text = "\n".join(p.read_text() for p in (ROOT / "example-repo").rglob("*") if p.is_file())
    found = lambda pattern: sorted(set(re.findall(pattern, text)))
    return {
        "task_roles": found(r"role/ecs-\$\{environment\}-app-([a-z0-9-]+)\""),
        "secrets": found(r"secret:\$\{environment\}/([a-z0-9/-]+)"),
        "parameters": found(r"parameter/\$\{environment\}/([a-z0-9/-]+)"),
        "log_groups": found(r"awslogs-group\"?: \"/ecs/\$\{environment\}/([a-z0-9-]+)\""),
    }


def seed(session):
    iam, secrets, ssm, logs = (session.client(s) for s in ("iam", "secretsmanager", "ssm", "logs"))
    refs = references()
    for env in ENVIRONMENTS:
        execution = f"ecs-exec-{env}"
        iam.create_role(RoleName=execution, AssumeRolePolicyDocument=TRUST)
        iam.put_role_policy(RoleName=execution, PolicyName=f"read-{env}-secrets", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                 "Resource": f"arn:aws:secretsmanager:*:{ACCOUNT}:secret:{env}/*"},
                {"Effect": "Allow", "Action": "ssm:GetParameters",
                 "Resource": f"arn:aws:ssm:*:{ACCOUNT}:parameter/{env}/*"}]}))
        for app in refs["task_roles"]:
            iam.create_role(RoleName=f"ecs-{env}-app-{app}", AssumeRolePolicyDocument=TRUST)
        for name in refs["secrets"]:
            secrets.create_secret(Name=f"{env}/{name}", SecretString="example")
        for name in refs["parameters"]:
            ssm.put_parameter(Name=f"/{env}/{name}", Value="example", Type="String")
        for app in refs["log_groups"]:
            logs.create_log_group(logGroupName=f"/ecs/{env}/{app}")
    return refs
