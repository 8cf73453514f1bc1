"""The user's figures of pause experiments: a metric vs M_inf (the paper's Figure 4), the variants side by side at
M_inf = M_ft (Figure 2) and training/validation loss curves (the experiments' own figures and their arms'
colours are in experiments/figures.py). Each PNG gets the data behind it in a .json of the same name (its
colours included). Inputs are result records as written by
eval.py (or their seed averages). Every arm has one colour in every figure, every curve of a figure its own;
values are in %.

    python plots.py minf out/a/results.json out/b/results.json --out=minf.png   # one line per checkpoint
    python plots.py variants out/a/results.json out/b/results.json --out=bars.png
"""
import json
import math
import os
import sys
import zlib
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402
from matplotlib.transforms import ScaledTranslation  # noqa: E402

from config import UserError, config_help, opt, parse_config, print_help, run_main  # noqa: E402
from pause import VARIANTS  # noqa: E402
from runtime import atomic_open, write_json  # noqa: E402

# The paper's four variants and their two pretrainings have one colour each in every figure (experiments/figures.py
# adds its arms' colours through the `palette` argument of the figures below).
ARM_COLORS = {"StdPT_StdFT": "tab:gray", "StdPT_PauseFT": "tab:blue", "PausePT_StdFT": "tab:green",
              "PausePT_PauseFT": "tab:red", "StdPT": "tab:gray", "PausePT": "tab:red"}
# Any other label (rope arms, extra M_ft values, user checkpoints) gets a colour fixed by its name alone.
SPARE_COLORS = ["slateblue", "darkkhaki", "orchid", "lime", "deepskyblue", "indigo", "peru", "darkseagreen", "salmon",
                "darkcyan", "plum", "yellowgreen"]  # none of them in ARM_COLORS
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*"]


def arm_color(label: str, palette: dict | None = None) -> str:
    """The colour of an arm (or any label): from `palette`, else ARM_COLORS, else from a hash of the name (stable)."""
    return ({**ARM_COLORS, **(palette or {})}).get(label) or \
        SPARE_COLORS[zlib.crc32(label.encode()) % len(SPARE_COLORS)]


def figure_colors(labels, palette: dict | None = None) -> dict[str, str]:
    """One colour per label of a figure, each its own: the label's arm_color, unless an earlier label of the
    figure has it (two labels that hash alike); then the first colour the figure does not use yet."""
    colors: dict[str, str] = {}
    for label in labels:
        used = {to_hex(c) for c in colors.values()}
        free = [c for c in SPARE_COLORS + list(matplotlib.colormaps["tab20"].colors) if to_hex(c) not in used]
        own = arm_color(label, palette)
        colors[label] = own if to_hex(own) not in used else to_hex(free[0])
    return colors


def fmt_num(x, spec: str = ".1f") -> str:
    """x formatted, or "—" where it is undefined (a std over one seed)."""
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _select(records: list[dict], task: str, metric: str) -> list[dict]:
    rows = [r for r in records if r.get("task") == task and r.get("metric") == metric]
    if not rows:
        have = sorted({f"{r.get('task')}/{r.get('metric')}" for r in records})
        raise UserError(f"no results for task {task!r} metric {metric!r} "
                        f"({'have ' + ', '.join(have) if have else 'no records at all'})")
    return rows


def _series(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows by label (a record's "label", else its variant, split by m_ft when one name has several), the four
    variants first, each sorted by m_inf; a repeated (label, m_inf) keeps its last record."""
    m_fts: dict[str, set] = {}
    for r in rows:
        m_fts.setdefault(r.get("label", r["variant"]), set()).add(r["m_ft"])
    groups: dict[str, dict] = {}
    variant: dict[str, str] = {}
    for r in rows:
        name = r.get("label", r["variant"])
        label = name if len(m_fts[name]) == 1 else f"{name} (M_ft={r['m_ft']})"
        groups.setdefault(label, {})[r["m_inf"]] = r
        variant[label] = r["variant"]
    rank = {v: i for i, v in enumerate(VARIANTS)}
    order = sorted(groups, key=lambda k: rank.get(variant[k], len(rank)))
    return {k: [groups[k][m] for m in sorted(groups[k])] for k in order}  # sorted() is stable: others keep order


def _err(r: dict) -> float:
    """A record's error bar: the spread the study's tables print, the std over seeds for a seed average,
    else the standard error over the examples (a single run's, or a single seed's)."""
    return (r.get("std") if r.get("n_seeds", 1) > 1 else r.get("stderr")) or 0.0


def _err_name(rows: list[dict]) -> str:
    """What the error bars are, over the examples of the split the records name (test, val, ...)."""
    seeds, splits = {r.get("n_seeds", 1) for r in rows}, {r.get("split") for r in rows}
    if seeds == {1}:
        split = splits.pop() + " " if len(splits) == 1 and None not in splits else ""
        return f"± 1 standard error over the {split}examples"
    if 1 not in seeds:
        return f"± 1 std over {seeds.pop() if len(seeds) == 1 else 'the'} seeds"
    return "± 1 std over seeds (seed averages), ± 1 standard error (single runs)"


def _err_caption(rows: list[dict]) -> str:
    return "error bars: " + _err_name(rows)


def save_figure(fig, out_png: str, data: dict) -> str:
    """Write the PNG and its .json beside it (each via a temp file and a rename), close the figure."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
        with atomic_open(out_png) as f:
            fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    write_json(os.path.splitext(out_png)[0] + ".json", data)
    return out_png


def _pct(x: float) -> float:
    return round(100 * x, 6)  # % for the axes and the data file; rounded so that 0.1 reads 10.0, not 10.000000000000002


def minf_curve(records: list[dict], task: str, metric: str, out_png: str, baseline: str = "StdPT_StdFT",
               title: str = "", palette: dict | None = None) -> str:
    """`metric` (%) vs M_inf on a linear axis, a line per variant, the baseline at its own M_ft dashed with its
    error band, a star at M_inf = M_ft. `title` names the task as a reader should read it (default: `task`)."""
    rows = _select(records, task, metric)
    series = _series(rows)
    colors = figure_colors(series, palette)
    err_name = _err_name(rows)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    base_info = None
    base_label = next((k for k, rs in series.items() if rs[0]["variant"] == baseline), None)  # the first such curve
    base = series.get(base_label, [])
    if base:
        own = [r for r in base if r["m_inf"] == r["m_ft"]]
        if own:
            value, err, label = own[-1]["value"], _err(own[-1]), f"{base_label} (M_inf={own[-1]['m_inf']})"
        else:
            value = sum(r["value"] for r in base) / len(base)
            err = sum(_err(r) ** 2 for r in base) ** 0.5 / len(base)
            label = f"{base_label} (mean over M_inf)"
        color = colors[base_label]
        ax.axhspan(_pct(value - err), _pct(value + err), color=color, alpha=0.12, lw=0, label=f"{label} {err_name}")
        ax.axhline(_pct(value), color=color, ls="--", lw=1.2, label=label)
        base_info = {"label": label, "value": _pct(value), "err": _pct(err), "band": f"{label} {err_name}"}
    stars, offsets = {}, {}
    for i, (label, rs) in enumerate(series.items()):
        xs, ys, es = [r["m_inf"] for r in rs], [_pct(r["value"]) for r in rs], [_pct(_err(r)) for r in rs]
        # nudge each series sideways a hair (in inches), so that error bars at one M_inf stay apart; all the
        # nudges together stay within 0.06 inch, a fraction of one M_inf step, so no point seems to move
        offsets[label] = round(0.06 * (i / (len(series) - 1) - 0.5), 4) if len(series) > 1 else 0.0
        shift = ax.transData + ScaledTranslation(offsets[label], 0, fig.dpi_scale_trans)
        ax.errorbar(xs, ys, yerr=es, color=colors[label], marker="o", ms=4, capsize=3,
                    lw=1.5, ls="-" if len(rs) > 1 else "none", label=label, transform=shift)
        ax.update_datalim([(x, y + s * e) for x, y, e in zip(xs, ys, es) for s in (-1, 1)])  # not seen via shift
        m_ft = rs[0].get("ft_m", rs[0]["m_ft"])  # the pauses it was finetuned with ("lo:hi" for a range: no star)
        if type(m_ft) is int and m_ft > 0 and m_ft in xs:  # where a pause-finetuned model sees its own M_ft
            ax.plot(m_ft, ys[xs.index(m_ft)], marker="*", ms=15, color=colors[label], mec="black", mew=0.7,
                    ls="none", zorder=5, transform=shift)
            stars[label] = m_ft
    if stars:
        ax.plot([], [], marker="*", ms=12, color="white", mec="black", ls="none", label="M_inf = M_ft")
    ticks = sorted({r["m_inf"] for r in rows})
    ax.set_xticks(ticks, [str(t) for t in ticks])  # a linear axis: the gaps between ticks are to scale
    ax.xaxis.set_minor_formatter(NullFormatter())
    caption = _err_caption(rows)
    ax.set(xlabel="M_inf (pauses appended at inference; linear axis)", ylabel=f"{metric}, %",
           title=f"{title or task}: {metric} vs M_inf\n{caption}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)  # outside: covers no data
    data = {"task": task, "title": title or task, "metric": metric, "unit": "%", "xscale": ax.get_xscale(),
            "error_bars": caption, "baseline": base_info, "colors": colors, "offsets_inch": offsets, "stars": stars,
            "legend": [t.get_text() for t in ax.get_legend().get_texts()],
            "series": [{"label": k, "variant": rs[0]["variant"], "m_ft": rs[0]["m_ft"], "m_inf": [r["m_inf"] for r in rs],
                        "value": [_pct(r["value"]) for r in rs], "stderr": [_pct(r.get("stderr") or 0) for r in rs],
                        "err": [_pct(_err(r)) for r in rs]}
                       for k, rs in series.items()],
            "records": [r for rs in series.values() for r in rs]}
    return save_figure(fig, out_png, data)


def bar_label(label: str, r: dict) -> str:
    """A bar's name: the arm, how it was finetuned, and what it got at inference."""
    ft = r.get("ft_m", r["m_ft"])
    token = r.get("inference_token", "<pause>")
    got = "no pauses" if r["m_inf"] == 0 else f"{r['m_inf']} × " + (token if token == "<pause>" else f"'{token}'")
    return f"{label.replace(' (', chr(10) + '(')}\nfinetuned M_ft={ft}\ninference: {got}"  # "(its file)": a line


def variants_bar(records: list[dict], task: str, metric: str, out_png: str, at: str = "m_ft", title: str = "",
                 palette: dict | None = None) -> str:
    """One bar per variant: `metric` (%) at M_inf = its own M_ft (at="m_ft") or at a fixed M_inf (at="10")."""
    if at != "m_ft" and not str(at).isdigit():
        raise UserError(f"at must be 'm_ft' or a number of inference pauses, not {at!r}")
    rows = _select(records, task, metric)
    series = _series(rows)
    bars = []
    for label, rs in series.items():
        want = rs[0]["m_ft"] if at == "m_ft" else int(at)
        bars += [(label, r) for r in rs if r["m_inf"] == want]
    if not bars:
        raise UserError(f"no {task} {metric} result at M_inf = {at} for any variant")
    colors = figure_colors((k for k, _ in bars), palette)
    values, errs = [_pct(r["value"]) for _, r in bars], [_pct(_err(r)) for _, r in bars]
    names = [bar_label(k, r) for k, r in bars]
    inches = max(1.6, 0.07 * max(len(line) for n in names for line in n.split("\n")))  # a bar's name fits under it
    fig, ax = plt.subplots(figsize=(max(5.0, inches * len(bars) + 1.5), 4.8))
    ax.bar(range(len(bars)), values, yerr=errs, capsize=4, color=[colors[k] for k, _ in bars],
           edgecolor="black", lw=0.6)
    for i, (v, e) in enumerate(zip(values, errs)):
        ax.text(i, v + e, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    top = max(v + e for v, e in zip(values, errs))
    ax.set_ylim(min(0.0, min(values)), top * 1.12 if top > 0 else 100.0)  # headroom for the printed values
    tilt = len(bars) > 4
    ax.set_xticks(range(len(bars)), names, rotation=25 if tilt else 0, ha="right" if tilt else "center",
                  rotation_mode="anchor", fontsize=7)
    where = "M_inf = M_ft" if at == "m_ft" else f"M_inf = {int(at)}"
    caption = _err_caption([r for _, r in bars])
    ax.set(ylabel=f"{metric}, %", title=f"{title or task}: {metric} at {where}\n{caption}")
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out_png, {"task": task, "title": title or task, "metric": metric, "unit": "%", "at": at,
                                "error_bars": caption, "colors": colors,
                                "bars": [{"label": k, "name": n, "variant": r["variant"], "m_ft": r["m_ft"], "m_inf": r["m_inf"],
                                          "value": v, "err": e, "record": r}
                                         for (k, r), n, v, e in zip(bars, names, values, errs)]})


def read_log(path: str) -> dict:
    """Training loss and eval losses of a log.jsonl by step; a step logged twice (a resumed run) keeps its last."""
    train, val = {}, {}
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a run killed mid-write leaves a partial last line
            if not isinstance(rec, dict) or "step" not in rec:
                continue  # a run's config header
            if "loss" in rec:
                train[rec["step"]] = rec["loss"]
            if "val_loss" in rec:
                val[rec["step"]] = (rec["val_loss"], rec.get("val_loss_pause"))
    steps, vsteps = sorted(train), sorted(val)
    return {"path": path, "train": {"step": steps, "loss": [train[s] for s in steps]},
            "val": {"step": vsteps, "val_loss": [val[s][0] for s in vsteps],
                    "val_loss_pause": [val[s][1] for s in vsteps]}}


def running_mean(xs: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start)."""
    out, total = [], 0.0
    for i, x in enumerate(xs):
        total += x - (xs[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def loss_curves(logs: dict[str, str], out_png: str, title: str = "", smooth: int = 0, logy: bool = True,
                palette: dict | None = None) -> str:
    """Training loss (a running mean over `smooth` steps, 0 = ~1/50 of the run) and val_loss of each labelled log."""
    runs = {}
    for label, path in logs.items():
        try:
            run = read_log(path)
        except OSError as e:
            print(f"warning: skipping log {path}: {e.strerror}", file=sys.stderr)
            continue
        if run["train"]["step"] or run["val"]["step"]:
            runs[label] = run
    if not runs:
        raise UserError(f"no readable training log among {', '.join(logs.values()) or '(none given)'}")
    colors = figure_colors(runs, palette)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, run in runs.items():
        t, v, c = run["train"], run["val"], colors[label]
        run["smooth_window"] = smooth or max(1, len(t["step"]) // 50)
        ax.plot(t["step"], running_mean(t["loss"], run["smooth_window"]), color=c, lw=1, label=f"{label} train")
        ax.plot(v["step"], v["val_loss"], color=c, marker="o", ms=5, ls="none", label=f"{label} val")
        pause = [(s, x) for s, x in zip(v["step"], v["val_loss_pause"]) if x is not None]
        if pause:
            ax.plot(*zip(*pause), color=c, marker="s", ms=5, mfc="none", ls="none", label=f"{label} val (pauses)")
    if logy:
        ax.set_yscale("log")
        plain = FuncFormatter(lambda y, _: f"{y:g}")  # 3, 4, 6, 10 rather than 3x10^0
        ys = [y for run in runs.values() for y in run["train"]["loss"] + run["val"]["val_loss"]]
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain if max(ys) < 10 * min(ys) else NullFormatter())  # no overlaps
    ax.set(xlabel="step", ylabel="loss (log scale)" if logy else "loss", title=title or "loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    # the data keeps each log's file name, not the folder of the machine that drew it
    kept = {label: {**run, "path": os.path.basename(run["path"])} for label, run in runs.items()}
    return save_figure(fig, out_png, {"title": title, "colors": colors, "runs": kept})


# ----------------------------------------------------------------------------- command line: your own checkpoints

@dataclass
class MinfPlotConfig:
    """Draw metric vs M_inf from eval.py results files, one line per checkpoint, labelled by its variant."""
    out: str = opt("minf.png", "the PNG to write (its data goes beside it as .json)")
    metric: str = opt("", "which metric (default: the first in the files, e.g. em or acc)")
    title: str = opt("", "what the task is, for the title (default: the task name of the results)")

    def validate(self) -> None:
        if not self.out.lower().endswith(".png"):  # its data goes to OUT.json: never over a results file
            raise UserError(f"--out={self.out} must name a .png file (its data is written beside it as .json)")


@dataclass
class VariantsPlotConfig(MinfPlotConfig):
    """A bar per checkpoint at M_inf = its M_ft (or --at=N) from eval.py results files."""
    out: str = opt("variants.png", "the PNG to write (its data goes beside it as .json)")
    at: str = opt("m_ft", "m_ft: each checkpoint at its own M_ft; a number: every checkpoint at this M_inf")


def read_results(paths: list[str]) -> list[dict]:
    """The records of eval.py results files, each labelled by its variant (and what tells its file apart, when two
    files share a variant)."""
    if not paths:
        raise UserError("give one or more eval.py results files (eval.py --out=FILE.json)")
    per_file = []
    for path in paths:
        try:
            with open(path) as f:
                recs = json.load(f)
        except FileNotFoundError:
            raise UserError(f"results file {path} does not exist (eval.py --out={path} writes it)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"results file {path} cannot be read as JSON: {e}") from None
        if not isinstance(recs, list) or not recs or not all(isinstance(r, dict) and {"variant", "m_ft", "m_inf", "metric",
                                                                               "value", "task"} <= r.keys() for r in recs):
            raise UserError(f"{path} is not an eval.py results file (a list of records with variant, m_inf, value)")
        if problem := next((record_problem(r) for r in recs if record_problem(r)), None):
            raise UserError(f"{path}: {problem}")
        per_file.append(recs)
    names = [recs[0]["variant"] for recs in per_file]
    out = []
    for path, name, recs in zip(paths, names, per_file):
        same = [p for p, n in zip(paths, names) if n == name]
        label = name if len(same) == 1 else f"{name} ({distinct_part(path, same)})"
        out += [{**{k: v for k, v in r.items() if k != "samples"}, "label": label} for r in recs]
    return out


def record_problem(r: dict) -> str | None:
    """What makes a results record unplottable (a value that is not a finite number, M_inf not a count), or None."""
    for key in ("value", "stderr"):
        v = r.get(key, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"a record's {key} is {v!r}, not a finite number (variant {r.get('variant')!r}, m_inf {r.get('m_inf')!r})"
    if any(isinstance(r[k], bool) or not isinstance(r[k], int) or r[k] < 0 for k in ("m_inf",)):
        return f"a record's m_inf is {r['m_inf']!r}, not a number of pauses"
    if not all(isinstance(r[k], str) for k in ("variant", "metric", "task")):
        return "a record's variant, metric and task must be strings"
    return None


def distinct_part(path: str, paths: list[str]) -> str:
    """What tells `path` apart from the other `paths`: its folders and name without those all of them share at the
    start and at the end (out/a/results.json among out/b/results.json: "a"), else the whole path."""
    parts = [os.path.normpath(os.path.splitext(p)[0]).split(os.sep) for p in paths]
    head = len(os.path.commonprefix(parts))
    tail = len(os.path.commonprefix([q[head:][::-1] for q in parts]))
    own = parts[paths.index(path)][head:len(parts[paths.index(path)]) - tail]
    return "/".join(own) if own and len({tuple(q[head:len(q) - tail]) for q in parts}) == len(parts) else path


def cli(argv: list[str]) -> None:
    commands = {"minf": (MinfPlotConfig, minf_curve), "variants": (VariantsPlotConfig, variants_bar)}
    if argv[:1] in (["-h"], ["--help"]) or not argv or argv[0] not in commands:
        if argv[:1] not in (["-h"], ["--help"]):
            raise UserError(f"unknown command {argv[0] if argv else ''!r}; use python plots.py minf|variants "
                            "RESULTS.json ... --out=FILE.png (see python plots.py --help)")
        usage = "usage: python plots.py {minf,variants} RESULTS.json ... [--key=value ...]"
        print_help("\n\n".join([usage, __doc__.strip()] + [config_help(cls, f"plots.py {name} RESULTS.json ...")
                                                      for name, (cls, _) in commands.items()]))
        return
    cls, draw = commands[argv[0]]
    files, options, rest = [], [], argv[1:]
    for i, a in enumerate(rest):  # results files are the words that are neither an option nor its value
        is_value = i > 0 and rest[i - 1].startswith("--") and "=" not in rest[i - 1] and not a.startswith("--")
        (options if a.startswith("-") or is_value else files).append(a)
    cfg = parse_config(cls, options, prog=f"plots.py {argv[0]} RESULTS.json ...")
    records = read_results(files)
    tasks = sorted({r["task"] for r in records})
    if len(tasks) > 1:
        raise UserError(f"the results are of several tasks ({', '.join(tasks)}): plot one task at a time")
    metric = cfg.metric or records[0]["metric"]
    extra = {"at": cfg.at} if cls is VariantsPlotConfig else {}
    print(f"wrote {draw(records, tasks[0], metric, cfg.out, title=cfg.title, **extra)} and its data (.json)")


if __name__ == "__main__":
    run_main(cli, sys.argv[1:])
