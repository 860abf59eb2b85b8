"""`-m ID@REVISION`: a branch, tag or commit of a hub id, through the local Hugging Face cache.

The cache is a tree this file builds as huggingface_hub lays it out (blobs, one snapshot per commit, refs per branch),
holding two revisions of a tiny random GPT-NeoX as Pythia publishes its training checkpoints (step1000, step3000;
main is the last). References: HF eager on the directory each revision was built from, and the same commands run
on those directories.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import NEOX_QWEN_MODELS, bos_tokenizer, build, compare_with_hf, hub_cache, parse_json

REPO_ID = "tester/pythia-tiny"
TEXT = "The quick brown fox jumps over the lazy dog. It is the east, and Juliet is the sun."
IDS = np.random.default_rng(5).integers(1, 400, size=30)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    tok = bos_tokenizer(tmp_path_factory.mktemp("tok"))
    fields = NEOX_QWEN_MODELS["neox_parallel"]["fields"]
    return {step: build(tmp_path_factory.mktemp(step), "gpt_neox", fields, tok, seed=seed)
            for step, seed in (("step1000", 1), ("step3000", 3))}  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory, checkpoints) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("hub")
    commits = hub_cache(root, REPO_ID, checkpoints | {"main": checkpoints["step3000"]})
    return root, commits


@pytest.fixture
def offline(cache, monkeypatch) -> dict[str, str]:
    root, commits = cache
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HOME", raising=False)
    return commits


@pytest.mark.parametrize("revision,built", [("step1000", "step1000"), ("step3000", "step3000"), ("main", "step3000"),
                                            (None, "step3000"), ("commit", "step1000")])  # fmt: skip
def test_each_revision_is_its_own_checkpoint(checkpoints, offline, revision, built):
    """Every layer and head against HF eager on the directory that revision was built from."""
    from mhacli.io.weights import load_model

    spec = REPO_ID if revision is None else f"{REPO_ID}@{offline['step1000'] if revision == 'commit' else revision}"
    ckpt = load_model(spec)
    assert ckpt.source == spec and ckpt.files.directory.parent.name == "snapshots"
    compare_with_hf(spec, IDS, reference_dir=checkpoints[built])
    other = "step1000" if built == "step3000" else "step3000"
    with pytest.raises(AssertionError):  # the other checkpoint is really different
        compare_with_hf(spec, IDS, reference_dir=checkpoints[other])


COMMANDS = [
    ("info",), ("inspect", TEXT), ("stats", TEXT), ("explain", TEXT, "-l", "1", "-H", "2"), ("verify", TEXT),
    ("ablate", TEXT), ("prune", TEXT), ("circuits", "--top", "1"),
    ("census", "--probe-count", "2", "-j", "1"),
]  # fmt: skip


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: a[0])
def test_every_command_takes_a_revision(checkpoints, offline, mha, args):
    """The same JSON as on the directory the revision was built from (but the model's name)."""
    r = mha(*args, "-m", f"{REPO_ID}@step1000", "-f", "json")
    assert r.returncode == 0, r.stderr.decode()
    local = mha(*args, "-m", str(checkpoints["step1000"]), "-f", "json")
    got, want = parse_json(r.stdout), parse_json(local.stdout)
    if args[0] == "info":
        assert got["source"] == f"{REPO_ID}@step1000" and got["config"] == want["config"]
        assert got["parameters"] == want["parameters"]
        return
    strip = {"model", "source", "directory", "elapsed_s", "seconds"}
    clean = lambda d: {k: v for k, v in d.items() if k not in strip} if isinstance(d, dict) else d  # noqa: E731
    assert clean(got) == clean(want)


def test_diff_compares_two_training_checkpoints(checkpoints, offline, mha):
    r = mha("diff", f"{REPO_ID}@step1000", f"{REPO_ID}@step3000", TEXT, "-f", "json")
    assert r.returncode == 0, r.stderr.decode()
    by_revision = parse_json(r.stdout)
    local = parse_json(
        mha("diff", str(checkpoints["step1000"]), str(checkpoints["step3000"]), TEXT, "-f", "json").stdout
    )
    assert by_revision["heads"] == local["heads"]
    assert max(h["divergence"] for h in by_revision["heads"]) > 1e-3
    same = parse_json(mha("diff", f"{REPO_ID}@step1000", f"{REPO_ID}@{offline['step1000']}", TEXT, "-f", "json").stdout)
    assert max(h["divergence"] for h in same["heads"]) == 0.0


@pytest.mark.parametrize(
    "spec,message",
    [
        (f"{REPO_ID}@step9999", f"error: {REPO_ID}@step9999: not in the local Hugging Face cache and HF_HUB_OFFLINE"),
        (f"{REPO_ID}@", "nor a hub id with a revision (ID@REVISION"),
        (f"{REPO_ID}@../main", "nor a hub id with a revision"),
        (f"{REPO_ID}@a@b", "nor a hub id with a revision"),
    ],
)
def test_a_bad_revision_is_one_error_line(offline, mha, spec, message):
    r = mha("stats", TEXT, "-m", spec)
    err = r.stderr.decode()
    assert r.returncode == 2 and r.stdout == b"" and len(err.splitlines()) == 1 and message in err, err


def test_a_bad_revision_on_either_side_of_diff(offline, mha):
    r = mha("diff", f"{REPO_ID}@step1000", f"{REPO_ID}@step9999", TEXT)
    err = r.stderr.decode()
    assert r.returncode == 2 and f"{REPO_ID}@step9999" in err and len(err.splitlines()) == 1, err


def test_a_revision_the_hub_does_not_have_is_named():
    import httpx
    from huggingface_hub.errors import RevisionNotFoundError

    from mhacli.io.weights import hub_error

    response = httpx.Response(404, request=httpx.Request("GET", f"https://huggingface.co/{REPO_ID}/resolve/step7"))
    text = str(hub_error(f"{REPO_ID}@step7", RevisionNotFoundError("404 Revision Not Found", response=response)))
    assert text.startswith(f"{REPO_ID}@step7: not a local path") and "no such revision" in text
