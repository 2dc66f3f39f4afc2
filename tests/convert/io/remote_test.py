"""glmvoice-import / -export with hub and bucket paths (convert/io/remote.py), never the network.

The hub is a local HTTP server speaking the part of the Hub API that ``snapshot_download`` uses
(repo info, tree listing, file resolve), so the real huggingface_hub client does the download;
gs:// is the in-memory bucket of tests/conftest.py (``fake_gcs``) behind the real etils.epath.
"""

import hashlib
import http.server
import json
import os
import re
import shlex
import threading
import urllib.parse

import numpy as np
import pytest
import safetensors.numpy
from etils import epath

from glmvoice_jax import checkpoint
from glmvoice_jax.cli import export_checkpoint, import_checkpoint
from glmvoice_jax.convert.io import remote

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "fixtures")
GLM = os.path.join(FIXTURES, "glm_chatglm")
WHISPER_VQ = os.path.join(FIXTURES, "whisper_vq")
SHA = "0123456789abcdef0123456789abcdef01234567"


class _HubHandler(http.server.BaseHTTPRequestHandler):
    """Serves fixture directories as hub model repos (all at commit SHA); records the requests."""

    repos: dict = {}
    seen: list = []

    def log_message(self, *args):
        del args

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    def _answer(self, body):
        path = urllib.parse.urlparse(self.path).path
        self.seen.append(f"{self.command} {path}")
        parts = path.strip("/").split("/")
        api = parts[:2] == ["api", "models"]
        root = self.repos.get("/".join(parts[2:4] if api else parts[:2]))
        files = _files(root) if root else {}
        headers = {"Content-Type": "application/json"}
        payload = None
        if root and api and "revision" in parts:
            payload = json.dumps({"id": "/".join(parts[2:4]), "sha": SHA, "siblings": []})
        elif root and api and "tree" in parts:
            listing = [{"type": "file", "path": r, "size": n, "oid": SHA} for r, n in files.items()]
            payload = json.dumps(listing)
        elif root and "resolve" in parts and "/".join(parts[4:]) in files:
            with open(os.path.join(root, *parts[4:]), "rb") as f:
                payload = f.read()
            headers = {"X-Repo-Commit": SHA, "ETag": f'"{hashlib.sha1(payload).hexdigest()}"'}
        if payload is None:
            self.send_response(404)
            if not root:  # what the hub answers for a repo it does not have
                self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        payload = payload.encode() if isinstance(payload, str) else payload
        self.send_response(200)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)


def _files(root):
    """Relative path (``/``-separated) -> size of every file under ``root``."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            full = os.path.join(dirpath, n)
            out[os.path.relpath(full, root).replace(os.sep, "/")] = os.path.getsize(full)
    return out


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A local hub serving the fixtures; HF_ENDPOINT / HF_HUB_CACHE point at it."""
    repos = {"THUDM/glm-4-9b": GLM, "THUDM/glm-4-voice-tokenizer": WHISPER_VQ}
    handler = type("Handler", (_HubHandler,), {"repos": repos, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("GLMVOICE_STAGING", str(tmp_path / "staging"))
    yield handler.seen
    server.shutdown()
    server.server_close()


def test_hub_repo_names(tmp_path, monkeypatch):
    assert remote.hub_repo("THUDM/glm-4-9b") == ("THUDM/glm-4-9b", None)
    assert remote.hub_repo("hf://THUDM/glm-4-9b@v1.0") == ("THUDM/glm-4-9b", "v1.0")
    for local in ("./a/b", "/data/glm-4-9b", "gs://bucket/glm", "runs/x/y/z", "glm"):
        assert remote.hub_repo(local) is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert remote.hub_repo("org/name") is None  # an existing local directory stays local
    with pytest.raises(ValueError, match="not a hub repo id"):
        remote.hub_repo("hf://just-a-name")
    assert remote.is_uri("gs://b/x") and not remote.is_uri("hf://a/b")


def test_a_missing_repo_or_an_unreachable_hub_is_one_clear_error(hub, tmp_path, monkeypatch):
    argv = ["glmvoice-import", "--checkpoint", "org/missing", "--output", str(tmp_path / "x")]
    with pytest.raises(ValueError, match="no local directory of that name, and the hub"):
        import_checkpoint.main(argv)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ValueError, match="could not be reached and the cache holds no snapshot"):
        import_checkpoint.main(argv)
    assert not (tmp_path / "x").exists()


def test_import_from_the_hub_to_a_bucket_resumes_an_interrupted_copy(
    hub, fake_gcs, monkeypatch, capsys
):
    argv = ["glmvoice-import", "--checkpoint", "THUDM/glm-4-9b", "--output", "gs://bkt/glm"]
    copy_file = remote._copy_file
    calls = []

    def flaky_copy(src, dst, *args):
        if isinstance(dst, epath.Path) and len(calls) == 3:
            raise ConnectionError("connection reset (simulated)")
        calls.append(dst)
        copy_file(src, dst, *args)

    monkeypatch.setattr(remote, "_copy_file", flaky_copy)
    with pytest.raises(ConnectionError):
        import_checkpoint.main(argv)
    # The real hub client downloaded the fixture repo from the local server.
    assert "GET /api/models/THUDM/glm-4-9b/revision/main" in hub
    assert f"GET /THUDM/glm-4-9b/resolve/{SHA}/model.safetensors" in hub
    # Three files landed, markers last: the half-copied step is not taken for a complete one.
    assert not epath.Path(f"gs://bkt/glm/0/{checkpoint.COMMIT_MARKER}").exists()
    assert checkpoint.step_problem(epath.Path("gs://bkt/glm/0")) is not None

    monkeypatch.setattr(remote, "_copy_file", copy_file)
    capsys.readouterr()
    meta = import_checkpoint.main(argv)  # resumes: no second conversion, only missing files
    out = capsys.readouterr().out
    assert "converted by an earlier run" in out and "(3 were already there)" in out
    assert meta["model_class"] == "GLMConfig"
    assert checkpoint.step_problem(epath.Path("gs://bkt/glm/0")) is None
    assert checkpoint.read_meta("gs://bkt/glm")["model"] == meta["model"]
    assert not os.path.exists(remote.staging_dir("gs://bkt/glm", "upload"))
    with pytest.raises(FileExistsError, match="gs://bkt/glm already exists"):
        import_checkpoint.main(argv)


def test_export_from_a_bucket_to_a_bucket(hub, fake_gcs, tmp_path, capsys):
    import_checkpoint.main(["glmvoice-import", "--checkpoint", GLM, "--output", "gs://bkt/ck"])
    assert "gs://bkt/ck" in capsys.readouterr().out
    # An optimizer-state item the export must leave on the bucket.
    (epath.Path("gs://bkt/ck/0/train") / "blob").write_bytes(b"x" * 100)
    files = export_checkpoint.main(
        ["glmvoice-export", "--checkpoint", "gs://bkt/ck", "--output", "gs://bkt/hf"]
    )
    assert "model.safetensors" in files and "config.json" in files
    staged = os.path.join(remote.staging_dir("gs://bkt/ck", "download"), "0")
    assert {"params", "meta", checkpoint.COMMIT_MARKER} <= set(os.listdir(staged))
    assert "train" not in os.listdir(staged)
    out = tmp_path / "model.safetensors"
    out.write_bytes(epath.Path("gs://bkt/hf/model.safetensors").read_bytes())
    got = safetensors.numpy.load_file(str(out))
    want = safetensors.numpy.load_file(os.path.join(GLM, "model.safetensors"))
    assert set(got) == set(want)
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v)  # import -> bucket -> export: the same tensors


def test_import_from_a_bucket_directory(hub, fake_gcs, tmp_path):
    for name in os.listdir(GLM):
        with open(os.path.join(GLM, name), "rb") as f:
            (epath.Path("gs://bkt/src") / name).write_bytes(f.read())
    out = tmp_path / "ck"
    meta = import_checkpoint.main(
        ["glmvoice-import", "--checkpoint", "gs://bkt/src", "--output", str(out)]
    )
    assert meta["model_class"] == "GLMConfig" and checkpoint.step_problem(out / "0") is None
    again = remote.download_tree("gs://bkt/src", remote.staging_dir("gs://bkt/src", "download"))
    assert again == (0, len(os.listdir(GLM)))  # a second copy finds every file there already


def _readme_commands(tool):
    """The README recipe's commands of ``tool``, joined over ``\\`` (as readme_recipe_test)."""
    repo = os.path.dirname(os.path.dirname(FIXTURES))
    with open(os.path.join(repo, "README.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index("## Pretrain GLM-4-Voice-9B\n")
    section = text[start : text.index("\n## ", start + 10)]
    out = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith(tool + " "):
                out.append(shlex.split(line))
    return out


@pytest.mark.e2e
def test_readme_recipe_import_and_export_steps_run_as_written(hub, fake_gcs, tmp_path):
    """Steps 1, 2 and 9 of the README recipe, word for word: hub -> bucket -> export."""
    imports = _readme_commands("glmvoice-import")
    assert len(imports) == 2
    metas = [import_checkpoint.main(argv) for argv in imports]
    assert metas[0]["extra"]["speech_extension"]["num_audio_tokens"] == 16384
    assert metas[1]["model_class"] == "WhisperVQConfig"
    # A training run's workdir holding the imported weights as its latest checkpoint.
    base = dict(zip(imports[0][1::2], imports[0][2::2], strict=False))["--output"]
    (export,) = _readme_commands("glmvoice-export")
    workdir = export[export.index("--checkpoint") + 1]
    staged = str(tmp_path / "run")
    remote.download_tree(base, staged, show=False)
    remote.publish(staged, f"{workdir}/checkpoints", show=False)
    files = export_checkpoint.main(export)
    out = export[export.index("--output") + 1]
    config = json.loads((epath.Path(out) / "config.json").read_text())
    assert config["architectures"] == ["ChatGLMModel"] and "model.safetensors" in files
    assert config["padded_vocab_size"] == metas[0]["model"]["vocab_size"]
