"""glmvoice_jax: JAX/TPU-native pretraining of GLM-4-Voice (arXiv 2412.02612)."""

import setuptools

setuptools.setup(
    name="glmvoice_jax",
    version="0.1.0",
    description="Pretrain GLM-4-Voice (Whisper-VQ tokenizer + GLM-4 decoder) with JAX/Flax NNX.",
    packages=setuptools.find_packages(include=["glmvoice_jax", "glmvoice_jax.*", "data_pipelines"]),
    python_requires=">=3.11",
    install_requires=[
        # Capped below the next minor release: convert/io/orbax_stream.py writes Orbax's on-disk
        # format by hand, and the tests ran with these versions.
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8,<0.13",
        # Read / written directly by convert/io/orbax_stream.py (also an Orbax dependency).
        "tensorstore>=0.1.86",
        # etils.epath: local and gs:// paths through one API (metrics, checkpoints, tokenizers).
        "etils[epath]>=1.15.0",
        # bfloat16 / float8 numpy dtypes for the torch-free .pt reader.
        "ml-dtypes>=0.7.0",
        # The one progress bar of every long job (glmvoice_jax/progress.py).
        "tqdm>=4.67",
        "grain>=0.2.18",
        "array-record>=0.8.6",
        "tensorflow-datasets>=4.9.10",
        # The CPU-side corpus jobs on a distributed engine (corpora/beam_runner.py; DirectRunner
        # in the tests, Dataflow / Flink / Spark at scale). 2.77 caps pyarrow < 26, protobuf < 7
        # and numpy < 2.5; grain, orbax, tfds, tensorboard and array_record pass their tests
        # with those (pyarrow 25.0.1, protobuf 6.33.6).
        "apache-beam>=2.77,<3",
        "ml-collections>=1.1.0",
        "absl-py>=2.5.1",
        "numpy>=2.0",
        "safetensors>=0.8.0",
        "soundfile>=0.14.0",
        "soxr>=1.0",
        "librosa>=0.11.0",
        "sentencepiece>=0.2.0",
        # TensorBoard event files without TensorFlow (flax/clu writers need TF).
        "tensorboardX>=2.6.5",
        # The PNG loss plot of the demo and the benchmark/ablation reports.
        "matplotlib>=3.9",
        "pyyaml>=6.0",
        # GLM-4's tokenizer.model is tiktoken BPE; tiktoken is its reference implementation.
        "tiktoken>=0.14.0",
        "regex>=2024.0",
        # jax.export (de)serialisation of the decoder artifact imports it; jax does not require it.
        "flatbuffers>=24.3",
        # The trainer prints `tensorboard --logdir WORKDIR/tensorboard`: this makes it work.
        "tensorboard>=2.18",
        # PESQ-WB, STOI, mel-cepstral distortion of decoded speech (evals/reconstruction.py).
        "pesq>=0.0.4",
        "pystoi>=0.4.1",
        "mel-cepstral-distance>=0.0.4",
        "huggingface-hub>=1.0",  # glmvoice-import --checkpoint ORG/NAME (convert/io/remote.py)
        # WER / CER alignments of every ASR score (evals/asr_metrics.py).
        "jiwer>=4.0",
    ],
    extras_require={
        "test": ["pytest>=9.0", "pytest-timeout>=2.3", "ruff>=0.17.0"],
        "dev": ["ruff>=0.17.0", "pytest>=9.0", "pytest-timeout>=2.3"],
        # Golden-fixture generation only; never needed to run or test.
        # Pinned exactly: the versions the stored fixtures were made with
        # (tests/fixtures/*/README.md).
        "golden": ["torch==2.13.0", "transformers==4.46.3", "tokenizers==0.20.3"],
        "tpu": ["jax[tpu]==0.10.2"],
        "gcs": ["gcsfs>=2024.0"],
    },
    entry_points={
        "console_scripts": [
            "glmvoice-train=glmvoice_jax.cli.train:run",
            "glmvoice-import=glmvoice_jax.cli.import_checkpoint:run",
            "glmvoice-export=glmvoice_jax.cli.export_checkpoint:run",
            "glmvoice-score=glmvoice_jax.cli.score:run",
            "glmvoice-decode=glmvoice_jax.cli.decode:run",
            "glmvoice-aot=glmvoice_jax.cli.aot:run",
            "glmvoice-tokenize=glmvoice_jax.cli.tokenize_audio:run",
            "glmvoice-data-stats=glmvoice_jax.cli.data_stats:run",
            "glmvoice-eval=glmvoice_jax.cli.evaluate:run",
            "glmvoice-ablate=glmvoice_jax.cli.ablate:run",
            "glmvoice-export-decoder=glmvoice_jax.cli.export_decoder:run",
            "glmvoice-chat=glmvoice_jax.cli.chat:run",
        ],
    },
)
