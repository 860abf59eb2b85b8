"""`mha attribute`: direct logit attribution. The work is mhacli.ops.attribute's."""

from __future__ import annotations

from typing import Annotated

import typer

from mhacli.cli._app import app, examples
from mhacli.cli._common import FormatOpt, IdsOpt, MaxMemoryOpt, ModelOpt, TextArg, TruncateOpt, load, output, tokens_of
from mhacli.cli._save import DpiOpt, SaveList, save_option
from mhacli.errors import UsageError
from mhacli.ops.attribute import AttributeRequest, AttributeResult, attribute_picture, run_attribute
from mhacli.ops.inputs import check_model, read_input
from mhacli.views import save as saving
from mhacli.views.output import FORMATS

PosOpt = Annotated[
    int,
    typer.Option("--pos", metavar="I", help="Position whose next-token prediction is read (negative: from the end)."),
]


def prepared(model: str | None, text: str | None, ids: str | None, truncate: bool):
    """The model (its weights kept once read: they are read again after the forward), its tokenizer and the input.

    -m is checked first, then the text or ids read, then the model loaded (mhacli.cli._common.prepare's order)."""
    files = check_model(model)
    raw = read_input(text, ids)
    ckpt, tokenizer = load(model, cache=None, files=files)
    return ckpt, tokenizer, tokens_of(raw, ckpt, tokenizer, truncate=truncate)


@app.command(
    rich_help_panel="Causes",
    epilog=examples(
        'mha attribute "ROMEO: I love thee. JULIET: I love thee"',
        'mha attribute "The cat sat. The cat sat" --answer " on" --wrong " the"',
        'mha attribute "The cat sat. The cat" --pos -2 --fold-value-bias -f json',
        "mha attribute --ids 352,277,303,2012,352,277 --answer-id 303",
    ),
)
def attribute(
    text: TextArg = None,
    model: ModelOpt = None,
    ids: IdsOpt = None,
    answer: Annotated[
        str | None,
        typer.Option(
            "--answer",
            metavar="TOKEN",
            help="The answer, one token as text (mind the leading space: ' Paris'). "
            "Default: the model's top prediction.",
        ),
    ] = None,
    answer_id: Annotated[int | None, typer.Option("--answer-id", metavar="N", help="The answer as a token id.")] = None,
    wrong: Annotated[
        str | None,
        typer.Option("--wrong", metavar="TOKEN", help="A wrong token: attribute the logit difference answer − wrong."),
    ] = None,
    wrong_id: Annotated[int | None, typer.Option("--wrong-id", metavar="N", help="The wrong token as an id.")] = None,
    pos: PosOpt = -1,
    fold_value_bias: Annotated[
        bool,
        typer.Option(
            "--fold-value-bias",
            help="Move each head's value bias (times W_O) into its layer's attention "
            "bias, as TransformerLens' default weight processing does; sums are unchanged.",
        ),
    ] = False,
    top_tokens: Annotated[
        int,
        typer.Option("--top-tokens", metavar="K", help="Tokens each head's write raises and lowers most (0: none)."),
    ] = 3,
    top: Annotated[int, typer.Option("--top", "-k", help="Components in the terminal ranking.")] = 12,
    format: FormatOpt = None,
    truncate: TruncateOpt = False,
    max_memory: MaxMemoryOpt = None,
    save: Annotated[SaveList, save_option(AttributeResult.PICTURES)] = None,
    dpi: DpiOpt = saving.DEFAULT_DPI,
) -> None:
    """Direct logit attribution: each head's share of a prediction.

    The answer's logit (or answer − wrong) at one position, split into the embeddings, every head, the attention
    biases and every MLP, read through the final norm frozen at its real scale; the sum is checked against the model."""
    out = output(format, FORMATS)
    if top < 1:
        raise UsageError(f"--top {top} must be at least 1")
    saves = saving.parse(save, AttributeResult.PICTURES, dpi=dpi)
    ckpt, tokenizer, tokens = prepared(model, text, ids, truncate)
    request = AttributeRequest(answer, answer_id, wrong, wrong_id, pos, fold_value_bias, top_tokens, max_memory)
    doc = run_attribute(ckpt, tokenizer, tokens, request).to_dict()
    saving.write_all(saves, attribute_picture(saves, ckpt, tokens, doc), dpi=dpi)
    out.emit(AttributeResult(doc, top))
