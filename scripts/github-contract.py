#!/usr/bin/env python3
"""Checks requests sent to GitHub's API against its published OpenAPI description.

stdin: one JSON object per line, {"method", "path", "query": {name: value}, "body": JSON|null},
as the tests' stand-in for GitHub recorded them. argv[1]: the description (api.github.com.json,
fetched by scripts/github-openapi.py). Each request must name a path and method GitHub has,
send only query parameters that operation takes, and a body its schema accepts (required fields,
types, enum values). Prints every mismatch; exit 1 if any."""

import json
import re
import sys

import jsonschema

spec = json.load(open(sys.argv[1]))


def deref(node):
    if isinstance(node, dict):
        if "$ref" in node:
            target = spec
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            return deref(target)
        return {k: deref(v) for k, v in node.items()}
    if isinstance(node, list):
        return [deref(v) for v in node]
    return node


templates = [
    (re.compile("^" + re.sub(r"\{[^/]+\}", "[^/]+", path) + "$"), path)
    for path in spec["paths"]
]
problems = []
for line in sys.stdin:
    if not line.strip():
        continue
    request = json.loads(line)
    method, path = request["method"].lower(), request["path"]
    matches = [t for regex, t in templates if regex.match(path)]
    if not matches:
        problems.append(f"{method.upper()} {path}: GitHub has no such path")
        continue
    operation = next((spec["paths"][t].get(method) for t in matches if method in spec["paths"][t]), None)
    if operation is None:
        problems.append(f"{method.upper()} {path}: GitHub has no {method.upper()} there")
        continue
    operation = deref(operation)
    taken = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
    for name in request.get("query") or {}:
        if name not in taken:
            problems.append(f"{method.upper()} {path}: query parameter {name} is not one of {sorted(taken)}")
    body = request.get("body")
    schema = (operation.get("requestBody") or {}).get("content", {}).get("application/json", {}).get("schema")
    if body is not None and schema is None:
        problems.append(f"{method.upper()} {path}: takes no JSON body")
    elif schema is not None:
        if body is None:
            problems.append(f"{method.upper()} {path}: a JSON body is required")
        else:
            for error in jsonschema.Draft7Validator(schema).iter_errors(body):
                problems.append(f"{method.upper()} {path}: {error.message}")
for problem in problems:
    print(problem)
sys.exit(1 if problems else 0)
