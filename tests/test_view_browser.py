"""`salience view` in headless Chromium (Debian's `chromium` + `chromium-driver`, driven by selenium): the
table sorts and filters, a row opens every model's map drawn over the image, the ranked views load, and
the first page of a 100,000-row study and one image with 20 models' maps are timed."""

import importlib.util
import shutil
import threading
import time

import pytest

from salience.view import make_server
from view_study import make_study

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER and importlib.util.find_spec("selenium")),
    reason="browser tests need Chromium and its driver: `apt-get install -y chromium chromium-driver` (Debian), "
    "and selenium: `pip install -e '.[test]'`",
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    yield driver
    driver.quit()


def serve(root):
    server = make_server(root, port=0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def wait(driver, script, timeout=10.0):
    """Poll `script` (JavaScript returning a value) until it is truthy; return the value."""
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for: {script}")


def column(driver, name):
    return driver.execute_script(
        "const i = [...document.querySelectorAll('#grid th')].findIndex(th => th.dataset.col === arguments[0]);"
        "return [...document.querySelectorAll('#grid tbody tr')].map(tr => tr.children[i].textContent);",
        name,
    )


def loaded(driver, view):
    """Wait until the page has loaded a new page of `view` (the marker is cleared first)."""
    return wait(driver, f"return document.body.dataset.loaded === '{view}'")


def reload_after(driver, view, action):
    driver.execute_script("document.body.dataset.loaded = ''")
    action()
    loaded(driver, view)


MAP_PIXELS = """
return [...document.querySelectorAll('canvas.map')].map(c => {
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let sum = 0; for (let i = 0; i < d.length; i += 4) sum += d[i] + d[i + 1] + d[i + 2];
  return {model: c.dataset.model, method: c.dataset.method, w: c.width, h: c.height, mean: sum / (d.length / 4 * 3),
          center: Array.from(c.getContext('2d').getImageData(c.width / 2, c.height / 2, 1, 1).data)};
});"""


def test_table_sort_filter_and_one_image_with_its_maps(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    server, url = serve(make_study(tmp_path / "study"))
    try:
        browser.get(url)
        loaded(browser, "table")
        assert len(column(browser, "image")) == 48
        header = lambda name: browser.find_element(By.CSS_SELECTOR, f'#grid th[data-col="{name}"]')
        reload_after(browser, "table", lambda: header("entropy_histogram").click())
        values = [float(v) for v in column(browser, "entropy_histogram")]
        assert values == sorted(values)
        reload_after(browser, "table", lambda: header("entropy_histogram").click())
        values = [float(v) for v in column(browser, "entropy_histogram")]
        assert values == sorted(values, reverse=True)
        reload_after(browser, "table", lambda: Select(browser.find_element(By.ID, "f-group")).select_by_value("CYBORG"))
        assert set(column(browser, "group")) == {"CYBORG"} and len(column(browser, "group")) == 24
        reload_after(browser, "table", lambda: Select(browser.find_element(By.ID, "f-class")).select_by_value("1"))
        assert set(column(browser, "class")) == {"1 (dog)"} and len(column(browser, "class")) == 12
        reload_after(browser, "table", lambda: browser.find_element(By.ID, "search").send_keys("img_00003"))
        assert column(browser, "image") == ["dog/img_00003.png"] * 2

        browser.find_element(By.CSS_SELECTOR, "#grid tbody tr").click()
        wait(browser, "return document.body.dataset.drawn === 'dog/img_00003.png'")
        picture = browser.execute_script("const c = document.getElementById('picture'); return [c.width, c.height]")
        assert picture == [32, 32]  # the image's resolution, maps (8 x 8) upsampled to it
        shared = browser.execute_script(MAP_PIXELS)
        assert [m["model"] for m in shared] == ["CE_s0", "CE_s1", "CYBORG_s0", "CYBORG_s1"]
        assert all(m["w"] == 32 and m["h"] == 32 and m["mean"] > 5 for m in shared)  # drawn, not blank
        # shared scale: CE's maps peak at half of CYBORG's and are drawn darker; normalised each on its own, not
        assert shared[0]["mean"] < shared[2]["mean"]
        browser.execute_script("document.body.dataset.drawn = ''")
        browser.find_element(By.ID, "per-map").click()
        own = browser.execute_script(MAP_PIXELS)
        assert own[0]["mean"] > shared[0]["mean"] and own[2]["mean"] == pytest.approx(shared[2]["mean"], rel=0.05)
    finally:
        server.shutdown()
        server.server_close()


def test_several_methods_are_drawn_method_by_method(browser, tmp_path):
    """A study of two methods: one image shows every model's map by each method, under a heading per method
    (each method on its own colour scale); filtered to one method, only its maps."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    methods = ("grad_cam@final", "input_x_gradient")
    server, url = serve(make_study(tmp_path / "study", methods=methods))
    try:
        browser.get(url)
        loaded(browser, "table")
        reload_after(browser, "table", lambda: browser.find_element(By.ID, "search").send_keys("img_00005"))
        browser.execute_script("document.body.dataset.drawn = ''")
        browser.find_element(By.CSS_SELECTOR, "#grid tbody tr").click()
        wait(browser, "return document.body.dataset.drawn === 'dog/img_00005.png'")
        maps = browser.execute_script(MAP_PIXELS)
        models = ["CE_s0", "CE_s1", "CYBORG_s0", "CYBORG_s1"]
        assert [(m["method"], m["model"]) for m in maps] == [(x, m) for x in methods for m in models]
        assert all(m["w"] == 32 and m["h"] == 32 and m["mean"] > 5 for m in maps)  # drawn, not blank
        assert [m["center"] for m in maps[:4]] != [m["center"] for m in maps[4:]]  # the methods' maps differ
        headings = browser.execute_script(
            "return [...document.querySelectorAll('#detail .method')].map(d => [d.dataset.method, "
            "d.querySelector('h4').textContent, d.querySelectorAll('canvas.map').length])"
        )
        assert [(h[0], h[2]) for h in headings] == [(x, 4) for x in methods]
        assert all(h[1].startswith(h[0] + " · colour scale") for h in headings)
        select = Select(browser.find_element(By.ID, "f-method"))
        reload_after(browser, "table", lambda: select.select_by_value("input_x_gradient"))
        assert set(column(browser, "method")) == {"input_x_gradient"} and len(column(browser, "method")) == 4
        browser.execute_script("document.body.dataset.drawn = ''")
        browser.find_element(By.CSS_SELECTOR, "#grid tbody tr").click()
        wait(browser, "return document.body.dataset.drawn === 'dog/img_00005.png'")
        maps = browser.execute_script(MAP_PIXELS)
        assert [m["method"] for m in maps] == ["input_x_gradient"] * 4
        assert not browser.find_elements(By.CSS_SELECTOR, "#detail .method")  # one method: no headings
    finally:
        server.shutdown()
        server.server_close()


def test_ranked_views_in_the_browser(browser, tmp_path):
    from selenium.webdriver.common.by import By

    server, url = serve(make_study(tmp_path / "study"))
    try:
        browser.get(url + "#disagreement")
        loaded(browser, "disagreement")
        diffs = [float(v) for v in column(browser, "abs_difference")]
        assert len(diffs) == 12 and diffs == sorted(diffs, reverse=True)
        browser.find_element(By.CSS_SELECTOR, "#grid tbody tr").click()
        wait(browser, "return document.querySelectorAll('canvas.map').length === 4")
        reload_after(browser, "instability", lambda: browser.find_element(By.LINK_TEXT, "Instability").click())
        ssim = [float(v) for v in column(browser, "ssim")]
        assert len(ssim) == 24 and ssim == sorted(ssim)
        reload_after(browser, "out-of-set", lambda: browser.find_element(By.LINK_TEXT, "Out-of-set images").click())
        assert column(browser, "index")[0] == "4"
        browser.find_element(By.CSS_SELECTOR, "#grid tbody tr").click()
        assert (
            wait(browser, "const i = document.getElementById('picture'); return i && i.complete && i.naturalWidth")
            == 32
        )
        browser.get(url + "report.html")
        browser.find_element(By.LINK_TEXT, "disagreement").click()
        loaded(browser, "disagreement")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow  # a timing (the suite checks behaviour; the page, its sorting and one image's maps: above)
def test_speed_100000_rows_and_20_models(browser, tmp_path):
    """First page of a 100,000-row study within 2 s; one image with 20 models' maps within 1 s. Each is
    timed three times (fresh page loads; three different images) and the fastest must meet the target, so
    that other jobs on a shared machine do not decide the result; all the times are printed."""
    from selenium.webdriver.common.by import By

    root = make_study(
        tmp_path / "study", n_images=5000, groups=dict.fromkeys(("CE", "Energy", "CYBORG", "X"), 5), n_oos=1
    )
    t0 = time.perf_counter()
    server, url = serve(root)
    startup = time.perf_counter() - t0
    assert server.RequestHandlerClass.study.ready.wait(60)  # stores and images opened in the background
    warm = time.perf_counter() - t0
    pages, images, sorts = [], [], []
    try:
        for _ in range(3):
            browser.get("about:blank")
            t0 = time.perf_counter()
            browser.get(url)
            loaded(browser, "table")
            pages.append(time.perf_counter() - t0)
        assert len(column(browser, "image")) == 100
        assert browser.execute_script("return document.getElementById('range').textContent") == "1–100 of 100000"
        for row in (7, 40, 93):
            browser.execute_script("document.body.dataset.drawn = ''")
            t0 = time.perf_counter()
            browser.find_elements(By.CSS_SELECTOR, "#grid tbody tr")[row].click()
            wait(browser, "return document.body.dataset.drawn")
            images.append(time.perf_counter() - t0)
            maps = browser.execute_script(MAP_PIXELS)
            assert len(maps) == 20 and all(m["w"] == 32 and m["mean"] > 5 for m in maps)
        for col in ("epg", "entropy_histogram", "model"):
            t0 = time.perf_counter()
            reload_after(browser, "table", browser.find_element(By.CSS_SELECTOR, f'#grid th[data-col="{col}"]').click)
            sorts.append(time.perf_counter() - t0)
        times = lambda ts: ", ".join(f"{t:.2f}" for t in ts)
        print(
            f"\nsalience view, 100,000 rows: server start {startup:.2f} s (stores and images open {warm:.2f} s); "
            f"first page {times(pages)} s; one image with 20 maps {times(images)} s; sort {times(sorts)} s"
        )
        assert min(pages) < 2.0 and min(images) < 1.0 and min(sorts) < 2.0
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_the_quick_demo_in_the_browser(browser, tmp_path):
    """`salience view` on what `salience demo --quick` writes: boxes and human maps, every group's map,
    the ranked views and the out-of-set images."""
    from selenium.webdriver.common.by import By
    from typer.testing import CliRunner

    from salience.cli import app

    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    server, url = serve(tmp_path / "demo")
    try:
        browser.get(url + "#disagreement")
        loaded(browser, "disagreement")
        browser.find_element(By.CSS_SELECTOR, "#grid tbody tr").click()
        wait(browser, "return document.body.dataset.drawn", timeout=60)  # the benchmark is generated first
        maps = browser.execute_script(MAP_PIXELS)
        # the human map, then one model per group, at the image's 64 x 64
        assert [m["model"] for m in maps] == [None, "CE_s0", "Energy_s0", "CYBORG_s0"]
        assert all(m["w"] == 64 and m["h"] == 64 for m in maps) and maps[0]["mean"] > 5
        assert "image + boxes" in browser.find_element(By.ID, "detail").text
        reload_after(browser, "out-of-set", lambda: browser.find_element(By.LINK_TEXT, "Out-of-set images").click())
        assert len(column(browser, "index")) == 16
        reload_after(browser, "instability", lambda: browser.find_element(By.LINK_TEXT, "Instability").click())
        assert "stability needs two or more models per group" in browser.find_element(By.ID, "note").text
    finally:
        server.shutdown()
        server.server_close()


# --- links, history, sticky columns, the column chooser (issue 31) ---------------------------------------


@pytest.fixture(scope="module")
def linked(tmp_path_factory):
    """One study served for the URL tests (the same study as the tests above)."""
    server, url = serve(make_study(tmp_path_factory.mktemp("linked") / "study"))
    yield url
    server.shutdown()
    server.server_close()


def open_link(driver, link, drawn=None):
    """Open `link` in a fresh page; wait for its rows (and for the image `drawn`, when given)."""
    driver.get("about:blank")
    driver.get(link)
    wait(driver, "return document.body.dataset.loaded")
    if drawn:
        wait(driver, f"return document.body.dataset.drawn === '{drawn}'")


def state(driver):
    """The hash, the image drawn, the selected rows' images, the group filter and the note shown."""
    return driver.execute_script(
        "return {hash: decodeURIComponent(location.hash), drawn: document.body.dataset.drawn,"
        " selected: [...document.querySelectorAll('#grid tbody tr.selected')].map(tr => tr.rec.image),"
        " group: document.getElementById('f-group') && document.getElementById('f-group').value,"
        " note: document.getElementById('url-note').textContent}"
    )


def test_a_link_opens_its_selection_and_back_restores_the_previous_one(browser, linked):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    link = linked + "#table?group=CYBORG&sort=epg&desc=1&image=dog%2Fimg_00003.png&image_class=1"
    open_link(browser, link, drawn="dog/img_00003.png")
    shown = state(browser)
    assert shown["group"] == "CYBORG" and shown["selected"] == ["dog/img_00003.png"] * 2 and not shown["note"]
    assert set(column(browser, "group")) == {"CYBORG"}
    epg = [float(v) for v in column(browser, "epg") if v]
    assert epg == sorted(epg, reverse=True)
    assert "dog/img_00003.png" in browser.find_element(By.CSS_SELECTOR, "#detail h3").text

    other = browser.find_elements(By.CSS_SELECTOR, "#grid tbody tr:not(.selected)")[0]
    image = other.find_elements(By.TAG_NAME, "td")[2].text
    other.click()
    wait(browser, f"return document.body.dataset.drawn === '{image}'")
    assert f"image={image}" in state(browser)["hash"]
    reload_after(browser, "table", lambda: Select(browser.find_element(By.ID, "f-group")).select_by_value("CE"))
    assert set(column(browser, "group")) == {"CE"}

    reload_after(browser, "table", browser.back)  # the filter undone, the selection kept
    assert state(browser)["group"] == "CYBORG" and set(column(browser, "group")) == {"CYBORG"}
    assert state(browser)["drawn"] == image
    browser.back()  # the selection undone: the link's image again
    wait(browser, "return document.body.dataset.drawn === 'dog/img_00003.png'")
    assert state(browser)["hash"] == "#table?desc=1&group=CYBORG&image=dog/img_00003.png&image_class=1&sort=epg"
    assert state(browser)["selected"] == ["dog/img_00003.png"] * 2
    browser.forward()
    wait(browser, f"return document.body.dataset.drawn === '{image}'")


def test_a_stale_link_is_ignored_with_a_note(browser, linked):
    from selenium.webdriver.common.by import By

    open_link(browser, linked + "#table?image=cat%2Fnone.png&group=Nobody&bogus=1&sort=nosuch")
    note = wait(
        browser, "const t = document.getElementById('url-note').textContent; return t.includes('none.png') && t"
    )
    assert all(word in note for word in ("group=Nobody", "bogus=1", "sort=nosuch"))
    assert browser.find_element(By.ID, "url-note").is_displayed()
    assert len(column(browser, "image")) == 48 and state(browser)["hash"] == "#table"
    assert "Select a row" in browser.find_element(By.ID, "detail").text
    open_link(browser, linked + "#nowhere")
    assert "nowhere" in state(browser)["note"] and len(column(browser, "image")) == 48
    open_link(browser, linked + "#disagreement?a=CYBORG&b=CE&measure=epg&image=cat%2Fimg_00000.png")
    wait(browser, "return document.body.dataset.drawn === 'cat/img_00000.png'")
    assert value_of(browser, "f-a") == "CYBORG" and value_of(browser, "f-measure") == "epg"
    assert "mean_CYBORG" in column_names(browser)


def value_of(driver, name):
    return driver.execute_script("return document.getElementById(arguments[0]).value", name)


def column_names(driver):
    return driver.execute_script("return [...document.querySelectorAll('#grid th')].map(th => th.dataset.col)")


def test_identity_columns_stay_while_the_measures_scroll(browser, linked):
    browser.set_window_size(1150, 1000)  # narrower: the measures do not fit
    try:
        open_link(browser, linked + "#table")
        where = (
            "const s = document.getElementById('scroller'); const x = c => document.querySelector("
            "`#grid th[data-col='${c}']`).getBoundingClientRect().left - s.getBoundingClientRect().left;"
            "return {image: x('image'), method: x('method'), epg: x('epg'), scroll: s.scrollLeft, "
            "overflow: s.scrollWidth - s.clientWidth, cell: document.querySelector('#grid tbody td:nth-child(3)')"
            ".getBoundingClientRect().left - s.getBoundingClientRect().left}"
        )
        before = browser.execute_script(where)
        assert before["overflow"] > 50  # the measures do not fit: the table scrolls sideways
        browser.execute_script("document.getElementById('scroller').scrollLeft = 10000")
        after = browser.execute_script(where)
        assert after["scroll"] > 50 and after["epg"] < before["epg"] - 50  # the measures moved
        for c in ("image", "method", "cell"):
            assert after[c] == pytest.approx(before[c], abs=0.5)  # the identity columns did not
        assert column_names(browser)[:5] == ["group", "model", "image", "class", "method"]
    finally:
        browser.set_window_size(1400, 1000)


def test_the_column_chooser_hides_columns_in_the_url(browser, linked):
    from selenium.webdriver.common.by import By

    open_link(browser, linked + "#table")
    browser.find_element(By.CSS_SELECTOR, "#columns summary").click()
    box = browser.find_element(By.CSS_SELECTOR, "#column-list input[data-col='entropy_histogram']")
    reload_after(browser, "table", box.click)
    assert "hide=entropy_histogram" in state(browser)["hash"]
    assert "entropy_histogram" not in column_names(browser) and "epg" in column_names(browser)
    assert "2 of 3 shown" in browser.find_element(By.CSS_SELECTOR, "#columns summary").text
    assert len(column(browser, "epg")) == 48
    reload_after(browser, "table", browser.back)
    assert "entropy_histogram" in column_names(browser) and "hide" not in state(browser)["hash"]
    open_link(browser, linked + "#table?hide=epg%2Centropy_histogram%2Cgroup")
    assert column_names(browser) == ["group", "model", "image", "class", "method", "split"]
    assert "hide=group" in state(browser)["note"] and "hide=epg,entropy_histogram" in state(browser)["hash"]
