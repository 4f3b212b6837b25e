"""The shared token buckets, without HTTP: refill, debt, separate identities, a table shared
by separate opens (as by separate worker processes), a full table, times from before a reboot."""

from __future__ import annotations

import os
from pathlib import Path

from clustr_aio.auth import ratelimit
from clustr_aio.auth.ratelimit import Rate, SharedBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_empties_then_refills_at_its_rate(tmp_path: Path) -> None:
    clock = Clock()
    buckets = SharedBuckets(tmp_path / "t", clock=clock)
    rate = Rate(3, 30)  # one token every 10 s
    decisions = [buckets.take("a", rate) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[3].retry_after == 10
    assert decisions[3].reset == 30
    clock.now += 10
    assert buckets.take("a", rate).allowed
    assert not buckets.take("a", rate).allowed
    assert buckets.take("b", rate).allowed  # another identity, another bucket
    clock.now += 1000
    assert buckets.take("a", rate).remaining == 2  # never more than full


def test_debt_is_taken_and_paid_back_before_anything_else(tmp_path: Path) -> None:
    clock = Clock()
    buckets = SharedBuckets(tmp_path / "t", clock=clock)
    rate = Rate(100, 100)  # one per second
    assert buckets.take("u", rate, 250, debt=True).allowed
    refused = buckets.take("u", rate, 1)
    assert not refused.allowed
    assert refused.retry_after == 151
    clock.now += 151
    assert buckets.take("u", rate, 1).allowed
    # More than a whole bucket: allowed once the bucket is full, as debt.
    clock.now += 1000
    assert buckets.take("big", rate, 1000).allowed


def test_two_opens_of_one_file_share_the_buckets(tmp_path: Path) -> None:
    clock = Clock()
    one = SharedBuckets(tmp_path / "t", clock=clock)
    two = SharedBuckets(tmp_path / "t", clock=clock)
    rate = Rate(4, 60)
    allowed = [b.take("k", rate).allowed for b in (one, two, one, two, one, two)]
    assert allowed == [True, True, True, True, False, False]
    one.close()
    two.close()


def test_times_from_before_a_reboot_are_full_buckets(tmp_path: Path) -> None:
    clock = Clock()
    before = SharedBuckets(tmp_path / "t", clock=clock)
    rate = Rate(1, 60)
    assert before.take("k", rate).allowed
    clock.now = 5.0  # the monotonic clock started again
    assert SharedBuckets(tmp_path / "t", clock=clock).take("k", rate).allowed


def test_a_file_of_another_layout_is_started_afresh(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_bytes(b"something else")
    buckets = SharedBuckets(path, clock=Clock())
    assert buckets.take("k", Rate(1, 60)).allowed
    assert os.path.getsize(path) > 1000


def test_a_full_neighbourhood_reuses_the_slot_unused_the_longest(
    tmp_path: Path, monkeypatch: object
) -> None:
    clock = Clock()
    buckets = SharedBuckets(tmp_path / "t", clock=clock)
    rate = Rate(1, 3600)
    # Far more identities than the table has slots: every take still answers, and a
    # recently limited identity stays limited while others come and go.
    assert buckets.take("hot", rate).allowed
    for n in range(ratelimit._SLOTS * 2):
        clock.now += 0.001
        buckets.take(f"cold-{n}", rate)
    clock.now += 0.001
    assert buckets.take("fresh", rate).allowed
