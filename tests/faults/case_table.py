r"""Issue 17's case table, re-run: bad inputs and faults through the real console scripts.

Not collected by pytest (the cases are held one by one by tests/faults/*_test.py and the tests
named in docs/faults.md); this script runs each case as a whole ``glmvoice-*`` process, as a
careless or hostile user would, and prints the table of docs/faults.md with the verdicts:

* ``clear error``: exit 1, a ``PROG: error: ...`` line naming the file / field / value, no
  traceback (user errors must never print one unless GLMVOICE_DEBUG=1);
* ``held``: the run goes on as promised (a skipped input listed, a damaged step skipped, a resume
  with identical losses, SIGTERM -> exit 0 with a message);
* ``TRACEBACK`` / ``SILENT`` (exit 0 where it must refuse) / ``exit N``: failures.

Usage (about 10 minutes on 2 CPU cores; one JAX process per case):
    .venv/bin/python tests/faults/case_table.py [--only REGEX] [--out table.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import importlib.util
import json
import os
import pathlib
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
DEMO = f"{REPO}/configs/demo_tiny.py:corpus=synthetic"
SMALL = {
    "model.embed_dim": 32,
    "model.num_layers": 2,
    "model.num_heads": 2,
    "model.num_kv_heads": 1,
    "model.head_dim": 16,
    "model.mlp_dim": 64,
    "input.seq_len": 64,
    "input.global_batch_size": 8,
    "loss.chunk_size": 32,
    "log_every_steps": 1,
    "ckpt.every_steps": 2,
    "ckpt.async_save": False,
    "schedule.warmup_steps": 2,
    "metrics.console": False,
}


@dataclasses.dataclass
class Case:
    name: str
    tool: str  # console script (module glmvoice_jax.cli.<module>)
    build: Callable  # (tmp, fx) -> args | (args, check)
    expect: str = "error"  # "error": one clear line | "held": rc 0 and check(proc, tmp) passes
    needle: str = ""  # the error line must contain it
    before: str = ""  # verdict on 8973d70 as the issue reports it
    rc: int = 0  # exit status of a "held" case (glmvoice-decode: 2 when it skipped a line)


MODULES = {
    "glmvoice-train": "train",
    "glmvoice-import": "import_checkpoint",
    "glmvoice-export": "export_checkpoint",
    "glmvoice-score": "score",
    "glmvoice-decode": "decode",
    "glmvoice-tokenize": "tokenize_audio",
    "glmvoice-chat": "chat",
    "glmvoice-data-stats": "data_stats",
    "glmvoice-aot": "aot",
    "glmvoice-eval": "evaluate",
    "glmvoice-ablate": "ablate",
}


def _cmd(tool: str, args: list[str]) -> list[str]:
    code = (
        f"import sys; sys.argv[0] = {tool!r}; "
        f"from glmvoice_jax.cli.{MODULES[tool]} import run; run()"
    )
    return [sys.executable, "-c", code, *args]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "GLMVOICE_DEBUG")}
    env["JAX_PLATFORMS"] = "cpu"
    return env


def run(tool, args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        _cmd(tool, args), capture_output=True, text=True, env=_env(), timeout=timeout
    )


# ---------------------------------------------------------------------------------------------
# Shared fixtures (built once).


class Fixtures:
    def __init__(self, root: pathlib.Path):
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import write_tiny_lm  # noqa: PLC0415 - the tests' tiny checkpoint

        from glmvoice_jax.convert.decoder import decoder_checkpoint
        from glmvoice_jax.corpora import demo_corpus
        from glmvoice_jax.models.speech_decoder import config as decoder_config

        self.root = root
        self.lm = write_tiny_lm(str(root / "lm"))
        self.decoder = str(root / "decoder")
        decoder_checkpoint.write_untrained(decoder_config.VARIANTS["tiny"], self.decoder)
        self.corpus = root / "corpus"
        demo_corpus.write_demo_corpus(str(self.corpus), docs_per_source=40, num_shards=2)
        self._trained = None

    def workdir(self, tmp: pathlib.Path) -> pathlib.Path:
        wd = tmp / "run"
        wd.mkdir(parents=True, exist_ok=True)
        os.symlink(self.corpus, wd / "corpus")
        return wd

    def trained(self) -> pathlib.Path:
        """A 4-step run with checkpoints at steps 2 and 4."""
        if self._trained is None:
            wd = self.workdir(self.root / "trained")
            proc = run("glmvoice-train", train_args(wd, 4))
            if proc.returncode != 0:
                raise RuntimeError("base training run failed:\n" + proc.stderr[-3000:])
            shutil.copytree(wd, self.root / "pristine", symlinks=True)
            self._trained = wd
        return self._trained

    def fresh_trained(self) -> pathlib.Path:
        """The 4-step run as it was, at its own path: the saved input state records the
        absolute shard paths, so a copy elsewhere would resume on 'other' shards."""
        wd = self.trained()
        shutil.rmtree(wd)
        shutil.copytree(self.root / "pristine", wd, symlinks=True)
        return wd


def train_args(wd, steps, *more) -> list[str]:
    args = [f"--config={DEMO}", f"--workdir={wd}", f"--config.total_steps={steps}"]
    args += [f"--config.{k}={v}" for k, v in SMALL.items()]
    return args + list(more)


def _losses(wd) -> dict:
    rows = [json.loads(x) for x in pathlib.Path(wd, "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


# ---------------------------------------------------------------------------------------------
# Builders.


def _train(*more, steps=4):
    return lambda tmp, fx: train_args(fx.workdir(tmp), steps, *more)


def _resume(damage, *more, steps=6, check=None):
    def build(tmp, fx):
        wd = fx.fresh_trained()
        damage(wd)
        return train_args(wd, steps, *more), check

    return build


def _ck(wd):
    return wd / "checkpoints"


def _empty_step(wd):
    shutil.rmtree(_ck(wd) / "4")
    (_ck(wd) / "4").mkdir()


def _no_params(wd):
    shutil.rmtree(_ck(wd) / "4" / "params")


def _truncated_params(wd):
    for f in glob.glob(str(_ck(wd) / "4" / "params" / "ocdbt.process_0" / "d" / "*")):
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)


def _all_damaged(wd):
    _empty_step(wd)
    shutil.rmtree(_ck(wd) / "2" / "params")


def _fell_back(proc, tmp):
    said = "step 4" in proc.stdout and "damaged" in proc.stdout
    return said and (_ck(tmp.parent / "trained" / "run") / "6").exists()


def _add_shard(wd):
    src = wd / "corpus"
    real = pathlib.Path(os.readlink(src))
    os.unlink(src)
    shutil.copytree(real, src)
    first = sorted(glob.glob(str(src / "text" / "*.array_record")))[0]
    shutil.copy(first, str(src / "text" / "extra-00000.array_record"))


def _drop_shard(wd):
    src = wd / "corpus"
    real = pathlib.Path(os.readlink(src))
    os.unlink(src)
    shutil.copytree(real, src)
    os.remove(sorted(glob.glob(str(src / "text" / "*.array_record")))[-1])


def _shard_corpus(kind):
    """A corpus whose text source holds one bad shard."""

    def build(tmp, fx):
        from glmvoice_jax.data import records

        wd = fx.workdir(tmp)
        src = wd / "corpus"
        real = pathlib.Path(os.readlink(src))
        os.unlink(src)
        shutil.copytree(real, src)
        bad = src / "text" / "zz-bad.array_record"
        if kind == "corrupt":
            bad.write_bytes(b"not an array record" * 50)
        elif kind in ("oov", "no_targets"):
            for f in glob.glob(str(src / "speech" / "*.array_record")):
                os.remove(f)
            w = records.ShardWriter(str(src / "speech" / "only.array_record"))
            tokens = np.arange(40) + (5000 if kind == "oov" else 0)
            mask = np.ones(40, bool) if kind == "oov" else np.zeros(40, bool)
            for _ in range(20):
                w.write(records.Example(tokens, mask, "speech", "speech"))
            w.close()
        return train_args(wd, 4)

    return build


def _decoder_dir(tmp, flow: bytes | None = None, yaml_text: str | None = None):
    d = tmp / "release"
    shutil.copytree(FIXTURES / "decoder", d)
    for extra in ("expected", "tokens.jsonl", "README.md"):
        p = d / extra
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    if flow is not None:
        (d / "flow.pt").write_bytes(flow)
    if yaml_text is not None:
        (d / "config.yaml").write_text(yaml_text)
    return d


def _pt_bytes(payload: bytes, members: dict | None = None, compress=zipfile.ZIP_STORED) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
        for k, v in (members or {}).items():
            z.writestr(f"archive/data/{k}", v, compress_type=compress)
    return buf.getvalue()


def _torch_zip_helpers():
    spec = importlib.util.spec_from_file_location(
        "torch_zip_test", REPO / "tests" / "convert" / "io" / "torch_zip_test.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pt_file(tensors_fn, path):
    import pytest

    mod = _torch_zip_helpers()
    mp = pytest.MonkeyPatch()
    try:
        tensors, storages = tensors_fn(mod)
        mod._write_pt(path, mp, tensors, storages)
    finally:
        mp.undo()


def _import_pt(kind):
    def build(tmp, fx):
        tmp.mkdir(parents=True, exist_ok=True)
        if kind == "os.system":
            flow = _pt_bytes(f"cos\nsystem\n(S'touch {tmp}/pwned'\ntR.".encode())
        elif kind == "eval":
            flow = _pt_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
        elif kind == "copyreg":
            flow = _pt_bytes(b"ccopyreg\n_reconstructor\n(cos\nsystem\nN(tR.")
        elif kind == "poison":
            flow = _pt_bytes(
                b"\x80\x02ctorch\nFloatStorage\n}(X\x04\x00\x00\x00nameX\x0b\x00\x00\x00"
                b"HalfStorageub."
            )
        elif kind == "legacy":
            flow = pickle.dumps({"a": 1})
        elif kind == "stride0":

            def t(mod):
                s0 = mod._Storage("FloatStorage", "0", np.ones(1, np.float32))
                return {"w": mod._Tensor(s0, 0, (1 << 14, 1 << 14), (0, 0))}, [s0]

            _pt_file(t, tmp / "x.pt")
            flow = (tmp / "x.pt").read_bytes()
        elif kind == "deflate":

            def t(mod):
                s0 = mod._Storage("FloatStorage", "0", np.zeros(4, np.float32))
                return {"w": mod._Tensor(s0, 0, (4,), (1,))}, []

            _pt_file(t, tmp / "x.pt")
            n = 64 << 20
            with zipfile.ZipFile(tmp / "x.pt") as z:
                pkl = z.read("archive/data.pkl").replace(b"K\x04", b"J" + n.to_bytes(4, "little"))
            flow = _pt_bytes(pkl, {"0": bytes(4 * n)}, zipfile.ZIP_DEFLATED)
        elif kind == "not a zip":
            flow = b"garbage" * 100
        else:
            raise ValueError(kind)
        d = _decoder_dir(tmp, flow=flow)
        return [f"--checkpoint={d}", f"--output={tmp / 'out'}"]

    return build


def _hostile_yaml(tmp, fx):
    tmp.mkdir(parents=True, exist_ok=True)
    text = f'flow: !!python/object/apply:os.system ["touch {tmp}/pwned"]\nhift: {{}}\n'
    d = _decoder_dir(tmp, yaml_text=text)
    return [f"--checkpoint={d}", f"--output={tmp / 'out'}"], _nothing_ran


def _nothing_ran(proc, tmp):
    return not (tmp / "pwned").exists()


def _st_raw(path, header, data: bytes, length=None):
    blob = json.dumps(header).encode() if header is not None else b"{not json"
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob) if length is None else length))
        f.write(blob)
        f.write(data)


def _f32(shape, begin):
    n = int(np.prod(shape)) * 4
    return {"dtype": "F32", "shape": list(shape), "data_offsets": [begin, begin + n]}


def _import_st(kind):
    def build(tmp, fx):
        src = tmp / "src"
        shutil.copytree(FIXTURES / "glm_chatglm", src)
        for extra in ("expected.jsonl", "inputs.jsonl", "README.md"):
            if (src / extra).exists():
                (src / extra).unlink()
        st = src / "model.safetensors"
        if kind == "offsets past the end":
            _st_raw(st, {"a": _f32([8], 0)}, b"\0" * 8)
        elif kind == "huge header length":
            _st_raw(st, {}, b"", 2**60)
        elif kind == "overlapping ranges":
            _st_raw(st, {"a": _f32([4], 0), "b": _f32([4], 8)}, b"\0" * 24)
        elif kind == "header not JSON":
            _st_raw(st, None, b"")
        elif kind == "NaN weights":
            from safetensors.numpy import load_file, save_file

            t = load_file(str(st))
            k = sorted(t)[3]
            t[k] = t[k].copy()
            t[k].flat[0] = np.nan
            save_file(t, str(st))
        elif kind == "missing field":
            cfg = json.loads((src / "config.json").read_text())
            del cfg["num_layers"]
            (src / "config.json").write_text(json.dumps(cfg))
        elif kind == "bad torch_dtype":
            cfg = json.loads((src / "config.json").read_text())
            cfg["torch_dtype"] = "int8"
            (src / "config.json").write_text(json.dumps(cfg))
        elif kind == "missing shard":
            src2 = tmp / "src2"
            shutil.copytree(FIXTURES / "glm_chatglm_sharded", src2)
            os.remove(sorted(glob.glob(str(src2 / "model-*.safetensors")))[-1])
            return [f"--checkpoint={src2}", f"--output={tmp / 'out'}"]
        return [f"--checkpoint={src}", f"--output={tmp / 'out'}"]

    return build


def _jsonl(tmp, name, rows):
    tmp.mkdir(parents=True, exist_ok=True)
    p = tmp / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


def _score(rows, *more, ckpt=None):
    def build(tmp, fx):
        inp = _jsonl(tmp, "in.jsonl", rows)
        return [
            f"--checkpoint={ckpt or fx.lm}",
            f"--input={inp}",
            f"--output={tmp / 'out.jsonl'}",
            "--noprogress",
            *more,
        ]

    return build


def _decode(rows, check=None):
    def build(tmp, fx):
        inp = _jsonl(tmp, "tokens.jsonl", rows)
        return [
            f"--checkpoint={fx.decoder}",
            f"--input={inp}",
            f"--output={tmp / 'out'}",
        ], check

    return build


def _decode_listed(proc, tmp):
    errs = tmp / "out" / "errors.jsonl"
    return errs.exists() and errs.read_text().strip() != ""


def _tokenize(kind):
    import soundfile

    def build(tmp, fx):
        d = tmp / "audio"
        d.mkdir(parents=True)
        shutil.copy(FIXTURES / "whisper_vq" / "audio" / "v0_hi.wav", d)
        if kind == "broken":
            (d / "zz.wav").write_bytes(b"RIFF not really a wav file")
        elif kind == "empty":
            soundfile.write(d / "zz.wav", np.zeros((0,), np.float32), 16000)
        elif kind == "silent":
            soundfile.write(d / "zz.wav", np.zeros((8000,), np.float32), 16000)
        elif kind == "NaN":
            soundfile.write(d / "zz.wav", np.full(8000, np.nan, np.float32), 16000, "FLOAT")
        elif kind == "duplicate id":
            m = _jsonl(tmp, "m.jsonl", [{"id": 1, "audio": "audio/v0_hi.wav"}] * 2)
            return [f"--checkpoint={FIXTURES / 'whisper_vq'}", f"--input={m}"] + [
                f"--output={tmp / 'o.jsonl'}"
            ]
        elif kind == "missing input":
            d = tmp / "nowhere"
        return [
            f"--checkpoint={FIXTURES / 'whisper_vq'}",
            f"--input={d}",
            f"--output={tmp / 'o.jsonl'}",
        ], _tokenize_listed

    return build


def _tokenize_listed(proc, tmp):
    errs = tmp / "o.jsonl.errors.jsonl"
    rows = [json.loads(x) for x in errs.read_text().splitlines()] if errs.exists() else []
    return [r["id"] for r in rows] == ["zz"]


def _chat(*more, decoder=None, wav=None):
    import soundfile

    def build(tmp, fx):
        tmp.mkdir(parents=True, exist_ok=True)
        args = [f"--checkpoint={fx.lm}", f"--speech_tokenizer={FIXTURES / 'whisper_vq'}"]
        args += [f"--speech_decoder={decoder or fx.decoder}", f"--output={tmp / 'o'}"]
        args += ["--max_new_tokens=30", "--max_context=512", "--dtype=float32"]
        if wav == "silent":
            soundfile.write(tmp / "q.wav", np.zeros(8000, np.float32), 16000)
            args.append(f"--input={tmp / 'q.wav'}")
        elif wav == "long":
            soundfile.write(tmp / "q.wav", 0.1 * np.ones(16000 * 60, np.float32), 16000)
            args.append(f"--input={tmp / 'q.wav'}")
        return args + list(more)

    return build


def _chat_other_codebook(tmp, fx):
    from glmvoice_jax.convert.decoder import decoder_checkpoint
    from glmvoice_jax.models.speech_decoder import config as decoder_config

    cfg = decoder_config.VARIANTS["tiny"]
    small = tmp / "dec32"
    tmp.mkdir(parents=True, exist_ok=True)
    decoder_checkpoint.write_untrained(
        dataclasses.replace(cfg, flow=dataclasses.replace(cfg.flow, vocab_size=32)), small
    )
    return _chat(decoder=str(small))(tmp, fx) + [
        f"--input={FIXTURES / 'whisper_vq' / 'audio' / 'v1_fox.wav'}"
    ]


def _export(kind):
    def build(tmp, fx):
        tmp.mkdir(parents=True, exist_ok=True)
        out = tmp / "hf"
        if kind == "exists":
            out.mkdir()
        ck = fx.lm if kind != "missing" else str(tmp / "nope")
        args = [f"--checkpoint={ck}", f"--output={out}", "--format=transformers"]
        return args, _export_ok if kind == "demo" else None

    return build


def _export_ok(proc, tmp):
    cfg = json.loads((tmp / "hf" / "config.json").read_text())
    ids = [cfg["pad_token_id"], cfg["bos_token_id"]] + [cfg["eos_token_id"]]
    return all(0 <= i < cfg["vocab_size"] for i in ids) and (tmp / "hf" / "tokenizer.json").exists()


# Process-level cases: (tmp, fx) -> verdict string.


def _sigterm_midrun(tmp, fx):
    wd = fx.workdir(tmp)
    proc = subprocess.Popen(
        _cmd("glmvoice-train", train_args(wd, 400)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (wd / "metrics.jsonl").exists():
        time.sleep(0.5)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    steps = [int(p) for p in os.listdir(_ck(wd)) if p.isdigit()] if _ck(wd).exists() else []
    ok = proc.returncode == 0 and steps and "Traceback" not in err
    return "held" if ok else f"exit {proc.returncode}, steps {steps}", err


def _sigterm_startup(tmp, fx):
    wd = fx.workdir(tmp)
    proc = subprocess.Popen(
        _cmd("glmvoice-train", train_args(wd, 4)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    ok = proc.returncode == 0 and "SIGTERM during start-up" in err and "Traceback" not in err
    return "held" if ok else f"exit {proc.returncode}", err


def _sigkill_resume(tmp, fx):
    ref = fx.workdir(tmp / "ref")
    p = run("glmvoice-train", train_args(ref, 6))
    if p.returncode:
        return f"reference run exit {p.returncode}", p.stderr
    wd = fx.workdir(tmp / "killed")
    p = run("glmvoice-train", train_args(wd, 6, "--config.debug.sigkill_at_step=5"))
    killed = p.returncode == -9
    p = run("glmvoice-train", train_args(wd, 6))
    a, b = _losses(ref), _losses(wd)
    same = p.returncode == 0 and all(abs(a[s] - b[s]) <= 1e-5 * abs(a[s]) for s in (5, 6))
    return ("held" if killed and same else f"killed {killed}, same losses {same}"), p.stderr


def _mfu(tmp, fx):
    rows = [json.loads(x) for x in (fx.trained() / "metrics.jsonl").read_text().splitlines()]
    mfu = [r["mfu"] for r in rows if "mfu" in r]
    return ("held" if all(0 < m < 1 for m in mfu) else f"mfu {mfu}"), ""


def _libtpu(tmp, fx):
    if importlib.util.find_spec("libtpu") is None:
        return "not run (no libtpu; tests/faults/libtpu_test.py)", ""
    inp = _jsonl(tmp, "in.jsonl", [{"ids": [1, 2, 3]}])
    env = {k: v for k, v in _env().items() if k != "JAX_PLATFORMS"}
    p = subprocess.run(
        _cmd("glmvoice-score", [f"--checkpoint={fx.lm}", f"--input={inp}"])
        + [f"--output={tmp / 'o.jsonl'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    ok = p.returncode == 0 and "TPU_WORKER_HOSTNAMES" not in p.stderr
    return ("held" if ok else "libtpu errors on stderr"), p.stderr


SOURCES = ("text", "speech", "interleaved")
TB = "TRACEBACK (clear last line under 20-30 lines)"
CASES: list[Case] = [
    # --- glmvoice-train: config and data errors (finding 6) -----------------------------------
    Case("glob matches nothing", "glmvoice-train",
         lambda tmp, fx: train_args(tmp / "run", 4), needle="matches no", before=TB),
    Case("negative batch", "glmvoice-train", _train("--config.input.global_batch_size=-4"),
         needle="global_batch_size", before=TB),
    Case("mesh needs more devices", "glmvoice-train", _train("--config.mesh.fsdp=64"),
         needle="64", before=TB),
    Case("unwritable workdir", "glmvoice-train",
         lambda tmp, fx: (tmp.mkdir(parents=True), (tmp / "f").write_text("x"),
                          train_args(tmp / "f" / "run", 4))[-1], needle="f", before=TB),
    Case("zero weights", "glmvoice-train",
         _train(*(f"--config.input.sources.{s}.weight=0" for s in SOURCES)),
         needle="sum to 0", before=TB),
    Case("negative weight", "glmvoice-train", _train("--config.input.sources.text.weight=-1"),
         needle="weight", before=TB),
    Case("bad dtype", "glmvoice-train", _train("--config.model.param_dtype=float7"),
         needle="float7", before=TB),
    Case("init_from missing", "glmvoice-train", _train("--config.init_from=/nonexistent/ckpt"),
         needle="/nonexistent/ckpt", before=TB),
    Case("unknown config key", "glmvoice-train", _train("--config.nope=1"), needle="nope",
         before="clear error"),
    Case("config file missing", "glmvoice-train",
         lambda tmp, fx: [f"--config={tmp}/x.py", f"--workdir={tmp}/run"], needle="x.py",
         before=TB),
    Case("bad config :ARGS value", "glmvoice-train",
         lambda tmp, fx: train_args(fx.workdir(tmp), 4)[1:]
         + [f"--config={REPO}/configs/demo_tiny.py:corpus=nope"], needle="corpus", before=TB),
    Case("seq_len 0", "glmvoice-train", _train("--config.input.seq_len=0"), needle="seq_len",
         before=TB),
    Case("grad_accum_steps 0", "glmvoice-train", _train("--config.optim.grad_accum_steps=0"),
         needle="grad_accum", before=TB),
    Case("override of the wrong type", "glmvoice-train",
         _train("--config.input.global_batch_size=many"), needle="global_batch_size", before=TB),
    Case("corrupt shard", "glmvoice-train", _shard_corpus("corrupt"), needle="zz-bad",
         before="clear error (named)"),
    Case("out-of-vocabulary ids", "glmvoice-train", _shard_corpus("oov"),
         needle="only.array_record", before="clear error (named)"),
    Case("source with no target tokens (finding 5)", "glmvoice-train",
         _shard_corpus("no_targets"), needle="no target tokens",
         before="SILENT: loss 0.0, exit 0"),
    # --- resume (findings 1, 4) ---------------------------------------------------------------
    Case("resume after a shard is added (finding 1)", "glmvoice-train", _resume(_add_shard),
         needle="added 1", before="SILENT: exit 0 on another document order"),
    Case("resume after a shard is removed (finding 1)", "glmvoice-train", _resume(_drop_shard),
         needle="removed 1", before="SILENT: exit 0 on another document order"),
    Case("resume with allow_shard_change", "glmvoice-train",
         _resume(_add_shard, "--config.input.allow_shard_change=True",
                 check=lambda p, t: (_ck(t.parent / "trained" / "run") / "6").exists()),
         expect="held", before="(switch is new)"),
    Case("damaged latest step: empty directory (finding 4)", "glmvoice-train",
         _resume(_empty_step, check=_fell_back), expect="held", before=TB + ", no fallback"),
    Case("damaged latest step: params missing (finding 4)", "glmvoice-train",
         _resume(_no_params, check=_fell_back), expect="held", before=TB + ", no fallback"),
    Case("damaged latest step: params truncated (finding 4)", "glmvoice-train",
         _resume(_truncated_params, check=_fell_back), expect="held",
         before=TB + ", no fallback"),
    Case("no intact step left", "glmvoice-train", _resume(_all_damaged), needle="intact",
         before=TB),
    Case("resume with another model shape", "glmvoice-train",
         _resume(lambda wd: None, "--config.model.embed_dim=64"), needle="embed",
         before="TRACEBACK (raw)"),
    Case("init_from a speech-decoder checkpoint", "glmvoice-train",
         lambda tmp, fx: train_args(fx.workdir(tmp), 4, f"--config.init_from={fx.decoder}"),
         needle="DecoderConfig", before="TRACEBACK (raw)"),
    # --- process faults ----------------------------------------------------------------------
    Case("kill -9 mid-run, resume", "glmvoice-train", _sigkill_resume, expect="process",
         before="held"),
    Case("SIGTERM mid-run", "glmvoice-train", _sigterm_midrun, expect="process", before="held"),
    Case("SIGTERM during start-up", "glmvoice-train", _sigterm_startup, expect="process",
         before="exit 143, no message"),
    Case("MFU of the first logged step", "glmvoice-train", _mfu, expect="process",
         before="SILENT: mfu 301 logged"),
    # --- glmvoice-import: pickles, zips, YAML, safetensors (findings 2, 3, 6, 8) --------------
    Case("pickle naming os.system", "glmvoice-import", _import_pt("os.system"),
         needle="refusing to load os.system", before="clear error"),
    Case("pickle naming builtins.eval", "glmvoice-import", _import_pt("eval"),
         needle="builtins.eval", before="clear error"),
    Case("pickle naming copyreg._reconstructor", "glmvoice-import", _import_pt("copyreg"),
         needle="copyreg", before="clear error"),
    Case("pickle that mutates a storage stand-in (finding 2)", "glmvoice-import",
         _import_pt("poison"), needle="refusing a pickle", before="SILENT: NaN weights later"),
    Case("legacy (non-zip) .pt", "glmvoice-import", _import_pt("legacy"), needle="legacy",
         before="clear error"),
    Case(".pt that is not a zip", "glmvoice-import", _import_pt("not a zip"), needle="flow.pt",
         before="clear error"),
    Case("stride-0 tensor over one element (finding 3)", "glmvoice-import", _import_pt("stride0"),
         needle="declares", before="1.8 GB allocated"),
    Case("deflated storage bomb (finding 3)", "glmvoice-import", _import_pt("deflate"),
         needle="declares", before="2.3 GB RSS"),
    Case("hostile YAML tag in config.yaml", "glmvoice-import", _hostile_yaml, needle="YAML",
         before="clear error"),
    Case("safetensors offsets past the end", "glmvoice-import",
         _import_st("offsets past the end"), needle="model.safetensors",
         before="error without the file name"),
    Case("safetensors huge header length", "glmvoice-import", _import_st("huge header length"),
         needle="model.safetensors", before="error without the file name"),
    Case("safetensors overlapping ranges", "glmvoice-import", _import_st("overlapping ranges"),
         needle="model.safetensors", before="error without the file name"),
    Case("safetensors header not JSON", "glmvoice-import", _import_st("header not JSON"),
         needle="model.safetensors", before="—"),
    Case("NaN weights (finding 8)", "glmvoice-import", _import_st("NaN weights"),
         needle="NaN", before="SILENT: imported"),
    Case("config.json field missing", "glmvoice-import", _import_st("missing field"),
         needle="num_layers", before="clear error"),
    Case("config.json bad torch_dtype", "glmvoice-import", _import_st("bad torch_dtype"),
         needle="torch_dtype", before="clear error"),
    Case("index names a missing shard", "glmvoice-import", _import_st("missing shard"),
         needle="model-", before="clear error"),
    # --- glmvoice-export (finding 7) -----------------------------------------------------------
    Case("export of a demo-layout checkpoint made here (finding 7)", "glmvoice-export",
         _export("demo"), expect="held",
         before="exit 0 but from_pretrained fails (pad id 151329 > vocab)"),
    Case("export over an existing --output", "glmvoice-export", _export("exists"),
         needle="already exists", before="clear error"),
    Case("export of a missing checkpoint", "glmvoice-export", _export("missing"), needle="nope",
         before="—"),
    # --- glmvoice-score -----------------------------------------------------------------------
    Case("score: id outside the vocabulary", "glmvoice-score", _score([{"ids": [1, 5000]}]),
         needle="outside the vocabulary", before="clear error"),
    Case("score: line not JSON", "glmvoice-score", _score(["{oops"]), needle="in.jsonl:1",
         before="clear error"),
    Case("score: empty sequence", "glmvoice-score", _score([{"ids": []}]), needle="empty",
         before="clear error"),
    Case("score: text without a tokenizer", "glmvoice-score", _score([{"text": "hi"}]),
         needle="tokenizer", before="clear error"),
    Case("score: sequence over the length cap (finding 8)", "glmvoice-score",
         _score([{"ids": [1] * 200_000}], "--attention_impl=chunked"), needle="131072",
         before="(no cap)"),
    Case("score: xla attention past 8 GiB", "glmvoice-score",
         _score([{"ids": [1] * 40_000}], "--attention_impl=xla"), needle="attention_impl=chunked",
         before="(no cap)"),
    Case("score: missing checkpoint", "glmvoice-score", _score([{"ids": [1, 2]}], ckpt="/nope"),
         needle="/nope", before="clear error"),
    Case("score on CPU with libtpu installed (finding 8)", "glmvoice-score", _libtpu,
         expect="process", before="libtpu errors on stderr, exit 0"),
    # --- glmvoice-decode ----------------------------------------------------------------------
    Case("decode: line over 2000 tokens (finding 8)", "glmvoice-decode",
         _decode([{"id": "a", "tokens": [1] * 5000}], check=_decode_listed), expect="held", rc=2,
         before="47 GB allocation"),
    Case("decode: token outside the codebook", "glmvoice-decode",
         _decode([{"id": "a", "tokens": [1, 9999]}], check=_decode_listed), expect="held", rc=2,
         before="listed"),
    Case("decode: line not JSON", "glmvoice-decode", _decode(["{oops"], check=_decode_listed),
         expect="held", rc=2, before="listed"),
    # --- glmvoice-tokenize --------------------------------------------------------------------
    Case("tokenize: unreadable file", "glmvoice-tokenize", _tokenize("broken"), expect="held",
         before="listed"),
    Case("tokenize: empty file", "glmvoice-tokenize", _tokenize("empty"), expect="held",
         before="listed"),
    Case("tokenize: silent file", "glmvoice-tokenize", _tokenize("silent"), expect="held",
         before="listed"),
    Case("tokenize: NaN samples", "glmvoice-tokenize", _tokenize("NaN"), expect="held",
         before="listed"),
    Case("tokenize: manifest with a duplicate id", "glmvoice-tokenize", _tokenize("duplicate id"),
         needle="duplicate id", before="clear error"),
    Case("tokenize: input missing", "glmvoice-tokenize", _tokenize("missing input"),
         needle="nowhere", before="clear error"),
    # --- glmvoice-chat ------------------------------------------------------------------------
    Case("chat: silent question", "glmvoice-chat", _chat(wav="silent"), needle="silent",
         before="clear error"),
    Case("chat: --input and --text", "glmvoice-chat",
         _chat("--text=hi", f"--input={FIXTURES / 'whisper_vq' / 'audio' / 'v1_fox.wav'}"),
         needle="exactly one", before="clear error"),
    Case("chat: decoder of another codebook", "glmvoice-chat", _chat_other_codebook,
         needle="32 codes", before="clear error"),
    Case("chat: question longer than the context (finding 8)", "glmvoice-chat", _chat(wav="long"),
         needle="room for", before="clear error (after decoding)"),
    Case("chat: --max_context 10^8 (finding 8)", "glmvoice-chat",
         _chat("--text=hi", "--max_context=100000000"), needle="max_context",
         before="(no cap)"),
    # --- other tools --------------------------------------------------------------------------
    Case("data-stats: glob matches nothing", "glmvoice-data-stats",
         lambda tmp, fx: [f"--config={DEMO}", f"--data_root={tmp}/run"], needle="matches no",
         before=TB),
    Case("aot: unknown topology", "glmvoice-aot",
         lambda tmp, fx: [f"--config={DEMO}", "--topology=v9z-3"],
         needle="v9z-3" if importlib.util.find_spec("libtpu") else "libtpu", before=TB),
    Case("eval: unknown task", "glmvoice-eval",
         lambda tmp, fx: [f"--checkpoint={fx.lm}", "--task=nope", f"--output={tmp}/o"],
         needle="nope", before="—"),
    Case("ablate: config file missing", "glmvoice-ablate",
         lambda tmp, fx: [f"--config={tmp}/x.py", f"--workdir={tmp}/w"], needle="x.py", before=TB),
]  # fmt: skip


def verdict(case: Case, proc, ok) -> str:
    err = proc.stderr
    if "Traceback (most recent call last)" in err:
        return "TRACEBACK"
    if case.expect == "error":
        if proc.returncode == 0:
            return "SILENT (exit 0)"
        lines = [ln for ln in err.splitlines() if ": error: " in ln]
        if proc.returncode != 1 or not lines:
            return f"exit {proc.returncode}"
        return "clear error" if case.needle in lines[-1] else "error (needle missing)"
    if proc.returncode != case.rc:
        return f"exit {proc.returncode}"
    return "held" if ok else "check failed"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="regex of the case names to run")
    ap.add_argument("--out", default="")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    root = pathlib.Path(tempfile.mkdtemp(prefix="faults-"))
    fx = Fixtures(root)
    rows, tracebacks = [], 0
    cases = [c for c in CASES if re.search(args.only, c.name)]
    for n, case in enumerate(cases, 1):
        tmp = root / f"case{n:02d}"
        t0 = time.time()
        try:
            if case.expect == "process":
                tmp.mkdir(parents=True)
                v, err = case.build(tmp, fx)
                line = ""
            else:
                built = case.build(tmp, fx)
                argv, check = built if isinstance(built, tuple) else (built, None)
                proc = run(case.tool, argv)
                ok = check(proc, tmp) if (check and proc.returncode == case.rc) else check is None
                v, err = verdict(case, proc, ok), proc.stderr
                lines = [ln for ln in err.splitlines() if ": error: " in ln]
                line = lines[-1] if lines else ""
        except Exception as e:  # noqa: BLE001 - a broken case is reported, not fatal
            v, err, line = f"case failed to run: {e!r}"[:200], "", ""
        if "TRACEBACK" in v and case.expect == "error":
            tracebacks += 1
        rows.append((case, v, line))
        print(f"[{n}/{len(cases)}] {case.name}: {v} ({time.time() - t0:.0f} s) {line[:160]}",
              flush=True)  # fmt: skip
        if v not in ("clear error", "held") and err:
            print("    " + err[-1500:].replace("\n", "\n    "), flush=True)
    table = ["| # | case | tool | before (8973d70, issue 17) | now | message (now) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for n, (case, v, line) in enumerate(rows, 1):
        msg = line.split(": error: ", 1)[-1][:140].replace("|", "\\|") if line else ""
        table.append(f"| {n} | {case.name} | {case.tool} | {case.before} | {v} | {msg} |")
    counts = {}
    for _, v, _ in rows:
        counts[v] = counts.get(v, 0) + 1
    summary = f"{len(rows)} cases: {counts}; raw tracebacks for user errors: {tracebacks}"
    text = "\n".join(table) + "\n\n" + summary + "\n"
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
