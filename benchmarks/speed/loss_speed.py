"""Loss speed and memory: pml_hyper's implementation against the papers' original formulation.

Forward + backward of the loss alone, at the papers' scales, for ``ours`` (``pml_hyper``) and
``reference`` (``benchmarks/speed/reference``, the original broadcast formulation)::

    python -m benchmarks.speed.loss_speed --loss hist --device cpu

Every (size, implementation, precision) runs in a fresh subprocess, so that its peak memory can be
read from the process's own high-water mark. Results go to
``benchmarks/results/loss_speed_<loss>_<device>.json``.

To add a loss, write a setup function with the signature of ``setup_hist`` and register it in
``LOSSES`` with its default sizes.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pml_hyper.layers import ToPoincare
from pml_hyper.losses import HIERLoss, HISTLoss

from .common import (
    RESULTS_DIR,
    available_memory_bytes,
    machine_info,
    sync,
    time_calls,
    utc_now,
    versions,
    write_results,
)
from .reference.hier_reference import HIERReference
from .reference.hist_reference import HISTReference

HERE = Path(__file__).resolve().parent
LOSS_RTOL = 1e-5
# The HIST broadcast formulation keeps about six (B, C, D) float32 tensors alive (docs/hist.md#cost:
# 4.5 GB at B=32, C=11,318, D=512); a reference run predicted above MEMORY_FRACTION of the
# available memory is skipped instead of being killed by the OOM killer.
HIST_REFERENCE_BCD_TENSORS = 6
# The HIER reference keeps about seven (B+M)²×D float32 tensors (docs/hier.md#cost: 6.9G at B=180,
# M=512, D=512); eight are budgeted.
HIER_REFERENCE_PAIR_TENSORS = 8
MEMORY_FRACTION = 0.8


@dataclass(frozen=True)
class Size:
    name: str
    batch: int
    classes: int
    dim: int

    @classmethod
    def parse(cls, text: str) -> "Size":
        """``NAME:BxCxD`` or ``BxCxD``, e.g. ``SOP:32x11318x512``."""
        name, _, dims = text.rpartition(":")
        batch, classes, dim = (int(v) for v in dims.lower().split("x"))
        return cls(name or dims, batch, classes, dim)

    def __str__(self) -> str:
        return f"{self.name}:{self.batch}x{self.classes}x{self.dim}"


@dataclass(frozen=True)
class LossBenchmark:
    """``setup(impl, size, device, seed)`` returns the module and its (embeddings, labels)."""

    setup: Callable[[str, Size, torch.device, int], tuple[torch.nn.Module, tuple]]
    default_sizes: tuple[str, ...]
    predicted_reference_bytes: Callable[[Size], int]
    inputs: str = "one batch of LayerNorm-ed Gaussian embeddings and uniform random labels, "
    "hidden size = D"
    targets: str = "issue 3, CPU at SOP scale: speedup >= 10 and memory_ratio >= 5, with "
    "loss_agrees"
    loss_rtol: float = LOSS_RTOL
    loss_rtol_reason: str = "same parameters and inputs"


def setup_hist(impl: str, size: Size, device: torch.device, seed: int):
    """HISTLoss (ours) or HISTReference with the same parameters, D = h, raw LayerNorm inputs."""
    torch.manual_seed(seed)
    ours = HISTLoss(size.classes, size.dim, hidden_size=size.dim)
    if impl == "ours":
        module = ours
    else:
        module = HISTReference(size.classes, size.dim, hidden_size=size.dim)
        module.load_state_dict(ours.state_dict())
        del ours
    g = torch.Generator().manual_seed(seed + 1)
    labels = torch.randint(0, size.classes, (size.batch,), generator=g)
    embeddings = F.layer_norm(torch.randn(size.batch, size.dim, generator=g), (size.dim,))
    return module.to(device).train(), (embeddings.to(device), labels.to(device))


def setup_hier(impl: str, size: Size, device: torch.device, seed: int):
    """HIERLoss (ours) or HIERReference with the same proxies; ``size.classes`` is the number of
    proxies M. Inputs: B/2 classes × 2 views of Gaussian features through ToPoincare(c=0.1,
    clip_r=2.3), i.e. clipped ball points as in HIER's training."""
    torch.manual_seed(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    ours = HIERLoss(size.dim, num_proxies=size.classes, generator=generator)
    if impl == "ours":
        module = ours
    else:
        module = HIERReference(size.dim, num_proxies=size.classes, seed=seed)
        module.load_state_dict(ours.state_dict())
        del ours
    g = torch.Generator().manual_seed(seed + 1)
    labels = torch.arange(size.batch // 2).repeat_interleave(2)
    centers = torch.randn(size.batch // 2, size.dim, generator=g)
    features = centers[labels] + 0.7 * torch.randn(len(labels), size.dim, generator=g)
    embeddings = ToPoincare(c=0.1, clip_r=2.3, riemannian=True)(features)
    return module.to(device).train(), (embeddings.to(device), labels.to(device))


LOSSES: dict[str, LossBenchmark] = {
    "hist": LossBenchmark(
        setup=setup_hist,
        default_sizes=("CUB:32x100x512", "SOP:32x11318x512", "SOP:180x11318x512"),
        predicted_reference_bytes=lambda s: (
            HIST_REFERENCE_BCD_TENSORS * s.batch * s.classes * s.dim * 4
        ),
    ),
    "hier": LossBenchmark(
        setup=setup_hier,
        default_sizes=("D128:180x512x128", "D384:180x512x384", "D512:180x512x512"),
        predicted_reference_bytes=lambda s: (
            HIER_REFERENCE_PAIR_TENSORS * (s.batch + s.classes) ** 2 * s.dim * 4
        ),
        inputs="one batch of B/2 classes x 2 views of clipped Poincare-ball points (C = the "
        "number of proxies M), including each implementation's triplet mining",
        targets="issue 4, CPU at B=180, M=512, D=512: speedup >= 5 and memory_ratio >= 4",
        loss_rtol=0.05,
        loss_rtol_reason="same proxies and inputs, but independent random triplets and Gumbel "
        "noise (torch.Generator vs numpy RandomState), so the losses agree in distribution only",
    ),
}


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def run_worker(config: dict) -> dict:
    """One (loss, impl, size, precision) in this process: times, peak memory and the loss."""
    device = torch.device(config["device"])
    size = Size.parse(config["size"])
    module, (embeddings, labels) = LOSSES[config["loss"]].setup(
        config["impl"], size, device, config["seed"]
    )
    amp = config["precision"] == "bf16"

    def step() -> float:
        module.zero_grad(set_to_none=True)
        x = embeddings.detach().requires_grad_()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = module(x, labels)
        loss.backward()
        return loss.item()

    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_alloc = torch.cuda.memory_allocated(device)
    base_rss, base_maxrss = current_rss_bytes(), max_rss_bytes()
    loss_value = step()  # warm-up; its peak counts (gradients are allocated there)
    result = {"loss": loss_value, **time_calls(step, device, 0, config["repeats"])}
    if device.type == "cuda":
        result["peak_mem_bytes"] = torch.cuda.max_memory_allocated(device) - base_alloc
    else:
        peak = max_rss_bytes()
        result["peak_mem_bytes"] = peak - base_rss
        # If the high-water mark did not move, the steps stayed below an earlier (import-time)
        # peak and the figure is only an upper bound.
        result["peak_mem_exact"] = peak > base_maxrss
    result["torch_threads"] = torch.get_num_threads()
    return result


def run_case(args, impl: str, size: Size, precision: str, repeats: int) -> dict:
    config = {
        "loss": args.loss,
        "impl": impl,
        "size": str(size),
        "device": args.device,
        "precision": precision,
        "repeats": repeats,
        "seed": args.seed,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.speed.loss_speed", "--worker", json.dumps(config)],
        capture_output=True,
        text=True,
        cwd=HERE.parent.parent,
    )
    if proc.returncode != 0:
        return {"error": f"exit status {proc.returncode}", "stderr_tail": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def benchmark(args) -> dict:
    bench = LOSSES[args.loss]
    machine_before = {
        **machine_info(args.device),
        "load_average_1_5_15_min": list(os.getloadavg()),
        "openmp_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")},
    }
    sizes = [Size.parse(s) for s in (args.sizes or bench.default_sizes)]
    cases = []
    for precision in args.precisions:
        for size in sizes:
            case = {"size": str(size), "B": size.batch, "C": size.classes, "D": size.dim}
            case["precision"] = precision
            print(f"{args.loss} {size} {precision}: ours ...", file=sys.stderr, flush=True)
            case["ours"] = run_case(args, "ours", size, precision, args.repeats)
            predicted = bench.predicted_reference_bytes(size)
            limit = MEMORY_FRACTION * available_memory_bytes()
            if args.device == "cpu" and predicted > limit:
                case["reference"] = {
                    "skipped": f"predicted peak {predicted / 2**30:.1f} GiB exceeds "
                    f"{MEMORY_FRACTION:.0%} of the available {limit / MEMORY_FRACTION / 2**30:.1f} "
                    "GiB",
                    "predicted_peak_mem_bytes": predicted,
                }
            else:
                print(f"{args.loss} {size} {precision}: reference ...", file=sys.stderr, flush=True)
                case["reference"] = run_case(
                    args, "reference", size, precision, args.reference_repeats
                )
            ours, ref = case["ours"], case["reference"]
            if "median_s" in ours and "median_s" in ref:
                case["speedup"] = ref["median_s"] / ours["median_s"]
                case["speedup_of_min_times"] = ref["min_s"] / ours["min_s"]
                case["memory_ratio"] = ref["peak_mem_bytes"] / max(ours["peak_mem_bytes"], 1)
                rel = abs(ours["loss"] - ref["loss"]) / abs(ref["loss"])
                case["loss_rel_diff"] = rel
                if precision == "fp32":
                    case["loss_agrees"] = rel <= bench.loss_rtol
            cases.append(case)
            print(json.dumps(case), file=sys.stderr, flush=True)
    return {
        "benchmark": "loss_speed",
        "loss": args.loss,
        "device": args.device,
        "date": utc_now(),
        "machine": machine_before,
        "load_average_after_1_5_15_min": list(os.getloadavg()),
        "versions": versions(),
        "method": {
            "step": "module.zero_grad(); loss = module(x, labels); loss.backward(); for "
            + bench.inputs,
            "time": f"median (and min) over repeats (ours: {args.repeats}, reference: "
            f"{args.reference_repeats}) after one warm-up step, CUDA events on GPU; "
            "speedup = reference median / ours median. On a shared machine the load averages "
            "recorded in `machine` and `load_average_after_1_5_15_min` tell how quiet it was.",
            "memory": "CPU: each case runs in a fresh subprocess; peak = ru_maxrss after the "
            "steps minus the resident set size just before the warm-up step, i.e. the peak "
            "increase over the parameters and inputs (glibc malloc, no torch caching allocator "
            "on CPU). GPU: torch.cuda.max_memory_allocated minus memory_allocated before.",
            "loss_check": f"fp32: |ours - reference| / |reference| <= {bench.loss_rtol} on the "
            f"first step ({bench.loss_rtol_reason})",
        },
        "targets": bench.targets,
        "cases": cases,
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", choices=sorted(LOSSES), default="hist")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps for ours")
    parser.add_argument("--reference-repeats", type=int, default=3, help="for the reference")
    parser.add_argument(
        "--sizes", nargs="+", default=None, help="NAME:BxCxD (default: the loss's paper sizes)"
    )
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return
    result = benchmark(args)
    device_name = torch.device(args.device).type
    out = write_results(
        result, args.out or RESULTS_DIR / f"loss_speed_{args.loss}_{device_name}.json"
    )
    for case in result["cases"]:
        print(
            f"{case['size']:>20} {case['precision']}: ours {case['ours'].get('median_s', 'n/a')}"
            f" s, reference {case['reference'].get('median_s', 'n/a')} s, speedup "
            f"{case.get('speedup', 'n/a')}, memory ratio {case.get('memory_ratio', 'n/a')}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
