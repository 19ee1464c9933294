import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.utils.inference import CustomKNN

from pml_hyper.knn import CosineKNN
from pml_hyper.knn.base_knn import faiss_available

BACKENDS = ["torch"] + (["faiss"] if faiss_available() else [])


def brute_force(query, reference, k):
    """Float64 cosine similarities, most similar first (stable: ties by index)."""
    q, r = query.double(), reference.double()
    sims = (q @ r.T) / (q.norm(dim=1)[:, None] * r.norm(dim=1)[None])
    order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :k]
    return sims.gather(1, order), order


def near_ties(n=400, dim=32, seed=0):
    """Clustered rows plus copies perturbed by ~1e-8 relative: float32 cannot rank them."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n // 4, dim, generator=g, dtype=torch.float64)
    rows = base.repeat(4, 1)
    rows += 1e-8 * torch.randn(rows.shape, generator=g, dtype=torch.float64) * rows.abs()
    rows[n // 4 :] *= 1 + torch.rand(n - n // 4, 1, generator=g, dtype=torch.float64)
    return rows


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 5, 50])
def test_neighbours_are_those_of_a_float64_brute_force(backend, k):
    ref64 = near_ties()
    queries = near_ties(seed=1)[:60]
    for dtype in (torch.float32, torch.float64):
        ref, q = ref64.to(dtype), queries.to(dtype)
        sims, idx = CosineKNN(backend=backend)(q, k, ref, False)
        expected_sims, expected_idx = brute_force(q, ref, k)
        if dtype == torch.float64:
            assert torch.equal(idx, expected_idx)
        torch.testing.assert_close(sims.double(), expected_sims, rtol=0, atol=1e-6)
        exact_of_found = brute_force(q, ref, len(ref))[0]
        # every returned neighbour is truly among the k most similar (float64)
        kth = exact_of_found[:, k - 1 : k]
        found = (
            q.double()
            @ ref.double().T
            / (q.double().norm(dim=1)[:, None] * ref.double().norm(dim=1)[None])
        ).gather(1, idx)
        assert (found >= kth - 1e-15).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_self_match_is_removed_by_index_and_duplicates_stay(backend):
    ref = torch.randn(80, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref[1] = 2 * ref[0]  # the same direction as query 0
    sims, idx = CosineKNN(backend=backend)(ref[:10], 3, ref, True)
    assert not (idx == torch.arange(10)[:, None]).any()
    assert idx[0, 0] == 1 and idx[1, 0] == 0
    expected = brute_force(ref[:10], ref, 4)
    torch.testing.assert_close(sims[:, 0], expected[0][:, 1], rtol=0, atol=1e-12)


def test_matches_pml_customknn_on_well_separated_data():
    g = torch.Generator().manual_seed(3)
    ref = torch.randn(300, 16, generator=g)
    ours = CosineKNN()(ref[:50], 7, ref, True)
    pml = CustomKNN(CosineSimilarity(), batch_size=64)(ref[:50], 7, ref, True)
    assert torch.equal(ours[1], pml[1])
    torch.testing.assert_close(ours[0], pml[0], rtol=0, atol=1e-5)


def test_stored_reference_and_k_equal_to_n():
    ref = near_ties(n=40)
    knn = CosineKNN(rerank=100)
    knn.train(ref[:20])
    knn.add(ref[20:])
    sims, idx = knn(ref[:5], 40)
    assert torch.equal(idx, brute_force(ref[:5], ref, 40)[1])


def test_bad_inputs():
    ref = torch.randn(10, 4)
    with pytest.raises(ValueError, match="row 3 is zero"):
        CosineKNN()(ref[:2], 2, torch.cat([ref[:3], torch.zeros(1, 4), ref[3:]]))
    with pytest.raises(ValueError, match="non-finite"):
        CosineKNN()(torch.full((1, 4), float("nan")), 2, ref)
    with pytest.raises(ValueError, match="out of range"):
        CosineKNN()(ref, 10, ref, True)
    with pytest.raises(ValueError, match="dimensions"):
        CosineKNN()(torch.randn(2, 3), 1, ref)
    with pytest.raises(TypeError, match="floating-point"):
        CosineKNN()(torch.ones(2, 4, dtype=torch.long), 1, ref)
    with pytest.raises(ValueError, match="backend"):
        CosineKNN(backend="gpu")
    with pytest.raises(ValueError, match="no reference"):
        CosineKNN()(ref, 1)


def test_default_knn_of_recall_at_k_and_the_runners_cosine_tester():
    from pml_hyper.evaluation import RecallAtK
    from pml_hyper.training import build_config
    from pml_hyper.training.builders import build_model, build_tester

    assert isinstance(RecallAtK().knn_func, CosineKNN)
    config = build_config({"model": {"head": "hist", "backbone": "tiny_cnn"}})
    tester = build_tester(config, build_model(config))
    assert isinstance(tester.accuracy_calculator.knn_func, CosineKNN)
