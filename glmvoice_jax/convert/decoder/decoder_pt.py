"""Import the glm-4-voice-decoder release (``config.yaml``, ``flow.pt``, ``hift.pt``) without torch.

Ref: decoder.md §1 (config), §10 (weight groups), §11 (conversion rules: weight-norm folding,
layouts, coverage checks); THUDM/glm-4-voice-decoder @ 9cc290e. Modules:
``models/decoder/{flow,hift}.py``.

* ``config.yaml`` is HyperPyYAML. It is read with a *safe* YAML loader that keeps every custom
  tag (``!new:``, ``!name:``, ``!apply:``, ``!ref`` ...) as inert data (``Tagged``); nothing is
  imported or called. ``!ref <key>`` is resolved against the top-level scalars only.
* ``*.pt`` files are read by ``convert.torch_zip`` (restricted unpickler).
* Weight norm (``weight_g`` / ``weight_v``, or ``parametrizations.weight.original0/1``) is folded
  as W = g · v / ‖v‖ (norm over all axes but 0) before any transpose.
* ``rename_table`` is the one explicit torch-key → Flax-path table; every source key must be
  consumed and every Flax parameter filled, else the error lists the offenders.

Layouts (torch → channel-last Flax): Linear W(O, I) → (I, O); Conv1d W(O, I, K) → (K, I, O);
ConvTranspose1d W(I, O, K) → (K, I, O); vectors, embeddings, pos biases unchanged.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax
import numpy as np
import yaml
from flax import nnx

from glmvoice_jax.convert.io.torch_zip import load_state_dict
from glmvoice_jax.models.speech_decoder.config import DecoderConfig, FlowConfig, HiFTConfig
from glmvoice_jax.models.speech_decoder.speech_decoder import SpeechDecoder

# ----------------------------------------------------------------------------- config.yaml


@dataclasses.dataclass(frozen=True)
class Tagged:
    """A HyperPyYAML tagged node kept as data: ``tag`` (e.g. '!new:cosyvoice.x.Y') and value."""

    tag: str
    value: Any


class _TagsAsDataLoader(yaml.SafeLoader):
    """SafeLoader that turns any '!...' tag into ``Tagged`` instead of failing or executing."""


def _construct_tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Tagged:
    if isinstance(node, yaml.MappingNode):
        value: Any = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return Tagged("!" + suffix, value)


_TagsAsDataLoader.add_multi_constructor("!", _construct_tagged)

_TOP_LEVEL_SCALARS = (
    "sample_rate",
    "text_encoder_input_size",
    "llm_input_size",
    "llm_output_size",
    "spk_embed_dim",
)
_IGNORED_SECTIONS = ("llm",)  # the leftover TransformerLM, unused by GLM-4-Voice (§0)


class _Section:
    """Reads the fields of one tagged YAML mapping, tracking which were used."""

    def __init__(self, node: Any, tag: str | None, where: str, refs: dict[str, Any]):
        if tag is not None:
            if not isinstance(node, Tagged) or node.tag != tag:
                got = node.tag if isinstance(node, Tagged) else type(node).__name__
                raise ValueError(f"config.yaml {where}: expected {tag}, got {got}")
            node = node.value
        elif isinstance(node, Tagged):
            node = node.value
        if not isinstance(node, dict):
            raise ValueError(f"config.yaml {where}: expected a mapping, got {node!r}")
        self.values, self.where, self.refs, self.used = node, where, refs, set()

    def get(self, key: str, kind: type | None = None, default: Any = ...) -> Any:
        if key not in self.values:
            if default is ...:
                raise ValueError(f"config.yaml {self.where}: missing field {key!r}")
            self.used.add(key)
            return default
        self.used.add(key)
        value = self._resolve(self.values[key], f"{self.where}.{key}")
        if kind is float:
            return float(value)  # PyYAML reads '1e-06' (no dot) as a string
        if kind is int:
            if isinstance(value, bool) or int(value) != float(value):
                raise ValueError(f"config.yaml {self.where}.{key}: expected an int, got {value!r}")
            return int(value)
        if kind is tuple:
            return tuple(tuple(v) if isinstance(v, list) else v for v in value)
        return value

    def expect(self, key: str, allowed: tuple[Any, ...], default: Any = ...) -> None:
        value = self.get(key, default=default)
        if value not in allowed:
            raise ValueError(
                f"config.yaml {self.where}.{key} = {value!r} is not supported by this port "
                f"(supported: {', '.join(map(repr, allowed))})"
            )

    def _resolve(self, value: Any, where: str) -> Any:
        if isinstance(value, Tagged) and value.tag == "!ref":
            m = re.fullmatch(r"\s*<([A-Za-z_][A-Za-z0-9_]*)>\s*", str(value.value))
            if not m or m.group(1) not in self.refs:
                raise ValueError(
                    f"config.yaml {where}: unsupported !ref {value.value!r}; only '<key>' of a "
                    f"top-level scalar ({', '.join(sorted(self.refs))}) is resolved"
                )
            return self.refs[m.group(1)]
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.values) - self.used)
        if unknown:
            raise ValueError(
                f"config.yaml {self.where}: unknown field(s) {unknown}; this port does not know "
                "what they mean (a different CosyVoice/GLM version?)"
            )


def parse_config_yaml(text: str, source: str = "config.yaml") -> DecoderConfig:
    """Builds a ``DecoderConfig`` from the text of a release ``config.yaml``.

    Args:
      text: the YAML text.
      source: name used in error messages.

    Returns:
      The validated config.

    Raises:
      ValueError: malformed YAML, unexpected classes, unknown / missing / unsupported fields.
    """
    try:
        doc = yaml.load(text, Loader=_TagsAsDataLoader)  # a SafeLoader subclass
    except yaml.YAMLError as e:
        # One line: PyYAML's str() appends a multi-line snippet of the offending text.
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{source}: not valid YAML{where}: {problem}") from e
    if not isinstance(doc, dict):
        raise ValueError(f"{source}: expected a mapping at the top level")
    known = set(_TOP_LEVEL_SCALARS) | set(_IGNORED_SECTIONS) | {"flow", "hift"}
    unknown = sorted(k for k in doc if k not in known and not str(k).startswith("__set_seed"))
    if unknown:
        raise ValueError(f"{source}: unknown top-level field(s) {unknown}")
    for key in ("flow", "hift"):
        if key not in doc:
            raise ValueError(f"{source}: missing top-level section {key!r}")
    refs = {k: doc[k] for k in _TOP_LEVEL_SCALARS if k in doc}
    config = DecoderConfig(
        flow=_flow_config(doc["flow"], refs), hift=_hift_config(doc["hift"], refs)
    )
    config.validate()
    return config


def _flow_config(node: Any, refs: dict[str, Any]) -> FlowConfig:
    flow = _Section(node, "!new:cosyvoice.flow.flow.MaskedDiffWithXvec", "flow", refs)
    enc = _Section(
        flow.get("encoder"),
        "!new:cosyvoice.transformer.encoder.BlockConformerEncoder",
        "flow.encoder",
        refs,
    )
    lr = _Section(
        flow.get("length_regulator"),
        "!new:cosyvoice.flow.length_regulator.InterpolateRegulator",
        "flow.length_regulator",
        refs,
    )
    cfm = _Section(
        flow.get("decoder"),
        "!new:cosyvoice.flow.flow_matching.ConditionalCFM",
        "flow.decoder",
        refs,
    )
    params = _Section(
        cfm.get("cfm_params"), "!new:omegaconf.DictConfig", "flow.decoder.cfm_params", refs
    )
    params = _Section(params.get("content"), None, "flow.decoder.cfm_params.content", refs)
    est = _Section(
        cfm.get("estimator"),
        "!new:cosyvoice.flow.decoder.ConditionalDecoder",
        "flow.decoder.estimator",
        refs,
    )
    out = FlowConfig(
        vocab_size=flow.get("vocab_size", int),
        input_size=flow.get("input_size", int),
        output_size=flow.get("output_size", int),
        spk_embed_dim=flow.get("spk_embed_dim", int),
        input_frame_rate=flow.get("input_frame_rate", float),
        encoder_size=enc.get("output_size", int),
        encoder_heads=enc.get("attention_heads", int),
        encoder_linear_units=enc.get("linear_units", int),
        encoder_blocks=enc.get("num_blocks", int),
        encoder_block_size=enc.get("block_size", int),
        encoder_dropout=enc.get("dropout_rate", float, 0.1),
        lr_sampling_ratios=lr.get("sampling_ratios", tuple),
        inference_cfg_rate=params.get("inference_cfg_rate", float),
        training_cfg_rate=params.get("training_cfg_rate", float),
        sigma_min=params.get("sigma_min", float),
        n_timesteps=10,  # hard-coded in flow.inference
        unet_channels=est.get("channels", tuple),
        unet_head_dim=est.get("attention_head_dim", int),
        unet_heads=est.get("num_heads", int),
        unet_n_blocks=est.get("n_blocks", int),
        unet_mid_blocks=est.get("num_mid_blocks", int),
    )
    m = out.output_size
    checks = [
        (
            enc.get("input_size", int) == out.input_size,
            "flow.encoder.input_size != flow.input_size",
        ),
        (lr.get("channels", int) == m, "flow.length_regulator.channels != flow.output_size"),
        (
            lr.get("out_channels", None, None) in (None, m),
            "length_regulator.out_channels != channels",
        ),
        (est.get("in_channels", int) == 4 * m, "flow.decoder.estimator.in_channels != 4 x mels"),
        (est.get("out_channels", int) == m, "flow.decoder.estimator.out_channels != mels"),
        (cfm.get("spk_emb_dim", int) == m, "flow.decoder.spk_emb_dim != flow.output_size"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(f"config.yaml: inconsistent sizes: {msg}")
    flow.expect("output_type", ("mel",), "mel")
    flow.get("only_mask_loss", default=True)
    for key, allowed in [
        ("normalize_before", (True,)),
        ("input_layer", ("linear",)),
        ("pos_enc_layer_type", ("rel_pos_espnet",)),
        ("selfattention_layer_type", ("block_rel_selfattn",)),
        ("use_cnn_module", (False,)),
        ("macaron_style", (False,)),
        ("activation_type", ("swish",)),
    ]:
        enc.expect(key, allowed, allowed[0])
    enc.get("positional_dropout_rate", default=0.1)
    enc.get("attention_dropout_rate", default=0.0)
    lr.expect("groups", (1,), 1)
    cfm.get("in_channels")
    cfm.expect("n_spks", (1,), 1)
    params.expect("solver", ("euler",))
    params.expect("t_scheduler", ("cosine",))
    params.get("reg_loss_type", default="l1")
    est.expect("dropout", (0, 0.0), 0)
    est.expect("act_fn", ("gelu",), "gelu")
    for section in (flow, enc, lr, cfm, params, est):
        section.finish()
    return out


def _hift_config(node: Any, refs: dict[str, Any]) -> HiFTConfig:
    h = _Section(node, "!new:cosyvoice.hifigan.generator.HiFTGenerator", "hift", refs)
    istft = _Section(h.get("istft_params"), None, "hift.istft_params", refs)
    f0 = _Section(
        h.get("f0_predictor"),
        "!new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor",
        "hift.f0_predictor",
        refs,
    )
    out = HiFTConfig(
        in_channels=h.get("in_channels", int),
        base_channels=h.get("base_channels", int),
        nb_harmonics=h.get("nb_harmonics", int),
        sampling_rate=h.get("sampling_rate", int),
        nsf_alpha=h.get("nsf_alpha", float),
        nsf_sigma=h.get("nsf_sigma", float),
        nsf_voiced_threshold=h.get("nsf_voiced_threshold", float),
        upsample_rates=h.get("upsample_rates", tuple),
        upsample_kernel_sizes=h.get("upsample_kernel_sizes", tuple),
        istft_n_fft=istft.get("n_fft", int),
        istft_hop=istft.get("hop_len", int),
        resblock_kernel_sizes=h.get("resblock_kernel_sizes", tuple),
        resblock_dilation_sizes=h.get("resblock_dilation_sizes", tuple),
        source_resblock_kernel_sizes=h.get("source_resblock_kernel_sizes", tuple),
        source_resblock_dilation_sizes=h.get("source_resblock_dilation_sizes", tuple),
        lrelu_slope=h.get("lrelu_slope", float),
        audio_limit=h.get("audio_limit", float),
        f0_cond_channels=f0.get("cond_channels", int),
    )
    f0.expect("num_class", (1,), 1)
    if f0.get("in_channels", int) != out.in_channels:
        raise ValueError("config.yaml: hift.f0_predictor.in_channels != hift.in_channels")
    for section in (h, istft, f0):
        section.finish()
    return out


def load_config(path: str | os.PathLike) -> DecoderConfig:
    """Reads a release ``config.yaml`` (see ``parse_config_yaml``)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"decoder config not found: {path}")
    with open(path, encoding="utf-8") as f:
        return parse_config_yaml(f.read(), source=path)


# ----------------------------------------------------------------------------- weights

# Layout kinds: how a torch tensor becomes a Flax leaf.
_LAYOUTS = {
    "linear": lambda w: w.T,  # (O, I) → (I, O)
    "conv": lambda w: w.transpose(2, 1, 0),  # (O, I, K) → (K, I, O)
    "convT": lambda w: w.transpose(2, 0, 1),  # (I, O, K) → (K, I, O)
    "copy": lambda w: w,
}


def _linear(src: str, dst: str, bias: bool = True) -> list[tuple[str, str, str]]:
    rows = [(f"{src}.weight", f"{dst}/kernel", "linear")]
    return rows + ([(f"{src}.bias", f"{dst}/bias", "copy")] if bias else [])


def _conv(src: str, dst: str, kind: str = "conv") -> list[tuple[str, str, str]]:
    return [(f"{src}.weight", f"{dst}/kernel", kind), (f"{src}.bias", f"{dst}/bias", "copy")]


def _norm(src: str, dst: str) -> list[tuple[str, str, str]]:
    return [(f"{src}.weight", f"{dst}/scale", "copy"), (f"{src}.bias", f"{dst}/bias", "copy")]


def _flow_table(cfg: FlowConfig) -> list[tuple[str, str, str]]:
    t = [("input_embedding.weight", "input_embedding/embedding", "copy")]
    t += _linear("spk_embed_affine_layer", "spk_embed_affine_layer")
    t += _linear("encoder.embed.out.0", "encoder/embed_linear")
    t += _norm("encoder.embed.out.1", "encoder/embed_norm")
    for i in range(cfg.encoder_blocks):
        src, dst = f"encoder.encoders.{i}", f"encoder/layers/{i}"
        for name in ("linear_q", "linear_k", "linear_v", "linear_out"):
            t += _linear(f"{src}.self_attn.{name}", f"{dst}/self_attn/{name}")
        t += _linear(f"{src}.self_attn.linear_pos", f"{dst}/self_attn/linear_pos", bias=False)
        for name in ("pos_bias_u", "pos_bias_v"):
            t.append((f"{src}.self_attn.{name}", f"{dst}/self_attn/{name}", "copy"))
        t += _linear(f"{src}.feed_forward.w_1", f"{dst}/w_1")
        t += _linear(f"{src}.feed_forward.w_2", f"{dst}/w_2")
        t += _norm(f"{src}.norm_mha", f"{dst}/norm_mha") + _norm(f"{src}.norm_ff", f"{dst}/norm_ff")
    t += _norm("encoder.after_norm", "encoder/after_norm")
    t += _linear("encoder_proj", "encoder_proj")
    n_lr = len(cfg.lr_sampling_ratios)
    for i in range(n_lr):  # model = [Conv, GroupNorm, Mish] x n, then Conv_k1
        t += _conv(f"length_regulator.model.{3 * i}", f"length_regulator/convs/{i}")
        t += _norm(f"length_regulator.model.{3 * i + 1}", f"length_regulator/norms/{i}")
    t += _conv(f"length_regulator.model.{3 * n_lr}", "length_regulator/out_conv")

    est = "decoder.estimator"
    t += _linear(f"{est}.time_mlp.linear_1", "estimator/time_linear_1")
    t += _linear(f"{est}.time_mlp.linear_2", "estimator/time_linear_2")

    def stage(src: str, dst: str) -> list[tuple[str, str, str]]:
        r, rd = f"{src}.0", f"{dst}/resnet"
        rows = _linear(f"{r}.mlp.1", f"{rd}/mlp")
        for blk in ("block1", "block2"):
            rows += _conv(f"{r}.{blk}.block.0", f"{rd}/{blk}/conv")
            rows += _norm(f"{r}.{blk}.block.1", f"{rd}/{blk}/norm")
        rows += _conv(f"{r}.res_conv", f"{rd}/res_conv")
        for j in range(cfg.unet_n_blocks):
            x, xd = f"{src}.1.{j}", f"{dst}/transformer_blocks/{j}"
            rows += _norm(f"{x}.norm1", f"{xd}/norm1") + _norm(f"{x}.norm3", f"{xd}/norm3")
            for name in ("to_q", "to_k", "to_v"):
                rows += _linear(f"{x}.attn1.{name}", f"{xd}/{name}", bias=False)
            rows += _linear(f"{x}.attn1.to_out.0", f"{xd}/to_out")
            rows += _linear(f"{x}.ff.net.0.proj", f"{xd}/ff_proj")
            rows += _linear(f"{x}.ff.net.2", f"{xd}/ff_out")
        return rows

    n_levels = len(cfg.unet_channels)
    for i in range(n_levels):
        t += stage(f"{est}.down_blocks.{i}", f"estimator/down_blocks/{i}")
        last = i == n_levels - 1  # the last level has a plain Conv1d, others Downsample1D.conv
        src = f"{est}.down_blocks.{i}.2" + ("" if last else ".conv")
        t += _conv(src, f"estimator/down_blocks/{i}/sample")
    for i in range(cfg.unet_mid_blocks):
        t += stage(f"{est}.mid_blocks.{i}", f"estimator/mid_blocks/{i}")
    for i in range(n_levels):
        t += stage(f"{est}.up_blocks.{i}", f"estimator/up_blocks/{i}")
        last = i == n_levels - 1  # the last level has a plain Conv1d, others Upsample1D.conv
        src = f"{est}.up_blocks.{i}.2" + ("" if last else ".conv")
        t += _conv(src, f"estimator/up_blocks/{i}/sample", "conv" if last else "convT")
    t += _conv(f"{est}.final_block.block.0", "estimator/final_block/conv")
    t += _norm(f"{est}.final_block.block.1", "estimator/final_block/norm")
    t += _conv(f"{est}.final_proj", "estimator/final_proj")
    return [(src, "flow/" + dst, kind) for src, dst, kind in t]


def _hift_table(cfg: HiFTConfig) -> list[tuple[str, str, str]]:
    def resblock(src: str, dst: str, n: int) -> list[tuple[str, str, str]]:
        rows = []
        for j in range(n):
            rows += _conv(f"{src}.convs1.{j}", f"{dst}/convs1/{j}")
            rows += _conv(f"{src}.convs2.{j}", f"{dst}/convs2/{j}")
            rows.append((f"{src}.activations1.{j}.alpha", f"{dst}/alphas1/{j}", "copy"))
            rows.append((f"{src}.activations2.{j}.alpha", f"{dst}/alphas2/{j}", "copy"))
        return rows

    t = _linear("m_source.l_linear", "source_linear")
    t += _conv("conv_pre", "conv_pre")
    n_k = len(cfg.resblock_kernel_sizes)
    for i in range(len(cfg.upsample_rates)):
        t += _conv(f"ups.{i}", f"ups/{i}", "convT")
        t += _conv(f"source_downs.{i}", f"source_downs/{i}")
        n_d = len(cfg.source_resblock_dilation_sizes[i])
        t += resblock(f"source_resblocks.{i}", f"source_resblocks/{i}", n_d)
        for j in range(n_k):
            k = i * n_k + j
            t += resblock(f"resblocks.{k}", f"resblocks/{k}", len(cfg.resblock_dilation_sizes[j]))
    t += _conv("conv_post", "conv_post")
    for i in range(5):  # condnet = [Conv, ELU] x 5
        t += _conv(f"f0_predictor.condnet.{2 * i}", f"f0_predictor/condnet/{i}")
    t += _linear("f0_predictor.classifier", "f0_predictor/classifier")
    return [(src, "hift/" + dst, kind) for src, dst, kind in t]


def rename_table(config: DecoderConfig) -> list[tuple[str, str, str]]:
    """The one rename table: (torch key with 'flow.'/'hift.' file prefix, Flax path, layout).

    Flax paths are '/'-joined attribute names of ``SpeechDecoder`` (list indices as numbers);
    layouts are keys of ``_LAYOUTS``. Weight-normed keys appear folded (``.weight``).
    """
    flow = [("flow." + s, d, k) for s, d, k in _flow_table(config.flow)]
    hift = [("hift." + s, d, k) for s, d, k in _hift_table(config.hift)]
    return flow + hift


def fold_weight_norm(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Replaces (g, v) pairs by W = g · v / ‖v‖ (‖·‖ over all axes but 0; decoder.md §11.1).

    Accepts the legacy ``<m>.weight_g`` / ``<m>.weight_v`` keys and the newer
    ``<m>.parametrizations.weight.original0`` (g) / ``original1`` (v). Computed in float64 and
    cast back, so the result is at least as exact as torch's own fold.

    Raises:
      ValueError: a g without its v (or the reverse), or mismatched shapes.
    """
    out: dict[str, np.ndarray] = {}
    gs: dict[str, np.ndarray] = {}
    vs: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if key.endswith(".weight_g"):
            gs[key[: -len(".weight_g")]] = value
        elif key.endswith(".weight_v"):
            vs[key[: -len(".weight_v")]] = value
        elif key.endswith(".parametrizations.weight.original0"):
            gs[key[: -len(".parametrizations.weight.original0")]] = value
        elif key.endswith(".parametrizations.weight.original1"):
            vs[key[: -len(".parametrizations.weight.original1")]] = value
        else:
            out[key] = value
    unpaired = sorted(set(gs) ^ set(vs))
    if unpaired:
        raise ValueError(f"weight norm: g without v (or v without g) for modules {unpaired}")
    for name, g in gs.items():
        v = vs[name].astype(np.float64)
        norm = np.sqrt(np.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))
        if g.shape != norm.shape:
            raise ValueError(f"weight norm of {name}: g {g.shape} does not fit v {v.shape}")
        if f"{name}.weight" in out:
            raise ValueError(f"{name} has both a plain weight and weight-norm parameters")
        out[f"{name}.weight"] = (g.astype(np.float64) * v / norm).astype(vs[name].dtype)
    return out


def convert_state_dicts(
    config: DecoderConfig, flow_sd: dict[str, np.ndarray], hift_sd: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Converts torch state dicts to {Flax path: float32 array} through ``rename_table``.

    Raises:
      ValueError: listing unknown source keys, missing source keys, or shape mismatches
        against the table's expectation.
    """
    source = {"flow." + k: v for k, v in fold_weight_norm(flow_sd).items()}
    source.update({"hift." + k: v for k, v in fold_weight_norm(hift_sd).items()})
    table = rename_table(config)
    wanted = {src for src, _, _ in table}
    unknown = sorted(set(source) - wanted)
    missing = sorted(wanted - set(source))
    if unknown or missing:
        raise ValueError(
            f"decoder checkpoint does not match the config: {len(unknown)} unknown key(s) "
            f"{unknown[:20]}{' ...' if len(unknown) > 20 else ''}; {len(missing)} missing "
            f"key(s) {missing[:20]}{' ...' if len(missing) > 20 else ''}"
        )
    return {
        dst: np.ascontiguousarray(_LAYOUTS[kind](source[src]), np.float32)
        for src, dst, kind in table
    }


def _join(path: tuple[Any, ...]) -> str:
    return "/".join(str(p) for p in path)


class _FixedKeyRngs:
    """Stand-in for ``nnx.Rngs`` when only parameter *shapes* are wanted.

    Under ``nnx.eval_shape`` every ``nnx.Rngs`` draw updates a traced counter, and each update
    builds a jax tracer-origin message whose cost grows with the trace: 80 s for the release
    decoder against 2 s with this constant key (the values are discarded anyway).
    """

    def __init__(self):
        self._key = jax.random.key(0)

    def params(self) -> jax.Array:
        return self._key

    def __call__(self) -> jax.Array:
        return self._key


def param_shapes(config: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """{Flax path: shape} of every parameter of ``SpeechDecoder(config)``, without allocating."""
    abstract = nnx.eval_shape(lambda: SpeechDecoder(config, rngs=_FixedKeyRngs()))
    flat = nnx.to_flat_state(nnx.split(abstract)[1])
    return {_join(path): tuple(var.get_value().shape) for path, var in flat}


def build_decoder(config: DecoderConfig, params: dict[str, np.ndarray]) -> SpeechDecoder:
    """A ``SpeechDecoder`` whose every parameter comes from ``params`` (Flax path → array).

    Raises:
      ValueError: listing model parameters without a value, values without a parameter, and
        shape mismatches.
    """
    abstract = nnx.eval_shape(lambda: SpeechDecoder(config, rngs=_FixedKeyRngs()))
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    leaves = {_join(path): var for path, var in flat.items()}
    unknown = sorted(set(params) - set(leaves))
    missing = sorted(set(leaves) - set(params))
    if unknown or missing:
        raise ValueError(
            f"rename table and model disagree: values without a parameter {unknown}; "
            f"parameters without a value {missing}"
        )
    bad = [
        f"{k}: checkpoint {params[k].shape} vs model {tuple(leaves[k].get_value().shape)}"
        for k in sorted(params)
        if tuple(params[k].shape) != tuple(leaves[k].get_value().shape)
    ]
    if bad:
        raise ValueError("shape mismatch between checkpoint and config: " + "; ".join(bad))
    for path, var in flat.items():
        var.set_value(np.asarray(params[_join(path)]))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def load_decoder(directory: str | os.PathLike) -> SpeechDecoder:
    """Imports a glm-4-voice-decoder directory (``config.yaml``, ``flow.pt``, ``hift.pt``).

    Raises:
      FileNotFoundError: a file is missing.
      ValueError: bad config, unreadable checkpoint, or keys/shapes that do not match.
    """
    directory = os.fspath(directory)
    for name in ("config.yaml", "flow.pt", "hift.pt"):
        if not os.path.exists(os.path.join(directory, name)):
            raise FileNotFoundError(
                f"{directory} is not a glm-4-voice-decoder directory: {name} is missing "
                "(expected config.yaml, flow.pt, hift.pt)"
            )
    config = load_config(os.path.join(directory, "config.yaml"))
    flow_sd = load_state_dict(os.path.join(directory, "flow.pt"))
    hift_sd = load_state_dict(os.path.join(directory, "hift.pt"))
    return build_decoder(config, convert_state_dicts(config, flow_sd, hift_sd))
