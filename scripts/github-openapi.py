#!/usr/bin/env python3
"""Fetches GitHub's published OpenAPI description (npm: @octokit/openapi, pinned below, its
integrity checked) into .venv/, for tests/it/feedback.rs to check what fleetsync sends GitHub
against. Idempotent; needs no npm: the package is a tarball on the npm registry."""

import base64
import hashlib
import io
import pathlib
import sys
import tarfile
import urllib.request

VERSION = "23.0.2"
INTEGRITY = "sha512-pV8M7L9GY23AybNvTmo2nyjmpmnt6+2sRE/tqr0ZLQcPS4lnw7u5eZGNmwRNkBC3D7gZXbFx5AHzLUVRBXGDhg=="
TARBALL = f"https://registry.npmjs.org/@octokit/openapi/-/openapi-{VERSION}.tgz"
MEMBER = "package/generated/api.github.com.json"

root = pathlib.Path(__file__).resolve().parent.parent
target = root / ".venv" / f"github-openapi-{VERSION}.json"
if target.exists():
    sys.exit(0)
print(f"github-openapi: fetching @octokit/openapi {VERSION}", file=sys.stderr)
with urllib.request.urlopen(TARBALL, timeout=120) as response:
    data = response.read()
digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
if digest != INTEGRITY:
    sys.exit(f"github-openapi: {TARBALL} does not match its pinned integrity")
with tarfile.open(fileobj=io.BytesIO(data)) as archive:
    description = archive.extractfile(MEMBER).read()
partial = target.with_suffix(".partial")
partial.write_bytes(description)
partial.rename(target)
