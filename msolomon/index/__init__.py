"""Vector search and indexing your own collection.

`VectorIndex` (`msolomon.index.vector`): faiss inner-product search with ids and payloads, saved as a folder.
`python -m msolomon.index build | add | search` (`msolomon.index.cli`): encode a collection of any size into one,
in this process or on Ray Data actors, in resumable shards (`msolomon.index.build`).
"""
from msolomon.index.vector import (
    FLAT_MAX,
    HNSW_EF_SEARCH,
    HNSW_MAX,
    IVF_NPROBE,
    Hit,
    IndexChoice,
    VectorIndex,
    choose_index,
    ivf_lists,
    ivf_pq_factory,
)

__all__ = ["FLAT_MAX", "HNSW_EF_SEARCH", "HNSW_MAX", "IVF_NPROBE", "Hit", "IndexChoice", "VectorIndex",
           "choose_index", "ivf_lists", "ivf_pq_factory"]
