r"""The speech decoder's flow at release dims, fine-tuned from the released decoder (issue 19).

``configs/decoder_tiny.py`` with the ``glm4_voice_decoder`` preset (THUDM/glm-4-voice-decoder,
decoder.md §1: 6-layer 512-wide token encoder, U-Net 256 x 2 levels with 12 mid stages; 16,384
tokens at 12.5 Hz, 80 mel bins), ``init_from`` the imported release decoder, and its HiFT as the
vocoder (unchanged: it maps mel -> wav whatever the tokenizer). Another tokenizer (``vocab`` /
``rate`` other than the release's) keeps every flow weight but the token embedding, which starts
afresh (``init_new_tokenizer``). The optimiser is the CosyVoice recipe (decoder.md §15.1): Adam
1e-3, 2500 warm-up steps, grad-clip 5. The batch is 64 utterances of <= 20 s (250 tokens, 1722
mel frames) padded to one shape: 16 per chip on v5p-8.

Pre-flight (a CPU machine with libtpu; docs/decoder_training.md, "Release dims: AOT on v5p-8"):
    glmvoice-aot --config configs/decoder_release.py --topology v5p-8
    glmvoice-train --config configs/decoder_release.py --workdir /tmp/x --dry_run
Command (an accelerator host):
    glmvoice-import --checkpoint glm-4-voice-decoder --output ckpt/glm-4-voice-decoder
    glmvoice-tokenize --checkpoint TOKENIZER --input audio.jsonl --output tokens.jsonl
    glmvoice-train --config configs/decoder_release.py[:vocab=4096,rate=25] --workdir runs/flow \
        --config.input.manifest=audio.jsonl --config.input.tokens=tokens.jsonl
Args: ``vocab``, ``rate`` (the tokenizer's; default the release's 16384 at 12.5 Hz), ``steps``,
``init_from`` (the imported release decoder). Expected: the held-out CFM loss falls from the
release flow's value at step 0 (for the release tokenizer's tokens it starts low already).
"""

import os

import ml_collections as mlc

from glmvoice_jax import config_lib

RELEASE_VOCAB, RELEASE_RATE = 16384, 12.5


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    arg = config_lib.parse_arg(
        arg,
        vocab=RELEASE_VOCAB,
        rate=RELEASE_RATE,
        steps=20000,
        init_from="ckpt/glm-4-voice-decoder",
    )
    c = config_lib.load_config_file(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "decoder_tiny.py")
        + f":vocab={arg.vocab},rate={arg.rate},steps={arg.steps}"
    )
    c.model.variant = "glm4_voice_decoder"
    c.init_from = arg.init_from  # glmvoice-import of glm-4-voice-decoder (or the release dir)
    c.init_new_tokenizer = (arg.vocab, float(arg.rate)) != (RELEASE_VOCAB, RELEASE_RATE)
    c.vocoder = "hift"  # the release HiFT of init_from, for every tokenizer
    c.input.max_tokens = 250  # 20 s at 12.5 Hz: 1722 mel frames per row
    c.input.global_batch_size = 64
    c.input.heldout_every = 100
    c.schedule = dict(decay="constant", warmup_steps=2500, peak_lr=1e-3, end_lr=1e-3)
    c.log_every_steps = 100
    c.ckpt.every_steps = 1000
    c.evals = dict(every_steps=1000, batch_size=64, max_utterances=256)
    return c
