"""The web page in headless Chromium (Debian's chromium, driven by Playwright): translate, see the output and
an attention heatmap of the right shape, hover a cell; segment an uploaded image, see the overlay, legend and
gate maps. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from crossway.server import create_app, load_engine
from crossway.server_text import TextEngine
from tests.servers import running, wait_ready

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra has it)")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# flags for a sandboxed, offline machine: no background connections that would be refused
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.mark.parametrize("arch", ["transformer", "rnn"])
def test_translate_in_the_page_shows_output_and_heatmap(browser, served_runs, arch):
    app = create_app(lambda: TextEngine.load(served_runs[arch]))
    with running(app) as url:
        with httpx.Client(base_url=url) as client:
            wait_ready(client)
            want = client.post("/v1/translate", json={"inputs": ["abcde"], "return_attention": True}).json()
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_selector("#status:text('ready')", timeout=20_000)
        page.fill("#text", "abcde")
        page.click("#go")
        page.wait_for_selector("#heatmap", timeout=20_000)
        expected = want["outputs"][0]
        assert page.inner_text("ol.nbest li.output.selected").startswith(expected["text"])
        att = expected["attention"]
        rows, cols = len(att["tgt_tokens"]), len(att["src_tokens"])
        assert page.locator("#heatmap tbody tr").count() == rows
        assert page.locator("#heatmap tbody tr:first-child td").count() == cols == 5
        assert page.locator("#heatmap thead th").all_inner_texts()[1:] == list("abcde")
        cell = page.locator("#heatmap tbody tr:first-child td").nth(2)
        cell.hover()
        hover = page.inner_text("#hover-info")
        assert "“c”" in hover and f"“{att['tgt_tokens'][0]}”" in hover
        assert page.is_hidden("#attn-controls") == (arch == "rnn")  # layer/head only for the Transformer
        if arch == "transformer":
            layers = page.locator("#layer option").count()
            heads = page.locator("#head option").count()
            assert (layers, heads) == (2, 4 + 1)  # 2 decoder layers; 4 heads and their mean
            before = cell.get_attribute("data-weight")
            page.select_option("#head", "0")
            assert page.locator("#heatmap tbody tr:first-child td").nth(2).get_attribute("data-weight") != before
        # beam with n-best and the coverage penalty (both models attend): three outputs listed, clicking the
        # second selects it
        assert page.is_visible("#coverage-control")
        page.select_option("#strategy", "beam")
        page.fill("#n_best", "3")
        page.fill("#coverage_penalty", "0.3")
        with page.expect_request("**/v1/translate") as sent:
            page.click("#go")
        assert json.loads(sent.value.post_data)["options"]["coverage_penalty"] == 0.3
        page.wait_for_function("document.querySelectorAll('ol.nbest li.output').length === 3")
        page.locator("ol.nbest li.output").nth(1).click()
        assert page.locator("ol.nbest li.output").nth(1).get_attribute("class") == "output selected"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"web-{arch}.png"))
        assert errors == []
        page.close()


def test_page_shows_the_servers_error_message(browser, served_runs):
    with running(create_app(lambda: TextEngine.load(served_runs["rnn"]))) as url:
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#status:text('ready')", timeout=20_000)
        page.fill("#text", "a" * 25)  # over data.max_src_len = 20
        page.click("#go")
        page.wait_for_selector("#error:has-text('422')")
        assert "over the limit of 20" in page.inner_text("#error")
        page.close()


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    """An Attention U-Net trained for a few steps on 32 x 32 discs and squares (tests/tasks/test_segmentation.py)."""
    from crossway import train
    from tests.tasks.test_segmentation import seg_config, write_easy_set

    root = tmp_path_factory.mktemp("webseg")
    write_easy_set(root / "train", 16, 1)
    write_easy_set(root / "valid", 4, 2)
    train(seg_config(root, root / "run", model={"attention_gates": True}, train={"max_steps": 20}))
    return root


COVERED = """() => {  // [width, height, pixels the mask layer covers] of the canvas laid over the image
  const c = document.getElementById("seg-mask"), d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
  return [c.width, c.height, n];
}"""


def test_segment_tab_shows_the_overlay_legend_and_gates(browser, seg_run):
    image = seg_run / "train" / "images" / "000.png"
    with running(create_app(lambda: load_engine(seg_run / "run"))) as url:
        with httpx.Client(base_url=url) as client:
            wait_ready(client)
            want = client.post("/v1/segment", content=image.read_bytes(), params={"format": "json"}).json()
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_selector("#tab-segment.selected", timeout=20_000)
        assert page.is_hidden("#tab-translate") and page.is_hidden("#translate-view")
        assert page.is_visible("#seg-gates-label")  # an Attention U-Net
        page.set_input_files("#seg-file", str(image))
        page.wait_for_selector("#seg-stage[data-ready='1']", timeout=20_000)
        # the overlay: the mask over the image, its background class transparent, at the slider's opacity
        foreground = sum(c["pixels"] for c in want["classes"][1:])
        assert page.evaluate(COVERED) == [32, 32, foreground] and foreground > 0
        assert page.get_attribute("#seg-image", "src").startswith("data:image/png;base64,")
        assert page.eval_on_selector("#seg-mask", "c => c.style.opacity") == "0.5"
        page.eval_on_selector("#seg-opacity", "s => { s.value = 80; s.dispatchEvent(new Event('input')); }")
        assert page.eval_on_selector("#seg-mask", "c => c.style.opacity") == "0.8"
        page.check("input[name=seg-show][value=mask]")
        assert page.evaluate(COVERED) == [32, 32, 32 * 32]  # the mask alone, opaque
        page.check("input[name=seg-show][value=image]")
        assert page.is_hidden("#seg-mask") and page.is_visible("#seg-image")
        page.check("input[name=seg-show][value=overlay]")
        # the legend: every class, its colour and share of the pixels
        rows = page.locator("#seg-legend tbody tr")
        assert rows.count() == 3
        for row, c in zip(rows.all(), want["classes"], strict=True):
            assert c["name"] in row.inner_text() and f"{100 * c['pixels'] / 1024:.1f}%" in row.inner_text()
        colour = rows.nth(1).locator(".swatch").evaluate("e => getComputedStyle(e).backgroundColor")
        assert colour == "rgb(230, 25, 75)"
        # the gate maps, level by level
        assert page.is_visible("#seg-gate-box") and page.locator("#seg-gate-level option").count() == 2
        first = page.get_attribute("#seg-gate", "src")
        page.select_option("#seg-gate-level", "1")
        assert page.get_attribute("#seg-gate", "src") != first
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-segment.png"))
        # a file that is not an image: the server's message, shown
        page.set_input_files("#seg-file", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                  "buffer": b"not an image"}])
        page.wait_for_selector("#seg-error:has-text('415')")
        assert "image/png" in page.inner_text("#seg-error")
        assert errors == []
        page.close()
