"""Timing with peak memory, FLOP counts, the device's measured ceilings and the floor of a row."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..common import sync, time_calls


def timed_with_memory(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int):
    """:func:`time_calls` plus the peak device memory of the calls (GPU only)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    result = time_calls(fn, device, warmup, repeats)
    result["peak_mem_bytes"] = (
        torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None
    )
    return result


def count_flops(fn: Callable[[], object]) -> int:
    """Matrix-multiply and convolution FLOPs of one call of ``fn`` (forward and backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


# --------------------------------------------------------------------------------- ceilings
def measure_ceilings(device: torch.device, tiny: bool) -> dict:
    """Matmul FLOP/s per precision and device-memory copy bandwidth (bytes read + written)."""
    n = 256 if tiny else 8192
    precisions = [("bf16", torch.bfloat16, "highest"), ("fp32", torch.float32, "highest")]
    if device.type == "cuda":
        precisions.append(("tf32", torch.float32, "high"))
    ceilings = {"matmul_size": n}
    saved = torch.get_float32_matmul_precision()
    try:
        for name, dtype, matmul_precision in precisions:
            torch.set_float32_matmul_precision(matmul_precision)
            a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
            seconds = time_calls(lambda a=a, b=b: a @ b, device, 3, 10)["median_s"]
            ceilings[f"{name}_matmul_flops_per_s"] = 2 * n**3 / seconds
            del a, b
    finally:
        torch.set_float32_matmul_precision(saved)
    src = torch.randn((2**24 if tiny else 2**31) // 4, device=device)  # 16 MiB or 2 GiB
    dst = torch.empty_like(src)
    seconds = time_calls(lambda: dst.copy_(src), device, 3, 10)["median_s"]
    ceilings["copy_bytes"] = 2 * src.numel() * src.element_size()
    ceilings["copy_bytes_per_s"] = ceilings["copy_bytes"] / seconds
    return ceilings


def floor(flops: float, nbytes: float, precision: str, ceilings: dict) -> dict:
    """The fastest this work can run on the device: max(FLOPs / matmul rate of ``precision``,
    bytes / copy bandwidth); tf32 falls back to fp32 where it was not measured."""
    rate = ceilings.get(f"{precision}_matmul_flops_per_s") or ceilings["fp32_matmul_flops_per_s"]
    compute_s, memory_s = flops / rate, nbytes / ceilings["copy_bytes_per_s"]
    return {
        "flops": flops,
        "bytes": nbytes,
        "floor_precision": precision,
        "floor_s": max(compute_s, memory_s),
        "bound": "compute" if compute_s >= memory_s else "memory",
    }


def with_floor(measured: dict, work: dict) -> dict:
    """``measured`` plus the floor of ``work`` and measured ÷ floor."""
    return {**measured, **work, "measured_over_floor": measured["median_s"] / work["floor_s"]}
