"""Exact hyperbolic k-nearest neighbours as a PML ``knn_func`` (hyperbolic.md §6)."""

from __future__ import annotations

import importlib.util

import torch
from pytorch_metric_learning.utils.inference import return_results

from ..manifolds.poincare import PoincareBall

BACKENDS = ("auto", "torch", "faiss")
CHUNK_BYTES = 1 << 28
"""Upper bound on the temporary score / gather blocks (256 MiB)."""
NEAR_ZERO = 1e-3
"""Distances below this are recomputed from coordinate differences."""
GATHER_PER_GEMM_ROW = 64
"""Above N / 64 candidates per query, a float64 GEMM over all references is cheaper than
gathering the candidates (measured on CPU: one gathered candidate costs ~50 GEMM rows)."""


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


class HyperbolicKNN:
    """Exact k nearest neighbours under the Poincaré distance, for PML's ``AccuracyCalculator``,
    testers and ``InferenceModel``.

    ``__call__(query, k, reference=None, ref_includes_query=False) -> (distances, indices)``, both
    ``(Nq, k)``, sorted nearest first; with ``ref_includes_query`` the query set is
    ``reference[:Nq]`` and each query's own index is removed, as in PML's kNN functions.

    Method: points are lifted to the hyperboloid (:meth:`PoincareBall.to_lorentz`, in float64),
    where -cosh(√c d) is an inner product, so the search is a maximum-inner-product search. Float32
    scores (faiss ``IndexFlatIP`` or a batched torch matmul + top-k) give ``k + rerank``
    candidates, which are re-ranked with float64 distances. Each query is then certified: every
    non-candidate's true score is at most its float32 score plus the float32 dot-product error
    bound, which must stay below the k-th exact score. Uncertified queries (near-ties that
    float32 cannot separate) are searched again by a float64 brute force (one GEMM over augmented
    vectors), which is also used directly when ``k + rerank`` exceeds 1/64 of the references
    (gathering that many candidates costs more than the GEMM). Distances below 1e-3 are
    recomputed from coordinate differences (exact zeros for duplicates). The result equals a
    float64 brute-force search up to float64 rounding.

    Args:
        c: curvature magnitude of the ball the embeddings live in.
        backend: ``"faiss"`` (faiss-cpu; CPU search), ``"torch"`` (matmul on the query's device),
            or ``"auto"``: torch for CUDA inputs, faiss when installed, torch otherwise.
        rerank: extra candidates retrieved per query for the exact re-ranking.
    """

    def __init__(self, c: float = 0.1, backend: str = "auto", rerank: int = 16):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "faiss" and not faiss_available():
            raise ImportError(
                "HyperbolicKNN(backend='faiss') needs faiss: pip install 'pml-hyper[faiss]' "
                "(faiss-cpu), or use backend='torch'"
            )
        if rerank < 0:
            raise ValueError(f"rerank must be >= 0, got {rerank}")
        self.ball = PoincareBall(c)
        self._exact = PoincareBall(c, check_inputs=False)
        self.c = c
        self.backend = backend
        self.rerank = rerank
        self.reference: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"HyperbolicKNN(c={self.c}, backend={self.backend!r}, rerank={self.rerank})"

    # ------------------------------------------------------------ InferenceModel index API
    def train(self, embeddings: torch.Tensor) -> None:
        """Store ``embeddings`` (N, n) as the reference set (replaces any previous one)."""
        self.reference = None
        self.add(embeddings)

    def add(self, embeddings: torch.Tensor) -> None:
        """Append ``embeddings`` (N, n) to the stored reference set."""
        embeddings = torch.as_tensor(embeddings).detach()
        self._check_2d(embeddings, "embeddings")
        self.ball.check_point(embeddings, "embeddings")
        if self.reference is None:
            self.reference = embeddings.clone()
        else:
            self.reference = torch.cat([self.reference, embeddings.to(self.reference)])

    def reset(self) -> None:
        self.reference = None

    def save(self, filename: str) -> None:
        torch.save({"c": self.c, "reference": self.reference}, filename)

    def load(self, filename: str) -> None:
        state = torch.load(filename, weights_only=True)
        if state["c"] != self.c:
            raise ValueError(
                f"{filename} holds an index for c={state['c']}, this knn has c={self.c}"
            )
        self.reference = state["reference"]

    # ------------------------------------------------------------ search
    @staticmethod
    def _check_2d(x: torch.Tensor, name: str) -> None:
        if x.ndim != 2:
            raise ValueError(f"{name} must be 2-D (N, embedding_size), got shape {tuple(x.shape)}")

    def _resolve_backend(self, device: torch.device) -> str:
        if self.backend != "auto":
            return self.backend
        if device.type == "cpu" and faiss_available():
            return "faiss"
        return "torch"

    def __call__(
        self,
        query: torch.Tensor,
        k: int,
        reference: torch.Tensor | None = None,
        ref_includes_query: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if reference is None:
            if self.reference is None:
                raise ValueError("no reference set: pass reference= or call train(embeddings)")
            reference = self.reference
        query, reference = torch.as_tensor(query), torch.as_tensor(reference)
        self._check_2d(query, "query")
        self._check_2d(reference, "reference")
        if query.shape[1] != reference.shape[1]:
            raise ValueError(
                f"query has {query.shape[1]} dimensions but reference has {reference.shape[1]}"
            )
        k_search = int(k) + int(ref_includes_query)
        if not 1 <= k_search <= len(reference):
            raise ValueError(
                f"k={k} is out of range for {len(reference)} reference points"
                + (" (one is the query itself)" if ref_includes_query else "")
            )
        if not ref_includes_query:  # otherwise the queries are reference[:Nq] (PML's contract)
            self.ball.check_point(query, "query")
        self.ball.check_point(reference, "reference")
        out_dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
        with torch.no_grad():
            distances, indices = self._search(query.detach(), reference.detach(), k_search)
        distances = distances.to(device=query.device, dtype=out_dtype)
        return return_results(distances, indices.to(query.device), ref_includes_query)

    def _search(
        self, query: torch.Tensor, reference: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        backend = self._resolve_backend(query.device)
        device = torch.device("cpu") if backend == "faiss" else query.device
        x = query.to(device=device, dtype=torch.float64)
        y = reference.to(device=device, dtype=torch.float64)
        x2, y2 = x.pow(2).sum(1), y.pow(2).sum(1)
        n_cand = min(k + self.rerank, len(y))
        if n_cand * GATHER_PER_GEMM_ROW >= len(y):
            return self._refine_near_zero(x, y, *self._float64_search(x, x2, y, y2, k))

        q_lift = self._exact.to_lorentz(x, x2)
        q_lift[:, 0].neg_()
        r_lift = self._exact.to_lorentz(y, y2)
        search32 = _faiss_search if backend == "faiss" else _torch_search
        scores, cand = search32(q_lift.float(), r_lift.float(), n_cand)
        distances, indices = self._rerank(x, x2, y, y2, cand.to(device), k)
        redo = self._uncertified(scores.to(device), distances, q_lift, r_lift, n_cand)
        if redo.any():
            rows = redo.nonzero().squeeze(1)
            distances[rows], indices[rows] = self._float64_search(x[rows], x2[rows], y, y2, k)
        return self._refine_near_zero(x, y, distances, indices)

    def _refine_near_zero(
        self, x: torch.Tensor, y: torch.Tensor, distances: torch.Tensor, indices: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Recompute distances below NEAR_ZERO from coordinate differences and re-sort.

        The Gram form loses ~1e-7 absolute accuracy at coincident points; the row-wise formula
        gives exact zeros there.
        """
        near = distances < NEAR_ZERO
        if not near.any():
            return distances, indices
        rows, cols = near.nonzero(as_tuple=True)
        distances[rows, cols] = self._exact.dist(x[rows], y[indices[rows, cols]])
        distances, order = distances.sort(dim=1, stable=True)
        return distances, indices.gather(1, order)

    def _float64_search(
        self, x: torch.Tensor, x2: torch.Tensor, y: torch.Tensor, y2: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Brute force in float64 as one augmented GEMM per chunk of queries.

        For a fixed query, d_c(x, y) increases with t = ‖x - y‖²/(1 - c‖y‖²)
        = ‖x‖²w + ‖y‖²w - 2⟨x, wy⟩ with w = 1/(1 - c‖y‖²): the inner product of (x, ‖x‖², 1)
        with (-2wy, w, ‖y‖²w). The k smallest t are selected, then
        cosh(√c d) = 1 + 2c t/(1 - c‖x‖²) gives their distances.
        """
        c = self._exact.c
        w = 1 / (1 - c * y2)
        refs = torch.cat([-2 * w[:, None] * y, w[:, None], (y2 * w)[:, None]], dim=1)
        queries = torch.cat([x, x2[:, None], torch.ones_like(x2)[:, None]], dim=1)
        neg_t, indices = _torch_search(queries, refs.neg_(), k)
        z = 2 * c * neg_t.neg_().clamp_min_(0) / (1 - c * x2[:, None])
        distances = torch.log1p(z + torch.sqrt(z * (z + 2))) / self._exact.sqrt_c
        return distances, indices

    def _rerank(
        self,
        x: torch.Tensor,
        x2: torch.Tensor,
        y: torch.Tensor,
        y2: torch.Tensor,
        cand: torch.Tensor,
        k: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Float64 distances to the candidates ``cand`` (Nq, m); keep the k nearest."""
        dist = torch.empty(cand.shape, dtype=x.dtype, device=x.device)
        step = max(1, CHUNK_BYTES // (cand.shape[1] * x.shape[1] * x.element_size()))
        for s in range(0, len(x), step):
            c = cand[s : s + step]
            inner = torch.bmm(y[c], x[s : s + step, :, None]).squeeze(2)
            dist[s : s + step] = self._exact.dist_from_inner(inner, x2[s : s + step, None], y2[c])
        best, order = torch.topk(dist, k, dim=1, largest=False)
        return best, cand.gather(1, order)

    def _uncertified(
        self,
        scores: torch.Tensor,
        distances: torch.Tensor,
        q_lift: torch.Tensor,
        r_lift: torch.Tensor,
        n_cand: int,
    ) -> torch.Tensor:
        """Queries whose k-th neighbour might be beaten by a point outside the candidates.

        A dot product of length L computed in a precision with unit roundoff u errs by at most
        γ·Σ|a_i b_i| ≤ γ‖a‖‖b‖ with γ = L·u/(1 - L·u); rounding the lifted vectors to float32
        adds 2u‖a‖‖b‖. A non-candidate's true score is therefore ≤ (the last candidate's
        score) + bound, which must be below the k-th exact score -cosh(√c d_k).
        """
        unit = torch.finfo(torch.float32).eps / 2
        if scores.is_cuda and torch.backends.cuda.matmul.allow_tf32:
            unit = 2.0**-11
        length = q_lift.shape[1]
        gamma = length * unit / (1 - length * unit) + 2 * unit
        bound = gamma * q_lift.norm(dim=1) * r_lift.norm(dim=1).max()
        kth_score = -torch.cosh(self._exact.sqrt_c * distances[:, -1])
        return scores[:, -1].to(distances) + bound >= kth_score


def _torch_search(
    queries: torch.Tensor, refs: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k largest inner products, chunked over queries: ``(Nq, L), (Nr, L) -> 2 × (Nq, k)``."""
    scores = torch.empty(len(queries), k, dtype=queries.dtype, device=queries.device)
    indices = torch.empty(len(queries), k, dtype=torch.long, device=queries.device)
    step = max(1, CHUNK_BYTES // (len(refs) * queries.element_size()))
    for s in range(0, len(queries), step):
        scores[s : s + step], indices[s : s + step] = torch.topk(
            queries[s : s + step] @ refs.T, k, dim=1
        )
    return scores, indices


def _faiss_search(
    queries: torch.Tensor, refs: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k largest inner products with an exact faiss ``IndexFlatIP`` on the CPU."""
    import faiss

    index = faiss.IndexFlatIP(refs.shape[1])
    index.add(refs.cpu().numpy())
    scores, indices = index.search(queries.cpu().numpy(), k)
    return torch.from_numpy(scores), torch.from_numpy(indices)
