"""Behaviour of HISTLoss as a PML loss: contract, composition, trainers, AMP, bad input."""

import importlib.util
import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners, testers, trainers
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.reducers import DoNothingReducer, MultipleReducers, SumReducer
from pytorch_metric_learning.regularizers import BaseRegularizer
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN

from pml_hyper.losses import HISTLoss

REPO_ROOT = Path(__file__).resolve().parents[2]
B, C, D, HIDDEN = 12, 7, 16, 8


def make_batch(dtype=torch.float32, device="cpu", batch=B, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = F.layer_norm(torch.randn(batch, D, generator=g, dtype=torch.float64), (D,))
    y = torch.randint(0, C, (batch,), generator=g)
    return x.to(device=device, dtype=dtype), y.to(device)


def make_loss(seed=0, **kwargs):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return HISTLoss(num_classes=C, embedding_size=D, hidden_size=HIDDEN, **kwargs)


def reference_loss(hist, x, y, weights=None):
    """Naive broadcast formulation (docs/hist.md#distances, #hgnn), float64, module-independent."""
    x = x.double()
    mu, s = hist.means.double(), hist.log_vars.double()
    x_hat, mu_hat = F.normalize(x, dim=1), F.normalize(mu, dim=1)
    dist = ((x_hat[:, None] - mu_hat[None]) ** 2 / torch.exp(F.relu6(s))[None]).sum(-1)
    dist_losses = -torch.log_softmax(-hist.tau * dist, 1)[torch.arange(len(y)), y]
    classes = torch.unique(y)
    one_hot = (y[:, None] == classes[None]).double()
    H = one_hot + torch.exp(-hist.alpha * dist[:, classes]) * (1 - one_hot)
    dv, de = H.sum(1), H.sum(0)
    G = torch.diag(dv**-0.5) @ H @ torch.diag(1 / de) @ H.T @ torch.diag(dv**-0.5)
    t1, bn, t2 = hist.hgnn.theta1, hist.hgnn.bn1, hist.hgnn.theta2
    a = G @ (x @ t1.weight.double().T + t1.bias.double())
    a = (a - a.mean(0)) / torch.sqrt(a.var(0, unbiased=False) + bn.eps)
    z = F.leaky_relu(a * bn.weight.double() + bn.bias.double(), 0.1)
    logits = G @ (z @ t2.weight.double().T + t2.bias.double())
    ce = F.cross_entropy(logits, y, reduction="none")
    w = torch.ones(len(y), dtype=torch.float64) if weights is None else weights.double()
    return (dist_losses * w).mean() + hist.lambda_s * (ce * w).mean()


def test_defaults_follow_the_paper_code():
    params = inspect.signature(HISTLoss).parameters
    defaults = {k: params[k].default for k in ("hidden_size", "tau", "alpha", "lambda_s")}
    assert defaults == {"hidden_size": 512, "tau": 32.0, "alpha": 0.9, "lambda_s": 1.0}
    assert params["official_underflow_mask"].default is False


def test_parameters_submodules_and_init():
    hist = HISTLoss(num_classes=400, embedding_size=64, hidden_size=32)
    assert isinstance(hist.means, torch.nn.Parameter) and hist.means.shape == (400, 64)
    assert isinstance(hist.log_vars, torch.nn.Parameter) and hist.log_vars.shape == (400, 64)
    assert isinstance(hist.hgnn.theta1, torch.nn.Linear)
    assert isinstance(hist.hgnn.bn1, torch.nn.BatchNorm1d)
    assert isinstance(hist.hgnn.theta2, torch.nn.Linear)
    assert (hist.hgnn.theta1.in_features, hist.hgnn.theta1.out_features) == (64, 32)
    assert (hist.hgnn.theta2.in_features, hist.hgnn.theta2.out_features) == (32, 400)
    # kaiming_normal_(mode="fan_out") on (C, D): N(0, 2/C) (docs/hist.md#initialisation).
    for p in (hist.means, hist.log_vars):
        assert abs(p.std().item() / (2 / 400) ** 0.5 - 1) < 0.03
        assert abs(p.mean().item()) < 0.05 * (2 / 400) ** 0.5
    assert all(p.dtype == torch.float32 for p in hist.parameters())


def test_recordable_attributes():
    hist = make_loss(tau=16.0, alpha=2.0, lambda_s=0.5)
    for name in ("tau", "alpha", "lambda_s", "num_classes", "embedding_size"):
        assert name in hist._record_these
    assert (hist.tau, hist.alpha, hist.lambda_s) == (16.0, 2.0, 0.5)


def test_sub_losses_and_default_reduction(dtype):
    x, y = make_batch(dtype)
    hist = make_loss(lambda_s=0.5).to(dtype)
    assert hist.sub_loss_names() == ["dist_loss", "hgnn_loss"]
    assert isinstance(hist.reducer, MultipleReducers)
    total = hist(x, y)
    loss_dict = make_loss(lambda_s=0.5, reducer=DoNothingReducer()).to(dtype)(x, y)
    assert sorted(loss_dict) == ["dist_loss", "hgnn_loss"]
    for info in loss_dict.values():
        assert info["reduction_type"] == "element"
        assert info["losses"].shape == (B,)
        torch.testing.assert_close(info["indices"], torch.arange(B))
    summed = loss_dict["dist_loss"]["losses"].mean() + loss_dict["hgnn_loss"]["losses"].mean()
    torch.testing.assert_close(total, summed)
    expected = reference_loss(hist, x, y).to(dtype)
    torch.testing.assert_close(
        total, expected, rtol=1e-5 if dtype == torch.float32 else 1e-10, atol=0
    )


def test_lambda_s_is_folded_into_hgnn_loss():
    x, y = make_batch(torch.float64)
    d1 = make_loss(lambda_s=1.0, reducer=DoNothingReducer()).double()(x, y)
    d2 = make_loss(lambda_s=0.25, reducer=DoNothingReducer()).double()(x, y)
    torch.testing.assert_close(d2["hgnn_loss"]["losses"], 0.25 * d1["hgnn_loss"]["losses"])
    torch.testing.assert_close(d2["dist_loss"]["losses"], d1["dist_loss"]["losses"])


def test_user_reducer_is_applied_per_sub_loss():
    x, y = make_batch(torch.float64)
    mean_loss = make_loss().double()(x, y)
    sum_loss = make_loss(reducer=SumReducer()).double()(x, y)
    torch.testing.assert_close(sum_loss, B * mean_loss)


def test_log_vars_clamp_and_relu6_gradient():
    """Variances are exp(relu6(s)): no gradient below 0 or above 6 (docs/hist.md#distances)."""
    x, y = make_batch(torch.float64)
    hist = make_loss().double()
    with torch.no_grad():
        hist.log_vars.uniform_(-3.0, 9.0)
        hist.log_vars[:, :2] = torch.tensor([0.0, 6.0])  # the boundaries pass no gradient
    hist(x, y).backward()
    expected = reference_loss(hist, x, y)
    torch.testing.assert_close(hist(x, y), expected, rtol=1e-10, atol=0)
    s, grad = hist.log_vars.detach(), hist.log_vars.grad
    inactive = (s <= 0) | (s >= 6)
    assert inactive.any() and (~inactive).any()
    assert torch.all(grad[inactive] == 0)
    assert grad[~inactive].abs().sum() > 0


def test_hgnn_sees_raw_embeddings_distance_sees_normalised():
    x, y = make_batch(torch.float64)
    hist = make_loss(reducer=DoNothingReducer()).double()
    d1, d3 = hist(x, y), hist(3 * x, y)
    torch.testing.assert_close(d3["dist_loss"]["losses"], d1["dist_loss"]["losses"])
    assert not torch.allclose(d3["hgnn_loss"]["losses"], d1["hgnn_loss"]["losses"])


def test_no_batch_by_classes_by_dim_tensor_is_saved_for_backward():
    """The Mahalanobis distance is two matrix products, never a (B, C, D) broadcast."""
    batch, classes, dim = 16, 256, 64
    hist = HISTLoss(num_classes=classes, embedding_size=dim, hidden_size=8)
    x = torch.randn(batch, dim, requires_grad=True)
    y = torch.randint(0, classes, (batch,))
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        hist(x, y).backward()
    assert sizes and max(sizes) <= classes * dim  # the parameters are the largest tensors


def test_indices_tuple_is_used_as_sample_weights():
    x, y = make_batch(torch.float64)
    hist = make_loss().double()
    indices_tuple = miners.MultiSimilarityMiner(epsilon=0.5)(x, y)
    weights = lmu.convert_to_weights(indices_tuple, y, dtype=torch.float64)
    assert (weights < 1).any()  # the miner leaves some samples out or counts them unevenly
    mined = hist(x, y, indices_tuple)
    torch.testing.assert_close(mined, reference_loss(hist, x, y, weights), rtol=1e-10, atol=0)
    assert not torch.isclose(mined, hist(x, y))
    # A tuple that names only sample 0 keeps its terms alone (weight 1, the rest 0).
    only_first = (torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
    one_hot = torch.zeros(B, dtype=torch.float64)
    one_hot[0] = 1
    torch.testing.assert_close(
        hist(x, y, only_first), reference_loss(hist, x, y, one_hot), rtol=1e-10, atol=0
    )


def test_multiple_losses_with_proxy_anchor(dtype):
    x, y = make_batch(dtype)
    x.requires_grad_()
    hist, pa = make_loss().to(dtype), losses.ProxyAnchorLoss(C, D).to(dtype)
    combined = losses.MultipleLosses([hist, pa], weights=[1.0, 0.5])
    param_ids = {id(p) for p in combined.parameters()}
    assert {id(p) for p in hist.parameters()} <= param_ids and id(pa.proxies) in param_ids
    total = combined(x, y)
    torch.testing.assert_close(total, hist(x, y) + 0.5 * pa(x, y))
    total.backward()
    assert hist.means.grad is not None and pa.proxies.grad is not None
    assert torch.isfinite(x.grad).all()


def test_multiple_losses_with_a_miner_for_hist_only():
    x, y = make_batch(torch.float64)
    hist, pa = make_loss().double(), losses.ProxyAnchorLoss(C, D).double()
    miner = miners.MultiSimilarityMiner(epsilon=0.5)
    combined = losses.MultipleLosses([hist, pa], miners=[miner, None])
    expected = hist(x, y, miner(x, y)) + pa(x, y)
    torch.testing.assert_close(combined(x, y), expected)


def test_param_groups():
    hist = make_loss()
    groups = hist.param_groups(lr=2e-4, lr_ds=0.05, lr_hgnn_factor=5.0, weight_decay=1e-4)
    assert [g["name"] for g in groups] == ["prototypes", "hgnn"]
    assert groups[0]["params"] == [hist.means, hist.log_vars]
    assert groups[0]["lr"] == 0.05 and groups[1]["lr"] == pytest.approx(1e-3)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in hist.hgnn.parameters()}
    assert all(g["weight_decay"] == 1e-4 for g in groups)
    assert all("weight_decay" not in g for g in hist.param_groups(lr=1e-4))
    optimizer = torch.optim.Adam(groups)
    x, y = make_batch()
    hist(x, y).backward()
    before = hist.means.detach().clone()
    optimizer.step()
    assert not torch.equal(before, hist.means)


class _LearnableRegularizer(BaseRegularizer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def compute_loss(self, x):
        losses = self.scale * x.pow(2).sum(1)
        return {"loss": {"losses": losses, "indices": None, "reduction_type": "element"}}


def test_param_groups_cover_other_parameters():
    hist = make_loss(embedding_regularizer=_LearnableRegularizer())
    groups = hist.param_groups(lr=1e-4)
    assert [g["name"] for g in groups] == ["prototypes", "hgnn", "other"]
    assert groups[2]["params"] == [hist.embedding_regularizer.scale]
    assert groups[2]["lr"] == 1e-4
    n_grouped = sum(len(g["params"]) for g in groups)
    assert n_grouped == len(list(hist.parameters()))


def test_get_logits(dtype):
    x, y = make_batch(dtype)
    hist = make_loss().to(dtype)
    logits = hist.get_logits(x)
    assert logits.shape == (B, C) and logits.dtype == dtype
    torch.testing.assert_close(logits, -hist.tau * hist.compute_outputs(x, y).dist)
    assert hist.get_logits(x[:1]).shape == (1, C)  # no BatchNorm involved: one sample is fine
    # The true class of a sample placed on its class mean gets the largest logit.
    on_mean = hist.means[3:4].detach().to(dtype) * 7.0
    assert hist.get_logits(on_mean).argmax().item() == 3


def test_train_mode_updates_running_stats_eval_mode_does_not():
    x, y = make_batch()
    hist = make_loss()
    hist(x, y)
    bn = hist.hgnn.bn1
    assert int(bn.num_batches_tracked) == 1 and not torch.all(bn.running_mean == 0)
    train_loss = hist(x, y)
    assert int(bn.num_batches_tracked) == 2
    state = {k: v.clone() for k, v in bn.state_dict().items()}
    hist.eval()
    eval_loss = hist(x, y)
    assert all(torch.equal(v, bn.state_dict()[k]) for k, v in state.items())
    torch.testing.assert_close(eval_loss, train_loss)  # batch statistics in both modes


def test_float64_embeddings_with_float32_parameters():
    x, y = make_batch(torch.float64)
    x.requires_grad_()
    hist = make_loss()
    loss = hist(x, y)
    assert loss.dtype == torch.float64
    loss.backward()
    assert all(p.dtype == torch.float32 for p in hist.parameters())
    assert all(b.dtype == torch.float32 for b in hist.hgnn.bn1.buffers() if b.is_floating_point())
    assert hist.means.grad.dtype == torch.float32 and x.grad.dtype == torch.float64
    torch.testing.assert_close(loss, reference_loss(hist, x.detach(), y), rtol=1e-10, atol=0)


def test_bf16_autocast_on_cpu():
    x, y = make_batch()
    head = torch.nn.Linear(D, D)
    hist = make_loss()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = head(x)
        assert emb.dtype == torch.bfloat16
        loss = hist(emb, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in hist.parameters())
    assert all(torch.isfinite(p.grad).all() for p in hist.parameters())
    assert all(p.grad.dtype == torch.float32 for p in hist.parameters())
    with torch.no_grad():
        expected = hist(emb.detach().float(), y)
    torch.testing.assert_close(loss.float(), expected, rtol=1e-2, atol=0)  # bf16 loss rounding


def test_forward_backward_on_device(device, dtype):
    x, y = make_batch(dtype, device)
    x.requires_grad_()
    hist = make_loss().to(device)
    loss = hist(x, y)
    loss.backward()
    assert loss.device.type == device.type and torch.isfinite(loss)
    assert hist.means.grad.device.type == device.type
    expected = reference_loss(make_loss(), x.detach().cpu(), y.cpu())
    torch.testing.assert_close(loss.detach().cpu().double(), expected, rtol=1e-5, atol=0)


def test_official_underflow_mask_all_dropped_raises():
    """Every sample sits on the antipode of its class mean: P_i = e^-128 = 0 in float32."""
    hist = HISTLoss(num_classes=2, embedding_size=4, hidden_size=4, official_underflow_mask=True)
    with torch.no_grad():
        hist.means.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))
        hist.log_vars.zero_()
    x = torch.tensor([[5.0, 0, 0, 0], [5.0, 0.1, 0, 0]])
    y = torch.tensor([1, 1])
    with pytest.raises(ValueError, match="underflows"):
        hist(x, y)
    hist.official_underflow_mask = False
    correct_loss = hist(x, y)
    assert torch.isfinite(correct_loss) and correct_loss > 100


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (torch.randn(4, D), torch.tensor([0, 1, 2, C]), "num_classes"),
        (torch.randn(4, D), torch.tensor([0, 1, -1, 2]), "num_classes"),
        (torch.randn(4, D), torch.tensor([0.0, 1.0, 2.0, 3.0]), "integer"),
        (torch.randn(4, D + 1), torch.tensor([0, 1, 2, 3]), "embedding_size"),
        (torch.randn(1, D), torch.tensor([0]), "at least 2"),
        (torch.randn(4, 2, D), torch.tensor([0, 1, 2, 3]), "2-D"),
        (torch.randn(4), torch.tensor([0, 1, 2, 3]), "2-D"),
        (torch.randn(4, D).index_fill(0, torch.tensor([2]), float("nan")), None, "NaN"),
        (torch.randn(4, D).index_fill(0, torch.tensor([1]), float("inf")), None, "inf"),
    ],
)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_bad_input_raises_value_error(x, y, match, mode):
    hist = make_loss()
    getattr(hist, mode)()
    y = torch.tensor([0, 1, 2, 3]) if y is None else y
    with pytest.raises(ValueError, match=match):
        hist(x, y)


def test_contract_errors():
    x, y = make_batch()
    hist = make_loss()
    with pytest.raises(ValueError, match="labels are required"):
        hist(x)
    with pytest.raises(ValueError, match="ref_emb"):
        hist(x, y, ref_emb=x.clone(), ref_labels=y)
    with pytest.raises(ValueError, match="distance"):
        make_loss(distance=LpDistance())
    with pytest.raises(ValueError, match="num_classes"):
        HISTLoss(num_classes=0, embedding_size=D)


def test_int32_labels_are_accepted():
    x, y = make_batch(torch.float64)
    hist = make_loss().double()
    torch.testing.assert_close(hist(x, y.int()), hist(x, y))


def _pattern_dataset(n_classes, per_class, seed):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_classes, 3, 8, 8, generator=g)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    images = centers[labels] + 0.3 * torch.randn(len(labels), 3, 8, 8, generator=g)
    return torch.utils.data.TensorDataset(images, labels)


def _tiny_models():
    trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten())
    embedder = torch.nn.Sequential(
        torch.nn.Linear(4 * 6 * 6, D), torch.nn.LayerNorm(D, elementwise_affine=False)
    )
    return trunk, embedder


PBAR_WARNING = "ignore:Converting a tensor with requires_grad=True to a scalar:UserWarning"


@pytest.mark.filterwarnings(PBAR_WARNING)  # PML's progress bar formats the loss tensor
def test_metric_loss_only_trainer_changes_means():
    torch.manual_seed(0)
    trunk, embedder = _tiny_models()
    hist = make_loss()
    before = hist.means.detach().clone()
    optimizers = {
        "trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=1e-3),
        "embedder_optimizer": torch.optim.Adam(embedder.parameters(), lr=1e-3),
        "metric_loss_optimizer": torch.optim.Adam(hist.param_groups(lr=1e-3)),
    }
    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk, "embedder": embedder},
        optimizers=optimizers,
        batch_size=8,
        loss_funcs={"metric_loss": hist},
        dataset=_pattern_dataset(C, 6, seed=1),
        iterations_per_epoch=2,
        dataloader_num_workers=0,
        end_of_iteration_hook=lambda t: seen.append(t.losses["total_loss"].item()),
    )
    seen = []
    trainer.train(num_epochs=1)
    assert len(seen) == 2 and all(torch.isfinite(torch.tensor(seen)))
    assert int(hist.hgnn.bn1.num_batches_tracked) == 2
    assert not torch.equal(before, hist.means.detach())
    assert hist.means.dtype == torch.float32


def test_global_embedding_space_tester_runs():
    torch.manual_seed(0)
    trunk, embedder = _tiny_models()
    tester = testers.GlobalEmbeddingSpaceTester(
        dataloader_num_workers=0,
        accuracy_calculator=AccuracyCalculator(
            include=("precision_at_1",), k=1, knn_func=CustomKNN(LpDistance())
        ),
    )
    tester.test({"val": _pattern_dataset(5, 4, seed=2)}, 1, trunk, embedder)
    p_at_1 = tester.all_accuracies["val"][tester.accuracies_keyname("precision_at_1")]
    assert 0.0 <= p_at_1 <= 1.0


@pytest.mark.filterwarnings(PBAR_WARNING)
def test_example_runs(tmp_path):
    path = REPO_ROOT / "examples" / "hist_with_pml_trainer.py"
    spec = importlib.util.spec_from_file_location("hist_with_pml_trainer", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    argv = ["--out", str(tmp_path), "--epochs", "1", "--iterations", "3", "--batch-size", "16"]
    result = example.main(argv + ["--train-classes", "6", "--val-classes", "4"])
    assert len(result["loss_history"]) == 3
    assert 0.0 <= result["accuracies"]["precision_at_1_level0"] <= 1.0
    assert (tmp_path / "logs" / "logs.db").is_file()
    assert (tmp_path / "logs" / "metric_loss_optimizer_Adam.csv").is_file()
    assert any((tmp_path / "models").glob("metric_loss_*.pth"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hgnn_batch_norm_matches_batchnorm1d_in_train_mode(dtype):
    """Output and running statistics equal ``nn.BatchNorm1d`` (float32 buffers kept)."""
    hist = make_loss()
    bn = hist.hgnn.bn1
    reference = torch.nn.BatchNorm1d(bn.num_features).to(dtype)
    a = torch.randn(9, bn.num_features, dtype=dtype)
    for _ in range(2):
        out = hist.hgnn._batch_norm(a)
        torch.testing.assert_close(out, reference(a))
    assert bn.running_mean.dtype == torch.float32 and int(bn.num_batches_tracked) == 2
    torch.testing.assert_close(bn.running_mean, reference.running_mean.float())
    torch.testing.assert_close(bn.running_var, reference.running_var.float())
