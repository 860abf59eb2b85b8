"""Messages that show tokens: each token once, in quotes, escaped once (a partial UTF-8 byte reads `\\xf0`)."""

from __future__ import annotations

import pytest
from helpers import parse_json, run_mha

ODD = "a 𝔘\nb"  # 𝔘 is four bytes the small tokenizer has no merge for: four byte tokens; \n a control character


def one_error_line(out) -> str:
    assert out.returncode == 2, out.stderr
    lines = out.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


def display_tokens(text: str) -> list[str]:
    """The tokens of `text` as `mha stats -f json` lists them (the display the message must quote)."""
    out = run_mha("stats", text, "-f", "json")
    assert out.returncode == 0, out.stderr
    return parse_json(out.stdout)["tokens"]


@pytest.mark.parametrize(
    "args, text",
    [
        (["patch", ODD, "a b", "--answer", " a", "--wrong", " b"], ODD),
        (["patch", "a b", "a c", "--answer", " 𝔘", "--wrong", " b"], " 𝔘"),
    ],
    ids=["patch-lengths", "answer-not-one-token"],
)
def test_tokens_in_a_message_are_escaped_once(args, text):
    line = one_error_line(run_mha(*args))
    assert "\\\\" not in line, line  # repr() of an already escaped token doubles its backslash
    tokens = display_tokens(text)
    assert any(t.startswith("\\x") for t in tokens), tokens  # the case this test exists for: byte tokens
    shown = ", ".join("'" + t.replace("\n", "\\n") + "'" for t in tokens)  # a control character escaped once
    assert shown in line, line
