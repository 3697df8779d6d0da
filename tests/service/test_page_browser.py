"""The page at / in a real browser (Debian's headless Chromium, driven by Playwright) against the real
``bentoml serve`` of two models, the default and a plain twin, so "all depths" has two rows."""
from pathlib import Path

import pytest

from bench.page_screenshots import CHROMIUM
from models.data import FASHION_MNIST_CLASSES
from tests.service.conftest import bad_uploads, encode, start_server

pytestmark = pytest.mark.server
SECOND = "plain20-fmnist"  # the family's cheapest to export (tests/export/test_default_model.py)
MODELS = ["resnet20-fmnist", SECOND]
UPLOAD = 22  # a test image (a Sneaker) that the default model gets right


@pytest.fixture(scope="module")
def server(default_model_tag):
    from export.default_model import ensure_served_models

    ensure_served_models([SECOND])
    srv = start_server(env={"RESNET_MODELS": ",".join(MODELS), "RESNET_API_WORKERS": "1"})
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: 'make bootstrap' (apt-get install chromium) installs it")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    """The page loaded, failing the test on any script error or any request that leaves the service."""
    page = browser.new_page()
    problems = []
    page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    page.on("request", lambda r: r.url.startswith((server.url, "blob:")) or problems.append(f"fetched {r.url}"))
    page.goto(server.url)
    page.locator("#samples button").first.wait_for()
    yield page
    page.close()
    assert not problems


def test_the_page_loads_with_the_served_models_and_samples(page):
    assert page.title() == "ResNet image classifier"
    assert page.locator("#model option").evaluate_all("os => os.map(o => o.value)") == MODELS
    card = page.locator("#card").inner_text()
    assert "resnet20-fmnist" in card and "residual" in card and "94.55%" in card
    assert page.locator("#samples button").count() == 12
    assert page.get_by_role("link", name="API docs").get_attribute("href") == "/docs"


def test_an_uploaded_test_png_gets_its_label(page, fmnist_test, tmp_path):
    images, labels = fmnist_test
    png = tmp_path / "sneaker.png"
    png.write_bytes(encode(images[UPLOAD], "PNG"))
    page.get_by_label("Choose an image file").set_input_files(png)
    first = page.locator("#predictions li").first
    first.wait_for()
    assert first.locator(".label").inner_text() == FASHION_MNIST_CLASSES[labels[UPLOAD]]
    assert page.locator("#predictions li").count() == 5
    timing = page.locator("#timing").inner_text()
    assert all(f in timing for f in ("model", "round trip")) and "–" not in timing, timing


def test_a_sample_is_classified_from_the_keyboard(page):
    page.get_by_role("button", name="Bag", exact=True).focus()
    page.keyboard.press("Enter")
    page.locator("#verdict").filter(has_text="right").wait_for()
    assert page.locator("#verdict").inner_text().startswith("resnet20-fmnist: Bag")


def test_all_depths_lists_every_served_model(page):
    page.get_by_role("button", name="Ankle boot", exact=True).click()
    page.locator("#predictions li").first.wait_for()
    page.get_by_role("button", name="All depths").click()
    page.locator("#depths").wait_for()
    rows = page.locator("#depth-rows tr")
    assert rows.evaluate_all("rs => rs.map(r => r.cells[0].textContent)") == MODELS
    assert "plain" in rows.nth(1).inner_text() and "ms" in rows.nth(1).inner_text()
    assert page.locator("#chart circle").count() == 1 and page.locator("#chart rect").count() == 1


@pytest.mark.parametrize("name, upload, code, message", [
    ("notes.txt", "text", "not_an_image", "the upload is text, not an image"),
    ("huge.png", "decompression bomb", "decompression_bomb", "too many pixels"),  # 20,000 x 20,000
])
def test_a_text_file_or_a_huge_image_shows_the_services_error(page, name, upload, code, message):
    data, status = bad_uploads()[upload]  # tests/service/conftest.py
    page.get_by_label("Choose an image file").set_input_files({"name": name, "mimeType": "", "buffer": data})
    error = page.get_by_role("alert")
    error.wait_for()
    text = error.inner_text()
    assert str(status) in text and f'"code":"{code}"' in text and message in text, text
