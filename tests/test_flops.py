"""The FLOPs ledger: the formula equals a hand computation, pauses and padding are counted as the model saw
them, and fit logs cumulative totals that survive a resume."""
import json
import os

import torch

import checkpoint
import flops
import train
from runtime import setup_runtime
from finetune import collate
from pause import assemble
from model import GPT, GPTConfig

# 2 layers, 8 wide, MLP 32, vocabulary 16: N = 2 * (4*8*8 + 2*8*32) + 8*16 = 2 * (256 + 512) + 128 = 1664
CONF = GPTConfig(block_size=16, vocab_size=16, n_layer=2, n_head=2, n_embd=8, pause_id=15)
EOT = 14


def batch():
    """Two finetuning rows with 2 pauses each: [1 2 P P 3 EOT] (x: 5 positions) and [1 P P 3 EOT] (x: 4, 1 pad)."""
    return collate([assemble([1, 2], [3, EOT], 2, CONF.pause_id, False, 16),
                    assemble([1], [3, EOT], 2, CONF.pause_id, False, 16)])


def test_matmul_params_by_hand_and_against_the_model():
    assert flops.matmul_params(CONF) == 1664
    model = GPT(CONF)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert flops.matmul_params(CONF) == linear  # every Linear, lm_head included (its weight is the embedding)


def test_forward_train_and_inference_flops_by_hand():
    # forward(5) = 2 N T + 2 L d T (T+1) = 2*1664*5 + 2*2*8*5*6 = 16640 + 960
    assert flops.forward_flops(CONF, 5) == 17600
    assert flops.train_flops(CONF, 2, 5) == 3 * 2 * 17600  # both rows at the padded length
    # prompt of 2 + 2 pauses, then 2 decoded tokens (answer + EOT): 5 positions go through the model
    assert flops.infer_flops(CONF, 4, 2) == 17600
    assert flops.infer_flops(CONF, 4, 1) == flops.forward_flops(CONF, 4)


def test_batch_counts_pauses_and_right_padding():
    x, y = batch()
    assert x.shape == (2, 5)
    assert flops.batch_counts(x, y, CONF.pause_id, padded=True) == {"real_tokens": 5, "pause_tokens": 4, "pad_tokens": 1}
    # pretraining windows have no padding, and a trailing ignored target is still a token
    x = torch.tensor([[1, 15, 2, 0]])
    y = torch.tensor([[-1, 2, 0, -1]])
    assert flops.batch_counts(x, y, 15, padded=False) == {"real_tokens": 3, "pause_tokens": 1, "pad_tokens": 0}


def test_fit_logs_cumulative_ledger_and_resumes_it(tmp_path):
    x, y = batch()
    cfg = train.LoopConfig(out_dir=str(tmp_path), max_iters=3, batch_size=2, eval_interval=100, warmup_iters=1,
                           device="cpu", log_interval=1)
    rt = setup_runtime("cpu", "float32", 0)
    meta = {"kind": "finetune", "model": CONF.__dict__}
    model, opt, step, log = checkpoint.open_run(cfg, rt, CONF)
    train.fit(cfg, rt, model, opt, lambda s, i: (x, y), lambda m: {}, meta, step, log)
    cfg.resume, cfg.max_iters = True, 5
    model, opt, step, log = checkpoint.open_run(cfg, rt, CONF)
    assert step == 3
    train.fit(cfg, rt, model, opt, lambda s, i: (x, y), lambda m: {}, meta, step, log)
    records = [r for r in map(json.loads, open(os.path.join(tmp_path, "log.jsonl"))) if "train_flops" in r]
    assert [r["train_flops"] for r in records] == [k * 105600 for k in range(1, 6)]
    assert flops.run_totals(os.path.join(tmp_path, "log.jsonl")) == {
        "train_flops": 5 * 105600, "real_tokens": 25, "pause_tokens": 20, "pad_tokens": 5}


def test_eval_results_carry_inference_flops(tmp_path):
    import eval as evaluation
    from checkpoint import save_checkpoint
    from tokenizer import WordTokenizer, padded_vocab
    tok = WordTokenizer.build(["gap 1 2 3 4 5"])
    conf = GPTConfig(block_size=32, vocab_size=padded_vocab(tok.vocab_size), n_layer=2, n_head=2, n_embd=8,
                     pause_id=tok.pause_id)
    save_checkpoint(str(tmp_path / "ckpt.pt"), GPT(conf), None,
                    {"kind": "finetune", "model": conf.__dict__, "tokenizer": tok.meta(), "m_ft": 2})
    with open(tmp_path / "test.jsonl", "w") as f:
        f.write(json.dumps({"text": "gap 1 2 4 2"}) + "\n" + json.dumps({"text": "gap 5 1 4"}) + "\n")
    res = evaluation.main(evaluation.EvalConfig(ckpt=str(tmp_path / "ckpt.pt"), task="lambada", device="cpu",
                                                task_file=str(tmp_path / "test.jsonl"), m_inf=[0, 2], max_new_tokens=1))
    # one decoded token (the budget): the prefill is all; prompts of 4 and 3 words, plus M_inf pauses
    for r in res:
        m = r["m_inf"]
        assert r["infer_flops_per_example"] == (flops.forward_flops(conf, 4 + m) + flops.forward_flops(conf, 3 + m)) / 2
