"""HyperbolicKNN: exactness against brute force, PML evaluation stack, InferenceModel, errors."""

import ast
import math

import pytest
import torch
from pytorch_metric_learning import testers
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN, InferenceModel

from pml_hyper.distances import PoincareDistance
from pml_hyper.knn import HyperbolicKNN, hyperbolic_knn
from pml_hyper.layers import ToPoincare

BACKENDS = ["torch", "faiss"]


def ball_points(n, dim, dtype=torch.float32, spread=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, dim, generator=g, dtype=dtype) * spread
    return ToPoincare(c=0.1, clip_r=None, riemannian=False)(u)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ref_includes_query", [False, True])
def test_equals_brute_force_custom_knn_float64(backend, ref_includes_query):
    ref = ball_points(1500, 24, torch.float64, spread=1.5)
    query = ref[:300] if ref_includes_query else ball_points(300, 24, torch.float64, seed=1)
    d, i = HyperbolicKNN(c=0.1, backend=backend)(query, 15, ref, ref_includes_query)
    d_ref, i_ref = CustomKNN(PoincareDistance(c=0.1))(query, 15, ref, ref_includes_query)
    assert d.shape == i.shape == (300, 15) and d.dtype == torch.float64
    assert torch.equal(i, i_ref)
    torch.testing.assert_close(d, d_ref, rtol=1e-12, atol=1e-12)
    if ref_includes_query:
        assert not (i == torch.arange(300)[:, None]).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_inputs_match_brute_force_distances(backend):
    ref = ball_points(2000, 64)
    query = ball_points(200, 64, seed=3)
    d, i = HyperbolicKNN(backend=backend)(query, 10, ref)
    d_ref, i_ref = CustomKNN(PoincareDistance())(query, 10, ref)
    assert d.dtype == torch.float32
    torch.testing.assert_close(d, d_ref, rtol=1e-5, atol=0)
    exact_all = PoincareDistance()(query.double(), ref.double())
    torch.testing.assert_close(exact_all.gather(1, i), d.double(), rtol=0, atol=1e-6)


def spy_float64_search(monkeypatch) -> list[int]:
    """Record how many queries go through the float64 brute-force path."""
    rows = []
    original = HyperbolicKNN._float64_search

    def spy(self, x, *args):
        rows.append(len(x))
        return original(self, x, *args)

    monkeypatch.setattr(HyperbolicKNN, "_float64_search", spy)
    return rows


@pytest.mark.parametrize("backend", BACKENDS)
def test_near_ties_fall_back_to_float64_and_stay_exact(backend, monkeypatch):
    """With no spare candidates, float32 cannot certify any query: every query is redone."""
    redone = spy_float64_search(monkeypatch)
    ref = ball_points(800, 16, torch.float64, spread=2.0)
    query = ball_points(50, 16, torch.float64, spread=2.0, seed=7)
    d, i = HyperbolicKNN(backend=backend, rerank=0)(query, 5, ref)
    d_ref, i_ref = CustomKNN(PoincareDistance())(query, 5, ref)
    assert redone == [50]
    assert torch.equal(i, i_ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_data_is_certified_without_fallback(backend, monkeypatch):
    redone = spy_float64_search(monkeypatch)
    ref = ball_points(3000, 32)
    HyperbolicKNN(backend=backend)(ref[:500], 10, ref, True)
    assert redone == []


def test_large_k_uses_float64_brute_force(monkeypatch):
    redone = spy_float64_search(monkeypatch)
    ref = ball_points(1000, 8, torch.float64)
    d, i = HyperbolicKNN()(ref[:40], 200, ref)
    d_ref, i_ref = CustomKNN(PoincareDistance())(ref[:40], 200, ref)
    assert redone == [40]
    torch.testing.assert_close(d, d_ref, rtol=1e-12, atol=1e-12)


def test_k_covering_all_references():
    ref = ball_points(30, 4, torch.float64)
    d, i = HyperbolicKNN()(ref, 29, ref, True)
    others = torch.arange(30).expand(30, 30)[~torch.eye(30, dtype=torch.bool)].view(30, 29)
    assert torch.equal(i.sort(1).values, others)
    full = PoincareDistance()(ref)
    full.fill_diagonal_(float("inf"))
    torch.testing.assert_close(d, full.sort(1).values[:, :29])


def test_accuracy_calculator_and_custom_knn_agree():
    ref = ball_points(600, 16, spread=1.0)
    labels = torch.arange(60).repeat_interleave(10)
    centers = ball_points(60, 16, spread=1.0, seed=9)
    ref = 0.6 * centers[labels] + 0.4 * ref
    include = ("precision_at_1", "mean_average_precision_at_r", "r_precision")
    ours = AccuracyCalculator(include=include, k="max_bin_count", knn_func=HyperbolicKNN())
    brute = AccuracyCalculator(
        include=include, k="max_bin_count", knn_func=CustomKNN(PoincareDistance())
    )
    a = ours.get_accuracy(ref, labels, ref, labels, ref_includes_query=True)
    b = brute.get_accuracy(ref, labels, ref, labels, ref_includes_query=True)
    assert a == pytest.approx(b, abs=1e-6)
    assert a["precision_at_1"] > 0.5


def test_global_embedding_space_tester_runs():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat_interleave(8)
    data = torch.randn(10, 12, generator=g)[labels] + 0.3 * torch.randn(80, 12, generator=g)
    dataset = torch.utils.data.TensorDataset(data, labels)
    trunk = torch.nn.Sequential(torch.nn.Linear(12, 12), ToPoincare(c=0.1))
    tester = testers.GlobalEmbeddingSpaceTester(
        normalize_embeddings=False,
        batch_size=16,
        dataloader_num_workers=0,
        accuracy_calculator=AccuracyCalculator(
            include=("precision_at_1", "r_precision"), k=10, knn_func=HyperbolicKNN(c=0.1)
        ),
    )
    accuracies = tester.test({"val": dataset}, 1, trunk)
    acc = accuracies["val"]
    assert set(acc) >= {"precision_at_1_level0", "r_precision_level0"}
    assert 0.5 < acc["precision_at_1_level0"] <= 1.0


def test_inference_model_index(tmp_path):
    ref = ball_points(200, 8)
    knn = HyperbolicKNN()
    model = InferenceModel(torch.nn.Identity(), normalize_embeddings=False, knn_func=knn)
    model.train_knn(ref[:150])
    model.add_to_knn(ref[150:])
    d, i = model.get_nearest_neighbors(ref[:5], k=3)
    d_ref, i_ref = CustomKNN(PoincareDistance())(ref[:5], 3, ref)
    assert torch.equal(i, i_ref)
    path = str(tmp_path / "index.pt")
    model.save_knn_func(path)
    other = HyperbolicKNN()
    other.load(path)
    assert torch.equal(other.reference, knn.reference)
    with pytest.raises(ValueError, match="c=0.3"):
        HyperbolicKNN(c=0.3).load(path)


@pytest.mark.parametrize(
    ("name", "k_list"),
    [("CUB_hyp", [1, 2, 4, 8]), ("SOP_hyp", [1, 10, 100, 1000])],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_reproduces_official_recall(hier_golden, name, k_list, backend):
    """R@K from our neighbours equals the papers' printed lists (golden.md §4.3)."""
    rec = hier_golden["recall_official_helpers"][name]
    x, y = rec["x"], rec["y"]
    _, idx = HyperbolicKNN(c=rec["hyp_c"], backend=backend)(x, max(k_list), x, True)
    hits = y[idx] == y[:, None]
    recall = [hits[:, :k].any(1).sum().item() / len(y) for k in k_list]
    assert recall == pytest.approx(ast.literal_eval(rec["recall_list_printed"]), abs=1e-9)


def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    ref = ball_points(1000, 32, torch.float64)
    d, i = HyperbolicKNN(backend="torch")(ref.cuda(), 10, ref.cuda(), True)
    d_cpu, i_cpu = HyperbolicKNN(backend="torch")(ref, 10, ref, True)
    assert i.is_cuda and torch.equal(i.cpu(), i_cpu)


def test_errors(monkeypatch):
    knn = HyperbolicKNN()
    ref = ball_points(10, 4)
    with pytest.raises(ValueError, match="no reference set"):
        knn(ref, 3)
    with pytest.raises(ValueError, match="2-D"):
        knn(ref[0], 3, ref)
    with pytest.raises(ValueError, match="dimensions"):
        knn(ref[:, :3], 3, ref)
    with pytest.raises(ValueError, match="out of range"):
        knn(ref, 10, ref, ref_includes_query=True)
    with pytest.raises(ValueError, match="out of range"):
        knn(ref, 0, ref)
    outside = ref.clone()
    outside[4, 0] = 1 / math.sqrt(0.1)
    with pytest.raises(ValueError, match=r"reference rows \[4\] lie on or outside"):
        knn(ref, 3, outside)
    nan = ref.clone()
    nan[1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"query rows \[1\] contain NaN"):
        knn(nan, 3, ref)
    with pytest.raises(ValueError, match="backend"):
        HyperbolicKNN(backend="annoy")
    monkeypatch.setattr(hyperbolic_knn, "faiss_available", lambda: False)
    with pytest.raises(ImportError, match="faiss"):
        HyperbolicKNN(backend="faiss")
    assert HyperbolicKNN()._resolve_backend(torch.device("cpu")) == "torch"
