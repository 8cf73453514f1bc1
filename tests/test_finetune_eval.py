"""PauseFT batches and the M_inf evaluation: exact loss positions, pause placement, exact scoring."""
import json
import os
import re

import pytest
import torch
import torch.nn.functional as F

import eval as evaluation
import finetune
from checkpoint import save_checkpoint
from config import UserError, parse_config, run_main
from finetune import FinetuneConfig, collate, encode_example
from tokenizer import inserted_token
from model import GPT, GPTConfig
from tokenizer import WordTokenizer, padded_vocab

WORDS = "Question: Answer: gap min #### . \n " + " ".join(map(str, range(20)))


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer.build([WORDS])


@pytest.fixture(scope="module")
def ckpt(tok, tmp_path_factory):
    """A small random 'pretrained' checkpoint in the real format."""
    torch.manual_seed(0)
    conf = GPTConfig(block_size=64, vocab_size=padded_vocab(tok.vocab_size), n_layer=2, n_head=2, n_embd=32,
                     pause_id=tok.pause_id)
    model = GPT(conf)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # sharper predictions, so that greedy answers vary
    path = str(tmp_path_factory.mktemp("ckpt") / "ckpt.pt")
    meta = {"kind": "pretrain", "model": conf.__dict__, "tokenizer": tok.meta(), "config": {"pause_frac": 0.1}}
    save_checkpoint(path, model, None, meta)
    return path


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("task")
    rows = [{"question": f"gap {a} {b} {c}", "answer": f"#### {max(b - a, c - b)}"}
            for a, b, c in [(1, 3, 9), (2, 5, 6), (0, 4, 7), (3, 8, 10), (1, 2, 9), (5, 6, 12)]]
    for name in ("train.jsonl", "test.jsonl"):
        with open(d / name, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return d


@pytest.mark.parametrize("m,prepend", [(0, False), (3, False), (5, True)])
def test_loss_positions_are_exactly_target_and_eot(tok, m, prepend):
    prefix, target = "Question: gap 1 3 9\nAnswer:", " #### 6"
    x, y = encode_example(tok, prefix, target, m, tok.pause_id, prepend, 64)
    p_ids, t_ids = tok.encode(prefix), tok.encode(target) + [tok.eot_id]
    seq = ([tok.pause_id] * m + p_ids if prepend else p_ids + [tok.pause_id] * m) + t_ids
    assert x.tolist() == seq[:-1]
    assert [int(t) for t in y if t != -1] == t_ids  # the target and the closing EOT, nothing else
    assert (y != -1).sum() == len(t_ids) and y[-len(t_ids):].tolist() == t_ids
    if m and not prepend:  # the first target token is predicted from the last pause
        assert x[len(p_ids) + m - 1] == tok.pause_id and y[len(p_ids) + m - 1] == t_ids[0]


def test_long_prefix_loses_its_beginning_not_the_pauses_or_target(tok):
    prefix, target = "Question: gap " + " ".join(map(str, range(20))) + "\nAnswer:", " #### 6"
    x, y = encode_example(tok, prefix, target, 4, tok.pause_id, False, 16)
    t_ids = tok.encode(target) + [tok.eot_id]
    assert len(x) == 16 and x[-len(t_ids) + 1:].tolist() == t_ids[:-1]  # the block is full, the target whole
    assert x.tolist()[:16 - 4 - len(t_ids) + 1] == tok.encode(prefix)[-(16 - 4 - len(t_ids) + 1):]  # the prefix's end
    assert x.tolist().count(tok.pause_id) == 4


def test_padding_is_ignored_by_the_loss(tok, ckpt):
    from checkpoint import load_model
    model, _, _ = load_model(ckpt, "cpu")
    pairs = [encode_example(tok, f"Question: gap {q}\nAnswer:", " #### 3", 4, tok.pause_id, False, 64)
             for q in ("1 3", "1 3 5 7 9 11")]
    x, y = collate(pairs)
    assert x.shape[1] == max(len(p[0]) for p in pairs) and (y[0, len(pairs[0][0]):] == -1).all()
    _, loss = model(x, y)
    logits = model(x)[0]
    by_hand = [-F.log_softmax(logits[b, t], -1)[y[b, t]] for b in range(2) for t in range(x.shape[1]) if y[b, t] >= 0]
    assert loss.item() == pytest.approx(torch.stack(by_hand).mean().item(), rel=1e-5)
    # and the result does not depend on what the padding holds
    x2 = x.clone()
    x2[0, len(pairs[0][0]):] = tok.pause_id
    assert model(x2, y)[1].item() == pytest.approx(loss.item(), rel=1e-6)


def test_filler_uses_the_ordinary_token(tok):
    filler = inserted_token(tok, ".")
    assert filler == tok.encode(".")[0] != tok.pause_id
    x, _ = encode_example(tok, "Question: gap 1 3\nAnswer:", " #### 2", 4, filler, False, 64)
    assert x.tolist().count(filler) == 4 and tok.pause_id not in x.tolist()
    with pytest.raises(UserError, match="one token"):
        inserted_token(tok, ". .")


def test_scored_loglik_equals_token_by_token_sum(ckpt):
    from checkpoint import load_model
    model, tok, _ = load_model(ckpt, "cpu")
    context, choices = tok.encode("Question: min 4 9\nAnswer:"), [tok.encode(c) for c in (" #### 4", " #### 9 . 9")]
    for m in (0, 3):
        ctx = context + [tok.pause_id] * m
        fast = evaluation.choice_logliks(model, [(ctx, c) for c in choices], tok.vocab_size, 8, _NoBar())
        for c, got in zip(choices, fast):
            by_hand = 0.0
            for k in range(len(c)):  # one forward per choice token, on the unpadded prefix
                logits = model(torch.tensor([ctx + c[:k]]))[0][0, -1, :tok.vocab_size]  # the real tokens only
                logits[tok.pause_id] = float("-inf")
                by_hand += F.log_softmax(logits, -1)[c[k]].item()
            assert got == pytest.approx(by_hand, abs=1e-4)


class _NoBar:
    def update(self, n):
        pass


def test_finetune_then_sweep_one_result_per_m_inf(ckpt, task_files, tmp_path, capsys):
    out = tmp_path / "ft"
    cfg = parse_config(FinetuneConfig, [f"--init_from={ckpt}", "--task=gsm8k", f"--task_file={task_files}/train.jsonl",
                                        "--m_ft=3", f"--out_dir={out}", "--max_iters=4", "--batch_size=4",
                                        "--device=cpu", "--eval_interval=2", "--val_frac=0.2"])
    finetune.main(cfg)
    last = capsys.readouterr().out.strip().splitlines()[-1]  # the run ends with its final loss and checkpoint
    assert re.fullmatch(rf"step 4: val_loss \d+\.\d{{4}}; checkpoint {out}/ckpt.pt", last), last
    res_path = tmp_path / "res.json"
    ecfg = parse_config(evaluation.EvalConfig, [f"--ckpt={out}/ckpt.pt", "--task=gsm8k", "--device=cpu",
                                                f"--task_file={task_files}/test.jsonl", "--m_inf=0,1,3,6",
                                                f"--out={res_path}"])
    results = evaluation.main(ecfg)
    assert [r["m_inf"] for r in results] == [0, 1, 3, 6]
    assert all(r["variant"] == "PausePT_PauseFT" and r["m_ft"] == 3 and r["n"] == 6 for r in results)
    assert json.load(open(res_path)) == results
    ecfg.m_inf, ecfg.overwrite = [-1], True  # the checkpoint's own m_ft, into the same results file
    assert [r["m_inf"] for r in evaluation.main(ecfg)] == [3]


def test_finetuning_mfu_uses_the_padded_batch_width(ckpt, task_files, tmp_path, monkeypatch):
    widths = []
    monkeypatch.setattr(GPT, "estimate_mfu", lambda self, tok_s, device, seq_len=None: widths.append(seq_len))
    finetune.main(parse_config(FinetuneConfig, [f"--init_from={ckpt}", "--task=gsm8k", f"--out_dir={tmp_path}/ft",
                                                f"--task_file={task_files}/train.jsonl", "--max_iters=3",
                                                "--batch_size=2", "--device=cpu", "--val_frac=0"]))
    assert len(widths) == 3 and all(w is not None and w < 20 for w in widths)  # short examples, not block_size 64


def cli_error(fn, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        run_main(fn)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_bad_inputs(ckpt, task_files, tmp_path, capsys, tok):
    base = [f"--ckpt={ckpt}", "--device=cpu", f"--out={tmp_path}/r.json", "--overwrite"]
    run = lambda args: cli_error(lambda: evaluation.main(parse_config(evaluation.EvalConfig, base + args)), capsys)
    (tmp_path / "r.json").write_text("[]")  # an earlier result must survive a failed run
    assert "missing.jsonl" in run(["--task=gsm8k", f"--task_file={tmp_path}/missing.jsonl"])
    (tmp_path / "bad.jsonl").write_text('{"question": "gap 1 2", "answer": "#### 1"}\n{not json\n')
    assert "bad.jsonl" in run(["--task=gsm8k", f"--task_file={tmp_path}/bad.jsonl"])
    assert "--task must be one of" in run(["--task=gsm9k", f"--task_file={task_files}/test.jsonl"])
    assert "--m_inf (each value) must be an integer >= -1, got -3" in run(
        ["--task=gsm8k", f"--task_file={task_files}/test.jsonl", "--m_inf=0,-3"])
    assert (tmp_path / "r.json").read_text() == "[]"
    # a checkpoint whose tokenizer does not know the task's words: another vocabulary
    other = WordTokenizer.build(["completely different words"])
    conf = GPTConfig(block_size=32, vocab_size=64, n_layer=1, n_head=1, n_embd=8, pause_id=other.pause_id)
    save_checkpoint(str(tmp_path / "other.pt"), GPT(conf), None, {"model": conf.__dict__, "tokenizer": other.meta()})
    err = cli_error(lambda: evaluation.main(parse_config(evaluation.EvalConfig, [
        f"--ckpt={tmp_path}/other.pt", "--device=cpu", "--task=gsm8k", f"--task_file={task_files}/test.jsonl"])), capsys)
    assert "not in the vocabulary" in err
    # finetuning with negative pauses or into an existing run
    err = cli_error(lambda: finetune.main(parse_config(FinetuneConfig, [
        f"--init_from={ckpt}", f"--task_file={task_files}/train.jsonl", "--m_ft=-1"])), capsys)
    assert "m_ft" in err


def test_a_folder_given_as_the_checkpoint_names_the_file_in_it(ckpt, task_files, tmp_path, capsys):
    folder = os.path.dirname(ckpt)
    for main in (lambda: finetune.main(parse_config(FinetuneConfig, [f"--init_from={folder}", f"--out_dir={tmp_path}",
                                                                     f"--task_file={task_files}/train.jsonl"])),
                 lambda: evaluation.main(parse_config(evaluation.EvalConfig, [f"--ckpt={folder}", "--device=cpu"]))):
        assert f"{folder} is a directory; give the file in it (e.g. {ckpt})" in cli_error(main, capsys)
