"""equal_compute.py: the vote and its tie rule, the orderings, the ledger FLOPs of an ensemble and of a wider
model against hand computations, and the order and waits of the worker pool."""
import json
import os

import torch

import flops
from checkpoint import save_checkpoint
from experiments.equal_compute import STAGES, arm_cost, matched_steps, pool_plan, reorder, vote, vote_eval, wider
from experiments.equal_compute_report import on_frontier
from model import GPT, GPTConfig
from tokenizer import WordTokenizer, padded_vocab

# 2 layers, 8 wide, vocabulary 16: N = 2 (4·8² + 2·8·32) + 8·16 = 1664 matmul weights
CONF = GPTConfig(block_size=16, vocab_size=16, n_layer=2, n_head=2, n_embd=8)


def test_the_pool_starts_pretrainings_first_and_a_stage_only_after_what_it_starts_from():
    plan = pool_plan(list(STAGES), [0, 1])
    order = [task for task, _ in plan]
    assert len(order) == len(set(order)) == 2 * len(STAGES)
    assert [stage for _, stage in order[:6]] == ["StdPT_wide"] * 2 + ["StdPT"] * 2 + ["PausePT"] * 2
    assert [stage for _, stage in order[-2:]] == ["eval", "eval"]
    waits = dict(plan)
    assert waits[(1, "StdFT_half_b")] == [(1, "StdPT")]
    assert waits[(0, "PausePT_PauseFT")] == [(0, "PausePT")]
    assert waits[(0, "Wide_StdFT")] == [(0, "StdPT_wide")]
    assert waits[(0, "StdPT")] == []
    assert waits[(1, "eval")] == [(1, s) for s in STAGES if s != "eval"]
    for task, before in plan:  # everything waited for starts earlier: the pool never stalls
        assert all(order.index(b) < order.index(task) for b in before)


def test_a_pool_without_the_pretraining_waits_for_nothing_it_must_find_it_finished():
    assert pool_plan(["StdFT_flops", "eval"], [3]) == [((3, "StdFT_flops"), []), ((3, "eval"), [(3, "StdFT_flops")])]


def test_majority_wins_over_confidence():
    assert vote(["7", "7", "9"], [-5.0, -5.0, -0.1]) == 0
    assert vote(["9", "7", "7"], [-0.1, -5.0, -5.0]) == 1


def test_a_tie_goes_to_the_larger_summed_log_probability_then_to_the_earlier_vote():
    assert vote(["7", "9"], [-2.0, -0.5]) == 1
    assert vote(["7", "9"], [-0.5, -2.0]) == 0
    assert vote(["7", "9"], [-1.0, -1.0]) == 0  # exact tie: the earlier vote
    # two against two: 7 has -0.1 - 0.2 = -0.3, 9 has -1 - 1 = -2 although one of 9's votes ...
    assert vote(["9", "7", "9", "7"], [-1.0, -0.1, -1.0, -0.2]) == 1
    # ... and the sum, not the best single vote, decides: 3 has -0.05 - 3 = -3.05, 5 has -1 - 1 = -2
    assert vote(["3", "5", "5", "3"], [-0.05, -1.0, -1.0, -3.0]) == 1


def test_orderings_keep_the_numbers_and_are_fixed():
    q = "gap 3 17 8 9 40 22"
    assert reorder(q, 0, 5) == q
    other = reorder(q, 1, 5)
    assert other.split()[0] == "gap" and sorted(other.split()[1:]) == sorted(q.split()[1:]) and other != q
    assert reorder(q, 1, 5) == other and reorder(q, 1, 6) != other  # the same for every model, per question


def write_log(path, conf, shapes, padded=False):
    """A run's log.jsonl as train.fit writes its ledger: one record per step, of batches (rows, T)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ledger = flops.Ledger(conf, padded)
    with open(path, "w") as f:
        for step, (b, t) in enumerate(shapes):
            x = torch.ones(b, t, dtype=torch.long)
            ledger.add(x, x)
            f.write(json.dumps({"step": step, **ledger.record()}) + "\n")


def test_an_ensembles_training_flops_are_its_pretraining_and_both_members(tmp_path):
    write_log(str(tmp_path / "pt" / "log.jsonl"), CONF, [(2, 6)] * 2)
    write_log(str(tmp_path / "a" / "log.jsonl"), CONF, [(2, 5)] * 3, padded=True)
    write_log(str(tmp_path / "b" / "log.jsonl"), CONF, [(2, 4)] * 2, padded=True)
    # forward(T) = 2·1664·T + 2·2·8·T(T+1); a step = 3 · rows · forward(T)
    pt = 2 * 3 * 2 * (3328 * 6 + 32 * 6 * 7)  # 2 × 127872 = 255744
    a = 3 * 3 * 2 * (3328 * 5 + 32 * 5 * 6)  # 3 × 105600 = 316800
    b = 2 * 3 * 2 * (3328 * 4 + 32 * 4 * 5)  # 2 × 83712 = 167424
    cost = arm_cost([str(tmp_path / "pt" / "log.jsonl")], [str(tmp_path / "a" / "log.jsonl"),
                                                            str(tmp_path / "b" / "log.jsonl")])
    assert cost == {"pt_flops": 255744, "ft_flops": 484224, "train_flops": 739968}
    assert (pt, a + b) == (255744, 484224)


def test_a_votes_inference_flops_are_the_sum_of_its_decodes(tmp_path):
    """A model with every weight zero answers with symbol 0 until its budget (the block): a known decode length."""
    tok = WordTokenizer.build(["gap " + " ".join(map(str, range(10)))])
    conf = GPTConfig(block_size=16, vocab_size=padded_vocab(tok.vocab_size), n_layer=2, n_head=2, n_embd=8,
                     pause_id=tok.pause_id)
    model = GPT(conf)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    ckpt = str(tmp_path / "ckpt.pt")
    save_checkpoint(ckpt, model, None, {"kind": "finetune", "model": conf.__dict__, "tokenizer": tok.meta(), "m_ft": 0})
    task = tmp_path / "test.jsonl"
    task.write_text('{"text": "gap 1 5 2 4"}\n{"text": "gap 7 1 3 6"}\n')
    res = vote_eval([(ckpt, 0), (ckpt, 1)], str(task), 0, "cpu")
    # prompt 4 tokens ("gap a b c"), 12 decoded (16 - 4), none of them the stop: forward(4 + 12 - 1) each,
    # N = 2 (4·64 + 2·8·32) + 8·64 = 2048: 2·2048·15 + 2·2·8·15·16 = 69120 per vote, two votes
    assert res["votes"] == 2 and res["infer_flops_per_example"] == 2 * 69120 and res["value"] == 0.0


def test_the_wider_model_is_the_width_closest_to_the_pause_models_inference_flops():
    # goal: 4-token prompt + 4 pauses, 2 decoded -> forward(9) = 3328·9 + 32·9·10 = 32832
    # width d (2 layers, vocab 16): N = 24 d² + 16 d; forward(5) = 10 N + 2·2·d·5·6
    # d = 10: N = 2560, 25600 + 1200 = 26800 (off by 6032); d = 12: N = 3648, 36480 + 1440 = 37920 (off by 5088)
    wide = wider(CONF, [4], pauses=4)
    assert wide.n_embd == 12 and wide.n_layer == 2 and wide.n_head == 2
    assert flops.infer_flops(CONF, 8, 2) == 32832 and flops.infer_flops(wide, 4, 2) == 37920
    # its training: one batch of 2 rows × 6 positions = 3 · 2 · (2·3648·6 + 2·2·12·6·7) = 3 · 2 · 45792
    assert flops.train_flops(wide, 2, 6) == 274752


def test_matched_steps_come_closest_to_the_target(tmp_path):
    from finetune import FinetuneConfig
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "gap 1 5 2 3"}\n{"text": "gap 7 1 3 4"}\n')
    tok = WordTokenizer.build(["gap " + " ".join(map(str, range(10)))])
    ft = FinetuneConfig(task="lambada", task_file=str(path), batch_size=4, val_frac=0.0, seed=0)
    one = flops.train_flops(CONF, 4, 5)  # every batch: 4 rows of 4 prompt tokens + answer + EOT, less one
    assert matched_steps(ft, tok, CONF, 10 * one) == 10
    assert matched_steps(ft, tok, CONF, 10.4 * one) == 10 and matched_steps(ft, tok, CONF, 10.6 * one) == 11


def test_an_arm_a_hair_cheaper_but_less_accurate_is_not_on_the_frontier():
    pts = [{"arm": "a", "acc": 0.54, "cost": 9.4028}, {"arm": "b", "acc": 0.46, "cost": 9.4027},  # shorter answers
           {"arm": "c", "acc": 0.80, "cost": 11.3}, {"arm": "d", "acc": 0.30, "cost": 5.0}]
    assert on_frontier(pts, lambda p: p["cost"]) == {"a", "c", "d"}
