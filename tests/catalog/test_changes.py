"""The key changes' counter shared by the processes of a host: stable between changes, None
during one (in every process that has it open), a new number after each; a change whose
process was killed half-way is over for the next process that opens it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from clustr_aio.catalog.changes import ChangeCounter


def test_a_change_is_seen_by_every_opener_during_and_after(tmp_path: Path) -> None:
    path = tmp_path / "counter"
    mine, theirs = ChangeCounter(path), ChangeCounter(path)
    try:
        first = mine.stable()
        assert first is not None
        assert theirs.stable() == first
        with theirs.changing():
            assert mine.stable() is None
            assert theirs.stable() is None
        second = mine.stable()
        assert second is not None
        assert second != first
        assert theirs.stable() == second
        with mine.changing():
            pass
        assert theirs.stable() not in (None, first, second)
    finally:
        mine.close()
        theirs.close()


def test_a_change_killed_half_way_is_over_for_the_next_opener(tmp_path: Path) -> None:
    path = tmp_path / "counter"
    watching = ChangeCounter(path)
    before = watching.stable()
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from clustr_aio.catalog.changes import ChangeCounter
        with ChangeCounter(Path({str(path)!r})).changing():
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], check=False)
    assert killed.returncode == -9
    try:
        assert watching.stable() is None  # caching stopped: right, only slower
        ChangeCounter(path).close()  # the next process to open it (a worker, the CLI)
        after = watching.stable()
        assert after is not None
        assert after != before
    finally:
        watching.close()


def test_a_file_of_another_layout_starts_afresh_at_a_random_number(tmp_path: Path) -> None:
    path = tmp_path / "counter"
    path.write_bytes(b"something else entirely")
    first = ChangeCounter(path)
    other = tmp_path / "other"
    second = ChangeCounter(other)
    try:
        value = first.stable()
        assert value is not None
        assert value % 2 == 0
        assert value != second.stable()  # not a fixed start that a reset would repeat
        assert path.stat().st_size == 24
    finally:
        first.close()
        second.close()
