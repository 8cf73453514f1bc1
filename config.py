"""One config mechanism for every script: a dataclass whose fields are its options, declared with
`opt(default, help, bounds or choices)`, filled from TOML files (`config/tiny.toml` or `--config=FILE`,
left to right) and then `--key=value` overrides, which win over files. Every key, type and value is
checked; `--help` lists them all; every mistake is one line on stderr and exit status 2 (`run_main`).
"""
import dataclasses
import difflib
import math
import operator
import os
import shutil
import sys
import textwrap
import types
import typing

try:
    import tomllib  # new in Python 3.11, as hashlib.file_digest (runtime.py)
except ModuleNotFoundError:  # every script imports this file first: the one line before anything else fails
    print(f"error: pausegpt needs Python >= 3.11, this is {sys.version.split()[0]} (README, 'Install and test')",
          file=sys.stderr)
    sys.exit(2)


class UserError(Exception):
    """A mistake the user can fix; run_main prints it as one line and exits with status 2."""


def opt(default, help: str, *, ge=None, gt=None, le=None, lt=None, choices: tuple | None = None):
    """A field with its help and the values it accepts: bounds ge/gt/le/lt (each item of a list) or choices
    (one ending in ':N' stands for any index, e.g. cuda:N). Every float must be finite."""
    rule = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt), ("choices", choices)) if v is not None}
    kind = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return dataclasses.field(**kind, metadata={"help": help, "rule": rule})


DEVICES = ("auto", "cpu", "cuda", "cuda:N")
DTYPES = ("auto", "float32", "bfloat16", "float16")
_BOUNDS = {"ge": (">=", operator.ge), "gt": (">", operator.gt), "le": ("<=", operator.le), "lt": ("<", operator.lt)}


def _type_name(tp) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is list:
        return f"list[{args[0].__name__}]"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return "|".join("none" if a is type(None) else _type_name(a) for a in args)
    return tp.__name__


def _convert(key: str, value, tp):
    """`value` (a command-line string or a TOML value) as type `tp`, or a UserError naming the key."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # X | None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _convert(key, value, next(a for a in typing.get_args(tp) if a is not type(None)))
    if typing.get_origin(tp) is list:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise UserError(f"--{key} expects a comma-separated {_type_name(tp)}, got {value!r}")
        return [_convert(key, v.strip() if isinstance(v, str) else v, typing.get_args(tp)[0]) for v in items if v != ""]
    words = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
    if tp is bool and (isinstance(value, bool) or isinstance(value, str) and value.lower() in words):
        return value if isinstance(value, bool) else words[value.lower()]
    if tp is str and isinstance(value, str):
        return value
    if tp in (int, float) and not isinstance(value, bool) and not (tp is int and isinstance(value, float)):
        try:
            return tp(value)
        except (TypeError, ValueError):
            pass
    if tp not in (bool, str, int, float):
        raise TypeError(f"unsupported config type {tp} for {key}")
    raise UserError(f"--{key} expects {'true or false' if tp is bool else 'a string' if tp is str else tp.__name__}, "
                    f"got {value!r}")


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
    """Every option of `cfg` within what its opt() accepts, then its own cross-option checks (validate(), if
    any); a UserError names the first option that is not. Scripts call it again for configs built in code."""
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


def config_help(cls, prog: str) -> str:
    """The usage, the config's docstring and one entry per option (a script's own options first)."""
    hints = typing.get_type_hints(cls)
    out = [f"usage: {prog} [CONFIG.toml] [--key=value ...]", "", (cls.__doc__ or "").strip(), "",
           "options (defaults in brackets; a CONFIG.toml or --config=FILE sets keys, then the --key=value overrides):"]
    order = {name: i for i, name in enumerate(cls.__dict__.get("__annotations__", {}))}
    for f in sorted(dataclasses.fields(cls), key=lambda f: order.get(f.name, len(order))):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        if isinstance(shown, str):  # a newline default shows as \n, not as a line break
            shown = shown.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
        accepts = _accepts(f.metadata.get("rule", {}), hints[f.name])
        out.append(f"  --{f.name}={_type_name(hints[f.name])}".ljust(35) + f" {f.metadata.get('help', '')} [{shown}]" +
                   (f" ({accepts})" if accepts else ""))
    return "\n".join(out)


def print_help(text: str) -> None:
    """Print help text: at a terminal every line wrapped to its width, continuations indented under the text of
    an option's entry; piped, unchanged (one line per option, for grep)."""
    if sys.stdout.isatty():
        width = max(20, min(shutil.get_terminal_size().columns, 120))
        lines = []
        for line in text.splitlines():
            body = line.lstrip()
            hang = 36 if body.startswith("--") and len(line) > 36 and line[35] == " " else len(line) - len(body) + 4
            lines += textwrap.wrap(line, width, subsequent_indent=" " * min(hang, width // 2),
                                   break_on_hyphens=False) or [""]
        text = "\n".join(lines)
    print(text)


def module_main(prog: str, doc: str, instead: str, argv: list[str]) -> None:
    """The command line of a module that has none of its own: --help (or no argument) prints its docstring and
    what to run instead; anything else is a UserError saying so."""
    if argv and argv[0] not in ("-h", "--help"):
        raise UserError(f"{prog} has no command of its own: {instead}")
    print_help(f"{doc.strip()}\n\n{prog} has no command of its own: {instead}")


def _nearest(key: str, names) -> str:
    close = difflib.get_close_matches(key, list(names), n=1)
    return f" (did you mean --{close[0]}?)" if close else ""


def load_toml(cls, path: str) -> dict:
    """Typed values of a TOML config file; every key must be a field of `cls`."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None
    hints = typing.get_type_hints(cls)
    if unknown := sorted(set(raw) - set(hints)):
        raise UserError(f"config file {path}: unknown key(s) {', '.join(unknown)}{_nearest(unknown[0], hints)}")
    return {k: _convert(k, v, hints[k]) for k, v in raw.items()}


def parse_config(cls, argv: list[str] | None = None, prog: str | None = None):
    """An instance of dataclass `cls`: config files (a bare *.toml or --config=FILE, in order), then --key=value
    (or --key value, or a bare --flag for a boolean) overrides."""
    argv, prog = list(sys.argv[1:] if argv is None else argv), prog or os.path.basename(sys.argv[0])
    if "-h" in argv or "--help" in argv:
        print_help(config_help(cls, prog))
        sys.exit(0)
    hints, files, pairs, i = typing.get_type_hints(cls), [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            key = name.replace("-", "_")
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if not eq and hints.get(key) is bool and (nxt is None or nxt.startswith("--")):
                value = "true"
            elif not eq and (nxt is None or nxt.startswith("--")):
                raise UserError(f"--{key} needs a value (--{key}=VALUE); see {prog} --help")
            elif not eq:
                value, i = nxt, i + 1
            (files if key == "config" else pairs).append((key, value))
        elif arg.endswith(".toml"):
            files.append(("config", arg))
        else:
            raise UserError(f"unexpected argument {arg!r}; options look like --key=value (see {prog} --help)")
        i += 1
    values = {}
    for _, path in files:
        values.update(load_toml(cls, path))
    for key, value in pairs:
        if key not in hints:
            raise UserError(f"unknown option --{key}{_nearest(key, hints)}; see {prog} --help")
        values[key] = _convert(key, value, hints[key])
    return check_config(cls(**values))


def run_commands(prog: str, doc: str, commands: dict, argv: list[str]) -> None:
    """`prog COMMAND [--key=value ...]`: commands maps each name to (config class, function of the config)."""
    if not argv or argv[0] in ("-h", "--help"):
        if not argv:
            raise UserError(f"name a command: {' | '.join(commands)} (see python {prog} --help)")
        text = f"usage: python {prog} {{{','.join(commands)}}} [--key=value ...]\n\n{doc.strip()}\n\ncommands:\n"
        text += "\n".join(f"  {name:9} {(cls.__doc__ or '').strip()}" for name, (cls, _) in commands.items())
        print_help(text + "".join("\n\n" + config_help(cls, f"{prog} {name}") for name, (cls, _) in commands.items()))
        return
    if argv[0] not in commands:
        raise UserError(f"unknown command {argv[0]!r}; choose one of {', '.join(commands)} (see python {prog} --help)")
    cls, command = commands[argv[0]]
    command(parse_config(cls, argv[1:], prog=f"{prog} {argv[0]}"))


def run_main(main, *args) -> None:
    """Call main(*args): a UserError, or a disk error on a named file that nothing turned into one, becomes one
    line on stderr and exit status 2; Ctrl-C is 'interrupted' and status 130."""
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
