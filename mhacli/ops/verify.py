"""Our forward against HF transformers' eager attention on the same ids (`verify`).

mhacli.analyses.verify imports torch only inside the function that runs HF, so importing this costs nothing until a
check runs.
"""

from __future__ import annotations

import numpy as np

from mhacli.analyses.verify import HIDDEN_ATOL, VerifyReport
from mhacli.analyses.verify import verify as _verify


def verify(ckpt, ids: np.ndarray, *, atol: float = 1e-5, hidden_atol: float = HIDDEN_ATOL) -> VerifyReport:
    """Every layer's attention and hidden state (and the output head's loss and logits) against HF's."""
    return _verify(ckpt, ids, atol=atol, hidden_atol=hidden_atol)
