"""Views that quote a token write it escaped once, as messages do (tests/test_tidy_messages.py).

A token the tokenizer displays as `\\xf0` (a partial UTF-8 byte) is shown as `'\\xf0'`, never `'\\\\xf0'`."""

from __future__ import annotations

import json
import re

from helpers import parse_json, run_mha

from mhacli.io.tokenizer import quoted

EMOJI = "😀 the cat"  # four byte tokens with the bundled tokenizer


def test_quoted_escapes_a_displayed_byte_once():
    assert quoted("\\xf0") == "'\\xf0'"  # one backslash in, one out
    assert quoted(" the") == "' the'"
    assert quoted("a\nb") == "'a\\nb'"  # a control character escaped once
    assert quoted("it's") == '"it\'s"'  # quoted as repr() quotes it


def test_browse_top_keys_line_quotes_a_byte_token_once():
    from mhacli.views.terminal.browse import top_keys_line

    tokens = ["\\xf0", "\\x9f", " the"]
    line = top_keys_line(tokens, 2, [(0, 0.8), (1, 0.2)], False, 80).plain
    assert "'\\xf0'" in line and "\\\\" not in line, line


def test_the_lens_page_titles_quote_byte_tokens_once(tmp_path):
    tokens = parse_json(run_mha("stats", EMOJI, "-f", "json").stdout)["tokens"]
    assert tokens[0] == "\\xf0"  # the case this test exists for
    page = tmp_path / "lens.html"
    out = run_mha("lens", EMOJI, "--save", str(page))
    assert out.returncode == 0, out.stderr
    html = page.read_text()
    titles = [json.loads(f'"{t}"') for t in re.findall(r'"title": ?"((?:[^"\\]|\\.)*)"', html)]
    byte_titles = [t for t in titles if " at '\\x" in t]
    assert byte_titles, titles[:5]
    assert not any("\\\\" in t for t in titles), [t for t in titles if "\\\\" in t][:3]
