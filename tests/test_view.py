"""`salience view`: the queries, one image's maps, the ranked views, and safety (read-only, nothing outside
the study folder, 400 on malformed queries). The browser tests are in test_view_browser.py."""

import base64
import http.client
import json
import os
import threading

import numpy as np
import pytest

from salience.store import MapStore
from salience.study.pipeline import store_paths
from salience.view import Study, make_server
from view_study import blob, make_study

METHODS = ("grad_cam@final", "input_x_gradient")


def _serve(root):
    server = make_server(root, port=0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("view")
    root = make_study(base / "study")
    (base / "secret.txt").write_text("outside the study")
    os.symlink(base / "secret.txt", root / "link.txt")
    os.symlink(base, root / "up")
    server = _serve(root)
    yield server, root
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def served_methods(tmp_path_factory):
    """A study of two methods (stores in `stores/<spec>/<model>`), two groups of two models."""
    root = make_study(tmp_path_factory.mktemp("view_methods") / "study", methods=METHODS)
    server = _serve(root)
    yield server, root
    server.shutdown()
    server.server_close()


def get(served, path, method="GET", host=None):
    server, _ = served
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", host or f"127.0.0.1:{server.server_address[1]}")
    conn.endheaders()
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, r.getheader("Content-Type"), body


def api(served, path):
    status, kind, body = get(served, path)
    assert kind == "application/json", (path, status, body[:200])
    return status, json.loads(body)


def _decoded(entry) -> np.ndarray:
    return np.frombuffer(base64.b64decode(entry["data"]), dtype="<f4").reshape(entry["shape"])


def test_table_sorts_filters_searches_and_pages(served):
    status, page = api(served, "/api/rows?sort=entropy_histogram&desc=1&limit=5")
    assert status == 200 and page["total"] == 48 and len(page["rows"]) == 5
    col = page["columns"].index("entropy_histogram")
    values = [r[col] for r in page["rows"]]
    assert values == sorted(values, reverse=True)
    _, page = api(served, "/api/rows?sort=epg&limit=1000")
    epg = [r[page["columns"].index("epg")] for r in page["rows"]]
    assert epg[-12:] == [None] * 12 and epg[:36] == sorted(epg[:36])  # blanks last
    _, page = api(served, "/api/rows?group=CYBORG&class=1&limit=1000")
    assert page["total"] == 12 and {(r[0], r[3]) for r in page["rows"]} == {("CYBORG", "1")}
    _, page = api(served, "/api/rows?model=CE_s1&method=grad_cam%40final&split=test&search=IMG_0000&limit=1000")
    assert page["total"] == 10 and {r[1] for r in page["rows"]} == {"CE_s1"}
    assert sorted(r[2] for r in page["rows"]) == sorted(f"{('cat', 'dog')[i % 2]}/img_{i:05d}.png" for i in range(10))
    _, first = api(served, "/api/rows?sort=image&limit=10")
    _, second = api(served, "/api/rows?sort=image&limit=10&offset=10")
    assert first["rows"][-1][2] <= second["rows"][0][2] and second["offset"] == 10
    _, none = api(served, "/api/rows?group=nobody")
    assert none["total"] == 0


def test_item_has_every_model_map_from_the_stores_and_the_picture(served):
    _, root = served
    status, item = api(served, "/api/item?image=dog%2Fimg_00003.png")
    assert status == 200 and item["class"] == "1"
    assert [m["model"] for m in item["maps"]] == ["CE_s0", "CE_s1", "CYBORG_s0", "CYBORG_s1"]
    store = MapStore(root / "stores" / "CYBORG_s1")
    pos = store.meta.image_ids.index("dog/img_00003.png")
    want = store.read(pos, pos + 1)[0][0].numpy()
    got = _decoded(item["maps"][3])
    assert np.array_equal(got, want) and item["maps"][3]["max"] == pytest.approx(float(want.max()))
    assert item["picture"]["width"] == 32 and item["picture"]["boxes"] == []
    status, kind, png = get(served, item["picture"]["url"])
    assert status == 200 and kind == "image/png" and png[:4] == b"\x89PNG"
    status, kind, png = get(served, "/api/out-of-set.png?index=2")
    assert status == 200 and png[:4] == b"\x89PNG"


def test_ranked_views(served):
    _, page = api(served, "/api/disagreement?measure=entropy_histogram&a=CE&b=CYBORG&limit=100")
    assert page["total"] == 12 and page["columns"][:2] == ["image", "class"]
    diffs = [r[page["columns"].index("abs_difference")] for r in page["rows"]]
    assert diffs == sorted(diffs, reverse=True)
    row = page["rows"][0]
    assert row[4] == pytest.approx(row[2] - row[3])
    _, ce = api(served, f"/api/rows?group=CE&search={row[0]}&limit=10")
    assert row[2] == pytest.approx(np.mean([r[6] for r in ce["rows"]]))
    _, page = api(served, "/api/instability?group=CYBORG")
    ssim = [r[page["columns"].index("ssim")] for r in page["rows"]]
    assert page["total"] == 12 and ssim == sorted(ssim)
    _, page = api(served, "/api/out-of-set?sort=CYBORG_s0&desc=1")
    assert page["total"] == 5 and page["rows"][0][page["columns"].index("index")] == 4


@pytest.mark.parametrize(
    "query, message",
    [
        ("/api/rows?limit=abc", "limit: expected an integer"),
        ("/api/rows?limit=100000", "limit: must be in"),
        ("/api/rows?offset=-1", "offset: must be in"),
        ("/api/rows?sort=nope", "sort: no column 'nope'"),
        ("/api/rows?desc=2", "desc: must be in"),
        ("/api/rows?colour=red", "unknown parameter 'colour'"),
        ("/api/rows?limit=1&limit=2", "limit: given more than once"),
        ("/api/rows?search=%ff", "query string: cannot be decoded"),
        ("/api/disagreement?measure=nope", "measure: no measure 'nope'"),
        ("/api/disagreement?a=nobody", "a: no group 'nobody'"),
        ("/api/item", "image: required"),
        ("/api/item?image=x&zoom=2", "unknown parameter 'zoom'"),
        ("/api/item?image=dog%2Fimg_00003.png&method=nope", "method: no method 'nope'; methods: grad_cam@final"),
        ("/api/instability?model=CE_s0", "unknown parameter 'model'"),
        ("/api/out-of-set.png?index=x", "index: expected an integer"),
        ("/api/out-of-set?search=x", "search: this view has no image paths"),
        ("/api/meta?x=1", "meta takes no parameters"),
    ],
)
def test_malformed_queries_get_400_with_a_message(served, query, message):
    status, body = api(served, query)
    assert status == 400 and message in body["error"] and "Traceback" not in body["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/files/../secret.txt",
        "/files/%2e%2e/secret.txt",
        "/files/%2E%2E%2Fsecret.txt",
        "/files/%252e%252e/secret.txt",
        "/files/..%5csecret.txt",
        "/files/link.txt",
        "/files/up/secret.txt",
        "/files//etc/passwd",
        "/files/%2fetc%2fpasswd",
        "/files/stores/../../secret.txt",
        "/static/../../../../etc/passwd",
        "/static/%2e%2e%2fserver.py",
        "/../secret.txt",
        "/files/%00",
        "/api/image.png?image=..%2F..%2Fsecret.txt",
    ],
)
def test_nothing_outside_the_study_folder_is_served(served, path):
    status, _, body = get(served, path)
    assert status in (400, 404) and b"outside the study" not in body and b"root:" not in body


def test_files_of_the_study_are_served_read_only(served):
    _, root = served
    status, _, body = get(served, "/files/per_image.csv")
    assert status == 200 and body == (root / "per_image.csv").read_bytes()
    for method in ("POST", "PUT", "DELETE"):
        status, _, _ = get(served, "/files/per_image.csv", method=method)
        assert status == 501
    assert (root / "per_image.csv").read_bytes() == body
    status, _, _ = get(served, "/api/rows", host="evil.example:80")
    assert status == 400  # DNS rebinding: a loopback server answers only to its own name


def test_report_links_to_the_views(served):
    status, kind, body = get(served, "/report.html")
    assert status == 200 and kind.startswith("text/html")
    text = body.decode()
    for view in ("#table", "#disagreement", "#instability", "#out-of-set"):
        assert f'href="/{view}"' in text
    assert "<h1>Report</h1>" in text


def test_not_a_study_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="per_image.csv: not found"):
        make_server(tmp_path, port=0)
    (tmp_path / "per_image.csv").write_text("group,model,image,class\nA,m,x,0,extra\n")
    with pytest.raises(ValueError, match="per_image.csv: 4 column names but 5 columns"):
        make_server(tmp_path, port=0)
    (tmp_path / "per_image.csv").write_text("group,model,image,class,epg\nA,m,x,0,high\n")
    with pytest.raises(ValueError, match="per_image.csv, column epg: not a number"):
        make_server(tmp_path, port=0)


def test_cli_refuses_a_folder_that_is_not_a_study(tmp_path):
    from typer.testing import CliRunner

    from salience.cli import app

    result = CliRunner().invoke(app, ["view", str(tmp_path)])
    assert result.exit_code == 2 and "per_image.csv: not found" in result.output


def test_a_measure_folder_without_images(tmp_path):
    """`salience measure --stores` output: models named by their store paths, no results.json: the maps are
    read from those stores and drawn alone, with the reason."""
    import csv
    import shutil

    from salience.view import Study

    study = make_study(tmp_path / "study", n_images=4, groups={"all": 2})
    out = tmp_path / "measured"
    out.mkdir()
    stores = {m: str(study / "stores" / m) for m in ("all_s0", "all_s1")}
    with open(study / "per_image.csv") as f, open(out / "per_image.csv", "w", newline="") as g:
        rows = list(csv.reader(f))
        csv.writer(g).writerows([rows[0]] + [[r[0], stores[r[1]], *r[2:]] for r in rows[1:]])
    shutil.copy(study / "stability.csv", out)
    view = Study(out)
    item = view.item({"image": "cat/img_00000.png"})
    assert [m["model"] for m in item["maps"]] == list(stores.values())
    assert item["picture"] is None and "results.json names no data images" in item["no_picture"]
    assert view.rows({"model": stores["all_s1"]})["total"] == 4


def test_cli_serves_on_the_loopback(served, tmp_path):
    import re
    import subprocess
    import sys
    import urllib.request

    _, root = served
    proc = subprocess.Popen(
        [sys.executable, "-m", "salience", "view", str(root), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        with urllib.request.urlopen(url + "api/meta", timeout=20) as r:
            assert json.loads(r.read())["rows"] == 48
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_probes_keep_each_out_of_set_images_score():
    """The out-of-set view ranks by `curves.out_of_set.scores_out`: the score of each image's predicted class."""
    import functools

    import torch

    from salience.attribution import attribute
    from salience.measures.probes import predict
    from salience.measures.suite import probe_suite

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 16 * 16, 3)
    )
    model.eval()
    x, oos = torch.rand(4, 3, 16, 16), torch.rand(5, 3, 16, 16)
    target = torch.tensor([0, 1, 2, 0])
    explain = functools.partial(attribute, "gradient", model)
    maps = explain(x, target)
    out = probe_suite(model, explain, x, target, maps, out_of_set=oos, deletion_steps=4, names=["deletion_auc"])
    want, _ = predict(model, oos)
    assert out["curves"]["out_of_set"]["scores_out"] == pytest.approx(want.double().tolist())


# --- studies of several methods ----------------------------------------------------------------------------


def test_several_methods_every_map_comes_from_its_own_store(served_methods):
    """Each (model, method) has its own store (`stores/<spec>/<model>`) and its rows' positions in it: every map
    `item` returns, for every image, equals the map read from that store at that image's item."""
    _, root = served_methods
    models = ["CE_s0", "CE_s1", "CYBORG_s0", "CYBORG_s1"]
    paths = store_paths(root, models, list(METHODS))
    assert all((p / "zarr.json").is_file() for p in paths.values()) and not (root / "stores" / "CE_s0").exists()
    stores = {key: MapStore(p) for key, p in paths.items()}
    ids = stores[("CE_s0", METHODS[0])].meta.image_ids
    _, meta = api(served_methods, "/api/meta")
    assert meta["methods"] == list(METHODS) and meta["rows"] == 96
    for image in ids:
        status, item = api(served_methods, f"/api/item?image={image.replace('/', '%2F')}")
        assert status == 200
        got = [(m["method"], m["model"]) for m in item["maps"]]
        assert got == [(spec, model) for spec in METHODS for model in models]  # by method, then group, model
        for m in item["maps"]:
            store = stores[(m["model"], m["method"])]
            pos = store.meta.image_ids.index(image)
            want = store.read(pos, pos + 1)[0][0].numpy()
            assert np.array_equal(_decoded(m), want), (image, m["model"], m["method"])
            gi, k = divmod(models.index(m["model"]), 2)
            assert np.array_equal(want, blob(len(ids), (8, 8), gi, k, METHODS.index(m["method"]))[pos])
        a, b = (_decoded(m) for m in item["maps"][:: len(models)][:2])
        assert not np.array_equal(a, b)  # the two methods' maps of one model differ


def test_several_methods_filter_and_item_method(served_methods):
    _, page = api(served_methods, "/api/rows?method=input_x_gradient&limit=1000")
    col = page["columns"].index("method")
    assert page["total"] == 48 and {r[col] for r in page["rows"]} == {"input_x_gradient"}
    _, page = api(served_methods, "/api/rows?method=grad_cam%40final&model=CE_s1&limit=1000")
    assert page["total"] == 12 and {(r[1], r[col]) for r in page["rows"]} == {("CE_s1", "grad_cam@final")}
    _, page = api(served_methods, "/api/instability?group=CE&method=input_x_gradient&class=1")
    assert page["columns"][:4] == ["group", "method", "image", "class"] and page["total"] == 6
    assert {(r[0], r[1], r[3]) for r in page["rows"]} == {("CE", "input_x_gradient", "1")}
    _, everything = api(served_methods, "/api/instability?limit=1000")
    assert everything["total"] == 48
    _, page = api(served_methods, "/api/disagreement?measure=entropy_histogram&method=input_x_gradient")
    assert page["columns"][:3] == ["image", "class", "method"] and page["total"] == 12
    assert {r[2] for r in page["rows"]} == {"input_x_gradient"}
    _, page = api(served_methods, "/api/out-of-set")
    assert "CE_s0 · grad_cam@final" in page["columns"] and "CYBORG_s1 · input_x_gradient" in page["columns"]
    status, item = api(served_methods, "/api/item?image=cat%2Fimg_00004.png&method=input_x_gradient")
    assert status == 200 and {m["method"] for m in item["maps"]} == {"input_x_gradient"} and len(item["maps"]) == 4
    status, body = api(served_methods, "/api/item?image=cat%2Fimg_00004.png&method=gradient")
    assert status == 400 and body["error"] == "method: no method 'gradient'; methods: grad_cam@final, input_x_gradient"


def test_a_study_from_before_several_methods(tmp_path):
    """No method column in per_image.csv or stability.csv and no `spec` in summary.json: each model's rows
    take its store's method and layer, as before."""
    import csv

    root = make_study(tmp_path / "study", n_images=4)
    for name in ("per_image.csv", "stability.csv"):
        with open(root / name) as f:
            rows = list(csv.reader(f))
        drop = rows[0].index("method")
        with open(root / name, "w", newline="") as f:
            csv.writer(f).writerows([r[:drop] + r[drop + 1 :] for r in rows])
    summary = json.loads((root / "summary.json").read_text())
    for s in summary["stores"].values():
        del s["spec"]
    (root / "summary.json").write_text(json.dumps(summary))
    view = Study(root)
    assert view.methods == ["grad_cam@final"] and view.rows({"method": "grad_cam@final"})["total"] == 16
    item = view.item({"image": "dog/img_00003.png"})
    store = MapStore(root / "stores" / "CYBORG_s0")
    assert [m["method"] for m in item["maps"]] == ["grad_cam@final"] * 4
    assert np.array_equal(_decoded(item["maps"][2]), store.read(3, 4)[0][0].numpy())
    assert view.instability({"group": "CE"})["total"] == 4
    assert "CE_s0" in view.out_of_set({})["columns"]


@pytest.mark.parametrize("specs", [["grad_cam@final"], ["grad_cam@final", "input_x_gradient"]])
def test_a_study_written_by_measure_stores(tmp_path, specs):
    """The real writer (`measure_stores`, stores where `store_paths` puts them, models named as the study names
    them): `Study` opens its files and every map `item` returns is its store's. Guards against format drift."""
    import torch

    from salience.measures.run import measure_stores
    from salience.store import StoreMeta, fill

    out, n = tmp_path / "out", 6
    models = {"A": ["A_0", "A_1"], "B": ["B_0", "B_1"]}
    paths = store_paths(out, [m for ms in models.values() for m in ms], specs)
    ids = tuple(f"im{i}" for i in range(n))
    maps = {}
    for seed, (model, spec) in enumerate(paths):
        method, _, layer = spec.partition("@")
        meta = StoreMeta(
            model_hash=model,
            method=method,
            layer=layer or None,
            target_policy="true",
            resolution=(16, 16),
            data="mem",
            split="test",
            image_ids=ids,
        )
        store = MapStore.create(paths[(model, spec)], meta, (8, 8), chunk_size=4)
        maps[(model, spec)] = torch.rand(n, 8, 8, generator=torch.Generator().manual_seed(seed)) ** 2
        fill(store, lambda a, b, m=maps[(model, spec)]: (m[a:b], torch.arange(a, b) % 2))
    measure_stores(
        {g: [paths[(m, spec)] for spec in specs for m in ms] for g, ms in models.items()},
        out,
        n_boot=20,
        n_perm=20,
        names={str(p): model for (model, _), p in paths.items()},
        select=["entropy_histogram", "sparseness", "stability_ssim", "stability_pearson"],
    )
    view = Study(out)
    assert view.methods == specs and view.measures == ["entropy_histogram", "sparseness"]
    assert view.table.n == n * len(paths)
    for i, image in enumerate(ids):
        item = view.item({"image": image})
        assert item["class"] == str(i % 2)
        assert [(m["method"], m["model"]) for m in item["maps"]] == [
            (s, m) for s in specs for m in ["A_0", "A_1", "B_0", "B_1"]
        ]
        for m in item["maps"]:
            assert np.array_equal(_decoded(m), maps[(m["model"], m["method"])][i].numpy())
    stab = view.instability({"method": specs[-1], "group": "B", "limit": "100"})
    assert stab["columns"] == ["group", "method", "image", "class", "ssim", "pearson"] and stab["total"] == n
    assert view.disagreement({"a": "A", "b": "B"})["total"] == n * len(specs)
