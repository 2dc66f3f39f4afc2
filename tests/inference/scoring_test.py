"""glmvoice_jax.inference.scoring: input validation, padding/batching invariance, output format."""

import json
import os
import pathlib

import numpy as np
import pytest

from glmvoice_jax.convert.glm import chatglm, glm_weights
from glmvoice_jax.inference import scoring

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("score") / "ck")
    glm_weights.import_glm(os.path.join(FIXTURES, "glm_chatglm"), path, chatglm.FORMAT)
    return path


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"ids": [1, 2]}', '{"ids": [1, 2'], r"in.jsonl:2: not valid JSON"),
        (['{"ids": [1, 640]}'], r"in.jsonl:1: id 640 is outside the vocabulary \[0, 640\)"),
        (['{"ids": [-1]}'], r"in.jsonl:1: id -1 is outside"),
        (["", '{"ids": [1.5]}'], r'in.jsonl:2: "ids" must be a list of integers'),
        (['{"ids": [true]}'], r'"ids" must be a list of integers'),
        (['{"ids": []}'], r"in.jsonl:1: the sequence is empty"),
        (['{"ids": [1], "text": "a"}'], r"exactly one of"),
        (["[1, 2]"], r"in.jsonl:1: expected a JSON object"),
        (['{"text": "hello"}'], r"in.jsonl:1: \"text\" input needs a tokenizer"),
    ],
)
def test_bad_input_names_the_line(tmp_path, lines, message):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        scoring.read_inputs(str(path), 640, lambda: None)


def test_batching_and_padding_do_not_change_results(ckpt):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 640, n).astype(np.int32) for n in (1, 2, 9, 16, 17, 40, 100, 33)]
    one_batch = scoring.Scorer(ckpt, max_tokens_per_batch=1 << 16).score(seqs)
    many = scoring.Scorer(ckpt, max_tokens_per_batch=64).score(seqs)
    alone = [scoring.Scorer(ckpt).score([s])[0] for s in seqs[5:6]]
    for s, a, b in zip(seqs, one_batch, many):
        assert a.dtype == np.float32 and a.shape == (len(s) - 1,)
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(alone[0], one_batch[5], atol=1e-5)
    assert np.all(one_batch[6] < 0)


def test_score_file_format(ckpt, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"ids": [5, 6, 7]}\n\n{"id": "x", "ids": [9]}\n')
    stats = scoring.score_file(ckpt, str(inp), str(tmp_path / "out.jsonl"))
    rows = [json.loads(x) for x in pathlib.Path(tmp_path / "out.jsonl").read_text().splitlines()]
    assert stats["sequences"] == 2 and stats["tokens"] == 4
    assert rows[0]["id"] == 1 and len(rows[0]["token_logprobs"]) == 2
    assert rows[0]["logprob"] == pytest.approx(sum(rows[0]["token_logprobs"]), abs=1e-9)
    assert rows[1] == {"id": "x", "logprob": 0.0, "token_logprobs": []}
