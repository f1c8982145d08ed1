"""Plumbing shared by the experiment scripts: configs, command lines, results folders.

The scripts in ``experiments/`` stay thin (nanodo style): each defines a frozen
dataclass config, calls :func:`parse_config` to get it from the command line,
opens a :class:`RunDir`, calls library functions and writes what they return.

- **One source of truth for settings.** The command line is generated from the
  dataclass fields (``--field value``; ``--flag/--no-flag`` for bools; comma
  lists for tuples), help text from ``field(metadata={"help": ...})``, and the
  config's ``PRESETS`` (``--preset quick``) and its docstring in ``--help``.
- **Nothing is lost.** Every file is written atomically (temp file + rename),
  so a killed run leaves either the old or the new file, never half of one; a
  run folder holds ``config.json`` and ``environment.json`` from its start and
  ``COMPLETE`` at its end, so an interrupted folder is recognisable; re-running
  into a folder made with a different config refuses unless ``--overwrite``.
- **Every result is re-plottable.** Figures come from :mod:`rnnlab.plots`,
  drawn from the saved numbers; :func:`replot_folder` recognises a script's
  ``--replot RESULTS_FOLDER``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import csv
import dataclasses
import datetime
import inspect
import io
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")

COMPLETE_MARKER = "COMPLETE"
_UMASK = os.umask(0)
os.umask(_UMASK)


# ----------------------------------------------------------------------------- files


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically: a temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for sharing
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def atomic_write_csv(
    path: str | os.PathLike,
    rows: Sequence[Mapping[str, Any]],
    fieldnames: Sequence[str] | None = None,
) -> Path:
    """Writes a list of dicts as CSV (columns from ``fieldnames`` or the first row)."""
    buf = io.StringIO()
    fieldnames = list(fieldnames or (rows[0].keys() if rows else []))
    writer = csv.DictWriter(buf, fieldnames=fieldnames)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: to_jsonable(v) for k, v in row.items()})
    return atomic_write_text(path, buf.getvalue())


def atomic_write_npz(
    path: str | os.PathLike, arrays: Mapping[str, Any], *, compressed: bool = True
) -> Path:
    """Writes named arrays as one ``.npz`` (``np.load(path)[name]`` reads them back)."""
    import numpy as np

    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def save_figure(
    fig,
    path_stem: str | os.PathLike,
    formats: Sequence[str] = ("png", "pdf"),
    *,
    close: bool = False,
) -> list[Path]:
    """Saves a matplotlib figure atomically in each format; returns the paths.

    ``close=True`` then closes it, for scripts that draw many figures.
    """
    paths = []
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150, bbox_inches="tight")
        paths.append(atomic_write_bytes(Path(f"{path_stem}.{fmt}"), buf.getvalue()))
    if close:
        _close(fig)
    return paths


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def to_jsonable(obj: Any) -> Any:
    """Converts configs, numpy/jax arrays and scalars, paths and tuples to JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy / jax arrays and scalars
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        # JSON has no NaN or infinity; null keeps files readable by any parser
        # (a diverged run's loss is a result, recorded as null).
        return None
    return obj


# ----------------------------------------------------------------------------- environment


def environment_info() -> dict[str, Any]:
    """Versions, device and machine, recorded beside every result."""
    import jax

    info: dict[str, Any] = {
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
    }
    for module in ("jaxlib", "flax", "optax", "numpy", "matplotlib", "rnnlab"):
        with contextlib.suppress(Exception):
            info[module] = __import__(module).__version__
    return info


# ----------------------------------------------------------------------------- command line


def _field_type(cls: type, field: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    return hints.get(field.name, str)


def _field_default(field: dataclasses.Field) -> Any:
    """A field's default (its factory called), or ``dataclasses.MISSING`` if it has none."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _parser_for(tp: Any, name: str):
    """Returns a function str -> value for a field of type ``tp``."""
    tp, optional = _unwrap_optional(tp)
    origin = typing.get_origin(tp)

    def parse(text: str):
        if optional and text.lower() in ("none", "null", ""):
            return None
        if origin in (tuple, list, Sequence):
            args = typing.get_args(tp)
            item = args[0] if args else str
            # "", "[]" and "()" all mean the empty sequence (e.g. to skip a study).
            parts = [p.strip() for p in text.strip().strip("[]()").split(",") if p.strip()]
            return tuple(_parser_for(item, name)(p) for p in parts)
        if tp is bool:
            return _parse_bool(text, name)
        if tp in (int, float, str):
            try:
                return tp(text)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{_flag(name)} expects {'an' if tp is int else 'a'} {_KIND[tp]}; "
                    f"received {text!r}"
                ) from None
        return text

    return parse


def _parse_bool(text: str, name: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{_flag(name)} expects true/false; received {text!r}")


_KIND = {int: "integer", float: "number", str: "string"}
_UNSET = object()  # a flag the user did not give (None is a value: --clip-norm none)


def _flag(field_name: str) -> str:
    """The command-line flag of a config field: ``train_steps`` -> ``--train-steps``."""
    return "--" + field_name.replace("_", "-")


def _name_flags(message: str, field_names: Iterable[str]) -> str:
    """Rewrites config field names in a validation message as the flags the user typed.

    A config's ``__post_init__`` speaks of its fields (``seeds must be >= 1``);
    on the command line the user typed ``--seeds``.
    """
    for name in sorted(field_names, key=len, reverse=True):
        message = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", _flag(name), message)
    return message


def _fmt_default(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def build_parser(
    config_cls: type, *, prog: str | None = None, replot: bool = False
) -> argparse.ArgumentParser:
    """An argparse parser whose options are the fields of the dataclass ``config_cls``.

    The parser also has ``--preset NAME`` (keys of ``config_cls.PRESETS``, applied
    before explicit options), ``--out DIR`` and ``--overwrite``, and with
    ``replot=True`` lists ``--replot RESULTS_FOLDER`` (which :func:`replot_folder`
    handles before the config is parsed).
    """
    presets: Mapping[str, Mapping[str, Any]] = getattr(config_cls, "PRESETS", {})
    parser = argparse.ArgumentParser(
        prog=prog,
        description=inspect.cleandoc(config_cls.__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = parser.add_argument_group("config (each field of the config dataclass)")
    # Former flag names a config still accepts, e.g. {"train_steps": ("--steps",)}.
    aliases: Mapping[str, Sequence[str]] = getattr(config_cls, "FLAG_ALIASES", {})
    for f in dataclasses.fields(config_cls):
        tp = _field_type(config_cls, f)
        base, _ = _unwrap_optional(tp)
        default = _field_default(f)
        help_text = f.metadata.get("help", "")
        flag = _flag(f.name)
        also = tuple(aliases.get(f.name, ()))
        if base is bool:
            group.add_argument(
                flag,
                *also,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=_UNSET,
                help=f"{help_text} (default: {default})",
            )
        else:
            kind = getattr(base, "__name__", str(base))
            if typing.get_origin(base) in (tuple, list, Sequence):
                kind = "comma-separated list"
            group.add_argument(
                flag,
                *also,
                dest=f.name,
                type=_parser_for(tp, f.name),
                default=_UNSET,
                metavar=kind.upper() if kind != "comma-separated list" else "A,B,...",
                help=f"{help_text} (default: {_fmt_default(default)})",
            )
    run = parser.add_argument_group("run")
    if presets:
        lines = "; ".join(
            f"{k}: " + ", ".join(f"{n}={_fmt_default(v)}" for n, v in p.items())
            for k, p in presets.items()
        )
        run.add_argument(
            "--preset",
            choices=sorted(presets),
            default=None,
            help=f"start from a named preset, then apply explicit options ({lines})",
        )
        if "quick" in presets:
            run.add_argument(
                "--quick",
                dest="preset",
                action="store_const",
                const="quick",
                help="shorthand for --preset quick",
            )
    run.add_argument(
        "--out", default=None, help="results folder (default: a name made from the config)"
    )
    if replot:
        run.add_argument(
            "--replot",
            metavar="RESULTS_FOLDER",
            default=None,
            help="redraw the figures of an earlier run from the numbers saved in its folder, "
            "and exit (give it alone: the config is read from the folder's config.json)",
        )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing results folder even if it was made with a different config",
    )
    run.add_argument(
        "--compile-cache",
        metavar="DIR",
        default=None,
        help="keep compiled programs in DIR, so a re-run or a resumed run skips compiling "
        f"them (JAX's persistent compilation cache); 'none' for no cache (default: "
        f"${COMPILE_CACHE_ENV} if set, else {_DEFAULT_COMPILE_CACHE}; a "
        "JAX_COMPILATION_CACHE_DIR of your own takes precedence)",
    )
    return parser


def replot_folder(argv: Sequence[str] | None = None, *, prog: str) -> Path | None:
    """The folder of a ``prog --replot RESULTS_FOLDER`` command line, else None.

    Scripts check this before :func:`parse_config`, so a replot needs no config
    options (it reads ``config.json`` from the folder).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--replot" not in argv and not any(a.startswith("--replot=") for a in argv):
        return None
    if len(argv) == 1 and argv[0].startswith("--replot="):
        argv = ["--replot", argv[0].split("=", 1)[1]]
    if len(argv) != 2 or argv[0] != "--replot":
        _usage_error(prog, "--replot takes one results folder and no other option "
                     f"(usage: {prog} --replot RESULTS_FOLDER); received {' '.join(argv)!r}")
    folder = Path(argv[1])
    if not (folder / "config.json").is_file():
        what = "is not a folder" if not folder.is_dir() else "holds no config.json"
        _usage_error(prog, f"--replot: {str(folder)!r} {what}; expected the results folder "
                     "of an earlier run (it holds config.json and the saved numbers)")
    return folder


def _usage_error(prog: str, message: str) -> typing.NoReturn:
    """Exits with status 2 and one line, as argparse does for a bad option."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_config(
    config_cls: type[C],
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    replot: bool = False,
) -> tuple[C, argparse.Namespace]:
    """Builds a ``config_cls`` from the command line. Returns ``(config, namespace)``.

    Invalid values raise through the config's ``__post_init__`` and are reported
    as a usage error (exit status 2) naming the flag (``--train-steps``), not the
    field. ``replot=True`` lists ``--replot`` in ``--help``.
    """
    parser = build_parser(config_cls, prog=prog, replot=replot)
    ns = parser.parse_args(argv)
    values: dict[str, Any] = {}
    preset = getattr(ns, "preset", None)
    if preset:
        values.update(config_cls.PRESETS[preset])
    for f in dataclasses.fields(config_cls):
        v = getattr(ns, f.name)
        if v is not _UNSET:  # an explicit "none" (e.g. --clip-norm none) is a value
            values[f.name] = v
    try:
        config = config_cls(**values)
    except (ValueError, TypeError) as e:
        parser.error(_name_flags(str(e), [f.name for f in dataclasses.fields(config_cls)]))
    return config, ns


# ----------------------------------------------------------------------------- compiling


def fast_compile_field() -> Any:
    """The ``fast_compile`` config field the scripts share (their ``--quick`` turns it on)."""
    return dataclasses.field(default=False, metadata={"help": (
        "compile with most of XLA's optimisation passes off "
        "(jax_disable_most_optimizations): programs compile faster and run slower, "
        "which pays at tiny sizes, where compiling is most of the wall time; numbers "
        "can differ in the last float bits")})


COMPILE_CACHE_ENV = "RNNLAB_COMPILE_CACHE"
_DEFAULT_COMPILE_CACHE = "~/.cache/rnnlab/jax"
# Programs that compile faster than this are not worth a file (the eager ops).
_CACHE_MIN_COMPILE_SECONDS = 0.1


def use_compile_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Keeps the programs compiled from here on in ``path`` (JAX's persistent
    compilation cache), so a later run of the same programs loads them instead.

    ``path`` None means ``$RNNLAB_COMPILE_CACHE``, else ``~/.cache/rnnlab/jax``;
    ``"none"`` turns the cache off. A cache directory already set in JAX (e.g.
    ``JAX_COMPILATION_CACHE_DIR``) is kept. Entries are keyed by the program,
    the compile options, the device and the JAX version, so a cached program is
    the one that would be compiled. Nothing evicts entries: delete the folder
    whenever you like. Returns the directory in use, or None.
    """
    import jax

    if path is None:
        path = os.environ.get(COMPILE_CACHE_ENV) or _DEFAULT_COMPILE_CACHE
    if str(path).strip().lower() in ("none", "off", ""):
        return None
    current = jax.config.jax_compilation_cache_dir
    if current:
        return Path(current)
    folder = Path(path).expanduser()
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", _CACHE_MIN_COMPILE_SECONDS)
    return folder


@contextlib.contextmanager
def compile_fast(enabled: bool = True) -> Iterator[None]:
    """XLA skips most optimisation passes for what is compiled inside the block.

    Restores the previous setting on exit. The setting is not part of JAX's
    compilation cache key, so a jitted function compiled inside and called again
    outside with the same shapes keeps its less optimised program.
    """
    import jax

    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", bool(enabled) or previous)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)


# ----------------------------------------------------------------------------- results folders


class ConfigMismatchError(RuntimeError):
    """Raised when a results folder already holds a run with a different config."""


class FolderBusyError(RuntimeError):
    """Raised when a live run (this host or another) is writing the results folder."""


CLAIM_FILE = ".claim"


def _with_new_defaults(old: dict, config: Any) -> dict:
    """A saved config with the fields added since it was written filled in at their
    defaults, so a folder from an older rnnlab still resumes."""
    if not dataclasses.is_dataclass(config):
        return old
    filled = dict(old)
    for f in dataclasses.fields(config):
        if f.name in filled:
            continue
        default = _field_default(f)
        if default is not dataclasses.MISSING:
            filled[f.name] = to_jsonable(default)
    return filled


def _claim(folder: Path):
    """Claims ``folder`` for this process; returns the open claim file (keep it open).

    The claim is an exclusive ``flock`` on ``folder/.claim``, which also records
    who holds it (host, pid, start time). The kernel drops the lock when its
    process ends, however it ends, ``kill -9`` included, so a claim left by a dead
    run is simply taken over: the file's text only serves the refusal message.
    """
    import fcntl
    import socket

    key = str(folder.resolve())
    if key in _HELD:  # this process already holds it (a resumed call in the same process)
        return _HELD[key]
    path = folder / CLAIM_FILE
    f = open(path, "a+")  # noqa: SIM115 -- held open for the life of the process
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise FolderBusyError(
            f"results folder {folder} is being written by a live run ({holder}); wait for "
            "it to finish, stop it, or choose another --out"
        ) from None
    f.seek(0)
    f.truncate()
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    f.write(f"host {socket.gethostname()}, pid {os.getpid()}, started {started}\n")
    f.flush()
    _HELD[key] = f
    return f


_HELD: dict[str, Any] = {}


@atexit.register
def _release_all_claims() -> None:  # the kernel would drop them anyway; this closes the files
    for folder in list(_HELD):
        release_claim(folder)


def release_claim(folder: str | os.PathLike) -> None:
    """Gives up this process's claim on ``folder`` (a no-op if it holds none)."""
    f = _HELD.pop(str(Path(folder).resolve()), None)
    if f is not None:
        f.close()


def _empty(folder: Path, *, keep: str) -> None:
    for child in folder.iterdir():
        if child.name == keep:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


class RunDir:
    """A results folder for one experiment run.

    On opening it writes ``config.json`` and ``environment.json``. If the folder
    already holds a ``config.json`` from a different config it refuses
    (:class:`ConfigMismatchError`) unless ``overwrite``, in which case it is
    emptied first. With the same config it is reused, so a re-run resumes.

    With several processes (:func:`rnnlab.distributed.maybe_initialize_distributed`)
    only the writer, process 0, creates, empties or writes anything: on the
    others every ``write_*``/``save_figure``/``mark_complete`` is a no-op that
    returns the path, while ``read_json`` still reads (so every process must see
    the folder: put it on a shared filesystem, as the orbax checkpoints need).

    Args:
      path: the folder.
      config: the run's config (a dataclass); its JSON form is compared.
      overwrite: replace a folder made with a different config.
      is_writer: whether this process writes; default ``jax.process_index() == 0``
        (always True in a single-process run).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        config: Any,
        *,
        overwrite: bool = False,
        is_writer: bool | None = None,
    ):
        self.path = Path(path)
        self.config = config
        if is_writer is None:
            import jax

            is_writer = jax.process_index() == 0
        self.is_writer = bool(is_writer)
        if not self.is_writer:
            return
        cfg_json = to_jsonable(config)
        cfg_file = self.path / "config.json"
        self.path.mkdir(parents=True, exist_ok=True)
        _claim(self.path)  # before anything is compared or emptied
        if cfg_file.exists():
            old = _with_new_defaults(json.loads(cfg_file.read_text()), config)
            if old != cfg_json and not overwrite:
                diff = {
                    k: (old.get(k), cfg_json.get(k))
                    for k in set(old) | set(cfg_json)
                    if old.get(k) != cfg_json.get(k)
                }
                raise ConfigMismatchError(
                    f"results folder {self.path} holds a run with a different config "
                    f"(field: (existing, requested) = {diff}); choose another --out or "
                    "pass --overwrite to replace it."
                )
            if overwrite:
                _empty(self.path, keep=CLAIM_FILE)
        atomic_write_json(cfg_file, cfg_json)
        env = environment_info()
        env["argv"] = sys.argv
        env_file = self.path / "environment.json"
        if env_file.exists():
            # A resumed run: keep the first session's record and list each resumption.
            resumed = self.read_json("environment_resumed.json", default=[])
            atomic_write_json(self.path / "environment_resumed.json", resumed + [env])
        else:
            atomic_write_json(env_file, env)

    @classmethod
    def existing(cls, path: str | os.PathLike) -> RunDir:
        """An earlier run's folder, to read and redraw figures in (``--replot``).

        Writes nothing on opening (no config, no environment record); ``config`` is
        the folder's ``config.json`` as a dict.
        """
        run = cls.__new__(cls)
        run.path = Path(path)
        run.config = json.loads((run.path / "config.json").read_text())
        run.is_writer = True
        return run

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def complete(self) -> bool:
        return (self.path / COMPLETE_MARKER).exists()

    def mark_complete(self) -> None:
        """Writes ``COMPLETE`` and gives up the folder's claim (another run may now resume it)."""
        if self.is_writer:
            atomic_write_text(
                self.path / COMPLETE_MARKER, datetime.datetime.now().isoformat() + "\n"
            )
            release_claim(self.path)

    def write_json(self, name: str, obj: Any) -> Path:
        return atomic_write_json(self.path / name, obj) if self.is_writer else self.path / name

    def write_bytes(self, name: str, data: bytes) -> Path:
        return atomic_write_bytes(self.path / name, data) if self.is_writer else self.path / name

    def write_csv(
        self, name: str, rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str] | None = None
    ) -> Path:
        if not self.is_writer:
            return self.path / name
        return atomic_write_csv(self.path / name, rows, fieldnames)

    def write_npz(
        self, name: str, arrays: Mapping[str, Any], *, compressed: bool = True
    ) -> Path:
        if not self.is_writer:
            return self.path / name
        return atomic_write_npz(self.path / name, arrays, compressed=compressed)

    def read_json(self, name: str, default: Any = None) -> Any:
        p = self.path / name
        return json.loads(p.read_text()) if p.exists() else default

    def read_csv(self, name: str) -> list[dict[str, str]] | None:
        """The rows of a CSV written by :meth:`write_csv` (values as text), or None."""
        p = self.path / name
        if not p.exists():
            return None
        with open(p, newline="") as f:
            return list(csv.DictReader(f))

    def save_figure(
        self, fig, stem: str, formats: Sequence[str] = ("png", "pdf"), *, close: bool = False
    ) -> list[Path]:
        paths = [Path(f"{self.path / stem}.{fmt}") for fmt in formats]
        if self.is_writer:
            paths = save_figure(fig, self.path / stem, formats)
        if close:
            _close(fig)
        return paths


def default_run_name(experiment: str, config: Any, root: str | os.PathLike = "results") -> Path:
    """``results/<experiment>/<preset-or-hash>``: a stable name per config, so re-runs resume."""
    import hashlib

    digest = hashlib.sha1(json.dumps(to_jsonable(config), sort_keys=True).encode()).hexdigest()[:8]
    return Path(root) / experiment / f"run-{digest}"


# ----------------------------------------------------------------------------- progress


@contextlib.contextmanager
def progress(
    description: str,
    total: int,
    *,
    disable: bool | None = None,
    interval: float = 10.0,
    stream: Any = None,
) -> Iterator[Any]:
    """Progress with ETA; yields ``advance(n=1, note=None)``.

    On a terminal (stderr is a tty) a rich progress bar. Otherwise, as in a batch
    job whose output goes to a file, plain lines on stdout every ``interval``
    seconds and at the end (``description: done/total, elapsed, eta, note``), so
    a log shows that the run is alive and how far it is. ``disable=True`` prints
    nothing.
    """
    if disable:
        yield lambda n=1, note=None: None
        return
    if disable is None and not sys.stderr.isatty():
        with _plain_progress(description, total, interval, stream or sys.stdout) as advance:
            yield advance
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total, note="")

        def advance(n: int = 1, note: str | None = None) -> None:
            bar.update(task, advance=n, **({"note": note} if note is not None else {}))

        yield advance


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@contextlib.contextmanager
def _plain_progress(description: str, total: int, interval: float, stream) -> Iterator[Any]:
    import time

    start = last = time.monotonic()
    state = {"done": 0, "note": ""}

    def line(now: float) -> str:
        done, elapsed = state["done"], now - start
        eta = _duration(elapsed / done * (total - done)) if 0 < done < total else "?"
        eta = "0:00" if done >= total else eta
        note = f", {state['note']}" if state["note"] else ""
        return (f"{description}: {done}/{total}, elapsed {_duration(elapsed)}, eta {eta}{note}")

    print(f"{description}: 0/{total}, started", file=stream, flush=True)

    def advance(n: int = 1, note: str | None = None) -> None:
        nonlocal last
        state["done"] += n
        if note is not None:
            state["note"] = note
        now = time.monotonic()
        if now - last >= interval:
            last = now
            print(line(now), file=stream, flush=True)

    yield advance
    print(line(time.monotonic()), file=stream, flush=True)


def _cell_text(value: Any) -> str:
    """A table entry: floats to 4 significant digits, a missing value (None, NaN) as n/a."""
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Prints a table with rich (plain text when not a terminal); None and NaN print as n/a."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="right" if c != columns[0] else "left")
    for r in rows:
        table.add_row(*[_cell_text(v) for v in r])
    Console(width=max(140, shutil.get_terminal_size().columns)).print(table)


def open_run_dir(experiment: str, config: Any, namespace: argparse.Namespace) -> RunDir:
    """Opens the run's folder from ``--out``/``--overwrite`` (exits with a message on a
    mismatch) and turns on the ``--compile-cache``."""
    use_compile_cache(getattr(namespace, "compile_cache", None))
    path = namespace.out or default_run_name(experiment, config)
    try:
        return RunDir(path, config, overwrite=namespace.overwrite)
    except (ConfigMismatchError, FolderBusyError) as e:
        raise SystemExit(f"error: {e}") from None
