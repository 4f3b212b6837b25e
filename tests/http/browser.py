"""What the browser tests share: Debian's Chromium driven by Playwright, a live server, and a
watch on every request a page makes (nothing may leave for another host)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, ConsoleMessage, Page, Request, Response, async_playwright

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


def skip_without_chromium() -> None:
    """Outside CI, a machine without Debian's chromium skips the browser tests."""
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
