import ast

import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
from pytorch_metric_learning.testers import GlobalEmbeddingSpaceTester
from pytorch_metric_learning.utils.inference import CustomKNN, FaissKNN

from pml_hyper.evaluation import (
    CUB_CARS_K_VALUES,
    INSHOP_K_VALUES,
    SOP_K_VALUES,
    RecallAtK,
    recall_metric_names,
)
from pml_hyper.knn import HyperbolicKNN
from pml_hyper.layers import ToPoincare

CPU = torch.device("cpu")
K_LISTS = {"cub_cars": CUB_CARS_K_VALUES, "sop": SOP_K_VALUES, "inshop": INSHOP_K_VALUES}
C = 0.1


def make_data(geometry, n, num_classes, seed, dim=8):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    if geometry == "poincare":
        x = ToPoincare(c=C, clip_r=2.3, riemannian=False)(0.8 * x)
    labels = torch.randint(num_classes, (n,), generator=generator)
    return x.float(), labels


def brute_force_recall(geometry, k_values, query, query_labels, reference=None, labels=None):
    """Recall@K from a full float64 distance matrix; ``reference=None`` is all-vs-all with the
    query itself excluded."""
    all_vs_all = reference is None
    if all_vs_all:
        reference, labels = query, query_labels
    q, r = query.double(), reference.double()
    if geometry == "poincare":
        sq = torch.cdist(q, r).square()
        den = (1 - C * q.square().sum(1))[:, None] * (1 - C * r.square().sum(1))[None, :]
        dist = torch.acosh(1 + 2 * C * sq / den) / C**0.5
    elif geometry == "cosine":
        dist = -torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(r, dim=1).T
    else:
        dist = torch.cdist(q, r)
    if all_vs_all:
        dist.fill_diagonal_(float("inf"))
    same = labels[dist.argsort(dim=1)] == query_labels[:, None]
    recalls = (same[:, :k].any(dim=1).double().mean().item() for k in k_values)
    return dict(zip(recall_metric_names(k_values), recalls, strict=True))


KNN_FUNCS = {
    "poincare": lambda: HyperbolicKNN(c=C),
    "euclidean": lambda: CustomKNN(LpDistance(normalize_embeddings=False)),
    "euclidean_faiss": lambda: FaissKNN(),
    "cosine": lambda: CustomKNN(CosineSimilarity()),
}


@pytest.mark.parametrize("knn", list(KNN_FUNCS))
@pytest.mark.parametrize("k_list", list(K_LISTS))
@pytest.mark.parametrize("protocol", ["all_vs_all", "query_gallery"])
def test_matches_brute_force(knn, k_list, protocol):
    geometry = "euclidean" if knn.startswith("euclidean") else knn
    k_values = K_LISTS[k_list]
    n = 1100 if k_list == "sop" else 300
    x, y = make_data(geometry, n, num_classes=n // 4, seed=len(knn) + n)
    calculator = RecallAtK(
        k_values, knn_func=KNN_FUNCS[knn](), include=recall_metric_names(k_values), device=CPU
    )
    if protocol == "all_vs_all":
        got = calculator.get_accuracy(x, y)
        expected = brute_force_recall(geometry, k_values, x, y)
    else:
        split = n // 3
        xq, yq, xg, yg = x[:split], y[:split], x[split:], y[split:]
        got = calculator.get_accuracy(xq, yq, xg, yg)
        expected = brute_force_recall(geometry, k_values, xq, yq, xg, yg)
    assert got == pytest.approx(expected, abs=1e-12)


def test_recall_metric_names_without_and_with_an_instance():
    assert recall_metric_names((1, 10, 100)) == ["recall_at_1", "recall_at_10", "recall_at_100"]
    calculator = RecallAtK((8, 1, 2), knn_func=KNN_FUNCS["cosine"](), device=CPU)
    assert calculator.recall_metric_names() == recall_metric_names((1, 2, 8))


def test_recall_at_1_equals_precision_at_1():
    x, _ = make_data("euclidean", 400, num_classes=50, seed=3)
    y = torch.arange(400) % 50  # no lone query
    knn = CustomKNN(LpDistance(normalize_embeddings=False))
    got = RecallAtK(knn_func=knn, device=CPU).get_accuracy(x, y, include=("precision_at_1",))
    assert set(got) == {"precision_at_1"}
    got = RecallAtK(knn_func=knn, device=CPU).get_accuracy(x, y)
    assert got["recall_at_1"] == got["precision_at_1"]
    assert {"mean_average_precision_at_r", "r_precision", "NMI"} <= set(got)


def test_lone_queries_count_as_misses_unless_excluded():
    x, y = make_data("euclidean", 200, num_classes=20, seed=4)
    y[:10] = 1000 + torch.arange(10)  # ten classes with a single member
    knn = CustomKNN(LpDistance(normalize_embeddings=False))
    include = ("precision_at_1", "recall_at_1", "recall_at_8")
    counted = RecallAtK(knn_func=knn, include=include, device=CPU).get_accuracy(x, y)
    expected = brute_force_recall("euclidean", (1, 8), x, y)
    assert counted["recall_at_1"] == pytest.approx(expected["recall_at_1"], abs=1e-12)
    assert counted["recall_at_8"] == pytest.approx(expected["recall_at_8"], abs=1e-12)
    assert counted["recall_at_1"] == pytest.approx(counted["precision_at_1"] * 190 / 200)
    excluded = RecallAtK(knn_func=knn, include=include, exclude_lone_queries=True, device=CPU)
    excluded = excluded.get_accuracy(x, y)
    assert excluded["recall_at_1"] == pytest.approx(excluded["precision_at_1"], abs=1e-12)


def test_neighbour_count_covers_the_largest_k():
    seen = []

    class SpyKNN(CustomKNN):
        def __call__(self, query, k, reference, ref_includes_query):
            seen.append(k)
            return super().__call__(query, k, reference, ref_includes_query)

    x, y = make_data("euclidean", 60, num_classes=5, seed=5)
    knn = SpyKNN(LpDistance(normalize_embeddings=False))
    RecallAtK((1, 4), knn_func=knn, include=("recall_at_4",), device=CPU).get_accuracy(x, y)
    RecallAtK((1, 30), knn_func=knn, device=CPU).get_accuracy(x, y)  # max bin count > 4
    RecallAtK((1, 100), knn_func=knn, device=CPU).get_accuracy(x, y)  # capped at 60 - 1
    largest_other = int(torch.bincount(y).max()) - 1
    assert seen == [max(largest_other, 4), max(largest_other, 30), 59]
    result = RecallAtK((1, 100), knn_func=knn, include=("recall_at_100",), device=CPU)
    assert result.get_accuracy(x, y)["recall_at_100"] == 1.0


def test_return_per_class_and_avg_of_avgs():
    x, y = make_data("euclidean", 100, num_classes=7, seed=6)
    knn = CustomKNN(LpDistance(normalize_embeddings=False))
    per_class = RecallAtK(knn_func=knn, include=("recall_at_2",), return_per_class=True)
    assert len(per_class.get_accuracy(x, y)["recall_at_2"]) == 7
    averaged = RecallAtK(knn_func=knn, include=("recall_at_2",), avg_of_avgs=True)
    value = averaged.get_accuracy(x, y)["recall_at_2"]
    assert value == pytest.approx(np.mean(per_class.get_accuracy(x, y)["recall_at_2"]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k_values": ()}, "distinct positive ints"),
        ({"k_values": (1, 1)}, "distinct positive ints"),
        ({"k_values": (0, 2)}, "distinct positive ints"),
        ({"k_values": (1.0,)}, "distinct positive ints"),
        ({"k_values": (1, 8), "k": 4}, "below max"),
        ({"include": ("recall_at_3",)}, "Primary metrics"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RecallAtK(**kwargs, knn_func=CustomKNN(LpDistance()))


@pytest.mark.parametrize("protocol", ["all_vs_all", "query_gallery"])
def test_pml_tester_with_hyperbolic_knn(protocol):
    x, y = make_data("poincare", 240, num_classes=40, seed=7)
    datasets = {
        "query": torch.utils.data.TensorDataset(x[:80], y[:80]),
        "gallery": torch.utils.data.TensorDataset(x[80:], y[80:]),
    }
    calculator = RecallAtK(
        INSHOP_K_VALUES, knn_func=HyperbolicKNN(c=C), include=recall_metric_names(INSHOP_K_VALUES)
    )
    tester = GlobalEmbeddingSpaceTester(
        normalize_embeddings=False,
        accuracy_calculator=calculator,
        dataloader_num_workers=0,
        batch_size=64,
    )
    if protocol == "all_vs_all":
        splits = [("gallery", ["gallery"])]
        expected = brute_force_recall("poincare", INSHOP_K_VALUES, x[80:], y[80:])
    else:
        splits = [("query", ["gallery"])]
        expected = brute_force_recall("poincare", INSHOP_K_VALUES, x[:80], y[:80], x[80:], y[80:])
    results = tester.test(datasets, 0, torch.nn.Identity(), splits_to_eval=splits)
    ((_, accuracies),) = results.items()
    for name, value in expected.items():
        assert accuracies[f"{name}_level0"] == pytest.approx(value, abs=1e-12)


GOLDEN_CASES = {
    "CUB_hyp": CUB_CARS_K_VALUES,
    "CUB_sphere": CUB_CARS_K_VALUES,
    "SOP_hyp": SOP_K_VALUES,
    "SOP_sphere": SOP_K_VALUES,
}


@pytest.mark.parametrize("case", list(GOLDEN_CASES))
def test_reproduces_official_recall(hier_golden, case):
    entry = hier_golden["recall_official_helpers"][case]
    k_values = GOLDEN_CASES[case]
    assert torch.equal(entry["index"], torch.arange(len(entry["x"])))
    if entry["hyp_c"] > 0:
        knn, x = HyperbolicKNN(c=entry["hyp_c"]), entry["x"]
    else:
        knn, x = CustomKNN(CosineSimilarity()), torch.nn.functional.normalize(entry["x"], dim=1)
    names = recall_metric_names(k_values)
    got = RecallAtK(k_values, knn_func=knn, include=names, device=CPU).get_accuracy(x, entry["y"])
    assert [got[name] for name in names] == ast.literal_eval(entry["recall_list_printed"])


@pytest.mark.parametrize("quirk", [True, False])
def test_reproduces_official_inshop_recall_with_the_quirk(hier_golden, quirk):
    entry = hier_golden["recall_official_helpers"]["Inshop_hyp"]
    calculator = RecallAtK(
        INSHOP_K_VALUES,
        knn_func=HyperbolicKNN(c=entry["hyp_c"]),
        include=recall_metric_names(INSHOP_K_VALUES),
        official_inshop_mask=quirk,
        device=CPU,
    )
    got = calculator.get_accuracy(entry["xq"], entry["yq"], entry["xg"], entry["yg"])
    got = [got[name] for name in recall_metric_names(INSHOP_K_VALUES)]
    official = ast.literal_eval(entry["recall_list_printed"])
    if quirk:
        assert got == official
    else:  # golden.md, official recall: without the quirk only R@10 changes, to 0.206667
        assert got[1] == pytest.approx(0.206667, abs=1e-6)
        assert got[0] == official[0] and got[2:] == official[2:]


def test_inshop_quirk_leaves_all_vs_all_unchanged():
    x, y = make_data("euclidean", 120, num_classes=30, seed=8)
    knn = CustomKNN(LpDistance(normalize_embeddings=False))
    kwargs = {"knn_func": knn, "exclude": ("NMI", "AMI"), "device": CPU}
    plain = RecallAtK(INSHOP_K_VALUES, **kwargs).get_accuracy(x, y)
    quirk = RecallAtK(INSHOP_K_VALUES, official_inshop_mask=True, **kwargs).get_accuracy(x, y)
    assert len(quirk) == 9 and quirk == pytest.approx(plain)


@pytest.mark.parametrize("knn", [None, "poincare", "cosine"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_embeddings_are_an_error_naming_the_rows(knn, bad):
    x, y = make_data("euclidean", 50, num_classes=5, seed=8)
    x[[3, 17]] = bad
    kwargs = {} if knn is None else {"knn_func": KNN_FUNCS[knn]()}
    calculator = RecallAtK((1,), include=("recall_at_1",), device=CPU, **kwargs)
    with pytest.raises(ValueError, match=r"2 query embedding rows hold NaN or inf \(rows 3, 17\)"):
        calculator.get_accuracy(x, y)
    with pytest.raises(ValueError, match=r"reference embedding rows .*rows 3, 17"):
        calculator.get_accuracy(x[:2].nan_to_num(), y[:2], x, y)
