"""Our forward against HF transformers' eager attention on the same ids (`verify`).

mhacli.analyses.verify imports torch only inside the function that runs HF, so importing this costs nothing until a
check runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mhacli.analyses.verify import HIDDEN_ATOL, VerifyReport
from mhacli.analyses.verify import verify as _verify

if TYPE_CHECKING:
    from rich.console import Console, RenderableType


def verify(ckpt, ids: np.ndarray, *, atol: float = 1e-5, hidden_atol: float = HIDDEN_ATOL) -> VerifyReport:
    """Every layer's attention and hidden state (and the output head's loss and logits) against HF's."""
    return _verify(ckpt, ids, atol=atol, hidden_atol=hidden_atol)


# --- the result: what verify shows, in every format -------------------------------------------------------------------


@dataclass
class VerifyResult:
    """`mha verify`: every layer's errors against HF transformers, and the verdict."""

    report: VerifyReport
    n_tokens: int

    def to_dict(self) -> dict:
        return self.report.to_dict()

    def plain(self) -> str:
        from mhacli.views.plain import verify_lines

        return "\n".join(verify_lines(self.report, self.n_tokens)) + "\n"

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.plain import verify_lines
        from mhacli.views.terminal import verify_view

        return verify_view(verify_lines(self.report, self.n_tokens), self.report.passed)
