"""Schemathesis against the served OpenAPI document: no 5xx, no response off its schema."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.embedded import EmbeddedStack
from tests.e2e.test_http_flow import admin_create_tenant

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """An embedded stack without workers: only the API's own behaviour is under test."""
    with EmbeddedStack(
        tmp_path_factory.mktemp("fuzz"),
        redis_url=redis_url,
        workers=0,
        # no request rate: the fuzzer's cases should reach the routes, not the limiter's 429
        env={"TH_LOG_LEVEL": "WARNING", "TH_TENANT_REQUESTS_PER_SECOND": "0"},
    ) as running:
        yield running


def test_schemathesis_finds_no_server_errors(stack: EmbeddedStack, tmp_path: Path) -> None:
    key = admin_create_tenant(stack, "fuzz")["api_key"]
    spec = httpx.get(f"{stack.base_url}/openapi.json").json()
    operations = sum(len(v) for v in spec["paths"].values())
    assert operations >= 15
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert binary, "schemathesis is a dev dependency"
    junit = tmp_path / "junit.xml"
    proc = subprocess.run(
        [
            binary,
            "run",
            f"{stack.base_url}/openapi.json",
            "-H",
            f"Authorization: Bearer {key}",
            "--max-examples",
            "50",
            "--checks",
            CHECKS,
            "--workers",
            "1",
            "--generation-deterministic",
            "--report",
            "junit",
            "--report-junit-path",
            str(junit),
            "--suppress-health-check",
            "all",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "NO_COLOR": "1"},
        cwd=tmp_path,  # schemathesis keeps a cache dir in its working directory
    )
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    cases = ET.parse(junit).getroot().iter("testcase")
    assert sum(1 for _ in cases) >= operations, tail
