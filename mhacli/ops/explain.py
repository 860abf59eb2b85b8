"""One head's computation for one query token (`explain`, Model.explain), guarded for memory first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mhacli.analyses.explain import Explanation
from mhacli.analyses.explain import explain as explain_head
from mhacli.ops.memory import Size, check_memory, explain_bytes

if TYPE_CHECKING:
    from rich.console import Console, RenderableType


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


# --- the result: what explain shows, in every format ------------------------------------------------------------------


@dataclass
class ExplainResult:
    """`mha explain`: one head's computation for one query token; `full` shows every component."""

    model: dict
    tokens: list[str]
    token_ids: list[int]
    explanation: Explanation
    full: bool = False

    def to_dict(self) -> dict:
        return {"model": self.model, "tokens": self.tokens, "token_ids": self.token_ids} | self.explanation.to_dict()

    def plain(self) -> str:
        from mhacli.views.terminal import explain_text

        return explain_text(self.explanation, self.tokens, full=self.full)

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.terminal import explain_view

        return explain_view(self.explanation, self.tokens, console.width, full=self.full)
