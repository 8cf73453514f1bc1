"""model.py: masked loss (chunked = plain), last-position logits, pause gradients, KV cache, left-padding masks (learned and rotary positions), init,
optimizer groups; a CPU process keeping the memory it frees."""
import math
import os
import subprocess
import sys

import pytest
import torch

from model import GPT, GPTConfig

PAUSE = 63
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=64, pause_id=PAUSE)
    return GPT(GPTConfig(**(cfg | kw))).eval()


def tokens(*shape: int, seed: int = 1) -> torch.Tensor:
    """Random non-pause tokens."""
    return torch.randint(0, PAUSE, shape, generator=torch.Generator().manual_seed(seed))


def test_loss_is_mean_cross_entropy_over_kept_targets():
    model = tiny()
    idx, targets = tokens(3, 16), tokens(3, 16, seed=2)
    targets[0, :5] = targets[2, 7:] = -1
    logits, _ = model(idx)
    logits_with_targets, loss = model(idx, targets)
    assert logits_with_targets is None  # training never builds the full logits
    log_probs = logits - logits.exp().sum(-1, keepdim=True).log()
    kept = targets != -1
    expected = -log_probs[kept].gather(1, targets[kept][:, None]).mean()
    assert torch.allclose(loss, expected, atol=1e-6)


def _grads(model: GPT, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("chunk", [7, 16, 1000])  # a ragged last chunk, whole rows, one chunk
def test_chunked_loss_equals_plain_loss_in_value_and_gradients(chunk):
    model = tiny(bias=True)
    idx, targets = tokens(3, 16), tokens(3, 16, seed=2)
    idx[:, [3, 4, 9]] = PAUSE
    targets[:, [2, 3, 8]] = -1  # ignored pause targets
    targets[1] = -1  # and a row with nothing to learn
    logits, _ = model(idx)
    plain = torch.nn.functional.cross_entropy(logits.view(-1, 64), targets.view(-1), ignore_index=-1)
    expected = _grads(model, plain)
    model.loss_chunk = chunk
    _, loss = model(idx, targets)
    assert torch.allclose(loss, plain, atol=1e-6)
    for name, grad in _grads(model, loss).items():
        assert torch.allclose(grad, expected[name], atol=1e-6), name
    with torch.no_grad():
        assert torch.allclose(model(idx, targets)[1], plain, atol=1e-6)


def test_the_chunked_loss_under_bfloat16_autocast_gives_float32_gradients_close_to_float32s():
    # it once failed on the second chunk: the first chunk's weight gradient came out of autocast in bfloat16 and
    # the in-place add of the next one (which autocast skips) mixed it with float32 (--dtype=bfloat16 on a CPU,
    # or a GPU without --compile)
    model = tiny(bias=True)
    idx, targets = tokens(3, 16), tokens(3, 16, seed=2)
    targets[:, [2, 3, 8]] = -1
    expected = _grads(model, model(idx, targets)[1])
    model.loss_chunk = 7
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(idx, targets)
    for name, grad in _grads(model, loss).items():
        assert grad.dtype == torch.float32, name
        assert (grad - expected[name]).norm() <= 0.05 * expected[name].norm() + 1e-6, name


def test_last_position_logits_equal_the_last_row_of_full_logits():
    model, idx = tiny(), tokens(2, 12)
    full, _ = model(idx)
    last, _ = model(idx, last_only=True)
    assert last.shape == (2, 1, 64) and torch.allclose(last, full[:, -1:], atol=1e-6)
    cache = model.new_cache(2, 32)
    assert torch.allclose(model(idx, cache=cache, last_only=True)[0], full[:, -1:], atol=1e-5)


def test_column_major_weights_give_the_same_logits_and_stay_tied():
    model, idx = tiny(), tokens(2, 12)
    full, _ = model(idx)
    model.column_major_()
    assert model.lm_head.weight.stride() == (1, 64) and model.transformer.h[0].mlp.c_fc.weight.stride() == (1, 128)
    assert model.transformer.wte.weight is model.lm_head.weight
    assert torch.allclose(model(idx)[0], full, atol=1e-6)
    cache = model.new_cache(2, 32)
    steps = [model(idx[:, :6], cache=cache)[0]] + [model(idx[:, t:t + 1], cache=cache)[0] for t in range(6, 12)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def _pause_row_grads(model: GPT, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tied <pause> row's gradient, split into (through the input embedding, through the output layer);
    the plain loss on the full logits (the chunked one has the same gradients, tested above)."""
    seen = {}

    def keep(module, inputs, output):
        output.retain_grad()
        seen.update(h=inputs[0], logits=output)

    handle = model.lm_head.register_forward_hook(keep)
    model.zero_grad()
    logits, _ = model(idx)
    torch.nn.functional.cross_entropy(logits.view(-1, 64), targets.view(-1), ignore_index=-1).backward()
    handle.remove()
    output_part = (seen["logits"].grad[..., PAUSE, None] * seen["h"]).sum((0, 1))
    return (model.lm_head.weight.grad[PAUSE] - output_part).detach(), output_part.detach()


def test_pause_embedding_is_trained_through_pause_inputs():
    idx, targets = tokens(2, 16), tokens(2, 16, seed=2)
    idx[:, [3, 4, 9]] = PAUSE
    targets[:, [2, 3, 8]] = -1  # every pause target is ignored, as the data loader does
    input_part, _ = _pause_row_grads(tiny(), idx, targets)
    assert input_part.abs().max() > 1e-3


def test_pause_embedding_gets_no_input_gradient_without_pause_inputs():
    input_part, output_part = _pause_row_grads(tiny(), tokens(2, 16), tokens(2, 16, seed=2))
    assert input_part.abs().max() < 1e-7  # float rounding only
    assert output_part.abs().max() > 1e-3  # still pushed down by every softmax denominator


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_prefill_then_decode_matches_full_forward(pos):
    model, idx = tiny(pos=pos), tokens(2, 18)
    full, _ = model(idx)
    cache = model.new_cache(2, 32)
    steps = [model(idx[:, :10], cache=cache)[0]] + [model(idx[:, t:t + 1], cache=cache)[0] for t in range(10, 18)]
    assert cache.pos == 18
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_chunked_decode_matches_full_forward(pos):
    model, idx = tiny(pos=pos), tokens(1, 20)
    cache = model.new_cache(1, 32)
    chunks = [model(idx[:, a:b], cache=cache)[0] for a, b in [(0, 7), (7, 12), (12, 20)]]
    assert torch.allclose(torch.cat(chunks, 1), model(idx)[0], atol=1e-5)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_greedy_with_cache_equals_greedy_by_recomputation(pos):
    model, prompt = tiny(pos=pos), tokens(1, 6)
    slow = prompt
    for _ in range(12):
        slow = torch.cat([slow, model(slow)[0][:, -1:].argmax(-1)], 1)
    cache = model.new_cache(1, 32)
    logits, _ = model(prompt, cache=cache)
    fast = prompt
    for _ in range(12):
        nxt = logits[:, -1:].argmax(-1)
        fast = torch.cat([fast, nxt], 1)
        logits, _ = model(nxt, cache=cache)
    assert fast.tolist() == slow.tolist()


def _left_padded(prompts: list[torch.Tensor], pad: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    idx = torch.full((len(prompts), width), pad)
    key_mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, p in enumerate(prompts):
        idx[row, width - len(p):], key_mask[row, width - len(p):] = p, True
    return idx, key_mask


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_left_padded_batch_matches_each_prompt_alone(pos):
    model = tiny(pos=pos)
    prompts = [tokens(n, seed=n) for n in (5, 9, 7)]
    idx, key_mask = _left_padded(prompts)
    logits, _ = model(idx, key_mask=key_mask)
    for row, p in enumerate(prompts):
        alone, _ = model(p[None])
        assert torch.allclose(logits[row, -len(p):], alone[0], atol=1e-5)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_left_padded_decode_with_cache_matches_each_prompt_alone(pos):
    model = tiny(pos=pos)
    prompts, extra = [tokens(n, seed=n) for n in (5, 9, 7)], tokens(3, 4, seed=7)
    idx, key_mask = _left_padded(prompts)
    cache = model.new_cache(3, 16)
    batch = [model(idx, cache=cache, key_mask=key_mask)[0][:, -1]]
    for t in range(4):
        key_mask = torch.cat([key_mask, torch.ones(3, 1, dtype=torch.bool)], 1)
        batch.append(model(extra[:, t:t + 1], cache=cache, key_mask=key_mask)[0][:, -1])
    for row, p in enumerate(prompts):
        alone_cache = model.new_cache(1, 16)
        alone = [model(p[None], cache=alone_cache)[0][0, -1]]
        alone += [model(extra[row:row + 1, t:t + 1], cache=alone_cache)[0][0, -1] for t in range(4)]
        assert torch.allclose(torch.stack([b[row] for b in batch]), torch.stack(alone), atol=1e-5)


def test_residual_projections_have_scaled_init():
    model = tiny(n_layer=2)
    std = model.transformer.h[1].mlp.c_proj.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(2 * 2), rel=0.1)


def test_input_and_output_embeddings_are_tied():
    model = tiny()
    assert model.transformer.wte.weight.data_ptr() == model.lm_head.weight.data_ptr()


def test_weight_decay_only_on_matrices():
    model = tiny(bias=True)
    decay, no_decay = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu").param_groups
    matrices = {id(p) for p in model.parameters() if p.dim() >= 2}
    assert {id(p) for p in decay["params"]} == matrices and decay["weight_decay"] == 0.1
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in model.parameters()} - matrices
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) > 0


def test_mfu_is_undefined_on_cpu():
    assert tiny().estimate_mfu(1e4, "cpu") is None


def test_mfu_counts_attention_over_the_real_sequence_length(monkeypatch):
    model = tiny()  # 2 layers, 32 wide, block 32
    assert model.flops_per_token(10) == 6 * model.num_params() + 12 * 2 * 32 * 10
    assert model.flops_per_token() == model.flops_per_token(32)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # an H100 without one
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert model.estimate_mfu(1e9, "cuda", seq_len=10) == pytest.approx(1e9 * model.flops_per_token(10) / 989e12)


def test_cache_overflow_raises():
    model = tiny()
    cache = model.new_cache(1, 8)
    model(tokens(1, 6), cache=cache)
    with pytest.raises(ValueError):
        model(tokens(1, 3), cache=cache)


def test_cache_past_block_size_raises():
    model = tiny()
    cache = model.new_cache(1, 64)
    model(tokens(1, 30), cache=cache)
    with pytest.raises(ValueError):
        model(tokens(1, 3), cache=cache)


def test_chunked_loss_with_every_target_ignored_is_zero_with_zero_gradients():
    model, idx = tiny(), tokens(2, 8)
    model.loss_chunk = 4
    _, loss = model(idx, torch.full((2, 8), -1))
    loss.backward()
    assert loss.item() == 0.0 and not model.lm_head.weight.grad.any()


# A CPU process keeps the memory it frees (runtime.keep_freed_memory), so a training step seldom faults it in again.
FAULTS = """
import resource, sys, torch
from runtime import setup_runtime
from model import GPT, GPTConfig
if sys.argv[1] == "cpu":
    setup_runtime("cpu", "float32", 0)
model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=64, block_size=64, vocab_size=50304))  # logits: 33 MB a step
opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
x = torch.randint(0, 50257, (8, 65))
def faults_of_a_step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model(x[:, :-1], x[:, 1:])[1].backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(min([faults_of_a_step() for _ in range(6)][1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_cpu_training_step_reuses_freed_memory_without_page_faults():
    run = lambda how: int(subprocess.run([sys.executable, "-c", FAULTS, how], cwd=ROOT, capture_output=True,
                                         text=True, check=True).stdout)
    assert run("plain") > 10_000  # every step faults its logits and activations in again (4 KB pages; the default)
    assert run("cpu") < 1_000  # after setup_runtime on a CPU, steps reuse them
