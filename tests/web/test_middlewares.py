"""The parts of :mod:`clustr_aio.web.middlewares` that no HTTP exchange shows."""

from __future__ import annotations

import os
import re

from clustr_aio.web.middlewares import new_request_id


def test_forked_workers_make_their_own_request_ids() -> None:
    # WORKERS=N forks: a generator that came through the fork unchanged would give every
    # worker the same sequence of ids.
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next few ids, then out without any cleanup of the parent's
        os.write(write_end, " ".join(new_request_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write_end)
    ours = [new_request_id() for _ in range(3)]
    with os.fdopen(read_end) as pipe:
        theirs = pipe.read().split()
    os.waitpid(pid, 0)
    assert len(set(ours + theirs)) == 6
    assert all(re.fullmatch("[0-9a-f]{16}", rid) for rid in ours + theirs)
