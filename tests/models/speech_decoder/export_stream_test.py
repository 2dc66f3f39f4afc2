"""The exported streaming chunk (``export.export_stream``) reproduces ``stream_decode``.

Tiny fixture decoder (tests/fixtures/decoder), deterministic mode. Tolerance 1e-4, as for the
whole-utterance artifact against glmvoice-decode (docs/decoder_export.md): the symbolic lengths
change only the rounding of the relative-position sin/cos and the NSF phase prefix sum.
"""

import json
import pathlib

import jax
import numpy as np
import pytest

from glmvoice_jax.convert.decoder.decoder_pt import load_decoder
from glmvoice_jax.models.speech_decoder import export
from glmvoice_jax.models.speech_decoder.stream import Token2Wav, stream_decode

FIXTURES = pathlib.Path(__file__).parents[2] / "fixtures" / "decoder"


@pytest.fixture(scope="module")
def model():
    return load_decoder(FIXTURES)


# e2e (27 s): whole-utterance export is checked by make test (tests/cli/export_decoder_test.py).
@pytest.mark.e2e
def test_exported_chunks_reproduce_stream_decode(model):
    utt = json.loads((FIXTURES / "tokens.jsonl").read_text().splitlines()[0])
    want, want_chunks = stream_decode(model, utt["tokens"], block_sizes=(10,))
    pieces = export.export_stream(model, max_tokens=64)
    # Through bytes, as a caller without the model would load them.
    pieces = export.StreamExport(
        *(
            jax.export.deserialize(bytearray(e.serialize()))
            for e in (pieces.flow, pieces.hift, pieces.hift_cached)
        )
    )
    flow_fn, hift_fn = export.token2wav_fns(pieces)
    t2w = Token2Wav(model, flow_fn=flow_fn, hift_fn=hift_fn)
    got, chunks = stream_decode(model, utt["tokens"], block_sizes=(10,), token2wav=t2w)
    assert chunks == want_chunks and len(chunks) == 4
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="Error refining shapes|N <= 64"):
        pieces.flow.call(np.zeros(65, np.int32), np.zeros((447, 80), np.float32))
