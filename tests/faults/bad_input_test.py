"""Faults suite (issue 17): bad and hostile inputs end in one clear error, never silently.

Each case builds one small bad input, runs the library entry point a CLI would call, and checks
that the error names the file / source / value and says what to do, in at most two lines, and
that nothing from the file ran. Cases of whole processes live beside their code and are part of
this guarantee too: kill -9 mid-run and SIGTERM save-and-exit-0 (tests/trainers/lm_test.py),
resume on another process count (tests/distributed/elastic_data_test.py).
"""

import json
import pickle
import zipfile

import numpy as np
import pytest

from glmvoice_jax.convert.decoder.decoder_pt import parse_config_yaml
from glmvoice_jax.convert.io.torch_zip import load_state_dict
from glmvoice_jax.data import input as input_pipeline
from glmvoice_jax.data import records

VOCAB = 100


def _pt(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
    return path


def _shard(path, docs):
    w = records.ShardWriter(str(path))
    for tokens, mask in docs:
        w.write(
            records.Example(
                tokens=np.asarray(tokens), loss_mask=np.asarray(mask, bool), source="t", kind="text"
            )
        )
    w.close()
    return str(path)


def _batches(specs, n=3, **kw):
    args = dict(
        rows=range(2),
        global_batch_size=2,
        seq_len=8,
        vocab_size=VOCAB,
        seed=0,
        prefetch_buffer_size=0,
    )
    it = input_pipeline.make_row_iterator(specs, **{**args, **kw})
    for _ in range(n):
        next(it)
    return it


def _src(name, *paths, weight=1.0):
    return input_pipeline.SourceSpec(name, tuple(str(p) for p in paths), weight)


def _good(tmp_path, name="good"):
    return _shard(tmp_path / f"{name}.array_record", [(np.arange(6), np.ones(6))] * 4)


def hostile_yaml(tmp):
    marker = tmp / "pwned"
    text = f'flow: !!python/object/apply:os.system ["touch {marker}"]\nhift: {{}}\n'
    try:
        parse_config_yaml(text, source=str(tmp / "config.yaml"))
    finally:
        assert not marker.exists()


def pickle_os_system(tmp):
    load_state_dict(_pt(tmp / "evil.pt", f"cos\nsystem\n(S'touch {tmp}/pwned'\ntR.".encode()))


def pickle_eval(tmp):
    load_state_dict(_pt(tmp / "evil.pt", b"cbuiltins\neval\n(S'1+1'\ntR."))


def pickle_copyreg(tmp):
    load_state_dict(_pt(tmp / "evil.pt", b"ccopyreg\n_reconstructor\n(cos\nsystem\nN(tR."))


def pickle_poison(tmp):
    payload = (
        b"\x80\x02ctorch\nFloatStorage\n}(X\x04\x00\x00\x00nameX\x0b\x00\x00\x00HalfStorageub."
    )
    load_state_dict(_pt(tmp / "poison.pt", payload))


def legacy_pt(tmp):
    (tmp / "old.pt").write_bytes(pickle.dumps({"a": 1}))
    load_state_dict(tmp / "old.pt")


def out_of_vocab(tmp):
    _batches([_src("tts", _shard(tmp / "s.array_record", [([1, 2, VOCAB + 3], [1, 1, 1])] * 3))])


def corrupt_shard(tmp):
    (tmp / "bad.array_record").write_bytes(b"not an array record" * 10)
    _batches([_src("web", tmp / "*.array_record")])


def glob_matches_nothing(tmp):
    _batches([_src("speech", tmp / "nowhere" / "*.array_record")])


def zero_weights(tmp):
    _batches([_src("a", _good(tmp), weight=0.0)])


def negative_weight(tmp):
    _batches([_src("a", _good(tmp), weight=-1.0)])


def no_targets(tmp):
    _batches(
        [
            _src("good", _good(tmp)),
            _src("asr", _shard(tmp / "asr.array_record", [([1, 2, 3], [0, 0, 0])] * 5)),
        ]
    )


def shard_set_changed(tmp):
    (tmp / "a").mkdir()
    spec = [_src("a", tmp / "a" / "*.array_record")]
    _shard(tmp / "a" / "0.array_record", [(np.arange(6), np.ones(6))] * 4)
    state = json.loads(json.dumps(_batches(spec).get_state()))[input_pipeline.ROW_STATE_KEY]
    _shard(tmp / "a" / "1.array_record", [(np.arange(6), np.ones(6))] * 4)
    _batches(spec, start_state=state)


CASES = {
    # name: (case, exception, regex the one- or two-line message must match)
    "hostile YAML tag": (hostile_yaml, ValueError, r"config\.yaml: not valid YAML"),
    "pickle os.system": (pickle_os_system, pickle.UnpicklingError, r"refusing to load os\.system"),
    "pickle eval": (pickle_eval, pickle.UnpicklingError, r"refusing to load builtins\.eval from"),
    "pickle copyreg": (pickle_copyreg, pickle.UnpicklingError, r"refusing to load copyreg\._rec"),
    "pickle poisons stand-in": (pickle_poison, pickle.UnpicklingError, r"refusing a pickle that"),
    "legacy .pt": (legacy_pt, ValueError, r"old\.pt is not a torch zip archive .*legacy"),
    "out-of-vocab id": (out_of_vocab, ValueError, r"source 'tts' shard .*s\.array_record record "),
    "corrupt shard": (corrupt_shard, ValueError, r"source 'web': shard .*bad\.array_record is not"),
    "glob matches nothing": (glob_matches_nothing, ValueError, r"source 'speech': shard pattern"),
    "zero weights": (zero_weights, ValueError, r"weights of the data sources sum to 0"),
    "negative weight": (negative_weight, ValueError, r"source 'a' has weight -1\.0"),
    "no target tokens": (no_targets, ValueError, r"source 'asr' has no target tokens"),
    "shard set changed": (shard_set_changed, ValueError, r"source 'a': added 1 .*allow_shard_ch"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_one_clear_error(tmp_path, name):
    case, exc, pattern = CASES[name]
    with pytest.raises(exc) as err:
        case(tmp_path)
    msg = str(err.value)
    assert err.type is exc, f"{name}: {err.type.__name__}: {msg}"
    assert len(msg.strip().splitlines()) <= 2, f"{name}: {msg}"
    assert __import__("re").search(pattern, msg), f"{name}: {msg}"
    assert not (tmp_path / "pwned").exists()


def test_hostile_yaml_is_refused_and_runs_nothing(tmp_path):
    msg = r"config\.yaml: not valid YAML \(line 1, column 7\): could not determine"
    with pytest.raises(ValueError, match=msg):
        hostile_yaml(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_decode_line_over_the_length_cap_is_skipped_and_named(tmp_path):
    from glmvoice_jax.inference import speech_decoding

    path = tmp_path / "tokens.jsonl"
    n = speech_decoding.MAX_TOKENS + 1
    path.write_text(json.dumps({"id": "long", "tokens": [1] * n}) + "\n")
    requests, errors, count = speech_decoding.parse_lines(
        str(path), 16384, speech_decoding.MAX_TOKENS
    )
    assert not requests and count == 1 and len(errors) == 1
    msg = errors[0].error
    assert f"{n:,} tokens exceed the one-pass limit" in msg and "--streaming" in msg
    assert len(speech_decoding.parse_lines(str(path), 16384)[0]) == 1  # no cap: read
