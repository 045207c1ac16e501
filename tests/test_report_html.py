"""The sweep report (report.html of make_tables): self-contained, every table row present, and, in a real headless
Chromium (Debian's chromium + chromium-driver, driven by selenium; skipped where absent), it renders without console
errors and its FP | quantized videos play."""
from __future__ import annotations

import json
import re
import shutil
import time

import pytest

from conftest import compose
from eval.report import row_key
from qarvd.app.report import REPORT_FILE, make_tables


@pytest.fixture(scope="module")
def report(tau_sweep):
    cfg = compose(["table=tau_sweep", f"records=[{tau_sweep}]", "n_boot=200"], config_name="make_tables")
    out, tables = make_tables(cfg)
    return out / REPORT_FILE, tables


def test_report_is_one_self_contained_file(report):
    path, tables = report
    text = path.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", text)  # nothing fetched: no CDN, no side file
    assert text.count("<video") == 2 and text.count('src="data:video/mp4;base64,') == 2  # one sample per run
    assert text.count('src="data:image/png;base64,') == 6  # frontier, 4 per-chunk curves, the tau curves
    for table in tables:
        for row in table.rows:
            assert f'data-row="{row_key(table, row)}"' in text
    assert "LPIPS-FP" in text and "[" in text.split("<tbody>")[1]  # cells carry their intervals


def _chrome():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(arg)
    opts.binary_location = browser
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)


def test_report_in_headless_chromium(report, tau_sweep):
    path, tables = report
    chrome = _chrome()
    try:
        chrome.get(path.as_uri())
        deadline = time.monotonic() + 30
        while chrome.execute_script("return [...document.querySelectorAll('video')].some(v => v.readyState < 4)"):
            assert time.monotonic() < deadline, "videos did not load"
            time.sleep(0.1)
        videos = chrome.execute_script("return [...document.querySelectorAll('video')].map("
                                       "v => [v.readyState, v.duration, v.videoWidth, v.videoHeight, v.error])")
        played = chrome.execute_async_script("const done = arguments[0]; Promise.all([...document.querySelectorAll("
                                              "'video')].map(v => v.play().then(() => v.currentTime >= 0)))"
                                              ".then(r => done(r), e => done(String(e)))")
        rows = chrome.execute_script("return [...document.querySelectorAll('table[data-table=\"tau_sweep\"] tbody tr')]"
                                     ".map(r => r.dataset.row)")
        images = chrome.execute_script("return [...document.images].map(i => i.complete && i.naturalWidth > 0)")
        errors = [e for e in chrome.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    finally:
        chrome.quit()
    assert not errors, errors
    record = json.loads(next(tau_sweep.glob("*/record.json")).read_text())
    frames = len(record["per_chunk"]["psnr_fp"])  # 2 chunks of 2 latent frames = 4 frames at the model's fps
    assert len(videos) == 2 and all(v[0] == 4 and v[4] is None for v in videos)  # HAVE_ENOUGH_DATA, no error
    assert all(abs(v[1] - 4 / 8) < 1e-6 for v in videos), videos  # 4 frames at 8 fps
    assert all(v[3] >= 256 and v[2] == 2 * v[3] for v in videos) and played == [True, True] and frames == 2
    assert rows == [row_key(tables[0], r) for r in tables[0].rows] == ["FVD-FP ↓", "LPIPS-FP ↓", "PSNR-FP ↑", "SSIM-FP ↑"]
    assert images and all(images)
