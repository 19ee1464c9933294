"""Exact hyperbolic k-nearest neighbours as a PML ``knn_func`` (docs/hyperbolic.md#exact-knn)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator

import torch

from ..manifolds.poincare import PoincareBall
from ..utils.checks import warn_if_unit_normalized
from .base_knn import BaseKNN

CHUNK_BYTES = 1 << 28
"""Upper bound on the temporary float32 score blocks of the torch search (256 MiB)."""
BLOCK_BYTES = 1 << 24
"""Float64 row blocks of the references (16 MiB): a float32 reference set is converted block by
block into one reused buffer, never as a whole."""
NEAR_ZERO = 1e-3
"""Distances below this are recomputed from coordinate differences."""
PAIRS_PER_GEMM_ROW = 10
"""Above N / 10 candidates per query, a float64 GEMM over all references is cheaper than the
float32 search plus float64 inner products with the candidates (measured on CPU)."""


class HyperbolicKNN(BaseKNN):
    """Exact k nearest neighbours under the Poincaré distance, for PML's ``AccuracyCalculator``,
    testers and ``InferenceModel``.

    ``__call__(query, k, reference=None, ref_includes_query=False) -> (distances, indices)``, both
    ``(Nq, k)``, sorted nearest first; with ``ref_includes_query`` the query set is
    ``reference[:Nq]`` and each query's own index is removed, as in PML's kNN functions.

    Method: points are lifted to the hyperboloid (:meth:`PoincareBall.to_lorentz`, in float64,
    rounded once to float32), where -cosh(√c d) is an inner product, so the search is a
    maximum-inner-product search. Float32 scores (faiss's exact ``knn`` or a batched torch matmul
    + top-k) give ``k + rerank`` candidates. Every float32 score is within a rigorous bound of the
    exact one (dot-product rounding error), so only the leading candidates whose score can still
    reach the k-th get float64 distances, from float64 inner products evaluated as one sampled
    sparse-dense product (no gathered copies). Each query is then certified: every
    non-candidate's exact score is at most the last candidate's float32 score plus the bound,
    which must stay below the k-th exact score. Uncertified queries (near-ties that float32
    cannot separate) are searched again by a float64 brute force (augmented GEMMs), which is also
    used directly when ``k + rerank`` exceeds 1/10 of the references (the float64 inner products
    with that many candidates cost more than the GEMM). Distances below 1e-3 are recomputed from
    coordinate differences (exact zeros for duplicates) before the k nearest are kept, and
    queries with more than k references that close are searched from coordinate differences
    alone. A float32 reference set is only converted to float64 in blocks, and a query set that
    is ``reference[:Nq]`` shares its norms and lift. The result equals a float64 brute-force
    search up to the rounding of float64 Gram-form distances (relative error about
    1e-16·(‖x‖² + ‖y‖²)/‖x - y‖²).

    Args:
        c: curvature magnitude of the ball the embeddings live in.
        backend: ``"faiss"`` (faiss-cpu; CPU search), ``"torch"`` (matmul on the query's device),
            or ``"auto"``: torch for CUDA inputs, faiss when installed, torch otherwise.
        rerank: extra candidates retrieved per query for the exact re-ranking.
        check_inputs: raise ``ValueError`` naming rows that are non-finite or outside the ball,
            and warn once when every row has norm 1 (L2-normalised embeddings); one host sync
            per call.
    """

    def __init__(
        self, c: float = 0.1, backend: str = "auto", rerank: int = 16, check_inputs: bool = True
    ):
        super().__init__(backend, rerank)
        self.ball = PoincareBall(c)
        self.check_inputs = check_inputs
        self.c = c

    def __repr__(self) -> str:
        return f"HyperbolicKNN(c={self.c}, backend={self.backend!r}, rerank={self.rerank})"

    # ------------------------------------------------------------ InferenceModel index API
    def save(self, filename: str) -> None:
        torch.save({"c": self.c, "reference": self.reference}, filename)

    def load(self, filename: str) -> None:
        state = torch.load(filename, weights_only=True)
        if state["c"] != self.c:
            raise ValueError(
                f"{filename} holds an index for c={state['c']}, this knn has c={self.c}"
            )
        if state["reference"] is not None:
            self._check_point(state["reference"], "reference")
        self.reference = state["reference"]

    # ------------------------------------------------------------ search
    def _check_point(self, x: torch.Tensor, name: str) -> None:
        if self.check_inputs:
            self.ball.check_point(x, name)
            warn_if_unit_normalized(self, x, self.c)

    def _search(
        self, query: torch.Tensor, reference: torch.Tensor, k: int, leading: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """k nearest of ``query`` (Nq, n) in ``reference`` (N, n): 2 × (Nq, k), nearest first.

        ``leading``: ``query`` is ``reference[:Nq]``, so its norms and lift are reused.
        """
        backend = self._resolve_backend(query.device)
        device = torch.device("cpu") if backend == "faiss" else query.device
        y = reference.to(device)
        y2, r_lift = self._lift(y)
        if leading:
            x = y[: len(query)].to(torch.float64)
            x2, q_lift = y2[: len(query)], r_lift[: len(query)].clone()
        else:
            x = query.to(device=device, dtype=torch.float64)
            x2, q_lift = self._lift(x)
        n_cand = min(k + self.rerank, len(y))
        if n_cand * PAIRS_PER_GEMM_ROW >= len(y):
            return self._float64_search(x, x2, y, y2, k)

        q_lift[:, 0].neg_()
        search32 = _faiss_search if backend == "faiss" else _torch_search
        scores, cand = search32(q_lift, r_lift, n_cand)
        scores, cand = scores.to(device=device, dtype=torch.float64), cand.to(device)
        bound = self._score_error_bound(x2, y2.max(), q_lift.shape[1], q_lift.is_cuda)
        distances, indices = self._rerank(x, x2, y, y2, scores, cand, bound, k)
        kth_score = -torch.cosh(self.ball.sqrt_c * distances[:, -1])
        redo = scores[:, -1] + bound >= kth_score
        if redo.any():
            rows = redo.nonzero().squeeze(1)
            distances[rows], indices[rows] = self._float64_search(x[rows], x2[rows], y, y2, k)
        return distances, indices

    def _lift(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float64 squared norms ``(N,)`` and float32 hyperboloid lifts ``(N, n + 1)`` of ``x``.

        Each lifted coordinate is the float64 lift rounded once to float32. Works through
        float64 row blocks, so a float32 ``x`` is never copied to float64 as a whole.
        """
        sq_norm = torch.empty(len(x), dtype=torch.float64, device=x.device)
        lifted = torch.empty(len(x), x.shape[1] + 1, device=x.device)
        for start, block in _float64_blocks(x):
            rows = slice(start, start + len(block))
            torch.linalg.vector_norm(block, dim=1, out=sq_norm[rows]).square_()
            lifted[rows] = self.ball.to_lorentz(block, sq_norm[rows])
        return sq_norm, lifted

    def _refine_near_zero(
        self, x: torch.Tensor, y: torch.Tensor, dist: torch.Tensor, cand: torch.Tensor
    ) -> None:
        """Recompute, in place, the distances ``dist`` (Nq, w) from ``x[q]`` to ``y[cand[q, j]]``
        that are below NEAR_ZERO, from coordinate differences.

        The Gram form loses ~1e-7 absolute accuracy at coincident points; the row-wise formula
        gives exact zeros there.
        """
        near = dist < NEAR_ZERO
        if near.any():
            rows, cols = near.nonzero(as_tuple=True)
            dist[rows, cols] = self.ball.dist(x[rows], y[cand[rows, cols]])

    def _float64_search(
        self, x: torch.Tensor, x2: torch.Tensor, y: torch.Tensor, y2: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Brute force in float64 as augmented GEMMs over float64 blocks of the references:
        ``x`` (Nq, n), ``x2`` (Nq,), ``y`` (N, n), ``y2`` (N,) -> 2 × (Nq, k), nearest first.

        For a fixed query, d_c(x, y) increases with t = ‖x - y‖²/(1 - c‖y‖²)
        = ‖x‖²w + ‖y‖²w - 2⟨x, wy⟩ with w = 1/(1 - c‖y‖²): the inner product of (x, ‖x‖², 1)
        with (-2wy, w, ‖y‖²w). The k + 1 smallest t are selected and their distances below
        NEAR_ZERO recomputed before keeping the k nearest. Queries whose k + 1 selected all lie
        below NEAR_ZERO, where t cannot rank the references, are searched again by
        :meth:`_crowded_search`.
        """
        c = self.ball.c
        w = 1 / (1 - c * y2)

        def negated_refs() -> Iterator[tuple[int, torch.Tensor]]:
            for start, block in _float64_blocks(y):
                rows = slice(start, start + len(block))
                wb = w[rows, None]
                yield start, torch.cat([2 * wb * block, -wb, -y2[rows, None] * wb], dim=1)

        queries = torch.cat([x, x2[:, None], torch.ones_like(x2)[:, None]], dim=1)
        neg_t, cand = _top_inner(queries, negated_refs, len(y), min(k + 1, len(y)))
        dist = self._dist_from_t(neg_t.neg_(), x2[:, None])
        crowded = (dist[:, -1] < NEAR_ZERO) & (cand.shape[1] < len(y))
        self._refine_near_zero(x, y, dist, cand)
        distances, order = torch.topk(dist, k, dim=1, largest=False)
        indices = cand.gather(1, order)
        if crowded.any():
            rows = crowded.nonzero().squeeze(1)
            distances[rows], indices[rows] = self._crowded_search(x[rows], y, k)
        return distances, indices

    def _dist_from_t(self, t: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """d_c from t = ‖x - y‖²/(1 - c‖y‖²) and ‖x‖² (broadcast): cosh(√c d) = 1 + z with
        z = 2c t/(1 - c‖x‖²), as log1p(z + √(z(z + 2)))/√c, accurate at every distance (the
        artanh form saturates near the boundary). Clamps ``t`` at 0 in place.
        """
        z = 2 * self.ball.c * t.clamp_min_(0) / (1 - self.ball.c * x2)
        return torch.log1p(z + torch.sqrt(z * (z + 2))) / self.ball.sqrt_c

    def _crowded_search(
        self, x: torch.Tensor, y: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Brute force with every distance from coordinate differences (``pairwise_dist``), for
        queries with more than k references within NEAR_ZERO: ``(r, n), (N, n) -> 2 × (r, k)``.
        """
        step = max(1, CHUNK_BYTES // (3 * len(y) * 8))
        parts = [
            torch.topk(self.ball.pairwise_dist(x[s : s + step], y), k, dim=1, largest=False)
            for s in range(0, len(x), step)
        ]
        return torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])

    def _score_error_bound(
        self, x2: torch.Tensor, y2_max: torch.Tensor, length: int, tf32: bool
    ) -> torch.Tensor:
        """Bound ``(Nq,)`` on |float32 score - exact score| for every reference.

        A dot product of length L computed in a precision with unit roundoff u errs by at most
        γ·Σ|a_i b_i| with γ = L·u/(1 - L·u); rounding the lifted vectors to float32 adds
        2u·Σ|a_i b_i|. For lifts X, Y, Σ|X_i Y_i| ≤ X₀Y₀ + ‖X_{1:}‖‖Y_{1:}‖, where
        X₀ = (1 + t)/(1 - t) and ‖X_{1:}‖ = 2√t/(1 - t) with t = c‖x‖², both increasing in
        ‖x‖, so the largest reference norm bounds every reference.
        """
        unit = torch.finfo(torch.float32).eps / 2
        if tf32 and torch.backends.cuda.matmul.allow_tf32:
            unit = 2.0**-11
        gamma = length * unit / (1 - length * unit) + 2 * unit
        tq, tr = self.ball.c * x2, self.ball.c * y2_max
        abs_sum = ((1 + tq) * (1 + tr) + 4 * (tq * tr).sqrt()) / ((1 - tq) * (1 - tr))
        return gamma * abs_sum

    def _rerank(
        self,
        x: torch.Tensor,
        x2: torch.Tensor,
        y: torch.Tensor,
        y2: torch.Tensor,
        scores: torch.Tensor,
        cand: torch.Tensor,
        bound: torch.Tensor,
        k: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The k nearest of the candidates ``cand`` (Nq, m), by exact float64 distances.

        ``scores`` (Nq, m) are their float32 scores, sorted descending, each within ``bound``
        (Nq,) of the exact score. At least k candidates score ≥ s_k - bound exactly, so a
        candidate with s_j < s_k - 2·bound cannot be among the k nearest: float64 distances
        are computed for the leading candidates up to the last one that can.
        """
        can_be_nearest = scores[:, k:] >= (scores[:, k - 1] - 2 * bound)[:, None]
        cand = cand[:, : k + int(can_be_nearest.any(0).sum())]  # a prefix of every row
        inner = _candidate_inner(x, y, cand)
        y2_cand = y2[cand]
        t = (x2[:, None] + y2_cand - 2 * inner) / (1 - self.ball.c * y2_cand)
        dist = self._dist_from_t(t, x2[:, None])
        self._refine_near_zero(x, y, dist, cand)
        best, order = torch.topk(dist, k, dim=1, largest=False)
        return best, cand.gather(1, order)


def _float64_blocks(x: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """Row blocks ``(start, (B, n))`` of ``x`` (N, n) in float64, of about BLOCK_BYTES each.

    Views of a float64 ``x``; otherwise conversions into one buffer reused by every block, so a
    block is only valid until the next one is produced.
    """
    step = max(1, BLOCK_BYTES // (x.shape[1] * 8))
    buffer = None
    if x.dtype != torch.float64:
        buffer = torch.empty(min(step, len(x)), x.shape[1], dtype=torch.float64, device=x.device)
    for start in range(0, len(x), step):
        block = x[start : start + step]
        yield start, block if buffer is None else buffer[: len(block)].copy_(block)


def _candidate_inner(x: torch.Tensor, y: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Float64 ⟨x_q, y_cand[q, j]⟩: ``(Nq, n), (N, n), (Nq, w) -> (Nq, w)``.

    The (query, candidate) pairs are sorted by reference and evaluated with a sampled
    sparse-dense product per float64 block of ``y``: each reference row is read once, and
    nothing of size Nq·w × n is gathered.
    """
    refs, order = cand.reshape(-1).to(torch.int32).sort()  # int32 sorts twice as fast
    crow = torch.zeros(len(y) + 1, dtype=torch.long, device=y.device)
    torch.cumsum(torch.bincount(refs, minlength=len(y)), 0, out=crow[1:])
    queries = order // cand.shape[1]
    values = torch.zeros(len(order), dtype=torch.float64, device=y.device)
    offsets = crow.tolist()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        for start, block in _float64_blocks(y):
            lo, hi = offsets[start], offsets[start + len(block)]
            if lo == hi:
                continue
            pattern = torch.sparse_csr_tensor(
                crow[start : start + len(block) + 1] - lo,
                queries[lo:hi],
                values[lo:hi],
                size=(len(block), len(x)),
                check_invariants=False,
            )
            values[lo:hi] = torch.sparse.sampled_addmm(pattern, block, x.T, beta=0).values()
    return torch.empty_like(values).scatter_(0, order, values).view(cand.shape)


def _top_inner(
    queries: torch.Tensor,
    ref_blocks: Callable[[], Iterable[tuple[int, torch.Tensor]]],
    n_refs: int,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k largest inner products of ``queries`` (Nq, L) with ``n_refs`` references.

    ``ref_blocks()`` yields the references as row blocks ``(start, (B, L))``; it is called once
    per chunk of queries, whose score rows (at most CHUNK_BYTES) are filled block by block.
    Returns scores and indices, both ``(Nq, k)``, largest first.
    """
    scores = torch.empty(len(queries), k, dtype=queries.dtype, device=queries.device)
    indices = torch.empty(len(queries), k, dtype=torch.long, device=queries.device)
    step = max(1, CHUNK_BYTES // (n_refs * queries.element_size()))
    for s in range(0, len(queries), step):
        chunk = queries[s : s + step]
        block_scores = torch.empty(len(chunk), n_refs, dtype=queries.dtype, device=queries.device)
        for start, block in ref_blocks():
            torch.mm(chunk, block.T, out=block_scores[:, start : start + len(block)])
        scores[s : s + step], indices[s : s + step] = torch.topk(block_scores, k, dim=1)
    return scores, indices


def _torch_search(
    queries: torch.Tensor, refs: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k largest inner products: ``(Nq, L), (Nr, L) -> 2 × (Nq, k)``, largest first."""
    return _top_inner(queries, lambda: [(0, refs)], len(refs), k)


def _faiss_search(
    queries: torch.Tensor, refs: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k largest inner products with faiss's exact brute force on the CPU (no index copy)."""
    import faiss

    scores, indices = faiss.knn(
        queries.cpu().numpy(), refs.cpu().numpy(), k, metric=faiss.METRIC_INNER_PRODUCT
    )
    return torch.from_numpy(scores), torch.from_numpy(indices)
