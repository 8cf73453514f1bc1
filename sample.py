"""Sample from a checkpoint with pause-inference: the prompt is followed by --m_inf pauses, every
output before the last pause is ignored, and <pause> is never emitted.

    python sample.py --ckpt=out/pause/ckpt.pt --prompt="Question: gap 5 9 1\nAnswer:" --m_inf=10
"""
import os
import sys
from dataclasses import dataclass

import torch

from checkpoint import load_model
from config import DEVICES, DTYPES, UserError, check_config, opt, parse_config, run_main
from model import GPT
from pause import banned_tokens, with_pauses
from runtime import check_memory, memory_needed, setup_runtime
from tokenizer import inserted_token


@dataclass
class SampleConfig:
    """Generate text from a checkpoint, with M_inf pauses appended to the prompt."""
    ckpt: str = opt("out/pretrain/ckpt.pt", "checkpoint to sample from (or gpt2 ... gpt2-xl, or a Hugging Face GPT-2 "
                                            "folder)")
    prompt: str = opt("\n", "the prompt (\\n is a newline); FILE:path reads it from a file")
    m_inf: int = opt(-1, "pauses appended to the prompt (-1 = the checkpoint's m_ft, 0 for a pretrained one)", ge=-1)
    filler: str = opt("", "ablation: this ordinary one-token text instead of <pause> (default: the checkpoint's)")
    prepend: bool = opt(False, "ablation: pauses before the prompt (also on when the checkpoint was finetuned so)")
    num_samples: int = opt(1, "samples to draw, printed batch_size at a time", ge=1)
    batch_size: int = opt(64, "samples decoded together as one batch (refused up front if it cannot fit the "
                              "device's memory)", ge=1)
    max_new_tokens: int = opt(64, "tokens to generate after the pauses (clipped to the block size)", ge=1)
    temperature: float = opt(0.8, "softmax temperature; 0 = greedy (a tiny one samples as greedy, a huge one "
                                  "uniformly over the tokens it may emit)", ge=0)
    top_k: int = opt(0, "keep only the k most likely tokens (0 = all)", ge=0)
    stop_at_eot: bool = opt(True, "stop a sample at the end-of-text token")
    seed: int = opt(1337, "sampling seed", ge=0)
    device: str = opt("auto", "where to run", choices=DEVICES)
    dtype: str = opt("auto", "auto: bfloat16 on GPU, float32 on CPU", choices=DTYPES)
    bpe_file: str = opt("", "local GPT-2 BPE file (r50k_base.tiktoken) for offline use")

    def validate(self) -> None:
        if self.prompt.startswith("FILE:") and not os.path.isfile(self.prompt[5:]):
            raise UserError(f"--prompt={self.prompt}: no such file {self.prompt[5:]}")


@torch.no_grad()
def generate(model: GPT, prompts: list[list[int]], max_new_tokens: int | list[int], vocab_size: int,
             temperature: float = 0.0, top_k: int = 0, stop_id: int | None = None, use_cache: bool = True,
             generator: torch.Generator | None = None) -> list[list[int]]:
    """Decode a batch of prompts (each already ending with its pauses: pause.with_pauses), left-padded
    together. The prefill reads the whole prompt and only the logits after its last token, the last pause,
    are used: outputs at the pauses are never read. <pause> and the padded vocab slots are masked
    (pause.banned_tokens), so they are never emitted. max_new_tokens is one budget or one per row: a row stops at
    its own, the others go on; each is clipped to what the block leaves after the longest prompt.
    Returns the new tokens of each row, cut before stop_id."""
    device, block = model.lm_head.weight.device, model.config.block_size
    longest = max(len(p) for p in prompts)
    if min(map(len, prompts)) == 0:
        raise UserError("a prompt is empty: generation continues a prompt of at least one token")
    if longest >= block:
        raise UserError(f"a prompt with its pauses is {longest} tokens: the block size {block} leaves no room to answer")
    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    budgets = [min(b, block - longest) for b in budgets]  # the rows share columns, so the longest prompt bounds all
    max_new_tokens = max(budgets)
    idx = torch.zeros(len(prompts), longest, dtype=torch.long, device=device)
    # the key mask of every column, written once: False at left padding; None when no row is padded (the
    # unmasked attention kernels, and no mask built every step)
    mask = torch.ones(len(prompts), longest + max_new_tokens, dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):  # left padding: every row's last prompt token is in the last column
        idx[i, longest - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, :longest - len(p)] = False
    padded = any(len(p) < longest for p in prompts)
    banned = banned_tokens(model.config.vocab_size, vocab_size, model.config.pause_id, device)
    cache = model.new_cache(len(prompts), longest + max_new_tokens) if use_cache else None
    out = torch.zeros(len(prompts), max_new_tokens, dtype=torch.long, device=device)  # written in place, no cat
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    last_step = torch.tensor(budgets, device=device) - 1
    step_input, n_out = idx, 0  # the prefill: prompt and pauses in one pass; nothing before the last pause is read
    for step in range(max_new_tokens):
        key_mask = mask[:, :longest + step] if padded else None
        if use_cache:
            logits, _ = model(step_input, cache=cache, key_mask=key_mask, last_only=True)
        else:
            logits, _ = model(torch.cat([idx, out[:, :step]], 1), key_mask=key_mask, last_only=True)
        logits = logits[:, -1, :].float().masked_fill(banned, float("-inf"))
        if temperature <= 0:
            nxt = logits.argmax(-1)
        else:  # the max moved to 0, in float64 (1e308 is finite there): no temperature > 0 makes inf - inf or inf / inf
            logits = (logits - logits.max(-1, keepdim=True).values).double() / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
        out[:, step], n_out = nxt, step + 1
        step_input = nxt[:, None]
        done |= last_step <= step  # this row's budget is spent
        if stop_id is not None:
            done |= nxt == stop_id
        if done.all():
            break
    rows = [r[:b] for r, b in zip(out[:, :n_out].tolist(), budgets)]
    return [r[:r.index(stop_id)] if stop_id in r else r for r in rows]


def main(cfg: SampleConfig) -> None:
    check_config(cfg)
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    model, tok, meta = load_model(cfg.ckpt, rt.device, cfg.bpe_file or None)
    m_inf = meta.get("m_ft", 0) if cfg.m_inf == -1 else cfg.m_inf
    text = cfg.prompt
    if text.startswith("FILE:"):
        try:
            with open(text[5:], encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--prompt={cfg.prompt}: cannot read it as text ({e})") from None
    text = text.replace("\\n", "\n")
    if not text:
        raise UserError("the prompt is empty: give some text (e.g. --prompt='\\n', the default)")
    # the pauses a checkpoint was finetuned with (a filler token, before the prompt) are the ones it expects
    pause = inserted_token(tok, cfg.filler or meta.get("filler", ""))
    prompt = with_pauses(tok.encode(text), m_inf, pause, cfg.prepend or meta.get("prepend", False))
    if len(prompt) >= (block := model.config.block_size):  # generate() refuses it too, without knowing m_inf
        fits = block - 1 - (len(prompt) - m_inf)
        raise UserError(f"the prompt with its {m_inf} pauses is {len(prompt)} tokens: block size {block} leaves no room "
                        "to answer; " + (f"the largest M_inf that fits is {fits}" if fits >= 0 else
                                         f"the prompt alone is {len(prompt) - m_inf} tokens: shorten it"))
    batch, longest = min(cfg.batch_size, cfg.num_samples), min(len(prompt) + cfg.max_new_tokens, block)
    check_memory(memory_needed(model.config, batch, longest, rt.dtype, logit_rows=batch, weights=False), rt.device,
                 f"sampling {batch} rows of {longest} tokens at once", "lower --batch_size")
    gen = torch.Generator(device=rt.device).manual_seed(cfg.seed)
    for start in range(0, cfg.num_samples, cfg.batch_size):  # any number of samples, in batches of bounded memory
        with rt.autocast():
            rows = generate(model, [prompt] * min(cfg.batch_size, cfg.num_samples - start), cfg.max_new_tokens,
                            tok.vocab_size, cfg.temperature, cfg.top_k, tok.eot_id if cfg.stop_at_eot else None,
                            generator=gen)
        for i, row in enumerate(rows, start):
            print(f"--- sample {i} (m_inf={m_inf})", file=sys.stderr)
            print(tok.decode(prompt + row))


if __name__ == "__main__":
    run_main(lambda: main(parse_config(SampleConfig, prog="sample.py")))
