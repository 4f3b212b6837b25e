"""/docs and /redoc in a real browser: headless Chromium (Debian's, installed by
.ci/system-deps) driven by Playwright. The pages render the upload operation from this server's
own files, and Swagger UI's "Try it out" uploads two files with a 200."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, ConsoleMessage, Page, Request, Response, async_playwright

from clustr_aio.auth.keys import create_key
from clustr_aio.web.keys import CATALOG
from tests.conftest import JPEG, PNG, stored_files
from tests.http.live_server import AiohttpServer, start_live_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
WAIT_MS = 60_000  # for anything on the page; generous for a loaded CI machine
SCREENSHOTS = Path(os.environ.get("DOCS_SCREENSHOTS", "/tmp/clustr-docs-screenshots"))

if not Path(CHROMIUM).exists() and os.environ.get("CI") != "true":
    pytest.skip(
        "Debian's chromium is not installed (make test installs it)", allow_module_level=True
    )


@dataclass
class PageTraffic:
    """Everything a page asked for, and everything that went wrong while it ran."""

    origin: str
    failed_here: list[str] = field(default_factory=list)
    """Requests to this server that failed, or got a 4xx/5xx."""
    blocked_elsewhere: list[str] = field(default_factory=list)
    """Requests to other hosts, each stopped by the page's Content-Security-Policy."""
    escaped: list[str] = field(default_factory=list)
    """Requests to other hosts that were not stopped: there must be none."""
    errors: list[str] = field(default_factory=list)
    """Script errors and console errors."""

    def watch(self, page: Page) -> None:
        page.on("request", self._on_request)
        page.on("requestfailed", self._on_failed)
        page.on("response", self._on_response)
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))

    def _here(self, url: str) -> bool:
        return url.startswith((self.origin + "/", "blob:" + self.origin + "/", "data:"))

    def _on_request(self, request: Request) -> None:
        if not self._here(request.url):
            self.escaped.append(request.url)  # until requestfailed says the policy stopped it

    def _on_failed(self, request: Request) -> None:
        reason = request.failure or ""
        if self._here(request.url):
            self.failed_here.append(f"{request.url}: {reason}")
        elif "csp" in reason.lower() or "blocked" in reason.lower():
            self.escaped.remove(request.url)
            self.blocked_elsewhere.append(request.url)

    def _on_response(self, response: Response) -> None:
        if self._here(response.url) and response.status >= 400:
            self.failed_here.append(f"{response.url}: {response.status}")

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def assert_clean(self) -> None:
        assert self.failed_here == []
        assert self.escaped == []
        # Chromium reports each request the policy stops as a console error too: those are
        # counted in blocked_elsewhere already.
        assert [
            error
            for error in self.errors
            if not (
                "Content Security Policy" in error
                and any(url in error for url in self.blocked_elsewhere)
            )
        ] == []


@pytest.fixture
async def server(aiohttp_server: AiohttpServer, upload_dir: Path) -> TestServer:
    return await start_live_server(aiohttp_server, upload_dir, fsync=False)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


async def open_page(browser: Browser, server: TestServer, path: str) -> tuple[Page, PageTraffic]:
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(WAIT_MS)
    traffic = PageTraffic(origin=str(server.make_url("")).rstrip("/"))
    traffic.watch(page)
    await page.goto(str(server.make_url(path)), wait_until="load")
    assert traffic.failed_here == []  # every script and style sheet of the page has arrived
    return page, traffic


async def screenshot(page: Page, name: str) -> None:
    # Playwright creates the folder if need be.
    await page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


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
