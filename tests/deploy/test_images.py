"""deploy/docker: per-service images on a shared base, pinned, non-root, health-checked."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from shared.queue import QUEUES
from tests.deploy.promql import ROOT
from tests.deploy.tools import setting_variables

DOCKER = ROOT / "deploy" / "docker"
SERVICES = ("api", "ingest", "preprocess", "trainer", "trainer-cuda", "renderer", "triton")
LOCKS = {"py311": DOCKER / "requirements" / "py311.txt",
         "triton-py310": DOCKER / "requirements" / "triton-py310.txt"}  # fmt: skip


@dataclass
class Dockerfile:
    """The instructions of a Dockerfile, continuation lines joined."""

    path: Path
    instructions: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        text = re.sub(r"\\\n", " ", path.read_text())
        out = cls(path)
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                word, _, rest = line.partition(" ")
                out.instructions.append((word.upper(), rest.strip()))
        return out

    def all(self, word: str) -> list[str]:
        return [rest for w, rest in self.instructions if w == word]

    def arg_defaults(self) -> dict[str, str]:
        return dict(a.split("=", 1) for a in self.all("ARG") if "=" in a)

    def base_images(self) -> list[str]:
        """FROM references with ARG defaults substituted (stage names dropped)."""
        args = self.arg_defaults()
        refs = []
        for value in self.all("FROM"):
            ref = value.split()[0]
            refs.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], ref))
        return refs

    def final_stage(self) -> list[tuple[str, str]]:
        last = max(i for i, (w, _) in enumerate(self.instructions) if w == "FROM")
        return self.instructions[last:]


def dockerfile(name: str) -> Dockerfile:
    return Dockerfile.read(DOCKER / f"{name}.Dockerfile")


def test_every_service_has_a_dockerfile_on_the_shared_base() -> None:
    for name in SERVICES:
        if name == "triton":
            continue
        parsed = dockerfile(name)
        assert parsed.all("FROM") == ["${BASE_IMAGE}"], name
        assert parsed.arg_defaults()["BASE_IMAGE"].startswith("talkinghead/base:"), name


def test_base_and_triton_are_multi_stage() -> None:
    for name in ("base", "triton"):
        stages = dockerfile(name).all("FROM")
        assert len(stages) >= 2 and any(" AS " in s.upper() for s in stages), name
        assert any("--from=" in c for c in dockerfile(name).all("COPY")), name


@pytest.mark.parametrize("name", ["base", *SERVICES])
def test_base_images_are_pinned(name: str) -> None:
    for ref in dockerfile(name).base_images():
        repository, _, tag = ref.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {ref} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: {ref} is not pinned"
    if name == "triton":
        assert dockerfile(name).base_images()[-1].startswith("nvcr.io/nvidia/tritonserver:")


@pytest.mark.parametrize("name", ["base", *SERVICES])
def test_images_run_as_a_non_root_user(name: str) -> None:
    users = [rest for word, rest in dockerfile(name).final_stage() if word == "USER"]
    if name in SERVICES and name != "triton" and not users:
        return  # inherits the base's USER
    assert users, f"{name} never drops root"
    assert users[-1].split(":")[0] not in ("root", "0"), name


@pytest.mark.parametrize("name", SERVICES)
def test_service_images_have_a_health_check_and_a_command(name: str) -> None:
    parsed = dockerfile(name)
    (check,) = parsed.all("HEALTHCHECK")
    assert "talkinghead-healthcheck" in check, name
    assert parsed.all("CMD"), name


def test_worker_images_consume_every_queue() -> None:
    consumed = []
    for name in ("ingest", "preprocess", "trainer", "renderer"):
        cmd = dockerfile(name).all("CMD")[-1]
        queues = re.search(r'"--queues", "([^"]+)"', cmd)
        assert queues, name
        consumed += queues.group(1).split(",")
        assert "TH_WORKER_METRICS_PORT=9100" in " ".join(dockerfile(name).all("ENV")), name
    assert sorted(consumed) == sorted(QUEUES)
    assert dockerfile("trainer-cuda").all("CMD") == dockerfile("trainer").all("CMD")


def test_th_variables_in_images_are_real_settings() -> None:
    used = set()
    for path in DOCKER.glob("*.Dockerfile"):
        for env in Dockerfile.read(path).all("ENV"):
            used |= set(re.findall(r"\b(TH_\w+)=", env))
    assert used and used <= setting_variables(), used - setting_variables()


def lock(name: str) -> dict[str, str]:
    pins = {}
    for line in LOCKS[name].read_text().splitlines():
        if line and not line.startswith("#"):
            package, version = line.split("==")
            pins[canonicalize_name(package)] = version
    return pins


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_locks_pin_every_dependency_within_its_range(name: str) -> None:
    pins = lock(name)
    runtime = [Requirement(r) for r in metadata.requires("talkinghead") or []]
    runtime = [r for r in runtime if r.marker is None or "extra" not in str(r.marker)]
    assert len(runtime) > 20, "the installed talkinghead metadata looks stale"
    for requirement in runtime:
        key = canonicalize_name(requirement.name)
        if name == "triton-py310" and key == "torch":
            continue  # the image pins torch itself (TORCH_VERSION)
        assert key in pins, f"{name} does not pin {requirement.name}"
        assert requirement.specifier.contains(pins[key], prereleases=True), (
            str(requirement),
            pins[key],
        )


def test_every_image_installs_the_same_torch() -> None:
    """Exports traced by the trainer must load in Triton: one torch version everywhere."""
    versions = {
        path.name: Dockerfile.read(path).arg_defaults()["TORCH_VERSION"]
        for path in DOCKER.glob("*.Dockerfile")
        if "TORCH_VERSION" in Dockerfile.read(path).arg_defaults()
    }
    assert set(versions) == {"base.Dockerfile", "trainer-cuda.Dockerfile", "triton.Dockerfile"}
    assert set(versions.values()) == {lock("py311")["torch"]}


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex (Go filepath.Match plus `**`)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _pattern(raw.lstrip("!").rstrip("/"))
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


def test_the_build_context_holds_the_sources_and_no_state() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = set()
    for path in DOCKER.glob("*.Dockerfile"):
        for copy in Dockerfile.read(path).all("COPY"):
            if "--from=" in copy:
                continue
            sources = [w for w in copy.split() if not w.startswith("--")][:-1]
            copied |= set(sources)
    for source in copied:
        target = ROOT / source
        files = [target] if target.is_file() else [p for p in target.rglob("*.py")][:20]
        assert files, source
        for f in files:
            relative = f.relative_to(ROOT).as_posix()
            assert not dockerignore_excludes(relative, patterns), f"{relative} is left out"
    for kept_out in (".venv/bin/python", ".git/HEAD", ".env", "tests/conftest.py",
                     ".talkinghead/talkinghead.db", "shared/__pycache__/config.cpython-311.pyc",
                     "demo-output/out.mp4"):  # fmt: skip
        assert dockerignore_excludes(kept_out, patterns), f"{kept_out} enters the images"


def test_triton_image_generates_its_model_repository_from_the_registry() -> None:
    text = (DOCKER / "triton.Dockerfile").read_text()
    assert "RUN talkinghead triton-repo /models" in text
    assert text.index("ARG EXTRA_PACKAGES") < text.index("RUN talkinghead triton-repo")
    assert '"--load-model=*"' in text and "COPY triton_models" not in text


def test_no_dockerfile_needs_a_pulled_frontend() -> None:
    """A `# syntax=` line makes BuildKit pull its frontend image: builds without a registry fail."""
    for path in DOCKER.glob("*.Dockerfile"):
        first = path.read_text().lstrip().splitlines()[0]
        assert not re.match(r"#\s*syntax\s*=", first, re.IGNORECASE), path.name


def test_every_pip_install_of_the_base_can_read_only_the_wheelhouse() -> None:
    """With WHEELHOUSE_URL set, no install in the base image reaches for an index."""
    parsed = dockerfile("base")
    installs = [run for run in parsed.all("RUN") if "pip install" in run]
    assert installs and "WHEELHOUSE_URL" in parsed.arg_defaults()
    for run in installs:
        assert run.count("pip install") == run.count("${WHEELHOUSE_URL:+--no-index"), run
