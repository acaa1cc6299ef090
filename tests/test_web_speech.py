"""The web page's Speech tab in headless Chromium (as tests/test_web_caption.py): upload a WAV, see its transcript
as words over the spectrogram, click a word to dim the audio the decoder did not listen to, record from
Chromium's fake microphone (sent as a 16 kHz PCM WAV), and see the server's error for a file that is not audio.
The screenshot goes to tests/artifacts/."""

from __future__ import annotations

import io
import math
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

from crossway.server import ServeConfig, create_app, load_engine
from tests.servers import running, wait_ready
from tests.test_server_speech import train_speech_run
from tests.test_web import ARTIFACTS, CHROMIUM, FLAGS, sync_api

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)")

OVERLAY = """() => {  // [width, alpha of every pixel of the top row] of the canvas laid over the spectrogram
  const c = document.getElementById("sp-overlay"), d = c.getContext("2d").getImageData(0, 0, c.width, 1).data;
  const alpha = [];
  for (let i = 3; i < d.length; i += 4) alpha.push(d[i]);
  return [c.width, alpha];
}"""


@pytest.fixture(scope="module")
def browser():
    fake_microphone = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]  # a beeping mic
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[*FLAGS, *fake_microphone])
        yield b
        b.close()


@pytest.fixture(scope="module")
def speech_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("webspeech")
    return train_speech_run(root), sorted((root / "audio" / "valid").glob("*.wav"))[0]


def test_speech_tab_transcribes_shows_attention_and_records(browser, speech_run):
    run, audio = speech_run
    cfg = ServeConfig(threads=1)
    with running(create_app(lambda: load_engine(run, cfg), cfg)) as url:
        with httpx.Client(base_url=url) as client:
            wait_ready(client)
            want = client.post("/v1/transcribe", content=audio.read_bytes(), params={"attention": "true"}).json()
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_selector("#tab-speech.selected", timeout=20_000)
        assert page.is_hidden("#tab-translate") and page.is_hidden("#caption-view")
        page.set_input_files("#sp-file", str(audio))
        page.wait_for_selector("#sp-stage[data-ready='1']", timeout=20_000)
        assert page.inner_text("#sp-words").replace("\n", "") != ""
        (window,) = want["windows"]  # under 3 s: one window
        words = page.locator("#sp-words button")
        labels = words.all_inner_texts()
        assert labels[-1] == "none" and "".join(labels[:-1]).replace("</s>", "") == want["text"].replace(" ", "")
        width = page.evaluate("document.getElementById('sp-spectrogram').width")
        assert width == len(want["spectrogram"]["values"])  # one canvas column per spectrogram column
        assert page.is_hidden("#sp-overlay")  # no word chosen yet
        words.first.click()
        assert page.get_attribute("#sp-overlay", "data-word") == "0" and page.is_visible("#sp-overlay")
        assert words.first.get_attribute("class") == "selected"
        w, alpha = page.evaluate(OVERLAY)
        # clear where the decoder listened most, dim where it listened least: the first word's tokens' mean
        k, rows = words.first.get_attribute("data-rows").split(":")  # the window and the word's tokens
        assert k == "0" and len(rows.split(",")) == (len(labels[0]) if labels[0] not in want["windows"][0]["tokens"]
                                                      else 1)
        att = np.array(window["attention"])[[int(t) for t in rows.split(",")]].mean(0)  # (M,)
        spp, seconds = window["seconds_per_position"], want["seconds"]
        x = [min(w - 1, math.floor((m + 0.5) * spp / seconds * w)) for m in (att.argmax(), att.argmin())]
        assert alpha[x[0]] < alpha[x[1]]
        assert f"“{labels[0]}”" in page.inner_text("#sp-map-info")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-speech.png"))
        words.last.click()  # "none": the spectrogram alone
        assert page.is_hidden("#sp-overlay") and page.get_attribute("#sp-overlay", "data-word") == ""

        # the microphone: about a second of Chromium's fake device, encoded in the page as a WAV
        page.click("#sp-record")
        page.wait_for_selector("#sp-rec-info:has-text('recording… 1.')", timeout=10_000)
        page.click("#sp-record")
        page.wait_for_selector("#sp-rec-info:has-text('recorded')")
        page.wait_for_function("document.getElementById('sp-stage').dataset.ready === '1' && "
                               "document.getElementById('sp-timing').textContent.includes('WAV, 16000 Hz')",
                               timeout=20_000)  # the server read it
        sent = page.evaluate("async () => Array.from(new Uint8Array(await spFile.arrayBuffer()))")  # the body
        data, rate = soundfile.read(io.BytesIO(bytes(sent)), dtype="int16")
        assert rate == 16_000 and data.ndim == 1 and 0.8 < len(data) / rate < 5 and np.abs(data).max() > 0

        # a file that is not audio: the server's message, shown
        page.set_input_files("#sp-file", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                 "buffer": b"not audio"}])
        page.wait_for_selector("#sp-error:has-text('415')")
        assert "audio/wav" in page.inner_text("#sp-error") and page.is_hidden("#sp-result")
        assert errors == []
        page.close()
