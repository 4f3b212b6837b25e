"""Schemathesis, from PyPI, fuzzes a real server from its own OpenAPI document: no 5xx, and no
response (status, content type, headers, body) that contradicts the document.

Every check is on; the phases are examples, coverage, fuzzing and stateful (uploads followed by
downloads through the link schemathesis infers). A fixed seed and a bounded number of examples
per operation keep the run repeatable and a few seconds long. The exceptions to
positive_data_acceptance are listed, with their reasons, in schemathesis.toml beside this file.

The tus routes (/api/tus/) are left out: a protocol exchange whose statuses (412 without
Tus-Resumable, 460, 423) the checks take for contract breaches, and a body type
(application/offset+octet-stream) schemathesis cannot generate. tests/http/test_tus.py and the
real tus clients of tests/tus/ cover them.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from clustr_aio.web.openapi import build_openapi
from clustr_aio.web.routes.tus import PREFIX as TUS_PREFIX
from tests.conftest import JPEG, stored_files, temp_files
from tests.http.live_server import AiohttpServer, start_live_server

CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")  # the venv's console script
MAX_EXAMPLES = 30
SEED = 20261126
TIMEOUT_SECONDS = 300.0  # a run takes about 10 s here; generous for a loaded CI machine


async def test_server_honours_its_openapi_document(
    aiohttp_server: AiohttpServer, upload_dir: Path, tmp_path: Path
) -> None:
    server = await start_live_server(aiohttp_server, upload_dir, fsync=False)
    (upload_dir / "beach.jpg").write_bytes(JPEG)  # GET /uploads/{filename}'s documented example
    command = [
        str(SCHEMATHESIS), "--no-color", "--config-file", str(CONFIG),
        "run", str(server.make_url("/openapi.json")),
        "--checks", "all",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--workers", "1",
        "--request-timeout", "30",
        "--exclude-path-regex", f"^{TUS_PREFIX}",
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=tmp_path,  # where it may leave caches
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), TIMEOUT_SECONDS)
    report = output.decode(errors="replace")
    assert process.returncode == 0, report

    # It did test every operation (but GET /openapi.json: schemathesis leaves the document it
    # reads out), with many cases, and no case failed.
    paths = build_openapi(server.app)["paths"]
    operations = sum(len(m) for path, m in paths.items() if not path.startswith(TUS_PREFIX))
    assert re.search(rf"^\s*Tested: {operations - 1}$", report, re.MULTILINE), report
    counts = re.search(r"^\s*(\d+) generated, (\d+) passed\s*$", report, re.MULTILINE)
    assert counts is not None, report
    assert int(counts[1]) == int(counts[2]) >= 10 * operations, report
    # Its valid uploads were stored; whatever else it sent left nothing half-received behind.
    assert len(stored_files(upload_dir)) > 1
    assert temp_files(upload_dir) == []
