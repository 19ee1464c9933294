"""Section ``loss``: the loss alone, forward + backward, ours vs the papers' formulations."""

from __future__ import annotations

import sys

import torch

from .. import loss_speed
from .measure import count_flops, floor, with_floor


def loss_section(args, device: torch.device, ceilings: dict) -> list[dict]:
    sizes = {
        "hist": ["tiny:8x20x32"] if args.tiny else ["SOP:32x11318x512", "SOP:180x11318x512"],
        "hier": ["tiny:24x32x32"] if args.tiny else ["B180-M512-D512:180x512x512"],
    }
    rows = []
    for name, loss_sizes in sizes.items():
        argv = ["--loss", name, "--device", str(device), "--sizes", *loss_sizes]
        argv += ["--precisions", "fp32", "bf16", "--repeats", str(args.repeats)]
        argv += ["--reference-repeats", str(max(args.repeats // 2, 2)), "--seed", str(args.seed)]
        print(f"loss {name} ...", file=sys.stderr, flush=True)
        result = loss_speed.benchmark(loss_speed.parse_args(argv))
        for case in result["cases"]:
            size = loss_speed.Size.parse(case["size"])
            work = loss_work(name, size, device, args.seed)
            for impl in ("ours", "reference"):
                measured = case[impl]
                if "median_s" in measured:
                    precision = "bf16" if case["precision"] == "bf16" else "fp32"
                    case[impl] = with_floor(
                        measured, floor(work["flops"], work["bytes"], precision, ceilings)
                    )
            rows.append({"loss": name, **case})
    return rows


def loss_work(name: str, size, device: torch.device, seed: int) -> dict:
    """FLOPs of ours' forward + backward and the bytes any implementation must move: inputs
    read, parameters read twice, their gradients written."""
    module, (embeddings, labels) = loss_speed.LOSSES[name].setup("ours", size, device, seed)
    x = embeddings.detach().requires_grad_()
    flops = count_flops(lambda: module(x, labels).backward())
    params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    nbytes = embeddings.numel() * 4 * 2 + labels.numel() * 8 + params * 4 * 3
    return {"flops": flops, "bytes": nbytes}
