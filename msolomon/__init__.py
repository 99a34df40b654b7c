"""M-Solomon: multimodal embedders that learn when to augment the query.

Heavy parts (torch, transformers, faiss) are imported lazily, so `import msolomon` stays cheap.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from msolomon.inputs import Candidate, Query, QueryResult

__all__ = ["MSolomon", "VectorIndex", "Query", "Candidate", "QueryResult"]
__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from msolomon.index import VectorIndex
    from msolomon.model import MSolomon


def __getattr__(name: str) -> Any:
    if name == "MSolomon":
        from msolomon.model import MSolomon

        return MSolomon
    if name == "VectorIndex":
        from msolomon.index import VectorIndex

        return VectorIndex
    raise AttributeError(f"module 'msolomon' has no attribute {name!r}")
