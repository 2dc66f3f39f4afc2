"""Every console script's door: --help, no arguments, renamed flags, user errors, debug mode."""

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def _scripts() -> dict[str, str]:
    """console-script name -> module, read from setup.py's entry points."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value == "console_scripts":
                    entries = [e.value for e in v.elts]
                    return {e.split("=")[0]: e.split("=")[1].split(":")[0] for e in entries}
    raise AssertionError("no console_scripts in setup.py")


SCRIPTS = _scripts()


def _calls(name: str, *argvs: list[str], debug: bool = False) -> list[tuple[int, str]]:
    """Runs a console script's run() once per argv, all in one subprocess (one jax import).

    Each run's exit code and output are recorded; flags are re-parsed from scratch each time.
    """
    code = f"""
import contextlib, io, json, sys
from importlib import import_module
mod = import_module({SCRIPTS[name]!r})
results = []
for argv in json.loads(sys.argv[1]):
    sys.argv = [{name!r}, *argv]
    out = io.StringIO()
    rc = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            mod.run()
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    results.append([rc, out.getvalue()])
sys.__stdout__.write("@@RESULTS@@" + json.dumps(results))
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("GLMVOICE_DEBUG", None)
    if debug:
        env["GLMVOICE_DEBUG"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps([list(a) for a in argvs])],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert "@@RESULTS@@" in proc.stdout, proc.stdout + proc.stderr
    return [tuple(r) for r in json.loads(proc.stdout.split("@@RESULTS@@", 1)[1])]


def _call(name: str, *args: str, debug: bool = False) -> tuple[int, str]:
    """Runs a console script once, in a subprocess (tracebacks land on the real stderr)."""
    code = (
        "import sys; from importlib import import_module; "
        f"sys.argv = [{name!r}, *sys.argv[1:]]; import_module({SCRIPTS[name]!r}).run()"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("GLMVOICE_DEBUG", None)
    if debug:
        env["GLMVOICE_DEBUG"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_eleven_or_more_scripts_are_listed():
    assert len(SCRIPTS) >= 11 and all(n.startswith("glmvoice-") for n in SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_no_arguments_and_renamed_flags(name):
    (rc, out), (rc2, out2), (rc3, out3) = _calls(name, ["--help"], [], ["--src=/x"])
    assert rc == 0, out
    assert name in out and "flags:" in out and "--" in out
    assert "alsologtostderr" not in out and "Traceback" not in out

    assert rc2 != 0 and "Traceback" not in out2, out2
    assert "missing required flag" in out2 and len(out2.strip().splitlines()) <= 2, out2

    assert rc3 != 0 and "Traceback" not in out3
    assert "--src was renamed --checkpoint" in out3, out3


def test_bad_paths_are_one_line_and_debug_shows_the_traceback(tmp_path):
    cases = [
        (
            "glmvoice-import",
            "--checkpoint",
            str(tmp_path / "nope"),
            "--output",
            str(tmp_path / "o"),
        ),
        ("glmvoice-train", "--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path)),
        ("glmvoice-score", "--checkpoint", str(tmp_path), "--input", "x", "--output", "y"),
    ]
    for name, *args in cases:
        rc, out = _call(name, *args)
        assert rc == 1 and "Traceback" not in out, out
        assert out.strip().startswith(f"{name}: error:") and len(out.strip().splitlines()) <= 2
    rc, out = _call(cases[0][0], *cases[0][1:], debug=True)
    assert rc != 0 and "Traceback" in out


def test_hostile_pickle_is_refused_without_traceback(tmp_path):
    """A decoder release whose flow.pt pickle names os.system: refused in one line."""
    import io
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    src = tmp_path / "release"
    src.mkdir()
    fixture = REPO / "tests" / "fixtures" / "decoder"
    (src / "config.yaml").write_text((fixture / "config.yaml").read_text())
    (src / "hift.pt").write_bytes((fixture / "hift.pt").read_bytes())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(Evil(), protocol=2))
        z.writestr("archive/version", "3\n")
    (src / "flow.pt").write_bytes(buf.getvalue())
    rc, out = _call("glmvoice-import", "--checkpoint", str(src), "--output", str(tmp_path / "o"))
    assert rc == 1 and "Traceback" not in out, out
    assert "flow.pt" in out or "refus" in out.lower() or "not allowed" in out.lower(), out
    assert not (tmp_path / "pwned").exists()
