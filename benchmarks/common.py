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


def forwards(model, x, times: int):
    """A callable running `times` forwards of `model` on `x` without a graph (a measure's floor)."""

    def run():
        with torch.no_grad():
            for _ in range(times):
                model(x)

    return run
