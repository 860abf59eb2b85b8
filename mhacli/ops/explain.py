"""One head's computation for one query token (`explain`, Model.explain), guarded for memory first."""

from __future__ import annotations

import numpy as np

from mhacli.analyses.explain import Explanation
from mhacli.analyses.explain import explain as explain_head
from mhacli.ops.memory import Size, check_memory, explain_bytes


def explain(
    ckpt,
    ids: np.ndarray,
    layer: int,
    head: int,
    query: int | None = None,
    *,
    max_memory: Size = None,
) -> Explanation:
    """Head `head` of layer `layer` for query token `query` (default the last), step by step.

    Every intermediate is checked against the forward; refused (ResourceError) when the unfused layer would need
    more than max_memory.
    """
    check_memory(explain_bytes(ckpt, len(ids)), max_memory, "text")
    return explain_head(ckpt, ids, layer, head, query)
