"""Command-line tools the deploy tests run (missing ones fail in CI, skip elsewhere)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from shared.config import Settings
from tests.fixtures.servers import missing


def tool(name: str, package: str) -> str:
    """The path of `name` (the venv's bin first), or fail/skip naming what provides it."""
    venv_bin = Path(sys.executable).parent / name
    found = str(venv_bin) if venv_bin.is_file() else shutil.which(name)
    if found is None:
        missing(f"{name} ({package})")
    assert found is not None
    return found


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a tool, capturing text output, never raising on its exit status."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)  # type: ignore[call-overload, no-any-return]


def setting_variables() -> set[str]:
    """Every TH_ environment variable that `Settings` reads."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}
