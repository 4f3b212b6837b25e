"""/docs and /redoc in a real browser: headless Chromium (Debian's, installed by
.ci/system-deps) driven by Playwright. The pages render the upload operation from this server's
own files, and Swagger UI's "Try it out" uploads two files with a 200."""

from __future__ import annotations

from pathlib import Path

from aiohttp.test_utils import TestServer
from playwright.async_api import Browser

from clustr_aio.auth.keys import create_key
from clustr_aio.web.keys import CATALOG
from tests.conftest import JPEG, PNG, stored_files
from tests.http.browser import browser, open_page, screenshot, server, skip_without_chromium
from tests.http.live_server import AiohttpServer, start_live_server

__all__ = ["browser", "server"]  # fixtures

skip_without_chromium()


async def test_swagger_ui_uploads_files_with_try_it_out(
    browser: Browser, server: TestServer, upload_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "beach.jpg").write_bytes(JPEG)
    (tmp_path / "dunes.png").write_bytes(PNG)
    page, traffic = await open_page(browser, server, "/docs")

    operation = page.locator("#operations-upload-upload")  # tag "upload", operationId "upload"
    await operation.locator(".opblock-summary").click()
    await operation.get_by_text("Upload images").first.wait_for()
    await operation.get_by_role("button", name="Try it out").click()
    # files is an array of binary strings: one file input per item, "Add string item" for more.
    await operation.get_by_role("button", name="Add string item").click()
    inputs = operation.locator("input[type=file]")
    assert await inputs.count() == 2
    await inputs.nth(0).set_input_files(tmp_path / "beach.jpg")
    await inputs.nth(1).set_input_files(tmp_path / "dunes.png")
    await operation.get_by_role("button", name="Execute").click()

    live = operation.locator(".live-responses-table")
    await live.locator(".response-col_status", has_text="200").wait_for()
    await live.get_by_text("Successfully uploaded 2 files").first.wait_for()
    await screenshot(page, "docs-try-it-out.png")
    assert stored_files(upload_dir) == ["beach.jpg", "dunes.png"]
    assert (upload_dir / "dunes.png").read_bytes() == PNG
    traffic.assert_clean()
    assert traffic.blocked_elsewhere == []  # Swagger UI asks nothing of other hosts


async def test_redoc_renders_the_upload_operation(browser: Browser, server: TestServer) -> None:
    page, traffic = await open_page(browser, server, "/redoc")
    await page.locator("h2", has_text="Upload images").wait_for()
    await page.get_by_text("/api/upload").first.wait_for()
    await page.get_by_text("Successfully uploaded 2 files").first.wait_for()  # the example
    await screenshot(page, "redoc.png")
    traffic.assert_clean()
    # ReDoc's footer always asks its vendor's CDN for a logo; the policy stops it (and ReDoc
    # hides the broken image): a closed network sees no attempt to get out.
    assert all(url.startswith("https://cdn.redoc.ly/") for url in traffic.blocked_elsewhere)


async def test_swagger_ui_authorize_sends_the_api_key(
    browser: Browser, aiohttp_server: AiohttpServer, upload_dir: Path
) -> None:
    """AUTH=keys: "Try it out" is refused (401) until a key is given to "Authorize", and then
    sent with every request."""
    server = await start_live_server(aiohttp_server, upload_dir, fsync=False, auth="keys")
    key, _ = await create_key(server.app[CATALOG], "swagger", "read")
    page, traffic = await open_page(browser, server, "/docs")

    operation = page.locator("#operations-files-list_files")
    await operation.locator(".opblock-summary").click()
    await operation.get_by_role("button", name="Try it out").click()
    await operation.get_by_role("button", name="Execute").click()
    live = operation.locator(".live-responses-table")
    await live.locator(".response-col_status", has_text="401").wait_for()
    traffic.failed_here.clear()  # that 401 was the point (and Chromium's console line on it)
    traffic.errors = [e for e in traffic.errors if "status of 401" not in e]

    await page.locator(".auth-wrapper .authorize").first.click()
    scheme = page.locator(".auth-container").filter(has_text="bearerKey")
    await scheme.locator("input").fill(key)
    await scheme.get_by_role("button", name="Apply credentials").click()
    await scheme.get_by_text("Authorized").wait_for()  # taken
    await scheme.locator(".btn-done").click()

    await operation.get_by_role("button", name="Execute").click()
    await live.locator(".response-col_status", has_text="200").wait_for()
    await live.get_by_text("next_cursor").first.wait_for()
    await screenshot(page, "docs-authorize.png")
    traffic.assert_clean()
