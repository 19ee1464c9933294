import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.testers import GlobalEmbeddingSpaceTester
from pytorch_metric_learning.utils.inference import CustomKNN

from pml_hyper.evaluation import RecallAtK, level_accuracies, recall_metric_names
from pml_hyper.knn import HyperbolicKNN
from pml_hyper.layers import ToPoincare

C = 0.1
K_VALUES = (1, 2, 4, 8)
CPU = torch.device("cpu")


def make_tree_data(geometry, n=240, seed=0):
    """Three-level labels: 60 classes in 12 groups in 3 super-groups, clustered embeddings."""
    g = torch.Generator().manual_seed(seed)
    fine = torch.randint(60, (n,), generator=g)
    labels = torch.stack([fine, fine // 5, fine // 20], dim=1)
    centres = torch.randn(60, 6, generator=g, dtype=torch.float64)
    x = centres[fine] + 0.9 * torch.randn(n, 6, generator=g, dtype=torch.float64)
    if geometry == "poincare":
        x = ToPoincare(c=C, clip_r=2.3, riemannian=False)(0.5 * x)
    return x.float(), labels


def distance_matrix(geometry, q, r):
    q, r = q.double(), r.double()
    if geometry == "poincare":
        sq = torch.cdist(q, r).square()
        den = (1 - C * q.square().sum(1))[:, None] * (1 - C * r.square().sum(1))[None, :]
        return torch.acosh(1 + 2 * C * sq / den) / C**0.5
    q, r = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(r, dim=1)
    return -q @ r.T


def brute_force(geometry, q, ql, r=None, rl=None):
    """Per level L: fraction of queries with a same-level-L label among the K nearest."""
    all_vs_all = r is None
    if all_vs_all:
        r, rl = q, ql
    dist = distance_matrix(geometry, q, r)
    if all_vs_all:
        dist.fill_diagonal_(float("inf"))
    order = dist.argsort(dim=1)
    result = {}
    for level in range(ql.shape[1]):
        same = rl[:, level][order] == ql[:, level][:, None]
        result[level] = {
            f"recall_at_{k}": same[:, :k].any(dim=1).double().mean().item() for k in K_VALUES
        }
    return result


KNN = {"poincare": lambda: HyperbolicKNN(c=C), "cosine": lambda: CustomKNN(CosineSimilarity())}


@pytest.mark.parametrize("geometry", list(KNN))
def test_tester_all_levels_match_brute_force(geometry):
    x, y = make_tree_data(geometry)
    calculator = RecallAtK(
        K_VALUES, knn_func=KNN[geometry](), include=recall_metric_names(K_VALUES), device=CPU
    )
    tester = GlobalEmbeddingSpaceTester(
        normalize_embeddings=False,
        label_hierarchy_level="all",
        accuracy_calculator=calculator,
        dataloader_num_workers=0,
        data_device=CPU,
    )
    dataset = torch.utils.data.TensorDataset(x, y)
    got = tester.test({"test": dataset}, 0, torch.nn.Identity())["test"]
    expected = brute_force(geometry, x, y)
    assert len(expected) == 3
    for level, metrics in expected.items():
        for name, value in metrics.items():
            assert got[f"{name}_level{level}"] == pytest.approx(value, abs=1e-12)
    # coarser levels are easier
    assert got["recall_at_1_level0"] <= got["recall_at_1_level1"] <= got["recall_at_1_level2"]
    assert got["recall_at_1_level0"] < 1.0


@pytest.mark.parametrize("geometry", list(KNN))
def test_level_accuracies_query_gallery_matches_brute_force(geometry):
    x, y = make_tree_data(geometry, seed=1)
    calculator = RecallAtK(
        K_VALUES, knn_func=KNN[geometry](), include=recall_metric_names(K_VALUES), device=CPU
    )
    names = ("item", "category", "gender")
    got = level_accuracies(calculator, x[:80], y[:80], x[80:], y[80:], level_names=names)
    expected = brute_force(geometry, x[:80], y[:80], x[80:], y[80:])
    assert list(got) == list(names)
    for level, name in enumerate(names):
        assert got[name] == pytest.approx(expected[level], abs=1e-12)


def test_level_accuracies_bad_input():
    x, y = make_tree_data("cosine", n=30)
    calculator = RecallAtK((1,), knn_func=KNN["cosine"](), device=CPU)
    with pytest.raises(ValueError, match="29 labels for 30 embeddings"):
        level_accuracies(calculator, x, y[:29])
    with pytest.raises(ValueError, match="2 level names for 3 label levels"):
        level_accuracies(calculator, x, y, level_names=("a", "b"))
    with pytest.raises(ValueError, match="3 levels, reference labels 2"):
        level_accuracies(calculator, x, y, x, y[:, :2])
