"""What the exact kNN functions share: PML's ``knn_func`` call contract and InferenceModel's
index API (``train``, ``add``, ``reset``), with the input checks of both."""

from __future__ import annotations

import importlib.util

import torch
from pytorch_metric_learning.utils.inference import return_results

BACKENDS = ("auto", "torch", "faiss")


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


def is_leading_rows(query: torch.Tensor, reference: torch.Tensor) -> bool:
    """Whether ``query`` (Nq, n) is a view of ``reference[:Nq]`` (same memory, same layout)."""
    return (
        query.device == reference.device
        and query.dtype == reference.dtype
        and query.data_ptr() == reference.data_ptr()
        and query.stride() == reference.stride()
        and len(query) <= len(reference)
    )


def check_query_leads_reference(query: torch.Tensor, reference: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``query`` (Nq, n) equals ``reference[:Nq]``."""
    if len(query) > len(reference):
        raise ValueError(
            f"ref_includes_query=True needs the {len(query)} queries to be the first rows of "
            f"the reference set, which has only {len(reference)} rows"
        )
    lead = reference[: len(query)].to(device=query.device, dtype=query.dtype)
    differs = (query != lead).any(1)
    if differs.any():
        rows = differs.nonzero().squeeze(1)[:10].tolist()
        raise ValueError(
            "ref_includes_query=True means the queries are reference[:Nq] (PML's contract), "
            f"but query rows {rows} differ from those reference rows; pass "
            "ref_includes_query=False for a separate query set"
        )


class BaseKNN:
    """Base of :class:`~pml_hyper.knn.HyperbolicKNN` and :class:`~pml_hyper.knn.CosineKNN`.

    ``__call__(query, k, reference=None, ref_includes_query=False) -> (values, indices)``, both
    ``(Nq, k)``, nearest first; without ``reference`` the set stored by :meth:`train`/:meth:`add`
    is searched. Subclasses implement ``_search(query, reference, k, leading)`` and may check
    points in ``_check_point(x, name)``.

    Args:
        backend: ``"faiss"`` (faiss-cpu), ``"torch"`` or ``"auto"`` (torch for CUDA inputs,
            faiss when installed, torch otherwise).
        rerank: extra candidates per query for the float64 re-ranking.
    """

    def __init__(self, backend: str = "auto", rerank: int = 16):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "faiss" and not faiss_available():
            raise ImportError(
                f"{type(self).__name__}(backend='faiss') needs faiss: pip install "
                "'pml-hyper[faiss]' (faiss-cpu), or use backend='torch'"
            )
        if rerank < 0:
            raise ValueError(f"rerank must be >= 0, got {rerank}")
        self.backend = backend
        self.rerank = rerank
        self.reference: torch.Tensor | None = None

    # ------------------------------------------------------------ InferenceModel index API
    def train(self, embeddings: torch.Tensor) -> None:
        """Store ``embeddings`` (N, D) as the reference set (replaces any previous one)."""
        self.reference = None
        self.add(embeddings)

    def add(self, embeddings: torch.Tensor) -> None:
        """Append ``embeddings`` (N, D) to the stored reference set."""
        embeddings = torch.as_tensor(embeddings).detach()
        self._check_2d(embeddings, "embeddings")
        self._check_point(embeddings, "embeddings")
        if self.reference is None:
            self.reference = embeddings.clone()
        else:
            self.reference = torch.cat([self.reference, embeddings.to(self.reference)])

    def reset(self) -> None:
        self.reference = None

    # ------------------------------------------------------------ checks
    @staticmethod
    def _check_2d(x: torch.Tensor, name: str) -> None:
        if x.ndim != 2:
            raise ValueError(f"{name} must be 2-D (N, embedding_size), got shape {tuple(x.shape)}")
        if x.is_complex() or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")

    def _check_point(self, x: torch.Tensor, name: str) -> None:
        """Checks of the subclass's geometry (none here)."""

    def _resolve_backend(self, device: torch.device) -> str:
        if self.backend != "auto":
            return self.backend
        return "faiss" if device.type == "cpu" and faiss_available() else "torch"

    # ------------------------------------------------------------ search
    def __call__(
        self,
        query: torch.Tensor,
        k: int,
        reference: torch.Tensor | None = None,
        ref_includes_query: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        stored = reference is None
        if stored:
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
        leading = is_leading_rows(query, reference)
        if ref_includes_query and not leading:
            check_query_leads_reference(query, reference)
        if not (ref_includes_query or leading):
            self._check_point(query, "query")
        if not stored:  # the stored set was checked by add()
            self._check_point(reference, "reference")
        out_dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
        with torch.no_grad():
            values, indices = self._search(query.detach(), reference.detach(), k_search, leading)
        values = values.to(device=query.device, dtype=out_dtype)
        return return_results(values, indices.to(query.device), ref_includes_query)

    def _search(
        self, query: torch.Tensor, reference: torch.Tensor, k: int, leading: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
