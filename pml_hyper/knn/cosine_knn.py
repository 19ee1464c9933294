"""Exact cosine k-nearest neighbours as a PML ``knn_func`` (see ``docs/cosine_knn.md``)."""

from __future__ import annotations

import torch

from .base_knn import BaseKNN
from .hyperbolic_knn import (
    CHUNK_BYTES,
    _candidate_inner,
    _faiss_search,
    _float64_blocks,
    _torch_search,
)


class CosineKNN(BaseKNN):
    """Exact k nearest neighbours by cosine similarity, a drop-in for PML's
    ``CustomKNN(CosineSimilarity())``.

    ``__call__(query, k, reference=None, ref_includes_query=False) -> (similarities, indices)``,
    both ``(Nq, k)``, most similar first; with ``ref_includes_query`` the queries are
    ``reference[:Nq]`` and each query's own index is removed (PML's ``return_results``), so a
    duplicate of the query stays in its neighbours.

    Method: the rows are L2-normalised in float32; a float32
    inner-product search (faiss's exact ``knn`` on the CPU, or a chunked GEMM + top-k on the
    embeddings' device) returns ``k + rerank`` candidates. Every float32 score is within a
    rigorous bound of the exact cosine, so only the candidates that can still reach the k-th
    get float64 similarities ⟨x, y⟩/(‖x‖‖y‖). A query is certified when its k-th exact
    similarity exceeds the last candidate's float32 score plus the bound (no other reference can
    beat it); the rest are searched again by a float64 brute force. The neighbours are those of
    a float64 brute force.

    Args:
        backend: ``"faiss"`` (faiss-cpu), ``"torch"`` (matmul on the query's device), or
            ``"auto"``: torch for CUDA inputs, faiss when installed, torch otherwise.
        rerank: extra candidates per query for the float64 re-ranking.

    Raises ``ValueError`` for non-finite or zero-norm rows (their cosine is undefined).
    """

    def __repr__(self) -> str:
        return f"CosineKNN(backend={self.backend!r}, rerank={self.rerank})"

    def _search(
        self, query: torch.Tensor, reference: torch.Tensor, k: int, leading: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """k most similar of ``query`` (Nq, D) in ``reference`` (N, D): 2 × (Nq, k)."""
        backend = self._resolve_backend(query.device)
        device = torch.device("cpu") if backend == "faiss" else query.device
        y = reference.to(device)
        y32 = _normalised(y, "reference")
        if leading:
            x, x32 = y[: len(query)], y32[: len(query)]
        else:
            x = query.to(device)
            x32 = _normalised(x, "query")
        x64 = x.to(torch.float64)
        x_norm = torch.linalg.vector_norm(x64, dim=1)
        n_cand = min(k + self.rerank, len(y))
        if n_cand == len(y):
            return _float64_search(x64, x_norm, y, _norms64(y), k)
        search32 = _faiss_search if backend == "faiss" else _torch_search
        scores, cand = search32(x32, y32, n_cand)
        scores, cand = scores.to(device=device, dtype=torch.float64), cand.to(device)
        bound = _score_error_bound(y.shape[1], x32.is_cuda)
        # a candidate scoring below s_k - 2·bound cannot be among the k most similar
        can_be_nearest = scores[:, k:] >= (scores[:, k - 1] - 2 * bound)[:, None]
        cand_prefix = cand[:, : k + int(can_be_nearest.any(0).sum())]
        y_norm = _norms64(y)
        exact = _candidate_inner(x64, y, cand_prefix) / (x_norm[:, None] * y_norm[cand_prefix])
        sims, order = torch.topk(exact, k, dim=1)
        indices = cand_prefix.gather(1, order)
        redo = scores[:, -1] + bound >= sims[:, -1]
        if redo.any():
            rows = redo.nonzero().squeeze(1)
            sims[rows], indices[rows] = _float64_search(x64[rows], x_norm[rows], y, y_norm, k)
        return sims, indices


def _normalised(x: torch.Tensor, name: str) -> torch.Tensor:
    """Float32 unit rows ``(N, D)`` of ``x`` (N, D), normalised by float32 norms (rows whose
    float32 norm under- or overflows are normalised in float64). Raises ``ValueError`` for
    non-finite or zero rows."""
    x32 = x.to(torch.float32)
    norms = torch.linalg.vector_norm(x32, dim=1)
    bad = ~torch.isfinite(norms) | (norms == 0)
    if not bad.any():
        return x32 / norms[:, None]
    rows = bad.nonzero().squeeze(1)
    x64 = x[rows].to(torch.float64)
    if not torch.isfinite(x64).all():
        raise ValueError(f"{name} has non-finite values")
    norms64 = torch.linalg.vector_norm(x64, dim=1)
    if (norms64 == 0).any():
        row = int(rows[norms64 == 0][0])
        raise ValueError(f"{name} row {row} is zero: its cosine similarity is undefined")
    unit = x32 / norms.clamp_min(1e-30)[:, None]
    unit[rows] = (x64 / norms64[:, None]).to(torch.float32)
    if not torch.isfinite(unit).all():
        raise ValueError(f"{name} has non-finite values")
    return unit


def _norms64(x: torch.Tensor) -> torch.Tensor:
    """Float64 row norms ``(N,)``, converted block by block."""
    norms = torch.empty(len(x), dtype=torch.float64, device=x.device)
    for start, block in _float64_blocks(x):
        norms[start : start + len(block)] = torch.linalg.vector_norm(block, dim=1)
    return norms


def _score_error_bound(length: int, tf32: bool) -> float:
    """Bound on |float32 score - exact cosine| for rows normalised in float32.

    A dot product of length L with unit roundoff u errs by at most γ·Σ|a_i b_i| with
    γ = L·u/(1 - L·u), and Σ|a_i b_i| ≤ ‖a‖‖b‖ ≈ 1. A float32 norm errs by at most
    (L/2 + 1)·u relative, the division and the rounding of the input to float32 add u each,
    so each normalised row is its exact unit vector times (1 + ε), |ε| ≤ (L/2 + 3)·u.
    """
    u32 = torch.finfo(torch.float32).eps / 2
    unit = 2.0**-11 if tf32 and torch.backends.cuda.matmul.allow_tf32 else u32
    gamma = length * unit / (1 - length * unit)
    rows = (length + 6) * u32
    return 1.01 * (gamma + rows) * (1 + rows) + 1e-12


def _float64_search(
    x: torch.Tensor, x_norm: torch.Tensor, y: torch.Tensor, y_norm: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force ⟨x, y⟩/(‖x‖‖y‖) in float64: ``(Nq, D), (Nq,), (N, D), (N,) -> 2 × (Nq, k)``
    over float64 blocks of ``y``, query chunks of at most CHUNK_BYTES of scores."""
    sims = torch.empty(len(x), k, dtype=torch.float64, device=x.device)
    indices = torch.empty(len(x), k, dtype=torch.long, device=x.device)
    step = max(1, CHUNK_BYTES // (len(y) * 8))
    for s in range(0, len(x), step):
        chunk, norms = x[s : s + step], x_norm[s : s + step, None]
        scores = torch.empty(len(chunk), len(y), dtype=torch.float64, device=x.device)
        for start, block in _float64_blocks(y):
            rows = slice(start, start + len(block))
            torch.mm(chunk, block.T, out=scores[:, rows])
            scores[:, rows] /= norms * y_norm[None, rows]
        sims[s : s + step], indices[s : s + step] = torch.topk(scores, k, dim=1)
    return sims, indices
