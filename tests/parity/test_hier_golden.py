"""HIER parity with official code (golden.md HIER cases): replay of recorded triplets, noise."""

import importlib.util
from pathlib import Path

import pytest
import torch
from pytorch_metric_learning import losses
from pytorch_metric_learning.miners import BaseMiner

from pml_hyper.layers import ToPoincare
from pml_hyper.losses import HIERLoss
from pml_hyper.losses.hier_loss import hier_triplet_loss
from pml_hyper.manifolds import PoincareBall

CASES = ["hier_small_f64", "hier_small_f32", "hier_medium_f32"]
REFERENCE = (
    Path(__file__).resolve().parents[2] / "benchmarks" / "speed" / "reference" / "hier_reference.py"
)


def tolerances(dtype: torch.dtype) -> dict[str, float]:
    """golden.md HIER tolerances (rtol for losses, atol factors × max|ref| for distances, grads)."""
    if dtype == torch.float64:
        return {"loss": 1e-9, "dist": 1e-9, "grad": 1e-9, "grad_rtol": 1e-9}
    return {"loss": 1e-5, "dist": 2e-5, "grad": 1e-4, "grad_rtol": 0.0}


def assert_close_to_max(actual, expected, atol_factor, rtol=0.0):
    """|actual - expected| <= atol_factor·max|expected| + rtol·|expected|, elementwise."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol_factor * expected.abs().max())


def assert_grad_close(actual, expected, tol):
    assert_close_to_max(actual, expected, tol["grad"], tol["grad_rtol"])


class ReplayMiner(BaseMiner):
    """Returns the recorded sample triplets."""

    def __init__(self, triplets: torch.Tensor):
        super().__init__()
        self.triplets = triplets

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        return tuple(self.triplets.unbind(1))


class ReplayHIERLoss(HIERLoss):
    """HIERLoss whose proxy triplets and Gumbel noise are the recorded ones (test-only)."""

    def __init__(self, record: dict, **kwargs):
        super().__init__(**kwargs)
        self.proxy_triplets = record["triplets_proxies"]
        self.noise = list(record["gumbel_noise"])

    def mine_proxy_triplets(self, proxy_dist):
        return tuple(self.proxy_triplets.unbind(1))

    def gumbel_noise(self, shape, like):
        noise = self.noise.pop(0)
        assert tuple(noise.shape) == shape
        return noise.to(like)


def to_poincare():
    return ToPoincare(c=0.1, clip_r=2.3, riemannian=True, official=True)


@pytest.mark.parametrize("name", CASES)
def test_replay_hier_parts(hier_golden, name):
    """golden.md, replay steps 1-6 through the functional core."""
    case = hier_golden[name]
    record, batch = case["hier"], case["config"]["B"]
    tol = tolerances(case["x_euc"].dtype)
    x = case["x_euc"].clone().requires_grad_()
    theta = case["lcas_init_tangent"].clone().requires_grad_()

    z = to_poincare()(x)
    z.retain_grad()
    proxies = to_poincare()(theta)
    assert_close_to_max(z, case["z_ball"], tol["dist"])
    assert_close_to_max(proxies, case["lcas_ball"], tol["dist"])

    ball = PoincareBall(c=0.1, official=True)
    sample_proxy, proxy_proxy = ball.pairwise_dist(z, proxies), ball.pairwise_dist(proxies)
    for block, ref in (
        (sample_proxy, case["all_dist_matrix"][:batch, batch:]),
        (proxy_proxy, case["all_dist_matrix"][batch:, batch:]),
    ):
        assert_close_to_max(block, ref, tol["dist"])

    noise = record["gumbel_noise"]
    parts = [
        hier_triplet_loss(sample_proxy, record["triplets_samples"], noise[0], noise[1], 0.1, 0.1),
        hier_triplet_loss(proxy_proxy, record["triplets_proxies"], noise[2], noise[3], 0.1, 0.1),
    ]
    selected = [idx for part in parts for idx in (part.lca_ij, part.lca_ijk)]
    for actual, expected in zip(selected, record["gumbel_selected_idx"], strict=True):
        assert torch.equal(actual, expected)

    total = parts[0].loss + parts[1].loss
    for actual, key in ((parts[0].loss, "loss_samples_part"), (parts[1].loss, "loss_proxies_part")):
        torch.testing.assert_close(actual, record[key], rtol=tol["loss"], atol=0)
    torch.testing.assert_close(total, record["loss"], rtol=tol["loss"], atol=0)

    total.backward()
    assert_grad_close(z.grad, record["grad_z_ball"], tol)
    assert_grad_close(x.grad, record["grad_x_euc"], tol)
    assert_grad_close(theta.grad, record["grad_lcas_tangent"], tol)


@pytest.mark.parametrize("name", CASES)
def test_total_pa_plus_hier_through_multiple_losses(hier_golden, name):
    """golden.md, replay step 7: 1·PML ProxyAnchorLoss + 0.5·HIERLoss in MultipleLosses."""
    case = hier_golden[name]
    cfg, record, ref = case["config"], case["hier"], case["sup"]["total_PA_plus_HIER"]
    dtype = case["x_euc"].dtype
    tol = tolerances(dtype)

    pa_init = case["sup"]["PA"]["proxies_init"]
    pa = losses.ProxyAnchorLoss(len(pa_init), cfg["D"], margin=0.1, alpha=32).to(dtype)
    hier = ReplayHIERLoss(
        record,
        embedding_size=cfg["D"],
        num_proxies=cfg["M"],
        margin=cfg["mrg"],
        tau=cfg["tau"],
        c=cfg["c"],
        clip_r=cfg["clip_r"],
        topk=cfg["topk"],
        triplets_per_anchor=cfg["t_per_anchor"],
        official=True,
        anchor_as_negative=True,
    ).to(dtype)
    with torch.no_grad():
        pa.proxies.copy_(pa_init)
        hier.lcas.copy_(case["lcas_init_tangent"])
    combined = losses.MultipleLosses(
        [pa, hier],
        miners=[None, ReplayMiner(record["triplets_samples"])],
        weights=[cfg["lambda1"], cfg["lambda2"]],
    )

    x = case["x_euc"].clone().requires_grad_()
    total = combined(to_poincare()(x), case["labels"])
    total.backward()
    assert not hier.noise, "every recorded noise tensor is consumed"
    torch.testing.assert_close(total, ref["loss"], rtol=tol["loss"], atol=0)
    assert_grad_close(x.grad, ref["grad_x_euc"], tol)
    assert_grad_close(hier.lcas.grad, ref["grad_lcas_tangent"], tol)
    assert_grad_close(pa.proxies.grad, ref["grad_pa_proxies"], tol)


@pytest.mark.parametrize("name", CASES)
def test_benchmark_reference_reproduces_the_official_run(hier_golden, name):
    """The speed benchmark's baseline, seeded like the golden run (numpy RandomState and torch
    global RNG at seed + 1), draws the official triplets and noise and gives the official loss."""
    spec = importlib.util.spec_from_file_location("hier_reference", REFERENCE)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    case = hier_golden[name]
    cfg, record = case["config"], case["hier"]
    tol = tolerances(case["z_ball"].dtype)
    module = reference.HIERReference(
        cfg["D"], num_proxies=cfg["M"], topk=cfg["topk"], seed=cfg["seed"] + 1
    ).to(case["z_ball"].dtype)
    with torch.no_grad():
        module.lcas.copy_(case["lcas_init_tangent"])
    z = case["z_ball"].clone().requires_grad_()
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(cfg["seed"] + 1)
        loss = module(z, case["labels"])
    finally:
        torch.random.set_rng_state(state)
    loss.backward()
    torch.testing.assert_close(loss, record["loss"], rtol=tol["loss"], atol=0)
    assert_grad_close(z.grad, record["grad_z_ball"], tol)
    assert_grad_close(module.lcas.grad, record["grad_lcas_tangent"], tol)
