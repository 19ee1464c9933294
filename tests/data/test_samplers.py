import numpy as np
import pytest
import torch

from pml_hyper.data import UniqueClassSampler

# 30 classes of 1..6 images, shuffled so that class members are not contiguous.
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(30), np.arange(30) % 6 + 1))


def batches(sampler):
    indices = list(sampler)
    assert len(indices) == len(sampler)
    return np.asarray(indices).reshape(-1, sampler.batch_size)


@pytest.mark.parametrize("replacement", [True, False])
def test_batches_hold_distinct_classes_with_ipc_images(replacement):
    labels = LABELS if replacement else np.repeat(np.arange(20), 3)
    sampler = UniqueClassSampler(labels, batch_size=12, images_per_class=3, replacement=replacement)
    assert sampler.num_batches == len(labels) // 12
    for batch in batches(sampler):
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert len(classes) == 4 and (counts == 3).all()
        grouped = labels[batch].reshape(4, 3)
        assert (grouped == grouped[:, :1]).all()
        if not replacement:
            assert len(set(batch.tolist())) == 12


def test_ranks_split_one_global_batch_of_distinct_classes():
    ranks = [
        batches(UniqueClassSampler(LABELS, batch_size=8, num_replicas=3, rank=r, seed=5))
        for r in range(3)
    ]
    assert len(ranks[0]) == len(LABELS) // 24
    for b in range(len(ranks[0])):
        per_rank = [set(LABELS[ranks[r][b]].tolist()) for r in range(3)]
        assert all(len(c) == 4 for c in per_rank)
        assert len(set.union(*per_rank)) == 12


def test_deterministic_per_seed_and_epoch():
    make = lambda seed: UniqueClassSampler(LABELS, batch_size=10, seed=seed)  # noqa: E731
    first, again, other_seed = make(1), make(1), make(2)
    assert list(first) == list(again)
    assert list(first) != list(other_seed)
    again.set_epoch(1)
    assert list(first) != list(again)
    first.set_epoch(1)
    assert list(first) == list(again)


def test_fewer_classes_than_needed_draws_classes_with_replacement():
    labels = np.repeat(np.arange(3), 10)
    (batch,) = batches(UniqueClassSampler(labels, batch_size=30, images_per_class=2))
    assert len(batch) == 30 and set(labels[batch]) <= {0, 1, 2}


def test_works_in_a_dataloader():
    dataset = torch.utils.data.TensorDataset(torch.arange(len(LABELS)), torch.as_tensor(LABELS))
    sampler = UniqueClassSampler(torch.as_tensor(LABELS), batch_size=6)
    loader = torch.utils.data.DataLoader(dataset, batch_size=6, sampler=sampler)
    seen = [y for _, y in loader]
    assert len(seen) == sampler.num_batches
    assert all(len(y.unique()) == 3 for y in seen)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 7}, "multiple of images_per_class"),
        ({"batch_size": 8, "rank": 2, "num_replicas": 2}, "rank must be in"),
        ({"batch_size": 1000}, "make no batch"),
        ({"batch_size": 4, "replacement": False}, "smallest class has 1"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UniqueClassSampler(LABELS, **kwargs)


def test_labels_must_be_1d_integers():
    with pytest.raises(ValueError, match="1-D integer"):
        UniqueClassSampler(np.zeros((4, 2), dtype=int), batch_size=2)
    with pytest.raises(ValueError, match="1-D integer"):
        UniqueClassSampler(np.zeros(4), batch_size=2)


def test_when_short_draws_without_replacement_unless_the_class_is_too_small():
    # Hyp's safe_random_choice: classes of 1, 2 and 9 images, 2 views each.
    labels = np.repeat(np.arange(3), [1, 2, 9])
    positions = {c: np.flatnonzero(labels == c) for c in range(3)}
    duplicates = dict.fromkeys(range(3), 0)
    for seed in range(40):
        sampler = UniqueClassSampler(
            labels, batch_size=6, images_per_class=2, seed=seed, replacement="when_short"
        )
        for batch in batches(sampler):
            for c in range(3):
                views = batch[labels[batch] == c]
                assert len(views) == 2 and set(views) <= set(positions[c])
                duplicates[c] += views[0] == views[1]
    assert duplicates[0] == 40 * (len(labels) // 6)  # one image: always the same file
    assert duplicates[1] == duplicates[2] == 0


def test_hier_replacement_repeats_images_of_large_classes():
    labels = np.repeat(np.arange(3), [1, 2, 9])
    repeats = sum(
        int(batch[0] == batch[1])
        for seed in range(40)
        for batch in batches(UniqueClassSampler(labels, batch_size=2, seed=seed))
        if labels[batch[0]] == 1
    )
    assert repeats > 0  # with replacement, a 2-image class sometimes gives one file twice


def test_bad_replacement_value():
    with pytest.raises(ValueError, match="when_short"):
        UniqueClassSampler(LABELS, batch_size=4, replacement="sometimes")
