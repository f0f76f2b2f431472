"""Salience maps on disk: chunked, resumable zarr 3 stores with metadata (see `zarr_store`)."""

from salience.store.zarr_store import DamagedStoreError, MapStore, StoreMeta, check_aligned, fill, model_hash

__all__ = ["DamagedStoreError", "MapStore", "StoreMeta", "check_aligned", "fill", "model_hash"]
