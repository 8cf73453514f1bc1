"""The parity experiment (experiments/separation.py): labels, each arm's layout, the dense pause supervision on
exactly the intended positions (and on no pause once annealed off), fresh deterministic strings, the ledger's
FLOPs of each arm, and a miniature sweep run as two shards then aggregated."""
import json
import os

import pytest
import torch

import flops
from config import UserError
from experiments import lab, separation as sep
from model import GPTConfig

ANS = {"even": sep.ID["even"], "odd": sep.ID["odd"]}


def test_parity_labels_by_hand():
    assert sep.parity_text([1, 0, 1]) == "parity 1 0 1 even"
    assert sep.parity_text([1, 1, 1]) == "parity 1 1 1 odd"
    assert sep.parity_text([0, 0, 0, 0, 1]) == "parity 0 0 0 0 1 odd"


def test_no_pause_layout_left_pads_and_answers_after_the_last_bit():
    x, y, mask = sep.encode([1, 0, 1], 5, "NoPause")
    assert [sep.TOK.itos[i] for i in x] == ["_", "_", "parity", "1", "0", "1"]
    assert y == [-1] * 5 + [ANS["even"]] and not any(mask)
    assert sep.encode([1, 0, 1], 5, "Deep_NoPause") == (x, y, mask)


def test_pause_arm_has_loss_on_the_answer_only_and_pause_j_sits_at_position_n_plus_j():
    n = 6
    for bits in ([1, 1, 0], [1, 0, 1, 1, 0, 1]):  # a short and a full-length question: same pause positions
        x, y, mask = sep.encode(bits, n, "Pause")
        assert len(x) == 2 * n + 1 and [i for i, t in enumerate(x) if t == sep.TOK.pause_id] == list(range(n + 1, 2 * n + 1))
        assert [i for i, t in enumerate(y) if t != -1] == [2 * n] and y[2 * n] == ANS[sep.parity_word(bits)]
        assert not any(mask)


@pytest.mark.parametrize("dense", ["count", "prefix"])
def test_dense_targets_sit_exactly_on_pauses_1_to_m_minus_1(dense):
    n, bits = 6, [1, 0, 1, 1]  # 4 bits left-padded to 6: pause j at position 6 + j
    x, y, mask = sep.encode(bits, n, "Pause_dense", dense)
    want = {n + j: (("1" if j <= 3 else "0") if dense == "count" else sep.parity_word(bits[:j])) for j in range(1, n)}
    if dense == "prefix":  # pause j: parity of the first j bits (all bits once j >= L), written out by hand
        assert [want[n + j] for j in range(1, n)] == ["odd", "odd", "even", "odd", "odd"]
    else:  # three ones: "at least j ones" holds for j = 1, 2, 3
        assert [want[n + j] for j in range(1, n)] == ["1", "1", "1", "0", "0"]
    assert {i: sep.TOK.itos[t] for i, t in enumerate(y) if mask[i]} == want
    assert all(x[i] == sep.TOK.pause_id for i in want)
    assert [i for i, t in enumerate(y) if t != -1 and not mask[i]] == [2 * n] and y[2 * n] == ANS["odd"]
    # annealed off: exactly the Pause arm's rows, no target on any pause but the answer
    assert sep.encode(bits, n, "Pause_dense", "") == sep.encode(bits, n, "Pause")


def test_cot_is_the_running_parity_of_the_last_i_bits_and_its_last_step_is_the_answer():
    x, y, mask = sep.encode([1, 1, 0], 4, "CoT")
    words = lambda ids: [sep.TOK.itos[i] if i >= 0 else "." for i in ids]
    assert words(x) == ["_", "parity", "1", "1", "0", "even", "odd", "_"]  # d1 = [0], d2 = [1 0], d3 = [1 1 0]
    assert words(y) == [".", ".", ".", ".", "even", "odd", "even", "."] and not any(mask)


def test_dense_weight_anneals_linearly_to_zero_and_stays_there():
    assert sep.dense_weight(0, 100, 0.5) == 1.0 and sep.dense_weight(25, 100, 0.5) == 0.5
    assert sep.dense_weight(50, 100, 0.5) == 0.0 and sep.dense_weight(99, 100, 0.5) == 0.0
    assert sep.dense_weight(0, 100, 0.0) == 0.0


def test_training_batches_put_dense_targets_on_pauses_until_annealed_off_then_none():
    cfg, n, steps = sep.ParityConfig(batch_size=8, anneal_frac=0.5), 6, 100
    pauses = slice(n + 1, 2 * n)  # pauses 1..M-1; pause M (position 2n) carries the answer
    for step, weight in ((0, 1.0), (30, 0.4), (50, 0.0), (99, 0.0)):
        x, y, mask, w = sep.step_batch(cfg, n, "Pause_dense", 0, step, steps)
        assert w == pytest.approx(weight) and (x[:, n + 1:] == sep.TOK.pause_id).all()
        assert bool((y[:, pauses] != -1).all()) == (w > 0) and bool(mask[:, pauses].all()) == (w > 0)
        assert (y[:, pauses] == -1).all() or w > 0
        assert not mask[:, :n + 1].any() and not mask[:, 2 * n].any() and (y[:, :n + 1] == -1).all()
        assert (y[:, 2 * n] != -1).all()
        x_plain, y_plain, mask_plain, w_plain = sep.step_batch(cfg, n, "Pause", 0, step, steps)
        assert w_plain == 0 and torch.equal(x, x_plain) and (torch.equal(y, y_plain) if w == 0 else True)


@pytest.mark.parametrize("weight", [0.0, 0.7])
def test_loss_reaches_exactly_the_targeted_positions(weight):
    """Gradient flows to the answer always, to the dense pauses only while their weight is > 0, never elsewhere."""
    n, rows = 5, [[1, 0, 1], [0, 1, 1, 1, 0]]
    x, y, mask = sep.batch(rows, n, "Pause_dense", "count")
    logits = torch.randn(*x.shape, 16, requires_grad=True)
    sep.parity_loss(logits, y, mask, weight).backward()
    touched = logits.grad.abs().sum(-1) > 0
    want = torch.zeros_like(touched)
    want[:, 2 * n] = True
    if weight > 0:
        want[:, n + 1:2 * n] = True
    assert torch.equal(touched, want)
    # the answer's term is the same with or without the dense targets when their weight is 0
    _, y_plain, mask_plain = sep.batch(rows, n, "Pause")
    if weight == 0:
        assert torch.equal(sep.parity_loss(logits, y, mask, 0.0), sep.parity_loss(logits, y_plain, mask_plain, 0.0))


def test_training_strings_are_fresh_every_step_and_reproducible():
    a, b = sep.train_strings(0, 7, 64, 12), sep.train_strings(0, 8, 64, 12)
    assert a == sep.train_strings(0, 7, 64, 12) and a != b and a != sep.train_strings(1, 7, 64, 12)
    lengths = {len(s) for s in a + b}
    assert lengths <= set(range(2, 13)) and len(lengths) > 5
    # with 2 steps of 4 strings of 2..2 bits, every 2-bit string but the ones never drawn is seen
    drawn = {tuple(s) for step in range(2) for s in sep.train_strings(3, step, 4, 2)}
    assert sep.seen_in_training(2, 3, 2, 4, 40) == sum(tuple(s) in drawn for s in sep.heldout_strings(2, 40)) / 40
    assert 0 < sep.seen_in_training(2, 3, 2, 4, 40) and sep.seen_in_training(30, 0, 2, 4, 40) == 0
    test = sep.heldout_strings(12, 200)
    assert test == sep.heldout_strings(12, 200) and {len(s) for s in test} == {12}


def test_each_arm_carries_the_ledger_flops():
    cfg = sep.ParityConfig(iters=10, batch_size=4)
    n = 8
    conf = sep.parity_model(cfg, n, "Pause")
    pause_step = flops.train_flops(conf, 4, 2 * n + 1)
    deep = sep.parity_model(cfg, n, "Deep_NoPause")
    assert deep == lab.deeper(conf, n + 1, 1, n) and deep.n_layer > conf.n_layer
    assert sep.steps_for(cfg, n, "Deep_NoPause") == round(10 * pause_step / flops.train_flops(deep, 4, n + 1))
    assert sep.seq_len(n, "NoPause") == n + 1 and sep.seq_len(n, "CoT") == 2 * n


def test_deeper_is_the_shallowest_depth_reaching_the_pause_models_inference_flops():
    conf = GPTConfig(block_size=64, vocab_size=16, n_layer=2, n_head=2, n_embd=8, pause_id=15)
    deep = lab.deeper(conf, 10, 2, 10)
    goal = flops.infer_flops(conf, 20, 2)
    assert flops.infer_flops(deep, 10, 2) >= goal
    assert flops.infer_flops(GPTConfig(**{**deep.__dict__, "n_layer": deep.n_layer - 1}), 10, 2) < goal


def test_miniature_sweep_in_two_shards_then_aggregate(tmp_path):
    args = [f"--out_dir={tmp_path}", "--ns=4,5", "--seeds=1", "--iters=3", "--batch_size=4", "--n_test=8",
            "--n_embd=16", "--n_head=2"]
    for shard in (0, 1):
        assert sep.main(args + [f"--shard={shard}", "--shards=2"]) is None
    summary = sep.main(args + ["--aggregate"])
    rows = {(r["n"], r["arm"]): r for r in summary["rows"]}
    assert set(rows) == {(n, a) for n in (4, 5) for a in sep.ARMS}
    for n in (4, 5):
        conf = sep.parity_model(sep.parse_config(sep.ParityConfig, args), n, "NoPause")
        r = lambda arm: rows[(n, arm)]
        assert r("NoPause")["train_flops"] == 3 * flops.train_flops(conf, 4, n + 1)
        assert r("Pause")["train_flops"] == 3 * flops.train_flops(conf, 4, 2 * n + 1) == r("Pause_dense")["train_flops"]
        assert r("NoPause")["infer_flops"] == flops.forward_flops(conf, n + 1)
        assert r("Pause")["infer_flops"] == flops.forward_flops(conf, 2 * n + 1)
        assert r("CoT")["infer_flops"] == flops.forward_flops(conf, 2 * n)  # prompt + n decoded, the last not fed back
        assert r("Deep_NoPause")["infer_flops"] >= r("Pause")["infer_flops"] and r("Pause")["pauses"] == n
    assert all(0 <= r["value"] <= 1 for r in summary["records"])
    log = [json.loads(line) for line in open(tmp_path / "n4" / "Pause_dense" / "seed0" / "log.jsonl")]
    assert log[0]["dense_weight"] == 1.0 and log[-1]["dense_weight"] < 1.0
    for name in ("summary.md", "summary.json", "accuracy_vs_n.png"):
        assert os.path.exists(tmp_path / name)
    assert str(tmp_path) not in open(tmp_path / "summary.json").read()  # no machine paths in the record
    with pytest.raises(UserError):
        sep.parse_config(sep.ParityConfig, ["--arms=NoPause,Wide"])


def test_sweep_wall_time_counts_only_while_runs_go():
    day = 86_400.0
    runs = [{"start": 0.0, "wall_s": 100.0}, {"start": 50.0, "wall_s": 100.0},  # two at once: 150 s
            {"start": day, "wall_s": 30.0}]  # a later phase, a day on: its 30 s, not the day between
    assert sep.busy_s(runs) == 180.0
