"""Pause-inference: pauses appended and prefilled, outputs read after the last pause, <pause> never emitted
(every test with learned and with rotary positions)."""
import copy

import pytest
import torch

from config import UserError
from model import GPT, GPTConfig
from pause import with_pauses
from sample import generate

VOCAB, PAUSE, EOT = 60, 59, 58  # tokenizer ids; the model's vocab is padded to 64


@pytest.fixture(scope="module", params=["learned", "rope"])
def model(request):
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=48, vocab_size=64, n_layer=2, n_head=2, n_embd=32, pause_id=PAUSE,
                      pos=request.param)).eval()
    with torch.no_grad():  # larger weights: sharper, more varied greedy choices than at init
        for p in m.parameters():
            p.mul_(4.0)
    return m


def greedy_by_hand(model, prompt, n):
    """Reference: full recomputation on one unpadded sequence, argmax over allowed tokens."""
    ids = list(prompt)
    for _ in range(n):
        logits = model(torch.tensor([ids]))[0][0, -1]
        logits[VOCAB:] = float("-inf")
        logits[PAUSE] = float("-inf")
        ids.append(int(logits.argmax()))
    return ids[len(prompt):]


def test_kv_cache_equals_full_recomputation(model):
    prompts = [with_pauses([1, 2, 3, 4, 5], 4, PAUSE), with_pauses([7, 8], 4, PAUSE)]
    cached = generate(model, prompts, 20, VOCAB, use_cache=True)
    recomputed = generate(model, prompts, 20, VOCAB, use_cache=False)
    assert cached == recomputed
    assert cached == [greedy_by_hand(model, p, 20) for p in prompts]  # left padding changes nothing
    assert len(set(map(tuple, cached))) > 1


def test_weights_laid_out_for_decoding_give_the_same_tokens(model):
    prompts = [with_pauses([1, 2, 3, 4, 5], 4, PAUSE), with_pauses([7, 8], 4, PAUSE)]
    assert generate(copy.deepcopy(model).column_major_(), prompts, 20, VOCAB) == generate(model, prompts, 20, VOCAB)


def test_each_row_stops_at_its_own_budget(model):
    prompts = [with_pauses([1, 2, 3, 4, 5], 4, PAUSE), with_pauses([7, 8], 4, PAUSE)]
    for budgets in ([3, 9], [9, 3]):
        rows = generate(model, prompts, budgets, VOCAB)
        assert rows == [greedy_by_hand(model, p, n) for p, n in zip(prompts, budgets)]


def test_zero_new_tokens_gives_empty_rows(model):
    assert generate(model, [[1, 2, 3], [4]], 0, VOCAB) == [[], []]


def test_m_inf_zero_is_plain_decoding(model):
    prompt = [3, 1, 4, 1, 5]
    assert generate(model, [with_pauses(prompt, 0, PAUSE)], 15, VOCAB) == [greedy_by_hand(model, prompt, 15)]


def test_pauses_change_the_answer_only_through_computation(model):
    """With pauses the first answer token is predicted from the last pause, so it generally differs."""
    prompt = [3, 1, 4, 1, 5]
    outs = {m: generate(model, [with_pauses(prompt, m, PAUSE)], 5, VOCAB)[0] for m in (0, 1, 5, 10)}
    assert len({tuple(o) for o in outs.values()}) > 1
    assert outs[5] == greedy_by_hand(model, prompt + [PAUSE] * 5, 5)


def test_pause_never_emitted_even_when_its_logit_wins(model, monkeypatch):
    forward = model.forward

    def pause_loving(*args, **kwargs):
        logits, loss = forward(*args, **kwargs)
        logits = logits.clone()
        logits[..., PAUSE] = 1e4  # the pause would win every argmax and nearly all probability mass
        logits[..., VOCAB:] = 1e3  # and so would the padded vocab slots
        return logits, loss

    monkeypatch.setattr(model, "forward", pause_loving)
    for temperature in (0.0, 1.0):
        rows = generate(model, [[1, 2, PAUSE, PAUSE]] * 4, 30, VOCAB, temperature=temperature,
                        generator=torch.Generator().manual_seed(0))
        flat = [t for r in rows for t in r]
        assert len(flat) == 120 and PAUSE not in flat and max(flat) < VOCAB


def test_stop_token_cuts_rows(model, monkeypatch):
    forward = model.forward

    def eot_at_third(*args, **kwargs):
        logits, loss = forward(*args, **kwargs)
        if args[0].shape[1] == 1 and eot_at_third.calls == 2:
            logits = logits.clone()
            logits[..., EOT] = 1e4
        eot_at_third.calls += args[0].shape[1] == 1
        return logits, loss
    eot_at_third.calls = 0

    monkeypatch.setattr(model, "forward", eot_at_third)
    rows = generate(model, [[1, 2, 3]], 10, VOCAB, stop_id=EOT)
    assert len(rows[0]) == 3 and EOT not in rows[0]


def test_sampling_is_seeded_and_respects_top_k(model):
    prompt = [with_pauses([1, 2, 3], 2, PAUSE)] * 3
    a = generate(model, prompt, 10, VOCAB, temperature=1.0, generator=torch.Generator().manual_seed(1))
    b = generate(model, prompt, 10, VOCAB, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert a == b
    top1 = generate(model, prompt, 10, VOCAB, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(2))
    assert top1 == generate(model, prompt, 10, VOCAB)  # top-1 sampling is greedy


def test_prompt_longer_than_block_is_refused(model):
    with pytest.raises(UserError, match="block size"):
        generate(model, [with_pauses([1] * 40, 10, PAUSE)], 5, VOCAB)
