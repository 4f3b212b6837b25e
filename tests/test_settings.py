"""Tests of clustr_aio.settings: layering, each parser, sizes, base_url, docs metadata."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

from clustr_aio.settings import (
    DEFAULT_CONFIG_FILE,
    SETTINGS,
    Settings,
    SettingsError,
    load_settings,
    parse_size,
    settings_table_markdown,
)
from tests.conftest import REPO

KiB, MiB, GiB, TiB = 2**10, 2**20, 2**30, 2**40


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, so no stray .env is picked up by default."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def load(
    tmp_path: Path,
    *,
    toml: str = "",
    dotenv: str = "",
    environ: dict[str, str] | None = None,
    **overrides: object,
) -> Settings:
    """Load settings from exactly the given config.toml text, .env text and environment."""
    config_file = tmp_path / "conf" / "config.toml"
    config_file.parent.mkdir(exist_ok=True)
    config_file.write_text(toml)
    env_file = tmp_path / "dot.env"
    env_file.write_text(dotenv)
    return load_settings(
        environ=environ or {}, config_file=config_file, env_file=env_file, **overrides
    )


def load_error(
    tmp_path: Path, *, toml: str = "", dotenv: str = "", environ: dict[str, str] | None = None
) -> str:
    """The one-line message of the SettingsError that loading these sources raises."""
    with pytest.raises(SettingsError) as caught:
        load(tmp_path, toml=toml, dotenv=dotenv, environ=environ)
    message = str(caught.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------
# Defaults and layering


def test_defaults(tmp_path: Path) -> None:
    settings = load(tmp_path)
    assert settings.host == "127.0.0.1"
    assert settings.port == 5000
    assert settings.reload is False
    # Beside config.toml, as if it said UPLOAD_FOLDER = "uploads" (the shipped one does).
    assert settings.upload_folder == tmp_path / "conf" / "uploads"
    assert settings.allowed_extensions == {"png", "jpg", "jpeg", "webp"}
    assert settings.upload_url_path == "/uploads"
    assert settings.public_base_url is None
    assert settings.max_file_size == 50 * MiB
    assert settings.max_request_size == 10 * GiB
    assert settings.max_files == 10000
    assert settings.fsync is True
    assert settings.cors_origins == ("*",)
    assert settings.log_level == "INFO"
    assert settings.access_log is True
    assert settings.database_url is None
    assert settings.dedupe == "off"
    assert settings.base_url == "http://127.0.0.1:5000"
    assert settings == Settings(upload_folder=tmp_path / "conf" / "uploads")


def test_settings_alone_reads_neither_files_nor_the_environment(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORT", "6010")
    (workdir / ".env").write_text("HOST=10.0.0.1\n")
    (workdir / "config.toml").write_text("MAX_FILES = 3\n")
    defaults = Settings()
    assert (defaults.port, defaults.host, defaults.max_files) == (5000, "127.0.0.1", 10000)
    assert defaults.upload_folder == workdir / "uploads"  # relative: to the working directory
    assert Settings(port=6011).port == 6011  # by attribute, as type checkers see it…
    assert Settings(PORT="6012").port == 6012  # …or by setting name
    with pytest.raises(SettingsError) as caught:
        Settings(port=0)
    assert str(caught.value) == "PORT: expected an integer from 1 to 65535, got 0"
    with pytest.raises(TypeError, match="prot"):
        Settings(prot=1)


def test_shipped_config_toml_equals_builtin_defaults(workdir: Path) -> None:
    shipped = REPO / "config.toml"
    from_file = load_settings(environ={}, config_file=shipped)
    assert from_file == Settings(upload_folder=REPO / "uploads")
    # The default config file, no .env in workdir: config.toml absent, then present.
    assert load_settings(environ={}) == Settings()
    (workdir / "config.toml").write_text(shipped.read_text())
    assert load_settings(environ={}) == Settings()


def test_default_config_file_is_config_toml_in_working_directory(workdir: Path) -> None:
    assert DEFAULT_CONFIG_FILE.name == "config.toml"
    assert not DEFAULT_CONFIG_FILE.is_absolute()  # found where the server starts, not the code
    (workdir / "config.toml").write_text('PORT = 6003\nUPLOAD_FOLDER = "store"\n')
    settings = load_settings(environ={})
    assert settings.port == 6003
    assert settings.upload_folder == workdir / "store"


def test_default_upload_folder_is_beside_a_named_config_file(workdir: Path, tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "config.toml").write_text("PORT = 6004\n")
    settings = load_settings(environ={"CONFIG_FILE": str(tmp_path / "etc" / "config.toml")})
    assert settings.port == 6004
    assert settings.upload_folder == tmp_path / "etc" / "uploads"
    # Named in the environment, relative to the working directory as ever.
    environ = {"CONFIG_FILE": str(tmp_path / "etc" / "config.toml"), "UPLOAD_FOLDER": "u"}
    assert load_settings(environ=environ).upload_folder == workdir / "u"


def test_shipped_config_toml_documents_every_setting() -> None:
    text = (REPO / "config.toml").read_text()
    for spec in SETTINGS:
        # Set, or commented out when the default is "unset"; each preceded by a comment line.
        assignment = f"# {spec.name} = " if spec.default == "" else f"{spec.name} = "
        match = re.search(rf"^# .+\n(?:# .+\n)*{re.escape(assignment)}", text, re.MULTILINE)
        assert match, f"{spec.name} is not documented in config.toml"


def test_precedence_toml_then_dotenv_then_environment(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        toml='PORT = 1111\nHOST = "10.0.0.1"\nLOG_LEVEL = "ERROR"\n',
        dotenv="PORT=2222\nHOST=10.0.0.2\n",
        environ={"PORT": "3333"},
    )
    assert settings.port == 3333  # environment beats .env and config.toml
    assert settings.host == "10.0.0.2"  # .env beats config.toml
    assert settings.log_level == "ERROR"  # config.toml beats the built-in default
    assert settings.max_files == 10000  # nobody set it


def test_overrides_beat_everything_and_skip_parsing(tmp_path: Path) -> None:
    settings = load(tmp_path, environ={"PORT": "not a port"}, port=0, fsync=False)
    assert settings.port == 0  # e.g. an ephemeral port for tests; overrides are not validated
    assert settings.fsync is False


def test_unknown_override_is_a_type_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="prot"):
        load(tmp_path, prot=1)


def test_dotenv_does_not_touch_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAX_FILES", raising=False)
    settings = load(tmp_path, dotenv="MAX_FILES=7\n")
    assert settings.max_files == 7
    assert "MAX_FILES" not in os.environ


def test_dotenv_syntax_quotes_export_and_valueless_lines(tmp_path: Path) -> None:
    settings = load(tmp_path, dotenv='export HOST="10.1.2.3"\nPORT\n# LOG_LEVEL=DEBUG\n')
    assert settings.host == "10.1.2.3"
    assert settings.port == 5000  # "PORT" without a value sets nothing
    assert settings.log_level == "INFO"


def test_unknown_environment_variables_are_ignored(tmp_path: Path) -> None:
    settings = load(tmp_path, environ={"PROT": "1", "port": "2", "PATH": "/bin"})
    assert settings.port == 5000


def test_missing_default_config_file_is_fine(workdir: Path) -> None:
    assert not (workdir / "config.toml").exists()
    assert load_settings(environ={"PORT": "6000"}) == Settings(port=6000)


def test_default_env_file_is_dotenv_in_working_directory(workdir: Path, tmp_path: Path) -> None:
    (workdir / ".env").write_text("PORT=6001\n")
    config_file = tmp_path / "empty.toml"
    config_file.write_text("")
    assert load_settings(environ={}, config_file=config_file).port == 6001


def test_missing_default_env_file_is_fine(workdir: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "empty.toml"
    config_file.write_text("")
    settings = load_settings(environ={}, config_file=config_file)
    assert settings == Settings(upload_folder=tmp_path / "uploads")


def test_env_file_and_config_file_from_environment(workdir: Path, tmp_path: Path) -> None:
    (workdir / ".env").write_text("PORT=6001\n")  # must be ignored: ENV_FILE names another
    (tmp_path / "prod.env").write_text("PORT=6002\n")
    (tmp_path / "prod.toml").write_text('HOST = "10.9.9.9"\n')
    environ = {"ENV_FILE": str(tmp_path / "prod.env"), "CONFIG_FILE": str(tmp_path / "prod.toml")}
    settings = load_settings(environ=environ)
    assert settings.port == 6002
    assert settings.host == "10.9.9.9"


@pytest.mark.parametrize("variable", ["CONFIG_FILE", "ENV_FILE"])
def test_missing_named_file_is_an_error(workdir: Path, variable: str) -> None:
    missing = workdir / "nope"
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={variable: str(missing)})
    assert str(caught.value) == f"{variable}: {missing} does not exist"


@pytest.mark.parametrize("variable", ["CONFIG_FILE", "ENV_FILE"])
def test_named_file_that_is_a_directory_is_an_error(workdir: Path, variable: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={variable: str(workdir)})
    assert str(caught.value) == f"{variable}: {workdir} is a directory"


def test_env_file_may_be_dev_null(workdir: Path) -> None:
    assert load_settings(environ={"ENV_FILE": os.devnull}) == Settings()


def test_missing_config_file_argument_is_an_error(workdir: Path) -> None:
    with pytest.raises(SettingsError, match=r"^CONFIG_FILE: .*nope\.toml does not exist$"):
        load_settings(environ={}, config_file=workdir / "nope.toml")


def test_config_file_that_is_not_toml(tmp_path: Path) -> None:
    message = load_error(tmp_path, toml="PORT = \n")
    assert message.startswith("CONFIG_FILE: ")
    assert "config.toml is not valid TOML" in message


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("PROT = 5000\n", "PROT: unknown setting in {path} (did you mean PORT?)"),
        ("port = 5000\n", "port: unknown setting in {path} (did you mean PORT?)"),
        # A table is no setting either (its name happens to be close to S3_SERVE).
        ("[server]\nPORT = 5000\n", "server: unknown setting in {path} (did you mean S3_SERVE?)"),
    ],
)
def test_unknown_config_key_is_named(tmp_path: Path, toml: str, expected: str) -> None:
    path = tmp_path / "conf" / "config.toml"
    assert load_error(tmp_path, toml=toml) == expected.format(path=path)


@pytest.mark.parametrize(
    ("dotenv", "expected"),
    [
        (
            "MAX_FILESIZE=1\n",
            "MAX_FILESIZE: unknown setting in {path} (did you mean MAX_FILE_SIZE?)",
        ),
        ("MAX_FILESIZE\n", "MAX_FILESIZE: unknown setting in {path} (did you mean MAX_FILE_SIZE?)"),
        (
            "MAX_FILESIZE=\n",
            "MAX_FILESIZE: unknown setting in {path} (did you mean MAX_FILE_SIZE?)",
        ),
        ("port=5000\n", "port: unknown setting in {path} (did you mean PORT?)"),
        ("export PROT=1\n", "PROT: unknown setting in {path} (did you mean PORT?)"),
        ("NOT_A_SETTING=x\n", "NOT_A_SETTING: unknown setting in {path}"),
    ],
)
def test_unknown_dotenv_name_is_named(tmp_path: Path, dotenv: str, expected: str) -> None:
    path = tmp_path / "dot.env"
    assert load_error(tmp_path, dotenv="PORT=5001\n" + dotenv) == expected.format(path=path)


@pytest.mark.parametrize("name", ["CONFIG_FILE", "ENV_FILE"])
def test_file_names_are_read_from_the_environment_only(tmp_path: Path, name: str) -> None:
    dotenv = tmp_path / "dot.env"
    assert load_error(tmp_path, dotenv=f"{name}=/x\n") == (
        f"{name}: read from the environment only, not from {dotenv}"
    )
    toml = tmp_path / "conf" / "config.toml"
    assert load_error(tmp_path, toml=f'{name} = "/x"\n') == (
        f"{name}: read from the environment only, not from {toml}"
    )


def test_error_names_setting_value_and_source(tmp_path: Path) -> None:
    expected = "PORT: expected an integer from 1 to 65535, got 'abc'"
    environment = load_error(tmp_path, environ={"PORT": "abc"})
    assert environment == f"{expected} (from environment)"
    dotenv = load_error(tmp_path, dotenv="PORT=abc\n")
    assert dotenv == f"{expected} (from {tmp_path / 'dot.env'})"
    toml = load_error(tmp_path, toml='PORT = "abc"\n')
    assert toml == f"{expected} (from {tmp_path / 'conf' / 'config.toml'})"


def test_only_the_winning_value_is_parsed(tmp_path: Path) -> None:
    assert load(tmp_path, toml='PORT = "abc"\n', environ={"PORT": "80"}).port == 80


# ---------------------------------------------------------------------------------------------
# Bad values: every setting, from the environment (text) and from TOML (native types)

BAD_TEXT: list[tuple[str, str]] = [
    ("HOST", ""),
    ("HOST", "http://example.com"),
    ("HOST", "exa mple.com"),
    ("HOST", "300.1.1.1"),
    ("HOST", "-leading-dash.example"),
    ("PORT", "abc"),
    ("PORT", ""),
    ("PORT", "0"),
    ("PORT", "65536"),
    ("PORT", "-1"),
    ("PORT", "80.0"),
    ("RELOAD", "maybe"),
    ("RELOAD", ""),
    ("RELOAD", "2"),
    ("WORKERS", "0"),
    ("WORKERS", "65"),
    ("WORKERS", "two"),
    ("SHUTDOWN_TIMEOUT", "-1"),
    ("SHUTDOWN_TIMEOUT", "30s"),
    ("SHUTDOWN_TIMEOUT", ""),
    ("SHUTDOWN_TIMEOUT", "inf"),
    ("REQUEST_HEADER_TIMEOUT", "10s"),
    ("BODY_IDLE_TIMEOUT", "-30"),
    ("MIN_BODY_RATE", "fast"),
    ("MIN_BODY_RATE", "-1KiB"),
    ("SEND_TIMEOUT", "a minute"),
    ("KEEPALIVE_TIMEOUT", "forever"),
    ("MAX_CONNECTIONS", "0"),
    ("MAX_CONCURRENT_UPLOADS", "many"),
    ("UPLOAD_FOLDER", ""),
    ("UPLOAD_FOLDER", "   "),
    ("ALLOWED_EXTENSIONS", ""),
    ("ALLOWED_EXTENSIONS", " , ."),
    ("ALLOWED_EXTENSIONS", "tar.gz"),
    ("ALLOWED_EXTENSIONS", "p ng"),
    ("ALLOWED_EXTENSIONS", "*"),
    ("UPLOAD_URL_PATH", "uploads"),
    ("UPLOAD_URL_PATH", "/"),
    ("UPLOAD_URL_PATH", "//"),
    ("UPLOAD_URL_PATH", ""),
    ("UPLOAD_URL_PATH", "/a//b"),
    ("UPLOAD_URL_PATH", "/a b"),
    ("UPLOAD_URL_PATH", "/uploads?x=1"),
    ("UPLOAD_URL_PATH", "/../etc"),
    ("PUBLIC_BASE_URL", "photos.example.com"),
    ("PUBLIC_BASE_URL", "ftp://photos.example.com"),
    ("PUBLIC_BASE_URL", "https://"),
    ("PUBLIC_BASE_URL", "https://user:pw@photos.example.com"),
    ("PUBLIC_BASE_URL", "https://photos.example.com/?a=1"),
    ("PUBLIC_BASE_URL", "https://photos.example.com/#top"),
    ("PUBLIC_BASE_URL", "https://photos.example.com:99999"),
    ("PUBLIC_BASE_URL", "https://photos.example.com:http"),
    ("PUBLIC_BASE_URL", "https://photos example.com"),
    ("FORWARDED_ALLOW_IPS", "proxy.example.com"),
    ("FORWARDED_ALLOW_IPS", "10.0.0.0/33"),
    ("FORWARDED_ALLOW_IPS", "*, 10.0.0.1"),
    ("MAX_FILE_SIZE", "abc"),
    ("MAX_FILE_SIZE", "0"),
    ("MAX_FILE_SIZE", "0.1"),
    ("MAX_FILE_SIZE", "-5MB"),
    ("MAX_FILE_SIZE", "5XB"),
    ("MAX_FILE_SIZE", ""),
    ("MAX_REQUEST_SIZE", "lots"),
    ("MAX_REQUEST_SIZE", "0GiB"),
    ("MAX_FILES", "0"),
    ("MAX_FILES", "many"),
    ("MAX_FILES", "1e3"),
    ("MIN_FREE_SPACE", "-1MiB"),
    ("MIN_FREE_SPACE", "plenty"),
    ("MIN_FREE_SPACE", ""),
    ("FSYNC", "sometimes"),
    ("CORS_ORIGINS", "example.com"),
    ("CORS_ORIGINS", "*, https://app.example.com"),
    ("CORS_ORIGINS", "https://app.example.com/path"),
    ("CORS_ORIGINS", "https://app.example.com?x"),
    ("CORS_ORIGINS", "https://:80"),
    ("LOG_LEVEL", "verbose"),
    ("LOG_LEVEL", ""),
    ("LOG_LEVEL", "warn"),
    ("LOG_FORMAT", "xml"),
    ("LOG_FORMAT", ""),
    ("ACCESS_LOG", "nope"),
    ("DATABASE_URL", "mysql://localhost/db"),
    ("DATABASE_URL", "sqlite://"),
    ("DATABASE_URL", "postgresql://host:port/db"),
    ("DEDUPE", "skip"),
    ("DEDUPE", ""),
    ("STORAGE", "nfs"),
    ("STORAGE", ""),
    ("S3_ENDPOINT_URL", "ftp://store"),
    ("S3_ENDPOINT_URL", "http://"),
    ("S3_BUCKET", "Not_A_Bucket"),
    ("S3_BUCKET", "ab"),
    ("S3_PREFIX", "/abs"),
    ("S3_PREFIX", "a//b"),
    ("S3_PREFIX", "../up"),
    ("S3_REGION", "EU West"),
    ("S3_ACCESS_KEY_ID", "AKIA EXAMPLE"),
    ("S3_SECRET_ACCESS_KEY", "pasted with a space"),
    ("S3_PART_SIZE", "1MiB"),
    ("S3_PART_SIZE", "6GiB"),
    ("S3_SERVE", "sendfile"),
    ("S3_ORPHAN_GRACE", "1d"),
    ("TUS_EXPIRY", "soon"),
    ("TUS_EXPIRY", "0"),
    ("TUS_EXPIRY", "1w"),
    ("MAX_IMAGE_PIXELS", "0"),
    ("MAX_IMAGE_PIXELS", "100MP"),
    ("STRIP_METADATA", "gps"),
    ("STRIP_METADATA", ""),
    ("THUMBNAIL_SIZES", ""),
    ("THUMBNAIL_SIZES", "0,256"),
    ("THUMBNAIL_SIZES", "256,5000"),
    ("THUMBNAIL_SIZES", "256px"),
    ("THUMBNAILS", "sometimes"),
    ("EVENT_LOOP", "trio"),
    ("AUTH", "on"),
    ("AUTH", ""),
    ("METRICS_ALLOW", "localhost"),
    ("RATE_LIMIT_REQUESTS", "600"),
    ("RATE_LIMIT_REQUESTS", "600/fortnight"),
    ("RATE_LIMIT_REQUESTS", "0/min"),
    ("RATE_LIMIT_REQUESTS", "1GiB/h"),
    ("RATE_LIMIT_UPLOAD_BYTES", "lots/h"),
    ("RATE_LIMIT_UPLOAD_BYTES", "20GiB"),
    ("PUBLIC_FILES", "sometimes"),
    ("SIGNED_URL_TTL", "0"),
    ("SIGNED_URL_TTL", "1h"),
]
UNECHOED: frozenset[str] = frozenset({"SECRET_KEY"})
"""Settings whose bad values are never repeated in the error (tests/auth/test_settings.py)."""


def test_bad_text_covers_every_setting() -> None:
    assert {name for name, _ in BAD_TEXT} == {spec.name for spec in SETTINGS} - UNECHOED


@pytest.mark.parametrize(("name", "raw"), BAD_TEXT)
def test_bad_environment_value_names_the_setting(tmp_path: Path, name: str, raw: str) -> None:
    message = load_error(tmp_path, environ={name: raw})
    assert message.startswith(f"{name}: ")
    if name == "S3_SECRET_ACCESS_KEY":
        assert raw not in message  # a secret is never echoed
    else:
        assert f"{raw!r}" in message
    assert message.endswith(" (from environment)")


BAD_TOML: list[tuple[str, str]] = [
    ("HOST", "HOST = 127"),
    ("PORT", "PORT = true"),
    ("PORT", "PORT = 5000.5"),
    ("PORT", "PORT = 0"),
    ("PORT", "PORT = [5000]"),
    ("RELOAD", "RELOAD = 1"),
    ("WORKERS", "WORKERS = 2.0"),
    ("WORKERS", 'WORKERS = "0"'),
    ("SHUTDOWN_TIMEOUT", "SHUTDOWN_TIMEOUT = -0.5"),
    ("SHUTDOWN_TIMEOUT", "SHUTDOWN_TIMEOUT = true"),
    ("SHUTDOWN_TIMEOUT", "SHUTDOWN_TIMEOUT = inf"),
    ("REQUEST_HEADER_TIMEOUT", "REQUEST_HEADER_TIMEOUT = true"),
    ("BODY_IDLE_TIMEOUT", "BODY_IDLE_TIMEOUT = -1"),
    ("MIN_BODY_RATE", "MIN_BODY_RATE = -1"),
    ("SEND_TIMEOUT", "SEND_TIMEOUT = true"),
    ("KEEPALIVE_TIMEOUT", 'KEEPALIVE_TIMEOUT = "75s"'),
    ("MAX_CONNECTIONS", "MAX_CONNECTIONS = 0"),
    ("MAX_CONCURRENT_UPLOADS", "MAX_CONCURRENT_UPLOADS = 1.5"),
    ("UPLOAD_FOLDER", "UPLOAD_FOLDER = false"),
    ("ALLOWED_EXTENSIONS", "ALLOWED_EXTENSIONS = []"),
    ("ALLOWED_EXTENSIONS", 'ALLOWED_EXTENSIONS = ["png", 1]'),
    ("ALLOWED_EXTENSIONS", 'ALLOWED_EXTENSIONS = ["png,jpg"]'),  # one item per array element
    ("UPLOAD_URL_PATH", 'UPLOAD_URL_PATH = ["/uploads"]'),
    ("PUBLIC_BASE_URL", "PUBLIC_BASE_URL = true"),
    ("FORWARDED_ALLOW_IPS", "FORWARDED_ALLOW_IPS = [127]"),
    ("MAX_FILE_SIZE", "MAX_FILE_SIZE = -1"),
    ("MAX_FILE_SIZE", "MAX_FILE_SIZE = 0"),
    ("MAX_FILE_SIZE", "MAX_FILE_SIZE = 1.5"),
    ("MAX_FILE_SIZE", "MAX_FILE_SIZE = true"),
    ("MAX_REQUEST_SIZE", "MAX_REQUEST_SIZE = {}"),
    ("MAX_FILES", 'MAX_FILES = "0"'),
    ("MAX_FILES", "MAX_FILES = false"),
    ("MIN_FREE_SPACE", "MIN_FREE_SPACE = -1"),
    ("MIN_FREE_SPACE", "MIN_FREE_SPACE = 1.5"),
    ("MIN_FREE_SPACE", "MIN_FREE_SPACE = true"),
    ("FSYNC", 'FSYNC = "perhaps"'),
    ("FSYNC", "FSYNC = 0"),
    ("CORS_ORIGINS", "CORS_ORIGINS = [1]"),
    ("CORS_ORIGINS", 'CORS_ORIGINS = ["*", "https://a.example.com"]'),
    ("LOG_LEVEL", "LOG_LEVEL = 10"),
    ("LOG_FORMAT", "LOG_FORMAT = true"),
    ("ACCESS_LOG", 'ACCESS_LOG = "loud"'),
    ("DATABASE_URL", "DATABASE_URL = 5"),
    ("DEDUPE", "DEDUPE = true"),
    ("STORAGE", "STORAGE = 3"),
    ("S3_ENDPOINT_URL", "S3_ENDPOINT_URL = 8333"),
    ("S3_BUCKET", "S3_BUCKET = true"),
    ("S3_PREFIX", "S3_PREFIX = []"),
    ("S3_REGION", "S3_REGION = 1"),
    ("S3_ACCESS_KEY_ID", "S3_ACCESS_KEY_ID = 12345"),
    ("S3_SECRET_ACCESS_KEY", "S3_SECRET_ACCESS_KEY = 12345"),
    ("S3_PART_SIZE", "S3_PART_SIZE = 1024"),
    ("S3_SERVE", "S3_SERVE = true"),
    ("S3_ORPHAN_GRACE", "S3_ORPHAN_GRACE = -1"),
    ("TUS_EXPIRY", "TUS_EXPIRY = true"),
    ("MAX_IMAGE_PIXELS", "MAX_IMAGE_PIXELS = 1.5"),
    ("STRIP_METADATA", "STRIP_METADATA = false"),
    ("THUMBNAIL_SIZES", "THUMBNAIL_SIZES = [256, true]"),
    ("THUMBNAIL_SIZES", "THUMBNAIL_SIZES = [0]"),
    ("THUMBNAIL_SIZES", "THUMBNAIL_SIZES = []"),
    ("THUMBNAILS", "THUMBNAILS = 1"),
    ("EVENT_LOOP", "EVENT_LOOP = true"),
    ("AUTH", "AUTH = true"),
    ("METRICS_ALLOW", "METRICS_ALLOW = [1]"),
    ("RATE_LIMIT_REQUESTS", "RATE_LIMIT_REQUESTS = 600"),
    ("RATE_LIMIT_UPLOAD_BYTES", "RATE_LIMIT_UPLOAD_BYTES = 1"),
    ("PUBLIC_FILES", 'PUBLIC_FILES = "no way"'),
    ("SIGNED_URL_TTL", "SIGNED_URL_TTL = 0.5"),
]


def test_bad_toml_covers_every_setting() -> None:
    assert {name for name, _ in BAD_TOML} == {spec.name for spec in SETTINGS} - UNECHOED


@pytest.mark.parametrize(("name", "line"), BAD_TOML)
def test_bad_toml_value_names_the_setting(tmp_path: Path, name: str, line: str) -> None:
    message = load_error(tmp_path, toml=line + "\n")
    assert message.startswith(f"{name}: expected ")
    shown = "'<the value, not shown>'" if name == "S3_SECRET_ACCESS_KEY" else None
    assert f"got {shown or repr(tomllib.loads(line)[name])} (from " in message
    assert message.endswith(f"(from {tmp_path / 'conf' / 'config.toml'})")


def test_size_errors_explain_themselves(tmp_path: Path) -> None:
    assert load_error(tmp_path, environ={"MAX_FILE_SIZE": "5XB"}).startswith(
        "MAX_FILE_SIZE: unknown size unit 'XB' in '5XB' (use B, kB,"
    )
    assert load_error(tmp_path, environ={"MAX_FILE_SIZE": "0"}) == (
        "MAX_FILE_SIZE: expected a size of at least 1 byte, got '0' (from environment)"
    )
    assert load_error(tmp_path, environ={"MAX_FILE_SIZE": "-5MB"}) == (
        "MAX_FILE_SIZE: expected a size that is not negative, got '-5MB' (from environment)"
    )


# ---------------------------------------------------------------------------------------------
# Good values, per setting


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        *[("true", True), ("TRUE", True), ("1", True), ("yes", True), ("On", True), (" on ", True)],
        *[("false", False), ("False", False), ("0", False), ("no", False), ("OFF", False)],
    ],
)
def test_booleans(tmp_path: Path, raw: str, expected: bool) -> None:
    settings = load(tmp_path, environ={"RELOAD": raw, "FSYNC": raw, "ACCESS_LOG": raw})
    assert (settings.reload, settings.fsync, settings.access_log) == (expected,) * 3


@pytest.mark.parametrize(
    ("source", "raw", "workers", "timeout"),
    [
        ("env", ("4", "2.5"), 4, 2.5),
        ("env", ("64", " 0 "), 64, 0.0),
        ("toml", ("3", "0.25"), 3, 0.25),
        ("toml", ("1", "45"), 1, 45.0),
    ],
)
def test_workers_and_shutdown_timeout(
    tmp_path: Path, source: str, raw: tuple[str, str], workers: int, timeout: float
) -> None:
    if source == "env":
        settings = load(tmp_path, environ={"WORKERS": raw[0], "SHUTDOWN_TIMEOUT": raw[1]})
    else:
        settings = load(tmp_path, toml=f"WORKERS = {raw[0]}\nSHUTDOWN_TIMEOUT = {raw[1]}\n")
    assert (settings.workers, settings.shutdown_timeout) == (workers, timeout)


def test_native_toml_values(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        toml=(
            "PORT = 8080\nRELOAD = true\nFSYNC = false\nMAX_FILE_SIZE = 1000\n"
            'MAX_REQUEST_SIZE = "2 GB"\nMAX_FILES = 3\nALLOWED_EXTENSIONS = [".PNG", "Jpg"]\n'
            'CORS_ORIGINS = ["https://a.example.com", "http://localhost:3000"]\n'
        ),
    )
    assert settings.port == 8080
    assert settings.reload is True
    assert settings.fsync is False
    assert settings.max_file_size == 1000
    assert settings.max_request_size == 2_000_000_000
    assert settings.max_files == 3
    assert settings.allowed_extensions == {"png", "jpg"}
    assert settings.cors_origins == ("https://a.example.com", "http://localhost:3000")


def test_numbers_as_text_tolerate_spaces(tmp_path: Path) -> None:
    settings = load(tmp_path, environ={"PORT": " 8080 ", "MAX_FILES": "5\n"})
    assert (settings.port, settings.max_files) == (8080, 5)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("png", {"png"}),
        (" .PNG, jpg ,.Jpeg,,webp,", {"png", "jpg", "jpeg", "webp"}),
        ("..GIF", {"gif"}),
        ("png,PNG,.png", {"png"}),
        ("HEIC", {"heic"}),
        ("mp4,m4v", {"mp4", "m4v"}),
    ],
)
def test_allowed_extensions_are_normalised(tmp_path: Path, raw: str, expected: set[str]) -> None:
    settings = load(tmp_path, environ={"ALLOWED_EXTENSIONS": raw})
    assert settings.allowed_extensions == expected
    assert isinstance(settings.allowed_extensions, frozenset)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/uploads/", "/uploads"),
        ("/files", "/files"),
        ("/media/photos///", "/media/photos"),
        (" /static/u ", "/static/u"),
        ("/a-b_c.d~e", "/a-b_c.d~e"),
    ],
)
def test_upload_url_path_is_normalised(tmp_path: Path, raw: str, expected: str) -> None:
    assert load(tmp_path, environ={"UPLOAD_URL_PATH": raw}).upload_url_path == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://photos.example.com/", "https://photos.example.com"),
        ("https://photos.example.com", "https://photos.example.com"),
        ("http://example.com:8080/clustr/", "http://example.com:8080/clustr"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("HTTPS://Photos.Example.com", "HTTPS://Photos.Example.com"),
        ("", None),
    ],
)
def test_public_base_url(tmp_path: Path, raw: str, expected: str | None) -> None:
    assert load(tmp_path, environ={"PUBLIC_BASE_URL": raw}).public_base_url == expected


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://clustr:secret@db.example.com:5432/clustr",
        "postgres:///clustr?host=/run/postgresql",
        "sqlite:///var/lib/clustr/catalog.sqlite3",
    ],
)
def test_database_url(tmp_path: Path, raw: str) -> None:
    assert load(tmp_path, environ={"DATABASE_URL": raw}).database_url == raw


def test_a_bad_database_url_never_shows_its_password(tmp_path: Path) -> None:
    message = load_error(tmp_path, environ={"DATABASE_URL": "mysql://u:hunter2@db/x"})
    assert message.startswith("DATABASE_URL: expected ")
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("raw", "expected"), [("off", "off"), ("Reuse", "reuse"), ("REJECT", "reject")]
)
def test_dedupe(tmp_path: Path, raw: str, expected: str) -> None:
    assert load(tmp_path, environ={"DEDUPE": raw}).dedupe == expected


def test_empty_public_base_url_in_dotenv_unsets_the_config_file_value(tmp_path: Path) -> None:
    settings = load(
        tmp_path, toml='PUBLIC_BASE_URL = "https://x.example.com"\n', dotenv="PUBLIC_BASE_URL=\n"
    )
    assert settings.public_base_url is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("*", ("*",)),
        (" * ", ("*",)),
        ("", ()),
        ("https://App.Example.com/", ("https://app.example.com",)),
        (
            "https://a.example.com, http://localhost:3000,https://a.example.com",
            ("https://a.example.com", "http://localhost:3000"),
        ),
        ("capacitor://localhost", ("capacitor://localhost",)),
        ("http://[::1]:3000", ("http://[::1]:3000",)),
    ],
)
def test_cors_origins(tmp_path: Path, raw: str, expected: tuple[str, ...]) -> None:
    assert load(tmp_path, environ={"CORS_ORIGINS": raw}).cors_origins == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0.0.0.0", "0.0.0.0"),
        ("::", "::"),
        ("[::1]", "::1"),
        ("localhost", "localhost"),
        ("photos.example.com.", "photos.example.com."),
        (" my_service ", "my_service"),
    ],
)
def test_host(tmp_path: Path, raw: str, expected: str) -> None:
    assert load(tmp_path, environ={"HOST": raw}).host == expected


@pytest.mark.parametrize("level", ["debug", "Info", "WARNING", "error", "critical"])
def test_log_level_is_upper_cased(tmp_path: Path, level: str) -> None:
    assert load(tmp_path, environ={"LOG_LEVEL": level}).log_level == level.upper()


def test_sizes_from_text(tmp_path: Path) -> None:
    settings = load(tmp_path, environ={"MAX_FILE_SIZE": "25MB", "MAX_REQUEST_SIZE": "1.5 gib"})
    assert settings.max_file_size == 25_000_000
    assert settings.max_request_size == 3 * GiB // 2


# ---------------------------------------------------------------------------------------------
# UPLOAD_FOLDER: relative to config.toml's directory there, to the working directory elsewhere


def test_relative_upload_folder_from_toml_is_relative_to_the_toml_file(
    tmp_path: Path, workdir: Path
) -> None:
    settings = load(tmp_path, toml='UPLOAD_FOLDER = "data/uploads"\n')
    assert settings.upload_folder == tmp_path / "conf" / "data" / "uploads"


def test_relative_upload_folder_from_dotenv_is_relative_to_the_working_directory(
    tmp_path: Path, workdir: Path
) -> None:
    # The .env file lives in tmp_path, the working directory is tmp_path/cwd: the latter counts.
    settings = load(tmp_path, dotenv="UPLOAD_FOLDER=data\n")
    assert settings.upload_folder == workdir / "data"


def test_relative_upload_folder_from_environment_is_relative_to_the_working_directory(
    tmp_path: Path, workdir: Path
) -> None:
    settings = load(tmp_path, environ={"UPLOAD_FOLDER": "./store"})
    assert settings.upload_folder == workdir / "store"
    assert settings.upload_folder.is_absolute()


def test_absolute_and_home_upload_folders(
    tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load(tmp_path, toml='UPLOAD_FOLDER = "/srv/photos"\n').upload_folder == Path(
        "/srv/photos"
    )
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    settings = load(tmp_path, environ={"UPLOAD_FOLDER": "~/photos"})
    assert settings.upload_folder == tmp_path / "home" / "photos"


# ---------------------------------------------------------------------------------------------
# parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1", 1),
        ("52428800", 52_428_800),
        ("  42  ", 42),
        ("10B", 10),
        ("10 b", 10),
        ("1kB", 1000),
        ("1KB", 1000),
        ("1kb", 1000),
        ("25MB", 25_000_000),
        ("1.5GB", 1_500_000_000),
        ("2TB", 2 * 10**12),
        ("1KiB", KiB),
        ("1kib", KiB),
        ("50MiB", 50 * MiB),
        ("1GiB", GiB),
        ("1 GiB", GiB),
        ("3TiB", 3 * TiB),
        ("512k", 512 * KiB),
        ("512K", 512 * KiB),
        ("10m", 10 * MiB),
        ("2g", 2 * GiB),
        ("1t", TiB),
        ("1.5k", 1536),
        ("0.5MiB", MiB // 2),
        ("1.1KiB", 1126),  # 1126.4 rounds down
        ("1.9", 1),  # fractions of a byte round down
        ("007", 7),
        ("\t25 MB\n", 25_000_000),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected a size such as"),
        ("   ", "expected a size such as"),
        ("abc", "expected a size such as"),
        ("MB", "expected a size such as"),
        ("1..5MB", "expected a size such as"),
        ("1.MB", "expected a size such as"),
        (".5MB", "expected a size such as"),
        ("1e6", "expected a size such as"),
        ("12 34", "expected a size such as"),
        ("1 M B", "expected a size such as"),
        ("1,000", "expected a size such as"),
        ("1_000", "expected a size such as"),
        ("+5", "expected a size such as"),
        ("-1", "expected a size that is not negative"),
        (" -5MB", "expected a size that is not negative"),
        ("5XB", "unknown size unit 'XB'"),
        ("5 bytes", "unknown size unit 'bytes'"),
        ("5MBB", "unknown size unit 'MBB'"),
        ("5Mi", "unknown size unit 'Mi'"),
        ("٣MB", "expected a size such as"),  # non-ASCII digits
    ],
)
def test_parse_size_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_size(text)


# ---------------------------------------------------------------------------------------------
# base_url


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("127.0.0.1", 5000, "http://127.0.0.1:5000"),
        ("localhost", 8080, "http://localhost:8080"),
        ("photos.lan", 80, "http://photos.lan:80"),
        ("0.0.0.0", 5000, "http://127.0.0.1:5000"),  # a wildcard is not an address to browse to
        ("::", 5000, "http://[::1]:5000"),
        ("::1", 5000, "http://[::1]:5000"),
        ("2001:db8::7", 443, "http://[2001:db8::7]:443"),
        ("fe80::1%eth0", 5000, "http://[fe80::1%25eth0]:5000"),
        ("192.168.1.20", 5000, "http://192.168.1.20:5000"),
    ],
)
def test_base_url_from_host_and_port(host: str, port: int, expected: str) -> None:
    assert Settings(host=host, port=port).base_url == expected


def test_base_url_prefers_public_base_url(tmp_path: Path) -> None:
    settings = load(
        tmp_path, environ={"HOST": "0.0.0.0", "PUBLIC_BASE_URL": "https://photos.example.com/"}
    )
    assert settings.base_url == "https://photos.example.com"


def test_base_url_from_loaded_ipv6_host(tmp_path: Path) -> None:
    settings = load(tmp_path, environ={"HOST": "[::]", "PORT": "8000"})
    assert settings.base_url == "http://[::1]:8000"


# ---------------------------------------------------------------------------------------------
# Metadata and docs


def test_settings_metadata_matches_the_model() -> None:
    fields = list(Settings.FIELDS)
    assert [spec.attribute for spec in SETTINGS] == fields
    assert [spec.name for spec in SETTINGS] == [name.upper() for name in fields]
    assert all(spec.description and "\n" not in spec.description for spec in SETTINGS)


def test_each_default_as_user_text_gives_the_default(tmp_path: Path, workdir: Path) -> None:
    """The README shows the defaults as text: written so in the environment, each is the default."""
    everything = {spec.name: spec.default for spec in SETTINGS}
    assert load(tmp_path, environ=everything) == Settings()


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError, match="frozen"):
        settings.port = 1


def test_settings_table_markdown() -> None:
    lines = settings_table_markdown().splitlines()
    assert lines[0] == "| Setting | Default | Description |"
    assert lines[1] == "|---|---|---|"
    assert len(lines) == 2 + len(SETTINGS)
    for line, spec in zip(lines[2:], SETTINGS, strict=True):
        assert line.startswith(f"| `{spec.name}` | ")
    assert "| `PORT` | `5000` | TCP port" in lines[2 + [s.name for s in SETTINGS].index("PORT")]
    public = lines[2 + [s.name for s in SETTINGS].index("PUBLIC_BASE_URL")]
    assert public.startswith("| `PUBLIC_BASE_URL` | (unset) | ")
    cors = lines[2 + [s.name for s in SETTINGS].index("CORS_ORIGINS")]
    assert "\\*" in cors  # a literal asterisk, not the start of emphasis


def test_readme_documents_every_setting() -> None:
    readme = REPO / "README.md"
    if not readme.exists():
        pytest.skip("README.md does not exist yet; it is written separately")
    text = readme.read_text()
    missing = [spec.name for spec in SETTINGS if not re.search(rf"\b{spec.name}\b", text)]
    assert missing == [], f"README.md does not mention: {', '.join(missing)}"


def test_readme_settings_table_is_current() -> None:
    readme = REPO / "README.md"
    start, end = "<!-- settings-table:start -->\n", "<!-- settings-table:end -->"
    text = readme.read_text() if readme.exists() else ""
    if start not in text or end not in text:
        pytest.skip("README.md has no generated settings table (settings-table markers)")
    table = text.split(start, 1)[1].split(end, 1)[0]
    assert table == settings_table_markdown(), (
        "README.md's settings table is stale: replace it with "
        "clustr_aio.settings.settings_table_markdown()"
    )


# ---------------------------------------------------------------------------------------------
# STORAGE=s3


def test_s3_without_a_bucket_is_one_line_at_start_up(tmp_path: Path) -> None:
    assert load_error(tmp_path, environ={"STORAGE": "s3"}) == (
        "S3_BUCKET: required when STORAGE is s3"
    )
    assert "S3_SECRET_ACCESS_KEY" in load_error(
        tmp_path, environ={"STORAGE": "s3", "S3_BUCKET": "b-1", "S3_ACCESS_KEY_ID": "k"}
    )
    settings = load(tmp_path, environ={"STORAGE": "S3", "S3_BUCKET": "photos", "S3_PREFIX": "a/b"})
    assert (settings.storage, settings.s3_bucket, settings.s3_prefix) == ("s3", "photos", "a/b/")
    assert settings.s3_part_size == 16 * 1024 * 1024


def test_image_settings(tmp_path: Path) -> None:
    settings = load(tmp_path, toml="THUMBNAIL_SIZES = [1024, 256, 1024]\n")
    assert settings.thumbnail_sizes == (1024, 256)  # in order, the first is the default
    settings = load(
        tmp_path,
        environ={
            "THUMBNAIL_SIZES": " 128 , 64",
            "STRIP_METADATA": "ALL",
            "THUMBNAILS": "Eager",
            "MAX_IMAGE_PIXELS": "50000000",
        },
    )
    assert settings.thumbnail_sizes == (128, 64)
    assert (settings.strip_metadata, settings.thumbnails) == ("all", "eager")
    assert settings.max_image_pixels == 50_000_000
    assert Settings().thumbnail_sizes == (256, 1024)
    assert Settings().strip_metadata == "location"
