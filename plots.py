"""Figures of a pause study: a metric vs M_inf (the paper's Figure 4), the variants side by side at
M_inf = M_ft (Figure 2), and training/validation loss curves. Each PNG gets the data behind it in a
.json of the same name. Inputs are result records as written by eval.py (or their seed averages).
"""
import itertools
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402
from matplotlib.transforms import ScaledTranslation  # noqa: E402

from common import UserError, atomic_open, write_json  # noqa: E402

VARIANTS = ["StdPT_StdFT", "StdPT_PauseFT", "PausePT_StdFT", "PausePT_PauseFT"]
COLORS = {"StdPT_StdFT": "tab:gray", "StdPT_PauseFT": "tab:blue", "PausePT_StdFT": "tab:green",
          "PausePT_PauseFT": "tab:red"}
EXTRA_COLORS = ["tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "black"]


def _select(records: list[dict], task: str, metric: str) -> list[dict]:
    rows = [r for r in records if r.get("task") == task and r.get("metric") == metric]
    if not rows:
        have = sorted({f"{r.get('task')}/{r.get('metric')}" for r in records})
        raise UserError(f"no results for task {task!r} metric {metric!r} "
                        f"({'have ' + ', '.join(have) if have else 'no records at all'})")
    return rows


def _series(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows by variant (split by m_ft when one name has several), the four variants first, each sorted
    by m_inf; a repeated (variant, m_ft, m_inf) keeps its last record."""
    m_fts: dict[str, set] = {}
    for r in rows:
        m_fts.setdefault(r["variant"], set()).add(r["m_ft"])
    groups: dict[str, dict] = {}
    variant: dict[str, str] = {}
    for r in rows:
        label = r["variant"] if len(m_fts[r["variant"]]) == 1 else f"{r['variant']} (M_ft={r['m_ft']})"
        groups.setdefault(label, {})[r["m_inf"]] = r
        variant[label] = r["variant"]
    rank = {v: i for i, v in enumerate(VARIANTS)}
    order = sorted(groups, key=lambda k: rank.get(variant[k], len(rank)))
    return {k: [groups[k][m] for m in sorted(groups[k])] for k in order}  # sorted() is stable: others keep order


def _colors(labels) -> dict[str, str]:
    extra = itertools.cycle(EXTRA_COLORS)
    return {k: COLORS.get(k) or next(extra) for k in labels}


def _err(r: dict) -> float:
    """A record's error bar: the spread the study's tables print, the std over seeds for a seed average,
    else the standard error over the test examples (a single run's, or a single seed's)."""
    return (r.get("std") if r.get("n_seeds", 1) > 1 else r.get("stderr")) or 0.0


def _err_caption(rows: list[dict]) -> str:
    """What the error bars are, said on the figure."""
    seeds = {r.get("n_seeds", 1) for r in rows}
    if seeds == {1}:
        return "error bars: ± 1 standard error over the test examples"
    if 1 not in seeds:
        return f"error bars: ± 1 std over {seeds.pop() if len(seeds) == 1 else 'the'} seeds"
    return "error bars: ± 1 std over seeds (seed averages), ± 1 standard error (single runs)"


def _save(fig, out_png: str, data: dict) -> str:
    """Write the PNG and its .json beside it (each via a temp file and a rename), close the figure."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
        with atomic_open(out_png) as f:
            fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    write_json(os.path.splitext(out_png)[0] + ".json", data)
    return out_png


def minf_curve(records: list[dict], task: str, metric: str, out_png: str, baseline: str = "StdPT_StdFT") -> str:
    """`metric` vs M_inf, a line per variant, the baseline at its own M_ft dashed, a star at M_inf = M_ft."""
    rows = _select(records, task, metric)
    series = _series(rows)
    colors = _colors(series)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    base_info = None
    base = [r for r in rows if r["variant"] == baseline]
    if base:
        own = [r for r in base if r["m_inf"] == r["m_ft"]]
        if own:
            value, err, label = own[-1]["value"], _err(own[-1]), f"{baseline} (M_inf={own[-1]['m_inf']})"
        else:
            value = sum(r["value"] for r in base) / len(base)
            err = sum(_err(r) ** 2 for r in base) ** 0.5 / len(base)
            label = f"{baseline} (mean over M_inf)"
        color = colors.get(baseline, "black")
        ax.axhspan(value - err, value + err, color=color, alpha=0.12, lw=0)
        ax.axhline(value, color=color, ls="--", lw=1.2, label=label)
        base_info = {"label": label, "value": value, "err": err}
    starred = False
    for i, (label, rs) in enumerate(series.items()):
        xs, ys = [r["m_inf"] for r in rs], [r["value"] for r in rs]
        # nudge each series sideways a little (in inches) so that error bars at the same M_inf stay visible
        shift = ax.transData + ScaledTranslation(0.04 * (i - (len(series) - 1) / 2), 0, fig.dpi_scale_trans)
        ax.errorbar(xs, ys, yerr=[_err(r) for r in rs], color=colors[label], marker="o", ms=4, capsize=3,
                    lw=1.5, ls="-" if len(rs) > 1 else "none", label=label, transform=shift)
        ax.update_datalim([(x, y + s * _err(r)) for x, y, r in zip(xs, ys, rs) for s in (-1, 1)])  # not seen via shift
        m_ft = rs[0]["m_ft"]
        if m_ft > 0 and m_ft in xs:  # where a pause-finetuned model sees the M_inf it was trained with
            ax.plot(m_ft, ys[xs.index(m_ft)], marker="*", ms=15, color=colors[label], mec="black", mew=0.7,
                    ls="none", zorder=5, transform=shift)
            starred = True
    if starred:
        ax.plot([], [], marker="*", ms=12, color="white", mec="black", ls="none", label="M_inf = M_ft")
    ticks = sorted({r["m_inf"] for r in rows})
    if ticks[-1] >= 10:  # 0, 1, 2, 5 ... 50: linear near 0, logarithmic beyond, so small M_inf stay apart
        ax.set_xscale("symlog", linthresh=1, linscale=0.5)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    caption = _err_caption(rows)
    ax.set(xlabel="M_inf (pauses appended at inference)", ylabel=metric, title=f"{task}: {metric} vs M_inf\n{caption}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)  # outside: covers no data
    data = {"task": task, "metric": metric, "error_bars": caption, "baseline": base_info,
            "series": [{"label": k, "variant": rs[0]["variant"], "m_ft": rs[0]["m_ft"],
                        **{key: [r.get(key) for r in rs] for key in ("m_inf", "value", "stderr")},
                        "err": [_err(r) for r in rs]}
                       for k, rs in series.items()],
            "records": [r for rs in series.values() for r in rs]}
    return _save(fig, out_png, data)


def variants_bar(records: list[dict], task: str, metric: str, out_png: str, at: str = "m_ft") -> str:
    """One bar per variant: `metric` at M_inf = its own M_ft (at="m_ft") or at a fixed M_inf (at="10")."""
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
    colors = _colors(series)
    values, errs = [r["value"] for _, r in bars], [_err(r) for _, r in bars]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(bars) + 1.5), 4.5))
    ax.bar(range(len(bars)), values, yerr=errs, capsize=4, color=[colors[k] for k, _ in bars],
           edgecolor="black", lw=0.6)
    for i, (v, e) in enumerate(zip(values, errs)):
        ax.text(i, v + e, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    top = max(v + e for v, e in zip(values, errs))
    ax.set_ylim(min(0.0, min(values)), top * 1.12 if top > 0 else 1.0)  # headroom for the printed values
    tilt = len(bars) > 4
    ax.set_xticks(range(len(bars)), [f"{k}\nM_ft={r['m_ft']}" for k, r in bars], rotation=20 if tilt else 0,
                  ha="right" if tilt else "center", rotation_mode="anchor", fontsize=8)
    where = "M_inf = M_ft" if at == "m_ft" else f"M_inf = {int(at)}"
    caption = _err_caption([r for _, r in bars])
    ax.set(ylabel=metric, title=f"{task}: {metric} at {where}\n{caption}")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_png, {"task": task, "metric": metric, "at": at, "error_bars": caption,
                                "bars": [{"label": k, **r, "err": _err(r)} for k, r in bars]})


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


def loss_curves(logs: dict[str, str], out_png: str, title: str = "", smooth: int = 0, logy: bool = True) -> str:
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
    colors = _colors(list(runs))
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
    ax.set(xlabel="step", ylabel="loss", title=title or "loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, out_png, {"title": title, "runs": runs})


def accuracy_vs_flops(rows: list[dict], records: list[dict], key: str, label: str, out_png: str, title: str) -> str:
    """Accuracy against FLOPs (`key` of each row and record): an arm's mean ± std (rows: arm, mean, std, key)
    over its seeds (records: arm, value, key), the seeds as faint dots; log x axis."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, r in enumerate(rows):
        pts = [x for x in records if x["arm"] == r["arm"]]
        ax.scatter([x[key] for x in pts], [100 * x["value"] for x in pts], color=f"C{i}", alpha=0.3, s=12)
        ax.errorbar([r[key]], [100 * r["mean"]], yerr=[100 * r["std"]], fmt="o", color=f"C{i}", capsize=3,
                    label=r["arm"])
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("accuracy, % (mean ± std; dots: seeds)")
    ax.set_title(f"{title}: accuracy vs {label.split(' (')[0]}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out_png, {"rows": rows, "key": key})
