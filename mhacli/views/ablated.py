"""What a run removed (`--ablate`): one description that every output of the run carries.

A run with heads removed must not look like the intact model's: `Ablated` names the heads and how they were removed
(zeroed, or set to mean outputs: how many texts and positions the means came from). `to_dict()` is what json
documents and every jsonl record add; `describe()` is the one line the text and rich views print first, the title of
the figures and the header of the HTML page. csv and tsv stay pure data (docs/formats.md). An intact run has no
`Ablated` (None) and its output is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Head = tuple[int, int]  # (layer, query head)


@dataclass(frozen=True)
class Ablated:
    """Heads removed before a run: which, and how (`method` zero or mean; for mean where the means came from)."""

    heads: tuple[Head, ...]
    method: str = "zero"
    n_texts: int | None = None  # mean: the texts the means were measured on (None: not recorded)
    n_positions: int | None = None  # mean: the positions (tokens) averaged over
    model: str = ""  # whose heads, where a run has two models: "MODEL_B" (diff)

    @classmethod
    def of(cls, removal: Any, *, model: str = "") -> Ablated | None:
        """The description of `removal`: heads [(layer, head), ...] or any object with `heads`.

        The object's `method` and where its means came from (`n_texts` and `n_positions`, or a `means_from`
        mapping of them: a mask file's, when it records them) come along; None when nothing is removed.
        """
        if removal is None:
            return None
        heads: Iterable = getattr(removal, "heads", removal)
        pairs = tuple((int(layer), int(head)) for layer, head in heads)
        if not pairs:
            return None
        source = getattr(removal, "means_from", None) or {}
        n_texts = getattr(removal, "n_texts", source.get("n_texts"))
        n_positions = getattr(removal, "n_positions", source.get("n_positions"))
        return cls(pairs, str(getattr(removal, "method", "zero")), n_texts, n_positions, model)

    def to_dict(self, prefix: str = "") -> dict:
        """`{"ablated": [{"layer", "head"}, ...], "method": ...}`, plus `means_from` for mean.

        `prefix` names the method's key where the document has its own `method` (`mha ablate`: `ablated_method`).
        """
        doc: dict = {"ablated": [{"layer": layer, "head": head} for layer, head in self.heads]}
        doc[prefix + "method"] = self.method
        if self.method == "mean":
            doc[prefix + "means_from"] = {"n_texts": self.n_texts, "n_positions": self.n_positions}
        return doc

    def how(self) -> str:
        """How the heads were removed, in words: `zeroed`, `set to their mean outputs over 2 texts (57 positions)`."""
        if self.method == "zero":
            return "zeroed"
        if self.method != "mean":
            return self.method
        if self.n_texts is None and self.n_positions is None:
            return "set to their recorded mean outputs"
        texts = "" if self.n_texts is None else f" over {self.n_texts} text{'s' if self.n_texts != 1 else ''}"
        positions = "" if self.n_positions is None else f" ({self.n_positions} positions)"
        return f"set to their mean outputs{texts}{positions}"

    def describe(self) -> str:
        """One line: `ablated: L0H3, L1H2 (zeroed)`; `MODEL_B ablated: ...` where the run has two models."""
        names = ", ".join(f"L{layer}H{head}" for layer, head in self.heads)
        return f"{self.model + ' ' if self.model else ''}ablated: {names} ({self.how()})"


def header(result: Any) -> str:
    """The line a text or rich view of `result` starts with: its `ablated` description, '' for an intact run."""
    ablated = getattr(result, "ablated", None)
    return ablated.describe() if ablated is not None else ""
