"""Corpus sources and operator rules: listing, tags, opt-in of tenants' avatars, model refs."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.corpus.service import opted_in_avatars
from services.corpus.sources import SourceDefaults, SourceError, fetch, list_source
from services.models.service import parse_ref
from shared.config import Settings
from shared.storage import build_store
from talkinghead.sharedmodels.contract import SharedModelError
from tests.unit.conftest import Api, Media, video_form

DEFAULTS = SourceDefaults(language="de", licence="CC-BY 4.0")


def _settings(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data", redis_url="")  # type: ignore[call-arg]


def _tree(root: Path) -> None:
    for rel in ("anna/a1.mp4", "anna/a2.MOV", "ben/b1.mp4", "ben/notes.txt", "solo.mkv"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rel.encode())


def test_directory_source_tags_identities_by_folder(tmp_path: Path) -> None:
    _tree(tmp_path / "src")
    entries = list_source(str(tmp_path / "src"), _settings(tmp_path), DEFAULTS)
    tags = {Path(e.uri).name: (e.identity, e.language, e.licence) for e in entries}
    assert tags == {
        "a1.mp4": ("anna", "de", "CC-BY 4.0"),
        "a2.MOV": ("anna", "de", "CC-BY 4.0"),
        "b1.mp4": ("ben", "de", "CC-BY 4.0"),
        "solo.mkv": ("solo", "de", "CC-BY 4.0"),
    }
    assert all(e.uri.startswith("file:///") for e in entries)


def test_csv_source_overrides_tags_and_dedupes(tmp_path: Path) -> None:
    _tree(tmp_path / "src")
    csv_path = tmp_path / "src" / "list.csv"
    csv_path.write_text(
        "path,identity,speaker,language,licence\n"
        "anna/a1.mp4,p1,voice1,fr,CC0\n"
        "ben/b1.mp4,p2,,,\n"
        "anna/a1.mp4,p9,,,\n"
    )
    entries = list_source(str(csv_path), _settings(tmp_path), DEFAULTS)
    assert [(e.identity, e.speaker, e.language, e.licence) for e in entries] == [
        ("p1", "voice1", "fr", "CC0"),
        ("p2", "p2", "de", "CC-BY 4.0"),
    ]


def test_glob_and_errors(tmp_path: Path) -> None:
    _tree(tmp_path / "src")
    settings = _settings(tmp_path)
    found = list_source(str(tmp_path / "src" / "*" / "*.mp4"), settings, DEFAULTS)
    assert sorted(Path(e.uri).name for e in found) == ["a1.mp4", "b1.mp4"]
    for bad, words in [
        (str(tmp_path / "nope"), "no such"),
        (str(tmp_path / "src" / "*.avi"), "no video files"),
    ]:
        with pytest.raises(SourceError, match=words):
            list_source(bad, settings, DEFAULTS)
    no_header = tmp_path / "bad.csv"
    no_header.write_text("file,who\nx.mp4,a\n")
    with pytest.raises(SourceError, match="path"):
        list_source(str(no_header), settings, DEFAULTS)


def test_fetch_copies_and_hashes_from_disk_and_store(tmp_path: Path) -> None:
    import hashlib

    settings = _settings(tmp_path)
    src = tmp_path / "clip.mp4"
    src.write_bytes(b"x" * 3000)
    digest = hashlib.sha256(b"x" * 3000).hexdigest()
    assert fetch(src.as_uri(), tmp_path / "copy1", settings) == digest
    build_store(settings).put_bytes("incoming/clip.mp4", b"x" * 3000)
    assert fetch("store://incoming/clip.mp4", tmp_path / "copy2", settings) == digest
    assert (tmp_path / "copy2").read_bytes() == src.read_bytes()
    with pytest.raises(FileNotFoundError):
        fetch("store://incoming/missing.mp4", tmp_path / "copy3", settings)


def test_only_opted_in_avatars_join_a_corpus(api: Api, media: Media) -> None:
    made = {}
    for opt_in in ("true", "false", None):
        fields = {"corpus_opt_in": opt_in} if opt_in is not None else {}
        response = api.client.post(
            "/v1/avatars", headers=api.headers, **video_form(media, **fields)
        )
        assert response.status_code == 202, response.text
        assert response.json()["corpus_opt_in"] is (opt_in == "true")
        made[opt_in] = response.json()["id"]
    entries = opted_in_avatars(api.settings)
    assert [e.identity for e in entries] == [f"avatar-{made['true']}"]
    assert entries[0].licence == f"opted in by tenant {api.tenant_id}"
    local = Path(api.settings.data_dir) / "fetched.mp4"
    fetch(entries[0].uri, local, api.settings)
    assert local.read_bytes() == media.video
    bad = api.client.post(
        "/v1/avatars", headers=api.headers, **video_form(media, corpus_opt_in="perhaps")
    )
    assert bad.status_code == 422


def test_model_refs() -> None:
    assert parse_ref("audio2mouth") == ("audio2mouth", None)
    assert parse_ref("audio2mouth:3") == ("audio2mouth", 3)
    assert parse_ref("audio2mouth@12") == ("audio2mouth", 12)
    with pytest.raises(SharedModelError) as exc:
        parse_ref("audio2mouth:latest")
    assert exc.value.code == "invalid_model_ref"
