r"""Text corpus -> ``text`` records: [gMASK]<sop> {text} <|endoftext|>, every token a target.

Input: a TFDS text dataset (``build_tfds.py --kind text``) or globs of ``.jsonl`` ({"text", "id"?})
/ ``.txt`` (one document per line) files. Documents whose text is empty or whitespace, not UTF-8,
not a string, or longer than --max_tokens are skipped and listed in ``<shard>.errors.jsonl``.
Deterministic, resumable and split over processes as every job (``shard_job``).

Usage:
  python -m data_pipelines.text_records --input 'corpus/*.jsonl' --out DIR/text \
      --tokenizer /path/glm-4/tokenizer.model --layout glm4_voice --num_shards 1024
  python -m data_pipelines.text_records --input DATA_DIR/my_text --out DIR/text \
      --tokenizer bytes --layout demo
"""

from __future__ import annotations

from collections.abc import Iterator

from glmvoice_jax.corpora import corpus_io, shard_job
from glmvoice_jax.data import prompts, records
from glmvoice_jax.data import token_layout as token_layout_lib


def write_text_records(
    input_spec: str,
    out_dir: str,
    *,
    tokenizer: str,
    layout: str,
    source: str = "text",
    num_shards: int = 16,
    split: str = "train",
    max_tokens: int = 1 << 20,
    process_index: int | None = None,
    process_count: int | None = None,
    progress: bool = True,
    runner: shard_job.Runner | None = None,
) -> tuple[shard_job.JobPlan, dict]:
    """Runs the job; returns (plan, totals). See the module docstring.

    ``runner``: who writes the shards (``shard_job.run``); e.g. ``beam_runner.BeamRunner``.
    """
    lay = token_layout_lib.get(layout)
    tok = corpus_io.load_tokenizer(tokenizer, lay)
    corpus = corpus_io.open_corpus(input_spec, split)
    if process_index is None or process_count is None:
        process_index, process_count = shard_job.default_process()
    plan = shard_job.JobPlan(out_dir, source, len(corpus), num_shards, process_index, process_count)

    def produce(shard: int, r: range, log: shard_job.ShardLog) -> Iterator:
        del shard
        for item in corpus.iter_range(r):
            if item.error:
                log.error(item.index, item.id, *item.error)
                continue
            text = item.fields.get("text")
            if not isinstance(text, str):
                log.error(item.index, item.id, "no_text", f"'text' is {type(text).__name__}")
                continue
            if not text.strip():
                log.error(item.index, item.id, "empty_text")
                continue
            try:
                ex = prompts.text(tok.encode(text, add_prefix=False), lay, source=source)
            except ValueError as e:
                log.error(item.index, item.id, "bad_tokens", str(e))
                continue
            log.add("text_tokens", len(ex.tokens) - len(lay.bos_ids) - 1)
            yield item.index, item.id, ex

    params = dict(
        job="text_records",
        input=input_spec,
        tokenizer=tokenizer,
        layout=layout,
        split=split,
        max_tokens=max_tokens,
        record_version=records.VERSION,
    )
    totals = shard_job.run(
        plan,
        produce,
        params=params,
        layout=lay,
        max_tokens=max_tokens,
        progress=progress,
        runner=runner,
    )
    return plan, totals
