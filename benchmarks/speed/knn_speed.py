"""Exact kNN speed: HyperbolicKNN / CosineKNN vs PML CustomKNN vs a faiss flat search.

    python -m benchmarks.speed.knn_speed --device cpu
    python -m benchmarks.speed.knn_speed --device cpu --metric cosine

For each reference-set size N and each k, the first ``--queries`` reference points are searched
against all N (SOP-style self-retrieval, ``ref_includes_query=True``):

- ``hyperbolic_<backend>``: pml_hyper's exact hyperbolic kNN (Lorentz lift + inner-product search
  + certified float64 re-ranking);
- ``customknn_poincare``: PML's brute force ``CustomKNN(PoincareDistance(), batch_size=...)`` on the
  first ``--custom-queries`` queries (it is slow; times are compared per query);
- ``faiss_l2``: PML's ``FaissKNN()`` (exact Euclidean ``IndexFlatL2``) on the same points: the
  cost of an exact flat search on this hardware, the target to be close to.

Exactness is checked on the CustomKNN queries against a float64 brute force. Results go to
``benchmarks/results/knn_speed_<device>.json``.

``--metric cosine`` times the cosine evaluation of the HIST recipes on the raw clustered features:
``cosine_<backend>`` (:class:`~pml_hyper.knn.CosineKNN`), ``faiss_ip`` (faiss ``IndexFlatIP`` on
the L2-normalised float32 rows, the target) and ``customknn_cosine`` (PML's
``CustomKNN(CosineSimilarity(), batch_size=1024)``, the runner's previous default); results go to
``benchmarks/results/knn_speed_cosine_<device>.json``.
"""

import argparse
import functools
import sys
from pathlib import Path

import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.utils.inference import CustomKNN

from pml_hyper.distances import PoincareDistance
from pml_hyper.knn import CosineKNN, HyperbolicKNN
from pml_hyper.knn.base_knn import faiss_available
from pml_hyper.layers import ToPoincare

from .common import RESULTS_DIR, machine_info, time_calls, utc_now, versions, write_results


def make_clustered(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, dim) features around ~n/5 class centres (about 5 per class, as in SOP's test split)
    with tangent norms 0.5..6, and their (n,) labels; on the CPU."""
    g = torch.Generator().manual_seed(seed)
    n_classes = max(1, n // 5)
    centers = torch.randn(n_classes, dim, generator=g)
    labels = torch.randint(0, n_classes, (n,), generator=g)
    u = centers[labels] + 0.7 * torch.randn(n, dim, generator=g)
    return u / u.norm(dim=1, keepdim=True) * (0.5 + 5.5 * torch.rand(n, 1, generator=g)), labels


def make_embeddings(n: int, dim: int, device: torch.device, seed: int) -> torch.Tensor:
    """Clustered HIER-like embeddings (:func:`make_clustered`) mapped into the ball, clipped
    at 2.3."""
    features, _ = make_clustered(n, dim, seed)
    return ToPoincare(c=0.1, clip_r=2.3, riemannian=False)(features).to(device)


def timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    """Best of ``repeats`` timed calls of ``fn`` and the last call's output."""
    outputs = []
    seconds = time_calls(lambda: outputs.append(fn()), device, 0, repeats)["min_s"]
    return seconds, outputs[-1]


def run_case(args, n: int, k: int, device: torch.device) -> dict:
    ref = make_embeddings(n, args.dim, device, args.seed)
    queries = ref[: args.queries]
    custom_queries = ref[: args.custom_queries]
    case = {"N": n, "k": k, "dim": args.dim, "queries": len(queries)}
    methods = {}
    backends = ["torch"] + (["faiss"] if faiss_available() and device.type == "cpu" else [])
    ours_idx = None
    for backend in backends:
        knn = HyperbolicKNN(c=0.1, backend=backend)
        search = functools.partial(knn, queries, k, ref, True)
        seconds, (_, idx) = timed(search, device, args.repeats)
        methods[f"hyperbolic_{backend}"] = {
            "seconds": seconds,
            "ms_per_query": 1e3 * seconds / len(queries),
        }
        ours_idx = idx if ours_idx is None else ours_idx
        print(f"N={n} k={k} hyperbolic_{backend}: {seconds:.2f} s", file=sys.stderr, flush=True)
    if faiss_available():
        from pytorch_metric_learning.utils.inference import FaissKNN

        seconds, _ = timed(lambda: FaissKNN()(queries, k, ref, True), device, args.repeats)
        methods["faiss_l2"] = {"seconds": seconds, "ms_per_query": 1e3 * seconds / len(queries)}
        print(f"N={n} k={k} faiss_l2: {seconds:.2f} s", file=sys.stderr, flush=True)
    custom = CustomKNN(PoincareDistance(c=0.1), batch_size=args.custom_batch)
    seconds, (_, custom_idx) = timed(lambda: custom(custom_queries, k, ref, True), device, 1)
    methods["customknn_poincare"] = {
        "seconds": seconds,
        "queries": len(custom_queries),
        "ms_per_query": 1e3 * seconds / len(custom_queries),
    }
    print(f"N={n} k={k} customknn_poincare: {seconds:.2f} s", file=sys.stderr, flush=True)

    brute = CustomKNN(PoincareDistance(c=0.1), batch_size=args.custom_batch)
    _, exact_idx = brute(custom_queries.double(), k, ref.double(), True)
    head = ours_idx[: len(custom_queries)]
    case["exactness"] = {
        "reference": "float64 brute force CustomKNN(PoincareDistance) on the CustomKNN queries",
        "hyperbolic_knn_identical_rows": (head == exact_idx).all(1).float().mean().item(),
        "customknn_float32_identical_rows": (custom_idx == exact_idx).all(1).float().mean().item(),
    }
    case["methods"] = methods
    best_ours = min(v["ms_per_query"] for key, v in methods.items() if key.startswith("hyperb"))
    case["speedup_vs_customknn"] = methods["customknn_poincare"]["ms_per_query"] / best_ours
    if "faiss_l2" in methods:
        case["time_ratio_vs_faiss_l2"] = best_ours / methods["faiss_l2"]["ms_per_query"]
    return case


def run_cosine_case(args, n: int, k: int, device: torch.device) -> dict:
    ref = make_clustered(n, args.dim, args.seed)[0].to(device)
    queries = ref[: args.queries]
    custom_queries = ref[: args.custom_queries]
    case = {"N": n, "k": k, "dim": args.dim, "queries": len(queries)}
    methods = {}
    backends = ["torch"] + (["faiss"] if faiss_available() and device.type == "cpu" else [])
    ours_idx = {}
    for backend in backends:
        knn = CosineKNN(backend=backend)
        search = functools.partial(knn, queries, k, ref, True)
        seconds, (_, idx) = timed(search, device, args.repeats)
        methods[f"cosine_{backend}"] = {
            "seconds": seconds,
            "ms_per_query": 1e3 * seconds / len(queries),
        }
        ours_idx[backend] = idx
        print(f"N={n} k={k} cosine_{backend}: {seconds:.2f} s", file=sys.stderr, flush=True)
    if faiss_available() and device.type == "cpu":
        import faiss

        def faiss_ip():
            unit = torch.nn.functional.normalize(ref, dim=1).numpy()
            index = faiss.IndexFlatIP(unit.shape[1])
            index.add(unit)
            return index.search(unit[: len(queries)], k + 1)

        seconds, _ = timed(faiss_ip, device, args.repeats)
        methods["faiss_ip"] = {"seconds": seconds, "ms_per_query": 1e3 * seconds / len(queries)}
        print(f"N={n} k={k} faiss_ip: {seconds:.2f} s", file=sys.stderr, flush=True)
    custom = CustomKNN(CosineSimilarity(), batch_size=1024)
    seconds, (_, custom_idx) = timed(lambda: custom(custom_queries, k, ref, True), device, 1)
    methods["customknn_cosine"] = {
        "seconds": seconds,
        "queries": len(custom_queries),
        "ms_per_query": 1e3 * seconds / len(custom_queries),
    }
    print(f"N={n} k={k} customknn_cosine: {seconds:.2f} s", file=sys.stderr, flush=True)
    _, exact_idx = CustomKNN(CosineSimilarity(), batch_size=256)(
        custom_queries.double(), k, ref.double(), True
    )
    case["exactness"] = {
        "reference": "float64 brute force CustomKNN(CosineSimilarity) on the CustomKNN queries",
        **{
            f"cosine_{b}_identical_rows": (idx[: len(custom_queries)] == exact_idx)
            .all(1)
            .float()
            .mean()
            .item()
            for b, idx in ours_idx.items()
        },
        "customknn_float32_identical_rows": (custom_idx == exact_idx).all(1).float().mean().item(),
    }
    case["methods"] = methods
    best = min(v["ms_per_query"] for key, v in methods.items() if key.startswith("cosine_"))
    case["speedup_vs_customknn"] = methods["customknn_cosine"]["ms_per_query"] / best
    if "faiss_ip" in methods:
        case["time_ratio_vs_faiss_ip"] = best / methods["faiss_ip"]["ms_per_query"]
    return case


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--metric", choices=["hyperbolic", "cosine"], default="hyperbolic")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 60_000])
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--custom-queries", type=int, default=500)
    parser.add_argument("--custom-batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="best of N for the fast methods")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    cosine = args.metric == "cosine"
    case_fn = run_cosine_case if cosine else run_case
    cases = [case_fn(args, n, k, device) for n in args.sizes for k in args.ks]
    data = (
        "clustered features (about 5 per class, norms 0.5..6), not normalised; queries = the "
        "first Q reference points, ref_includes_query=True"
        if cosine
        else "clustered embeddings mapped by ToPoincare(c=0.1, clip_r=2.3); queries = the "
        "first Q reference points, ref_includes_query=True"
    )
    result = {
        "benchmark": "knn_speed_cosine" if cosine else "knn_speed",
        "torch_threads": torch.get_num_threads(),
        "device": args.device,
        "date": utc_now(),
        "machine": machine_info(args.device),
        "versions": versions(),
        "method": {
            "data": data,
            "time": f"best of {args.repeats} runs (CustomKNN: 1 run on fewer queries); compared "
            "per query",
        },
        "cases": cases,
    }
    name = "knn_speed_cosine" if cosine else "knn_speed"
    out = args.out or RESULTS_DIR / f"{name}_{device.type}.json"
    write_results(result, out)
    for case in cases:
        if cosine:
            exact = {k: v for k, v in case["exactness"].items() if k.endswith("rows")}
            print(
                f"N={case['N']:>6} k={case['k']:>5}: speed-up vs CustomKNN "
                f"{case['speedup_vs_customknn']:.1f}x, time vs faiss IP "
                f"{case.get('time_ratio_vs_faiss_ip', float('nan')):.2f}x, exact rows {exact}"
            )
            continue
        print(
            f"N={case['N']:>6} k={case['k']:>5}: speed-up vs CustomKNN "
            f"{case['speedup_vs_customknn']:.1f}x, time vs faiss L2 "
            f"{case.get('time_ratio_vs_faiss_l2', float('nan')):.2f}x, exact rows "
            f"{case['exactness']['hyperbolic_knn_identical_rows']:.4f}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
