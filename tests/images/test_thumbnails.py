"""Thumbnails without HTTP (the route comes with the catalog's file ids): libvips renders them
upright, in sRGB, never upscaled, first frame only; the cache is atomic and single-flight,
also between two renderers sharing the folder as two workers do; a full queue is a 503; a
corrupt image is one render and then a cached 422."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageCms, ImageStat

from clustr_aio.domain.errors import ThumbnailsBusy, ThumbnailUnavailable
from clustr_aio.images.thumbnails import (
    FORMATS,
    RenderError,
    Thumbnail,
    Thumbnailer,
    ThumbnailFormat,
    _jpeg_shrink,
    _vips,
    render,
)
from clustr_aio.web.app import create_app
from clustr_aio.web.keys import THUMBNAILER
from tests.conftest import AiohttpClient, make_settings
from tests.http.helpers import eventually
from tests.images.photos import encode, exif_bytes, phone_photo, picture

WEBP = FORMATS["webp"]


class Counting:
    """A renderer that counts its calls and can be held until released."""

    def __init__(self, inner: Callable[[str, int, ThumbnailFormat], bytes] = render) -> None:
        self.inner = inner
        self.calls = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, source: str, size: int, fmt: ThumbnailFormat) -> bytes:
        with self.lock:
            self.calls += 1
        self.release.wait(30)
        return self.inner(source, size, fmt)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / ".thumbnails"


@pytest.fixture
async def counting() -> Counting:
    return Counting()


@pytest.fixture
async def thumbnailer(cache: Path, counting: Counting) -> AsyncIterator[Thumbnailer]:
    thumbnailer = Thumbnailer(cache, workers=2, queue_limit=4, renderer=counting)
    await thumbnailer.start()
    yield thumbnailer
    counting.release.set()
    await thumbnailer.close()


def image_file(path: Path, size: tuple[int, int]) -> Path:
    """A picture of ``size`` pixels, encoded by the file's extension."""
    path.write_bytes(encode(path.suffix[1:], picture(size)))
    return path


def opened(thumbnail: Thumbnail) -> Image.Image:
    return Image.open(io.BytesIO(thumbnail.path.read_bytes()))


async def get(
    thumbnailer: Thumbnailer, source: Path, size: int = 256, fmt: str = "webp"
) -> Thumbnail:
    return await thumbnailer.get(
        source, file_key="f1", content_hash="a" * 64, size=size, fmt=FORMATS[fmt]
    )


@pytest.mark.parametrize("fmt", ["webp", "jpeg", "avif"])
async def test_a_rotated_photo_becomes_an_upright_thumbnail_of_its_longest_side(
    thumbnailer: Thumbnailer, tmp_path: Path, fmt: str
) -> None:
    source = tmp_path / "p.jpg"
    source.write_bytes(phone_photo(tmp_path, "jpg", orientation=6, size=(640, 480)))
    thumbnail = await get(thumbnailer, source, 256, fmt)
    assert thumbnail.content_type == f"image/{fmt}"
    assert thumbnail.etag == f'"{Thumbnailer.identity("a" * 64, 256, FORMATS[fmt])}"'
    with opened(thumbnail) as image:
        assert image.size == (192, 256)  # 480 x 640 as displayed, longest side 256
        assert image.format == {"webp": "WEBP", "jpeg": "JPEG", "avif": "AVIF"}[fmt]
        assert not image.info.get("exif")  # no metadata: the orientation is applied


async def test_a_small_image_is_never_upscaled(thumbnailer: Thumbnailer, tmp_path: Path) -> None:
    source = image_file(tmp_path / "s.png", (40, 30))
    with opened(await get(thumbnailer, source, 1024)) as image:
        assert image.size == (40, 30)


async def test_an_animation_gives_its_first_frame(thumbnailer: Thumbnailer, tmp_path: Path) -> None:
    red, blue = Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))
    source = tmp_path / "a.webp"
    source.write_bytes(encode("webp", red, save_all=True, append_images=[blue], lossless=True))
    with opened(await get(thumbnailer, source, 32)) as image:
        assert image.size == (32, 32)
        assert getattr(image, "n_frames", 1) == 1
        assert image.convert("RGB").getpixel((16, 16)) == pytest.approx((255, 0, 0), abs=8)


async def test_colours_are_converted_to_srgb(thumbnailer: Thumbnailer, tmp_path: Path) -> None:
    """The embedded profile is converted from (to sRGB) and not carried over."""
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = tmp_path / "icc.jpg"
    source.write_bytes(encode("jpg", picture((100, 80)), icc_profile=profile))
    with opened(await get(thumbnailer, source, 50)) as image:
        assert image.mode == "RGB"
        assert "icc_profile" not in image.info


async def test_a_hundred_concurrent_requests_render_once(
    thumbnailer: Thumbnailer, counting: Counting, tmp_path: Path
) -> None:
    source = image_file(tmp_path / "p.jpg", (800, 600))
    counting.release.clear()
    waiting = [asyncio.ensure_future(get(thumbnailer, source)) for _ in range(100)]
    await asyncio.sleep(0.05)
    counting.release.set()
    thumbnails = await asyncio.gather(*waiting)
    assert counting.calls == 1
    assert len({t.path for t in thumbnails}) == 1
    assert len({t.etag for t in thumbnails}) == 1
    await get(thumbnailer, source)  # cached now
    assert counting.calls == 1


async def test_two_workers_sharing_the_cache_render_once(
    cache: Path, counting: Counting, tmp_path: Path
) -> None:
    source = image_file(tmp_path / "p.jpg", (800, 600))
    rendered: list[None] = []
    workers = [
        Thumbnailer(cache, renderer=counting, on_rendered=lambda: rendered.append(None))
        for _ in range(2)
    ]
    for worker in workers:
        await worker.start()
    try:
        counting.release.clear()
        waiting = [asyncio.ensure_future(get(w, source)) for w in workers for _ in range(10)]
        await asyncio.sleep(0.1)
        counting.release.set()
        assert len({t.path for t in await asyncio.gather(*waiting)}) == 1
    finally:
        for worker in workers:
            await worker.close()
    assert counting.calls == 1  # the second waited on the flock, then found the file
    assert len(rendered) == 1


async def test_a_full_queue_is_busy_with_retry_after(
    thumbnailer: Thumbnailer, counting: Counting, tmp_path: Path
) -> None:
    sources = [image_file(tmp_path / f"{n}.png", (50 + n, 40)) for n in range(6)]
    counting.release.clear()
    waiting = [
        asyncio.ensure_future(
            thumbnailer.get(source, file_key=f"f{n}", content_hash=str(n), size=32, fmt=WEBP)
        )
        for n, source in enumerate(sources[:4])  # queue_limit=4
    ]
    await asyncio.sleep(0.05)
    with pytest.raises(ThumbnailsBusy) as refused:
        await thumbnailer.get(sources[4], file_key="f4", content_hash="4", size=32, fmt=WEBP)
    assert refused.value.status == 503
    assert refused.value.retry_after == 1  # Retry-After: 1
    counting.release.set()
    await asyncio.gather(*waiting)
    await thumbnailer.get(sources[5], file_key="f5", content_hash="5", size=32, fmt=WEBP)


async def test_a_corrupt_image_is_one_render_then_a_cached_422(
    thumbnailer: Thumbnailer, counting: Counting, tmp_path: Path
) -> None:
    source = tmp_path / "corrupt.jpg"
    jpeg = encode("jpg", picture((300, 200)), exif=exif_bytes())
    source.write_bytes(jpeg[:600] + bytes(len(jpeg) - 600))  # whole structure, garbage data
    for _ in range(3):
        with pytest.raises(ThumbnailUnavailable) as failed:
            await get(thumbnailer, source)
        assert failed.value.status == 422
        assert str(tmp_path) not in failed.value.detail  # no server paths in the answer
    assert counting.calls == 1


async def test_remove_forgets_every_size_and_format(
    thumbnailer: Thumbnailer, cache: Path, tmp_path: Path
) -> None:
    source = image_file(tmp_path / "p.jpg", (300, 200))
    made = [await get(thumbnailer, source, size, fmt) for size in (64, 128) for fmt in FORMATS]
    assert all(t.path.exists() for t in made)
    kept = await thumbnailer.get(
        source, file_key="f2", content_hash="b" * 64, size=64, fmt=FORMATS["webp"]
    )
    await thumbnailer.remove(["f1", "f3"])  # f3 has none
    assert not (cache / "f1").exists()
    assert not any(t.path.exists() for t in made)
    assert kept.path.exists()


def test_render_errors_name_no_path(tmp_path: Path) -> None:
    source = tmp_path / "x.jpg"
    source.write_bytes(b"not an image at all")
    with pytest.raises(RenderError) as failed:
        render(str(source), 64, WEBP)
    assert str(source) not in str(failed.value)


async def test_the_server_counts_renders_in_metrics(
    aiohttp_client: AiohttpClient, upload_dir: Path, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(make_settings(upload_dir)))
    thumbnailer = client.app[THUMBNAILER]
    assert thumbnailer.cache_dir == upload_dir / ".thumbnails"
    source = image_file(tmp_path / "p.jpg", (800, 600))
    await asyncio.gather(*(get(thumbnailer, source) for _ in range(100)))
    metrics = await (await client.get("/metrics")).text()
    assert "\nclustr_thumbnails_rendered_total 1.0\n" in metrics


async def test_eager_renders_wait_behind_requests(
    cache: Path, counting: Counting, tmp_path: Path
) -> None:
    order: list[str] = []

    def recording(source: str, size: int, fmt: ThumbnailFormat) -> bytes:
        order.append(Path(source).stem)
        return counting(source, size, fmt)

    thumbnailer = Thumbnailer(cache, workers=1, renderer=recording)
    await thumbnailer.start()
    try:
        counting.release.clear()
        blocker = asyncio.ensure_future(
            thumbnailer.get(
                image_file(tmp_path / "first.png", (40, 30)),
                file_key="first",
                content_hash="0",
                size=32,
                fmt=WEBP,
            )
        )
        await asyncio.sleep(0.05)  # the one render thread is busy with it
        for n in range(3):
            source = image_file(tmp_path / f"eager{n}.png", (40, 30))
            thumbnailer.prefetch(source, file_key=f"e{n}", content_hash=str(n), size=32, fmt=WEBP)
        requested = image_file(tmp_path / "requested.png", (40, 30))
        request = asyncio.ensure_future(
            thumbnailer.get(requested, file_key="r", content_hash="r", size=32, fmt=WEBP)
        )
        moved = asyncio.ensure_future(  # an eager render a request now waits for moves up
            thumbnailer.get(
                tmp_path / "eager2.png", file_key="e2", content_hash="2", size=32, fmt=WEBP
            )
        )
        await asyncio.sleep(0.05)
        counting.release.set()
        await asyncio.gather(blocker, request, moved)
        await eventually(lambda: len(order) == 5)
    finally:
        await thumbnailer.close()
    assert order == ["first", "requested", "eager2", "eager0", "eager1"]
    assert counting.calls == 5  # eager2 once, though prefetched and then requested


@pytest.mark.parametrize(("size", "shrink"), [(256, 4), (512, 2), (1024, 1)])
def test_a_large_jpeg_is_decoded_at_a_reduced_scale_upright_and_alike(
    tmp_path: Path, size: int, shrink: int
) -> None:
    """A phone photo (EXIF orientation 6, an ICC profile) of 1600 x 1200 is decoded at 1/4 for
    256 pixels (400 left, 1.5x the size; libvips' thumbnail would take 1/2), 1/2 for 512:
    upright, sRGB, and the same picture as libvips' own thumbnail."""
    source = tmp_path / "big.jpg"
    source.write_bytes(phone_photo(tmp_path, "jpg", orientation=6, size=(1600, 1200)))
    pyvips = _vips()
    assert _jpeg_shrink(pyvips.Image.new_from_file(str(source)), size) == shrink
    ours = Image.open(io.BytesIO(render(str(source), size, FORMATS["jpeg"])))
    reference = pyvips.Image.thumbnail(
        str(source), size, height=size, size="down", export_profile="srgb"
    )
    theirs = Image.open(io.BytesIO(reference.jpegsave_buffer(keep="none", Q=82)))
    assert ours.size == theirs.size == (size * 3 // 4, size)  # 1200 x 1600 as displayed
    assert "icc_profile" not in ours.info
    difference = ImageChops.difference(ours.convert("RGB"), theirs.convert("RGB"))
    assert max(ImageStat.Stat(difference).mean) < 4  # out of 255: the same picture


def test_only_jpeg_has_its_scale_chosen_here(tmp_path: Path) -> None:
    source = image_file(tmp_path / "big.png", (1600, 1200))
    assert _jpeg_shrink(_vips().Image.new_from_file(str(source)), 256) == 1
