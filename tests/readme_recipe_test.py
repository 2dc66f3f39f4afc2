"""The README's "Pretrain GLM-4-Voice-9B" recipe: every command parses, and the steps agree.

A user follows that section top to bottom without reading the source, so each command must be
one the tools accept: every ``--flag`` of a ``glmvoice-*`` command is one its module defines
(read from the module's source, no import), every ``--config FILE:ARGS`` loads with those
arguments, every ``--config.a.b=V`` names a config field, and the launch scripts run as dry runs.
Across steps: the launch trains from the import's output, the later steps read the launch's
workdir, and the pre-flight topology is the slice the config is built for, with its row (the
same command) in docs/aot.md and the same command in the README's "Running on a pod" notes.
"""

import ast
import os
import re
import shlex
import subprocess

import pytest

from glmvoice_jax import config_lib
from glmvoice_jax.trainers import preflight

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "## Pretrain GLM-4-Voice-9B"
CONFIG = "configs/glm4_voice_9b_pretrain.py"


def _read(rel):
    with open(os.path.join(REPO, rel), encoding="utf-8") as f:
        return f.read()


def _section(text, title):
    start = text.index(title + "\n")
    end = text.find("\n## ", start + len(title))
    return text[start : end if end >= 0 else len(text)]


def _commands(section):
    """Each command of the section's ```bash blocks, joined over ``\\`` and split like a shell."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.strip().startswith("#"):
                out.append(shlex.split(line))
    return out


def _entry_points():
    """console-script name -> module file, from setup.py."""
    tree = ast.parse(_read("setup.py"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = re.fullmatch(r"(glmvoice-[\w-]+)=([\w.]+):run", node.value)
            if m:
                yield m[1], m[2].replace(".", "/") + ".py"


SCRIPTS = dict(_entry_points())


def _defined_flags(module_file):
    """Names of the flags a CLI module defines (flags.DEFINE_*, config_flags.DEFINE_*)."""
    names = set()
    for node in ast.walk(ast.parse(_read(module_file))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr.startswith("DEFINE")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(node.args[0].value)
    return names


def _flag_values(argv):
    """--name=value / --name value pairs of an argv (bare booleans get None)."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            break
        if a.startswith("--"):
            name, eq, value = a[2:].partition("=")
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            out.append((name, value if (eq or value) else None))
        i += 1
    return out


def _check_config(spec, overrides):
    """Loads ``FILE[:ARGS]`` and checks the override keys; returns the config."""
    config = config_lib.load_config_file(os.path.join(REPO, spec))
    config_lib.check_override_keys(config, overrides)
    return config


def _check_tool(argv):
    """A glmvoice-* command: its flags exist, its config loads, its overrides name fields."""
    assert argv[0] in SCRIPTS, f"{argv[0]} is no console script of setup.py"
    defined = _defined_flags(SCRIPTS[argv[0]])
    pairs = _flag_values(argv[1:])
    overrides = [n[len("config.") :] for n, _ in pairs if n.startswith("config.")]
    for name, _ in pairs:
        if name.startswith("config."):
            assert "config" in defined, f"{argv[0]} has no --config for --{name}"
        else:
            assert name in defined or (name[:2] == "no" and name[2:] in defined), (
                f"{argv[0]} defines no --{name} (it has {sorted(defined)})"
            )
    config = dict(pairs).get("config")
    return _check_config(config, overrides) if config else None


@pytest.fixture(scope="module")
def recipe():
    return _commands(_section(_read("README.md"), SECTION))


def test_the_recipe_is_numbered_and_covers_the_whole_path(recipe):
    section = _section(_read("README.md"), SECTION)
    steps = re.findall(r"^(\d+)\. \*\*(.+?)\*\*", section, flags=re.M)
    assert [int(n) for n, _ in steps] == list(range(1, len(steps) + 1))
    tools = [argv[0] for argv in recipe]
    for need in ("glmvoice-import", "glmvoice-aot", "launch/tpu_pod.sh", "launch/gke_xpk.sh"):
        assert need in tools
    assert tools.index("glmvoice-import") < tools.index("glmvoice-aot")
    assert tools.index("glmvoice-aot") < tools.index("launch/tpu_pod.sh")
    assert tools[-2:] == ["glmvoice-eval", "glmvoice-export"]


def test_every_glmvoice_command_parses(recipe):
    checked = 0
    for argv in recipe:
        if argv[0].startswith("glmvoice-"):
            _check_tool(argv)
            checked += 1
    assert checked >= 6
    # The import that makes the 9B vocabulary.
    (speech,) = [a for a in recipe if a[0] == "glmvoice-import" and "--add_speech_tokens" in a]
    assert speech[speech.index("--add_speech_tokens") + 1] == "16384"


def test_launch_commands_run_as_dry_runs(recipe, tmp_path):
    """Each launch command, --dry_run added, with gcloud / xpk replaced by recorders."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("gcloud", "xpk", "tar"):
        (bin_dir / tool).write_text(f"#!/bin/sh\necho {tool} >> {tmp_path}/called\nexit 99\n")
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    launches = [a for a in recipe if a[0].startswith("launch/")]
    assert len(launches) >= 3
    for argv in launches:
        cut = argv.index("--") if "--" in argv else len(argv)
        cmd = [os.path.join(REPO, argv[0]), *argv[1:cut], "--dry_run", *argv[cut:]]
        proc = subprocess.run(["bash", *cmd], capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "would" in proc.stdout and not (tmp_path / "called").exists()
        # What the script will run on the workers: the trainer's flags and config parse too.
        pairs = dict(_flag_values(argv[1:cut]))
        overrides = [a[len("--config.") :].split("=")[0] for a in argv[cut + 1 :]]
        _check_tool(["glmvoice-train", f"--config={pairs['config']}", *argv[cut + 1 :]])
        assert overrides == ["init_from"]


def test_the_steps_read_what_the_earlier_steps_wrote(recipe):
    imported = {dict(_flag_values(a[1:]))["output"] for a in recipe if a[0] == "glmvoice-import"}
    workdirs = set()
    for argv in recipe:
        if argv[0].startswith("launch/"):
            cut = argv.index("--")
            workdirs.add(dict(_flag_values(argv[1:cut]))["workdir"])
            (init,) = [a.split("=", 1)[1] for a in argv[cut:] if a.startswith("--config.init_from")]
            assert init in imported
    (workdir,) = workdirs
    for argv in recipe:
        pairs = dict(_flag_values(argv[1:]))
        if argv[0] in ("glmvoice-eval", "glmvoice-export"):
            assert pairs["checkpoint"] == workdir
        if argv[0] == "glmvoice-eval":
            assert pairs["speech_tokenizer"] in imported
        if argv[0] == "tensorboard":
            # metrics.MetricWriter writes its events to WORKDIR/tensorboard.
            assert pairs["logdir"] == f"{workdir}/tensorboard"
    known = set(SCRIPTS) | {"launch/tpu_pod.sh", "launch/gke_xpk.sh", "tensorboard"}
    assert {argv[0] for argv in recipe} <= known


def test_preflight_topology_is_the_slice_the_config_is_built_for(recipe):
    (aot,) = [a for a in recipe if a[0] == "glmvoice-aot"]
    pairs = dict(_flag_values(aot[1:]))
    assert set(pairs) == {"config", "topology"}, "the pre-flight runs the config as shipped"
    config = _check_tool(aot)
    topology = preflight.parse_topology(pairs["topology"])
    mesh = config.mesh
    assert mesh.data * mesh.fsdp * mesh.tensor == topology.num_chips
    # The same command in the README's pod notes and as a row of docs/aot.md.
    command = shlex.join(aot)
    pod_notes = _section(_read("README.md"), "## Running on a pod")
    assert f"`{command}`" in pod_notes
    assert command in _read("docs/aot.md")


def test_every_slice_the_9b_config_names_has_its_aot_row():
    """Each ``:slice=`` of the config: mesh = the slice's chips, and a 'fits' row in docs/aot.md."""
    doc = _read("docs/aot.md")
    section = _section(doc, "## 9B step as shipped: one row per slice the config names")
    module = ast.parse(_read(CONFIG))
    names = [
        ast.literal_eval(k)
        for n in module.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "SLICES"
        for k in n.value.keys
    ]
    assert names and names[0] == "v5p-512"
    for name in names:
        spec = CONFIG if name == "v5p-512" else f"{CONFIG}:slice={name}"
        config = _check_config(spec, [])
        config_lib.validate(config)  # e.g. the batch divides over data x fsdp x accumulation
        assert config.mesh.data * config.mesh.fsdp * config.mesh.tensor == (
            preflight.parse_topology(name).num_chips
        )
        command = f"glmvoice-aot --config {spec} --topology {name}"
        rows = [line for line in section.splitlines() if line.startswith(f"| {name} ")]
        assert len(rows) == 1 and "fits" in rows[0], f"no 'fits' row for {name} in docs/aot.md"
        assert command in section, f"docs/aot.md lacks the command {command}"
        assert name in _read(CONFIG).split('"""')[1], f"the config's docstring omits {name}"
