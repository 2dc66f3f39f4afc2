"""GLM-4-Voice speech decoder: tokens → mel (flow matching) → waveform (HiFT). See decoder.md."""

from glmvoice_jax.models.speech_decoder.config import (
    VARIANTS,
    DecoderConfig,
    FlowConfig,
    HiFTConfig,
)
from glmvoice_jax.models.speech_decoder.speech_decoder import (
    SpeechDecoder,
    check_tokens,
    tokens_to_audio,
)

__all__ = [
    "VARIANTS",
    "DecoderConfig",
    "FlowConfig",
    "HiFTConfig",
    "SpeechDecoder",
    "check_tokens",
    "tokens_to_audio",
]
