"""``python -m clustr_aio`` / ``clustr-aio``: load the settings and serve; ``clustr-aio keys
…`` manages API keys (:mod:`clustr_aio.auth.cli`)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from clustr_aio.observability.logs import configure_logging
from clustr_aio.runtime.server import StartupError, run
from clustr_aio.settings import Settings, SettingsError, load_settings

PACKAGE_DIR = Path(__file__).parent


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"clustr-aio: error: {error}", file=sys.stderr)
        return 2
    if sys.argv[1:2] == ["keys"]:
        from clustr_aio.auth.cli import keys_command

        return keys_command(sys.argv[2:], settings)
    _configure_logging(settings)
    if settings.reload:
        return _serve_with_reload()
    return _serve(settings)


def _serve(settings: Settings) -> int:
    try:
        return run(settings)
    except (StartupError, OSError) as error:  # the folder is not writable, the port is taken…
        print(f"clustr-aio: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl+C before the signal handlers were in place
        return 130


def _serve_with_reload() -> int:
    import watchfiles  # only needed in development

    logging.getLogger("clustr_aio").info("reloading on changes under %s", PACKAGE_DIR)
    # By dotted name: watchfiles starts the child with multiprocessing's "spawn", which cannot
    # find a function of the __main__ module that `python -m` ran.
    watchfiles.run_process(PACKAGE_DIR, target="clustr_aio.__main__.reloaded_child")
    return 0


def reloaded_child() -> None:
    """The server process that RELOAD=true restarts on every change."""
    settings = load_settings(reload=False, workers=1)  # the reloader restarts one process
    _configure_logging(settings)
    sys.exit(_serve(settings))


def _configure_logging(settings: Settings) -> None:
    # Workers inherit the supervisor's logging (and its stderr): their lines must tell them apart.
    configure_logging(
        level=settings.log_level, log_format=settings.log_format, with_pid=settings.workers > 1
    )


if __name__ == "__main__":
    sys.exit(main())
