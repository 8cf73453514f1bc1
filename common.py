"""What every script shares, written once: the config mechanism, user errors, option checks, safe
file writing, runtime setup (device, dtype, DDP, seeding) and the checkpoint format.

Config: each script declares a dataclass whose fields are its options, with `opt(default, help)` and
the values each accepts (bounds or choices; a float is always finite). `parse_config` fills it from
TOML files (`config/tiny.toml` or `--config=...`, left to right), then from `--key=value` (or
`--key value`) overrides, checking every key, type and value (`check_config`, which scripts call again
for configs built in code); `--help` lists all. Every mistake is one line on stderr and exit status 2.
"""
import contextlib
import ctypes
import dataclasses
import difflib
import fcntl
import hashlib
import json
import math
import operator
import os
import secrets
import sys
import time
import tomllib
import types
import typing
from dataclasses import field

import torch
import torch.distributed as dist


class UserError(Exception):
    """A mistake the user can fix; scripts print it as one line and exit with status 2."""


def opt(default, help: str, *, ge=None, gt=None, le=None, lt=None, choices: tuple | None = None):
    """A config field with its help text and the values it accepts (checked by check_config): bounds
    ge/gt/le/lt (each item of a list), or choices (one ending in ':N' stands for any index, e.g. cuda:N).
    Every float must be finite. Lists get a default_factory."""
    rule = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt), ("choices", choices)) if v is not None}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, "rule": rule})
    return field(default=default, metadata={"help": help, "rule": rule})


DEVICES = ("auto", "cpu", "cuda", "cuda:N")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def _type_name(tp) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is list:
        return f"list[{args[0].__name__}]"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return "|".join("none" if a is type(None) else _type_name(a) for a in args)
    return tp.__name__


def _convert(key: str, value, tp):
    """`value` (a CLI string or a TOML value) as type `tp`, or a UserError naming the key."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # X | None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _convert(key, value, next(a for a in args if a is not type(None)))
    if origin is list:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise UserError(f"--{key} expects a comma-separated {_type_name(tp)}, got {value!r}")
        return [_convert(key, v.strip() if isinstance(v, str) else v, args[0]) for v in items if v != ""]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise UserError(f"--{key} expects true or false, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"--{key} expects a string, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool) or (tp is int and isinstance(value, float)):
            raise UserError(f"--{key} expects {tp.__name__}, got {value!r}")
        try:
            return tp(value)
        except (TypeError, ValueError):
            raise UserError(f"--{key} expects {tp.__name__}, got {value!r}") from None
    raise TypeError(f"unsupported config type {tp} for {key}")


def config_help(cls, prog: str) -> str:
    hints = typing.get_type_hints(cls)
    lines = [f"usage: {prog} [CONFIG.toml] [--key=value ...]", ""]
    if cls.__doc__:
        lines += [cls.__doc__.strip(), ""]
    lines += ["options (defaults in brackets; a CONFIG.toml or --config=FILE sets keys before the overrides):"]
    own = cls.__dict__.get("__annotations__", {})  # a script's own options first, inherited ones after
    order = {name: i for i, name in enumerate(own)}
    for f in sorted(dataclasses.fields(cls), key=lambda f: order.get(f.name, len(order))):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        if isinstance(shown, str):  # a newline default shows as \n, not as a line break
            shown = shown.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
        accepts = _accepts(f.metadata.get("rule", {}), hints[f.name])
        lines.append(f"  --{f.name}={_type_name(hints[f.name])}".ljust(34) + f" {f.metadata.get('help', '')} [{shown}]"
                     + (f" ({accepts})" if accepts else ""))
    return "\n".join(lines)


def parse_config(cls, argv: list[str] | None = None, prog: str | None = None):
    """An instance of dataclass `cls` from a TOML file and --key=value overrides (see module doc)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or os.path.basename(sys.argv[0])
    if "-h" in argv or "--help" in argv:
        print(config_help(cls, prog))
        sys.exit(0)
    hints = typing.get_type_hints(cls)
    values: dict = {}
    pairs: list[tuple[str, object]] = []
    i = n_files = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if not eq:  # --key value, or a bare boolean flag
                nxt = argv[i + 1] if i + 1 < len(argv) else None
                if hints.get(key.replace("-", "_")) is bool and (nxt is None or nxt.startswith("--")):
                    value = "true"
                elif nxt is None or nxt.startswith("--"):
                    raise UserError(f"--{key} needs a value (--{key}=VALUE); see {prog} --help")
                else:
                    value, i = nxt, i + 1
            pairs.append((key.replace("-", "_"), value))
        elif arg.endswith(".toml"):  # config files first, left to right like repeated --config
            pairs.insert(n_files, ("config", arg))
            n_files += 1
        else:
            raise UserError(f"unexpected argument {arg!r}; options look like --key=value (see {prog} --help)")
        i += 1
    for key, value in pairs:
        if key == "config":
            values.update(load_toml(cls, value))
        elif key not in hints:
            raise UserError(f"unknown option --{key}{_nearest(key, hints)}; see {prog} --help")
        else:
            values[key] = _convert(key, value, hints[key])
    return check_config(cls(**values))


def _nearest(key: str, names) -> str:
    close = difflib.get_close_matches(key, list(names), n=1)
    return f" (did you mean --{close[0]}?)" if close else ""


_BOUNDS = {"ge": (">=", operator.ge), "gt": (">", operator.gt), "le": ("<=", operator.le), "lt": ("<", operator.lt)}


def _accepts(rule: dict, tp) -> str:
    """What a rule accepts, in words: 'a finite number > 0', 'an integer in [0, 1)', 'one of a, b'."""
    while typing.get_origin(tp) in (typing.Union, types.UnionType, list):  # X | None, list[X]: X
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if "choices" in rule:
        return "one of " + ", ".join(map(str, rule["choices"]))
    kind = {float: "a finite number", int: "an integer"}.get(tp, "")
    if {"ge", "gt"} & set(rule) and {"le", "lt"} & set(rule):
        lo, hi = rule.get("ge", rule.get("gt")), rule.get("le", rule.get("lt"))
        return f"{kind} in {'[' if 'ge' in rule else '('}{lo}, {hi}{']' if 'le' in rule else ')'}"
    return " ".join([kind] + [f"{_BOUNDS[k][0]} {v}" for k, v in rule.items()]) if rule or tp is float else ""


def _allowed(value, rule: dict) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if "choices" in rule:  # a choice 'cuda:N' stands for cuda:0, cuda:1, ...
        return value in rule["choices"] or any(c.endswith(":N") and str(value).startswith(c[:-1])
                                              and str(value)[len(c) - 1:].isdigit() for c in rule["choices"])
    return all(_BOUNDS[k][1](value, bound) for k, bound in rule.items())


def check_config(cfg):
    """Every option of `cfg` within what its opt() accepts (NaN and inf never), then the config's own
    cross-option checks (its validate(), if any); a UserError names the first option that is not. Returns cfg.
    parse_config calls it; scripts call it again at the top of main, for configs built in code."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        rule, value = f.metadata.get("rule", {}), getattr(cfg, f.name)
        for item in value if isinstance(value, list) else [value]:
            if item is not None and not _allowed(item, rule):
                each = " (each value)" if isinstance(value, list) else ""
                raise UserError(f"--{f.name}{each} must be {_accepts(rule, hints[f.name])}, got {item!r}")
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def load_toml(cls, path: str) -> dict:
    """Typed values of a TOML config file; every key must be a field of `cls`."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise UserError(f"config file {path}: unknown key(s) {', '.join(unknown)}{_nearest(unknown[0], hints)}")
    return {k: _convert(k, v, hints[k]) for k, v in raw.items()}


def run_main(main, *args) -> None:
    """Call main(*args); a UserError becomes one line on stderr and exit status 2. So does, as a last
    resort, a disk or permission error on a named file that no script turned into a UserError. Ctrl-C is
    'interrupted' and status 130."""
    try:
        main(*args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        if e.filename is None:
            raise
        print(f"error: {e.filename}: {e.strerror}", file=sys.stderr)
        sys.exit(2)


# ----------------------------------------------------------------------------- writing files
# A full disk, a read-only or missing directory: one line naming the path, never a traceback, and no
# temp file left behind. Scripts probe their output directory before any long work.

def _cannot_write(path: str, e: OSError) -> UserError:
    return UserError(f"cannot write {path}: {e.strerror or e}")


def ensure_writable_dir(path: str) -> None:
    """Create directory `path` if needed and prove it writable with a small file of its own."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"cannot write {path}: it is a file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-probe.{secrets.token_hex(4)}")
        try:
            with open(probe, "xb") as f:
                f.write(b"ok")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(probe)
    except OSError as e:
        raise _cannot_write(path, e) from None


def ensure_writable_file(path: str) -> None:
    """The directory of `path` is writable (created if needed) and `path` is not a directory."""
    if os.path.isdir(path):
        raise UserError(f"cannot write {path}: it is a directory")
    ensure_writable_dir(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb"):
    """A file for writing `path` whole or not at all: a temp file of its own (no other process ever
    opens it) in the same directory, fsynced, then renamed over `path`. On any error the temp file is
    removed and an OSError becomes a UserError naming `path`."""
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, mode.replace("w", "x")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise _cannot_write(path, e) from None
        raise


def append_line(path: str, line: str) -> None:
    """Append `line` and a newline to `path` whole or not at all: on a disk error the file is cut back to its
    old end (no partial last line) and the error is a UserError naming `path`."""
    with open(path, "ab") as f:
        end = f.tell()
        try:
            f.write(line.encode() + b"\n")
            f.flush()
        except OSError as e:
            with contextlib.suppress(OSError):
                os.truncate(path, end)
            raise _cannot_write(path, e) from None


def lock_dir(directory: str, who: str, name: str, wait_s: float = 0.0):
    """Hold directory/.NAME.lock (an open file; closing it releases the lock) or, after wait_s, refuse with one
    line: one writer per directory. Child processes forked from this one inherit it."""
    f = open(os.path.join(directory, f".{name}.lock"), "a+")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                f.close()
                raise UserError(f"{directory} is being written by another {who} (started by pid {holder}); "
                                "wait for it to end or kill it, then run again") from None
            time.sleep(0.1)
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f


def write_json(path: str, obj) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=1)


def write_text(path: str, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ----------------------------------------------------------------------------- runtime
@dataclasses.dataclass
class Runtime:
    """Where and how this process runs: device, autocast dtype, and its place in DDP."""
    device: torch.device
    dtype: torch.dtype
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def ddp(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0

    def autocast(self):
        """bf16/fp16 autocast on GPU; plain float32 elsewhere."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def keep_freed_memory() -> None:
    """Keep freed memory in the process (glibc): by default each big block goes back to the OS, and on a CPU every
    training step page-faults its logits and activations in again, zeroed (10-20 % of a step)."""
    with contextlib.suppress(OSError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX = 0: big blocks come from the heap, where freed ones are reused ...
        libc.mallopt(-1, 2**31 - 1)  # ... M_TRIM_THRESHOLD: and the heap's top is not handed back


def setup_runtime(device: str = "auto", dtype: str = "auto", seed: int = 0) -> Runtime:
    """Pick the device and dtype, join DDP if launched by torchrun (NCCL on GPU, gloo on CPU), seed."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device=cuda but no CUDA device is available; use --device=cpu")
    rank, local_rank, world = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))
    if world > 1:
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    dev = torch.device(device)
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"--dtype must be auto, float32, bfloat16 or float16, not {dtype!r}")
    if dev.type == "cpu":
        keep_freed_memory()
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(seed)  # same on every rank: identical init (DDP also broadcasts rank 0's weights)
    return Runtime(dev, getattr(torch, dtype), rank, local_rank, world)


def teardown(rt: Runtime) -> None:
    if rt.ddp and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- checkpoints
# One format for every script: {"model": state_dict, "optimizer": state_dict | None, "meta": dict}
# of tensors and plain Python values only, so torch.load(weights_only=True) reads it (no pickle).

def nonfinite_tensors(model: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers holding an inf or NaN."""
    return [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]


def save_checkpoint(path: str, model: torch.nn.Module, optimizer, meta: dict) -> None:
    """Write atomically (atomic_open), so a kill or a full disk never leaves a broken checkpoint;
    weights that are not finite are never written."""
    if bad := nonfinite_tensors(model):
        raise UserError(f"not writing {path}: {len(bad)} tensor(s) of the model are not finite (e.g. {bad[0]})")
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else None, "meta": meta}
    with atomic_open(path) as f:
        try:
            torch.save(state, f)
        except RuntimeError as e:  # torch reports a failed write (full disk) as a RuntimeError caused by the OSError
            if isinstance(e.__context__, KeyboardInterrupt):  # Ctrl-C inside the write: not a disk error
                raise KeyboardInterrupt from None
            cause = e.__context__.strerror if isinstance(e.__context__, OSError) else str(e).splitlines()[0]
            raise UserError(f"cannot write {path}: {cause}") from None


def load_checkpoint(path: str, device: str | torch.device = "cpu") -> dict:
    """A checkpoint written by save_checkpoint, or a UserError saying what is wrong with the file."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickled objects: all unusable
        raise UserError(f"checkpoint {path} is corrupt or not a pausegpt checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or not {"model", "meta"} <= set(ckpt):
        raise UserError(f"checkpoint {path} is not a pausegpt checkpoint (no model/meta)")
    return ckpt


def rng_state() -> dict:
    """Torch RNG states (dropout), saved so that a resumed run continues bit for bit."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    # a checkpoint loaded with map_location=cuda holds these on the GPU; RNG states must be CPU byte tensors
    torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
