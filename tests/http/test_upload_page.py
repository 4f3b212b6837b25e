"""/upload in a real browser: Uppy's Dashboard (@uppy/core, @uppy/dashboard, @uppy/tus, the
bundle the package ships) in Debian's Chromium, driven by Playwright. Twenty photos dropped on
the page reach 100 % each, by tus, and are in the catalog; the page asks no other host for
anything."""

from __future__ import annotations

import base64
from pathlib import Path

from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser

from tests.conftest import stored_files
from tests.http.browser import browser, open_page, screenshot, server, skip_without_chromium
from tests.tus.media import png_bytes

__all__ = ["browser", "server"]  # fixtures

skip_without_chromium()

FILES = 20

DROP = """(files) => {
    const data = new DataTransfer()
    for (const [name, encoded] of files) {
        const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0))
        data.items.add(new File([bytes], name, { type: 'image/png' }))
    }
    return data
}"""


async def test_twenty_photos_dropped_on_uppy_are_stored(
    browser: Browser, server: TestServer, upload_dir: Path
) -> None:
    photos = {f"photo-{n:02d}.png": png_bytes(150_000 + n * 1000) for n in range(FILES)}
    page, traffic = await open_page(browser, server, "/upload")
    await page.locator(".uppy-Dashboard-inner").wait_for()

    dropped = [(name, base64.b64encode(data).decode()) for name, data in photos.items()]
    transfer = await page.evaluate_handle(DROP, dropped)
    target = page.locator(".uppy-Dashboard-inner")
    await target.dispatch_event("dragenter", {"dataTransfer": transfer})
    await target.dispatch_event("dragover", {"dataTransfer": transfer})
    await target.dispatch_event("drop", {"dataTransfer": transfer})
    # Functions, not expressions: the page's policy allows no eval.
    await page.wait_for_function(f"() => window.clustrUppy.getFiles().length === {FILES}")
    await screenshot(page, "upload-page-dropped.png")

    await page.locator(".uppy-StatusBar-actionBtn--upload").click()
    await page.wait_for_function(
        "() => window.clustrUppy.getFiles().every(f => f.progress.uploadComplete"
        " && f.progress.percentage === 100)"
    )
    await page.locator("#stored-list li").nth(FILES - 1).wait_for()
    await screenshot(page, "upload-page-done.png")

    assert stored_files(upload_dir) == sorted(photos)
    for name, data in photos.items():
        assert (upload_dir / name).read_bytes() == data
    async with ClientSession() as session:
        listing = await (await session.get(server.make_url("/api/files?limit=100"))).json()
    assert sorted(item["original_filename"] for item in listing["data"]) == sorted(photos)
    # Every file's catalog link came from the completing PATCH's Clustr-File-Url.
    records = await page.eval_on_selector_all(
        "#stored-list li", "items => items.map(i => i.dataset.record)"
    )
    assert all(r and "/api/files/" in r for r in records)
    traffic.assert_clean()
    assert traffic.blocked_elsewhere == []  # no CDN: every asset is the server's own
