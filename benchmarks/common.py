"""What the benchmark scripts share."""

import time

import torch


def timed(fn, device) -> float:
    """Seconds `fn()` takes, waiting for the GPU before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start
