"""Settings: defaults, derivations and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import SettingsError, load_settings


def test_defaults_derive_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TH_DATA_DIR", str(tmp_path))
    settings = load_settings()
    assert settings.database_url == f"sqlite:///{(tmp_path / 'talkinghead.db').resolve()}"
    assert settings.local_storage_dir == tmp_path / "objects"
    assert settings.public_base_url == "http://127.0.0.1:8000"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"TH_API_PORT": "notanumber"}, "TH_API_PORT"),
        ({"TH_API_PORT": "70000"}, "TH_API_PORT"),
        ({"TH_STORAGE_BACKEND": "ftp"}, "TH_STORAGE_BACKEND"),
        ({"TH_STORAGE_BACKEND": "s3"}, "TH_S3_ACCESS_KEY"),
        ({"TH_HEARTBEAT_INTERVAL_S": "10", "TH_HEARTBEAT_STALE_S": "5"}, "TH_HEARTBEAT_STALE_S"),
        ({"TH_LOG_LEVEL": "loud"}, "TH_LOG_LEVEL"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert needle in str(info.value)
