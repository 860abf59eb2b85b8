"""The memory guard.

A request's estimated peak (mhacli.analyses.heads' memory model) against a limit, refused with a way out before anything
is computed. The CLI's --max-memory and the API's max_memory= are the same limit.
"""

from __future__ import annotations

import os
import re

from mhacli.analyses.heads import full_attention_bytes, memory_needed
from mhacli.analyses.loss import VOCAB_BLOCK
from mhacli.errors import ResourceError, UsageError
from mhacli.views.display import format_bytes

MAX_MEMORY = ("max_memory",)  # the parameter the guard's messages name

Size = int | str | None  # bytes, a size like '2G' / '512M', or None: 80% of available memory
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}


MAX_SIZE = 2**63  # bytes: a larger --max-memory means the same, no limit


def parse_size(text: str) -> int:
    """'2G', '512M', '1.5GiB', '1000000' -> bytes (an error names the parameter max_memory)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise UsageError(f"{{max_memory}} {text!r} is not a size like 2G, 512M or 1.5GiB", params=MAX_MEMORY)
    # a size past any machine's memory (even past float range: 5,000 digits) is no limit at all: clamped
    return int(min(float(m.group(1)) * _UNITS[m.group(2).lower()], MAX_SIZE))


def available_memory() -> int:
    """MemAvailable from /proc/meminfo; physical memory where that is missing."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3


def memory_limit(max_memory: Size) -> int:
    """The limit in bytes: max_memory as given (bytes, or a size like 2G), else 80% of available memory."""
    if isinstance(max_memory, bool) or not isinstance(max_memory, (int, str, type(None))):
        got = type(max_memory).__name__
        raise UsageError(f"{{max_memory}} must be a number of bytes or a size like 2G, got {got}", params=MAX_MEMORY)
    if isinstance(max_memory, int):
        if max_memory < 1:  # a size string is positive by its pattern; a number of bytes by this check
            raise UsageError(f"{{max_memory}} {max_memory} must be a positive number of bytes", params=MAX_MEMORY)
        return max_memory
    return parse_size(max_memory) if max_memory else int(0.8 * available_memory())


def check_memory(needed: int, max_memory: Size, narrow: str = "text") -> None:
    """Refuse (ResourceError) a request that would need more memory than allowed, instead of the OOM killer.

    `narrow` names the way out that fits the request (mhacli.errors.ResourceError); the door words it and the
    parameter.
    """
    limit = memory_limit(max_memory)
    if needed > limit:
        source = "{max_memory}" if max_memory not in (None, "") else "80% of available memory"
        raise ResourceError(
            f"this request needs about {format_bytes(needed)}, more than {format_bytes(limit)} ({source}); "
            f"{{narrow:{narrow}}}, or raise {{max_memory}}",
            params=(*MAX_MEMORY, f"narrow:{narrow}"),
            needed=needed,
            limit=limit,
            narrow=narrow,
        )


# --- what each request needs at its peak --------------------------------------------------------------------------


def heads_bytes(ckpt, n_seq: int, n_layers: int, n_heads: int, keep_maps: bool, kept_cells: int = 0) -> int:
    """inspect and stats: the selected heads of one text.

    inspect keeps whole maps, or `kept_cells` of each (what a terminal view shows); stats streams unless a page
    wants the maps.
    """
    kept = keep_maps or kept_cells > 0
    return memory_needed(
        ckpt.config,
        n_seq,
        kept_layers=n_layers * kept,
        kept_heads=n_heads * kept,
        keep_maps=keep_maps,
        weight_bytes=ckpt.weight_bytes(),
        kept_cells=kept_cells,
    )


def explain_bytes(ckpt, n_seq: int) -> int:
    """explain: the batched forward and the batched re-run of the layer for the check, two layers' working sets.

    The explained layer's tensors are held throughout, on top of the forward's.
    """
    working_set = memory_needed(ckpt.config, n_seq) + full_attention_bytes(ckpt.config.n_head, n_seq)
    return 2 * working_set + ckpt.weight_bytes(extra_layers=1)


def diff_bytes(ckpt_a, ckpt_b, n_seq: int, paired: bool, squares: int | None = None) -> int:
    """diff.

    Both forwards streamed at once (paired, no map kept), or all of A's maps kept while B runs a layer's map at a
    time (matched); small models' tensors stay cached once read, larger ones stream by layer. `squares`: a pack of
    texts (n_seq tokens in all), whose maps are kept text by text: the sum of their lengths squared.
    """
    weights = ckpt_a.weight_bytes() + ckpt_b.weight_bytes()
    a, b = ckpt_a.config, ckpt_b.config
    if paired:
        return memory_needed(a, n_seq, weight_bytes=weights, forwards=2)
    if squares is not None:  # each text's maps kept (PackSink into KeepMaps), never the pack's whole square
        kept = memory_needed(a, n_seq, kept_layers=a.n_layer, kept_heads=a.n_head, kept_cells=squares)
        return kept + memory_needed(
            b, n_seq, kept_layers=1, kept_heads=b.n_head, kept_cells=squares, weight_bytes=weights
        )
    kept = memory_needed(a, n_seq, kept_layers=a.n_layer, kept_heads=a.n_head, keep_maps=True)
    return kept + memory_needed(b, n_seq, kept_layers=1, kept_heads=b.n_head, keep_maps=True, weight_bytes=weights)


def scoring_bytes(ckpt, lengths: list[int]) -> int:
    """ablate/prune.

    The cached residual streams (every text's stream entering every layer, twice: the base and one evaluation), a
    layer's working set, the output head's logits block and the weights.
    """
    c = ckpt.config
    n_seq = max(lengths)
    streams = 2 * (c.n_layer + 1) * c.n_embd * 4 * sum(lengths)
    logits = 4 * n_seq * min(VOCAB_BLOCK, c.vocab_size) * 2
    return streams + logits + memory_needed(c, n_seq, weight_bytes=ckpt.weight_bytes())


def variant_bytes(ckpt, n_seq: int) -> int:
    """One more variant in an ablation batch: its forward's working set, its heads' outputs and logits block."""
    c = ckpt.config
    logits = 4 * n_seq * min(VOCAB_BLOCK, c.vocab_size) * 2
    return memory_needed(c, n_seq) + 4 * n_seq * c.n_head * c.d_head * 2 + logits


def census_bytes(ckpt, longest: int, local_workers: int) -> int:
    """census: one forward per local worker process (0 on a remote cluster)."""
    return local_workers * memory_needed(ckpt.config, longest, weight_bytes=ckpt.weight_bytes())
