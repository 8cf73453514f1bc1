"""The separator experiment: the separator layout at finetuning and inference, the second task, the second
fresh test split, and the arms on one FLOPs budget, end to end in miniature."""
import json
import os

import pytest

from config import UserError
from experiments import separator, synth
from finetune import FinetuneConfig, FinetuneData
from pause import IGNORE, prompt_in_block
from test_study import tiny_cpu_preset
from tokenizer import WordTokenizer, inserted_token


def test_the_separator_sits_between_question_and_answer_with_no_loss_on_it(tmp_path):
    """SepFT: [question, separator x k, answer, EOT] at finetuning, [question, separator x k] at inference."""
    tok = WordTokenizer.build(["gap 1 5 2 4", "\n"])
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"text": "gap 1 5 2 4"}) + "\n")
    sep, question, answer = inserted_token(tok, "\\n"), tok.encode("gap 1 5 2"), tok.encode(" 4")
    assert tok.decode([sep]) == "\n" and sep != tok.pause_id
    for k in (1, 3):
        data = FinetuneData(FinetuneConfig(task="lambada", task_file=str(path), m_ft=str(k), filler="\\n", val_frac=0),
                            tok, 64)
        x, y = data.batch(0)
        assert x[0].tolist() == question + [sep] * k + answer  # the separators right after the question
        assert y[0].tolist() == [IGNORE] * (len(question) - 1 + k) + answer + [tok.eot_id]  # no loss on them
        assert prompt_in_block(question, k, sep, False, 1, 64)[0] == question + [sep] * k  # inference: the same


@pytest.mark.parametrize("values,second", [([5, 17, 3, 42], 17), ([1, 2], 1), ([9, 63, 0, 62, 8], 62)])
def test_the_second_task_answers_the_second_largest_number(values, second):
    assert synth.task_text("second", values) == (f"second {' '.join(map(str, values))}", f"#### {second}")
    assert synth.problem_text("second", values) == f"second {' '.join(map(str, values))} {second}"


def test_the_second_task_splits_are_disjoint_and_its_corpus_holds_no_held_out_question(tmp_path):
    synth.main([f"--out_dir={tmp_path}", "--task_kind=second", "--n=8,16", "--n_train=300", "--n_val=50",
                "--n_test=50", "--corpus_docs=20", "--val_docs=5", "--problems_per_doc=8"])
    sets = {s: synth.split_values(str(tmp_path / f"{s}.jsonl")) for s in ("train", "val", "test")}
    assert all(not (set(sets[a]) & set(sets[b])) for a, b in (("train", "val"), ("train", "test"), ("val", "test")))
    corpus = synth.corpus_values(str(tmp_path / synth.TRAIN_CORPUS))
    assert not corpus & (set(sets["val"]) | set(sets["test"]))
    rows = [json.loads(line)["text"].split() for line in open(tmp_path / "test.jsonl")]
    assert all(r[0] == "second" and int(r[-1]) == sorted(map(int, r[1:-1]))[-2] for r in rows)


def test_the_second_fresh_split_is_disjoint_from_every_split_corpus_and_the_first_fresh_split(tmp_path):
    synth.main([f"--out_dir={tmp_path}", "--n=8,16", "--n_train=300", "--n_val=50", "--n_test=50",
                "--corpus_docs=20", "--val_docs=5", "--problems_per_doc=8"])
    first = synth.write_fresh_test(str(tmp_path), 200, [8, 16])
    second = synth.write_fresh_test(str(tmp_path), 200, [8, 16], seed=synth.FRESH_TEST_2_SEED,
                                    name=synth.FRESH_TEST_2)
    assert "fresh_test" in second["checked_against"] and "fresh_test" not in first["checked_against"]
    new = set(synth.split_values(second["path"]))
    assert len(new) == 200 and not new & set(synth.split_values(first["path"]))
    for s in ("train", "val", "test"):
        assert not new & set(synth.split_values(str(tmp_path / f"{s}.jsonl")))


def test_miniature_separator_experiment_matches_every_arm_to_the_pause_arms_flops(tmp_path, monkeypatch):
    tiny_cpu_preset(monkeypatch, n_train=300, n_held_out=30, docs=40, pt_iters=4)
    cfg = separator.parse_config(separator.SeparatorConfig, [
        f"--out_dir={tmp_path}", "--seeds=1", "--cpu_n=4,6", "--ft_iters=6", "--ft_batch_size=8", "--n_fresh=20",
        "--max_examples=10", "--device=cpu", "--n_layer=1"])
    summary = separator.main(cfg)
    rows = {(r["arm"], r["split"]): r for r in summary["rows"]}
    assert {a for a, _ in rows} == {v["name"] for v in separator.arms(cfg)}
    assert {s for _, s in rows} == set(separator.SPLITS)
    budget = rows[(separator.PAUSE_ARM, "val")]["ft_flops"]
    for (name, _), r in rows.items():  # every arm within one step of the pause arm's finetuning FLOPs
        step = r["ft_flops"] / r["steps"]
        assert abs(r["ft_flops"] - budget) <= step, name
    assert summary["best_baseline_on_val"] in separator.BASELINES
    assert summary["primary"]["split"] == "fresh_test_2" and os.path.exists(tmp_path / "separator.md")


def test_the_learning_rate_is_chosen_on_val_alone():
    rows = [{"arm": "StdFT_flops_lr0.0005", "lr": 5e-4, "split": "val", "mean": 0.60},
            {"arm": "StdFT_flops_lr0.001", "lr": 1e-3, "split": "val", "mean": 0.70},
            {"arm": "StdFT_flops_lr0.002", "lr": 2e-3, "split": "val", "mean": 0.65},
            {"arm": "StdFT_flops_lr0.0005", "lr": 5e-4, "split": "test", "mean": 0.90},  # test never decides
            {"arm": "StdFT_flops_lr0.002", "lr": 2e-3, "split": "fresh_test_2", "mean": 0.95}]
    assert separator.chosen_lr(rows, "StdFT_flops") == 1e-3
    assert separator.chosen_lr(rows, "SepFT_1") is None


def test_the_tuning_and_curve_arms_run_on_the_registered_seed_and_multiples():
    cfg = separator.parse_config(separator.SeparatorConfig, ["--baseline=SepFT_1", "--lr_grid=5e-4,2e-3",
                                                             "--pause_curve=0.5,2", "--curve=2",
                                                             "--baseline_lr=2e-3"])
    extra = {v["name"]: v for v in separator.arms(cfg)[6:]}
    assert set(extra) == {"PausePT_PauseFT_lr0.0005", "PausePT_PauseFT_lr0.002", "SepFT_1_lr0.0005",
                          "SepFT_1_lr0.002", "PausePT_PauseFT_x0.5", "PausePT_PauseFT_x2", "SepFT_1_x2"}
    assert extra["SepFT_1_lr0.002"]["seeds"] == [0] and extra["SepFT_1_lr0.002"]["filler"] == "\\n"
    assert extra["SepFT_1_x2"]["lr"] == 2e-3 and extra["PausePT_PauseFT_x0.5"]["lr"] == 1e-3
    assert separator.seeds_of_arm(extra["SepFT_1_lr0.002"], [0, 1, 2]) == [0]


def test_only_arms_keeps_the_pause_arm_and_the_curve_reuses_the_registered_run_at_1x():
    cfg = separator.parse_config(separator.SeparatorConfig, ["--only_arms=StdFT_flops,SepFT_1,SepFT_3",
                                                             "--baseline=SepFT_1", "--curve=1,2", "--pause_curve=1",
                                                             "--pause_lr=2e-3"])
    names = {v["name"]: v for v in separator.arms(cfg)}
    assert set(names) == {"PausePT_PauseFT", "StdFT_flops", "SepFT_1", "SepFT_3", "SepFT_1_x1", "SepFT_1_x2",
                          "PausePT_PauseFT_x1"}
    assert names["SepFT_1_x1"]["source"] == "SepFT_1"  # same rate as the registered arm: its checkpoint
    assert "source" not in names["SepFT_1_x2"] and "source" not in names["PausePT_PauseFT_x1"]  # 2e-3: trained


def test_a_finished_arm_is_skipped_before_any_data_or_budget_work(tmp_path, monkeypatch):
    cfg = separator.parse_config(separator.SeparatorConfig, [f"--out_dir={tmp_path}"])
    for s in separator.SPLITS:
        (tmp_path / "seed0" / "SepFT_1").mkdir(parents=True, exist_ok=True)
        (tmp_path / "seed0" / "SepFT_1" / f"results_{s}.json").write_text("[]")
    monkeypatch.setattr(separator, "data_files", lambda cfg: 1 / 0)  # any work at all would raise
    separator.run_stage(cfg, 0, "SepFT_1")
    (tmp_path / "seed0" / "SepFT_1" / "results_val.json").unlink()
    with pytest.raises(ZeroDivisionError):
        separator.run_stage(cfg, 0, "SepFT_1")


def test_the_curve_pairs_the_pause_arm_at_1x_with_the_baseline_at_each_multiple_over_seeds():
    cfg = separator.parse_config(separator.SeparatorConfig, ["--baseline=SepFT_1", "--curve=1,2", "--pause_curve=1,2",
                                                             "--seeds=2"])
    acc = {("PausePT_PauseFT_x1", 0): 0.80, ("PausePT_PauseFT_x1", 1): 0.82, ("SepFT_1_x1", 0): 0.70,
           ("SepFT_1_x1", 1): 0.76, ("SepFT_1_x2", 0): 0.85, ("SepFT_1_x2", 1): 0.80,
           ("PausePT_PauseFT_x2", 0): 0.90, ("PausePT_PauseFT_x2", 1): 0.79}
    records = [{"variant": a, "seed": s, "value": v, "split": "fresh_test_2", "m_ft": 1, "m_inf": 1, "metric": "em",
                "ft_iters": 1, "train_flops": 1.0, "ft_flops": 1.0, "infer_flops_per_example": 1.0}
               for (a, s), v in acc.items()]
    summary = separator.summarise(cfg, records)
    curve = {c["vs"]: c for c in summary["curve_paired"]}
    assert curve["SepFT_1_x1"]["diffs"] == pytest.approx([0.10, 0.06]) and curve["SepFT_1_x1"]["wins"] == 2
    assert curve["SepFT_1_x2"]["diffs"] == pytest.approx([-0.05, 0.02])
    assert curve["SepFT_1_x2"]["verdict"] == "no gain established"
    [same] = summary["curve_same_multiple"]  # descriptive: both arms at 2x (1x is the registered pair above)
    assert (same["arm"], same["vs"]) == ("PausePT_PauseFT_x2", "SepFT_1_x2")
    assert same["diffs"] == pytest.approx([0.05, -0.01])


def test_the_verdict_uses_the_t_of_its_seeds_4_30_for_three_and_2_78_for_five():
    from experiments.lab import paired_stats, verdict
    three = paired_stats([0.05, 0.06, 0.08])  # mean/stderr = 7.0: a gain at 3 seeds
    assert verdict(three, 3) == "gain"
    three = paired_stats([0.03, 0.06, 0.08])  # mean/stderr = 3.9: above 2.78, below 4.30
    assert verdict(three, 3) == "no gain established" and verdict(three, 3, t_crit=2.78) == "gain"
    five = paired_stats([0.03, 0.04, 0.05, 0.06, 0.12])  # 3.8 > 2.78 and 5/5
    assert verdict(five, 5) == "gain" and verdict(paired_stats([0.1]), 1) == "no verdict: one seed"


def test_the_depth_report_reads_each_depths_summary_with_the_t_of_three_seeds(tmp_path):
    def summary_at(n_layer: int, gain: float) -> str:
        cfg = separator.parse_config(separator.SeparatorConfig, [f"--n_layer={n_layer}", "--seeds=3"])
        acc = {"PausePT_PauseFT": 0.80, "StdFT_flops": 0.60, "SepFT_1": 0.80 - gain, "SepFT_3": 0.70}
        records = [{"variant": a, "seed": s, "value": v + 0.01 * s * (a == "PausePT_PauseFT"), "split": split,
                    "m_ft": 0, "m_inf": 0, "metric": "em", "ft_iters": 1, "train_flops": 1.0, "ft_flops": 1.0,
                    "infer_flops_per_example": 1.0} for a, v in acc.items() for s in range(3)
                   for split in ("val", "fresh_test_2")]
        out = tmp_path / f"L{n_layer}"
        out.mkdir()
        (out / "separator.json").write_text(json.dumps(separator.summarise(cfg, records)))
        return str(out)

    dirs = [summary_at(6, -0.05), summary_at(1, 0.10)]
    cfg = separator.parse_config(separator.SeparatorConfig, [f"--out_dir={tmp_path}", "--depths_from=" + ",".join(dirs)])
    rows = separator.main(cfg)["rows"]
    assert [r["n_layer"] for r in rows] == [1, 6] and [r["baseline"] for r in rows] == ["SepFT_1", "SepFT_1"]
    assert rows[0]["mean_diff"] == pytest.approx(0.11) and rows[0]["verdict"] == "gain"  # t = 19, 3/3
    assert rows[1]["mean_diff"] == pytest.approx(-0.04) and rows[1]["verdict"].startswith("loss")
    assert rows[0]["bare_diff"] == pytest.approx(0.21) and rows[1]["baseline_acc"] == pytest.approx(0.85)
    assert (tmp_path / "depth.md").exists() and (tmp_path / "depth.png").exists()


def test_a_finished_arm_asked_at_another_learning_rate_is_refused_not_reported_under_it(tmp_path, capsys):
    """--pause_lr changed, same --out_dir: PausePT_PauseFT_x1 ran at 2e-3; reusing it as 4e-3 would mislabel it."""
    run = tmp_path / "seed0" / "PausePT_PauseFT_x1"
    run.mkdir(parents=True)
    (run / "log.jsonl").write_text(json.dumps({"config": {"learning_rate": 2e-3}}) + '\n{"step": 0}\n')
    for s in separator.SPLITS:
        (run / f"results_{s}.json").write_text("[]")
    argv = [f"--out_dir={tmp_path}", "--baseline=SepFT_1", "--pause_curve=1"]
    separator.run_stage(separator.parse_config(separator.SeparatorConfig, argv + ["--pause_lr=2e-3"]), 0, run.name)
    for stage in (separator.run_stage, lambda cfg, seed, name: separator.main(cfg)):  # a run, and --aggregate
        cfg = separator.parse_config(separator.SeparatorConfig, argv + ["--pause_lr=4e-3", "--aggregate"])
        with pytest.raises(UserError, match="was finetuned at lr 0.002; this run asks 0.004 of it"):
            stage(cfg, 0, run.name)
