"""What `salience view` reads from a study folder: the per-image table, stability, out-of-set scores, the
maps (lazily, from the stores) and the images (from the data set the study names). Nothing is written."""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import math
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from salience.measures.registry import MEASURES

FILTERS = ("group", "model", "class", "method", "split")
SIMILARITIES = ("ssim", "pearson", "spearman", "topk_iou")
LABELS = ("group", "model", "method", "image", "class")  # the columns of per_image.csv that are not measures
MAX_LIMIT = 1000


class BadRequest(ValueError):
    """A malformed or unknown query parameter: the server answers 400 with the message."""


class NotFound(LookupError):
    """No such image, model or file: the server answers 404 with the message."""


def _int(params: dict, key: str, default: int, lo: int, hi: int) -> int:
    text = params.get(key)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{key}: expected an integer, got {text!r}") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{key}: must be in [{lo}, {hi}], got {value}")
    return value


class Table:
    """Columns of equal length queried one page at a time: labels (str, kept as codes into their sorted
    unique values) and numbers (float64, NaN where blank)."""

    def __init__(
        self, labels: Mapping[str, list[str] | np.ndarray], numbers: dict[str, np.ndarray], search: str = "image"
    ):
        self.order = list(labels) + list(numbers)
        self.codes, self.values = {}, {}
        for k, v in labels.items():
            self.values[k], self.codes[k] = np.unique(np.asarray(v, dtype=str), return_inverse=True)
        self.numbers = {k: np.asarray(v, dtype=np.float64) for k, v in numbers.items()}
        self.n = len(next(iter({**self.codes, **self.numbers}.values())))
        self.search = search

    def label(self, key: str) -> np.ndarray:
        return self.values[key][self.codes[key]]

    def query(self, params: dict, filters: tuple[str, ...], sort: str, desc: bool, extra: tuple[str, ...] = ()) -> dict:
        """One page: `sort` (any column), `desc` (0/1), `offset`, `limit`, `search` (substring of the search
        column) and an exact value for each of `filters`. Unknown parameters are refused."""
        allowed = {"sort", "desc", "offset", "limit", "search", *filters, *extra}
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise BadRequest(f"unknown parameter {unknown[0]!r}; expected one of {', '.join(sorted(allowed))}")
        sort = params.get("sort", sort)
        if sort not in self.order:
            raise BadRequest(f"sort: no column {sort!r}; columns: {', '.join(self.order)}")
        desc = bool(_int(params, "desc", int(desc), 0, 1))
        offset = _int(params, "offset", 0, 0, 10**9)
        limit = _int(params, "limit", 100, 1, MAX_LIMIT)
        mask = np.ones(self.n, dtype=bool)
        for key in filters:
            value = params.get(key)
            if value:
                hit = np.searchsorted(self.values[key], value)
                if hit == len(self.values[key]) or self.values[key][hit] != value:
                    mask[:] = False  # a value no row has: no rows
                else:
                    mask &= self.codes[key] == hit
        text = params.get("search", "").lower()
        if text:
            if self.search not in self.values:
                raise BadRequest("search: this view has no image paths to search")
            found = np.flatnonzero(np.char.find(np.char.lower(self.values[self.search]), text) >= 0)
            mask &= np.isin(self.codes[self.search], found)
        rows = np.flatnonzero(mask)
        if sort in self.numbers:
            v = self.numbers[sort][rows]
            order = np.where(np.isnan(v), np.inf, -v if desc else v)  # blanks last either way
        else:
            order = -self.codes[sort][rows] if desc else self.codes[sort][rows]
        page = rows[np.argsort(order, kind="stable")[offset : offset + limit]]
        return {
            "columns": self.order,
            "numeric": list(self.numbers),
            "rows": [[self._cell(k, i) for k in self.order] for i in page.tolist()],
            "total": int(len(rows)),
            "offset": offset,
            "sort": sort,
            "desc": desc,
        }

    def _cell(self, key: str, i: int):
        if key in self.numbers:
            v = float(self.numbers[key][i])
            return None if math.isnan(v) else v
        return str(self.values[key][self.codes[key][i]])


def _floats(column: list[str], where: str) -> np.ndarray:
    try:
        return np.array([float(x) if x else np.nan for x in column], dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"{where}: not a number ({err})") from None


def _read_csv(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            columns = list(zip(*reader, strict=True)) or [()] * len(header)
    except (OSError, StopIteration, csv.Error, ValueError) as err:  # ValueError: rows of different lengths
        raise ValueError(f"{path}: unreadable ({type(err).__name__}: {err})") from None
    if len(columns) != len(header):
        raise ValueError(f"{path}: {len(header)} column names but {len(columns)} columns")
    return header, {h: list(c) for h, c in zip(header, columns, strict=True)}


def _spec(store: dict) -> str:
    """The method spec of a store's summary in `summary.json`: its `spec`, or for a study written before
    several methods, `method@layer` (the label the viewer showed then)."""
    if store.get("spec"):
        return str(store["spec"])
    return str(store.get("method", "")) + (f"@{store['layer']}" if store.get("layer") else "")


def _encode(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode()


def _png(image) -> bytes:
    """PNG bytes of a `[C, H, W]` image in [0, 1]."""
    from PIL import Image

    a = (image.float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(buf, format="PNG")
    return buf.getvalue()


class Study:
    """A study folder (`salience study`, `demo` or `measure`) as the viewer needs it; maps and images are read
    on demand and kept open."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        if not (self.root / "per_image.csv").is_file():
            raise FileNotFoundError(f"{self.root / 'per_image.csv'}: not found; is {root} a study folder?")
        self.results = self._json("results.json")
        summary = self._json("summary.json")
        # (model, method spec) -> (store path, its summary): one model has a store per method
        self.stores_meta: dict[tuple[str, str], tuple[str, dict]] = {}
        for path, s in summary.get("stores", {}).items():
            self.stores_meta[(str(s.get("model", path)), _spec(s))] = (path, s)
        header, cols = _read_csv(self.root / "per_image.csv")
        missing = [k for k in ("group", "model", "image", "class") if k not in cols]
        if missing:
            raise ValueError(f"{self.root / 'per_image.csv'}: no column {missing[0]!r}")
        self.measures = [h for h in header if h not in LABELS]
        known = [m for m in MEASURES if m in self.measures]
        self.measures = known + [m for m in self.measures if m not in known]
        models = np.asarray(cols["model"], dtype=str)
        model_names, model_codes = np.unique(models, return_inverse=True)
        if "method" in cols:
            methods = np.asarray(cols["method"], dtype=str)
        else:  # a study from before several methods: the method (and layer) of the model's store
            specs: dict[str, str] = {}
            for model, spec in self.stores_meta:
                specs.setdefault(model, spec)
            methods = np.asarray([specs.get(m, "") for m in model_names.tolist()] or [""], dtype=str)[model_codes]
        method_names, method_codes = np.unique(methods, return_inverse=True)
        first = np.unique(method_codes, return_index=True)[1]
        self.methods = [str(method_names[c]) for c in method_codes[np.sort(first)].tolist()]  # in study order
        # each (model, method)'s rows are its store's items in order: the row's position in the store
        pair_codes, self.pair = np.unique(model_codes * len(method_names) + method_codes, return_inverse=True)
        self.pairs = [
            (str(model_names[c // len(method_names)]), str(method_names[c % len(method_names)]))
            for c in pair_codes.tolist()
        ]
        order = np.argsort(self.pair, kind="stable")
        starts = np.concatenate([[0], np.cumsum(np.bincount(self.pair, minlength=len(self.pairs)))[:-1]])
        self.position = np.zeros(len(models), dtype=np.int64)
        self.position[order] = np.arange(len(models)) - starts[self.pair[order]]
        split = np.asarray([self._meta(*p).get("split", "") for p in self.pairs] or [""], dtype=str)
        labels: dict[str, Any] = {
            "group": cols["group"],
            "model": models,
            "image": cols["image"],
            "class": cols["class"],
            "method": methods,
            "split": split[self.pair],
        }
        self.table = Table(labels, {m: _floats(cols[m], f"per_image.csv, column {m}") for m in self.measures})
        self.by_image = np.argsort(self.table.codes["image"], kind="stable")
        self.groups = list(dict.fromkeys(self.results.get("groups", {}) or self.table.label("group").tolist()))
        self.groups = [g for g in self.groups if g in set(self.table.values["group"].tolist())]
        self.stability = self._stability()
        self.oos = self._oos()
        self._stores: dict[tuple[str, str], Any] = {}
        self._data: dict[str, Any] = {}
        self._lock, self._data_lock = threading.Lock(), threading.Lock()
        self._disagreement: dict[tuple, Table] = {}
        self.ready = threading.Event()  # set when `warm` has opened the stores and data sets

    def _json(self, name: str) -> dict:
        path = self.root / name
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except ValueError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None

    def _meta(self, model: str, method: str) -> dict:
        """The summary of the store of `model`'s maps by `method` (its only store when the spec differs)."""
        if (model, method) in self.stores_meta:
            return self.stores_meta[(model, method)][1]
        own = [s for (m, _), (_, s) in self.stores_meta.items() if m == model]
        return own[0] if len(own) == 1 else {}

    def _stability(self) -> Table | None:
        path = self.root / "stability.csv"
        if not path.is_file():
            return None
        header, cols = _read_csv(path)
        labels = [h for h in header if h in ("group", "method", "image", "class")]
        missing = [k for k in ("group", "image", "class") if k not in labels]
        if missing:
            raise ValueError(f"{path}: no column {missing[0]!r}")
        return Table(
            {k: cols[k] for k in labels},
            {k: _floats(cols[k], f"stability.csv, column {k}") for k in header if k not in labels},
        )

    def _oos(self) -> Table | None:
        """Out-of-set images (their index in the out-of-set split) by the score each model gives them: one
        column per model, or per model and method (`model · spec`) when the stores hold several methods."""
        several = len({spec for _, spec in self.stores_meta}) > 1
        scores = {}
        for (model, spec), (_, s) in self.stores_meta.items():
            per = s.get("curves", {}).get("out_of_set", {}).get("scores_out")
            if per:
                scores[f"{model} · {spec}" if several else model] = np.asarray(per, dtype=np.float64)
        if not scores:
            return None
        n = min(len(v) for v in scores.values())
        scores = {m: v[:n] for m, v in sorted(scores.items())}
        stacked = np.stack(list(scores.values()))
        numbers = {"index": np.arange(n, dtype=np.float64), "max_score": stacked.max(0), "mean_score": stacked.mean(0)}
        return Table({}, numbers | scores, search="")

    def warm(self) -> None:
        """Open the stores and the data sets in the background (the built-in benchmark is generated: seconds)."""

        def work():
            for model, method in self.pairs:
                with contextlib.suppress(Exception):  # a missing store is reported when its map is asked for
                    self._store(model, method).done()  # read the chunk flags now, not on the first map
            for which in ("data", "out_of_set"):
                self._dataset(which)
            self.ready.set()

        threading.Thread(target=work, daemon=True).start()

    # --- queries ---------------------------------------------------------------------------------------

    def meta(self) -> dict:
        from matplotlib import colormaps

        lut = (colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(int).tolist()
        classes = self.results.get("data", {}).get("classes", [])
        return {
            "study": self.root.name,
            "rows": self.table.n,
            "groups": self.groups,
            "filters": {k: self.table.values[k].tolist() for k in FILTERS},
            "classes": classes,
            "measures": self.measures,
            "methods": self.methods,
            "stability": self.stability is not None and list(self.stability.numbers),
            "out_of_set": self.oos is not None,
            "report": (self.root / "report.html").is_file(),
            "colormap": lut,
        }

    def rows(self, params: dict) -> dict:
        return self.table.query(params, FILTERS, sort="image", desc=False)

    def instability(self, params: dict) -> dict:
        if self.stability is None:
            raise NotFound("this study has no stability.csv (stability needs two or more models per group)")
        filters = tuple(k for k in ("group", "class", "method") if k in self.stability.values)
        sort = "ssim" if "ssim" in self.stability.numbers else next(iter(self.stability.numbers), "image")
        return self.stability.query(params, filters, sort=sort, desc=False)

    def out_of_set(self, params: dict) -> dict:
        if self.oos is None:
            raise NotFound(
                "this study has no per-image out-of-set scores (no out_of_set data, or a study run before "
                "`salience view` existed: run it again to add them)"
            )
        return self.oos.query(params, (), sort="max_score", desc=True)

    def disagreement(self, params: dict) -> dict:
        """Images (and classes) ranked by the difference of a measure's mean over the models of group `a`
        and of group `b`; per method (a `method` column, filterable) when the study has several."""
        if not self.groups or not self.measures:
            raise NotFound("per_image.csv has no groups or no measures to compare")
        measure = params.get("measure", self.measures[0])
        if measure not in self.table.numbers:
            raise BadRequest(f"measure: no measure {measure!r}; measures: {', '.join(self.measures)}")
        a = params.get("a", self.groups[0])
        b = params.get("b", self.groups[1] if len(self.groups) > 1 else self.groups[0])
        for key, g in (("a", a), ("b", b)):
            if g not in self.groups:
                raise BadRequest(f"{key}: no group {g!r}; groups: {', '.join(self.groups)}")
        cache_key = (measure, a, b)
        if cache_key not in self._disagreement:
            t, v = self.table, self.table.numbers[measure]
            n_class, n_method = len(t.values["class"]), len(t.values["method"])
            pair = (t.codes["image"].astype(np.int64) * n_class + t.codes["class"]) * n_method + t.codes["method"]
            size = len(t.values["image"]) * n_class * n_method
            means = []
            for g in (a, b):
                hit = (t.label("group") == g) & ~np.isnan(v)
                count = np.bincount(pair[hit], minlength=size)
                means.append(np.bincount(pair[hit], weights=v[hit], minlength=size) / np.maximum(count, 1))
                means[-1][count == 0] = np.nan
            both = np.flatnonzero(~np.isnan(means[0]) & ~np.isnan(means[1]))
            diff = means[0][both] - means[1][both]
            labels = {
                "image": t.values["image"][both // (n_class * n_method)],
                "class": t.values["class"][both // n_method % n_class],
            }
            if len(self.methods) > 1:
                labels["method"] = t.values["method"][both % n_method]
            self._disagreement[cache_key] = Table(
                labels,
                {
                    f"mean_{a}": means[0][both],
                    f"mean_{b}": means[1][both],
                    "difference": diff,
                    "abs_difference": abs(diff),
                },
            )
        params = {k: v for k, v in params.items() if k not in ("measure", "a", "b")}
        table = self._disagreement[cache_key]
        filters = tuple(k for k in ("class", "method") if k in table.values)
        result = table.query(params, filters, sort="abs_difference", desc=True)
        return result | {"measure": measure, "a": a, "b": b}

    # --- one image ---------------------------------------------------------------------------------------

    def item(self, params: dict) -> dict:
        """Every model's map of one image (and class: the lowest present unless `class` is given) by every
        method (or only by `method`), with the image's size, boxes and human map where the data have them.
        Maps come in the study's method order, then group order, then by model."""
        rows = self._item_rows(params)
        maps = [self._map(r) for r in rows]
        image = params["image"]
        out = {"image": image, "class": self.table._cell("class", rows[0]), "maps": maps, "picture": None}
        sample, reason = self._sample("data", image)
        if sample is None:
            out["no_picture"] = reason
        else:
            out["picture"] = _picture(image, sample)
        return out

    def _item_rows(self, params: dict) -> list[int]:
        """The per_image.csv rows `item` shows for `params` (image; class and method when given), in the
        study's method order, then group order, then by model."""
        unknown = sorted(set(params) - {"image", "class", "method"})
        if unknown:
            raise BadRequest(f"unknown parameter {unknown[0]!r}; expected image, class and method")
        method = params.get("method")
        if method and method not in self.methods:
            raise BadRequest(f"method: no method {method!r}; methods: {', '.join(self.methods)}")
        rows = self._rows_of(params.get("image"))
        if method:
            rows = [r for r in rows if self.table._cell("method", r) == method]
            if not rows:
                raise NotFound(f"image {params['image']!r} has no maps by method {method!r}")
        classes = self.table.codes["class"][rows]
        if "class" in params:
            want = params["class"]
            rows = [r for r, c in zip(rows, classes, strict=True) if self.table.values["class"][c] == want]
            if not rows:
                raise NotFound(f"image {params['image']!r} has no maps of class {want!r}")
        else:
            first = min(
                classes.tolist(), key=lambda c: (len(self.table.values["class"][c]), self.table.values["class"][c])
            )
            rows = [r for r, c in zip(rows, classes, strict=True) if c == first]
        order = {g: i for i, g in enumerate(self.groups)}
        methods = {m: i for i, m in enumerate(self.methods)}
        rows.sort(
            key=lambda r: (
                methods.get(self.table._cell("method", r), 0),
                order.get(self.table._cell("group", r), 0),
                self.table._cell("model", r),
            )
        )
        return rows

    def _map(self, r: int) -> dict:
        """The map of per_image.csv row `r`, read from its store: its shape `[h, w]`, range, float32 data
        (base64) and the row's measures; refuses a row that is not where the store has its image."""
        model, spec = self.pairs[self.pair[r]]
        store = self._store(model, spec)
        pos = int(self.position[r])
        if pos >= store.n or store.meta.image_ids[pos] != self.table._cell("image", r):
            raise ValueError(
                f"per_image.csv does not follow the order of the store {store.path} (model {model!r}, method "
                f"{spec!r}): its row of image {self.table._cell('image', r)!r} is item {pos} of {store.n}"
            )
        m, _ = store.read(pos, pos + 1)
        m = m[0].numpy()
        return {
            "group": self.table._cell("group", r),
            "model": model,
            "method": spec,
            "shape": list(m.shape),
            "resolution": list(store.meta.resolution),
            "min": float(m.min()),
            "max": float(m.max()),
            "data": _encode(m),
            "values": {k: self.table._cell(k, r) for k in self.measures},
        }

    def _rows_of(self, image: str | None) -> list[int]:
        if not image:
            raise BadRequest("image: required (an image id of per_image.csv)")
        values = self.table.values["image"]
        code = np.searchsorted(values, image)
        if code == len(values) or values[code] != image:
            raise NotFound(f"image {image!r} is not in per_image.csv")
        codes = self.table.codes["image"][self.by_image]
        lo, hi = np.searchsorted(codes, code), np.searchsorted(codes, code, side="right")
        return self.by_image[lo:hi].tolist()

    def _store(self, model: str, method: str):
        """The store of `model`'s maps by `method`: in the study folder where the study writer puts it
        (`stores/<model>` for a study of one method, `stores/<spec>/<model>` for several), else at the path
        `summary.json` gives, else at `model` itself (`salience measure --stores` names models by their store
        paths). A store made by another method is passed over."""
        from salience.store import MapStore

        key = (model, method)
        with self._lock:
            if key not in self._stores:
                stores = self.root / "stores"
                local = [stores / method / model, stores / model]
                if len(self.methods) == 1:
                    local.reverse()
                path = self.stores_meta.get(key, (None, {}))[0]
                candidates = local + ([Path(path), self.root / path] if path else []) + [Path(model), self.root / model]
                candidates = list(dict.fromkeys(candidates))
                found = None
                for p in candidates:
                    if (p / "zarr.json").is_file():
                        store = MapStore(p)
                        if not method or method.split("@")[0] == store.meta.method:
                            found = store
                            break
                if found is None:
                    raise NotFound(
                        f"model {model!r}, method {method!r}: no map store of that method at "
                        + ", ".join(map(str, candidates))
                    )
                self._stores[key] = found
            return self._stores[key]

    def _dataset(self, which: str):
        """The study's data (`data`) or out-of-set images (`out_of_set`) and an id -> index map, or the reason
        they cannot be opened."""
        with self._data_lock:
            if which not in self._data:
                section = self.results.get("study", {}).get(which)
                if not section:
                    self._data[which] = (None, None, f"results.json names no {which} images")
                else:
                    try:
                        from salience.io.datasets import open_split
                        from salience.study.config import StudyData

                        s = StudyData.model_validate(section)
                        ds = open_split(s.data_config(), s.split)
                        ids = {r.id: i for i, r in enumerate(getattr(ds, "records", []))}
                        self._data[which] = (ds, ids, None)
                    except Exception as err:  # missing or moved data: maps are still shown
                        self._data[which] = (None, None, f"{which} images cannot be opened: {err}")
            return self._data[which]

    def _sample(self, which: str, key) -> tuple[dict | None, str | None]:
        ds, ids, reason = self._dataset(which)
        if ds is None:
            return None, reason
        index = ids.get(key) if isinstance(key, str) else key
        if index is None or not 0 <= index < len(ds):
            return None, f"image {key!r} is not in the {which} images"
        return ds[index], None

    def picture(self, params: dict, which: str = "data") -> bytes:
        key = "image" if which == "data" else "index"
        unknown = sorted(set(params) - {key})
        if unknown or key not in params:
            raise BadRequest(f"expected one parameter, {key}")
        value = params[key] if which == "data" else _int(params, key, 0, 0, 10**9)
        sample, reason = self._sample(which, value)
        if sample is None:
            raise NotFound(reason)
        return _png(sample["image"])


def _picture(image: str, sample: dict) -> dict:
    """How `item` shows the data set's `sample` of `image`: its URL, size, boxes and human map (base64 float32, or
    None)."""
    h, w = sample["image"].shape[-2:]
    hm = sample["human_map"]  # [1, H, W] or [H, W]
    return {
        "url": "/api/image.png?image=" + _quote(image),
        "width": int(w),
        "height": int(h),
        "boxes": sample["boxes"].tolist(),
        "human_map": _encode(hm.reshape(hm.shape[-2:]).numpy()) if sample["has_human_map"] else None,
    }


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")
