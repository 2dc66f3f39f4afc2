r"""glmvoice-export-decoder: the speech decoder as a serialized jax.export artifact.

Usage:
    glmvoice-export-decoder --checkpoint CKPT --output FILE [--max_tokens N] [--platforms cpu]

CKPT: a decoder checkpoint made by glmvoice-import, or the release directory itself.
FILE: ``jax.export`` bytes of tokens (N,) int32 -> waveform (256·⌊441 N / 64⌋,) float32 at
22050 Hz in deterministic mode (zero flow noise, no NSF noise), with a symbolic N (one artifact,
every length, no padding), 1 ≤ N ≤ 3391 (--max_tokens). Ids outside the codebook give NaN audio.
FILE.json describes the signature. Loading needs only jax (+ flatbuffers, which jax's
deserializer imports) and numpy: see docs/decoder_export.md for the loader.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence

import jax
from absl import flags

from glmvoice_jax.cli import doors
from glmvoice_jax.convert.decoder import decoder_checkpoint
from glmvoice_jax.models.speech_decoder import export
from glmvoice_jax.models.speech_decoder.layers import frames_per_token

FLAGS = flags.FlagValues()
flags.DEFINE_string(
    "checkpoint",
    None,
    "Decoder checkpoint (manager root or step dir) or a release dir (config.yaml, flow.pt, "
    "hift.pt).",
    flag_values=FLAGS,
)
flags.DEFINE_string("output", None, "Artifact file to write.", flag_values=FLAGS)
flags.DEFINE_integer(
    "max_tokens",
    None,
    "Largest accepted token count (default: 3391, the exact limit).",
    flag_values=FLAGS,
)
flags.DEFINE_list(
    "platforms", ["cpu"], "Lowering platforms, e.g. cpu or cpu,cuda.", flag_values=FLAGS
)


def main(argv: Sequence[str]) -> dict:
    """Parses ``argv`` (program name first), exports, and returns the description written."""
    FLAGS.unparse_flags()
    FLAGS(list(argv))
    doors.require(FLAGS, ("checkpoint", "output"))
    out = os.path.abspath(FLAGS.output)
    if not os.path.isdir(os.path.dirname(out)):
        raise FileNotFoundError(f"--output {out}: directory {os.path.dirname(out)} does not exist")
    model = decoder_checkpoint.load_any(FLAGS.checkpoint)
    start = time.perf_counter()
    exported = export.export_decoder(model, max_tokens=FLAGS.max_tokens, platforms=FLAGS.platforms)
    blob = exported.serialize()
    cfg = model.config
    ratio = frames_per_token(cfg.flow.input_frame_rate)
    hop = cfg.hift.upsample_factor
    info = {
        "format": "jax.export (jax.export.deserialize(bytes).call(tokens))",
        "jax_version": jax.__version__,
        "platforms": list(exported.platforms),
        "mode": "deterministic: zero flow noise, no NSF noise, zero harmonic phases",
        "input": {"tokens": "int32 [N]", "range": [0, cfg.flow.vocab_size - 1]},
        "max_tokens": FLAGS.max_tokens or export.exact_token_limit(cfg.flow.input_frame_rate),
        "output": {
            "waveform": f"float32 [{hop} * floor(N * {ratio.numerator} / {ratio.denominator})]",
            "sample_rate": cfg.hift.sampling_rate,
            "invalid_ids": "all NaN",
        },
        "checkpoint": os.path.abspath(FLAGS.checkpoint),
        "bytes": len(blob),
    }
    for path, data in ((out, blob), (out + ".json", json.dumps(info, indent=2).encode())):
        tmp = path + ".partial"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    print(
        f"exported {FLAGS.checkpoint} -> {out} ({len(blob) / 1e6:.1f} MB, "
        f"{time.perf_counter() - start:.1f} s, platforms {','.join(exported.platforms)}, "
        f"1 <= N <= {info['max_tokens']} tokens)",
        file=sys.stderr,
    )
    return info


def run() -> None:
    """Console-script entry point (cli/doors.py: --help, user errors as one line, exit 1)."""
    doors.run(main, __doc__, flag_values=FLAGS)


if __name__ == "__main__":
    run()
