"""study.py: the seed statistics are right, and a miniature CPU study runs every stage and writes its outputs."""
import json
import dataclasses
import math
import os

import pytest

from checkpoint import load_checkpoint
from experiments import lab, study


def rec(variant, seed, m_inf, value, metric="em"):
    return {"task": "gsm8k", "variant": variant, "seed": seed, "m_inf": m_inf, "metric": metric, "value": value,
            "stderr": 0.01, "n": 100, "m_ft": 0}


def test_paired_differences_are_seed_by_seed_at_each_variants_m_ft():
    records = [rec("StdPT_StdFT", s, 0, v) for s, v in enumerate([0.50, 0.60, 0.70])]
    records += [rec("StdPT_StdFT", s, 4, 0.0) for s in range(3)]  # the baseline at another M_inf: not used
    records += [rec("PausePT_PauseFT", s, 4, v) for s, v in enumerate([0.55, 0.70, 0.74])]
    records += [rec("PausePT_PauseFT", s, 0, 1.0) for s in range(3)]  # the variant at another M_inf: not used
    [p] = study.paired(records, "em", {"StdPT_StdFT": 0, "PausePT_PauseFT": 4})
    diffs = [0.05, 0.10, 0.04]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert p["diffs"] == pytest.approx(diffs) and p["mean_diff"] == pytest.approx(mean)
    assert p["std"] == pytest.approx(sd) and p["stderr"] == pytest.approx(sd / math.sqrt(3))
    assert p["t"] == pytest.approx(mean / (sd / math.sqrt(3))) and p["wins"] == 3


def test_comparisons_cover_equal_steps_compute_matched_and_robustness():
    runs = [{"name": "StdPT_StdFT", "m_ft": 0}, {"name": "StdPT_PauseFT", "m_ft": 4},
            {"name": "PausePT_PauseFT", "m_ft": 4}, {"name": "StdPT_StdFT_matched", "m_ft": 0, "matched": 4}]
    values = {("StdPT_StdFT", 0): 0.5, ("StdPT_PauseFT", 0): 0.1, ("StdPT_PauseFT", 4): 0.7,
              ("PausePT_PauseFT", 0): 0.3, ("PausePT_PauseFT", 4): 0.8, ("StdPT_StdFT_matched", 0): 0.6}
    records = [rec(v, s, m, x + 0.01 * s) for (v, m), x in values.items() for s in range(2)]
    records += [rec("StdPT_StdFT", s, 4, 0.0) for s in range(2)] + [rec("StdPT_StdFT_matched", s, 4, 0.0) for s in range(2)]
    got = {(p["variant"], p["m_inf"], p["vs"], p["vs_m_inf"]): round(p["mean_diff"], 6)
           for p in study.comparisons(records, "em", runs, [0, 4])}
    assert got == {("StdPT_PauseFT", 4, "StdPT_StdFT", 0): 0.2, ("PausePT_PauseFT", 4, "StdPT_StdFT", 0): 0.3,
                   ("StdPT_StdFT_matched", 0, "StdPT_StdFT", 0): 0.1,
                   ("StdPT_PauseFT", 4, "StdPT_StdFT_matched", 0): 0.1, ("PausePT_PauseFT", 4, "StdPT_StdFT_matched", 0): 0.2,
                   ("PausePT_PauseFT", 0, "StdPT_PauseFT", 0): 0.2, ("PausePT_PauseFT", 4, "StdPT_PauseFT", 4): 0.1}


def test_aggregate_means_over_seeds_with_their_standard_error():
    agg = study.aggregate([rec("StdPT_StdFT", s, 0, v) for s, v in enumerate([0.2, 0.4, 0.9])])
    [a] = agg
    assert a["value"] == pytest.approx(0.5) and a["n_seeds"] == 3
    assert a["std"] == pytest.approx(math.sqrt(((0.3) ** 2 + 0.1 ** 2 + 0.4 ** 2) / 2))
    assert a["stderr"] == pytest.approx(a["std"] / math.sqrt(3))


def tiny_cpu_preset(monkeypatch, n_train: int, n_held_out: int, docs: int, pt_iters: int) -> None:
    """The cpu preset shrunk to seconds: a small synthetic task and corpus, a 1-layer 16-wide model."""
    monkeypatch.setattr(lab, "CPU_SYNTH", ["--lo=0", "--hi=16", f"--n_train={n_train}", f"--n_val={n_held_out}",
                                             f"--n_test={n_held_out}", f"--corpus_docs={docs}",
                                             f"--val_docs={docs // 4}", "--problems_per_doc=16"])
    monkeypatch.setattr(lab, "CPU_PRETRAIN", {**lab.CPU_PRETRAIN, "n_layer": 1, "n_embd": 16, "n_head": 2,
                                                "block_size": 48, "batch_size": 8, "max_iters": pt_iters,
                                                "eval_interval": 3, "eval_iters": 1, "warmup_iters": 1})


def test_miniature_cpu_study_end_to_end(tmp_path, monkeypatch):
    tiny_cpu_preset(monkeypatch, n_train=300, n_held_out=30, docs=40, pt_iters=6)
    argv = ["--preset=cpu", "--jobs=1", f"--out_dir={tmp_path}", "--seeds=2", "--ft_iters=4", "--ft_batch_size=8",
            "--m_ft=3", "--m_inf=0,3", "--max_examples=20", "--device=cpu", "--cpu_n=4,6"]
    cfg = study.apply_preset(study.parse_config(study.StudyConfig, argv), argv)
    assert cfg.m_ft == 3 and cfg.finetune_filler == "\\n" and cfg.compute_matched  # given keys win over the preset
    study.main(cfg)
    summary = json.load(open(tmp_path / "summary.json"))
    names = [v["name"] for v in study.variants(cfg)]
    assert names == list(study.VARIANTS) + ["StdPT_FillerFT", "StdPT_StdFT_InfFiller", "PausePT_PauseFT_InfFiller",
                                            "StdPT_StdFT_matched"]
    assert {(r["variant"], r["seed"], r["m_inf"], r["split"]) for r in summary["records"]} == {
        (n, s, m, split) for n in names for s in (0, 1) for m in (0, 3) for split in ("val", "test")}
    assert {p["variant"] for p in summary["paired"]} == set(names) - {"StdPT_StdFT"}
    assert {r["n"] for r in summary["records"] if r["split"] == "val"} == {20}  # max_examples of the 30
    # the paper's filler: StdPT_StdFT's own checkpoint, evaluated with "." in place of <pause>
    assert not (tmp_path / "seed0" / "StdPT_StdFT_InfFiller" / "ckpt.pt").exists()
    infill = json.load(open(tmp_path / "seed0" / "StdPT_StdFT_InfFiller" / "results_test.json"))
    assert all(r["checkpoint"].endswith(os.path.join("StdPT_StdFT", "ckpt.pt")) for r in infill)
    assert all(p["n_seeds"] == 2 for p in summary["paired"])
    matched = next(r for r in summary["records"] if r["variant"] == "StdPT_StdFT_matched")
    assert matched["ft_iters"] > 4  # more steps: as many tokens as PauseFT, pauses counted
    # the FLOPs ledger: PauseFT costs more than StdFT from the same pretraining, the matched baseline as much
    cost = {r["variant"]: r for r in summary["records"] if r["seed"] == 0 and r["split"] == "test" and r["m_inf"] == 3}
    assert cost["StdPT_PauseFT"]["train_flops"] > cost["StdPT_StdFT"]["train_flops"]
    assert cost["StdPT_PauseFT"]["ft_pause_tokens"] == 3 * 8 * 4 and cost["StdPT_StdFT"]["ft_pause_tokens"] == 0
    at0 = {r["variant"]: r for r in summary["records"] if r["seed"] == 0 and r["split"] == "test" and r["m_inf"] == 0}
    assert cost["StdPT_PauseFT"]["infer_flops_per_example"] > at0["StdPT_StdFT"]["infer_flops_per_example"]
    for f in ("summary.md", "minf_curve.png", "variants.png", "pretrain_loss.png", "finetune_loss.png",
              "acc_vs_train_flops.png", "acc_vs_infer_flops.png"):
        assert os.path.getsize(tmp_path / f) > 1000
    assert "PausePT_PauseFT" in (tmp_path / "summary.md").read_text()
    # every table row gives both FLOPs beside the accuracies: the mean over seeds, at M_inf = M_ft
    key = lambda r: (r["variant"], r["split"], r["m_inf"]) == ("StdPT_PauseFT", "test", 3)
    agg, seeds = next(filter(key, summary["aggregated"])), list(filter(key, summary["records"]))
    row = next(s for s in (tmp_path / "summary.md").read_text().splitlines() if s.startswith("| StdPT_PauseFT |"))
    assert agg["train_flops"] == sum(r["train_flops"] for r in seeds) / 2
    assert row.endswith(f"| {agg['train_flops'] / 1e12:.3f} | {agg['infer_flops_per_example'] / 1e6:.3f} |")
    # a second run reuses every finished run and result
    mtimes = {p: os.path.getmtime(p) for p in (tmp_path / "seed1" / "PausePT_PauseFT").iterdir()}
    assert "PausePT_PauseFT" in (tmp_path / "summary.md").read_text()
    run_s = summary["elapsed_s"]
    assert summary["pass"] == "ran" and run_s > 0 and "out_dir" not in summary["config"]  # no temp path recorded
    for record in ["summary.json", *(p.name for p in tmp_path.glob("*.json"))]:  # and every figure's data
        assert str(tmp_path) not in (tmp_path / record).read_text(), record
    study.main(cfg)
    assert mtimes == {p: os.path.getmtime(p) for p in (tmp_path / "seed1" / "PausePT_PauseFT").iterdir()}
    again = json.load(open(tmp_path / "summary.json"))  # the rerun's seconds are its own, not the run's
    assert again["elapsed_s"] == run_s and again["pass"] == "reuse" and again["pass_s"] > 0
    assert f"run time {run_s / 60:.1f} min" in (tmp_path / "summary.md").read_text()
    md, figure = (tmp_path / "summary.md").read_text(), (tmp_path / "variants.json").read_text()
    (tmp_path / "variants.json").unlink()
    study.report.redraw(str(tmp_path / "summary.json"))  # a committed record redrawn alone gives the same
    assert (tmp_path / "summary.md").read_text() == md and (tmp_path / "variants.json").read_text() == figure


def test_only_seed_runs_one_seed_without_summary_then_seeds_reuses_it(tmp_path, monkeypatch):
    tiny_cpu_preset(monkeypatch, n_train=200, n_held_out=20, docs=20, pt_iters=3)
    argv = ["--preset=cpu", "--jobs=1", f"--out_dir={tmp_path}", "--ft_iters=2", "--ft_batch_size=4", "--m_ft=2", "--m_inf=2",
            "--device=cpu", "--cpu_n=4,5", "--compute_matched=false", "--finetune_filler=", "--inference_filler=",
            "--random_m_ft=0:4", "--rope"]
    cfg = study.apply_preset(study.parse_config(study.StudyConfig, argv), argv)
    study.main(dataclasses.replace(cfg, only_seed=1))
    rope = load_checkpoint(str(tmp_path / "seed1" / "PausePT_PauseFT_rope" / "ckpt.pt"))["meta"]
    assert rope["model"]["pos"] == "rope" and rope["pretrain_pause_frac"] == 0.1
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "seed0").exists()
    ckpt = tmp_path / "seed1" / "PausePT_PauseFT_rand" / "ckpt.pt"
    meta = load_checkpoint(str(ckpt))["meta"]
    assert meta["m_ft_range"] == [0, 4] and meta["m_ft"] == 4
    mtime = os.path.getmtime(ckpt)
    study.main(dataclasses.replace(cfg, seeds=2))
    assert os.path.getmtime(ckpt) == mtime and (tmp_path / "summary.json").exists()
    before = json.load(open(tmp_path / "summary.json"))["records"]
    # results copied from another machine without their checkpoints: summarised, nothing retrained
    for p in tmp_path.glob("seed*/*/ckpt.pt"):
        p.unlink()
    run_s = json.load(open(tmp_path / "summary.json"))["elapsed_s"]
    study.main(dataclasses.replace(cfg, seeds=2, aggregate=True))
    after = json.load(open(tmp_path / "summary.json"))
    assert after["records"] == before and not list(tmp_path.glob("seed*/*/ckpt.pt"))
    assert after["elapsed_s"] == run_s and after["pass"] == "aggregate-only"  # both seeds' work, kept
    with pytest.raises(study.UserError):
        study.main(dataclasses.replace(cfg, arms=["NoSuchArm"]))


def test_matched_steps_follow_the_stated_formula(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "gap 1 5 2 3"}\n{"text": "gap 7 1 3 4 10 3"}\n')
    from tokenizer import WordTokenizer
    tok = WordTokenizer.build(["gap " + " ".join(map(str, range(12)))])
    ckpt = tmp_path / "ckpt.pt"
    import torch
    torch.save({"model": {}, "meta": {"tokenizer": tok.meta()}}, ckpt)
    cfg = study.StudyConfig(task="lambada", ft_iters=1000)
    # inputs: prefixes of 4 and 6 tokens, targets of 1: Σ = 12 without pauses, 12 + 2 × 12 = 36 with 12 each
    assert lab.matched_iters(cfg, str(path), str(ckpt), 12) == 3000


def test_one_seed_summary_prints_a_dash_where_a_spread_is_undefined():
    records = [{**rec("StdPT_StdFT", 0, 0, 0.5), "split": "test", "ft_iters": 10},
               {**rec("StdPT_PauseFT", 0, 4, 0.6), "m_ft": 4, "split": "test", "ft_iters": 10}]
    cfg = study.StudyConfig(m_ft=4, m_inf=[0, 4])
    runs = [v for v in study.variants(cfg) if v["name"] in ("StdPT_StdFT", "StdPT_PauseFT")]
    pairs = study.comparisons(records, "em", runs, cfg.m_inf)
    assert math.isnan(pairs[0]["std"])
    summary = {"task": "gsm8k", "metric": "em", "config": dataclasses.asdict(cfg), "elapsed_s": 60.0,
               "aggregated": study.aggregate(records), "paired_by_split": {"test": pairs}, "records": records}
    text = study.report.summary_md(summary, runs)
    assert "nan" not in text and "| +10.0 | — | — | — | 1/1 |" in text and "run time 1.0 min" in text


def test_help_shows_what_the_cpu_preset_sets(capsys):
    with pytest.raises(SystemExit):
        study.parse_config(study.StudyConfig, ["--help"])
    out = capsys.readouterr().out
    assert all(f"--{k}=" in out.split("options")[0] for k in study.CPU_PRESET) and "--ft_iters=2500" in out


def test_a_synth_killed_after_its_first_file_is_written_again(tmp_path, monkeypatch):
    """synth writes the task files first and the validation corpus last: only that one says it finished."""
    tiny_cpu_preset(monkeypatch, n_train=100, n_held_out=10, docs=8, pt_iters=1)
    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / "test.jsonl").write_text('{"text": "gap 1 2 1"}\n')  # a kill right after this file
    files = lab.cpu_data(str(tmp_path), [4, 5], "lambada")
    assert len(open(files["test"]).readlines()) == 10 and os.path.exists(files["data"] + "/meta.json")


def test_the_pool_runs_pretrainings_first_then_each_arm_after_what_it_starts_from():
    argv = ["--preset=cpu", "--seeds=2"]
    cfg = study.apply_preset(study.parse_config(study.StudyConfig, argv), argv)
    assert cfg.jobs == 2  # the cpu preset's default
    runs = study.variants(cfg)
    plan = study.pool_plan(cfg, runs, [0, 1])
    keys = [k for k, _ in plan]
    assert keys[:4] == [(0, "PausePT"), (1, "PausePT"), (0, "StdPT"), (1, "StdPT")]
    assert keys[4:6] == [(0, "StdPT_StdFT_matched"), (1, "StdPT_StdFT_matched")]  # the longest arm first
    waits = dict(plan)
    for v in runs:
        for s in (0, 1):
            assert waits[(s, v["name"])] == [(s, v.get("source", v["pt"]))]
            assert keys.index(waits[(s, v["name"])][0]) < keys.index((s, v["name"]))
    assert len(keys) == len(set(keys)) == 4 + 2 * len(runs)
