"""Reading the layers (built-in defaults < config.toml < .env < environment < overrides) and
turning a validation error into the one line that names the setting and its origin."""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import dotenv

from clustr_aio.settings.fields import InvalidSetting, SettingsError
from clustr_aio.settings.model import BY_ATTRIBUTE, BY_NAME, SETTINGS, Settings
from clustr_aio.settings.values import resolve

__all__ = ["DEFAULT_CONFIG_FILE", "SettingsError", "load_settings"]

DEFAULT_CONFIG_FILE: Final = Path("config.toml")
"""Relative to the working directory, like ``.env``: never to the installed code."""


# --------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True, slots=True)
class _Layer:
    """The raw values of one configuration source, relative paths already anchored."""

    origin: str  # named in error messages: "environment" or the file's path
    values: Mapping[str, object]

    @classmethod
    def anchored(cls, origin: str, values: Mapping[str, object], base_dir: Path) -> _Layer:
        """A layer whose relative paths are relative to ``base_dir``, not the working directory."""

        def anchor(name: str, value: object) -> object:
            if BY_NAME[name].is_path and isinstance(value, str) and value.strip():
                return str(resolve(value.strip(), base_dir))
            return value  # not a path, or not one at all: the parser reports it as given

        return cls(origin, {name: anchor(name, value) for name, value in values.items()})


def _file_path(given: Path | None, environ: Mapping[str, str], variable: str) -> Path | None:
    """The explicitly named file (argument, else environment variable), or None for the default."""
    if given is not None:
        return Path(given).absolute()
    named = environ.get(variable)
    return Path(named).absolute() if named else None


def _check_named_file(path: Path, variable: str) -> None:
    if not path.exists():
        raise SettingsError(f"{variable}: {path} does not exist")
    if path.is_dir():
        raise SettingsError(f"{variable}: {path} is a directory")


def _check_names(names: Iterable[str], origin: str) -> None:
    """Everything in config.toml and .env is meant for this server (unlike the environment):
    a name that is not a setting is a typo, or a setting in the wrong place."""
    for name in names:
        if name in BY_NAME:
            continue
        if name in ("CONFIG_FILE", "ENV_FILE"):
            raise SettingsError(f"{name}: read from the environment only, not from {origin}")
        close = difflib.get_close_matches(name.upper(), BY_NAME, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise SettingsError(f"{name}: unknown setting in {origin}{hint}")


def _config_layer(config_file: Path | None, environ: Mapping[str, str]) -> tuple[_Layer, Path]:
    """config.toml's layer, and the directory its relative paths (and the defaults') start from."""
    named = _file_path(config_file, environ, "CONFIG_FILE")
    if named is not None:
        _check_named_file(named, "CONFIG_FILE")
    path = named or DEFAULT_CONFIG_FILE.absolute()  # a missing default file reads as empty
    try:
        with path.open("rb") as file:
            values = tomllib.load(file)
    except FileNotFoundError:
        values = {}
    except OSError as error:
        raise SettingsError(f"CONFIG_FILE: cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"CONFIG_FILE: {path} is not valid TOML: {error}") from None
    _check_names(values, str(path))
    return _Layer.anchored(str(path), values, path.parent), path.parent


def _env_file_layer(env_file: Path | None, environ: Mapping[str, str]) -> _Layer:
    named = _file_path(env_file, environ, "ENV_FILE")
    if named is not None:
        _check_named_file(named, "ENV_FILE")
    path = named or Path(".env").absolute()  # a missing default file reads as empty
    try:
        # Every name, a bare NAME line (value None) included: a misspelt one is an error too.
        lines = dotenv.dotenv_values(path, encoding="utf-8") if path.exists() else {}
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"ENV_FILE: cannot read {path}: {error}") from None
    _check_names(lines, str(path))
    # A bare NAME sets nothing. Relative paths in .env are relative to where the server was
    # started, as the parser takes them, so the layer needs no anchoring.
    return _Layer(str(path), {name: value for name, value in lines.items() if value is not None})


def _environment_layer(environ: Mapping[str, str]) -> _Layer:
    # The exact names only: the environment holds everybody's variables.
    return _Layer("environment", {name: environ[name] for name in BY_NAME if name in environ})


def load_settings(
    *,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    env_file: Path | None = None,
    **overrides: object,
) -> Settings:
    """Read and validate the settings: ``config.toml`` < ``.env`` < environment < ``overrides``.

    Args:
        environ: the environment to read (default ``os.environ``).
        config_file: the TOML file (default ``$CONFIG_FILE``, else config.toml in the working
            directory).
        env_file: the dotenv file (default ``$ENV_FILE``, else ``.env`` in the working directory).
        overrides: typed values by field name (``port=0``), used as given, without validation.

    Raises:
        SettingsError: a named file is missing or unreadable, a file names an unknown setting, or
            a value is malformed. Only the value that wins is parsed.
        TypeError: an override names no setting.
    """
    unknown = sorted(overrides.keys() - BY_ATTRIBUTE.keys())
    if unknown:
        raise TypeError(f"load_settings() got overrides for unknown settings: {', '.join(unknown)}")
    env = os.environ if environ is None else environ
    config, config_dir = _config_layer(config_file, env)
    defaults = {spec.name: spec.default for spec in SETTINGS}
    layers = (
        _Layer.anchored("built-in defaults", defaults, config_dir),  # as if config.toml had them
        config,
        _env_file_layer(env_file, env),
        _environment_layer(env),
    )
    values: dict[str, object] = {}
    origins: dict[str, str] = {}
    for layer in layers:
        values |= layer.values
        origins |= dict.fromkeys(layer.values, layer.origin)
    for attribute in overrides:
        del values[BY_ATTRIBUTE[attribute].name]  # set below as given, so never parsed
    try:
        settings = Settings(**values)
    except InvalidSetting as error:
        origin = origins.get(error.name) if error.name else None
        if origin is None:
            raise  # a check across settings: its message names the one to set
        raise SettingsError(f"{error} (from {origin})") from None
    return settings.replace(**overrides)
