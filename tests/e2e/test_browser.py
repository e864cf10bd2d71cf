"""The page at ``/`` in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
driven with Selenium), as a person uses it: it lists the served models, takes an uploaded PNG (or a
seed) and shows the boxes, the mask and its legend, the captions, the classes or the grid, with
the values the gRPC path gives for the same image. A screenshot of each lands in
``test_output/browser/<task>.png`` (or under $CVTASKS_TEST_OUTPUT).

scripts/test.sh installs the browser and sets CVTASKS_BROWSER_TESTS=required, so there a missing
browser fails the test; elsewhere it is skipped with what to install."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

from services.client import CvtasksClient
from services.launch import running_server
from services.security import SecurityConfig

ROOT = Path(__file__).resolve().parents[2]
MODELS = {
    "detection": "tiny-detector",
    "segmentation": "tiny-segmenter",
    "captioning": "tiny-captioner",
    "classification": "tiny-classifier",
    "generation": "tiny-generator",
}
TOKEN = "browser-test-token-0123"


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    why = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    if os.environ.get("CVTASKS_BROWSER_TESTS") == "required":
        pytest.fail(f"the browser test {why}; scripts/test.sh installs them as root")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # headless, and none of the background connections a closed network refuses
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1400",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def store(tmp_path_factory, detector_store, segmenter_store, captioner_store, classifier_store, generator_store):
    root = tmp_path_factory.mktemp("browser-store")
    sources = (detector_store, segmenter_store, captioner_store, classifier_store, generator_store)
    for source, name in zip(sources, MODELS.values()):
        shutil.copytree(source / name, root / name)
    return root


@pytest.fixture(scope="module")
def served(store):
    with running_server(task=list(MODELS), model_store=store, http_port=0, max_batch_size=4) as address:
        with CvtasksClient(address, timeout=120) as client:
            yield address, client


@pytest.fixture(scope="module")
def shots() -> Path:
    folder = Path(os.environ.get("CVTASKS_TEST_OUTPUT", ROOT / "test_output")) / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def png(shapes_dir) -> Path:
    return shapes_dir / "images" / "test" / "000001.png"


# --------------------------------------------------------------------------- driving the page


def _open(browser, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, 60).until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))


def _by_id(browser, name: str):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, name)


def _choose(browser, model: str, options: dict[str, str | bool]) -> None:
    from selenium.webdriver.support.ui import Select

    Select(_by_id(browser, "model")).select_by_value(model)
    for name, value in options.items():
        field = _by_id(browser, f"opt-{name}")
        if field.tag_name == "select":
            Select(field).select_by_value(str(value))
        elif field.get_attribute("type") == "checkbox":
            if field.is_selected() != bool(value):
                field.click()
        else:
            field.clear()
            field.send_keys(str(value))


def _wait_for_answer(browser) -> str:
    """Wait until the page has drawn an answer or an error; return the status line."""
    from selenium.webdriver.support.ui import WebDriverWait

    output = _by_id(browser, "output")
    WebDriverWait(browser, 120).until(lambda d: output.get_attribute("data-state") in ("done", "error"))
    return _by_id(browser, "status").text


def _upload(browser, path: Path) -> str:
    """Choose ``path`` in the file field (the page runs the model at once) and wait for the answer."""
    browser.execute_script("document.getElementById('output').dataset.state = 'waiting'")
    _by_id(browser, "file").send_keys(str(path))
    return _wait_for_answer(browser)


def _run(browser) -> str:
    browser.execute_script("document.getElementById('output').dataset.state = 'waiting'")
    _by_id(browser, "run").click()
    return _wait_for_answer(browser)


def _rows(browser, table: str, *keys: str) -> list[tuple[str, ...]]:
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")
    return [tuple(row.get_attribute(f"data-{key}") for key in keys) for row in rows]


def _timings_shown(browser) -> dict[str, float]:
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.CSS_SELECTOR, "#timings tr[data-timing]")
    return {r.get_attribute("data-timing"): float(r.find_element(By.TAG_NAME, "td").text.split()[0]) for r in rows}


def _check_answered(browser, status: str) -> None:
    assert _by_id(browser, "output").get_attribute("data-state") == "done", status
    timings = _timings_shown(browser)
    assert set(timings) == {"decode_ms", "queue_ms", "inference_ms", "postprocess_ms", "total_ms"}
    assert timings["total_ms"] > 0


# --------------------------------------------------------------------------- the tests


def test_the_page_lists_every_served_model_with_its_task_device_and_classes(browser, served):
    address, client = served
    _open(browser, f"{address.http_url}/")
    listed = {name: (task, device) for name, task, device in _listed(browser)}
    assert listed == {m.name: (m.task, m.device) for m in client.list_models()}
    assert set(listed) == set(MODELS.values())
    classes = _by_id(browser, "models").text
    assert all(c in classes for c in client.get_model("tiny-classifier").classes)


def _listed(browser) -> list[tuple[str, str, str]]:
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.CSS_SELECTOR, "#models tbody tr")
    found = []
    for row in rows:
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        found.append((row.get_attribute("data-model"), cells[1], cells[3]))
    return found


def test_boxes_appear_with_the_values_grpc_gives(browser, served, png, shots):
    address, client = served
    _open(browser, f"{address.http_url}/")
    _choose(browser, MODELS["detection"], {"score_threshold": "0.3"})
    status = _upload(browser, png)
    _check_answered(browser, status)
    expected = client.detect(png.read_bytes(), model=MODELS["detection"], score_threshold=0.3).detections
    shown = _rows(browser, "detections", "class", "score", "box")
    assert expected, "the trained tiny detector finds shapes in this image"
    assert len(shown) == len(expected), status
    for (name, score, box), det in zip(shown, expected):
        assert name == det.class_name and float(score) == pytest.approx(det.score, abs=1e-6)
        b = det.box
        assert [float(v) for v in box.split(",")] == pytest.approx([b.x_min, b.y_min, b.x_max, b.y_max], abs=1e-3)
    assert f"{len(expected)} object(s) found" in status
    browser.save_screenshot(str(shots / "detection.png"))


def test_the_mask_is_overlaid_with_a_legend_of_the_area_shares_grpc_gives(browser, served, png, shots):
    address, client = served
    _open(browser, f"{address.http_url}/")
    _choose(browser, MODELS["segmentation"], {})
    status = _upload(browser, png)
    _check_answered(browser, status)
    expected = client.segment(png.read_bytes(), model=MODELS["segmentation"]).areas
    shown = {name: float(fraction) for name, fraction in _rows(browser, "legend", "class", "fraction")}
    assert shown == pytest.approx({a.class_name: a.area_fraction for a in expected}, abs=1e-9)
    # the overlay: the pixels the page recoloured are the pixels the label map puts off the background
    size = browser.execute_script("const c = document.getElementById('canvas'); return [c.width, c.height]")
    assert size == [128, 128]  # drawn at the image's own size
    recoloured = _recoloured_fraction(browser, png)
    background = next(a.area_fraction for a in expected if a.class_id == 0)
    assert recoloured == pytest.approx(1 - background, abs=0.01)
    browser.save_screenshot(str(shots / "segmentation.png"))


def _recoloured_fraction(browser, png: Path) -> float:
    """The share of the page's canvas pixels that differ from the uploaded image's."""
    data = base64.b64encode(png.read_bytes()).decode()
    return browser.execute_async_script(
        """const [data, done] = arguments;
        const image = new Image();
        image.onload = () => {
          const canvas = document.getElementById('canvas');
          const plain = document.createElement('canvas');
          plain.width = image.width; plain.height = image.height;
          plain.getContext('2d').drawImage(image, 0, 0);
          const a = plain.getContext('2d').getImageData(0, 0, plain.width, plain.height).data;
          const b = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
          let changed = 0;
          for (let i = 0; i < a.length; i += 4) {
            if (a[i] !== b[i] || a[i + 1] !== b[i + 1] || a[i + 2] !== b[i + 2]) changed += 1;
          }
          done(changed / (a.length / 4));
        };
        image.src = 'data:image/png;base64,' + data;""",
        data,
    )


def test_captions_appear_with_the_scores_grpc_gives(browser, served, png, shots):
    from selenium.webdriver.common.by import By

    address, client = served
    _open(browser, f"{address.http_url}/")
    _choose(browser, MODELS["captioning"], {"beam_size": "3", "num_captions": "2"})
    status = _upload(browser, png)
    _check_answered(browser, status)
    expected = client.caption(png.read_bytes(), model=MODELS["captioning"], beam_size=3, num_captions=2).captions
    items = browser.find_elements(By.CSS_SELECTOR, "#captions li")
    shown = [(i.find_element(By.CLASS_NAME, "caption").text, float(i.get_attribute("data-score"))) for i in items]
    assert [text for text, _ in shown] == [c.text for c in expected] and len(shown) == 2
    assert [score for _, score in shown] == pytest.approx([c.score for c in expected], abs=1e-9)
    browser.save_screenshot(str(shots / "captioning.png"))


def test_classes_and_the_grad_cam_overlay_appear_as_grpc_gives_them(browser, served, png, shots):
    address, client = served
    _open(browser, f"{address.http_url}/")
    _choose(browser, MODELS["classification"], {"top_k": "3", "explain": True})
    status = _upload(browser, png)
    _check_answered(browser, status)
    expected = client.classify(png.read_bytes(), model=MODELS["classification"], top_k=3, explain=True)
    shown = _rows(browser, "classes", "class", "probability")
    assert [name for name, _ in shown] == [c.class_name for c in expected.classes]
    assert [float(p) for _, p in shown] == pytest.approx([c.probability for c in expected.classes], abs=1e-6)
    overlay = _by_id(browser, "explanation").get_attribute("src")
    assert base64.b64decode(overlay.split(",", 1)[1]) == expected.explanation_png
    browser.save_screenshot(str(shots / "classification.png"))


def test_a_grid_and_an_interpolation_strip_are_the_images_grpc_draws(browser, served, shots):
    from selenium.webdriver.common.by import By

    address, client = served
    _open(browser, f"{address.http_url}/")
    _choose(browser, MODELS["generation"], {"mode": "grid", "seed": "7", "count": "16"})
    _check_answered(browser, _run(browser))
    tiles = browser.find_elements(By.CSS_SELECTOR, "#grid img")
    expected = client.generate(count=16, seed=7, model=MODELS["generation"]).images
    assert [_png(t) for t in tiles] == [i.png for i in expected]
    browser.save_screenshot(str(shots / "generation.png"))
    _choose(browser, MODELS["generation"], {"mode": "interpolation", "start_seed": "3", "end_seed": "4", "steps": "6"})
    _check_answered(browser, _run(browser))
    strip = browser.find_elements(By.CSS_SELECTOR, "#strip img")
    path = client.interpolate(3, 4, steps=6, model=MODELS["generation"]).images
    assert [_png(t) for t in strip] == [i.png for i in path]
    browser.save_screenshot(str(shots / "interpolation.png"))


def _png(tile) -> bytes:
    return base64.b64decode(tile.get_attribute("src").split(",", 1)[1])


def test_a_file_that_is_not_an_image_shows_the_servers_message_and_the_next_one_works(browser, served, png, tmp_path):
    address, _ = served
    _open(browser, f"{address.http_url}/")
    _choose(browser, MODELS["detection"], {})
    bad = tmp_path / "notes.png"
    bad.write_text("these are notes, not pixels")
    status = _upload(browser, bad)
    assert _by_id(browser, "output").get_attribute("data-state") == "error"
    assert status.startswith("400:") and "unrecognised image format" in status
    _check_answered(browser, _upload(browser, png))


def test_with_tokens_the_page_asks_for_one_and_lists_the_models_once_given(browser, generator_store):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    security = SecurityConfig(tokens=(TOKEN,))
    with running_server(
        task="generation", model_store=generator_store, models=[MODELS["generation"]], http_port=0, security=security
    ) as address:
        _open(browser, f"{address.http_url}/")  # a new origin (port): no token kept for it
        status = _by_id(browser, "models-status")
        assert "401" in status.text and "token" in status.text
        token = _by_id(browser, "token")
        token.send_keys(TOKEN, Keys.TAB)  # the change event lists the models again, with the token
        WebDriverWait(browser, 30).until(lambda d: "1 model(s) served" in status.text)
        assert [name for name, _, _ in _listed(browser)] == [MODELS["generation"]]
        _check_answered(browser, _run(browser))
