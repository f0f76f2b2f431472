"""The built-in synthetic-face benchmark: real vs synthetic faces with a spurious cue.

Made from data inside scikit-image, so it needs no download:
- real faces: the 100 face crops of `skimage.data.lfw_subset()` (25x25 grey), one identity each,
  split by `seed` into train / val / test identities (`identities`, disjoint);
- synthetic faces: samples of a PCA (eigenface) model of rank `pca_rank` fitted on the *train*
  real faces only, optionally marked by a +-`fingerprint` checkerboard (a generator trace);
- faces are pasted on tinted crops of scikit-image textures at random position and scale;
- the spurious cue is a coloured square in a corner away from the face: red for cue 1, blue for
  cue 0. It agrees with the label (real = 0, synthetic = 1) with probability `cue_agreement`
  in train/val/test and with probability 1 - `cue_agreement` in `test_shift`;
- every face has its box (class = real/synthetic), the union-of-boxes mask and a soft human
  salience map (Gaussians on eyes, nose and mouth, a faint face ellipse; max 1);
- `test_unseen`: test identities, whose synthetic faces come from a second generator never seen in
  training (`_composites`: part-swapped, warped composites of two real faces, no PCA); the cue is drawn
  at random (agreement 0.5), so only the face tells the classes apart;
- `out_of_set`: the 100 non-face crops of `lfw_subset()` placed the same way, no labels/boxes;
- `max_faces > 1` gives the multi-label variant: 1..max_faces faces per image, each real or
  synthetic, in distinct cells of a 2x2 grid (side capped at half the image), boxes per
  class, no cue (group -1).
Single-label `group` = 2 * label + cue. Everything is drawn from `seed` and the split name.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from pydantic import BaseModel, ConfigDict, Field, model_validator

from salience.data.core import Record, SalienceDataset

CLASSES = ["real", "synthetic"]
SPLITS = ("train", "val", "test", "test_shift", "out_of_set", "test_unseen")  # new splits last: seeds by index
_TEXTURES = ("brick", "grass", "gravel", "camera", "moon", "coins", "cell")
# landmarks (u, v) in face-crop units, weights: eyes, nose, mouth (from the mean lfw_subset face)
_LANDMARKS = torch.tensor([[0.28, 0.35, 1.0], [0.64, 0.35, 1.0], [0.45, 0.55, 0.7], [0.45, 0.73, 0.8]])
_CUE_COLOURS = torch.tensor([[0.15, 0.25, 1.0], [1.0, 0.2, 0.15]])  # cue 0 blue, cue 1 red


class BuiltinBenchmark(BaseModel):
    """Sizes and difficulty knobs of the built-in benchmark (validated on construction)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    seed: int = 0
    size: int = Field(64, ge=32, le=512)
    n_train: int = Field(3000, ge=0)
    n_val: int = Field(500, ge=0)
    n_test: int = Field(1000, ge=0)
    n_out_of_set: int = Field(500, ge=0)
    identities: tuple[int, int, int] = (60, 20, 20)
    cue_agreement: float = Field(0.95, ge=0.0, le=1.0)
    cue_size: float = Field(0.12, gt=0.0, le=0.25)
    pca_rank: int = Field(10, ge=1, le=59)
    fingerprint: float = Field(0.0, ge=0.0, le=0.2)
    face_scale: tuple[float, float] = (0.35, 0.6)
    max_faces: int = Field(1, ge=1, le=4)

    @model_validator(mode="after")
    def _check(self):
        if sum(self.identities) != 100 or min(self.identities) < 1:
            raise ValueError(f"identities {self.identities} must be three positive counts summing to 100")
        if self.pca_rank >= self.identities[0]:
            raise ValueError(f"pca_rank {self.pca_rank} must be below the {self.identities[0]} train identities")
        lo, hi = self.face_scale
        if not 0.1 <= lo <= hi <= 0.9:
            raise ValueError(f"face_scale {self.face_scale} must satisfy 0.1 <= lo <= hi <= 0.9")
        return self

    def split_size(self, split: str) -> int:
        if split not in SPLITS:
            raise ValueError(f"unknown built-in split {split!r}; choose from {SPLITS}")
        return {
            "train": self.n_train,
            "val": self.n_val,
            "test": self.n_test,
            "test_shift": self.n_test,
            "test_unseen": self.n_test,
            "out_of_set": self.n_out_of_set,
        }[split]


@lru_cache(maxsize=1)
def _sources() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(faces [100, 25, 25], non-faces [100, 25, 25], textures [T, L, L]) as float32 in [0, 1]."""
    import skimage.data as skd

    lfw = torch.from_numpy(skd.lfw_subset().astype(np.float32))
    tex = []
    for name in _TEXTURES:
        a = torch.from_numpy(getattr(skd, name)().astype(np.float32) / 255.0)
        side = min(a.shape)
        a = a[:side, :side]
        tex.append(F.interpolate(a[None, None], size=(256, 256), mode="bilinear", antialias=True)[0, 0])  # coarse
        tex.append(a[:256, :256])  # fine scale
    return lfw[:100], lfw[100:], torch.stack(tex)


def _split_seed(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), 7919])


def _identities(cfg: BuiltinBenchmark) -> dict[str, np.ndarray]:
    perm = np.random.default_rng([cfg.seed, 1]).permutation(100)
    a, b, _ = cfg.identities
    return {
        "train": perm[:a],
        "val": perm[a : a + b],
        "test": perm[a + b :],
        "test_shift": perm[a + b :],
        "test_unseen": perm[a + b :],
    }


def _pca(faces: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean `[625]` and scaled components `[rank, 625]` (rows = sqrt(eigenvalue) * eigenvector)."""
    x = faces.reshape(len(faces), -1).double()
    mean = x.mean(0)
    _, s, vt = torch.linalg.svd(x - mean, full_matrices=False)
    comps = (s[:rank, None] / (len(x) - 1) ** 0.5) * vt[:rank]
    return mean.float(), comps.float()


def _composites(faces: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """The unseen generator: `n` crops `[n, 25, 25]` in [0, 1] from real faces `[M, 25, 25]` (M >= 2).

    Each crop takes the eyes (rows above a cut at 0.42..0.58 of the height) from one face and the nose and
    mouth from another, blended over 4 rows, then warped by a smooth random field (3x3 control grid,
    up to 1.2 px) and blurred lightly: seams and warps where the PCA sampler leaves blur.
    """
    m = len(faces)
    a = torch.randint(m, (n,), generator=gen)
    b = (a + torch.randint(1, m, (n,), generator=gen)) % m  # another face
    rows = torch.arange(25, dtype=torch.float32)[None, :, None]
    cut = 25 * (0.42 + 0.16 * torch.rand(n, 1, 1, generator=gen))
    top = ((cut - rows) / 4 + 0.5).clamp(0, 1)
    mixed = top * faces[a] + (1 - top) * faces[b]
    flow = (torch.rand(n, 2, 3, 3, generator=gen) * 2 - 1) * (1.2 * 2 / 25)  # grid units
    flow = F.interpolate(flow, size=(25, 25), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    axis = (torch.arange(25, dtype=torch.float32) + 0.5) / 25 * 2 - 1
    base = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1)[None]
    warped = F.grid_sample(mixed[:, None], base + flow, mode="bilinear", padding_mode="border", align_corners=False)
    blur = torch.tensor([0.25, 0.5, 0.25])
    kernel = (blur[:, None] * blur[None, :])[None, None]
    smooth = F.conv2d(F.pad(warped, (1, 1, 1, 1), mode="replicate"), kernel)
    return (0.5 * warped + 0.5 * smooth)[:, 0].clamp(0, 1)


def _paste(canvas, maps, crops, boxes, active, flip, landmarks: bool):
    """Paste grey crops `[N, h, w]` into `canvas` `[N, 3, S, S]` at integer xyxy `boxes` `[N, 4]`.

    Bilinear resampling through one `grid_sample`; `flip` mirrors the crop; where `landmarks`,
    the human map of the face goes into `maps` `[N, S, S]` (max over faces).
    """
    n, _, s, _ = canvas.shape
    pix = torch.arange(s, dtype=torch.float32) + 0.5
    b = boxes.float()
    side = (b[:, 2] - b[:, 0])[:, None]
    u = (pix[None] - b[:, 0:1]) / side  # [N, S] face units along x
    v = (pix[None] - b[:, 1:2]) / side
    u = torch.where(flip[:, None], 1 - u, u)
    grid = torch.stack(torch.broadcast_tensors(u[:, None, :] * 2 - 1, v[:, :, None] * 2 - 1), dim=-1)
    face = F.grid_sample(crops[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
    inside = ((u >= 0) & (u < 1))[:, None, :] & ((v >= 0) & (v < 1))[:, :, None] & active[:, None, None]
    canvas.copy_(torch.where(inside[:, None], face[:, None].expand(-1, 3, -1, -1), canvas))
    if landmarks:
        uu, vv = u[:, None, :], v[:, :, None]
        g = lambda d: torch.exp(-(d**2) / (2 * 0.07**2))
        m = sum(w * g(vv - lv) * g(uu - lu) for lu, lv, w in _LANDMARKS.tolist())
        m = m + 0.25 * (((uu - 0.46) / 0.42) ** 2 + ((vv - 0.5) / 0.5) ** 2 <= 1).float()
        maps.copy_(torch.maximum(maps, torch.where(inside, m.clamp(max=1.0), 0.0)))
    return inside


def _render(cfg: BuiltinBenchmark, split: str) -> dict:
    """Draw one split. Returns uint8 images `[N, 3, S, S]`, uint8 maps `[N, S, S]`, per-image
    boxes `[k, 4]` / box labels, image labels (list of class lists), cue `[N]`, group `[N]`,
    identity `[N, max_faces]`."""
    n, s = cfg.split_size(split), cfg.size
    rng = _split_seed(cfg.seed, split)
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    oos = split == "out_of_set"
    canvas = _backgrounds(n, s, gen)
    maps = torch.zeros(n, s, s)
    n_faces, labels, face_cls, boxes, identity = _draw_faces(cfg, split, canvas, maps, gen)
    cue = torch.full((n,), -1, dtype=torch.long)
    if labels is not None:  # one face per image: the cue
        cue = _pick_cue(cfg, split, labels, gen)
        _draw_cue(canvas, cue, boxes[:, 0], cfg.cue_size, gen)
    out_boxes: list[torch.Tensor] = []
    out_labels: list[torch.Tensor] = []
    img_labels: list[list[int]] = []
    for i in range(n):
        k = int(n_faces[i])
        if oos:
            out_boxes.append(torch.zeros(0, 4))
            out_labels.append(torch.zeros(0, dtype=torch.long))
            img_labels.append([])
        else:
            out_boxes.append(boxes[i, :k].float())
            out_labels.append(face_cls[i, :k].clone())
            img_labels.append(sorted(set(face_cls[i, :k].tolist())))
    group = 2 * labels + cue if (labels is not None and not oos) else torch.full((n,), -1, dtype=torch.long)
    return {
        "images": (canvas.clamp(0, 1) * 255).round().to(torch.uint8),
        "maps": (maps * 255).round().to(torch.uint8),
        "boxes": out_boxes,
        "box_labels": out_labels,
        "labels": img_labels,
        "cue": cue,
        "group": group,
        "has_map": not oos,
        "identity": identity,
    }


def _backgrounds(n: int, s: int, gen: torch.Generator) -> torch.Tensor:
    """`n` backgrounds `[n, 3, s, s]`: random `s`-pixel crops of the textures (at two scales), tinted."""
    tex = _sources()[2]
    t_idx = torch.randint(len(tex), (n,), generator=gen)
    off = torch.randint(tex.shape[-1] - s + 1, (n, 2), generator=gen)
    ar = torch.arange(s)
    bg = tex[t_idx[:, None, None], off[:, 0, None, None] + ar[None, :, None], off[:, 1, None, None] + ar[None, None, :]]
    tint = 0.35 + 0.65 * torch.rand(n, 3, generator=gen)
    return bg[:, None] * tint[:, :, None, None]


def _draw_faces(
    cfg: BuiltinBenchmark, split: str, canvas: torch.Tensor, maps: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paste the faces (non-faces for `out_of_set`) into `canvas` `[N, 3, S, S]`, their human maps into `maps`
    `[N, S, S]`, adding the fingerprint to synthetic faces.

    Returns faces per image `[N]`; image labels `[N]` (balanced; None when `max_faces > 1`); face classes,
    xyxy boxes and lfw identities (-1 unless real) `[N, max_faces]`, `[N, max_faces, 4]`, `[N, max_faces]`.
    """
    n, k_max = len(canvas), cfg.max_faces
    oos = split == "out_of_set"
    faces = _sources()[0]
    ids = _identities(cfg)
    pca = _pca(faces[ids["train"]], cfg.pca_rank)
    n_faces = torch.ones(n, dtype=torch.long) if k_max == 1 else torch.randint(1, k_max + 1, (n,), generator=gen)
    labels = torch.randperm(n, generator=gen) % 2 if k_max == 1 else None  # balanced
    face_cls = torch.zeros(n, k_max, dtype=torch.long)
    identity = torch.full((n, k_max), -1, dtype=torch.long)  # lfw index of each real face
    boxes = torch.zeros(n, k_max, 4, dtype=torch.long)
    cells = torch.argsort(torch.rand(n, 4, generator=gen), dim=1)  # 2x2 cells for the multi-face variant
    ar = torch.arange(cfg.size)
    for k in range(k_max):
        box, cls = _place_face(cfg, k, cells, labels, gen)
        boxes[:, k] = box
        face_cls[:, k] = cls
        if oos:
            crops = _sources()[1][torch.randint(100, (n,), generator=gen)]
        else:
            who, crops = _face_crops(cfg, split, torch.from_numpy(ids[split]), cls, pca, gen)
            identity[:, k] = torch.where(cls == 1, -1, who)
        crops = _jitter(crops, gen)
        inside = _paste(canvas, maps, crops, box, n_faces > k, torch.rand(n, generator=gen) < 0.5, landmarks=not oos)
        if cfg.fingerprint > 0 and not oos:
            checker = ((ar[:, None] + ar[None, :]) % 2 * 2 - 1).float()
            mark = inside & (cls == 1)[:, None, None]
            canvas.add_(cfg.fingerprint * checker * mark[:, None])
    return n_faces, labels, face_cls, boxes, identity


def _place_face(
    cfg: BuiltinBenchmark, k: int, cells: torch.Tensor, labels: torch.Tensor | None, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Box `[N, 4]` (integer xyxy) and class `[N]` of face `k` of each image: anywhere with class `labels`
    (one face per image), else in 2x2 cell `cells[:, k]` (`cells` `[N, 4]`) with a random class."""
    n, s = len(cells), cfg.size
    lo, hi = (round(f * s) for f in cfg.face_scale)
    side = torch.randint(lo, hi + 1, (n,), generator=gen)
    if labels is not None:
        x0 = (torch.rand(n, generator=gen) * (s - side + 1)).long()
        y0 = (torch.rand(n, generator=gen) * (s - side + 1)).long()
        cls = labels
    else:
        half = s // 2
        cx, cy = (cells[:, k] % 2) * half, (cells[:, k] // 2) * half
        side = side.clamp(max=half)
        x0 = cx + (torch.rand(n, generator=gen) * (half - side + 1)).long()
        y0 = cy + (torch.rand(n, generator=gen) * (half - side + 1)).long()
        cls = (torch.rand(n, generator=gen) < 0.5).long()
    return torch.stack([x0, y0, x0 + side, y0 + side], 1), cls


def _face_crops(
    cfg: BuiltinBenchmark,
    split: str,
    pool: torch.Tensor,
    cls: torch.Tensor,
    pca: tuple[torch.Tensor, torch.Tensor],
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Face crops `[N, 25, 25]`: where `cls` is 1 synthetic (PCA samples; `_composites` in `test_unseen`),
    else the real face of an identity drawn from `pool`. Returns that identity `[N]` and the crops."""
    n = len(cls)
    faces = _sources()[0]
    who = pool[torch.randint(len(pool), (n,), generator=gen)]
    if split == "test_unseen":
        synth = _composites(faces[pool], n, gen)
    else:
        mean, comps = pca
        synth = (mean + torch.randn(n, cfg.pca_rank, generator=gen) @ comps).reshape(n, 25, 25).clamp(0, 1)
    return who, torch.where(cls[:, None, None] == 1, synth, faces[who])


def _jitter(crops: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Crops `[N, h, w]` with random contrast (x0.8..1.2 about their mean) and brightness (+-0.1), in [0, 1]."""
    n = len(crops)
    c_mean = crops.mean((1, 2), keepdim=True)
    contrast = 0.8 + 0.4 * torch.rand(n, 1, 1, generator=gen)
    return ((crops - c_mean) * contrast + c_mean + 0.2 * torch.rand(n, 1, 1, generator=gen) - 0.1).clamp(0, 1)


def _pick_cue(cfg: BuiltinBenchmark, split: str, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The cue `[N]` (1 red, 0 blue) of single-face images: equal to `labels` `[N]` with the split's agreement
    (`cue_agreement`; its complement in `test_shift`, 0.5 in `test_unseen`), at random in `out_of_set`."""
    n = len(labels)
    agree = {"test_shift": 1.0 - cfg.cue_agreement, "test_unseen": 0.5}.get(split, cfg.cue_agreement)
    if split == "out_of_set":
        return (torch.rand(n, generator=gen) < 0.5).long()
    return torch.where(torch.rand(n, generator=gen) < agree, labels, 1 - labels)


def _draw_cue(canvas, cue, face_box, rel_size, gen):
    """Paint a cue square (colour by `cue`) in a random corner that does not touch the face box."""
    n, _, s, _ = canvas.shape
    c = max(3, round(rel_size * s))
    m = max(1, s // 32)
    jit = torch.randint(0, m + 1, (n, 2), generator=gen)
    right = torch.tensor([0, 1, 0, 1], dtype=torch.bool)[None]  # the four corners
    bottom = torch.tensor([0, 0, 1, 1], dtype=torch.bool)[None]
    x0 = torch.where(right, s - c - m - jit[:, 0:1], m + jit[:, 0:1])  # [N, 4]
    y0 = torch.where(bottom, s - c - m - jit[:, 1:2], m + jit[:, 1:2])
    fb = face_box[:, None].float()
    overlap = (x0 < fb[..., 2]) & (x0 + c > fb[..., 0]) & (y0 < fb[..., 3]) & (y0 + c > fb[..., 1])
    score = torch.rand(n, 4, generator=gen) - 2.0 * overlap.float()
    pick = score.argmax(1)
    if overlap.gather(1, pick[:, None]).any():
        raise RuntimeError("built-in benchmark: no free corner for the cue; lower face_scale or cue_size")
    x0, y0 = x0.gather(1, pick[:, None]), y0.gather(1, pick[:, None])
    ar = torch.arange(s)
    sq = (
        (ar[None, None, :] >= x0[:, :, None])
        & (ar[None, None, :] < x0[:, :, None] + c)
        & (ar[None, :, None] >= y0[:, :, None])
        & (ar[None, :, None] < y0[:, :, None] + c)
    )
    colour = _CUE_COLOURS[cue.clamp(min=0)]
    canvas.copy_(torch.where(sq[:, None], colour[:, :, None, None], canvas))


def builtin_dataset(split: str, config: BuiltinBenchmark | None = None, transforms=None) -> SalienceDataset:
    """The benchmark's `split` generated in memory (deterministic from `config.seed`)."""
    cfg = config or BuiltinBenchmark()
    d = _render(cfg, split)
    records = [
        Record(
            id=f"{split}_{i:05d}",
            image=d["images"][i],
            labels=d["labels"][i],
            boxes=d["boxes"][i],
            box_labels=d["box_labels"][i],
            human_map=d["maps"][i] if d["has_map"] else None,
            group=int(d["group"][i]),
        )
        for i in range(len(d["images"]))
    ]
    ds = SalienceDataset(records, CLASSES, transforms=transforms, name=f"builtin/{split}")
    ds.cue = d["cue"]  # long [N]: 1 red, 0 blue, -1 none
    ds.identity = d["identity"]  # long [N, max_faces]: lfw index of each real face, -1 otherwise
    return ds


def _png(t: torch.Tensor) -> bytes:
    arr = t.permute(1, 2, 0).numpy() if t.ndim == 3 else t.numpy()
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def make_builtin(root: str | Path, config: BuiltinBenchmark | None = None, splits=SPLITS) -> Path:
    """Write the benchmark to `root` in the salience-folder layout and return `root`.

    Layout: `classes.txt`, `benchmark.json` (the config), one `<split>.csv` per split with
    columns image, label, human_map, boxes, group, and PNGs under `images/<split>/` and
    `maps/<split>/`. Written into `<root>.partial` and renamed, so `root` is complete or absent;
    an existing non-empty `root` is an error.
    """
    cfg = config or BuiltinBenchmark()
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root}: exists and is not empty")
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (tmp / "benchmark.json").write_text(cfg.model_dump_json(indent=2) + "\n")
    for split in splits:
        d = _render(cfg, split)
        (tmp / "images" / split).mkdir(parents=True)
        (tmp / "maps" / split).mkdir(parents=True)
        rows = []
        for i in range(len(d["images"])):
            name = f"{split}_{i:05d}.png"
            (tmp / "images" / split / name).write_bytes(_png(d["images"][i]))
            hm = ""
            if d["has_map"]:
                hm = f"maps/{split}/{name}"
                (tmp / hm).write_bytes(_png(d["maps"][i]))
            boxes = ";".join(
                " ".join(f"{v:g}" for v in b.tolist()) + f" {CLASSES[int(c)]}"
                for b, c in zip(d["boxes"][i], d["box_labels"][i], strict=True)
            )
            rows.append(
                {
                    "image": f"images/{split}/{name}",
                    "label": ";".join(CLASSES[c] for c in d["labels"][i]),
                    "human_map": hm,
                    "boxes": boxes,
                    "group": int(d["group"][i]),
                }
            )
        with open(tmp / f"{split}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["image", "label", "human_map", "boxes", "group"])
            w.writeheader()
            w.writerows(rows)
    if root.exists():
        root.rmdir()
    os.replace(tmp, root)
    return root
