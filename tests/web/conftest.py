"""Browser tests: headless Chromium (Debian's `chromium`, driven by Playwright) against the embedded
service. Each test saves screenshots of the pages it visits under `screenshots/` at the repository
root (git-ignored; CLASSCOMP_SCREENSHOT_DIR overrides it) for a reviewer to look at."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

SCREENSHOTS = Path(os.environ.get("CLASSCOMP_SCREENSHOT_DIR", Path(__file__).resolve().parents[2] / "screenshots"))


def _chromium() -> str | None:
    return os.environ.get("CLASSCOMP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    executable = _chromium()
    if executable is None:
        message = "browser tests need Chromium: apt-get install chromium (or set CLASSCOMP_CHROMIUM)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, embedded_service) -> Iterator[object]:
    """A fresh tab on the dashboard's origin; a script error on any page fails the test."""
    context = browser.new_context(base_url=embedded_service.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"script errors on the page: {errors}"


@pytest.fixture
def screenshot(request) -> callable:
    """screenshot(page, "name") writes screenshots/<test name>-<name>.png, whole page."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page, name: str) -> Path:
        path = SCREENSHOTS / f"{request.node.name}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
