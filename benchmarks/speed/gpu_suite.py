"""GPU performance suite: training throughput, input pipeline, loss cost and SOP-scale evaluation,
pml_hyper against the papers' formulations, and every row against the device's own limit.

    python -m benchmarks.speed.gpu_suite                       # on a GPU, the papers' sizes
    python -m benchmarks.speed.gpu_suite --device cpu --tiny   # end to end at tiny sizes
    python -m benchmarks.speed.gpu_suite --render benchmarks/results/gpu_<device>_<date>.json

One command runs everything and writes ``benchmarks/results/gpu_<device>_<date>.json``,
``benchmarks/RESULTS.md`` (GPU runs at full size; ``--results-md`` elsewhere) and prints the
tables. ``--render`` rebuilds the Markdown from a JSON file without running anything.

Sections (``--sections`` runs a subset; the ceilings are always measured):

1. ``training``: images/s of one training step at 224² on device-resident synthetic batches, for
   the paper recipes in ``benchmarks/paper/`` (HIST ResNet-50 B=32 with C=100 and 11,318; PA+HIER
   ResNet-50 B=180, M=512 with C=100 and 11,318; PA+HIER ViT-S/16 B=180, D=384), three ways:
   ``reference`` (fp32, NCHW, the papers' loss formulations from ``reference/``, a for-loop
   optimizer as in the PyTorch 1.x the papers used), ``ours`` (``MetricLossTrainer``'s step with
   bf16 autocast, channels_last and the fused optimizer) and ``backbone_only`` (the same trainer
   step with a trivial loss): loss overhead = ours / backbone_only − 1, speed-up = reference /
   ours.
2. ``input_pipeline``: decoded JPEG images/s of the training transform with every CPU core,
   against what the training rows consume, and batched JPEG decoding on the device (nvJPEG on a
   GPU) with the same crop there.
3. ``loss``: the loss alone, forward + backward, fp32 and bf16, ours vs reference
   (``loss_speed.py``).
4. ``evaluation``: Recall@1/10/100/1000 of 60,502 × 512 embeddings (SOP's test split), cosine and
   hyperbolic, the runner's evaluation path against a dense chunked N×N reference.
5. ``ceilings``: measured matmul rates (bf16, tf32, fp32) and copy bandwidth; every row gets its
   FLOPs (``torch.utils.flop_counter``) and minimal bytes, the floor max(FLOPs / matmul rate,
   bytes / bandwidth), and measured ÷ floor.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

from .common import RESULTS_DIR, machine_info, utc_now, versions, write_results
from .gpu.evaluation import evaluation_section
from .gpu.input_pipeline import input_pipeline_section
from .gpu.loss import loss_section
from .gpu.measure import measure_ceilings
from .gpu.report import render_markdown
from .gpu.training import training_section

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE.parent / "RESULTS.md"
SECTIONS = ("training", "input_pipeline", "loss", "evaluation")


def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device).lower().removeprefix("nvidia ")
    return "".join(ch if ch.isalnum() else "-" for ch in name).strip("-")


def run_suite(args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    result = {
        "benchmark": "gpu_suite",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "tiny": args.tiny,
        "date": utc_now(),
        "machine": machine_info(str(device)),
        "versions": versions(),
        "settings": {"warmup": args.warmup, "repeats": args.repeats, "seed": args.seed},
    }
    print("ceilings ...", file=sys.stderr, flush=True)
    result["ceilings"] = ceilings = measure_ceilings(device, args.tiny)
    training = training_section(args, device, ceilings) if "training" in args.sections else []
    result["training"] = training
    if "input_pipeline" in args.sections:
        result["input_pipeline"] = input_pipeline_section(args, device, training)
    if "loss" in args.sections:
        result["loss"] = loss_section(args, device, ceilings)
    if "evaluation" in args.sections:
        result["evaluation"] = evaluation_section(args, device, ceilings)
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke run anywhere")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    parser.add_argument(
        "--results-md", type=Path, default=None, help="Markdown path (default: RESULTS.md on GPU)"
    )
    parser.add_argument("--render", type=Path, default=None, help="only render this JSON")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.render is not None:
        result, source = json.loads(args.render.read_text()), args.render
    else:
        result = run_suite(args)
        device = torch.device(args.device)
        date = datetime.date.today().isoformat()
        source = args.out or RESULTS_DIR / f"gpu_{device_slug(device)}_{date}.json"
        write_results(result, source)
        print(f"wrote {source}", file=sys.stderr)
    markdown = render_markdown(result, _relative(source))
    md_path = args.results_md
    full_gpu_run = result["device"].startswith("cuda") and not result["tiny"]
    if md_path is None and (args.render is not None or full_gpu_run):
        md_path = RESULTS_MD
    if md_path is not None:
        md_path.write_text(markdown + "\n")
        print(f"wrote {md_path}", file=sys.stderr)
    print(markdown)


def _relative(path: Path) -> str:
    path = Path(path).resolve()
    root = HERE.parent.parent
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


if __name__ == "__main__":
    main()
