"""drift.html looked at once in headless Chromium: it renders offline, verdict first, charts drawn.

Skipped, with the reason, where Chromium, chromedriver or selenium is missing (CI sets
SENT_REQUIRE_BROWSER=1 and then a skip fails).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_drift_service import _doc
from test_serve_browser import CHROMEDRIVER, CHROMIUM, browser  # noqa: F401 - the fixture

from sentiment_cli.drift import detect
from sentiment_cli.drift import report as reporting

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
    pytest.mark.skipif(not CHROMEDRIVER.exists(), reason=f"{CHROMEDRIVER} is missing"),
]


def test_the_report_renders_offline(browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    rng = np.random.default_rng(0)
    vocab = detect.Vocabulary(["good", "film"])

    def feats(n, shift):
        pos = np.clip(rng.beta(2, 2, n) + shift, 0, 1)
        texts = ["good film " * int(k) for k in rng.integers(1, 6, n)]
        return detect.features(texts, np.stack([1 - pos, pos], 1), rng.integers(3, 20, n), vocab)

    doc = _doc("drift")
    doc["histograms"] = reporting.histograms(feats(300, 0.0), feats(200, 0.3))
    doc["words"] = {"over": [{"word": "zorg", "log_odds": 2.0, "z": 5.0, "reference_count": 0,
                              "current_count": 30}], "under": []}
    json_path, html_path = reporting.write(doc, tmp_path)
    browser.get(html_path.as_uri())
    assert browser.title == "sent drift: drift"
    verdict = browser.find_element(By.ID, "verdict")
    assert verdict.is_displayed() and verdict.text.startswith("DRIFT")
    # the verdict is the first thing on the page after the one-line header
    assert verdict.location["y"] < browser.find_element(By.ID, "tests").location["y"]
    charts = browser.find_elements(By.CSS_SELECTOR, "svg[data-feature]")
    assert len(charts) == 6 and all(c.size["width"] > 200 and c.size["height"] > 50 for c in charts)
    bars = browser.find_elements(By.CSS_SELECTOR, "svg[data-feature=positive_probability] rect.current")
    assert len(bars) == reporting.BINS and max(float(b.get_attribute("height")) for b in bars) > 10
    rows = browser.find_elements(By.CSS_SELECTOR, "#tests tbody tr")
    assert [r.get_attribute("data-test") for r in rows] == ["labels", "words"]
    assert "hit" in rows[0].get_attribute("class")
    assert browser.find_element(By.ID, "words-over").text.count("zorg") == 1
    # nothing was fetched: the page carries everything
    entries = browser.execute_script("return performance.getEntriesByType('resource').length")
    assert entries == 0
    browser.save_screenshot(str(tmp_path / "drift.png"))
