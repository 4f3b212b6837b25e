"""Node for the JavaScript tus clients: ``npm ci`` (make test runs it) puts them in
tests/tus/js/node_modules from the committed package-lock.json."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

JS = Path(__file__).with_name("js")


def node() -> str:
    """The node binary; the test is skipped only where Node or the packages are missing
    (.ci/system-deps installs Node and `make test` runs npm ci; under CI a missing one fails)."""
    found = shutil.which("node")
    if found is None or not (JS / "node_modules" / "tus-js-client").is_dir():
        if os.environ.get("CI") == "true":
            raise AssertionError("CI must have node and tests/tus/js/node_modules (make test)")
        pytest.skip("node and `npm ci --prefix tests/tus/js` are needed (make test does both)")
    return found
