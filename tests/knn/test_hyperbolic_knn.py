"""HyperbolicKNN: exactness against brute force, PML evaluation stack, InferenceModel, errors."""

import ast
import math

import pytest
import torch
from pytorch_metric_learning import testers
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN, InferenceModel

from pml_hyper.distances import PoincareDistance
from pml_hyper.knn import HyperbolicKNN, base_knn, hyperbolic_knn
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
@pytest.mark.parametrize(
    "n_ref, n_query, k, spread, seed",
    [(800, 50, 5, 2.0, 7), (4000, 30, 300, 1.0, 4)],
    ids=["small-k", "large-k-candidates"],
)
def test_near_ties_fall_back_to_float64_and_stay_exact(
    backend, n_ref, n_query, k, spread, seed, monkeypatch
):
    """With no spare candidates, float32 cannot certify any query: every query is redone (for
    small k and on the large-k candidate path, k + rerank < N / 10)."""
    redone = spy_float64_search(monkeypatch)
    ref = ball_points(n_ref, 16, torch.float64, spread=spread)
    query = ball_points(n_query, 16, torch.float64, spread=spread, seed=seed)
    d, i = HyperbolicKNN(backend=backend, rerank=0)(query, k, ref)
    d_ref, i_ref = CustomKNN(PoincareDistance())(query, k, ref)
    assert redone == [n_query]
    assert torch.equal(i, i_ref)
    torch.testing.assert_close(d, d_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_data_is_certified_without_fallback(backend, monkeypatch):
    redone = spy_float64_search(monkeypatch)
    ref = ball_points(3000, 32)
    HyperbolicKNN(backend=backend)(ref[:500], 10, ref, True)
    assert redone == []


def test_large_k_uses_float64_brute_force(monkeypatch):
    """k + rerank ≥ N / 10: one float64 GEMM pass instead of the float32 search."""
    redone = spy_float64_search(monkeypatch)
    ref = ball_points(1000, 8, torch.float64)
    d, i = HyperbolicKNN()(ref[:40], 200, ref)
    d_ref, i_ref = CustomKNN(PoincareDistance())(ref[:40], 200, ref)
    assert redone == [40]
    torch.testing.assert_close(d, d_ref, rtol=1e-12, atol=1e-12)


def poincare_distances_acosh(x: torch.Tensor, y: torch.Tensor, c: float = 0.1) -> torch.Tensor:
    """Float64 reference distances from coordinate differences through arcosh: accurate at zero
    and near the boundary, where the artanh form of PoincareDistance saturates."""
    x, y = x.double(), y.double()
    e2 = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist").square()
    z = 2 * c * e2 / ((1 - c * x.pow(2).sum(1))[:, None] * (1 - c * y.pow(2).sum(1)))
    return torch.log1p(z + torch.sqrt(z * (z + 2))) / math.sqrt(c)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_k_candidate_path_is_certified(backend, dtype, monkeypatch):
    """k + rerank < N / 10: float32 candidates, float64 re-ranking, no brute force."""
    redone = spy_float64_search(monkeypatch)
    ref = ball_points(4000, 16, dtype, spread=1.0)
    d, i = HyperbolicKNN(backend=backend)(ref[:60], 300, ref, True)
    d_ref, i_ref = CustomKNN(PoincareDistance())(ref[:60].double(), 300, ref.double(), True)
    assert redone == [] and d.dtype == dtype
    assert torch.equal(i, i_ref)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(d.double(), d_ref, rtol=tol, atol=tol)


def test_float64_distances_only_for_candidates_that_can_be_nearest(monkeypatch):
    """Candidates whose float32 score is more than twice the error bound below the k-th are
    dropped before the float64 inner products."""
    widths = []
    original = hyperbolic_knn._candidate_inner

    def spy(x, y, cand):
        widths.append(cand.shape[1])
        return original(x, y, cand)

    monkeypatch.setattr(hyperbolic_knn, "_candidate_inner", spy)
    ref = ball_points(3000, 32, torch.float64)
    d, i = HyperbolicKNN(backend="torch")(ref[:200], 10, ref, True)
    d_ref, i_ref = CustomKNN(PoincareDistance())(ref[:200], 10, ref, True)
    assert torch.equal(i, i_ref)
    assert len(widths) == 1 and 11 <= widths[0] < 11 + 16


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("brute_force", [False, True])
def test_near_duplicates_rank_exactly(backend, brute_force, monkeypatch):
    """Exact duplicates (distance 0) come before points 1e-9 away, in both search paths."""
    if brute_force:
        monkeypatch.setattr(hyperbolic_knn, "PAIRS_PER_GEMM_ROW", 10**9)
    ref = ball_points(1000, 16, torch.float64)
    ref[500:520] = ref[:20]
    ref[520:540] = ref[:20] * (1 + 1e-9)
    query = torch.cat([ref[520:540], ref[:20]])  # the near duplicates are listed first
    d, i = HyperbolicKNN(backend=backend)(query, 2, ref)
    exact = poincare_distances_acosh(query, ref)
    d_ref = exact.sort(1).values[:, :2]
    assert (d[20:, :2] == 0).all() and (d[:20, 0] == 0).all()
    torch.testing.assert_close(exact.gather(1, i), d_ref, rtol=0, atol=1e-15)
    torch.testing.assert_close(d, d_ref, rtol=1e-12, atol=1e-15)


def test_crowded_queries_search_from_coordinate_differences(monkeypatch):
    """More than k + 1 references within NEAR_ZERO: t cannot rank them, so those queries are
    searched again with distances from coordinate differences."""
    crowded = []
    original = HyperbolicKNN._crowded_search

    def spy(self, x, *args):
        crowded.append(len(x))
        return original(self, x, *args)

    monkeypatch.setattr(HyperbolicKNN, "_crowded_search", spy)
    g = torch.Generator().manual_seed(5)
    ref = ball_points(600, 8, torch.float64)
    ref[100:130] = ref[0]
    ref[130:160] = ref[0] * (1 + 1e-9 * torch.rand(30, 1, generator=g, dtype=torch.float64))
    d, i = HyperbolicKNN()(ref[:5], 40, ref)
    exact = poincare_distances_acosh(ref[:5], ref)
    d_ref = exact.sort(1).values[:, :40]
    assert crowded == [1]
    torch.testing.assert_close(exact.gather(1, i), d_ref, rtol=0, atol=1e-15)
    torch.testing.assert_close(d, d_ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [5, 300])
def test_points_near_the_boundary(backend, k):
    """Distances above 40 (radius 0.999 to 0.9999): exact where the artanh form saturates."""
    g = torch.Generator().manual_seed(2)
    u = torch.randn(4000, 8, generator=g, dtype=torch.float64)
    radius = 0.999 + 0.0009 * torch.rand(4000, 1, generator=g, dtype=torch.float64)
    ref = u / u.norm(dim=1, keepdim=True) * radius / math.sqrt(0.1)
    d, i = HyperbolicKNN(backend=backend)(ref[:50], k, ref, True)
    exact = poincare_distances_acosh(ref[:50], ref)
    exact.fill_diagonal_(float("inf"))
    d_ref, i_ref = exact.sort(1)
    assert d_ref[:, k - 1].median() > 40
    assert torch.equal(i, i_ref[:, :k])
    torch.testing.assert_close(d, d_ref[:, :k], rtol=1e-11, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [4, 60])
def test_small_blocks_and_chunks(dtype, k, monkeypatch):
    """Many float64 reference blocks and query chunks give the same neighbours."""
    monkeypatch.setattr(hyperbolic_knn, "BLOCK_BYTES", 8 * 16 * 37)
    monkeypatch.setattr(hyperbolic_knn, "CHUNK_BYTES", 8 * 700 * 23)
    ref = ball_points(700, 16, dtype, spread=1.0)
    query = ball_points(90, 16, dtype, spread=1.0, seed=6)
    for reference_rows in (ref, ref.flip(0)):
        d, i = HyperbolicKNN(backend="torch", rerank=0 if k == 60 else 16)(query, k, reference_rows)
        d_ref, i_ref = CustomKNN(PoincareDistance())(query.double(), k, reference_rows.double())
        assert torch.equal(i, i_ref)
        tol = 1e-12 if dtype == torch.float64 else 1e-6
        torch.testing.assert_close(d.double(), d_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_query(backend):
    ref = ball_points(500, 8)
    d, i = HyperbolicKNN(backend=backend)(ref[:0], 3, ref)
    assert d.shape == i.shape == (0, 3)


def test_query_view_of_reference_shares_the_lift():
    """A query that is reference[:Nq] (a view) gives the same result as a copy of those rows."""
    ref = ball_points(2000, 16)
    view = HyperbolicKNN()(ref[:100], 10, ref)
    copy = HyperbolicKNN()(ref[:100].clone(), 10, ref)
    assert base_knn.is_leading_rows(ref[:100], ref)
    assert not base_knn.is_leading_rows(ref[:100].clone(), ref)
    assert not base_knn.is_leading_rows(ref[1:101], ref)
    assert torch.equal(view[0], copy[0]) and torch.equal(view[1], copy[1])


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
    outside = ref.clone()
    outside[7] *= 10
    torch.save({"c": 0.1, "reference": outside}, path)
    with pytest.raises(ValueError, match=r"reference rows \[7\] lie on or outside"):
        HyperbolicKNN().load(path)


@pytest.mark.parametrize(
    ("name", "k_list"),
    [("CUB_hyp", [1, 2, 4, 8]), ("SOP_hyp", [1, 10, 100, 1000])],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_reproduces_official_recall(hier_golden, name, k_list, backend):
    """R@K from our neighbours equals the papers' printed lists (golden.md, official recall)."""
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
    monkeypatch.setattr(base_knn, "faiss_available", lambda: False)
    with pytest.raises(ImportError, match="faiss"):
        HyperbolicKNN(backend="faiss")
    assert HyperbolicKNN()._resolve_backend(torch.device("cpu")) == "torch"


def test_ref_includes_query_needs_the_queries_to_lead_the_reference():
    ref = ball_points(40, 6)
    knn = HyperbolicKNN(backend="torch")
    # A copy of reference[:Nq] (not a view) is accepted and gives the same result as the view.
    d_view, i_view = knn(ref[:10], 3, ref, ref_includes_query=True)
    d_copy, i_copy = knn(ref[:10].clone(), 3, ref, ref_includes_query=True)
    assert torch.equal(i_view, i_copy) and torch.equal(d_view, d_copy)
    other = ball_points(10, 6, seed=5)
    with pytest.raises(ValueError, match=r"query rows \[0, 1, .*differ"):
        knn(other, 3, ref, ref_includes_query=True)
    with pytest.raises(ValueError, match="only 40 rows"):
        knn(ball_points(50, 6), 3, ref, ref_includes_query=True)


def test_pml_default_normalization_warns_once():
    """PML's InferenceModel normalises by default: the kNN sees unit-norm rows and says so."""
    ref = ball_points(60, 8)
    knn = HyperbolicKNN()
    model = InferenceModel(torch.nn.Identity(), knn_func=knn)  # normalize_embeddings=True
    with pytest.warns(UserWarning, match="norm 1.*normalize_embeddings=False"):
        model.train_knn(ref)
        model.get_nearest_neighbors(ref[:5], k=3)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.get_nearest_neighbors(ref[:5], k=3)  # once per kNN object
        HyperbolicKNN()(ref, 3, ref)  # genuine hyperbolic embeddings: silent
        # c = 1: the unit sphere is the boundary, which raises instead
        with pytest.raises(ValueError, match="outside"):
            unit = torch.nn.functional.normalize(ref)
            HyperbolicKNN(c=1.0)(unit, 3, unit)


def test_geometry_helpers_build_hyperbolic_inference_model_and_tester():
    from pml_hyper.utils import make_inference_model, make_tester, model_curvature

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat_interleave(8)
    data = torch.randn(10, 12, generator=g)[labels] + 0.3 * torch.randn(80, 12, generator=g)
    trunk = torch.nn.Sequential(torch.nn.Linear(12, 12), ToPoincare(c=0.2))
    assert model_curvature(trunk) == 0.2 and model_curvature(torch.nn.Linear(2, 2)) is None
    im = make_inference_model(trunk)
    assert im.normalize_embeddings is False and isinstance(im.knn_func, HyperbolicKNN)
    assert im.knn_func.c == 0.2
    im.train_knn(data)
    _, i = im.get_nearest_neighbors(data[:4], k=2)
    assert torch.equal(i[:, 0], torch.arange(4))
    tester = make_tester(trunk, batch_size=16, dataloader_num_workers=0)
    assert tester.normalize_embeddings is False
    assert tester.accuracy_calculator.knn_func.c == 0.2
    acc = tester.test({"val": torch.utils.data.TensorDataset(data, labels)}, 1, trunk)["val"]
    assert acc["precision_at_1_level0"] > 0.5
    euclid = make_tester(torch.nn.Linear(2, 2))
    assert euclid.normalize_embeddings is True
    with pytest.raises(ValueError, match="HyperbolicKNN\\(c=0.2\\)"):
        make_tester(trunk, accuracy_calculator=AccuracyCalculator(knn_func=HyperbolicKNN(c=0.1)))
    with pytest.raises(ValueError, match="unit"):
        make_inference_model(trunk, normalize_embeddings=True)
    with pytest.raises(ValueError, match="different c"):
        model_curvature(torch.nn.Sequential(ToPoincare(c=0.1), ToPoincare(c=0.2)))


def test_check_inputs_flag():
    ref = ball_points(20, 4)
    outside = ref.clone()
    outside[2] *= 100
    with pytest.raises(ValueError, match=r"reference rows \[2\]"):
        HyperbolicKNN()(ref[:3], 2, outside)
    d, _ = HyperbolicKNN(check_inputs=False)(ref[:3], 2, outside)  # unchecked: no raise
    assert d.shape == (3, 2)
