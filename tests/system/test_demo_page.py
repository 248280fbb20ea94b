"""The demo page in headless Chromium (Debian's, driven by Playwright; nothing is downloaded):
click to render, stamp to locate, the models table, with and without an API key."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, LiveServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = ROOT / "docs" / "demo.png"
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

if CHROMIUM is None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(
            "Chromium is missing: `make test` installs Debian's chromium on CI", pytrace=False
        )
    pytest.skip("no Chromium on this machine (install Debian's chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def click_canvas(page, selector: str, x: int, y: int) -> None:
    """Click the centre of canvas pixel (x, y)."""
    page.locator(selector).scroll_into_view_if_needed()
    box = page.locator(selector).bounding_box()
    scale = box["width"] / 64
    page.mouse.click(box["x"] + (x + 0.5) * scale, box["y"] + (y + 0.5) * scale)


def rendered_centre(page) -> tuple[float, float]:
    """The centre of the bright pixels drawn on the render canvas, in canvas pixels."""
    pixels = page.evaluate("""() => {
        const c = document.getElementById('render-canvas');
        const tmp = document.createElement('canvas'); tmp.width = tmp.height = 64;
        const ctx = tmp.getContext('2d'); ctx.imageSmoothingEnabled = false;
        ctx.drawImage(c, 0, 0, 64, 64);
        const d = ctx.getImageData(0, 0, 64, 64).data;
        const out = []; for (let i = 0; i < d.length; i += 4) out.push(d[i + 1]);
        return out;  // green channel: the red truth outline does not count
    }""")
    img = np.asarray(pixels, dtype=np.float64).reshape(64, 64)
    ys, xs = np.nonzero(img > 128)
    return float(xs.mean()), float(ys.mean())


def test_click_renders_the_square_where_clicked_and_stamp_is_located(browser) -> None:
    with LiveServer() as live:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(live.url + "/")
        page.wait_for_selector("#models-table td:has-text('render v1')")
        click_canvas(page, "#render-canvas", 20, 45)
        page.wait_for_function("window.demo.lastRender && window.demo.lastRender.x === 20")
        x, y = rendered_centre(page)
        assert abs(x - 20) <= 1 and abs(y - 45) <= 1
        assert page.evaluate("window.demo.lastRender.iou") >= 0.99
        assert "IoU with the true square" in page.inner_text("#render-result")

        click_canvas(page, "#locate-canvas", 40, 12)
        page.wait_for_function("window.demo.lastLocate !== null")
        located = page.evaluate("window.demo.lastLocate")
        assert located["truth"] == [40, 12]
        assert abs(located["x"] - 40) <= 0.5 and abs(located["y"] - 12) <= 0.5
        assert "error" in page.inner_text("#locate-result")

        # Keyboard: focus the render canvas, move right 3, Enter.
        page.focus("#render-canvas")
        for _ in range(3):
            page.keyboard.press("ArrowRight")
        page.keyboard.press("Enter")
        page.wait_for_function("window.demo.lastRender.x === 35")
        assert page.evaluate("window.demo.lastRender.y") == 32
        click_canvas(page, "#versus-coordconv", 48, 48)  # for the screenshot: the paper's story
        page.wait_for_function("window.demo.lastVersus && window.demo.lastVersus.x === 48")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        page.close()
    assert SCREENSHOT.stat().st_size > 10_000


def test_baseline_beside_coordconv_on_the_held_out_quadrant_and_no_failed_asset(browser) -> None:
    """The paper's story at a click: in the held-out quadrant the baseline misses and CoordConv
    draws the square; outside it both do. Loading the page asks for nothing that fails."""
    with LiveServer() as live:
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        failed: list[str] = []

        def answered(r) -> None:
            if r.status >= 400:
                failed.append(f"{r.status} {r.url}")

        page.on("response", answered)
        page.on("requestfailed", lambda r: failed.append(f"failed {r.url}"))
        page.goto(live.url + "/")
        page.wait_for_selector("#models-table td:has-text('render-baseline v1')")
        page.wait_for_load_state("networkidle")
        click_canvas(page, "#versus-coordconv", 48, 48)
        page.wait_for_function("window.demo.lastVersus && window.demo.lastVersus.x === 48")
        held = page.evaluate("window.demo.lastVersus")
        assert held["heldOut"] is True
        assert held["coordconv"] >= 0.99 and held["baseline"] < 0.5
        text = page.inner_text("#versus-result")
        assert "inside the held-out quadrant" in text and "baseline 0." in text
        click_canvas(page, "#versus-baseline", 20, 20)
        page.wait_for_function("window.demo.lastVersus.x === 20")
        seen = page.evaluate("window.demo.lastVersus")
        assert seen["heldOut"] is False and seen["baseline"] > 0.9 and seen["coordconv"] >= 0.99
        assert "in the training region" in page.inner_text("#versus-result")
        page.close()
    assert failed == []


def test_the_page_works_with_an_api_key(browser) -> None:
    with LiveServer(("render", "locate"), api_key="demo-key") as live:
        page = browser.new_page()
        page.goto(live.url + "/")
        page.wait_for_selector("#models-table td:has-text('401')")
        page.fill("#api-key", "demo-key")
        page.dispatch_event("#api-key", "change")
        page.wait_for_selector("#models-table td:has-text('locate v1')")
        click_canvas(page, "#render-canvas", 10, 10)
        page.wait_for_function("window.demo.lastRender && window.demo.lastRender.x === 10")
        assert page.evaluate("window.demo.lastRender.iou") >= 0.99
        # Enter in the key field keeps the page (a form submit would reload it).
        page.evaluate("window.__stayed = true")
        page.press("#api-key", "Enter")
        page.wait_for_timeout(500)
        assert page.evaluate("window.__stayed === true")
        assert page.input_value("#api-key") == "demo-key"
        page.close()


def test_static_assets_need_no_network_and_no_key() -> None:
    html = (Path(ROOT) / "service" / "static" / "index.html").read_text()
    assert "http://" not in html and "https://" not in html
    js = (Path(ROOT) / "service" / "static" / "app.js").read_text()
    assert "http://" not in js and "https://" not in js
