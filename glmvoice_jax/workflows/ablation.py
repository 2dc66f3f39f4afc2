r"""Tokenizer-bitrate sweeps: one command from tokenizer configs to a comparison report.

A sweep config (configs/ablation_bitrates.py) lists cells; every cell runs these stages in its
own sub-workdir ``SWEEP/cells/CELL``, each recorded in ``stages/STAGE.json`` when it finishes, so
a killed sweep continues at the first unfinished stage (the trainers inside a stage resume from
their own checkpoints, the corpus jobs skip finished shards):

  tokenizer   train the cell's tokenizer with the speech-tokenizer trainer (or use the checkpoint
              the cell names); its held-out CER/WER from the trainer's final evaluation
  tokenize    the corpus (train + held-out) with it: glmvoice-tokenize's job; tokens per second
              of audio, codebook usage and perplexity over the held-out tokens
  records     speech-only, ASR and TTS records (issue D's jobs) + text records, in ``demo<K>``
  lm          the same GLM with the same steps x tokens per step in every cell
  lm_eval     validation loss per modality, speech nats per second of audio, spoken StoryCloze
              (glmvoice_jax/evals/story_cloze.py), ASR through the LM (CER of its transcripts), TTS
              through the LM (CER of the tokenizer's ASR head on the LM's speech tokens)
  decoder     a speech decoder (flow matching, trainers/speech_decoder.py) trained on the cell's
              own tokens, the same config and steps in every cell; or the checkpoint the cell
              names in ``decoder``, refused when it was trained on another tokenizer
  reconstruction  held-out tokens -> decoder -> audio, scored against the original audio:
              PESQ (wide band), STOI, MCD, and Recon CER/WER through one ASR judge for every
              cell (``evals.judge``; ablation_reconstruction.py)

A cell whose tokenizer config fails validation is reported "invalid" and skipped; a stage that
raises marks the cell "failed" with its error (the others go on). ablation_report.py writes
``report.md``, ``report.json``, ``report.png`` and a TensorBoard run per cell.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence

import ml_collections as mlc
import numpy as np
import soundfile

from glmvoice_jax import checkpoint, config_lib, files
from glmvoice_jax import progress as progress_lib
from glmvoice_jax.corpora import espeak_corpus, speech_records, text_records
from glmvoice_jax.data import prompts, token_layout
from glmvoice_jax.evals import asr_metrics, story_cloze
from glmvoice_jax.inference import sampling, scoring, tokenizing_job, transcription
from glmvoice_jax.trainers import lm, speech_decoder, speech_tokenizer, speech_tokenizer_setup
from glmvoice_jax.workflows import ablation_reconstruction as recon
from glmvoice_jax.workflows import ablation_report, demo_sources

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGES = ("tokenizer", "tokenize", "records", "lm", "lm_eval", "decoder", "reconstruction")


class CellInvalid(ValueError):
    """The cell's tokenizer config does not validate: the cell is skipped, not failed."""


class StageStopped(RuntimeError):
    """A trainer saved and returned before its last step (SIGTERM / SIGINT).

    The stage is not done, so it gets no marker; the sweep stops and a rerun resumes the stage's
    trainer from its checkpoints.
    """


def check_complete(workdir: str, total: int, what: str) -> None:
    """Raises StageStopped when the newest intact checkpoint in ``workdir`` is short of ``total``.

    The checkpoint, not the returned metrics: a trainer resumed at its last step logs nothing.
    """
    try:
        _, step = checkpoint.resolve(workdir)
    except FileNotFoundError:
        step = 0
    if step < total:
        raise StageStopped(
            f"{what} stopped at step {step} of {total} (a stop signal); run the same command "
            "again to resume it"
        )


def resolve(spec: str) -> str:
    """A config spec ``path[:arg]``; a relative path is tried from the CWD, then the repo root."""
    path, sep, arg = spec.partition(":")
    if not os.path.isabs(path) and not os.path.exists(path):
        path = os.path.join(REPO, path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {spec.partition(':')[0]} does not exist")
    return path + sep + arg


def apply_overrides(config: mlc.ConfigDict, overrides: Sequence[str], what: str) -> None:
    """``key.sub=value`` strings onto ``config`` (values parsed as Python literals, else str)."""
    keys = [o.partition("=")[0] for o in overrides]
    for o in overrides:
        if "=" not in o:
            raise CellInvalid(f"{what}: override {o!r} must be key=value")
    try:
        config_lib.check_override_keys(config, keys)
    except ValueError as e:
        raise CellInvalid(f"{what}: {e}") from None
    for o in overrides:
        key, _, raw = o.partition("=")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value


def _read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _audio_seconds(manifest: str) -> dict[str, float]:
    """Seconds per manifest id (``seconds``, else ``num_samples / sample_rate``, else the file)."""
    base = os.path.dirname(os.path.abspath(manifest))
    out = {}
    for row in _read_jsonl(manifest):
        if "seconds" in row:
            out[str(row["id"])] = float(row["seconds"])
        elif "num_samples" in row and "sample_rate" in row:
            out[str(row["id"])] = row["num_samples"] / row["sample_rate"]
        else:
            out[str(row["id"])] = soundfile.info(os.path.join(base, row["audio"])).duration
    return out


def _last_metrics(workdir: str, keys: Sequence[str]) -> dict[str, float]:
    """The last logged value of each key in a trainer's metrics.jsonl."""
    out: dict[str, float] = {}
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
        for row in _read_jsonl(path):
            out.update({k: row[k] for k in keys if k in row})
    return out


class Sweep:
    """Runs a sweep config in ``workdir``; ``run()`` returns the per-cell results."""

    def __init__(self, config: mlc.ConfigDict, workdir: str, log: Callable[[str], None] = print):
        if "://" in workdir:
            raise ValueError(
                f"--workdir {workdir!r}: the sweep runs the offline corpus jobs, which write local "
                "files; give a local or mounted shared path (e.g. a GCSFuse or Filestore mount)"
            )
        self.config = config
        self.workdir = os.path.abspath(workdir)
        self.log = log
        self.manifests: dict[str, str] = {}

    # -- shared inputs ---------------------------------------------------------------------------

    def corpus(self) -> dict[str, str]:
        """{"train", "heldout"} manifests: the configured ones, or the espeak corpus."""
        c = self.config.corpus
        if c.train_manifest or c.heldout_manifest:
            for split, path in (("train", c.train_manifest), ("heldout", c.heldout_manifest)):
                if not path or not os.path.exists(path):
                    raise FileNotFoundError(
                        f"corpus.{split}_manifest {path!r} does not exist; give both manifests "
                        "or neither (the espeak-ng corpus)"
                    )
            return {"train": c.train_manifest, "heldout": c.heldout_manifest}
        if c.espeak_sentences not in espeak_corpus.SENTENCE_SETS:
            raise ValueError(
                f"corpus.espeak_sentences {c.espeak_sentences!r} is not a bundled sentence set; "
                f"choose one of {sorted(espeak_corpus.SENTENCE_SETS)}"
            )
        return espeak_corpus.make_corpus(
            c.espeak_dir.replace("{sweep}", self.workdir),
            max_sentences=c.espeak_max_sentences or None,
            variants_per_sentence=1,
            sentences_path=espeak_corpus.SENTENCE_SETS[c.espeak_sentences],
        )

    def text_docs(self) -> str:
        """The text documents of the LM's text share (and its held-out text loss)."""
        c = self.config.corpus
        if c.text:
            if not os.path.exists(c.text):
                raise FileNotFoundError(f"corpus.text {c.text} does not exist")
            return c.text
        path = os.path.join(self.workdir, "text", "docs.jsonl")
        if not os.path.exists(path):
            docs = demo_sources.bundled_text_docs(c.num_text_docs, seed=self.config.seed)
            files.write_jsonl(path, ({"id": f"d{i}", "text": t} for i, t in enumerate(docs)))
        return path

    # -- the sweep --------------------------------------------------------------------------------

    def run(self) -> list[dict]:
        start = time.perf_counter()
        self.manifests = self.corpus()
        self.seconds = {s: _audio_seconds(m) for s, m in self.manifests.items()}
        self.text_path = self.text_docs()
        names = self.cell_order()
        done = sum(
            os.path.exists(os.path.join(self.workdir, "cells", c, "stages", f"{s}.json"))
            for c in names
            for s in STAGES
        )
        results = []
        # One bar over cells x stages: its ETA is the sweep's (stages differ in length, so it
        # settles after the first cell).
        self.bar = progress_lib.bar(len(names) * len(STAGES), "sweep", "stage", initial=done)
        with self.bar:
            for n, name in enumerate(names, 1):
                try:
                    results.append(self.run_cell(name, n, len(names)))
                except StageStopped as e:
                    self.log(f"[sweep] {e}")
                    return results
                ablation_report.write(self.workdir, results, self.config)
        self.log(f"[sweep] done in {(time.perf_counter() - start) / 60:.1f} min")
        return results

    def cell_order(self) -> list[str]:
        """The cells in config order, the judge's cell first (its tokenizer judges the others)."""
        names = list(self.config.cells.keys())
        spec = self.config.evals.judge
        if spec.startswith(recon.JUDGE_CELL):
            cell = spec[len(recon.JUDGE_CELL) :]
            if cell not in names:
                raise ValueError(
                    f"evals.judge {spec!r} names no cell of this sweep ({names}); name one of "
                    "them or a tokenizer checkpoint (the same judge scores every cell)"
                )
            names.remove(cell)
            names.insert(0, cell)
        elif not os.path.exists(spec):
            raise FileNotFoundError(
                f"evals.judge {spec!r} is neither 'cell:NAME' nor an existing tokenizer checkpoint"
            )
        return names

    def run_cell(self, name: str, n: int, total: int) -> dict:
        cell_dir = os.path.join(self.workdir, "cells", name)
        result: dict = {"cell": name, "status": "ok", "stages": {}}
        t0 = time.perf_counter()
        for k, stage in enumerate(STAGES, 1):
            marker = os.path.join(cell_dir, "stages", f"{stage}.json")
            if os.path.exists(marker):
                with open(marker) as f:
                    result["stages"][stage] = json.load(f)
                continue
            self.log(f"[sweep] cell {n}/{total} {name} · stage {k}/{len(STAGES)} {stage}")
            s0 = time.perf_counter()
            try:
                out = getattr(self, f"stage_{stage}")(name, cell_dir, result["stages"])
            except StageStopped:
                raise  # not a failure of the cell: the whole sweep stops, resumable
            except CellInvalid as e:
                result.update(status="invalid", error=str(e), failed_stage=stage)
                self.log(f"[sweep] cell {name}: invalid config, skipped: {e}")
                break
            except Exception as e:  # noqa: BLE001 - a crashed cell is reported, others go on
                os.makedirs(cell_dir, exist_ok=True)
                with open(os.path.join(cell_dir, "error.txt"), "w") as f:
                    f.write(traceback.format_exc())
                result.update(status="failed", error=f"{type(e).__name__}: {e}", failed_stage=stage)
                self.log(f"[sweep] cell {name}: stage {stage} failed: {type(e).__name__}: {e}")
                break
            out["seconds"] = round(time.perf_counter() - s0, 1)
            files.write_json(marker, out, default=float)
            self.bar.update(1)
            result["stages"][stage] = out
            self.log(f"[sweep]   {stage} done in {out['seconds']:.0f} s")
            if self.config.debug.kill_after == f"{name}/{stage}":
                os.kill(os.getpid(), signal.SIGKILL)  # tests: a kill between stages
        result["seconds"] = round(sum(s.get("seconds", 0.0) for s in result["stages"].values()), 1)
        result["wall_this_run"] = round(time.perf_counter() - t0, 1)
        return result

    # -- stages ---------------------------------------------------------------------------------

    def tokenizer_config(self, name: str) -> mlc.ConfigDict:
        cell = self.config.cells[name]
        try:
            config = config_lib.load_config_file(resolve(cell.tokenizer))
        except FileNotFoundError as e:
            raise CellInvalid(f"cell {name}: {e}") from None
        apply_overrides(config, list(self.config.tokenizer.overrides), f"cell {name}")
        apply_overrides(config, list(cell.overrides), f"cell {name}")
        if self.config.tokenizer.steps:
            config.total_steps = int(self.config.tokenizer.steps)
        config.input.espeak_corpus_dir = ""
        config.input.train_manifest = self.manifests["train"]
        config.input.heldout_manifest = self.manifests["heldout"]
        config.evals.every_steps = config.total_steps  # the final held-out CER
        config.ckpt.every_steps = min(config.ckpt.every_steps, config.total_steps)
        config.metrics.console = False
        try:
            config_lib.validate(config)
        except ValueError as e:
            raise CellInvalid(f"cell {name}: {e}") from None
        return config

    def stage_tokenizer(self, name: str, cell_dir: str, done: dict) -> dict:
        cell = self.config.cells[name]
        if cell.checkpoint:
            ckpt = cell.checkpoint
            cfg = checkpoint.model_config_from_meta(checkpoint.read_meta(ckpt))
            evals = {}
        else:
            config = self.tokenizer_config(name)
            cfg = config_lib.tokenizer_model_config(config)
            ckpt = os.path.join(cell_dir, "tokenizer")
        if cell.decoder:  # before the tokenizer trains: a mismatched decoder fails early
            try:
                recon.check_decoder(cell.decoder, cfg.codebook_size, cfg.token_rate_hz, name)
            except (ValueError, FileNotFoundError) as e:
                raise CellInvalid(str(e)) from None
        if not cell.checkpoint:
            self.log(f"[sweep]   {speech_tokenizer_setup.banner(config, cfg).splitlines()[0]}")
            speech_tokenizer.train(config, ckpt)
            check_complete(ckpt, config.total_steps, f"cell {name}: the tokenizer")
            evals = _last_metrics(
                ckpt, ("eval_cer", "eval_wer", "codebook_usage", "codebook_perplexity", "step")
            )
        return {
            "checkpoint": ckpt,
            "frame_rate_hz": cfg.token_rate_hz,
            "codebook_size": cfg.codebook_size,
            "bitrate_bps": cfg.bitrate_bps,
            **{f"train_{k}": v for k, v in evals.items()},
        }

    def stage_tokenize(self, name: str, cell_dir: str, done: dict) -> dict:
        ckpt = done["tokenizer"]["checkpoint"]
        k = done["tokenizer"]["codebook_size"]
        out: dict = {}
        for split, manifest in self.manifests.items():
            path = os.path.join(cell_dir, "tokens", f"{split}.jsonl")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tokenizing_job.tokenize_files(ckpt, manifest, path, log=lambda s: None)
            out[f"{split}_tokens"] = path
        rows = _read_jsonl(out["heldout_tokens"])
        counts = np.bincount(np.concatenate([np.asarray(r["tokens"]) for r in rows]), minlength=k)
        p = counts / counts.sum()
        secs = sum(self.seconds["heldout"][r["id"]] for r in rows)
        out.update(
            heldout_codebook_usage=float((counts > 0).mean()),
            heldout_codebook_perplexity=float(np.exp(-np.sum(p[p > 0] * np.log(p[p > 0])))),
            tokens_per_second=float(counts.sum() / secs),
        )
        return out

    def layout_name(self, done: dict) -> str:
        return f"demo{done['tokenizer']['codebook_size']}"

    def stage_records(self, name: str, cell_dir: str, done: dict) -> dict:
        layout = self.layout_name(done)
        corpus = os.path.join(cell_dir, "corpus")
        common = dict(layout=layout, num_shards=2, process_index=0, process_count=1)
        text_records.write_text_records(
            self.text_path,
            os.path.join(corpus, "text"),
            tokenizer="bytes",
            progress=False,
            **common,
        )
        tokens = done["tokenize"]["train_tokens"]
        for kind, folder in (("speech", "speech_only"), ("asr", "asr"), ("tts", "tts")):
            speech_records.write_speech_records(
                tokens,
                os.path.join(corpus, folder),
                kind=kind,
                source=folder,
                transcripts=None if kind == "speech" else self.manifests["train"],
                tokenizer=None if kind == "speech" else "bytes",
                progress=False,
                **common,
            )
        return {"corpus": corpus, "layout": layout}

    def stage_lm(self, name: str, cell_dir: str, done: dict) -> dict:
        c = self.config.lm
        config = config_lib.load_config_file(resolve(c.config))
        root = done["records"]["corpus"]
        sources = {
            "text": dict(paths=f"{root}/text/*.array_record", weight=0.3),
            "speech_only": dict(paths=f"{root}/speech_only/*.array_record", weight=0.3),
            "asr_tts": dict(
                paths=[f"{root}/asr/*.array_record", f"{root}/tts/*.array_record"], weight=0.4
            ),
        }
        config.input.sources = sources
        layout = token_layout.get(done["records"]["layout"])
        config.tokens.layout = layout.name
        config.model.vocab_size = layout.vocab_size
        config.total_steps = int(c.steps)
        config.metrics.console = False
        config.seed = self.config.seed
        apply_overrides(config, list(c.overrides), f"cell {name} (lm)")
        config_lib.validate(config)
        lm_dir = os.path.join(cell_dir, "lm")
        summary = lm.train(config, lm_dir)
        check_complete(lm_dir, config.total_steps, f"cell {name}: the LM")
        tokens = config.total_steps * config.input.global_batch_size * config.input.seq_len
        return {
            "checkpoint": lm_dir,
            "steps": config.total_steps,
            "tokens": tokens,
            "final_loss": summary.get("loss"),
            **_last_metrics(lm_dir, ("text_loss", "speech_loss")),
        }

    def stage_lm_eval(self, name: str, cell_dir: str, done: dict) -> dict:
        e = self.config.evals
        lm_ckpt = done["lm"]["checkpoint"]
        layout = token_layout.get(done["records"]["layout"])
        texts = {str(r["id"]): r["text"] for r in _read_jsonl(self.manifests["heldout"])}
        rows = _read_jsonl(done["tokenize"]["heldout_tokens"])[: e.heldout_utterances]
        codes = [np.asarray(r["tokens"], np.int32) for r in rows]
        refs = [texts[str(r["id"])] for r in rows]
        scorer = scoring.Scorer(lm_ckpt, max_tokens_per_batch=4096)
        out: dict = {}
        # Speech-only documents: nats per speech token and per second of audio.
        docs = [prompts.speech(c, layout, source="eval").tokens for c in codes]
        lps = scorer.score(docs)
        speech_nats = [-float(lp[len(layout.bos_ids) :].sum()) for lp in lps]  # codes + <eoa>
        secs = sum(self.seconds["heldout"][str(r["id"])] for r in rows)
        n_speech = sum(len(c) + 1 for c in codes)
        out["speech_loss_per_token"] = sum(speech_nats) / n_speech
        out["speech_nats_per_second"] = sum(speech_nats) / secs
        # Text: held-out transcripts as text documents (nats per byte).
        tdocs = [prompts.text(list(t.encode("utf-8")), layout, source="eval").tokens for t in refs]
        tl = scorer.score(tdocs)
        out["text_loss_per_token"] = -sum(float(lp.sum()) for lp in tl) / sum(len(lp) for lp in tl)
        # ASR / TTS through the LM, with the pretraining templates (prompts.py).
        out.update(self._asr_tts(lm_ckpt, done["tokenizer"]["checkpoint"], codes, refs, layout))
        # Spoken StoryCloze.
        modes = tuple(m for m in e.story_cloze_modes.split(",") if m)
        sc = story_cloze.evaluate(
            lm_ckpt,
            e.story_cloze or story_cloze.DEMO_ITEMS,
            speech_tokenizer=done["tokenizer"]["checkpoint"],
            cache_dir=os.path.join(self.workdir, "story_cloze_audio"),
            modes=modes,
            max_items=e.story_cloze_max_items or None,
            per_item_output=os.path.join(cell_dir, "story_cloze_items.jsonl"),
        )
        out.update({f"story_cloze_{m}": sc[f"{m}_accuracy"] for m in modes})
        out["story_cloze_items"] = sc["items"]
        return out

    def _asr_tts(self, lm_ckpt, tok_ckpt, codes, refs, layout) -> dict:
        e = self.config.evals
        greedy = sampling.SamplingConfig(temperature=0.0, top_p=1.0, batch_size=32)
        asr = sampling.SpeechSampler.from_checkpoint(lm_ckpt, greedy)
        seeds = list(range(len(codes)))
        longest = max(len(r.encode("utf-8")) for r in refs)
        hyp_ids = asr.transcribe(codes, seeds, max_tokens=int(1.5 * longest) + 8)
        hyps = [bytes(int(i) for i in h).decode("utf-8", errors="replace") for h in hyp_ids]
        asr_rates = asr_metrics.error_rates(refs, hyps)
        tts_cfg = sampling.SamplingConfig(
            temperature=e.tts_temperature,
            top_p=e.tts_top_p,
            max_len_ratio=2.0 * max(len(c) for c in codes) / longest + 1.0,
            batch_size=32,
        )
        tts = asr.with_config(tts_cfg)
        spoken = tts.sample([np.frombuffer(r.encode("utf-8"), np.uint8) for r in refs], seeds)
        transcriber = transcription.TokenTranscriber(tok_ckpt)
        tts_rates = asr_metrics.error_rates(list(refs), transcriber.transcribe(spoken))
        return {
            "asr_cer": asr_rates["cer"],
            "asr_wer": asr_rates["wer"],
            "tts_cer": tts_rates["cer"],
            "tts_wer": tts_rates["wer"],
            "tts_tokens_per_char": sum(len(s) for s in spoken) / sum(len(r) for r in refs),
            "asr_example": {"ref": refs[0], "hyp": hyps[0]},
        }

    def stage_decoder(self, name: str, cell_dir: str, done: dict) -> dict:
        tok = done["tokenizer"]
        k, rate = tok["codebook_size"], tok["frame_rate_hz"]
        named = self.config.cells[name].decoder
        if named:
            try:
                recon.check_decoder(named, k, rate, name)
            except (ValueError, FileNotFoundError) as e:
                raise CellInvalid(str(e)) from None
            return {"checkpoint": named, "trained": False}
        c = self.config.decoder
        config = config_lib.load_config_file(resolve(c.config))
        config = recon.decoder_train_config(
            config,
            codebook_size=k,
            frame_rate_hz=rate,
            steps=c.steps,
            manifest=recon.absolute_manifest(
                self.manifests["train"], os.path.join(cell_dir, "decoder_audio.jsonl")
            ),
            tokens=done["tokenize"]["train_tokens"],
            seed=self.config.seed,
        )
        apply_overrides(config, list(c.overrides), f"cell {name} (decoder)")
        workdir = os.path.join(cell_dir, "decoder")
        speech_decoder.train(config, workdir)  # resumes from its checkpoints after a kill
        check_complete(workdir, config.total_steps, f"cell {name}: the decoder")
        return {
            "checkpoint": os.path.join(workdir, "decoder"),
            "trained": True,
            "steps": config.total_steps,
            "max_tokens": config.input.max_tokens,
            **recon.training_summary(workdir),
        }

    def judge(self) -> str:
        """The ASR judge's tokenizer checkpoint (``evals.judge``), the same for every cell."""
        spec = self.config.evals.judge
        if not spec.startswith(recon.JUDGE_CELL):
            if not os.path.exists(spec):
                raise FileNotFoundError(f"evals.judge {spec} does not exist")
            return spec
        cell = spec[len(recon.JUDGE_CELL) :]
        marker = os.path.join(self.workdir, "cells", cell, "stages", "tokenizer.json")
        if not os.path.exists(marker):
            raise ValueError(
                f"evals.judge {spec!r}: cell {cell} has no trained tokenizer (its tokenizer "
                "stage failed or is invalid); fix that cell or name a tokenizer checkpoint"
            )
        with open(marker) as f:
            return json.load(f)["checkpoint"]

    def stage_reconstruction(self, name: str, cell_dir: str, done: dict) -> dict:
        tok = done["tokenizer"]
        decoder = done["decoder"]["checkpoint"]
        recon.check_decoder(decoder, tok["codebook_size"], tok["frame_rate_hz"], name)
        n = self.config.evals.reconstruction_utterances
        return recon.evaluate(
            decoder,
            tok["checkpoint"],
            self.judge(),
            done["tokenize"]["heldout_tokens"],
            self.manifests["heldout"],
            os.path.join(cell_dir, "reconstruction"),
            max_utterances=n,
            judge_cache=os.path.join(self.workdir, "judge", f"heldout_{n}.json"),
        )
