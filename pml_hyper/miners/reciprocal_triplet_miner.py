"""HIER's reciprocal (mutual) top-k triplet miner as a PML miner (docs/hier.md#mining).

Kim, Jeong, Kwak, "HIER: Metric Learning Beyond Class Labels via Hierarchical Regularization",
CVPR 2023.
"""

from __future__ import annotations

import warnings

import torch
from pytorch_metric_learning.miners import BaseMiner

from ..distances.poincare_distance import PoincareDistance
from ..utils.checks import check_generator_device


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean ``(n, m)`` mask of the ``k`` largest entries of each row of ``scores``."""
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    return mask.scatter_(1, scores.topk(k, dim=1).indices, True)


def sample_from_rows(
    mask: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw ``num_samples`` column indices per row, uniformly with replacement among the True
    entries of that row: ``(R, m) bool -> (R, num_samples) int64``. Every row needs a True entry.

    One uniform number per draw picks the r-th True entry, found by binary search in the row's
    running count, so the whole draw is a handful of device kernels with no host sync.
    """
    counts = mask.sum(1, keepdim=True)
    u = torch.rand(
        (mask.shape[0], num_samples), generator=generator, device=mask.device, dtype=torch.float32
    )
    rank = torch.minimum((u * counts).long(), counts - 1)
    return torch.searchsorted(mask.cumsum(1), rank + 1)


class ReciprocalTripletMiner(BaseMiner):
    """Triplets (a, p, n) with p a mutual top-k neighbour of a and n any non-mutual point.

    For anchors ``embeddings`` (n, D) and references ``ref_emb`` (m, D) (by default the same
    tensor), with d the miner's distance (docs/hier.md#mining):

    - similarity S_ab = exp(−d_ab) + ``same_class_bonus``·1[y_a = y_b] (no bonus without labels);
    - b is a neighbour of a if S_ab is among the ``topk`` largest of row a; a and b are *mutual*
      neighbours if each is a neighbour of the other (S is used as is when ``ref_emb`` is
      ``embeddings``, and its transpose gives the references' neighbours otherwise);
    - Pos_a = the mutual neighbours of a other than a itself; Neg_a = the others;
    - every anchor with |Pos_a| ≥ 2 (and a non-empty Neg_a) gets ``triplets_per_anchor``
      triplets, p drawn uniformly with replacement from Pos_a and n, independently, from Neg_a.

    PML's ``BaseMiner.forward`` requires labels; for label-free mining (no bonus) call
    :meth:`mine_from_distances` with ``labels=None``.

    Output: ``(anchors, positives, negatives)`` int64 tensors of length
    T = ``triplets_per_anchor`` × #qualifying anchors, anchors in ascending order and each
    anchor's triplets in draw order. Anchors index ``embeddings``, the others ``ref_emb``.
    Everything runs on the embeddings' device; the only host sync is the size of the output.

    Quirks to know about:

    - Positives are mutual nearest neighbours, **not necessarily same-class samples**. The bonus
      only makes same-class pairs rank first; different-class mutual neighbours are positives too,
      and a same-class sample outside the top-k (a class with more than ``topk`` samples in the
      batch) is a negative. The triplets are therefore not label-consistent: called as an
      ordinary PML ``tuple_miner`` (through ``forward``) with the default, it warns once.
      ``same_class_positives=True`` keeps only same-class mutual neighbours as positives and
      other-class samples as negatives, for PML's triplet losses.
    - The official code keeps each anchor in its own negative set, so about 1 % of its triplets
      are (a, p, a). ``anchor_as_negative=True`` reproduces that (parity tests, paper
      reproduction); the default excludes the anchor, which gives clean triplets for PML's
      triplet losses.
    - ``topk`` must be smaller than the number of candidates; a larger value is clamped to
      (candidates − 1) with a warning (the official code samples garbage or crashes there).

    Args:
        topk: k of the mutual k-nearest-neighbour relation (20 in the HIER scripts).
        triplets_per_anchor: triplets drawn per qualifying anchor (50, hard-coded in HIER).
        same_class_bonus: added to the similarity of same-label pairs (1.0 in HIER).
        distance: a PML distance with ``is_inverted=False``; default ``PoincareDistance(c=0.1)``.
        anchor_as_negative: keep the anchor in its own negative set, as the official code does.
        same_class_positives: restrict positives to same-class mutual neighbours and negatives
            to other classes (label-consistent triplets; not HIER's semantics). Needs labels.
        generator: ``torch.Generator`` on the embeddings' device for the draws; ``None`` uses
            the global torch RNG.
        **kwargs: passed to ``BaseMiner`` (``collect_stats``).
    """

    def __init__(
        self,
        topk: int = 20,
        triplets_per_anchor: int = 50,
        same_class_bonus: float = 1.0,
        distance=None,
        anchor_as_negative: bool = False,
        generator: torch.Generator | None = None,
        same_class_positives: bool = False,
        **kwargs,
    ):
        super().__init__(distance=distance, **kwargs)
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk must be a positive int, got {topk!r}")
        if (
            isinstance(triplets_per_anchor, bool)
            or not isinstance(triplets_per_anchor, int)
            or triplets_per_anchor < 1
        ):
            raise ValueError(
                f"triplets_per_anchor must be a positive int, got {triplets_per_anchor!r}"
            )
        if not same_class_bonus >= 0:
            raise ValueError(f"same_class_bonus must be >= 0, got {same_class_bonus!r}")
        if self.distance.is_inverted:
            raise ValueError(
                "ReciprocalTripletMiner ranks by exp(-d) and needs a distance "
                f"(is_inverted=False), got {type(self.distance).__name__}"
            )
        self.topk = topk
        self.triplets_per_anchor = triplets_per_anchor
        self.same_class_bonus = float(same_class_bonus)
        self.anchor_as_negative = anchor_as_negative
        self.generator = generator
        self.same_class_positives = bool(same_class_positives)
        self._warned_label_inconsistent = False
        self.add_to_recordable_attributes(
            list_of_names=["topk", "triplets_per_anchor", "same_class_bonus"], is_stat=False
        )
        self.add_to_recordable_attributes(name="num_anchors", is_stat=True)

    def get_default_distance(self) -> PoincareDistance:
        return PoincareDistance(c=0.1)

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None):
        """PML's miner entry point (``tuple_miner`` use; HIERLoss calls :meth:`mine`)."""
        default = labels is not None and not self.same_class_positives
        if default and not self._warned_label_inconsistent:
            self._warned_label_inconsistent = True
            warnings.warn(
                "ReciprocalTripletMiner: positives are mutual nearest neighbours (HIER's "
                "semantics), not necessarily same-class samples, so the triplets given to a "
                "PML loss are not label-consistent. Pass same_class_positives=True for "
                "label-consistent triplets.",
                UserWarning,
                stacklevel=2,
            )
        return super().forward(embeddings, labels, ref_emb, ref_labels)

    def mine(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor | None,
        ref_emb: torch.Tensor,
        ref_labels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(n, D), (n,), (m, D), (m,) -> 3 × (T,)``; see the class docstring."""
        mat = self.distance(embeddings, ref_emb)
        return self.mine_from_distances(mat, labels, ref_labels, same_set=ref_emb is embeddings)

    def mine_from_distances(
        self,
        mat: torch.Tensor,
        labels: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
        same_set: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mine from a precomputed ``(n, m)`` distance matrix; arguments as in
        :meth:`candidate_sets`."""
        check_generator_device(self.generator, mat.device)
        positive, negative = self.candidate_sets(mat, labels, ref_labels, same_set)
        qualifying = (positive.sum(1) >= 2) & negative.any(1)
        anchors = qualifying.nonzero().squeeze(1)
        t = self.triplets_per_anchor
        a = anchors.repeat_interleave(t)
        p = sample_from_rows(positive[anchors], t, self.generator).flatten()
        n = sample_from_rows(negative[anchors], t, self.generator).flatten()
        if self.collect_stats:
            self.num_anchors = len(anchors)
        return a, p, n

    def candidate_sets(
        self,
        mat: torch.Tensor,
        labels: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
        same_set: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean ``(n, m)`` masks (Pos, Neg) of each anchor's positives and negatives (#mining).

        ``mat`` is an ``(n, m)`` distance matrix (detached here); ``same_set=True`` means the
        rows and the columns are the same points (``mat`` is square, its diagonal holds the
        self-distances). ``labels`` (n,) add the same-class bonus, ``ref_labels`` (m,)
        defaulting to ``labels``.
        """
        mat = mat.detach()
        n, m = mat.shape
        if same_set and n != m:
            raise ValueError(f"same_set=True needs a square matrix, got shape {tuple(mat.shape)}")
        similarity = torch.exp(-mat)
        if labels is not None and self.same_class_bonus:
            ref_labels = labels if ref_labels is None else ref_labels
            same = labels.unsqueeze(1) == ref_labels.unsqueeze(0)
            similarity = similarity + self.same_class_bonus * same.to(similarity.dtype)
        neighbours = topk_mask(similarity, self._clamped_topk(m))
        if not same_set:
            mutual = neighbours & topk_mask(similarity.T, self._clamped_topk(n)).T
            return self._restrict_to_classes(mutual, ~mutual, labels, ref_labels)
        mutual = neighbours & neighbours.T
        eye = torch.eye(n, dtype=torch.bool, device=mat.device)
        negative = ~mutual | eye if self.anchor_as_negative else ~(mutual | eye)
        return self._restrict_to_classes(mutual & ~eye, negative, labels, ref_labels)

    def _restrict_to_classes(
        self,
        positive: torch.Tensor,
        negative: torch.Tensor,
        labels: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """With ``same_class_positives``: same-class positives, other-class negatives."""
        if not self.same_class_positives:
            return positive, negative
        if labels is None:
            raise ValueError("same_class_positives=True needs labels")
        ref_labels = labels if ref_labels is None else ref_labels
        same = labels.unsqueeze(1) == ref_labels.unsqueeze(0)
        return positive & same, negative & ~same

    def _clamped_topk(self, num_candidates: int) -> int:
        if self.topk < num_candidates:
            return self.topk
        warnings.warn(
            f"ReciprocalTripletMiner: topk={self.topk} needs more than {num_candidates} "
            f"candidates; using topk={num_candidates - 1}",
            stacklevel=3,
        )
        return max(num_candidates - 1, 0)
