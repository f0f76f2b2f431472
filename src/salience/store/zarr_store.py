"""Salience maps on disk (zarr 3): chunked, resumable, with the metadata that says what they are.

Layout of a store directory:
  zarr.json            group; attributes {"salience_store": 1, "meta": StoreMeta, "n", "map_shape", "chunk_size"}
  maps/                float32 [N, h, w], one zarr chunk per store chunk of `chunk_size` images
  targets/             int64 [N], the class each map explains
  done/                bool [n_chunks], chunk i is marked only after its maps and targets are written

A store is created under a temporary name and renamed into place, so a half-created store never exists.
A chunk whose write was interrupted is not marked done and is recomputed on resume; a finished chunk
never is. Reopening with different metadata, size, map shape or chunk size is refused.

Every chunk file carries a CRC-32C checksum (zarr's `crc32c` codec, after zstd). Reading a damaged or
missing finished chunk raises `DamagedStoreError` naming the chunk file; `MapStore.resume` checks the
finished chunks and queues damaged ones for recomputation, logging their file names.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import zarr
from pydantic import BaseModel, ConfigDict, field_validator
from zarr.codecs import Crc32cCodec, ZstdCodec

FORMAT = 1
log = logging.getLogger("salience")


class DamagedStoreError(ValueError):
    """A finished chunk of a store cannot be read back intact; the message names the chunk files."""


def _codecs():
    return {"compressors": (ZstdCodec(level=0), Crc32cCodec())}  # the checksum covers the compressed bytes


class StoreMeta(BaseModel):
    """What a store's maps are: which model, method, layer and targets, on which images."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_hash: str
    method: str
    layer: str | None = None
    options: dict[str, Any] = {}  # the method's options (`attribute(method, ..., **options)`), JSON values
    target_policy: str  # "true", "predicted" or "class:<k>"
    resolution: tuple[int, int]  # input image size (H, W) the maps were computed at
    data: str  # data set name or path
    split: str
    image_ids: tuple[str, ...]

    @field_validator("target_policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        if v not in ("true", "predicted") and not (v.startswith("class:") and v[6:].isdigit()):
            raise ValueError(f"target_policy must be 'true', 'predicted' or 'class:<k>', got {v!r}")
        return v


def model_hash(model: torch.nn.Module) -> str:
    """sha256 (hex, first 16 chars) of the model's state dict: names, dtypes, shapes and values."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d too (BN counters)
    return h.hexdigest()[:16]


class MapStore:
    """A zarr 3 store of maps `[N, h, w]` and targets `[N]` in chunks of `chunk_size` images."""

    def __init__(self, path: str | os.PathLike, mode: Literal["r", "r+"] = "r"):
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise FileNotFoundError(f"{self.path}: not a map store (no zarr.json)")
        try:
            self._group = zarr.open_group(str(self.path), mode=mode)
            attrs: dict[str, Any] = self._group.attrs.asdict()  # JSON; checked below
        except Exception as err:  # unreadable zarr.json
            raise DamagedStoreError(f"{self.path / 'zarr.json'}: unreadable ({type(err).__name__}: {err})") from err
        if attrs.get("salience_store") != FORMAT:
            raise ValueError(f"{self.path}: not a salience map store of format {FORMAT}")
        self.meta = StoreMeta.model_validate(attrs["meta"])
        self.n = int(attrs["n"])
        self.map_shape = tuple(attrs["map_shape"])
        self.chunk_size = int(attrs["chunk_size"])
        self.n_chunks = -(-self.n // self.chunk_size)
        self._seen_done = np.zeros(self.n_chunks, dtype=bool)  # flags read as done; `read` trusts them

    @classmethod
    def create(cls, path, meta: StoreMeta, map_shape: tuple[int, int], chunk_size: int = 256) -> MapStore:
        """Create an empty store at `path` (which must not exist); atomic via a temporary directory."""
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path} exists; open it with MapStore.resume or choose another path")
        n = len(meta.image_ids)
        if n == 0 or chunk_size < 1:
            raise ValueError(f"a store needs at least one image id and chunk_size >= 1 (got {n}, {chunk_size})")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(f"{path}: cannot create a store there ({err.strerror}: {err.filename})") from None
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            group.create_array(
                "maps", shape=(n, *map_shape), chunks=(chunk_size, *map_shape), dtype="float32", **_codecs()
            )
            group.create_array("targets", shape=(n,), chunks=(chunk_size,), dtype="int64", fill_value=-1, **_codecs())
            group.create_array(
                "done", shape=(-(-n // chunk_size),), chunks=(1,), dtype="bool", fill_value=False, **_codecs()
            )
            group.attrs.update(
                {
                    "salience_store": FORMAT,
                    "meta": meta.model_dump(mode="json"),
                    "n": n,
                    "map_shape": list(map_shape),
                    "chunk_size": chunk_size,
                }
            )
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(path, mode="r+")

    @classmethod
    def resume(cls, path, meta: StoreMeta, map_shape: tuple[int, int], chunk_size: int = 256) -> MapStore:
        """Open the store at `path` for writing if it matches `meta`, `map_shape` and `chunk_size`;
        create it if it does not exist. A mismatch raises, naming the fields that differ. Finished chunks
        that fail `verify` are marked unfinished (so `fill` recomputes them) and logged by file name."""
        if not Path(path).exists():
            return cls.create(path, meta, map_shape, chunk_size)
        store = cls(path, mode="r+")
        diffs = [k for k, v in meta.model_dump().items() if getattr(store.meta, k) != v]
        if tuple(map_shape) != store.map_shape:
            diffs.append(f"map_shape ({store.map_shape} stored, {tuple(map_shape)} asked)")
        if chunk_size != store.chunk_size:
            diffs.append(f"chunk_size ({store.chunk_size} stored, {chunk_size} asked)")
        if diffs:
            raise ValueError(f"{path}: existing store differs in {', '.join(diffs)}; refusing to resume into it")
        for i, reason in store.verify().items():
            log.warning("%s; chunk %d will be recomputed", reason, i)
            store._array("done")[i] = False
            store._seen_done[i] = False
        return store

    def _array(self, name: str) -> zarr.Array:
        arr = self._group[name]
        assert isinstance(arr, zarr.Array), f"{self.path / name}: not an array"
        return arr

    def chunk_range(self, i: int) -> tuple[int, int]:
        """Image range `[start, stop)` of chunk `i`."""
        if not 0 <= i < self.n_chunks:
            raise IndexError(f"chunk {i} out of range [0, {self.n_chunks})")
        return i * self.chunk_size, min((i + 1) * self.chunk_size, self.n)

    def chunk_files(self, i: int) -> list[Path]:
        """The files holding chunk `i` of `maps` and `targets`."""
        self.chunk_range(i)
        return [self.path / "maps" / "c" / str(i) / "0" / "0", self.path / "targets" / "c" / str(i)]

    def done(self) -> np.ndarray:
        """bool `[n_chunks]`: which chunks are finished. An unreadable done flag counts as unfinished."""
        try:
            flags = np.asarray(self._array("done")[:], dtype=bool)
        except Exception:  # a damaged flag file: check them one by one
            flags = np.zeros(self.n_chunks, dtype=bool)
            for i in range(self.n_chunks):
                try:
                    flags[i] = bool(self._array("done")[i])
                except Exception as err:
                    log.warning(
                        "%s: unreadable (%s); chunk %d counts as unfinished", self.path / "done" / "c" / str(i), err, i
                    )
        self._seen_done = flags.copy()
        return flags

    def verify(self) -> dict[int, str]:
        """Read back every finished chunk; return `{chunk: reason naming the file}` for those that are
        missing or fail their checksum (empty when the store is intact)."""
        bad = {}
        for i in np.flatnonzero(self.done()).tolist():
            reason = self._check_chunk(i)
            if reason:
                bad[i] = reason
        return bad

    def _check_chunk(self, i: int) -> str | None:
        start, stop = self.chunk_range(i)
        for name, file in zip(("maps", "targets"), self.chunk_files(i), strict=True):
            if not file.is_file():
                return f"{file}: finished chunk {i} is missing"
            try:
                np.asarray(self._array(name)[start:stop])
            except Exception as err:
                return f"{file}: chunk {i} is damaged ({type(err).__name__}: {err})"
        return None

    def pending(self) -> list[int]:
        """Indices of the chunks not yet finished."""
        return np.flatnonzero(~self.done()).tolist()

    def is_complete(self) -> bool:
        return bool(self.done().all())

    def write_chunk(self, i: int, maps: torch.Tensor, targets: torch.Tensor) -> None:
        """Write chunk `i` (maps `[n_i, h, w]`, targets `[n_i]`), then mark it done."""
        start, stop = self.chunk_range(i)
        if tuple(maps.shape) != (stop - start, *self.map_shape) or tuple(targets.shape) != (stop - start,):
            raise ValueError(
                f"{self.path}: chunk {i} needs maps {(stop - start, *self.map_shape)} and targets "
                f"({stop - start},); got {tuple(maps.shape)} and {tuple(targets.shape)}"
            )
        if not torch.isfinite(maps).all():
            raise ValueError(f"{self.path}: chunk {i} maps contain NaN or inf")
        # write_empty_chunks: a finished chunk always has its files, even an all-zero one
        self._array("maps").with_config({"write_empty_chunks": True})[start:stop] = (
            maps.detach().to("cpu", torch.float32).numpy()
        )
        self._array("targets").with_config({"write_empty_chunks": True})[start:stop] = (
            targets.detach().to("cpu", torch.int64).numpy()
        )
        self._array("done")[i] = True

    def read(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps `[stop - start, h, w]` (float32) and targets of images `[start, stop)`; they must be finished."""
        first, last = start // self.chunk_size, (max(stop, start + 1) - 1) // self.chunk_size
        # a flag once read as done is trusted (reading the flags is most of a small read's time); damage
        # after that is caught by the chunk checksums below
        if not self._seen_done[first : last + 1].all() and not self.done()[first : last + 1].all():
            raise ValueError(f"{self.path}: images [{start}, {stop}) include unfinished chunks; run explain again")
        chunks = range(first, last + 1)
        damaged = any(not f.is_file() for i in chunks for f in self.chunk_files(i))  # zarr would read fill values
        try:
            maps = torch.from_numpy(np.asarray(self._array("maps")[start:stop]))
            targets = torch.from_numpy(np.asarray(self._array("targets")[start:stop]))
        except Exception:  # a checksum or decoding error: find the chunks at fault
            damaged = True
        if damaged:
            bad = [reason for i in chunks if (reason := self._check_chunk(i))]
            raise DamagedStoreError(
                "; ".join(bad) + ". Run `salience explain` again with the same arguments "
                "to recompute the damaged chunks"
            )
        return maps, targets

    def iter_chunks(self, size: int | None = None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Stream `(start, maps, targets)` over the whole store, `size` images at a time (default: chunk size).
        Memory holds one block at a time. Refuses an incomplete store."""
        if not self.is_complete():
            raise ValueError(f"{self.path}: {len(self.pending())} of {self.n_chunks} chunks unfinished")
        size = size or self.chunk_size
        for start in range(0, self.n, size):
            yield (start, *self.read(start, min(start + size, self.n)))


def fill(
    stores: MapStore | Sequence[MapStore],
    compute: Callable,
    progress: bool = False,
    chunks: Sequence[int] | None = None,
) -> int:
    """Compute and write every unfinished chunk: `compute(start, stop) -> (maps, targets)`.
    Returns the number of chunks computed (0 when the store was already complete).

    `stores` may be a list of stores of the same images and chunk size, filled from one computation per
    chunk (one read of the images): `compute(start, stop)` then returns `{k: (maps, targets)}` for the stores
    `stores[k]` to write, which must leave out the stores whose chunk is already finished. `chunks`: the
    chunks to compute, e.g. one process's share when several fill the same stores (default: every chunk
    unfinished in some store)."""
    single = isinstance(stores, MapStore)
    group = [stores] if isinstance(stores, MapStore) else list(stores)
    if not group:
        raise ValueError("fill: no stores given")
    for s in group[1:]:
        if (s.n, s.chunk_size) != (group[0].n, group[0].chunk_size):
            raise ValueError(
                f"fill: {s.path} has {s.n} images in chunks of {s.chunk_size}, {group[0].path} "
                f"{group[0].n} in chunks of {group[0].chunk_size}; stores filled together must agree"
            )
    if chunks is None:
        chunks = np.flatnonzero(~np.stack([s.done() for s in group]).all(0)).tolist()
    todo: Iterable[int] = chunks
    if progress and todo:
        from rich.progress import track

        todo = track(
            todo, description=f"explain -> {group[0].path.name}" + (f" (+{len(group) - 1})" if len(group) > 1 else "")
        )
    count = 0
    for i in todo:
        start, stop = group[0].chunk_range(i)
        result = compute(start, stop)
        for k, (maps, targets) in ({0: result} if single else result).items():
            group[k].write_chunk(i, maps, targets)
        count += 1
    return count


def check_aligned(stores: list[MapStore]) -> None:
    """Refuse stores that do not hold maps of the same images in the same order, from the same data split,
    method, layer, target policy and resolution (the conditions for comparing models image by image)."""
    if len(stores) < 2:
        raise ValueError("need at least two stores to compare")
    ref = stores[0]
    for s in stores[1:]:
        for key in ("data", "split", "method", "layer", "target_policy", "resolution"):
            if getattr(s.meta, key) != getattr(ref.meta, key):
                raise ValueError(
                    f"{s.path} and {ref.path} differ in {key}: {getattr(s.meta, key)!r} vs {getattr(ref.meta, key)!r}"
                )
        if s.meta.image_ids != ref.meta.image_ids:
            same_set = set(s.meta.image_ids) == set(ref.meta.image_ids)
            raise ValueError(
                f"{s.path} and {ref.path} hold {'the same images in a different order' if same_set else 'different images'}"
            )
        if s.map_shape != ref.map_shape:
            raise ValueError(f"{s.path} and {ref.path} differ in map shape: {s.map_shape} vs {ref.map_shape}")
