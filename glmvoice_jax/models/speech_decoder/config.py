"""Hyperparameters of the GLM-4-Voice speech decoder (flow matching + HiFT) and their presets.

Ref: decoder.md §1 (released configuration) and §17.2 (tiny config); the values mirror the
``flow:`` / ``hift:`` sections of the release ``config.yaml`` (THUDM/glm-4-voice-decoder @ 9cc290e).
Only hyperparameters that change the computation or the parameter shapes are stored; the
converter (``convert/decoder_pt.py``) validates the rest.

Presets: ``VARIANTS["glm4_voice_decoder"]`` (the release, 111 M + 20 M params) and
``VARIANTS["tiny"]`` (the dims of ``tests/fixtures/decoder/config.yaml``).
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """Token → mel model (``MaskedDiffWithXvec``), decoder.md §3-§7.

    Attributes:
      vocab_size: speech-token codebook size (16384).
      input_size: token embedding width, also the encoder input width.
      output_size: number of mel bins (80).
      spk_embed_dim: x-vector width; GLM always feeds zeros, so only the affine bias matters.
      input_frame_rate: token rate in Hz (12.5); the mel rate 22050/256 is hard-coded upstream.
      encoder_size: token-encoder width (``output_size`` of ``BlockConformerEncoder``).
      encoder_heads: attention heads of the token encoder.
      encoder_linear_units: FFN inner width of the token encoder.
      encoder_blocks: number of encoder layers.
      encoder_block_size: block length of the block-causal attention mask (§4.4).
      encoder_dropout: dropout of the encoder in training (inference runs in eval mode, §14).
      lr_sampling_ratios: one conv + GroupNorm + Mish stage of the length regulator per entry.
      inference_cfg_rate: classifier-free-guidance rate r: v = (1 + r) v_cond - r v_uncond.
      training_cfg_rate: probability of dropping the conditions in training (§15.1).
      sigma_min: flow-matching sigma (training only).
      n_timesteps: Euler steps at inference (10, hard-coded in the reference's ``flow.inference``);
        the default of ``Flow.inference``, whose ``n_steps`` overrides it (fast mode).
      unet_channels: channels of the estimator's U-Net levels.
      unet_head_dim: attention head width of the U-Net transformer blocks.
      unet_heads: attention heads of the U-Net transformer blocks.
      unet_n_blocks: transformer blocks per U-Net stage.
      unet_mid_blocks: number of U-Net mid stages.
    """

    vocab_size: int
    input_size: int
    output_size: int
    spk_embed_dim: int
    input_frame_rate: float
    encoder_size: int
    encoder_heads: int
    encoder_linear_units: int
    encoder_blocks: int
    encoder_block_size: int
    encoder_dropout: float
    lr_sampling_ratios: tuple[int, ...]
    inference_cfg_rate: float
    training_cfg_rate: float
    sigma_min: float
    n_timesteps: int
    unet_channels: tuple[int, ...]
    unet_head_dim: int
    unet_heads: int
    unet_n_blocks: int
    unet_mid_blocks: int

    @property
    def time_embed_dim(self) -> int:
        """Width of the U-Net time MLP: 4 x the first level's channels."""
        return 4 * self.unet_channels[0]


@dataclasses.dataclass(frozen=True)
class HiFTConfig:
    """Mel → waveform vocoder (``HiFTGenerator``), decoder.md §8.

    Attributes:
      in_channels: mel bins (80).
      base_channels: width after ``conv_pre``; halves at every upsampling stage.
      nb_harmonics: harmonics above the fundamental in the NSF source (8 → 9 sines).
      sampling_rate: output sample rate (22050).
      nsf_alpha: sine amplitude of the NSF source.
      nsf_sigma: noise std on voiced samples.
      nsf_voiced_threshold: f0 (Hz) above which a sample counts as voiced.
      upsample_rates: stride of each transposed-conv upsampling stage.
      upsample_kernel_sizes: kernel of each upsampling stage.
      istft_n_fft: iSTFT size (16).
      istft_hop: iSTFT hop (4).
      resblock_kernel_sizes: kernels of the resblocks averaged at every stage.
      resblock_dilation_sizes: dilations of each of those resblocks.
      source_resblock_kernel_sizes: kernel of the source resblock of every stage.
      source_resblock_dilation_sizes: dilations of each source resblock.
      lrelu_slope: LeakyReLU slope before each upsampling (the one before conv_post is 0.01).
      audio_limit: the output is clamped to ±audio_limit.
      f0_cond_channels: width of the F0 predictor's conv stack.
    """

    in_channels: int
    base_channels: int
    nb_harmonics: int
    sampling_rate: int
    nsf_alpha: float
    nsf_sigma: float
    nsf_voiced_threshold: float
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    istft_n_fft: int
    istft_hop: int
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    source_resblock_kernel_sizes: tuple[int, ...]
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    lrelu_slope: float
    audio_limit: float
    f0_cond_channels: int

    @property
    def upsample_factor(self) -> int:
        """Waveform samples per mel frame: prod(upsample_rates) x istft_hop (256)."""
        total = self.istft_hop
        for r in self.upsample_rates:
            total *= r
        return total


# Mel → waveform: the HiFT network (the release's) or the Griffin-Lim mel inversion of mel.py, a
# parameter-free baseline for decoders trained at tiny scale (docs/decoder_training.md).
VOCODERS = ("hift", "griffin_lim")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """The whole speech decoder: ``flow`` (tokens → mel) then the vocoder (mel → waveform).

    ``vocoder`` "hift" is the HiFT network of ``hift``; "griffin_lim" inverts the mel with no
    parameters (``hift`` then only names the sampling rate and the 256-sample hop).
    """

    flow: FlowConfig
    hift: HiFTConfig
    vocoder: str = "hift"

    def validate(self) -> None:
        """Checks the shape constraints of decoder.md §17.2.

        Raises:
          ValueError: naming the rule, the values and the fix.
        """
        f, h = self.flow, self.hift
        checks = [
            (
                self.vocoder in VOCODERS,
                f"vocoder {self.vocoder!r} is not one of {VOCODERS}",
            ),
            (
                f.encoder_size % f.encoder_heads == 0,
                f"flow.encoder_size ({f.encoder_size}) must be divisible by encoder_heads "
                f"({f.encoder_heads})",
            ),
            (
                all(c % 8 == 0 for c in f.unet_channels),
                f"flow.unet_channels {f.unet_channels} must be multiples of 8 (GroupNorm(8))",
            ),
            (len(f.unet_channels) >= 1, "flow.unet_channels must not be empty"),
            (
                h.in_channels == f.output_size,
                f"hift.in_channels ({h.in_channels}) must equal flow.output_size "
                f"({f.output_size}), the number of mel bins",
            ),
            (
                h.upsample_factor == 256,
                f"hift upsampling prod(upsample_rates) x istft_hop = {h.upsample_factor}, but "
                "the flow emits one mel frame per 256 samples (hard-coded upstream)",
            ),
            (
                all((k - r) % 2 == 0 for k, r in zip(h.upsample_kernel_sizes, h.upsample_rates)),
                f"hift upsample_kernel_sizes {h.upsample_kernel_sizes} minus upsample_rates "
                f"{h.upsample_rates} must be even",
            ),
            (
                len(h.upsample_rates) == len(h.upsample_kernel_sizes)
                and len(h.upsample_rates) == len(h.source_resblock_kernel_sizes)
                and len(h.source_resblock_kernel_sizes) == len(h.source_resblock_dilation_sizes),
                "hift upsample_rates, upsample_kernel_sizes, source_resblock_kernel_sizes and "
                "source_resblock_dilation_sizes must have the same length",
            ),
            (
                len(h.resblock_kernel_sizes) == len(h.resblock_dilation_sizes),
                "hift resblock_kernel_sizes and resblock_dilation_sizes must have the same length",
            ),
            (
                h.base_channels % (2 ** len(h.upsample_rates)) == 0,
                f"hift.base_channels ({h.base_channels}) must be divisible by "
                f"2**{len(h.upsample_rates)} (it halves at every upsampling stage)",
            ),
        ]
        errors = [msg for ok, msg in checks if not ok]
        if errors:
            raise ValueError("invalid DecoderConfig: " + "; ".join(errors))


def config_to_dict(config: DecoderConfig) -> dict[str, Any]:
    """JSON-ready dict of a config (tuples become lists)."""
    return dataclasses.asdict(config)


def config_from_dict(data: dict[str, Any]) -> DecoderConfig:
    """Inverse of ``config_to_dict``.

    Raises:
      ValueError: unknown or missing fields, naming them.
    """

    def build(cls: type, values: dict[str, Any], where: str) -> Any:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(values) - names), sorted(names - set(values))
        if unknown or missing:
            raise ValueError(
                f"{where}: unknown fields {unknown}, missing fields {missing} for {cls.__name__}"
            )
        out = {}
        for k, v in values.items():
            if isinstance(v, list):
                v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
            out[k] = v
        return cls(**out)

    if not {"flow", "hift"} <= set(data) <= {"flow", "hift", "vocoder"}:
        raise ValueError(
            f"decoder config must have keys ['flow', 'hift'] (and optionally 'vocoder'), got "
            f"{sorted(data)}"
        )
    config = DecoderConfig(
        flow=build(FlowConfig, data["flow"], "flow"),
        hift=build(HiFTConfig, data["hift"], "hift"),
        vocoder=data.get("vocoder", "hift"),  # checkpoints written before the field: HiFT
    )
    config.validate()
    return config


_RELEASE_HIFT = HiFTConfig(
    in_channels=80,
    base_channels=512,
    nb_harmonics=8,
    sampling_rate=22050,
    nsf_alpha=0.1,
    nsf_sigma=0.003,
    nsf_voiced_threshold=10.0,
    upsample_rates=(8, 8),
    upsample_kernel_sizes=(16, 16),
    istft_n_fft=16,
    istft_hop=4,
    resblock_kernel_sizes=(3, 7, 11),
    resblock_dilation_sizes=((1, 3, 5), (1, 3, 5), (1, 3, 5)),
    source_resblock_kernel_sizes=(7, 11),
    source_resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)),
    lrelu_slope=0.1,
    audio_limit=0.99,
    f0_cond_channels=512,
)

VARIANTS: dict[str, DecoderConfig] = {
    # decoder.md §1: THUDM/glm-4-voice-decoder config.yaml.
    "glm4_voice_decoder": DecoderConfig(
        flow=FlowConfig(
            vocab_size=16384,
            input_size=512,
            output_size=80,
            spk_embed_dim=192,
            input_frame_rate=12.5,
            encoder_size=512,
            encoder_heads=8,
            encoder_linear_units=2048,
            encoder_blocks=6,
            encoder_block_size=10,
            encoder_dropout=0.1,
            lr_sampling_ratios=(1, 1, 1, 1),
            inference_cfg_rate=0.7,
            training_cfg_rate=0.2,
            sigma_min=1e-6,
            n_timesteps=10,
            unet_channels=(256, 256),
            unet_head_dim=64,
            unet_heads=8,
            unet_n_blocks=4,
            unet_mid_blocks=12,
        ),
        hift=_RELEASE_HIFT,
    ),
    # tests/fixtures/decoder/config.yaml: release structure at tiny widths (mels stay 80).
    "tiny": DecoderConfig(
        flow=FlowConfig(
            vocab_size=64,
            input_size=32,
            output_size=80,
            spk_embed_dim=192,
            input_frame_rate=12.5,
            encoder_size=32,
            encoder_heads=2,
            encoder_linear_units=48,
            encoder_blocks=2,
            encoder_block_size=4,
            encoder_dropout=0.1,
            lr_sampling_ratios=(1, 1),
            inference_cfg_rate=0.7,
            training_cfg_rate=0.2,
            sigma_min=1e-6,
            n_timesteps=10,
            unet_channels=(32, 32),
            unet_head_dim=8,
            unet_heads=2,
            unet_n_blocks=1,
            unet_mid_blocks=2,
        ),
        hift=dataclasses.replace(
            _RELEASE_HIFT,
            base_channels=32,
            nb_harmonics=2,
            resblock_kernel_sizes=(3, 5),
            resblock_dilation_sizes=((1, 3), (1, 3)),
            source_resblock_kernel_sizes=(5, 3),
            source_resblock_dilation_sizes=((1, 3), (1,)),
            f0_cond_channels=24,
        ),
    ),
}
