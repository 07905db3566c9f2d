"""The OpenAPI document generates a clean Python client (openapi-python-client, no warning)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.unit.conftest import Api

BIN = Path(sys.executable).parent
# The API serves rendered videos as video/mp4; the generator knows binary bodies by the
# generic octet-stream type, so the client is told to read that type as one.
CONFIG = "content_type_overrides:\n  video/mp4: application/octet-stream\n"


def test_openapi_document_generates_a_client_without_warnings(api: Api, tmp_path: Path) -> None:
    doc = api.client.get("/openapi.json")
    assert doc.status_code == 200
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(doc.json()))
    (tmp_path / "config.yml").write_text(CONFIG)
    out = tmp_path / "client"
    result = subprocess.run(
        [
            str(BIN / "openapi-python-client"), "generate", "--path", str(spec),
            "--output-path", str(out), "--meta", "none", "--config", str(tmp_path / "config.yml"),
        ],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "warning" not in output.lower() and "unable" not in output.lower(), output
    models = {p.stem for p in (out / "models").glob("*.py")}
    assert {"avatar", "render", "render_options", "avatar_create", "problem"} <= models
    # The generated package imports, and its Render reads a render the API returns.
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from client.models.render import Render;"
        "r = Render.from_dict({'id': 'rn_1', 'avatar_id': 'av_1', 'status': 'queued',"
        " 'stage': 'queued', 'progress': 0.0, 'created_at': '2026-01-01T00:00:00Z',"
        " 'updated_at': '2026-01-01T00:00:00Z', 'options': {'pose': 'source'}});"
        "print(type(r.options).__name__)"
    )
    checked = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == "RenderOptions"
