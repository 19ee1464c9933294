"""Section ``evaluation``: SOP-scale Recall@K, the runner's path against a dense reference."""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from pml_hyper.layers import ToPoincare
from pml_hyper.training.builders import build_tester

from ..knn_speed import make_clustered
from .measure import floor, timed_with_memory, with_floor
from .training import recipe_config

TARGET_EVAL_S = {"cosine": 2.0, "hyperbolic": 3.0}


def dense_recall(
    x: torch.Tensor, labels: torch.Tensor, k_values, metric: str, chunk: int, c: float = 0.1
) -> dict[str, float]:
    """Recall@K from a dense similarity matrix, ``chunk`` query rows × all N at a time, as the
    papers' evaluation code does (HIST: cosine of L2-normalised embeddings, 10,001-row chunks;
    HIER: Poincaré distance, 5,000-row chunks); self-matches excluded by index. The Poincaré
    distance uses its closed form on a Gram matrix (cheaper than the official Möbius form, so
    the comparison flatters the reference)."""
    n, k_max = len(x), max(k_values)
    if metric == "cosine":
        x = x / torch.sqrt((x * x).sum(dim=1, keepdim=True) + 1e-12)
    sq = (x * x).sum(dim=1)
    hits = torch.zeros(len(k_values), dtype=torch.int64, device=x.device)
    for start in range(0, n, chunk):
        q = x[start : start + chunk]
        rows = torch.arange(len(q), device=x.device)
        gram = q @ x.T
        if metric == "cosine":
            sim = gram
        else:
            d2 = (sq[start : start + chunk, None] + sq[None] - 2 * gram).clamp_min_(0)
            denom = (1 - c * sq[start : start + chunk, None]) * (1 - c * sq[None])
            sim = -torch.acosh(1 + 2 * c * d2 / denom)
        sim[rows, start + rows] = -torch.inf
        neighbours = labels[sim.topk(min(k_max, n - 1), dim=1).indices]
        same = neighbours == labels[start : start + chunk, None]
        hits += torch.stack([same[:, :k].any(dim=1).sum() for k in k_values])
    return {f"recall_at_{k}": h / n for k, h in zip(k_values, hits.tolist(), strict=True)}


def evaluation_section(args, device: torch.device, ceilings: dict) -> list[dict]:
    n, dim = (3000, 32) if args.tiny else (60502, 512)
    features, labels = make_clustered(n, dim, args.seed)
    labels = labels.to(device)
    rows = []
    # the SOP recipes' testers; the papers' evaluation chunks (HIST 10,001 rows, HIER 5,000)
    cases = (("cosine", "hist_sop_r50", 10001), ("hyperbolic", "hier_sop_r50", 5000))
    for metric, recipe, chunk in cases:
        config = recipe_config(recipe, tiny=False)
        k_values = config["eval"]["k_values"]
        if metric == "cosine":
            model = torch.nn.Identity()  # cosine geometry
            x = features.to(device)
        else:
            head = config["model"]["head_kwargs"]
            model = ToPoincare(c=head["c"], clip_r=head["clip_r"], riemannian=False)
            x = model(features).to(device)
        calculator = build_tester(config, model, device=device).accuracy_calculator

        def ours(metric=metric, x=x, calculator=calculator) -> dict:
            embeddings = F.normalize(x, dim=1) if metric == "cosine" else x
            return {k: float(v) for k, v in calculator.get_accuracy(embeddings, labels).items()}

        def reference(metric=metric, x=x, chunk=chunk, k_values=k_values) -> dict:
            return dense_recall(x, labels, k_values, metric, chunk)

        print(f"evaluation {metric} ...", file=sys.stderr, flush=True)
        repeats = 2 if args.tiny else 3
        work = floor(2 * n * n * dim, n * dim * 4 + n * max(k_values) * 8, "fp32", ceilings)
        row = {"metric": metric, "N": n, "dim": dim, "k_values": k_values}
        for impl, fn in (("ours", ours), ("reference", reference)):
            recalls = fn()
            measured = timed_with_memory(fn, device, 0, repeats)
            row[impl] = {**with_floor(measured, work), "recalls": recalls}
        row["speedup"] = row["reference"]["median_s"] / row["ours"]["median_s"]
        row["max_abs_recall_diff"] = max(
            abs(row["ours"]["recalls"][k] - row["reference"]["recalls"][k])
            for k in row["reference"]["recalls"]
        )
        if device.type == "cuda" and not args.tiny:
            row["targets"] = {
                "seconds_max": TARGET_EVAL_S[metric],
                "met": row["ours"]["median_s"] <= TARGET_EVAL_S[metric],
            }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows
