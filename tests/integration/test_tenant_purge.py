"""`admin tenant delete` on PostgreSQL, a real S3 server and Redis: nothing of the tenant is
left, another tenant keeps everything, and a rerun finishes a delete that crashed midway."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select, text
from typer.testing import CliRunner

from services.api.ratelimit import KEY_PREFIX
from services.cli import app
from services.tenant_purge import PurgeRefused, purge_tenant
from shared.config import Settings
from shared.db.models import ApiKey, Base, Job, Tenant, utcnow
from shared.db.session import engine_for, session_scope
from shared.jobs import JobService
from shared.queue import celery_app, configure_celery
from shared.storage import ObjectStore, build_store
from shared.tenants import operator_tenant_id
from tests.fixtures.seaweed import S3Server
from tests.fixtures.servers import redis_server
from tests.fixtures.tenant_data import (
    Seeder,
    TenantData,
    dump_rows,
    migrated_postgres,
    rows_mentioning,
    s3_settings,
)

runner = CliRunner()
CORPUS = "opted-in"


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """One migrated database for the module; each test empties it first."""
    with migrated_postgres() as url:
        yield url


@pytest.fixture(scope="module")
def private_redis() -> Iterator[str]:
    """A Redis of this module only, so the corpus rebuild it is sent reaches no worker."""
    with redis_server() as url:
        yield url


@pytest.fixture
def settings(
    pg_url: str, private_redis: str, s3_server: S3Server, tmp_path: Path
) -> Iterator[Settings]:
    """Settings on an empty database, a new bucket and the private Redis."""
    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine_for(pg_url).begin() as conn:
        conn.execute(text(f"TRUNCATE {names} CASCADE"))
    settings = s3_settings(pg_url, s3_server, data_dir=tmp_path, redis_url=private_redis)
    broker = celery_app.conf.broker_url
    configure_celery(settings)
    yield settings
    # the app is process-wide: give the next test the broker it had
    configure_celery(
        settings.model_copy(update={"redis_url": "" if broker == "memory://" else broker})
    )


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    """The settings' bucket."""
    return build_store(settings)


@pytest.fixture
def kv(private_redis: str) -> Iterator[redis.Redis]:
    """A client of the private Redis, emptied first."""
    client = redis.Redis.from_url(private_redis)
    client.flushall()
    yield client
    client.close()


def populate(seed: Seeder, kv: redis.Redis, name: str) -> TenantData:
    """A tenant with an opted-in avatar in a corpus, renders (one running), uploads, Redis keys."""
    data = seed.tenant(f"{name}-{uuid.uuid4().hex[:8]}")
    avatar = seed.avatar(data, opt_in=True)
    seed.corpus_clip(data, CORPUS, avatar)
    audio = seed.upload(data, "audio", consumed=True)
    seed.render(data, avatar, audio_key=seed.upload_key(data, audio))
    seed.render(data, avatar, status="rendering")
    seed.upload(data, "video")
    second = seed.avatar(data)
    seed.render(data, second, status="failed")
    kv.set(KEY_PREFIX + data.tenant_id, "5")
    kv.set(f"th:usage:{data.tenant_id}:2025-01", "12")
    return data


def bucket_keys(store: ObjectStore, data: TenantData) -> set[str]:
    """Keys in the bucket that are the tenant's or name one of its ids."""
    return {k for k in store.list("") if k in data.objects or any(i in k for i in data.ids)}


def redis_keys(kv: redis.Redis, data: TenantData) -> set[bytes]:
    return set(kv.scan_iter(match=f"*{data.tenant_id}*"))


def snapshot(settings: Settings, store: ObjectStore, kv: redis.Redis, data: TenantData) -> object:
    """Everything of a tenant, to compare before and after another tenant's delete."""
    return (
        sorted(rows_mentioning(settings.database_url, data.ids)),
        {k: store.get_bytes(k) for k in bucket_keys(store, data)},
        redis_keys(kv, data),
    )


def assert_nothing_left(
    settings: Settings, store: ObjectStore, kv: redis.Redis, data: TenantData
) -> None:
    """No row holds any id of the tenant, no object is its, no Redis key names it."""
    assert rows_mentioning(settings.database_url, data.ids) == []
    assert bucket_keys(store, data) == set()
    assert not store.list(f"tenants/{data.tenant_id}/")
    assert redis_keys(kv, data) == set()


def test_delete_removes_every_row_object_and_key_of_the_tenant_only(
    settings: Settings, store: ObjectStore, kv: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = Seeder(settings, store, utcnow())
    doomed = populate(seed, kv, "acme")
    kept = populate(seed, kv, "globex")
    assert set(doomed.objects) <= set(store.list(""))
    assert len(rows_mentioning(settings.database_url, doomed.ids)) > 15
    before = snapshot(settings, store, kv, kept)
    tables = set(dump_rows(settings.database_url))

    for name in list(os.environ):
        if name.startswith("TH_"):
            monkeypatch.delenv(name)  # only the settings below reach the command
    env = {
        "TH_DATABASE_URL": settings.database_url,
        "TH_REDIS_URL": settings.redis_url,
        "TH_STORAGE_BACKEND": "s3",
        "TH_S3_ENDPOINT_URL": str(settings.s3_endpoint_url),
        "TH_S3_BUCKET": settings.s3_bucket,
        "TH_S3_ACCESS_KEY": str(settings.s3_access_key),
        "TH_S3_SECRET_KEY": str(settings.s3_secret_key),
    }
    with session_scope(settings.database_url) as s:
        name = s.scalars(select(Tenant.name).where(Tenant.id == doomed.tenant_id)).one()
    argv = ["admin", "tenant", "delete", name, "--yes", "--grace-s", "0", "--json"]
    result = runner.invoke(app, argv, env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)

    assert_nothing_left(settings, store, kv, doomed)
    assert snapshot(settings, store, kv, kept) == before
    assert set(dump_rows(settings.database_url)) == tables  # every table was searched
    assert report["jobs_cancelled"] == 1
    assert report["objects_removed"] == len(doomed.objects) - 1  # the clip went with its identity
    assert report["corpus_identities_removed"] == 1
    assert report["redis_keys_removed"] == 2
    rows = report["rows_removed"]
    assert rows["tenants"] == 1 and rows["api_keys"] == 1 and rows["corpus_clips"] == 1
    assert rows["avatars"] == 2 and rows["renders"] == 3 and rows["uploads"] == 2
    with session_scope(settings.database_url) as s:
        corpus_job = s.scalars(select(Job).where(Job.kind == "corpus")).one()
        assert corpus_job.status == "queued"  # its shards are rebuilt without the identity

    assert report["tenant_id"] == doomed.tenant_id and report["name"] == name

    # the tenant is gone: a rerun, by name or by id, finds nothing and says so
    for ref in (name, doomed.tenant_id):
        again = runner.invoke(app, ["admin", "tenant", "delete", ref, "--yes"], env=env)
        assert again.exit_code == 1, again.output
        assert "tenant_not_found" in again.output


def test_a_rerun_finishes_a_delete_that_crashed_midway(
    settings: Settings, store: ObjectStore, kv: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = Seeder(settings, store, utcnow())
    doomed = populate(seed, kv, "acme")
    kept = populate(seed, kv, "globex")
    before = snapshot(settings, store, kv, kept)
    jobs = JobService(settings, celery_app)
    waits: list[float] = []

    def purge() -> object:
        return purge_tenant(
            settings,
            doomed.tenant_id,
            store=store,
            jobs=jobs,
            redis=kv,
            grace_s=3.0,
            sleep=waits.append,
        )

    real_delete_prefix = store.delete_prefix

    def crash_after_first(prefix: str) -> int:
        if prefix != f"tenants/{doomed.tenant_id}/":
            raise ConnectionError("the store went away")
        return real_delete_prefix(prefix)

    monkeypatch.setattr(store, "delete_prefix", crash_after_first)
    with pytest.raises(ConnectionError):
        purge()
    monkeypatch.undo()

    # crashed midway: locked out, work cancelled, some objects gone, every row still there
    assert waits == [3.0]  # running tasks were given time to stop before objects went
    with session_scope(settings.database_url) as s:
        assert s.get(Tenant, doomed.tenant_id) is not None
        keys = s.scalars(select(ApiKey).where(ApiKey.tenant_id == doomed.tenant_id)).all()
        assert keys and all(k.revoked_at is not None for k in keys)
        live = s.scalars(
            select(Job).where(Job.tenant_id == doomed.tenant_id, Job.status == "rendering")
        ).all()
        assert live == []
    left = bucket_keys(store, doomed)
    assert left and left < set(doomed.objects)

    report = purge()
    assert report.name is not None and report.rows_removed["tenants"] == 1
    assert report.objects_removed == len(left)
    assert report.jobs_cancelled == 0 and waits == [3.0]
    assert_nothing_left(settings, store, kv, doomed)
    assert snapshot(settings, store, kv, kept) == before

    # a task that still wrote after the rows were gone: a rerun by id sweeps it up
    stray = f"tenants/{doomed.tenant_id}/renders/rn_late/video.mp4"
    store.put_bytes(stray, b"late")
    late = purge()
    assert (late.name, late.objects_removed) == (None, 1)
    assert not late.rows_removed
    assert_nothing_left(settings, store, kv, doomed)
    assert snapshot(settings, store, kv, kept) == before


def test_the_operator_tenant_is_refused(settings: Settings, store: ObjectStore) -> None:
    with session_scope(settings.database_url) as s:
        operator = operator_tenant_id(s)
    with pytest.raises(PurgeRefused) as refused:
        purge_tenant(
            settings,
            operator,
            store=store,
            jobs=JobService(settings, celery_app),
            redis=None,
            grace_s=0,
        )
    assert refused.value.code == "operator_tenant"
    with session_scope(settings.database_url) as s:
        assert s.get(Tenant, operator) is not None
