"""Object keys of STORAGE=s3: stored names and derived files never share a key."""

from __future__ import annotations

from clustr_aio.domain.names import numbered
from clustr_aio.storage.s3.naming import ObjectKeys, taken_numbers


def test_files_and_derived_files_have_keys_of_their_own() -> None:
    keys = ObjectKeys("clustr/")
    assert keys.file("a.jpg") == "clustr/a.jpg"
    assert keys.derived("a.jpg", "320.webp") == "clustr/.derived/a.jpg/320.webp"
    assert keys.name_of("clustr/a.jpg") == "a.jpg"
    for other in ("clustr/.derived/a.jpg/320.webp", "clustr/.ready/x", "other/a.jpg", "clustr/"):
        assert keys.name_of(other) is None
    # Deleting a.jpg's derived files never reaches a.jpg.x's.
    assert not keys.derived("a.jpg.x", "1").startswith(keys.derived_prefix("a.jpg"))


def test_taken_numbers_reads_only_the_names_alternatives() -> None:
    desired = "photo.jpg"
    names = [numbered(desired, n) for n in (0, 1, 2, 10)] + [
        "photo-x.jpg", "photograph.jpg", "photo-1.png", "photo-01.jpg", "photo-3.jpg.jpg",
    ]  # fmt: skip
    assert taken_numbers(desired, names) == {0, 1, 2, 10}
    assert taken_numbers("README", ["README", "README-4", "README-4.txt"]) == {0, 4}
    assert ObjectKeys("").numbered_prefix("photo.jpg") == "photo"
    assert taken_numbers("a.b.jpg", ["a.b-7.jpg", "a-7.b.jpg"]) == {7}
