"""plots.py: each figure is a real PNG whose .json holds exactly what was plotted (in %, with its colours);
an arm has one colour in every figure; empty input is a UserError; `python plots.py minf|variants` plots
eval.py results files."""
import json
import os
import subprocess
import sys

import pytest
from matplotlib.colors import to_hex

import plots
from experiments import figures
from config import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
M_INF = [0, 3, 6, 12]
M_FT = {"StdPT_StdFT": 0, "StdPT_PauseFT": 6, "PausePT_StdFT": 0, "PausePT_PauseFT": 6}


def value(variant: str, m_inf: int) -> float:
    return round(0.1 * plots.VARIANTS.index(variant) + 0.01 * m_inf + 0.2, 4) if variant in M_FT else 0.15


def rec(variant: str, m_ft: int, m_inf: int, metric: str = "em") -> dict:
    return {"task": "gsm8k", "split": "test", "checkpoint": f"out/{variant}/ckpt.pt", "variant": variant, "m_ft": m_ft,
            "m_inf": m_inf, "n": 100, "metric": metric, "value": value(variant, m_inf), "stderr": 0.02}


@pytest.fixture
def records() -> list[dict]:
    # listed in a scrambled order, with a compute-matched baseline and another task's record mixed in
    rows = [rec(v, M_FT[v], m) for v in reversed(plots.VARIANTS) for m in reversed(M_INF)]
    rows.insert(3, rec("StdPT_StdFT_matched", 0, 0))
    rows.append({**rec("StdPT_StdFT", 0, 0), "task": "squad", "value": 0.99})
    return rows


def read_outputs(png) -> dict:
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000
    return json.loads(png.with_suffix(".json").read_text())


def test_minf_curve_has_one_series_per_variant_with_its_m_inf(records, tmp_path):
    out = plots.minf_curve(records, "gsm8k", "em", str(tmp_path / "fig" / "minf.png"))
    data = read_outputs(tmp_path / "fig" / "minf.png")
    assert out == str(tmp_path / "fig" / "minf.png")
    assert [s["label"] for s in data["series"]] == plots.VARIANTS + ["StdPT_StdFT_matched"]
    assert [s["m_inf"] for s in data["series"]] == [M_INF] * 4 + [[0]]
    assert data["unit"] == "%" and data["series"][3]["value"] == pytest.approx([100 * value("PausePT_PauseFT", m) for m in M_INF])


def test_minf_curve_baseline_is_its_value_at_own_m_ft(records, tmp_path):
    plots.minf_curve(records, "gsm8k", "em", str(tmp_path / "minf.png"))
    base = json.loads((tmp_path / "minf.json").read_text())["baseline"]
    assert base["label"] == "StdPT_StdFT (M_inf=0)" and base["value"] == pytest.approx(100 * value("StdPT_StdFT", 0))


def test_minf_curve_baseline_without_own_m_ft_is_the_mean(records, tmp_path):
    rows = [r for r in records if not (r["variant"] == "StdPT_StdFT" and r["m_inf"] == 0)]
    plots.minf_curve(rows, "gsm8k", "em", str(tmp_path / "minf.png"))
    base = json.loads((tmp_path / "minf.json").read_text())["baseline"]
    assert base["value"] == pytest.approx(100 * sum(value("StdPT_StdFT", m) for m in M_INF[1:]) / 3)


def test_error_bars_are_what_the_tables_print_and_say_so(records, tmp_path):
    plots.minf_curve(records, "gsm8k", "em", str(tmp_path / "one.png"))  # single runs: their standard error
    data = json.loads((tmp_path / "one.json").read_text())
    assert data["error_bars"] == "error bars: ± 1 standard error over the test examples"
    assert data["series"][0]["err"] == [2.0] * len(M_INF)
    averaged = [{**r, "n_seeds": 5, "std": 0.1, "stderr": 0.1 / 5 ** 0.5} for r in records]  # as study.aggregate
    plots.minf_curve(averaged, "gsm8k", "em", str(tmp_path / "five.png"))
    data = json.loads((tmp_path / "five.json").read_text())
    assert data["error_bars"] == "error bars: ± 1 std over 5 seeds"  # the tables' mean ± std
    assert data["series"][0]["err"] == [10.0] * len(M_INF) and data["baseline"]["err"] == 10.0
    plots.variants_bar(averaged, "gsm8k", "em", str(tmp_path / "bar.png"))
    bar = json.loads((tmp_path / "bar.json").read_text())
    assert bar["error_bars"] == "error bars: ± 1 std over 5 seeds" and {b["err"] for b in bar["bars"]} == {10.0}


def test_variants_bar_takes_each_variant_at_m_inf_equal_m_ft(records, tmp_path):
    plots.variants_bar(records, "gsm8k", "em", str(tmp_path / "bar.png"))
    bars = read_outputs(tmp_path / "bar.png")["bars"]
    assert [b["label"] for b in bars] == plots.VARIANTS + ["StdPT_StdFT_matched"]
    assert [b["m_inf"] for b in bars] == [0, 6, 0, 6, 0]
    assert [b["value"] for b in bars] == pytest.approx([100 * value(b["variant"], b["m_inf"]) for b in bars])


def test_variants_bar_at_a_fixed_m_inf(records, tmp_path):
    plots.variants_bar(records, "gsm8k", "em", str(tmp_path / "bar.png"), at="12")
    bars = json.loads((tmp_path / "bar.json").read_text())["bars"]
    assert [b["label"] for b in bars] == plots.VARIANTS and {b["m_inf"] for b in bars} == {12}


def write_log(path, runs: list[list[dict]]) -> str:
    path.write_text("".join(json.dumps(line) + "\n" for run in runs for line in run) + '{"step": 9, "lo')
    return str(path)


def test_loss_curves_resumed_log_keeps_the_last_line_of_a_step(tmp_path):
    first = [{"config": {"max_iters": 6}}, {"step": 0, "val_loss": 11.0}] + \
            [{"step": s, "loss": 10.0 - s, "lr": 1e-3} for s in range(5)]
    resumed = [{"config": {"max_iters": 6}, "resumed_from": 3}] + \
              [{"step": s, "loss": 1.0 / (s + 1), "lr": 1e-3} for s in range(3, 6)] + \
              [{"step": 6, "val_loss": 5.0, "val_loss_pause": 5.5}]
    log = write_log(tmp_path / "log.jsonl", [first, resumed])
    plots.loss_curves({"pause": log}, str(tmp_path / "loss.png"), title="pretraining")
    run = read_outputs(tmp_path / "loss.png")["runs"]["pause"]
    assert run["train"]["step"] == [0, 1, 2, 3, 4, 5]
    assert run["train"]["loss"] == [10.0, 9.0, 8.0, 0.25, 0.2, 1 / 6]
    assert run["val"] == {"step": [0, 6], "val_loss": [11.0, 5.0], "val_loss_pause": [None, 5.5]}


def test_running_mean_is_trailing():
    assert plots.running_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


@pytest.mark.parametrize("call", [
    lambda recs, out: plots.minf_curve(recs, "hellaswag", "acc", out),
    lambda recs, out: plots.variants_bar(recs, "gsm8k", "f1", out),
    lambda recs, out: plots.loss_curves({"a": out + ".missing.jsonl"}, out),
])
def test_empty_input_is_a_user_error(call, records, tmp_path):
    with pytest.raises(UserError):
        call(records, str(tmp_path / "empty.png"))
    assert not (tmp_path / "empty.png").exists()


def flops_rows(arms: list[str]) -> tuple[list[dict], list[dict]]:
    """Arms at the same FLOPs (as an evaluation-only arm and its source are): rows and their seed records."""
    rows = [{"arm": a, "mean": 0.5, "std": 0.01, "train_flops": 1e12, "infer_flops": 4e6} for a in arms]
    return rows, [{"arm": a, "value": 0.5, "train_flops": 1e12, "infer_flops": 4e6} for a in arms]


def test_an_arm_has_one_colour_in_every_figure(records, tmp_path):
    """The user's figures (plots.py) and the experiments' (experiments/figures.py) agree, with the experiments'
    palette, on every arm's colour."""
    palette = figures.PALETTE
    plots.minf_curve(records, "gsm8k", "em", str(tmp_path / "all.png"), palette=palette)
    few = [r for r in records if r["variant"] in ("StdPT_StdFT_matched", "PausePT_PauseFT")]
    plots.minf_curve(few, "gsm8k", "em", str(tmp_path / "few.png"), palette=palette)
    plots.variants_bar(records, "gsm8k", "em", str(tmp_path / "bar.png"), palette=palette)
    figures.accuracy_vs_flops(*flops_rows(["PausePT_PauseFT", "StdPT_StdFT_matched"]), "train_flops", "FLOPs",
                              str(tmp_path / "flops.png"), "t")
    log = write_log(tmp_path / "log.jsonl", [[{"step": 0, "loss": 3.0}, {"step": 1, "loss": 2.0}]])
    plots.loss_curves({"StdPT_StdFT_matched": log}, str(tmp_path / "loss.png"), palette=palette)
    seen: dict[str, set] = {}
    for name in ("all", "few", "bar", "flops", "loss"):
        for arm, color in json.loads((tmp_path / f"{name}.json").read_text())["colors"].items():
            seen.setdefault(arm, set()).add(color)
    assert {arm: len(c) for arm, c in seen.items() if len(c) > 1} == {}
    assert len(seen["StdPT_StdFT_matched"] | seen["PausePT_PauseFT"]) == 2
    colors = {**plots.ARM_COLORS, **palette}
    study_arms = [k for k in colors if k.count("_") >= 1 and k.split("_")[0] in ("StdPT", "PausePT")]
    hexes = [to_hex(colors[k]) for k in study_arms]
    assert len(study_arms) == 15 and len(set(hexes)) == len(hexes)  # no two arms of the study look alike
    assert not {to_hex(c) for c in plots.SPARE_COLORS} & {to_hex(c) for c in colors.values()}
    assert set(plots.ARM_COLORS) == set(plots.VARIANTS) | {"StdPT", "PausePT"}  # plots.py names no experiment arm


def test_minf_axis_is_linear_in_percent_and_the_band_is_in_the_legend(records, tmp_path):
    wide = records + [rec(v, M_FT[v], 24) for v in plots.VARIANTS]  # a sweep up to 24 once went logarithmic
    plots.minf_curve(wide, "gsm8k", "em", str(tmp_path / "minf.png"), title="synthetic largest-gap, LAMBADA format")
    data = json.loads((tmp_path / "minf.json").read_text())
    assert data["xscale"] == "linear" and data["unit"] == "%"
    assert data["baseline"]["band"] in data["legend"] and "standard error" in data["baseline"]["band"]
    assert data["title"] == "synthetic largest-gap, LAMBADA format"


def test_bars_say_how_each_model_was_finetuned_and_what_it_got_at_inference(records, tmp_path):
    infill = {**rec("StdPT_StdFT_InfFiller", 6, 6), "ft_m": 0, "inference_token": "."}
    plots.variants_bar(records + [infill], "gsm8k", "em", str(tmp_path / "bar.png"))
    names = {b["label"]: b["name"] for b in json.loads((tmp_path / "bar.json").read_text())["bars"]}
    assert names["StdPT_StdFT_InfFiller"] == "StdPT_StdFT_InfFiller\nfinetuned M_ft=0\ninference: 6 × '.'"
    assert names["PausePT_PauseFT"] == "PausePT_PauseFT\nfinetuned M_ft=6\ninference: 6 × <pause>"
    assert names["StdPT_StdFT"].endswith("finetuned M_ft=0\ninference: no pauses")


def test_arms_at_the_same_flops_stay_visible(tmp_path):
    arms = ["StdPT_StdFT", "StdPT_StdFT_InfFiller", "StdPT_StdFT_matched"]
    figures.accuracy_vs_flops(*flops_rows(arms), "infer_flops", "inference FLOPs", str(tmp_path / "f.png"), "t")
    data = json.loads((tmp_path / "f.json").read_text())
    assert len(set(data["markers"].values())) == 3 and len(set(data["offsets_inch"].values())) == 3


def test_undefined_spread_prints_a_dash():
    assert [plots.fmt_num(x) for x in (float("nan"), None, 1.25)] == ["—", "—", "1.2"]


def write_results(path, variant: str, m_ft: int, values: list[float]) -> str:
    """An eval.py results file of one checkpoint over M_inf = 0, 4, 8."""
    path.write_text(json.dumps([{**rec(variant, m_ft, m), "value": v, "samples": [{"doc_id": 0}]}
                                for m, v in zip([0, 4, 8], values)]))
    return str(path)


def run_plots(*args) -> subprocess.CompletedProcess:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "plots.py", *args], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cli_plots_the_m_inf_curve_and_bars_of_eval_results(tmp_path):
    a = write_results(tmp_path / "a.json", "StdPT_StdFT", 0, [0.4, 0.1, 0.0])
    b = write_results(tmp_path / "b.json", "PausePT_PauseFT", 4, [0.1, 0.6, 0.5])
    p = run_plots("minf", a, b, f"--out={tmp_path / 'fig' / 'minf.png'}")
    assert p.returncode == 0, p.stderr
    data = read_outputs(tmp_path / "fig" / "minf.png")
    assert {s["label"]: s["value"] for s in data["series"]} == {"StdPT_StdFT": [40.0, 10.0, 0.0],
                                                                "PausePT_PauseFT": [10.0, 60.0, 50.0]}
    assert data["error_bars"] == "error bars: ± 1 standard error over the test examples"
    assert "samples" not in data["records"][0]
    plots.cli(["variants", a, b, "--out", str(tmp_path / "bars.png")])  # in process: one subprocess is enough
    assert [b["value"] for b in read_outputs(tmp_path / "bars.png")["bars"]] == [40.0, 60.0]


@pytest.mark.parametrize("content,message", [(None, "does not exist"), ("{not json", "cannot be read as JSON"),
                                             ('{"a": 1}', "is not an eval.py results file")])
def test_cli_bad_results_file_is_a_user_error(tmp_path, content, message):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message):
        plots.cli(["minf", str(path), f"--out={tmp_path / 'x.png'}"])
    assert not (tmp_path / "x.png").exists()


def test_every_curve_of_a_figure_has_its_own_colour(tmp_path):
    labels = [f"user_{i}" for i in range(len(plots.SPARE_COLORS) + 1)]  # more names than spare colours: hashes collide
    rows = [{**rec(label, 0, m), "value": 0.1 * i} for i, label in enumerate(labels) for m in (0, 4)]
    plots.minf_curve(rows, "gsm8k", "em", str(tmp_path / "minf.png"))
    colors = json.loads((tmp_path / "minf.json").read_text())["colors"]
    assert set(colors) == set(labels) and len({to_hex(c) for c in colors.values()}) == len(labels)


def test_two_files_of_one_variant_get_their_own_label_and_colour(tmp_path):
    paths = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        paths += [write_results(tmp_path / run / "std.json", "StdPT_StdFT", 0, [0.4, 0.1, 0.0]),
                  write_results(tmp_path / run / "pause.json", "PausePT_PauseFT", 4, [0.1, 0.6, 0.5])]
    plots.cli(["minf", *paths, f"--out={tmp_path / 'minf.png'}"])
    data = json.loads((tmp_path / "minf.json").read_text())
    labels = [s["label"] for s in data["series"]]
    assert labels == ["StdPT_StdFT (a)", "StdPT_StdFT (b)", "PausePT_PauseFT (a)", "PausePT_PauseFT (b)"]
    assert len({to_hex(data["colors"][k]) for k in labels}) == 4
    plots.cli(["variants", *paths, f"--out={tmp_path / 'bars.png'}"])
    bars = json.loads((tmp_path / "bars.json").read_text())
    assert [b["name"].split("\n")[:2] for b in bars["bars"]] == [[k.split(" ")[0], k.split(" ")[1]] for k in labels]
    assert len({to_hex(bars["colors"][k]) for k in labels}) == 4


def test_bar_names_do_not_overlap(records, tmp_path, monkeypatch):
    long = [{**r, "variant": "PausePT_PauseFT", "label": f"PausePT_PauseFT (runs/seed{i}/finetune_m12)"}
            for i in range(3) for r in records if r["variant"] == "PausePT_PauseFT"]
    boxes = []
    save = plots.save_figure

    def measure(fig, out_png, data):
        fig.canvas.draw()
        boxes.extend(t.get_window_extent() for t in fig.axes[0].get_xticklabels())
        return save(fig, out_png, data)
    monkeypatch.setattr(plots, "save_figure", measure)
    plots.variants_bar(records + long, "gsm8k", "em", str(tmp_path / "bars.png"))
    assert len(boxes) == 8 and not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_m_inf_curve_nudges_its_points_by_a_hair(records, tmp_path):
    many = records + [{**r, "variant": f"{r['variant']}_x"} for r in records]
    plots.minf_curve(many, "gsm8k", "em", str(tmp_path / "minf.png"))
    offsets = json.loads((tmp_path / "minf.json").read_text())["offsets_inch"]
    assert len(offsets) == 10 and max(map(abs, offsets.values())) <= 0.03  # of ~0.3 inch between M_inf 0 and 3


def test_the_star_marks_only_models_finetuned_with_pauses(records, tmp_path):
    infill = [{**rec("StdPT_StdFT_InfFiller", 6, m), "ft_m": 0, "inference_token": "."} for m in M_INF]
    rand = [{**rec("PausePT_PauseFT_rand", 6, m), "ft_m": "0:12"} for m in M_INF]
    plots.minf_curve(records + infill + rand, "gsm8k", "em", str(tmp_path / "minf.png"))
    assert json.loads((tmp_path / "minf.json").read_text())["stars"] == {"StdPT_PauseFT": 6, "PausePT_PauseFT": 6}


def test_error_bars_name_the_split_of_the_records(records, tmp_path):
    plots.minf_curve([{**r, "split": "val"} for r in records], "gsm8k", "em", str(tmp_path / "val.png"))
    assert json.loads((tmp_path / "val.json").read_text())["error_bars"] == \
        "error bars: ± 1 standard error over the val examples"


def test_a_flops_figure_of_one_seed_says_so(tmp_path):
    figures.accuracy_vs_flops(*flops_rows(["StdPT_StdFT", "PausePT_PauseFT"]), "train_flops", "FLOPs",
                            str(tmp_path / "one.png"), "t")
    assert json.loads((tmp_path / "one.json").read_text())["ylabel"] == "accuracy, % (one seed)"
    rows, recs = flops_rows(["StdPT_StdFT"])
    figures.accuracy_vs_flops(rows, recs * 3, "train_flops", "FLOPs", str(tmp_path / "three.png"), "t")
    assert "mean ± std over seeds" in json.loads((tmp_path / "three.json").read_text())["ylabel"]


@pytest.mark.parametrize("out", ["{a}", "{d}/", "{d}/fig.jpg"])
def test_out_must_be_a_png_so_no_results_file_is_written_over(tmp_path, out):
    a = write_results(tmp_path / "a.json", "StdPT_StdFT", 0, [0.4, 0.1, 0.0])
    before = (tmp_path / "a.json").read_text()
    with pytest.raises(UserError, match=r"must name a \.png file"):
        plots.cli(["minf", a, "--out=" + out.format(a=a, d=tmp_path)])
    assert (tmp_path / "a.json").read_text() == before and sorted(os.listdir(tmp_path)) == ["a.json"]


@pytest.mark.parametrize("damage,says", [({"value": float("nan")}, "value is nan"), ({"value": "0.5"}, "value is '0.5'"),
                                         ({"stderr": float("inf")}, "stderr is inf"), ({"m_inf": "3"}, "m_inf is '3'"),
                                         ({"variant": 7}, "must be strings")])
def test_a_results_file_with_a_value_that_cannot_be_drawn_is_one_line(tmp_path, capsys, damage, says):
    rec = {"task": "gsm8k", "variant": "StdPT_PauseFT", "m_ft": 2, "m_inf": 2, "metric": "em", "value": 0.5,
           "stderr": 0.01, "n": 10}
    path = tmp_path / "r.json"
    path.write_text(json.dumps([rec, {**rec, **damage}]))
    with pytest.raises(SystemExit) as e:
        plots.run_main(plots.cli, ["minf", str(path), f"--out={tmp_path / 'm.png'}"])
    assert e.value.code == 2 and says in capsys.readouterr().err and not (tmp_path / "m.png").exists()


@pytest.mark.parametrize("records,says", [("empty", "is not an eval.py results file"),
                                          ("missing", "is not an eval.py results file"),
                                          ("two_tasks", "several tasks (gsm8k, lambada): plot one task at a time")])
@pytest.mark.parametrize("kind", ["minf", "variants"])
def test_an_empty_file_a_missing_key_or_two_tasks_is_one_line_and_no_figure(tmp_path, capsys, records, says, kind):
    rec = {"task": "gsm8k", "variant": "StdPT_PauseFT", "m_ft": 2, "m_inf": 2, "metric": "em", "value": 0.5,
           "stderr": 0.01, "n": 10}
    records = {"empty": [], "missing": [rec, {k: v for k, v in rec.items() if k != "value"}],
               "two_tasks": [rec, {**rec, "task": "lambada", "m_inf": 3}]}[records]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(records))
    with pytest.raises(SystemExit) as e:
        plots.run_main(plots.cli, [kind, str(path), f"--out={tmp_path / 'm.png'}"])
    assert e.value.code == 2 and says in capsys.readouterr().err and not (tmp_path / "m.png").exists()
