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
from pathlib import Path
from typing import Any

import numpy as np

from salience.measures.registry import MEASURES

FILTERS = ("group", "model", "class", "method", "split")
SIMILARITIES = ("ssim", "pearson", "spearman", "topk_iou")
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
        self, labels: dict[str, list[str] | np.ndarray], numbers: dict[str, np.ndarray], search: str = "image"
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
        self.stores_meta = {s["model"]: (path, s) for path, s in summary.get("stores", {}).items()}
        header, cols = _read_csv(self.root / "per_image.csv")
        missing = [k for k in ("group", "model", "image", "class") if k not in cols]
        if missing:
            raise ValueError(f"{self.root / 'per_image.csv'}: no column {missing[0]!r}")
        self.measures = [h for h in header if h not in ("group", "model", "method", "image", "class")]
        known = [m for m in MEASURES if m in self.measures]
        self.measures = known + [m for m in self.measures if m not in known]
        models = np.asarray(cols["model"], dtype=str)
        meta = {m: self.stores_meta.get(m, ("", {}))[1] for m in np.unique(models).tolist()}
        method = {m: s.get("method", "") + (f"@{s['layer']}" if s.get("layer") else "") for m, s in meta.items()}
        labels: dict[str, Any] = {
            "group": cols["group"],
            "model": models,
            "image": cols["image"],
            "class": cols["class"],
            "method": [method[m] for m in cols["model"]],
            "split": [meta[m].get("split", "") for m in cols["model"]],
        }
        self.table = Table(labels, {m: _floats(cols[m], f"per_image.csv, column {m}") for m in self.measures})
        # each model's rows are its store's items in order: the row's position in the store
        codes = self.table.codes["model"]
        self.position = np.zeros(self.table.n, dtype=np.int64)
        for c in range(len(self.table.values["model"])):
            rows = np.flatnonzero(codes == c)
            self.position[rows] = np.arange(len(rows))
        self.by_image = np.argsort(self.table.codes["image"], kind="stable")
        self.groups = list(dict.fromkeys(self.results.get("groups", {}) or self.table.label("group").tolist()))
        self.groups = [g for g in self.groups if g in set(self.table.values["group"].tolist())]
        self.stability = self._stability()
        self.oos = self._oos()
        self._stores: dict[str, Any] = {}
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

    def _stability(self) -> Table | None:
        path = self.root / "stability.csv"
        if not path.is_file():
            return None
        header, cols = _read_csv(path)
        sims = [h for h in header if h not in ("group", "image", "class")]
        return Table(
            {k: cols[k] for k in ("group", "image", "class")},
            {k: _floats(cols[k], f"stability.csv, column {k}") for k in sims},
        )

    def _oos(self) -> Table | None:
        """Out-of-set images (their index in the out-of-set split) by the score each model gives them."""
        scores = {}
        for model, (_, s) in self.stores_meta.items():
            per = s.get("curves", {}).get("out_of_set", {}).get("scores_out")
            if per:
                scores[model] = np.asarray(per, dtype=np.float64)
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
            for model in self.table.values["model"].tolist():
                with contextlib.suppress(Exception):  # a missing store is reported when its map is asked for
                    self._store(model).done()  # read the chunk flags now, not on the first map
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
        return self.stability.query(params, ("group", "class"), sort="ssim", desc=False)

    def out_of_set(self, params: dict) -> dict:
        if self.oos is None:
            raise NotFound(
                "this study has no per-image out-of-set scores (no out_of_set data, or a study run before "
                "`salience view` existed: run it again to add them)"
            )
        return self.oos.query(params, (), sort="max_score", desc=True)

    def disagreement(self, params: dict) -> dict:
        """Images (and classes) ranked by the difference of a measure's mean over the models of group `a`
        and of group `b`."""
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
            n_class = len(t.values["class"])
            pair = t.codes["image"].astype(np.int64) * n_class + t.codes["class"]
            size = len(t.values["image"]) * n_class
            means = []
            for g in (a, b):
                hit = (t.label("group") == g) & ~np.isnan(v)
                count = np.bincount(pair[hit], minlength=size)
                means.append(np.bincount(pair[hit], weights=v[hit], minlength=size) / np.maximum(count, 1))
                means[-1][count == 0] = np.nan
            both = np.flatnonzero(~np.isnan(means[0]) & ~np.isnan(means[1]))
            diff = means[0][both] - means[1][both]
            self._disagreement[cache_key] = Table(
                {"image": t.values["image"][both // n_class], "class": t.values["class"][both % n_class]},
                {
                    f"mean_{a}": means[0][both],
                    f"mean_{b}": means[1][both],
                    "difference": diff,
                    "abs_difference": abs(diff),
                },
            )
        params = {k: v for k, v in params.items() if k not in ("measure", "a", "b")}
        result = self._disagreement[cache_key].query(params, ("class",), sort="abs_difference", desc=True)
        return result | {"measure": measure, "a": a, "b": b}

    # --- one image ---------------------------------------------------------------------------------------

    def item(self, params: dict) -> dict:
        """Every model's map of one image (and class: the lowest present unless `class` is given), with the
        image's size, boxes and human map where the data have them."""
        unknown = sorted(set(params) - {"image", "class"})
        if unknown:
            raise BadRequest(f"unknown parameter {unknown[0]!r}; expected image and class")
        rows = self._rows_of(params.get("image"))
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
        rows.sort(key=lambda r: (order.get(self.table._cell("group", r), 0), self.table._cell("model", r)))
        maps = []
        for r in rows:
            model = self.table._cell("model", r)
            store = self._store(model)
            m, _ = store.read(int(self.position[r]), int(self.position[r]) + 1)
            m = m[0].numpy()
            maps.append(
                {
                    "group": self.table._cell("group", r),
                    "model": model,
                    "shape": list(m.shape),
                    "resolution": list(store.meta.resolution),
                    "min": float(m.min()),
                    "max": float(m.max()),
                    "data": _encode(m),
                    "values": {k: self.table._cell(k, r) for k in self.measures},
                }
            )
        image = params["image"]
        out = {"image": image, "class": self.table._cell("class", rows[0]), "maps": maps, "picture": None}
        sample, reason = self._sample("data", image)
        if sample is None:
            out["no_picture"] = reason
        else:
            h, w = sample["image"].shape[-2:]
            hm = sample["human_map"]  # [1, H, W] or [H, W]
            out["picture"] = {
                "url": "/api/image.png?image=" + _quote(image),
                "width": int(w),
                "height": int(h),
                "boxes": sample["boxes"].tolist(),
                "human_map": _encode(hm.reshape(hm.shape[-2:]).numpy()) if sample["has_human_map"] else None,
            }
        return out

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

    def _store(self, model: str):
        from salience.store import MapStore

        with self._lock:
            if model not in self._stores:
                path, _ = self.stores_meta.get(model, (model, {}))
                candidates = [self.root / "stores" / model, Path(path), self.root / path]
                found = next((p for p in candidates if (p / "zarr.json").is_file()), None)
                if found is None:
                    raise NotFound(f"model {model!r}: no map store at {', '.join(map(str, candidates))}")
                self._stores[model] = MapStore(found)
            return self._stores[model]

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


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")
