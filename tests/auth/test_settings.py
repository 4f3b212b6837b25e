"""The auth settings' own rules: SECRET_KEY is never echoed and is required for private files;
rates parse."""

from __future__ import annotations

from pathlib import Path

import pytest

from clustr_aio.settings import Settings, SettingsError, load_settings
from tests.conftest import REPO


def load(tmp_path: Path, **environ: str) -> Settings:
    env_file = tmp_path / "empty.env"
    env_file.touch()
    return load_settings(environ=environ, config_file=REPO / "config.toml", env_file=env_file)


def test_a_short_secret_is_refused_without_being_shown(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as raised:
        load(tmp_path, SECRET_KEY="x" * 40 + ",tooshort-secret-value")
    assert str(raised.value).startswith("SECRET_KEY: expected comma-separated secrets")
    assert "tooshort" not in str(raised.value)
    assert "xxxx" not in str(raised.value)


def test_private_files_need_a_secret(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as raised:
        load(tmp_path, PUBLIC_FILES="false")
    assert str(raised.value) == "SECRET_KEY: required when PUBLIC_FILES is false"
    settings = load(tmp_path, PUBLIC_FILES="false", SECRET_KEY=f"{'n' * 32}, {'o' * 32}")
    assert settings.secret_key == ("n" * 32, "o" * 32)
    assert "nnnn" not in repr(settings)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("600/min", (600, 60)), ("100/10s", (100, 10)), ("5/hour", (5, 3600)), ("1/d", (1, 86400))],
)
def test_request_rates(tmp_path: Path, raw: str, expected: tuple[int, int]) -> None:
    assert load(tmp_path, RATE_LIMIT_REQUESTS=raw).rate_limit_requests == expected


def test_byte_rates(tmp_path: Path) -> None:
    assert load(tmp_path, RATE_LIMIT_UPLOAD_BYTES="20GiB/h").rate_limit_upload_bytes == (
        20 * 2**30,
        3600,
    )
    assert load(tmp_path).rate_limit_upload_bytes is None
