"""Tenant limits on PostgreSQL and Redis: request rates, the queued-jobs quota at submission,
the running-jobs limit where jobs start, the operator's CLI, and Redis outages."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from services.api.app import create_app
from services.cli import app as cli
from services.client import ApiError, TalkingHeadClient
from shared.config import Settings
from shared.db.migrate import upgrade
from shared.db.models import Avatar, Job, JobStatus, Tenant, utcnow
from shared.db.session import session_scope
from shared.jobs import JobService, task_name_for
from shared.limits import resolve_limits
from shared.tenants import create_tenant
from tests.fixtures.servers import redis_server

PROBLEM = "application/problem+json"
# The first bytes of an ISO-BMFF (mp4) file: all the API checks before the job decodes it.
FAKE_MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 4096


@pytest.fixture(scope="module")
def database(postgres_url: str) -> str:
    """The session's PostgreSQL database, migrated."""
    upgrade(postgres_url)
    return postgres_url


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    """A Redis of this module's own: the jobs it creates reach no other test's workers."""
    with redis_server() as url:
        yield url


def new_tenant(database: str, limits: dict[str, Any] | None = None) -> tuple[str, dict[str, str]]:
    """A tenant with optional limit overrides; its id and auth headers."""
    with session_scope(database) as s:
        tenant, key = create_tenant(s, f"limits-{uuid.uuid4().hex[:10]}")
        tenant.limits = limits
        return tenant.id, {"Authorization": f"Bearer {key}"}


AppFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(database: str, broker: str, tmp_path: Path) -> Iterator[AppFactory]:
    """An API on PostgreSQL and Redis with settings overrides."""
    clients: list[TestClient] = []

    def build(**overrides: Any) -> TestClient:
        settings = Settings(
            _env_file=None,
            **{
                "data_dir": tmp_path / f"data{len(clients)}",
                "database_url": database,
                "redis_url": broker,
                "storage_backend": "local",
                "storage_dir": None,
                "public_base_url": "http://testserver",
                **overrides,
            },
        )
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


def refused(reason: str) -> float:
    """How many requests the API refused for `reason` so far (this process)."""
    return REGISTRY.get_sample_value("th_api_refused_requests_total", {"reason": reason}) or 0.0


def assert_problem(response: httpx.Response, code: str) -> int:
    """A 429 problem document with `code`; returns its Retry-After."""
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["code"] == code and body["status"] == 429 and body["title"] == "Too Many Requests"
    assert body["detail"]
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit(), retry_after
    return int(retry_after)


# -- request rates ----------------------------------------------------------------------------
def test_a_flooding_tenant_is_limited_while_another_is_served(
    make_client: AppFactory, database: str
) -> None:
    client = make_client(tenant_requests_per_second=1.0, tenant_burst=5)
    _, flooder = new_tenant(database)
    _, calm = new_tenant(database, {"burst": 20})  # an override: more headroom than the default
    before = refused("rate_limit")
    statuses: dict[str, Counter[int]] = {"flooder": Counter(), "calm": Counter()}
    retry_afters = set()
    started = time.monotonic()
    for i in range(40):
        answer = client.get("/v1/avatars", headers=flooder)
        statuses["flooder"][answer.status_code] += 1
        if answer.status_code == 429:
            retry_afters.add(assert_problem(answer, "rate_limited"))
        if i % 4 == 0:
            statuses["calm"][client.get("/v1/avatars", headers=calm).status_code] += 1
    elapsed = time.monotonic() - started

    assert statuses["calm"] == {200: 10}  # within its burst of 20: never refused
    served, limited = statuses["flooder"][200], statuses["flooder"][429]
    assert served + limited == 40, statuses
    # the bucket starts full (5) and refills at 1/s: no more than that got through
    assert 5 <= served <= 5 + elapsed + 1, (served, elapsed)
    assert limited >= 1
    assert retry_afters == {1}  # one token at 1/s is at most a second away
    assert refused("rate_limit") - before == limited
    # health and metrics are never limited, nor counted against anyone
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path, headers=flooder).status_code == 200, path
    assert 'th_api_refused_requests_total{reason="rate_limit"}' in client.get("/metrics").text


def script_calls(url: str) -> int:
    """How many scripts the Redis at `url` has run."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("eval", "evalsha"))


def test_retry_after_says_when_the_next_request_passes_and_redis_is_asked_once(
    make_client: AppFactory, database: str, broker: str
) -> None:
    client = make_client()
    _, headers = new_tenant(database, {"requests_per_second": 0.05, "burst": 1})
    assert client.get("/v1/keys", headers=headers).status_code == 200
    started = time.monotonic()
    retry_after = assert_problem(client.get("/v1/keys", headers=headers), "rate_limited")
    # one token at 0.05/s takes 20 s, less the time since the first request
    assert 20 - (time.monotonic() - started) - 1 <= retry_after <= 20
    # until then this API process refuses the tenant by itself: no Redis (nor database) work
    calls = script_calls(broker)
    later = [client.get("/v1/keys", headers=headers) for _ in range(10)]
    assert script_calls(broker) == calls
    waits = [assert_problem(answer, "rate_limited") for answer in later]
    assert waits == sorted(waits, reverse=True) and 1 <= waits[-1] <= retry_after


def test_bad_keys_from_one_address_get_429_while_valid_keys_from_it_are_served(
    make_client: AppFactory, database: str, broker: str
) -> None:
    # a token every 5 s: the refusals' windows outlast this test's few hundred milliseconds
    client = make_client(auth_failures_per_second=0.2, auth_failure_burst=5)
    redis.Redis.from_url(broker).delete("th:ratelimit:address:testclient")  # TestClient's peer
    _, valid = new_tenant(database)
    bad = {"Authorization": "Bearer th_not_a_key_of_anyone"}
    before = refused("auth_failures")
    statuses: Counter[int] = Counter()
    started = time.monotonic()
    for i in range(30):
        answer = client.get("/v1/avatars", headers=bad if i % 2 else {})  # wrong key, or none
        statuses[answer.status_code] += 1
        if answer.status_code == 429:
            assert "client address" in answer.json()["detail"]
            assert_problem(answer, "rate_limited")
        else:
            assert answer.status_code == 401, answer.text
        # the same address with a valid key: never refused for the failures beside it
        assert client.get("/v1/avatars", headers=valid).status_code == 200
    elapsed = time.monotonic() - started
    assert statuses[401] + statuses[429] == 30
    assert 5 <= statuses[401] <= 5 + 0.2 * elapsed + 1, (statuses, elapsed)  # burst, then rate
    assert refused("auth_failures") - before == statuses[429] > 0
    # while the address is over, a key that failed before is refused without Redis work
    calls = script_calls(broker)
    assert all(client.get("/v1/keys", headers=bad).status_code == 429 for _ in range(5))
    assert script_calls(broker) == calls


def test_the_client_waits_out_a_rate_limit_on_reads_but_not_on_writes(
    make_client: AppFactory, database: str
) -> None:
    app = make_client(tenant_requests_per_second=1.0, tenant_burst=1)
    _, headers = new_tenant(database)
    with TalkingHeadClient("http://testserver") as client:
        app.headers.update(headers)
        client._http = app  # the real app, in process (TestClient is an httpx.Client)
        before = refused("rate_limit")
        started = time.monotonic()
        assert client.list_keys() and client.list_keys()  # the second one waited, then passed
        assert time.monotonic() - started >= 0.5
        assert refused("rate_limit") > before  # it was refused once on the way
        with pytest.raises(ApiError) as info:  # a write is never sent twice by the client
            client.create_key("x")
        assert (info.value.status, info.value.code) == (429, "rate_limited")


def test_a_tenant_without_a_rate_is_never_limited(make_client: AppFactory, database: str) -> None:
    client = make_client(tenant_requests_per_second=0.0, tenant_burst=1)
    _, headers = new_tenant(database)
    assert {client.get("/v1/keys", headers=headers).status_code for _ in range(10)} == {200}


def test_requests_pass_while_redis_is_down(
    make_client: AppFactory, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    errors = "th_rate_limiter_errors_total"
    with redis_server() as url:
        client = make_client(redis_url=url, tenant_requests_per_second=1.0, tenant_burst=1)
        limiter = client.app.state.rate_limiter  # type: ignore[attr-defined]
        limiter.fail_open_s = 3600.0  # the whole test runs inside one fail-open window
        _, limited = new_tenant(database)
        assert client.get("/v1/keys", headers=limited).status_code == 200
        assert_problem(client.get("/v1/keys", headers=limited), "rate_limited")
    _, headers = new_tenant(database)  # one that Redis, now stopped, would have let through
    before = REGISTRY.get_sample_value(errors) or 0.0
    with caplog.at_level(logging.WARNING, logger="services.api.ratelimit"):
        statuses = [client.get("/v1/keys", headers=headers).status_code for _ in range(5)]
    assert statuses == [200] * 5
    # Redis was asked once; the failure opened the window and the rest did not wait on it
    assert (REGISTRY.get_sample_value(errors) or 0.0) - before == 1
    warnings = [r for r in caplog.records if "cannot reach Redis" in r.getMessage()]
    assert len(warnings) == 1


# -- the queued-jobs quota ----------------------------------------------------------------------
def post_avatar(client: TestClient, headers: dict[str, str], **extra: str) -> httpx.Response:
    """A multipart avatar request with a file that passes the API's checks."""
    return client.post(
        "/v1/avatars",
        headers=headers,
        files={"video": ("me.mp4", FAKE_MP4, "video/mp4")},
        data={"consent": "true"},
        **extra,  # type: ignore[arg-type]
    )


def tenant_avatars(database: str, tenant_id: str) -> int:
    with session_scope(database) as s:
        query = select(func.count()).select_from(Avatar).where(Avatar.tenant_id == tenant_id)
        return s.scalar(query) or 0


def set_status(database: str, resource_id: str, status: str) -> None:
    """Move a job as a worker would."""
    with session_scope(database) as s:
        s.execute(
            update(Job)
            .where(Job.resource_id == resource_id)
            .values(status=status, stage=status, updated_at=utcnow())
        )


def test_submissions_past_the_queued_quota_get_429_until_the_queue_moves(
    make_client: AppFactory, database: str, tmp_path: Path
) -> None:
    client = make_client(quota_retry_after_s=7, tenant_requests_per_second=0.0)
    tenant_id, headers = new_tenant(database, {"max_queued_jobs": 2})
    _, other = new_tenant(database, {"max_queued_jobs": 2})
    first = post_avatar(client, {**headers, "Idempotency-Key": "first"})
    second = post_avatar(client, headers)
    assert (first.status_code, second.status_code) == (202, 202)
    objects = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    before = refused("queued_jobs")

    full = post_avatar(client, headers)
    assert assert_problem(full, "too_many_queued_jobs") == 7
    assert refused("queued_jobs") - before == 1
    assert tenant_avatars(database, tenant_id) == 2
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == objects  # nothing stored
    # a repeated request gets its resource, not a 429; another tenant has a queue of its own
    replay = post_avatar(client, {**headers, "Idempotency-Key": "first"})
    assert replay.status_code == 202 and replay.json()["id"] == first.json()["id"]
    assert post_avatar(client, other).status_code == 202

    # a job that starts leaves the queue: its place is free again
    set_status(database, first.json()["id"], "ingesting")
    third = post_avatar(client, headers)
    assert third.status_code == 202, third.text
    assert_problem(post_avatar(client, headers), "too_many_queued_jobs")
    # and so does a cancelled one
    assert client.delete(f"/v1/avatars/{second.json()['id']}", headers=headers).status_code == 204
    assert post_avatar(client, headers).status_code == 202
    assert tenant_avatars(database, tenant_id) == 4


def test_concurrent_submissions_cannot_overshoot_the_quota(
    make_client: AppFactory, database: str
) -> None:
    client = make_client(tenant_requests_per_second=0.0)
    tenant_id, headers = new_tenant(database, {"max_queued_jobs": 3})
    gate = threading.Barrier(8)
    statuses: list[int] = []

    def send() -> None:
        gate.wait()
        statuses.append(post_avatar(client, headers).status_code)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [202] * 3 + [429] * 5
    assert tenant_avatars(database, tenant_id) == 3


# -- the running-jobs limit, where jobs start ---------------------------------------------------
class SentTasks:
    """Stands in for the Celery app: records what a JobService sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any]]] = []

    def send_task(self, name: str, args: list[Any] | None = None, **_: Any) -> None:
        self.sent.append((name, list(args or [])))


def queued_jobs(database: str, tenant_id: str, count: int) -> list[str]:
    """`count` queued avatar jobs of the tenant, oldest first."""
    ids = []
    with session_scope(database) as s:
        for _ in range(count):
            avatar = Avatar(
                tenant_id=tenant_id,
                renderer="meanframe",
                preset="cpu-quick",
                consent=True,
                consent_key_id="k",
                source_key="x",
            )
            s.add(avatar)
            s.flush()
            job = Job(tenant_id=tenant_id, kind="avatar", resource_id=avatar.id)
            s.add(job)
            s.flush()
            ids.append(job.id)
    return ids


def job_row(database: str, job_id: str) -> Job:
    with session_scope(database) as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


@pytest.fixture(params=["sqlite", "postgresql"])
def job_database(request: pytest.FixtureRequest, database: str, tmp_path: Path) -> str:
    """A migrated database of each engine (SQLite has no row locks: the quota must hold there)."""
    if request.param == "postgresql":
        return database
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    return url


def deferrals() -> float:
    return REGISTRY.get_sample_value("th_job_deferrals_total", {"kind": "avatar"}) or 0.0


def test_a_job_over_the_running_limit_waits_queued_until_a_slot_frees(
    job_database: str, tmp_path: Path
) -> None:
    database = job_database
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=database)
    celery = SentTasks()
    jobs = JobService(settings, celery)  # type: ignore[arg-type]
    tenant_id, _ = new_tenant(database, {"max_running_jobs": 1})
    other_id, _ = new_tenant(database, {"max_running_jobs": 1})
    first, second = queued_jobs(database, tenant_id, 2)
    (theirs,) = queued_jobs(database, other_id, 1)
    before = deferrals()

    running = jobs.claim(first, 0, "w1")
    assert running is not None and running.status != JobStatus.queued.value
    assert jobs.claim(second, 0, "w2") is None
    waiting = job_row(database, second)
    assert (waiting.status, waiting.stage) == ("queued", "waiting")  # the tenant sees why
    assert (waiting.lease_owner, waiting.attempts, waiting.version) == (None, 0, 1)
    assert waiting.enqueued_at is not None  # the reconciler's lost-message rule covers it
    assert jobs.claim(second, 0, "w2") is None  # put back again: nothing new to show
    assert job_row(database, second).version == 1
    assert deferrals() - before == 2
    assert jobs.claim(theirs, 0, "w3") is not None  # another tenant's slot is its own

    # the first job finishing sends the waiting one again, which now starts
    assert jobs.finish(first, JobStatus.failed.value, error=("test", "done with it"))
    assert (task_name_for(waiting), [second, 0]) in celery.sent
    started = jobs.claim(second, 0, "w2")
    assert started is not None and started.attempts == 1 and started.stage != "waiting"


def test_concurrent_starts_cannot_overshoot_the_running_limit(
    job_database: str, tmp_path: Path
) -> None:
    database = job_database
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=database)
    jobs = JobService(settings, SentTasks())  # type: ignore[arg-type]
    tenant_id, _ = new_tenant(database, {"max_running_jobs": 2})
    ids = queued_jobs(database, tenant_id, 6)
    gate = threading.Barrier(len(ids))
    claimed: list[bool] = []

    def start(job_id: str) -> None:
        gate.wait()
        claimed.append(jobs.claim(job_id, 0, f"w-{job_id}") is not None)

    threads = [threading.Thread(target=start, args=(job_id,)) for job_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == [False] * 4 + [True] * 2


# -- the operator's verb ------------------------------------------------------------------------
def test_the_cli_shows_sets_validates_and_clears_a_tenants_limits(database: str) -> None:
    runner = CliRunner()
    env = {"TH_DATABASE_URL": database, "TH_TENANT_BURST": "30"}
    with session_scope(database) as s:
        tenant, _ = create_tenant(s, f"cli-{uuid.uuid4().hex[:10]}")
        tenant_id, name = tenant.id, tenant.name

    def limits(*args: str) -> Any:
        result = runner.invoke(cli, ["admin", "tenant", "limits", *args, "--json"], env=env)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def stored() -> Any:
        with session_scope(database) as s:
            return s.scalar(select(Tenant.limits).where(Tenant.id == tenant_id))

    shown = limits(name)
    assert shown["overrides"] == {} and shown["limits"]["burst"] == 30 and stored() is None
    given = limits(
        tenant_id, "--max-queued-jobs", "5", "--requests-per-second", "2", "--burst", "10"
    )
    assert given["overrides"] == {"max_queued_jobs": 5, "requests_per_second": 2.0, "burst": 10}
    assert stored() == given["overrides"]
    settings = Settings(_env_file=None, database_url=database)
    in_force = resolve_limits(settings, stored())
    assert (in_force.max_queued_jobs, in_force.requests_per_second, in_force.burst) == (5, 2, 10)
    # one at a time: the others stay
    assert limits(name, "--unset", "burst")["overrides"] == {
        "max_queued_jobs": 5,
        "requests_per_second": 2.0,
    }

    for bad in (["--max-queued-jobs", "-1"], ["--requests-per-second=-0.5"], ["--burst", "0"]):
        result = runner.invoke(cli, ["admin", "tenant", "limits", name, *bad], env=env)
        assert result.exit_code == 2, result.output
        assert "Invalid value" in result.output and "not in the range" in result.output
    endless = ["--burst", "3", "--requests-per-second", "inf"]  # the burst is refused with it
    result = runner.invoke(cli, ["admin", "tenant", "limits", name, *endless], env=env)
    assert result.exit_code == 2 and "finite number" in result.output, result.output
    wrong = runner.invoke(cli, ["admin", "tenant", "limits", name, "--unset", "speed"], env=env)
    assert wrong.exit_code == 2 and "not a limit" in wrong.output
    assert stored() == {"max_queued_jobs": 5, "requests_per_second": 2.0}  # refused: unchanged

    cleared = limits(name, "--clear")
    assert cleared["overrides"] == {} and stored() is None
    assert cleared["limits"] == cleared["defaults"]
    missing = runner.invoke(cli, ["admin", "tenant", "limits", "no-such-tenant"], env=env)
    assert missing.exit_code == 1 and "tenant_not_found" in missing.output


def test_raising_the_running_limit_starts_waiting_jobs_at_once(
    database: str, broker: str, tmp_path: Path
) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=database)
    jobs = JobService(settings, SentTasks())  # type: ignore[arg-type]
    tenant_id, _ = new_tenant(database, {"max_running_jobs": 1})
    first, second = queued_jobs(database, tenant_id, 2)
    assert jobs.claim(first, 0, "w1") is not None
    assert jobs.claim(second, 0, "w2") is None
    queue = redis.Redis.from_url(broker)
    queue.delete("ingest")

    env = {"TH_DATABASE_URL": database, "TH_REDIS_URL": broker}
    args = ["admin", "tenant", "limits", tenant_id, "--max-running-jobs", "2", "--json"]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["jobs_started"] == 1
    assert queue.llen("ingest") == 1  # its message, for a worker to claim
    assert jobs.claim(second, 0, "w2") is not None
