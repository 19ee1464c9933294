"""Stable class subsets: class-disjoint validation classes carved from a training split, and
class samples stratified by group (the emoji demo's ``--max-classes``).

Every decision is a function of a class's own key (a SHA-256 hash), so it never depends on which
other classes a dataset version contains, and it is the same on every machine.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence

import numpy as np
import torch


def stable_hash(key: str, salt: str = "") -> float:
    """A uniform number in [0, 1) from the SHA-256 of ``salt + key``."""
    digest = hashlib.sha256(f"{salt}{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def validation_classes(
    keys: Iterable[str],
    fraction: float = 0.15,
    base: Callable[[str], str] = lambda key: key,
    salt: str = "validation",
) -> set[str]:
    """The keys whose hash of ``base(key)`` falls below ``fraction``: about ``fraction`` of the
    classes, stable, and keys with the same base (e.g. skin-tone variants) kept together."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    return {key for key in keys if stable_hash(base(key), salt) < fraction}


def stratified_sample(
    keys: Sequence[str],
    groups: Sequence[Hashable],
    n: int,
    salt: str = "subset",
) -> list[str]:
    """``n`` of ``keys``, each group's share proportional to its share of ``keys`` (largest
    remainder), within a group the keys of smallest hash; returned in the order of ``keys``.

    Raises:
        ValueError: ``n`` is not in ``1..len(keys)`` or ``groups`` has another length.
    """
    if len(groups) != len(keys):
        raise ValueError(f"{len(keys)} keys but {len(groups)} groups")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(keys):
        raise ValueError(f"cannot take {n!r} classes from a split of {len(keys)} classes")
    sizes = Counter(groups)
    exact = {g: n * size / len(keys) for g, size in sizes.items()}
    quota = {g: int(q) for g, q in exact.items()}
    # The remaining slots go to the largest remainders; ties broken by group name (stable).
    by_remainder = sorted(exact, key=lambda g: (quota[g] - exact[g], str(g)))
    for g in by_remainder[: n - sum(quota.values())]:
        quota[g] += 1
    members: dict[Hashable, list[str]] = {}
    for key, group in zip(keys, groups, strict=True):
        members.setdefault(group, []).append(key)
    chosen = set()
    for group, listed in members.items():
        chosen.update(sorted(listed, key=lambda k: stable_hash(k, salt))[: quota[group]])
    return [key for key in keys if key in chosen]


class ClassSubset(torch.utils.data.Dataset):
    """The items of ``dataset`` whose label is in ``classes``, optionally relabelled
    ``0..len(classes)-1`` in the order of ``classes`` (what proxy losses need).

    Attributes:
        labels: ``(N,)`` int64 labels as returned by ``__getitem__``.
        indices: the items' indices in ``dataset``.
    """

    def __init__(self, dataset, classes: Sequence[int], relabel: bool = False):
        labels = np.asarray(dataset.labels)
        classes = [int(c) for c in classes]
        missing = sorted(set(classes) - set(labels.tolist()))
        if missing:
            raise ValueError(f"classes {missing[:5]} have no items in the dataset")
        self.dataset = dataset
        self.indices = np.flatnonzero(np.isin(labels, classes))
        mapping = {c: i for i, c in enumerate(classes)} if relabel else None
        self._mapping = mapping
        kept = labels[self.indices]
        self.labels = (
            np.array([mapping[int(c)] for c in kept], dtype=np.int64)
            if mapping is not None
            else kept.astype(np.int64)
        )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        item, label = self.dataset[int(self.indices[index])]
        return item, int(self.labels[index]) if self._mapping is not None else label
