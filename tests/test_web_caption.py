"""The web page's Caption tab in headless Chromium (as tests/test_web.py): upload an image, see its caption as
words, click a word to lay its attention map over the image, clear it, and see the server's error for a file that
is not an image. The screenshot goes to tests/artifacts/."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from crossway.server import create_app, load_engine
from tests.servers import running, wait_ready
from tests.test_server_caption import train_caption_run
from tests.test_web import ARTIFACTS, CHROMIUM, FLAGS, sync_api

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)")

OVERLAY = """() => {  // [width, height, alpha of every pixel] of the canvas laid over the image
  const c = document.getElementById("cap-overlay"), d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  const alpha = [];
  for (let i = 3; i < d.length; i += 4) alpha.push(d[i]);
  return [c.width, c.height, alpha];
}"""


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def caption_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("webcap")
    return train_caption_run(root, "lstm"), sorted((root / "images").glob("test_*.png"))[0]


def overlay_alpha(page) -> np.ndarray:
    w, h, alpha = page.evaluate(OVERLAY)
    return np.array(alpha).reshape(h, w)


def test_caption_tab_shows_the_words_and_each_ones_attention(browser, caption_run):
    run, image = caption_run
    with running(create_app(lambda: load_engine(run))) as url:
        with httpx.Client(base_url=url) as client:
            wait_ready(client)
            want = client.post("/v1/caption", content=image.read_bytes(), params={"attention": "true"}).json()
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_selector("#tab-caption.selected", timeout=20_000)
        assert page.is_hidden("#tab-translate") and page.is_hidden("#tab-segment") and page.is_hidden("#segment-view")
        page.set_input_files("#cap-file", str(image))
        page.wait_for_selector("#cap-stage[data-ready='1']", timeout=20_000)
        maps = np.array(want["attention"])  # (T, 8, 8)
        ends = ["</s>"] if len(maps) > len(want["tokens"]) else []
        words = page.locator("#cap-words button")
        assert words.all_inner_texts() == [*want["tokens"], *ends, "none"]
        assert page.is_hidden("#cap-overlay")  # no word chosen yet
        assert page.get_attribute("#cap-image", "src").startswith("blob:")
        for t in (0, 1):
            words.nth(t).click()
            assert page.get_attribute("#cap-overlay", "data-token") == str(t)
            assert words.nth(t).get_attribute("class") == "selected" and page.is_visible("#cap-overlay")
            alpha = overlay_alpha(page)
            assert alpha.shape == (32, 32)  # the image's own size: the 8 x 8 grid, upsampled
            # bright (clear) where the model looked most, dim where it looked least: compare the cells' centres
            (py, px), (ly, lx) = (np.unravel_index(f(maps[t]), (8, 8)) for f in (np.argmax, np.argmin))
            assert alpha[4 * py + 2, 4 * px + 2] < alpha[4 * ly + 2, 4 * lx + 2]
            assert f"“{want['tokens'][t]}”" in page.inner_text("#cap-map-info")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-caption.png"))
        words.last.click()  # "none": the image alone
        assert page.is_hidden("#cap-overlay") and page.get_attribute("#cap-overlay", "data-token") == ""
        assert want["text"] and page.inner_text("#cap-score").startswith(f"score {want['score']:.3f}")
        # a file that is not an image: the server's message, shown
        page.set_input_files("#cap-file", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                  "buffer": b"not an image"}])
        page.wait_for_selector("#cap-error:has-text('415')")
        assert "image/png" in page.inner_text("#cap-error") and page.is_hidden("#cap-result")
        assert errors == []
        page.close()
