"""The parity task (separation.py) and compute_study.py: right labels, disjoint splits, depth matched on
inference FLOPs, and a miniature two-seed run of the separation experiment, seed by seed, then aggregated."""
import json
import os

import pytest

from experiments import compute_study
import flops
from common import UserError
from model import GPTConfig
from experiments.separation import parity_text, write_parity


def test_parity_labels_by_hand():
    assert parity_text([1, 0, 1]) == "parity 1 0 1 even"
    assert parity_text([1, 1, 1]) == "parity 1 1 1 odd"
    assert parity_text([0, 0, 0, 0, 1]) == "parity 0 0 0 0 1 odd"
    assert parity_text([0]) == "parity 0 even"


def test_splits_are_disjoint_and_labelled(tmp_path):
    counts = write_parity(str(tmp_path), n=8, train_n=(2, 8), n_train=150, n_val=40, n_test=60, seed=1)
    assert counts == {"test": 60, "val": 40, "train": 150}
    split = {}
    for name in counts:
        rows = [json.loads(line)["text"].split() for line in open(tmp_path / f"{name}.jsonl")]
        for words in rows:
            bits = list(map(int, words[1:-1]))
            assert words[-1] == ("odd" if sum(bits) % 2 else "even")
        split[name] = {tuple(w[1:-1]) for w in rows}
        assert len(split[name]) == len(rows)  # no repeats inside a split either
    assert not (split["train"] & split["test"]) and not (split["train"] & split["val"]) and not (split["val"] & split["test"])
    assert {len(b) for b in split["test"] | split["val"]} == {8} and {len(b) for b in split["train"]} == set(range(2, 9))
    with pytest.raises(UserError):
        write_parity(str(tmp_path), n=3, n_test=10)  # only 8 strings of 3 bits


def test_deeper_is_the_shallowest_depth_reaching_the_pause_models_inference_flops():
    conf = GPTConfig(block_size=64, vocab_size=16, n_layer=2, n_head=2, n_embd=8, pause_id=15)
    deep = compute_study.deeper(conf, 10, 2, 10)
    goal = flops.infer_flops(conf, 20, 2)
    assert flops.infer_flops(deep, 10, 2) >= goal
    assert flops.infer_flops(GPTConfig(**{**deep.__dict__, "n_layer": deep.n_layer - 1}), 10, 2) < goal


def test_separation_experiment_seed_by_seed_then_aggregate(tmp_path):
    common = [f"--out_dir={tmp_path}", "--experiment=separation", "--seeds=2", "--bits=5", "--train_bits=2,5",
              "--sep_n_train=20", "--sep_iters=3", "--max_examples=4", "--sep_batch_size=4"]
    cfg = lambda *extra: compute_study.parse_config(compute_study.ComputeStudyConfig, common + list(extra))
    for seed in (0, 1):
        assert compute_study.main(cfg(f"--only_seed={seed}")) is None
    summary = compute_study.main(cfg("--aggregate"))
    arms = {r["arm"]: r for r in summary["arms"]}
    assert set(arms) == {"NoPause", "Pause", "NoPause_3x", "Deep_NoPause"} and all(r["n_seeds"] == 2 for r in arms.values())
    # the matched baselines get what they are matched on
    assert arms["NoPause_3x"]["train_flops"] >= 3 * arms["Pause"]["train_flops"]
    assert arms["Deep_NoPause"]["infer_flops"] >= arms["Pause"]["infer_flops"] > arms["NoPause"]["infer_flops"]
    assert abs(arms["Deep_NoPause"]["train_flops"] / arms["Pause"]["train_flops"] - 1) < 0.5  # a few steps: coarse
    assert arms["Pause"]["ft_pause_tokens"] > 0 and arms["NoPause"]["ft_pause_tokens"] == 0
    assert {(p["arm"], p["vs"]) for p in summary["paired"]} == {("Pause", "NoPause"), ("Pause", "NoPause_3x"),
                                                               ("Pause", "Deep_NoPause")}
    for name in ("summary.md", "summary.json", "acc_vs_train_flops.png", "acc_vs_infer_flops.png"):
        assert os.path.exists(tmp_path / "separation" / name)
