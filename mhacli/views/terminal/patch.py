"""`mha patch` on a terminal: the text view with each score on a diverging scale.

The resid site's table is layers x positions with the tokens as column labels (mhacli.views.patch). Red restores
the clean behaviour, blue pushes the other way; bold from 0.5.
"""

from __future__ import annotations

import re

from rich.console import Console
from rich.text import Text

from mhacli.views.patch import header_lines, patch_text


def patch_view(console: Console, doc: dict) -> Text:
    """The `-f text` lines, each score cell coloured by its sign and size."""
    text = Text()
    skip = header_lines(doc)  # the model and metric line, the values, the column header(s): no scores there
    for i, line in enumerate(patch_text(doc).splitlines(keepends=True)):
        start = len(text)
        text.append(line)
        if i < skip:
            continue
        pattern = r"score ([+-]\d+\.\d\d)" if " score " in line else r"([+-]\d+\.\d\d)"
        for m in re.finditer(pattern, line):
            value = float(m.group(1))
            if abs(value) >= 0.05:
                strength = "bold " if abs(value) >= 0.5 else ""
                colour = "red" if value > 0 else "blue"
                text.stylize(strength + colour, start + m.start(1), start + m.end(1))
    return text
