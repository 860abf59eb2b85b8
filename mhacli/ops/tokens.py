"""Single tokens named by the user: `--answer " Paris"` / `--answer-id 6342`, shared by attribute, lens and patch.

A token given as text must encode to exactly one token (without the BOS the tokenizer adds to every text); a
token given as an id must be in the model's vocabulary. Errors name the parameter (`{answer}`), spelled by each
door.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mhacli.errors import UsageError
from mhacli.io.files import utf8_text
from mhacli.io.tokenizer import Tokenizer, quoted


@dataclass(frozen=True)
class Token:
    """One token: its id and how it reads."""

    id: int
    token: str

    def to_dict(self) -> dict[str, object]:
        return {"token": self.token, "id": self.id}


def quoted_tokens(tokens: Sequence[str]) -> str:
    """Tokens as a message shows them: each as repr() quotes and escapes it, but escaped once: `'a', '\\xf0\\x9d'`.

    A token as the tokenizer displays it already spells a partial UTF-8 sequence as `\\xf0` (mhacli.io.tokenizer);
    repr() would double that backslash. Control characters, which the display keeps, come out escaped once.
    """
    return ", ".join(quoted(t) for t in tokens)


def text_token_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """The ids of `text` alone: what the tokenizer adds to every text (a BOS) is left off."""
    ids = tokenizer.encode(text)
    added = tokenizer.encode("")
    if added and ids[: len(added)] == added:
        ids = ids[len(added) :]
    return ids


def one_token(
    tokenizer: Tokenizer, vocab_size: int, *, text: str | None, token_id: int | None, param: str
) -> Token | None:
    """The token named by `text` or `token_id` (at most one of them; None when neither)."""
    if text is not None and token_id is not None:
        raise UsageError(f"give {{{param}}} or {{{param}_id}}, not both", params=(param, f"{param}_id"))
    if token_id is not None:
        if not 0 <= token_id < vocab_size:
            raise UsageError(
                f"{{{param}_id}} {token_id} is outside the vocabulary (0..{vocab_size - 1})", params=(f"{param}_id",)
            )
        return Token(int(token_id), tokenizer.display([int(token_id)])[0])
    if text is None:
        return None
    if text == "":
        raise UsageError(
            f"{{{param}}} is empty: give one token, e.g. ' Paris' (mind the leading space)", params=(param,)
        )
    fixed = utf8_text(text)  # an argument under a non-UTF-8 locale: its bytes read as UTF-8
    if fixed is None:
        raise UsageError(f"{{{param}}} is not valid UTF-8", params=(param,))
    text = fixed
    ids = text_token_ids(tokenizer, text)
    if len(ids) != 1:
        raise UsageError(
            f"{{{param}}} {text!r} is {len(ids)} tokens ({quoted_tokens(tokenizer.display(ids))}), not one: give its "
            "first token, or the id of the token you mean",
            params=(param,),
        )
    if not 0 <= ids[0] < vocab_size:
        raise UsageError(f"{{{param}}} {text!r} is token {ids[0]}, outside the model's vocabulary", params=(param,))
    return Token(ids[0], tokenizer.display(ids)[0])
