"""Salience maps on disk: chunked, resumable zarr 3 stores with metadata (see `zarr_store`)."""

from salience.store.zarr_store import MapStore, StoreMeta, check_aligned, fill, model_hash

__all__ = ["MapStore", "StoreMeta", "check_aligned", "fill", "model_hash"]
