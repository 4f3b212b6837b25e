"""What the server does once before it serves (clustr_aio.runtime.server.prepare)."""

from __future__ import annotations

import os
from pathlib import Path

from clustr_aio.runtime.server import prepare
from clustr_aio.storage.local import INCOMING_DIR
from tests.conftest import JPEG, make_settings, stored_files


def test_prepare_rolls_back_what_a_dead_process_left_unsealed_before_any_worker_starts(
    upload_dir: Path,
) -> None:
    """With WORKERS=N, every worker opens the storage and one reconciles: the roll-back of a
    dead process's unsealed batch is done before that, once, by the supervisor."""
    dead = upload_dir / INCOMING_DIR / "dead-process"
    dead.mkdir(parents=True)
    (dead / ".lock").touch()  # nobody holds it
    (dead / "7.0").write_bytes(JPEG)
    os.link(dead / "7.0", upload_dir / "unanswered.jpg")  # a batch of one file, not sealed
    (upload_dir / "planted.jpg").write_bytes(JPEG)
    prepare(make_settings(upload_dir))
    assert stored_files(upload_dir) == ["planted.jpg"]
    assert not dead.exists()
