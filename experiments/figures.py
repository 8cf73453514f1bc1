"""The experiments' figures and their arms' colours: one colour per arm in every experiment's figure (PALETTE,
passed to plots.py's figures as `palette`), and accuracy against FLOPs."""
from matplotlib.transforms import ScaledTranslation

import plots

PALETTE = {
    "StdPT_StdFT_matched": "black", "StdPT_FillerFT": "tab:orange", "StdPT_StdFT_InfFiller": "tab:brown",
    "PausePT_PauseFT_InfFiller": "tab:pink", "StdPT_PauseFT_rand": "tab:cyan", "PausePT_PauseFT_rand": "tab:purple",
    "PausePT_PauseFT_prepend": "tab:olive", "StdFT": "tab:gray", "PauseFT": "tab:blue", "CurriculumFT": "tab:purple",
    "StdFT_matched": "black", "Deep_StdFT": "tab:olive", "NoPause": "tab:gray", "Pause": "tab:blue",
    "NoPause_3x": "black", "Deep_NoPause": "tab:olive", "StdPT_StdFT_rope": "goldenrod", "StdPT_PauseFT_rope": "navy",
    "PausePT_PauseFT_rope": "maroon", "StdPT_StdFT_matched_rope": "teal",
    "StdFT_flops": "black", "StdFT_orderings": "tab:orange", "StdFT_pair": "tab:brown", "Wide_StdFT": "tab:olive",
    "SepFT_1": "tab:orange", "SepFT_3": "tab:brown", "PauseFT_1": "tab:cyan", "PauseFT_3": "tab:purple",
}


def arm_color(arm: str) -> str:
    return plots.arm_color(arm, PALETTE)


def accuracy_vs_flops(rows: list[dict], records: list[dict], key: str, label: str, out_png: str, title: str) -> str:
    """Accuracy (%) against FLOPs (`key` of each row and record): an arm's mean ± std (rows: arm, mean, std, key)
    over its seeds (records: arm, value, key), the seeds as faint dots; log x axis. Each arm has its own marker
    and a small sideways offset, so that arms at the same point stay visible."""
    fig, ax = plots.plt.subplots(figsize=(7, 4.2))
    colors, markers, offsets = {}, {}, {}
    same = [[q["arm"] for q in rows if abs(q[key] - r[key]) <= 0.01 * r[key]] for r in rows]  # arms at one FLOPs value
    for i, r in enumerate(rows):
        arm, group = r["arm"], same[i]
        colors[arm], markers[arm] = arm_color(arm), plots.MARKERS[i % len(plots.MARKERS)]
        offsets[arm] = round(0.07 * (group.index(arm) - (len(group) - 1) / 2), 4)  # inches; 0 for an arm alone
        shift = ax.transData + ScaledTranslation(offsets[arm], 0, fig.dpi_scale_trans)
        pts = [x for x in records if x["arm"] == arm]
        ax.scatter([x[key] for x in pts], [plots._pct(x["value"]) for x in pts], color=colors[arm], marker=markers[arm],
                   alpha=0.3, s=14, transform=shift)
        ax.errorbar([r[key]], [plots._pct(r["mean"])], yerr=[plots._pct(r["std"])], fmt=markers[arm], color=colors[arm], ms=7,
                    mfc="none" if i % 2 else colors[arm], mew=1.5, capsize=3, label=arm, transform=shift)
    ax.update_datalim([(r[key], plots._pct(r["mean"]) + s * plots._pct(r["std"])) for r in rows for s in (-1, 1)]  # not seen via
                      + [(x[key], plots._pct(x["value"])) for x in records if x["arm"] in colors])   # the shifts
    ax.margins(y=0.05)
    ax.autoscale_view()
    ax.set_xscale("log")
    ax.set_xlabel(f"{label} (log axis; arms at one value drawn side by side)")
    one_seed = all(sum(x["arm"] == r["arm"] for x in records) <= 1 for r in rows)
    ylabel = "accuracy, % (one seed)" if one_seed else "accuracy, % (mean ± std over seeds;\nfaint: each seed)"
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}\naccuracy vs {label.split(' (')[0]}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return plots.save_figure(fig, out_png, {"title": title, "key": key, "unit": "%", "ylabel": ylabel, "colors": colors,
                                      "markers": markers, "offsets_inch": offsets, "rows": rows})
