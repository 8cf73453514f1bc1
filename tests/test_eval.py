"""eval.py as a user relies on it: every answer gets its task's budget, an over-long prompt is cut and
counted (never fatal), rows of a batch keep their own budgets, and scored tasks refuse pauses that fill
the block. A stub model that says a fixed answer runs through the real generate and scoring code."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import eval as evaluation
import metrics
from checkpoint import save_checkpoint
from config import UserError, parse_config
from model import GPT, GPTConfig
from tokenizer import WordTokenizer, padded_vocab

WORDS = ["Question:", "Answer:", "Q:", "A:", "gap", "####", "\n", *(f"w{i}" for i in range(60)), *map(str, range(20))]
LONG_ANSWER = " ".join(f"w{i}" for i in range(40)) + "\n#### 7"  # 43 tokens: more than the old 32-token budget


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer.build([" ".join(WORDS)])


@pytest.fixture(scope="module")
def ckpt(tok, tmp_path_factory):
    """A random one-layer model with a 128-token block, in the real checkpoint format."""
    torch.manual_seed(0)
    conf = GPTConfig(block_size=128, vocab_size=padded_vocab(tok.vocab_size), n_layer=1, n_head=2, n_embd=16,
                     pause_id=tok.pause_id)
    path = str(tmp_path_factory.mktemp("ckpt") / "ckpt.pt")
    save_checkpoint(path, GPT(conf), None, {"kind": "pretrain", "model": conf.__dict__, "tokenizer": tok.meta()})
    return path


def parrot(model: GPT, tok, successor: dict[str, str], monkeypatch) -> None:
    """Make `model` predict successor[last input token] with certainty (EOT after any other token, or "w0"
    after every token if successor is {"*": "w0"}); the real forward still runs, so the KV cache works."""
    default = tok.encode(successor["*"])[0] if "*" in successor else tok.eot_id
    lut = torch.full((model.config.vocab_size,), default)
    for a, b in successor.items():
        if a != "*":
            lut[tok.pause_id if a == "<pause>" else tok.encode(a)[0]] = tok.encode(b)[0]
    forward = model.forward

    def stub(idx, *args, **kwargs):
        logits, loss = forward(idx, *args, **kwargs)
        return F.one_hot(lut[idx], logits.size(-1)).float() * 100.0, loss

    monkeypatch.setattr(model, "forward", stub)


def says(answer: str) -> dict[str, str]:
    """Successors that make the model answer `answer` after "Answer:" or a pause, then stop (EOT)."""
    words = WordTokenizer.split(answer)
    return {"Answer:": words[0], "A:": words[0], "<pause>": words[0], **dict(zip(words, words[1:]))}


def use_parrot(monkeypatch, successor: dict[str, str]) -> None:
    load = evaluation.load_model

    def load_parrot(*args, **kwargs):
        model, tok, meta = load(*args, **kwargs)
        parrot(model, tok, successor, monkeypatch)
        return model, tok, meta

    monkeypatch.setattr(evaluation, "load_model", load_parrot)


def write_gsm8k(path, questions: list[str]) -> str:
    path.write_text("".join(json.dumps({"question": q, "answer": LONG_ANSWER}) + "\n" for q in questions))
    return str(path)


def run_eval(ckpt, *args) -> list[dict]:
    return evaluation.main(parse_config(evaluation.EvalConfig, [f"--ckpt={ckpt}", "--device=cpu", *args]))


def test_gsm8k_answer_longer_than_32_tokens_is_decoded_whole(ckpt, tok, tmp_path, monkeypatch):
    assert len(tok.encode(" " + LONG_ANSWER)) > 32
    use_parrot(monkeypatch, says(LONG_ANSWER))
    path = write_gsm8k(tmp_path / "test.jsonl", ["gap 1 3 9"])
    results = run_eval(ckpt, "--task=gsm8k", f"--task_file={path}", "--m_inf=0,3")
    assert [(r["m_inf"], r["value"]) for r in results] == [(0, 1.0), (3, 1.0)]
    # the old fixed budget of 32 tokens never reaches "#### 7"
    assert [r["value"] for r in run_eval(ckpt, "--task=gsm8k", f"--task_file={path}", "--max_new_tokens=32")] == [0.0]


def test_over_long_prompt_is_cut_from_the_left_and_counted(ckpt, tok, tmp_path, monkeypatch):
    use_parrot(monkeypatch, says(LONG_ANSWER))
    long_question = "gap " + " ".join(str(i % 20) for i in range(200))  # > the 128-token block on its own
    path = write_gsm8k(tmp_path / "test.jsonl", ["gap 1 3 9", long_question, "gap 2 5"])
    results = run_eval(ckpt, "--task=gsm8k", f"--task_file={path}", "--m_inf=0,10")
    # the long prompt keeps its end ("Answer:"), its pauses and room for the whole answer: all three are right
    assert [(r["m_inf"], r["value"], r["n_truncated"], r["n"]) for r in results] == [(0, 1.0, 1, 3), (10, 1.0, 1, 3)]


def test_rows_of_one_batch_keep_their_own_budgets(ckpt, tok, monkeypatch):
    model, _, _ = evaluation.load_model(ckpt, "cpu")
    parrot(model, tok, {"*": "w0"}, monkeypatch)  # never stops: each row runs to its budget
    short, long = tok.encode("gap 1 2"), tok.encode("gap " + " ".join(["3"] * 99))  # 3 and 100 tokens
    answers = evaluation.decode_answers(model, tok, [long, short], [28, 50], batch_size=8, bar=_NoBar())
    # one batch padded to the long prompt would have left the short row 128 - 100 = 28 tokens too
    assert [len(a.split()) for a in answers] == [28, 50]


def write_piqa(tmp_path) -> str:
    rows = [{"goal": "gap 1 2", "sol1": "w1 w2", "sol2": "w3"}, {"goal": "gap 4", "sol1": "w4", "sol2": "w5 w6"}]
    (tmp_path / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "valid-labels.lst").write_text("0\n1\n")
    return str(tmp_path / "valid.jsonl")


def test_scored_task_refuses_pauses_that_fill_the_block(ckpt, tmp_path):
    path = write_piqa(tmp_path)
    results = run_eval(ckpt, "--task=piqa", f"--task_file={path}", "--m_inf=0,124")
    assert [r["n_truncated"] for r in results] == [0, 0, 2, 2]  # 124 pauses leave the question 3 tokens or fewer
    out = tmp_path / "r.json"
    with pytest.raises(UserError, match=r"--m_inf=128 leaves no room .* block_size 128 .*: the largest M_inf that fits is 12\d$"):
        run_eval(ckpt, "--task=piqa", f"--task_file={path}", "--m_inf=0,128", f"--out={out}")
    assert not out.exists()  # refused before any work


def test_choice_scoring_masks_pause_and_padded_vocab_like_decoding(ckpt, tok, monkeypatch):
    model, _, _ = evaluation.load_model(ckpt, "cpu")
    forward = model.forward

    def pause_loving(*args, **kwargs):  # <pause> and the padded slots would take nearly all the probability
        logits, loss = forward(*args, **kwargs)
        logits = logits.clone()
        logits[..., tok.pause_id] = 30.0
        logits[..., tok.vocab_size:] = 20.0
        return logits, loss

    monkeypatch.setattr(model, "forward", pause_loving)
    context, choice = tok.encode("Question: gap 1 2\nAnswer:") + [tok.pause_id] * 2, tok.encode(" w1 w2")
    [got] = evaluation.choice_logliks(model, [(context, choice)], tok.vocab_size, 4, _NoBar())
    by_hand = 0.0
    for k, target in enumerate(choice):  # log-softmax over the ids decoding may emit: 0 .. vocab_size-1 but <pause>
        logits = forward(torch.tensor([context + choice[:k]]))[0][0, -1]
        allowed = [i for i in range(tok.vocab_size) if i != tok.pause_id]
        by_hand += (logits[target] - torch.logsumexp(logits[allowed], 0)).item()
    assert got == pytest.approx(by_hand, abs=1e-4)


def test_results_json_holds_each_examples_record(ckpt, tok, tmp_path, monkeypatch):
    use_parrot(monkeypatch, says(LONG_ANSWER))
    path, out = write_gsm8k(tmp_path / "test.jsonl", ["gap 1 3 9", "gap 2 5"]), tmp_path / "res.json"
    results = run_eval(ckpt, "--task=gsm8k", f"--task_file={path}", "--m_inf=0,3", f"--out={out}")
    assert json.load(open(out)) == results and [r["m_inf"] for r in results] == [0, 3]
    for r in results:
        assert [s["doc_id"] for s in r["samples"]] == [0, 1]
        assert all(s["generated"] == LONG_ANSWER and s["answer"] == LONG_ANSWER and s["target"] == ["7"]
                   and s["scores"] == {"em": 1.0} and s["truncated"] is False for s in r["samples"])
    lean = run_eval(ckpt, "--task=gsm8k", f"--task_file={path}", "--log_samples=false")
    assert "samples" not in lean[0] and lean[0]["value"] == 1.0
    piqa = run_eval(ckpt, "--task=piqa", f"--task_file={write_piqa(tmp_path)}", "--m_inf=2")
    assert [r["metric"] for r in piqa] == ["acc", "acc_norm"] and "samples" not in piqa[1]  # once per M_inf
    assert [(s["doc_id"], len(s["logliks"]), s["label"], set(s["scores"])) for s in piqa[0]["samples"]] == [
        (0, 2, 0, {"acc", "acc_norm"}), (1, 2, 1, {"acc", "acc_norm"})]


COQA = {"data": [{"story": "w1 w2", "questions": [{"input_text": "w3"}, {"input_text": "w7"}],
                  "answers": [{"input_text": "w4"}, {"input_text": "w8"}],
                  "additional_answers": {"0": [{"input_text": "w5 w4"}, {"input_text": "w8"}],
                                         "1": [{"input_text": "w6"}, {"input_text": "w8"}]}}]}


def test_coqa_scores_and_f1_stderr_end_to_end(ckpt, tmp_path, monkeypatch):
    use_parrot(monkeypatch, says("w4"))  # answers "w4" to both turns
    (tmp_path / "coqa.json").write_text(json.dumps(COQA))
    em, f1 = run_eval(ckpt, "--task=coqa", f"--task_file={tmp_path / 'coqa.json'}", "--m_inf=0")
    # turn 1, golds w4 / w5 w4 / w6, leave-one-out: EM 2/3, F1 (2/3 + 1 + 1) / 3 = 8/9; turn 2, gold w8: 0 and 0
    assert [s["scores"] for s in em["samples"]] == [pytest.approx({"em": 2 / 3, "f1": 8 / 9}), {"em": 0.0, "f1": 0.0}]
    assert f1["value"] == pytest.approx(4 / 9)
    # sample std of (8/9, 0) over sqrt(2) = 4/9; the Bernoulli formula sqrt(p(1-p)/(n-1)) would give sqrt(20)/9
    assert f1["stderr"] == pytest.approx(4 / 9) == metrics.stderr([8 / 9, 0.0])
    assert not math.isclose(f1["stderr"], math.sqrt(20) / 9)


class _NoBar:
    def update(self, n):
        pass


def finetuned(tok, path, task: str, task_file: str) -> str:
    """A random one-layer model saved as if finetuned (StdFT) on `task` from `task_file`."""
    conf = GPTConfig(block_size=64, vocab_size=padded_vocab(tok.vocab_size), n_layer=1, n_head=2, n_embd=16,
                     pause_id=tok.pause_id)
    save_checkpoint(str(path), GPT(conf), None, {"kind": "finetune", "model": conf.__dict__, "tokenizer": tok.meta(),
                                                 "task": task, "m_ft": 0, "config": {"task_file": task_file}})
    return str(path)


def test_task_defaults_to_the_one_the_checkpoint_was_finetuned_on(tok, tmp_path):
    ckpt = finetuned(tok, tmp_path / "ckpt.pt", "lambada", "")  # finetuned on the official files
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"text": "gap 1 5 w3"}) + "\n")
    results = run_eval(ckpt, f"--task_file={test}", "--m_inf=0")
    assert results[0]["task"] == "lambada" and results[0]["split"] == "test"


def test_checkpoint_of_a_task_file_of_its_own_is_told_which_file_to_pass(tok, tmp_path):
    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / "test.jsonl").write_text(json.dumps({"text": "gap 1 5 w3"}) + "\n")
    ckpt = finetuned(tok, tmp_path / "ckpt.pt", "lambada", str(tmp_path / "synth" / "train.jsonl"))
    with pytest.raises(UserError, match=f"pass --task_file={tmp_path / 'synth' / 'test.jsonl'}$"):
        run_eval(ckpt)


def test_console_line_names_the_split_and_the_arm(tok, tmp_path, capsys):
    ckpt = finetuned(tok, tmp_path / "ckpt.pt", "lambada", "")
    val = tmp_path / "val.jsonl"
    val.write_text(json.dumps({"text": "gap 1 5 w3"}) + "\n")
    result = run_eval(ckpt, f"--task_file={val}", "--m_inf=2", "--filler=w0")[0]
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("val split, StdPT_StdFT_InfFiller (M_ft=0) M_inf=  2: lambada em = ")
    assert result["variant"] == "StdPT_StdFT_InfFiller" and result["inference_token"] == "w0" and result["ft_m"] == 0
