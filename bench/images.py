"""The image scenarios (issue 12): thumbnails rendered (T, T2), metadata stripped at upload (M),
cached thumbnails served (H).

- **Photos**: ``photos/0000.jpg`` … 12-megapixel (4000 x 3000) JPEGs with EXIF (camera, GPS),
  made once beside the other data (crops of one noisy canvas, as bench/data.py makes its JPEGs).
- **T, T2**: the 256-pixel WebP thumbnail of every photo, asked of a WORKERS=2 server eight at a
  time, its cache emptied before each measurement; the figure is **CPU milliseconds per image**:
  the server's (every process and thread), against a separate process rendering the same
  images the same way with plain pyvips (T; pyvips-binary ships libvips without its
  ``vipsthumbnail`` CLI, so ``pyvips.Image.thumbnail`` with the server's options stands in for
  it) or with Pillow (T2: ``Image.draft`` + ``thumbnail`` + WebP ``save``, method 2 ~ libvips'
  effort 2).
- **M**: the photos in one multipart request, ``STRIP_METADATA=location`` (the default) against
  ``none``: the price of filtering EXIF and XMP while streaming.
- **H**: ``wrk`` GETs of one cached thumbnail against nginx serving the same cached file.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

from PIL import Image

from bench.clients import BenchError, post_files
from bench.clustr import ClustrServer
from bench.data import canvas
from bench.proc import cpu_seconds

__all__ = ["PHOTO_COUNT", "ThumbnailRun", "ensure_photos", "reference_cpu_ms"]

PHOTO_COUNT: Final = int(os.environ.get("BENCH_PHOTOS", "200"))
PHOTO_WIDTH, PHOTO_HEIGHT = 4000, 3000
THUMBNAIL_SIZE: Final = 256
_MARGIN: Final = 200
_QUALITY: Final = 85
_VERSION: Final = 1
_CLIENTS: Final = 8
"""Requests in flight at once: enough for both workers' render threads, below the queue's 64."""


def ensure_photos(folder: Path) -> tuple[Path, ...]:
    """Make the photos that are missing in ``folder/photos``, then list them."""
    directory = folder / "photos"
    photos = tuple(directory / f"{i:04d}.jpg" for i in range(PHOTO_COUNT))
    stamp = directory / "manifest.json"
    try:
        current = json.loads(stamp.read_text()) == {"version": _VERSION, "count": PHOTO_COUNT}
    except (OSError, ValueError):
        current = False
    if current:
        return photos
    print(f"making {PHOTO_COUNT} 12-megapixel photos in {directory} (once) …", flush=True)
    directory.mkdir(parents=True, exist_ok=True)
    picture = canvas(PHOTO_WIDTH + _MARGIN, PHOTO_HEIGHT + _MARGIN)
    exif = _phone_exif()
    for i, path in enumerate(photos):
        x, y = (i * 37) % _MARGIN, (i * 53) % _MARGIN
        crop = picture.crop((x, y, x + PHOTO_WIDTH, y + PHOTO_HEIGHT))
        encoded = io.BytesIO()
        crop.save(encoded, "JPEG", quality=_QUALITY, exif=exif)
        path.write_bytes(encoded.getvalue())
    stamp.write_text(json.dumps({"version": _VERSION, "count": PHOTO_COUNT}))
    return photos


def _phone_exif() -> bytes:
    """EXIF as a phone writes it: camera, time, and where it was taken."""
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0110] = "Phone 12"  # Model
    exif[0x0132] = "2026:06:01 12:00:00"  # DateTime
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 0.0), 6: 35.0})
    data: bytes = exif.tobytes()
    return data


class ThumbnailRun:
    """Side A of T and T2: the photos uploaded once to ``server``, then their thumbnails asked
    for with its cache emptied first; the value is server CPU ms per image."""

    def __init__(self, server: ClustrServer, photos: Sequence[Path]) -> None:
        self.server = server
        self.photos = photos
        self._urls: list[str] = []

    def clear(self) -> None:
        """Before each measurement (outside its CPU and memory figures): the photos uploaded,
        the first time; the thumbnail cache emptied."""
        if not self._urls:
            post_files(self.server.base_url + "/api/upload", self.photos)
            names = {photo.name for photo in self.photos}
            for item in _items(self.server):
                if item["original_filename"] in names:
                    names.remove(item["original_filename"])
                    self._urls.append(f"{item['thumbnail_url']}?size={THUMBNAIL_SIZE}&format=webp")
                if not names:
                    break
        shutil.rmtree(self.server.upload_folder / ".thumbnails", ignore_errors=True)

    def measure(self, _tag: str) -> float:
        urls = self._urls
        processes = self.server.processes()
        before = cpu_seconds(processes)
        with ThreadPoolExecutor(_CLIENTS) as pool:
            sizes = list(pool.map(_get, urls))
        used = cpu_seconds(processes) - before
        if len(sizes) != len(self.photos) or not all(sizes):
            raise BenchError(f"{len(sizes)} thumbnails of {len(self.photos)} photos")
        return used / len(urls) * 1000


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=120) as response:
        if response.status != 200:
            raise BenchError(f"GET {url}: {response.status}")
        return len(response.read())


def _items(server: ClustrServer) -> Iterator[dict[str, str]]:
    """``server``'s catalog, newest first, page by page: the rounds before leave thousands of
    records (the attic takes their files, not their records)."""
    cursor = ""
    while True:
        url = f"{server.base_url}/api/files?limit=1000{cursor}"
        with urllib.request.urlopen(url, timeout=60) as answer:
            page = json.load(answer)
        yield from page["data"]
        if page["next_cursor"] is None:
            return
        cursor = f"&cursor={urllib.parse.quote(page['next_cursor'])}"


def thumbnail_url_path(server: ClustrServer, stored_name: str) -> str:
    """The path of the thumbnail of ``server``'s file ``stored_name``, rendered now."""
    item = next(i for i in _items(server) if i["stored_filename"] == stored_name)
    url = f"{item['thumbnail_url']}?size={THUMBNAIL_SIZE}&format=webp"
    _get(url)
    return url.removeprefix(server.base_url)


def cached_thumbnail(server: ClustrServer) -> Path:
    """The file of the thumbnail :func:`thumbnail_url_path` rendered."""
    [cached] = (server.upload_folder / ".thumbnails").glob(f"*/{THUMBNAIL_SIZE}-*.webp")
    return cached


# The references: one process each, the same images, sizes and encoder effort as the server.
_PYVIPS = """
import sys, pyvips
pyvips.cache_set_max(0)
pyvips.concurrency_set(1)  # as the server: one thread per render
out = sys.argv[1]
for n, path in enumerate(sys.argv[3:]):
    image = pyvips.Image.thumbnail(path, int(sys.argv[2]), height=int(sys.argv[2]), size="down")
    with open(f"{out}/{n}.webp", "wb") as f:
        f.write(image.webpsave_buffer(keep="none", Q=80, effort=2))
"""
_PILLOW = """
import sys
from PIL import Image
out, size = sys.argv[1], int(sys.argv[2])
for n, path in enumerate(sys.argv[3:]):
    with Image.open(path) as image:
        image.draft("RGB", (size, size))
        image.thumbnail((size, size))
        image.save(f"{out}/{n}.webp", "WEBP", quality=80, method=2)
"""
REFERENCES: Final = {"pyvips": _PYVIPS, "pillow": _PILLOW}


def reference_cpu_ms(kind: str, photos: Sequence[Path], out: Path) -> Callable[[str], float]:
    """Side B of T (``pyvips``) or T2 (``pillow``): CPU ms per image of a process rendering
    every photo's thumbnail, its interpreter's start-up included (a CLI's would be too)."""

    def measure(_tag: str) -> float:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(
            [sys.executable, "-c", REFERENCES[kind], str(out), str(THUMBNAIL_SIZE)]
            + [str(p) for p in photos],
            check=True,
            timeout=3600,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if len(list(out.iterdir())) != len(photos):
            raise BenchError(f"{kind}: not every thumbnail was written")
        return used / len(photos) * 1000

    return measure
