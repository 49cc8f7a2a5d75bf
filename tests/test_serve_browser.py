"""The page at / in a real browser: type a review, submit, see a label and its probabilities.

Drives Debian's headless Chromium through chromedriver (selenium). Skipped, with the reason, where
either is missing: `apt-get install chromium chromium-driver` and `pip install selenium`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import serve_fixtures
from serve_fixtures import running_server

from sentiment_cli import predlog

tiny_model_dir = serve_fixtures.tiny_model_dir

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing "
                       "(apt-get install chromium chromium-driver)"),
    pytest.mark.skipif(not CHROMEDRIVER.exists(), reason=f"{CHROMEDRIVER} is missing "
                       "(apt-get install chromium-driver)"),
]


@pytest.fixture
def browser(tmp_path: Path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def test_a_person_types_a_review_and_sees_label_and_probabilities(browser, tmp_path,
                                                                   tiny_model_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    review = "A gripping story with wonderful performances."
    with running_server(tiny_model_dir, tmp_path) as server:
        browser.get(server.url + "/")
        assert "sentiment" in browser.title

        # Only whitespace: the page says so and sends nothing.
        browser.find_element(By.ID, "review").send_keys("   ")
        browser.find_element(By.ID, "submit").click()
        error = browser.find_element(By.ID, "error")
        WebDriverWait(browser, 10).until(ec.visibility_of(error))
        assert "Type a review" in error.text

        box = browser.find_element(By.ID, "review")
        box.clear()
        box.send_keys(review)
        browser.find_element(By.ID, "submit").click()
        label = browser.find_element(By.ID, "label")
        WebDriverWait(browser, 20).until(lambda d: label.text.strip() != "")

        assert label.text in {"neg", "pos"}
        assert not browser.find_element(By.ID, "error").is_displayed()
        rows = browser.find_elements(By.CSS_SELECTOR, "#probabilities tbody tr")
        shown = {row.get_attribute("data-label"): float(row.find_element(
            By.CSS_SELECTOR, "td.value").text) for row in rows}
        assert set(shown) == {"neg", "pos"}
        assert sum(shown.values()) == pytest.approx(1.0, abs=0.002)
        assert max(shown, key=shown.get) == label.text  # the label is the likeliest one
        assert "tiny" in browser.find_element(By.ID, "model").text
        server.stop()

    (logged,) = predlog.read_predictions(server.log_dir)
    assert logged["text"] == review and logged["label"] == label.text


@pytest.fixture(scope="module")
def three_label_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with three labels none of which is called pos or neg."""
    import torch

    from sentiment_cli import config, model

    torch.manual_seed(0)
    cfg = config.load("tiny")
    tok, m = model.build(cfg, ["awful", "so-so", "great"], train_texts=serve_fixtures.TRAIN_TEXTS)
    folder = tmp_path_factory.mktemp("three-labels") / "stars"
    model.save(folder, m, tok, {"config": config.to_dict(cfg)})
    return folder


def test_the_page_gives_each_of_any_labels_its_own_colour(browser, tmp_path, three_label_model_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with running_server(three_label_model_dir, tmp_path) as server:
        browser.get(server.url + "/")
        browser.find_element(By.ID, "review").send_keys("A charming, clever film.")
        browser.find_element(By.ID, "submit").click()
        label = browser.find_element(By.ID, "label")
        WebDriverWait(browser, 20).until(lambda d: label.text.strip() != "")
        rows = browser.find_elements(By.CSS_SELECTOR, "#probabilities tbody tr")
        bars = {row.get_attribute("data-label"): row.find_element(By.CSS_SELECTOR, "div.bar")
                .value_of_css_property("background-color") for row in rows}
        label_colour = label.value_of_css_property("color")
    assert set(bars) == {"awful", "so-so", "great"}
    assert len(set(bars.values())) == 3, bars  # three labels, three colours
    assert label_colour == bars[label.text], (label_colour, bars)
