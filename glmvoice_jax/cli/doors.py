"""The door of every console script: help, flag checks, and user errors as one or two lines.

Every ``glmvoice-*`` tool enters through :func:`run`, so they all behave alike:

* ``-h`` / ``--help`` prints the tool's docstring (what it does, an example) and only its own
  flags with their defaults, then exits 0 — not absl's framework flags;
* a flag renamed in the one-name-per-role clean-up (``--src`` is now ``--checkpoint``, ...) is
  refused naming the new name; a run without the required flags names all of them at once;
* a user error (a bad path, a malformed file, a refused pickle, a bad config value or key) prints
  ``glmvoice-NAME: error: ...`` on stderr and exits 1, without a traceback unless
  ``GLMVOICE_DEBUG=1``. Anything else is a bug and keeps its traceback.

One name per role across the tools: ``--checkpoint`` for a checkpoint that is read, ``--output``
for what is written (file or directory), ``--workdir`` only for a run directory, ``--dtype`` for a
dtype, ``--config`` for a config file.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable, Iterable, Sequence

from absl import app, flags

from glmvoice_jax import errors

# Old flag name -> the name it has now (refused with this hint when a tool lacks the old one).
RENAMED = {
    "src": "checkpoint",
    "dst": "output",
    "output_dir": "output",
    "json": "output",
    "param_dtype": "dtype",
    "sweep": "config",
    "tokenizer_checkpoint": "speech_tokenizer",
    "decoder_checkpoint": "speech_decoder",
}
# Exceptions that report a user's mistake: shown as one or two lines, exit 1.
USER_ERRORS = (
    errors.UserError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    pickle.UnpicklingError,
    flags.Error,
    app.UsageError,
)
EXIT_USER_ERROR = 1
_ABSL_MODULES = ("absl.", "jax.", "flax.", "orbax.", "grain.", "tensorflow", "ml_collections.")


def debug() -> bool:
    return os.environ.get("GLMVOICE_DEBUG", "") not in ("", "0")


_PROG: list[str] = []  # the tool's name, from its docstring ("glmvoice-NAME: ...")


def prog() -> str:
    if _PROG:
        return _PROG[-1]
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "glmvoice"


def fail(message: str) -> None:
    """Prints ``PROG: error: MESSAGE`` to stderr and exits 1."""
    sys.stderr.write(f"{prog()}: error: {message}\n")
    sys.stderr.flush()
    sys.exit(EXIT_USER_ERROR)


def require(flag_values: flags.FlagValues, names: Iterable[str]) -> None:
    """Raises one UserError naming every flag of ``names`` that has no value."""
    missing = [f"--{n}" for n in names if flag_values[n].value in (None, "", [])]
    if missing:
        raise errors.UserError(
            f"missing required flag{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(see {prog()} --help)"
        )


def _own_flags(flag_values: flags.FlagValues, module: str | None) -> list:
    """The tool's own flags: all of a private FlagValues, or those its module defined."""
    if flag_values is not flags.FLAGS:
        return sorted(flag_values._flags().values(), key=lambda f: f.name)  # noqa: SLF001
    by_module = flag_values.flags_by_module_dict()
    names = {module, "__main__", sys.argv[0] if sys.argv else None}
    own = {}
    for mod, fl in by_module.items():
        if mod in names or (mod and mod.startswith("glmvoice_jax.cli")):
            for f in fl:
                own[f.name] = f
    return sorted(own.values(), key=lambda f: f.name)


def help_text(doc: str, flag_values: flags.FlagValues, module: str | None = None) -> str:
    lines = [(doc or "").strip(), "", "flags:"]
    for f in _own_flags(flag_values, module):
        default = "(none)" if f.default is None else repr(f.default)
        lines.append(f"  --{f.name}  (default: {default})")
        if f.help:
            lines.append(f"      {f.help}")
    lines.append("")
    lines.append("Set GLMVOICE_DEBUG=1 to see the traceback behind an error.")
    return "\n".join(lines)


def _check_args(
    args: Sequence[str], flag_values: flags.FlagValues, doc: str, module, renamed: dict
) -> None:
    if any(a in ("-h", "--help", "-help", "--helpfull", "-?") for a in args):
        print(help_text(doc, flag_values, module))
        sys.exit(0)
    for a in args:
        if not a.startswith("--"):
            continue
        name = a[2:].split("=", 1)[0]
        if name.startswith("no") and name[2:] in flag_values:
            continue
        table = {**RENAMED, **renamed}
        if name in table and name not in flag_values:
            fail(f"--{name} was renamed --{table[name]} (one name per role across the tools)")


def _root_message(e: BaseException) -> str:
    """The message of the innermost cause (config_flags wraps a missing file twice)."""
    while e.__cause__ is not None:
        e = e.__cause__
    return str(e) or type(e).__name__


def _check_config_files(args: Sequence[str], flag_values: flags.FlagValues) -> None:
    """A config-file flag (``--config FILE[:ARGS]``) naming no file fails in one line."""
    for i, a in enumerate(args):
        for name in ("config",):
            if name not in flag_values:
                continue
            value = None
            if a.startswith(f"--{name}="):
                value = a.split("=", 1)[1]
            elif a == f"--{name}" and i + 1 < len(args):
                value = args[i + 1]
            if value is not None and not os.path.exists(value.partition(":")[0]):
                fail(f"config file {value.partition(':')[0]} does not exist (--{name}={value})")


def _guard(fn: Callable[[], int | None]) -> int | None:
    """Runs ``fn``; a user error becomes one line and exit 1 (unless GLMVOICE_DEBUG=1)."""
    try:
        return fn()
    except USER_ERRORS as e:
        if debug():
            raise
        message = str(e) or type(e).__name__
        if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in message:
            message = f"{message}: {e.filename}"
        fail(message.strip().splitlines()[0] if len(message) > 2000 else message.strip())
    return None


def run(
    main: Callable[[list[str]], int | None],
    doc: str,
    *,
    flag_values: flags.FlagValues | None = None,
    required: Sequence[str] = (),
    renamed: dict[str, str] | None = None,
) -> None:
    """Enters a tool: help, renamed flags, parsing, required flags, then ``main(argv)``.

    Args:
      main: the tool's main; it gets ``sys.argv`` (program name first). A tool with a private
        ``FlagValues`` parses it inside ``main`` (so tests can call ``main(argv)``); a tool on
        absl's global flags gets them parsed here, as ``absl.app.run`` would.
      doc: the tool's module docstring, printed by --help.
      flag_values: the tool's private FlagValues, or None for absl's global FLAGS.
      required: flags that must be given (all missing ones are named at once).
      renamed: this tool's own renamed flags (old -> new), besides ``RENAMED``.
    """
    fv = flags.FLAGS if flag_values is None else flag_values
    first = (doc or "").strip().split(":", 1)[0]
    if first.startswith("glmvoice-") and " " not in first:
        _PROG.append(first)
    module = getattr(sys.modules.get(main.__module__), "__name__", None)
    _check_args(sys.argv[1:], fv, doc, module, renamed or {})
    _check_config_files(sys.argv[1:], fv)
    if flag_values is not None:
        # A private FlagValues: main parses; check the required flags first, all at once.
        def call():
            fv.unparse_flags()
            fv(list(sys.argv))
            require(fv, required)
            return main(list(sys.argv))

        rc = _guard(call)
        sys.exit(rc if isinstance(rc, int) else 0)

    def parse(argv: list[str]) -> list[str]:
        try:
            rest = fv(argv)
        except (flags.Error, OSError) as e:
            if debug():
                raise
            fail(_root_message(e))
        return rest

    def guarded_main(argv: list[str]) -> None:
        def call():
            require(fv, required)
            return main(argv)

        rc = _guard(call)
        sys.exit(rc if isinstance(rc, int) else 0)

    app.run(guarded_main, flags_parser=parse)
