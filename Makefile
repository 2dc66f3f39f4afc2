# glmvoice_jax: the two commands of a fresh clone are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo
export JAX_PLATFORMS ?= cpu

.PHONY: install system-deps demo chat-demo sft-demo ablate-demo test test-e2e lint format bench clean-demo

$(STAMP): setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# espeak-ng + sox synthesise the real-speech demo corpus (glmvoice_jax/corpora/espeak_corpus.py).
system-deps:
	@command -v espeak-ng >/dev/null && command -v sox >/dev/null || \
	  { echo "installing espeak-ng and sox (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng sox; }

# Tiny GLM pretrained on CPU on a four-kind corpus made from espeak-ng speech and bundled text by
# the real jobs (glmvoice_jax/workflows/demo.py); running it again resumes every stage.
demo: $(STAMP) system-deps
	$(PY) -m data_pipelines.demo_pipeline --workdir $(WORKDIR)
	$(VENV)/bin/glmvoice-train --config configs/demo_tiny.py --workdir $(WORKDIR)

# After make demo: one espeak-ng question through the tiny models with glmvoice-chat -> the reply's
# wav + text + timings in $(WORKDIR)/chat (glmvoice_jax/workflows/chat_demo.py). Without a trained
# decoder in $(WORKDIR)/decoder (or DECODER=CKPT) the decoder is an untrained tiny one.
DECODER ?=
chat-demo: $(STAMP) system-deps
	$(PY) -m data_pipelines.chat_demo --workdir $(WORKDIR) $(if $(DECODER),--decoder $(DECODER))

# After make demo: stage-2 SFT ("streaming thoughts", 13 text : 26 speech) of the tiny GLM on
# synthetic spoken dialogues; well-formed answers and answer-text CER before and after, in
# $(SFT_WORKDIR)/report.json (glmvoice_jax/workflows/sft_demo.py, docs/sft.md).
SFT_WORKDIR ?= runs/sft_demo
sft-demo: $(STAMP) system-deps
	$(PY) -m data_pipelines.sft_demo --demo $(WORKDIR) --out $(SFT_WORKDIR)

# The tokenizer-bitrate study at tiny scale on CPU (not part of make test): report in
# $(ABLATE_WORKDIR)/report.md; rerunning resumes at the first unfinished stage.
ABLATE_WORKDIR ?= runs/ablate
ablate-demo: $(STAMP) system-deps
	$(VENV)/bin/glmvoice-ablate --config configs/ablation_bitrates.py:tiny --workdir $(ABLATE_WORKDIR)

test: $(STAMP) system-deps lint
	$(VENV)/bin/pytest 

# End-to-end checks too slow for make test (pytest marker e2e), run before resolving an issue.
test-e2e: $(STAMP) system-deps
	$(VENV)/bin/pytest -m e2e

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) bench/train_step.py

clean-demo:
	rm -rf $(WORKDIR)
