"""Checkpoints that live on the Hugging Face hub or in a bucket, for glmvoice-import / -export.

Why a staging step: the converters read and write local directories on purpose (safetensors are
memory-mapped, Orbax items are streamed through tensorstore's file driver, and a conversion is
finished by one atomic rename, so a killed run never leaves a directory that looks complete).
A remote source is therefore first made local, and a remote destination is written locally and
then copied up. Neither object stores nor the hub can rename a directory atomically; what makes
the copy safe instead is its order and its resume rule (below).

Sources (:func:`local_source`, :func:`local_checkpoint`):

* ``hf://ORG/NAME[@REVISION]``, or a bare ``ORG/NAME[@REVISION]`` that names no local path: a
  Hugging Face repo, fetched with ``huggingface_hub.snapshot_download`` into the hub cache
  (``$HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``; a second run downloads nothing).
  ``$HF_ENDPOINT`` points the client at a mirror; ``$HF_TOKEN`` opens a gated repo.
* a URI that etils.epath opens (``gs://BUCKET/...``; gcsfs must be installed, the ``gcs``
  extra): copied to ``$GLMVOICE_STAGING/download/<URI without ://>`` (default
  ``/tmp/glmvoice_staging``), resumable. For a checkpoint only the step that is read, without the
  optimizer state, is copied.

Destinations (:func:`stage_output`, :func:`publish`): a URI ``--output`` is written under
``$GLMVOICE_STAGING/upload/<URI without ://>`` and copied file by file; each step's
``commit_success.txt`` (Orbax's "this step is complete" marker on object stores, see
``checkpoint.step_problem``) goes last, so a reader never takes a half-copied step for a finished
one. A rerun after an interrupted copy skips the conversion (the staged directory is complete:
the converter renamed it into place) and every file already at the destination with the same
size; the staging directory is removed once the copy is complete.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable

from etils import epath

from glmvoice_jax import checkpoint, errors, progress

HUB_SCHEME = "hf://"
COPY_CHUNK = 64 * 1024 * 1024  # a 5 GB safetensors shard is streamed, never held in memory
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?")
# What a checkpoint reader needs of one step: weights, meta, and the step's own files. The
# optimizer state ("train", twice the weights in fp32 AdamW) is left on the bucket.
_CHECKPOINT_ITEMS = ("params", "meta")


def is_uri(path: str) -> bool:
    """True for ``gs://``-style paths (read through etils.epath), False for hub ids and files."""
    return "://" in path and not path.startswith(HUB_SCHEME)


def hub_repo(spec: str) -> tuple[str, str | None] | None:
    """(repo id, revision or None) when ``spec`` names a hub repo, else None.

    ``hf://`` always means the hub. A bare ``ORG/NAME`` means the hub only when no such local
    path exists, so a local directory of the same shape keeps working as before.
    """
    bare = spec[len(HUB_SCHEME) :] if spec.startswith(HUB_SCHEME) else None
    if bare is None:
        if "://" in spec or spec.startswith((".", "/", "~")) or os.path.exists(spec):
            return None
        bare = spec
    m = _HUB_ID.fullmatch(bare)
    if m is None:
        if spec.startswith(HUB_SCHEME):
            raise errors.UserError(
                f"{spec!r} is not a hub repo id; expected hf://ORG/NAME or hf://ORG/NAME@REVISION"
            )
        return None
    return m["repo"], m["rev"]


def staging_dir(uri: str, direction: str) -> str:
    """Local directory that stands in for ``uri``: ``$GLMVOICE_STAGING/<direction>/<uri>``."""
    base = os.environ.get("GLMVOICE_STAGING") or os.path.join(
        tempfile.gettempdir(), "glmvoice_staging"
    )
    return os.path.join(base, direction, uri.replace("://", "/").strip("/"))


def fetch_hub(repo_id: str, revision: str | None, *, what: str = "--checkpoint") -> str:
    """Downloads a hub repo snapshot into the hub cache; returns its local directory.

    The endpoint and cache are read from the environment at call time (``HF_ENDPOINT``,
    ``HF_HUB_CACHE``), not when huggingface_hub was first imported.

    Raises:
      errors.UserError: the repo or revision does not exist (or is gated without a token), or
        the hub cannot be reached and the cache does not hold the snapshot.
    """
    import huggingface_hub  # lazy: ~0.5 s of imports that only hub sources need
    from huggingface_hub import errors as hub_errors

    endpoint = os.environ.get("HF_ENDPOINT") or None
    where = endpoint or "huggingface.co"
    try:
        return huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            endpoint=endpoint,
            cache_dir=os.environ.get("HF_HUB_CACHE") or None,
        )
    except hub_errors.RevisionNotFoundError:
        raise errors.UserError(
            f"{what} {repo_id}@{revision}: the hub ({where}) has no revision {revision!r} of it"
        ) from None
    except (hub_errors.RepositoryNotFoundError, hub_errors.GatedRepoError) as e:
        raise errors.UserError(
            f"{what} {repo_id}: no local directory of that name, and the hub ({where}) has no "
            f"such repo, or it is gated and needs HF_TOKEN ({type(e).__name__})"
        ) from None
    except hub_errors.LocalEntryNotFoundError as e:
        raise errors.UserError(
            f"{what} {repo_id}: no local directory of that name; as a hub repo, the hub ({where}) "
            f"could not be reached and the cache holds no snapshot of it ({str(e).splitlines()[0]})"
        ) from None


def _size(path: epath.Path) -> int | None:
    try:
        return path.stat().length if path.exists() else None
    except OSError:
        return None


def _copy_file(src, dst, open_src: Callable, open_dst: Callable, bar) -> None:
    with open_src(src) as f, open_dst(dst) as g:
        while chunk := f.read(COPY_CHUNK):
            g.write(chunk)
            bar.update(len(chunk))


def _remote_files(root: epath.Path, keep: Callable[[str], bool]) -> list[tuple[str, int]]:
    """(relative path, size) of every file under ``root`` whose relative path ``keep`` accepts."""
    out, todo = [], [(root, "")]
    while todo:
        d, rel = todo.pop()
        for child in d.iterdir():
            r = f"{rel}{child.name}"
            if child.is_dir():
                todo.append((child, r + "/"))
            elif keep(r):
                out.append((r, child.stat().length))
    return sorted(out)


def download_tree(
    uri: str, local: str, *, keep: Callable[[str], bool] = lambda rel: True, show: bool = True
) -> tuple[int, int]:
    """Copies the files under ``uri`` that ``keep`` accepts to ``local``; returns (copied, kept).

    Resumable: a local file of the remote size is taken as copied. Each file is written under a
    temporary name and renamed, so a killed copy leaves no file of the right name and wrong size.
    """
    root = epath.Path(uri)
    if not root.is_dir():
        raise FileNotFoundError(f"{uri} is not a directory (or cannot be read)")
    files = _remote_files(root, keep)
    todo = [(r, n) for r, n in files if _local_size(os.path.join(local, r)) != n]
    total = sum(n for _, n in todo)
    with progress.bar(total, f"download {uri}", "B", unit_scale=True, enabled=show) as bar:
        for rel, _ in todo:
            dst = os.path.join(local, *rel.split("/"))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            tmp = dst + ".part"
            _copy_file(
                root.joinpath(*rel.split("/")),
                tmp,
                lambda p: p.open("rb"),
                lambda p: open(p, "wb"),  # noqa: SIM115 (closed by _copy_file)
                bar,
            )
            os.replace(tmp, dst)
    return len(todo), len(files) - len(todo)


def _local_size(path: str) -> int | None:
    return os.path.getsize(path) if os.path.isfile(path) else None


def local_source(spec: str, *, what: str = "--checkpoint", show: bool = True) -> str:
    """A local directory holding ``spec`` (a local path, a hub repo, or a bucket URI)."""
    hub = hub_repo(spec)
    if hub is not None:
        path = fetch_hub(*hub, what=what)
        print(f"{what} {spec}: hub snapshot in {path}", flush=True)
        return path
    if is_uri(spec):
        local = staging_dir(spec, "download")
        copied, kept = download_tree(spec, local, show=show)
        print(f"{what} {spec}: {copied} files copied to {local} ({kept} already there)", flush=True)
        return local
    return spec


def local_checkpoint(spec: str, *, what: str = "--checkpoint", show: bool = True) -> str:
    """A local step directory for checkpoint ``spec``.

    A bucket checkpoint's step is copied without its optimizer state: only ``params``, ``meta``,
    the step's own files (markers, metadata) and the checkpoint's tokenizer.
    """
    if not is_uri(spec):
        return spec
    root, step = checkpoint.resolve(spec)
    local = staging_dir(str(root), "download")

    def keep(rel: str) -> bool:
        parts = rel.split("/")
        if parts[0] == str(step):
            return len(parts) == 2 or parts[1] in _CHECKPOINT_ITEMS
        return parts[0] == "tokenizer"

    copied, kept = download_tree(str(root), local, keep=keep, show=show)
    print(
        f"{what} {spec}: step {step} copied to {local} ({copied} files, {kept} already there)",
        flush=True,
    )
    return os.path.join(local, str(step))


def stage_output(dst: str, *, what: str = "--output") -> tuple[str, bool]:
    """Where to write ``dst``: (local path, already written by an earlier run).

    A local ``dst`` is returned as is (False). For a URI: the staging directory, and True when
    an earlier run finished the conversion there but not the copy.

    Raises:
      FileExistsError: ``dst`` already holds files and nothing staged is waiting to be copied.
    """
    if not is_uri(dst):
        return dst, False
    local = staging_dir(dst, "upload")
    if os.path.isdir(local):
        return local, True
    target = epath.Path(dst)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{what} {dst} already exists; remove it or choose a new path")
    os.makedirs(os.path.dirname(local), exist_ok=True)
    return local, False


def _upload_order(rel: str) -> tuple:
    # Markers last, the deepest (an item's) before its step's, so a step's marker is the last
    # file of that step to land.
    marker = os.path.basename(rel) == checkpoint.COMMIT_MARKER
    return (marker, -rel.count("/") if marker else 0, rel)


def publish(local: str, dst: str, *, show: bool = True) -> tuple[int, int]:
    """Copies ``local`` to the URI ``dst``, markers last; returns (copied, already there).

    Resumable: a file already at ``dst`` with the same size is not copied again. The staging
    directory is removed when every file is at ``dst``.
    """
    files = []
    for dirpath, _, names in os.walk(local):
        for n in names:
            rel = os.path.relpath(os.path.join(dirpath, n), local).replace(os.sep, "/")
            files.append((rel, os.path.getsize(os.path.join(dirpath, n))))
    files.sort(key=lambda f: _upload_order(f[0]))
    root = epath.Path(dst)
    todo = [(r, n) for r, n in files if _size(root.joinpath(*r.split("/"))) != n]
    total = sum(n for _, n in todo)
    with progress.bar(total, f"upload {dst}", "B", unit_scale=True, enabled=show) as bar:
        for rel, _ in todo:
            target = root.joinpath(*rel.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_file(
                os.path.join(local, *rel.split("/")),
                target,
                lambda p: open(p, "rb"),  # noqa: SIM115 (closed by _copy_file)
                lambda p: p.open("wb"),
                bar,
            )
    shutil.rmtree(local)
    return len(todo), len(files) - len(todo)
