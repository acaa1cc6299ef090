"""The web page in headless Chromium (Debian's chromium, driven by Playwright): translate, see the output and
an attention heatmap of the right shape, hover a cell. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from crossway.server import Engine, create_app
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
    app = create_app(lambda: Engine.load(served_runs[arch]))
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
        # beam with n-best: three outputs listed, clicking the second selects it
        page.select_option("#strategy", "beam")
        page.fill("#n_best", "3")
        page.click("#go")
        page.wait_for_function("document.querySelectorAll('ol.nbest li.output').length === 3")
        page.locator("ol.nbest li.output").nth(1).click()
        assert page.locator("ol.nbest li.output").nth(1).get_attribute("class") == "output selected"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"web-{arch}.png"))
        assert errors == []
        page.close()


def test_page_shows_the_servers_error_message(browser, served_runs):
    with running(create_app(lambda: Engine.load(served_runs["rnn"]))) as url:
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#status:text('ready')", timeout=20_000)
        page.fill("#text", "a" * 25)  # over data.max_src_len = 20
        page.click("#go")
        page.wait_for_selector("#error:has-text('422')")
        assert "over the limit of 20" in page.inner_text("#error")
        page.close()
