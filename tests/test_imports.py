"""Importing clustr_aio's modules does nothing but define things: no file is read or written
besides code, no directory made, no library table patched (issue: no import side effects)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PROBE = r"""
import importlib, json, os, pkgutil, sys
events = []
def hook(event, args):
    if event == "open":
        path, mode = str(args[0]), str(args[1] or "r")
        if not path.endswith((".py", ".pyc", ".so", ".pth")) and not os.path.isdir(path):
            events.append(("open", path, mode))
    elif event in ("os.mkdir", "os.rename", "os.remove", "os.link", "os.symlink"):
        events.append((event, str(args[0]), ""))
import aiohttp.web_fileresponse as fileresponse
types_before = dict(fileresponse.CONTENT_TYPES.types_map[True])
sys.addaudithook(hook)
import clustr_aio
names = [m.name for m in pkgutil.walk_packages(clustr_aio.__path__, "clustr_aio.")]
for name in names:
    importlib.import_module(name)
patched = dict(fileresponse.CONTENT_TYPES.types_map[True]) != types_before
print(json.dumps({"modules": names, "events": events, "patched": patched}))
"""


def run_fresh(code: str, directory: Path) -> str:
    """What ``code`` prints, run by a fresh interpreter in ``directory`` (no site settings)."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=directory,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"},
    )
    return result.stdout


def probe(directory: Path) -> dict[str, object]:
    report: dict[str, object] = json.loads(run_fresh(PROBE, directory))
    return report


def test_importing_every_module_touches_nothing(tmp_path: Path) -> None:
    report = probe(tmp_path)
    modules = report["modules"]
    assert isinstance(modules, list)
    assert "clustr_aio.web.routes.docs" in modules  # the probe really walked the package
    assert "clustr_aio.storage.local" in modules
    events = report["events"]
    assert isinstance(events, list)
    # Libraries may read package metadata (pydantic looks for plugins); nothing of ours is read.
    package = str(REPO / "clustr_aio") + "/"
    assert [event for event in events if event[1].startswith(package)] == []
    assert [event for event in events if event[0] != "open" or set(event[2]) & set("wax+")] == []
    assert report["patched"] is False
    assert list(tmp_path.iterdir()) == []  # no uploads/ or anything else made here


STARTUP_PROBE = r"""
import sys
from clustr_aio.__main__ import main  # everything `python -m clustr_aio` imports to serve
from clustr_aio.settings import load_settings
from clustr_aio.web.app import create_app
create_app(load_settings(environ={}))
print(",".join(sorted(m for m in sys.modules if m.split(".")[0] in ("pydantic", "pydantic_core"))))
"""


def test_a_serving_process_loads_pydantic_only_when_a_body_or_the_document_needs_it(
    tmp_path: Path,
) -> None:
    """pydantic and the models' validators are megabytes of every process (issue 16: peak RSS
    over 64 MiB); the settings need none of it, and a JSON body or /openapi.json imports it
    (tests/http/test_files.py and test_openapi.py check those still work)."""
    assert run_fresh(STARTUP_PROBE, tmp_path).strip() == ""
