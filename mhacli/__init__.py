"""mha: look inside multi-head attention, on a pure NumPy implementation checked against Hugging Face.

The Python API (mhacli.api), imported on first use so that `import mhacli` stays light:

    import mhacli
    model = mhacli.load("sample")
    run = model.run("The cat sat on the mat. The cat sat on the mat.")
    run.tokens, run.ids, run.attention(1), run.stats()
"""

from __future__ import annotations

__version__ = "0.1.0"

TYPE_CHECKING = False  # not typing's: importing typing alone would double the cost of `import mhacli`
if TYPE_CHECKING:  # for type checkers and editors; at run time the names come from __getattr__
    from typing import Any

    from mhacli.api import Ablation, Census, Model, Run, census, diff, load, patch
    from mhacli.errors import MhaError

__all__ = ["Ablation", "Census", "MhaError", "Model", "Run", "__version__", "census", "diff", "load", "patch"]
_API = frozenset({"Ablation", "Census", "Model", "Run", "census", "diff", "load", "patch"})


def __getattr__(name: str) -> Any:
    """The API's names, importing mhacli.api (NumPy and the engine) when one is first used."""
    if name in _API:
        from mhacli import api

        value = getattr(api, name)
    elif name == "MhaError":
        from mhacli.errors import MhaError as value
    else:
        raise AttributeError(f"module 'mhacli' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
