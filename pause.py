"""Pause tokens (Goyal et al., ICLR 2024, "Think before you speak"), the whole method on one page.

1. One new learnable token, `<pause>` (PAUSE): GPT-2 id 50257, inside the padded vocabulary of 50304.
2. Pause-pretraining: `inject_pauses` puts round(0.1 * T) pauses at uniformly random positions of every
   window of T tokens and trims it back to T; `ignore_pause_targets` drops the loss where the target is
   a pause (a position whose input is a pause still predicts the next real token).
3. Pause-finetuning: `assemble` lays out [prefix, <pause> x M_ft, target, EOT], loss on target and EOT only.
4. Pause-inference: `with_pauses` lays out [prompt, <pause> x M_inf]; decoding starts after the whole of
   it, so no output before the last pause is read, and `banned_tokens` keeps <pause> from being emitted.
Both layouts cut a prefix too long for the block by one rule, `prompt_in_block`. Ablations pass an
ordinary token's id as pause_id (a filler), or prepend=True (the pauses before the prompt). Zero pauses
everywhere is the standard model, so StdPT/PausePT x StdFT/PauseFT share every line.
"""
import numpy as np
import torch

PAUSE = "<pause>"
IGNORE = -1  # a target the loss skips (F.cross_entropy's ignore_index)
VARIANTS = ["StdPT_StdFT", "StdPT_PauseFT", "PausePT_StdFT", "PausePT_PauseFT"]  # pretraining x finetuning


# ----------------------------------------------------------------------------- pretraining
def inject_pauses(tokens: np.ndarray, n_pause: int, pause_id: int, rng: np.random.Generator) -> np.ndarray:
    """Insert n_pause pauses at uniformly random positions of each row (shape (L,) or (B, L)), trim to L."""
    if n_pause <= 0:
        return tokens.copy()
    rows = np.atleast_2d(tokens)
    B, L = rows.shape
    # the pause slots are a uniform random n_pause-subset of the L + n_pause slots: the smallest random keys
    slots = np.argpartition(rng.random((B, L + n_pause)), n_pause - 1, axis=1)[:, :n_pause]
    is_pause = np.zeros((B, L + n_pause), dtype=bool)
    np.put_along_axis(is_pause, slots, True, axis=1)
    out = np.full((B, L + n_pause), pause_id, dtype=tokens.dtype)
    out[~is_pause] = rows.reshape(-1)  # row-major: each row's L free slots get its tokens, in order
    return out[:, :L].reshape(tokens.shape)


def ignore_pause_targets(y: torch.Tensor, pause_id: int) -> torch.Tensor:
    """No loss where the target is a pause (the paper's S_ignore); pause inputs keep their targets."""
    y[y == pause_id] = IGNORE
    return y


# ----------------------------------------------------------------------------- finetuning and inference
def with_pauses(ids: list[int], m: int, pause_id: int, prepend: bool = False) -> list[int]:
    """The inference layout: the prompt followed by m pauses (before it, with prepend)."""
    if m < 0:
        raise ValueError(f"the number of pauses must be >= 0, got {m}")
    return [pause_id] * m + list(ids) if prepend else list(ids) + [pause_id] * m


def prompt_in_block(prefix: list[int], m: int, pause_id: int, prepend: bool, answer: int,
                    block_size: int) -> tuple[list[int], bool]:
    """with_pauses(prefix), leaving `answer` positions of the block for the answer tokens the model reads: a
    prefix too long loses its beginning (the end of a context matters most), the pauses and the answer
    never. Finetuning and evaluation share it. Returns the prompt and whether the prefix was cut."""
    room = block_size - m - answer
    if room < 1:
        raise ValueError(f"{m} pauses and {answer} answer tokens leave no room for the prompt in block_size "
                         f"{block_size}: " + (f"at most {block_size - answer - 1} pauses fit" if block_size > answer + 1
                                              else "the answer alone fills it"))
    kept = prefix[-room:]
    return with_pauses(kept, m, pause_id, prepend), len(kept) < len(prefix)


def assemble(prefix_ids: list[int], target_ids: list[int], m: int, pause_id: int, prepend: bool,
             block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The finetuning layout, as inputs x and targets y: [prefix, pauses, target] (target_ids end with EOT),
    y = IGNORE everywhere but the target and EOT positions. The same prompt as with_pauses builds."""
    seq, _ = prompt_in_block(prefix_ids, m, pause_id, prepend, len(target_ids) - 1, block_size)  # EOT: no input
    n_context = len(seq)
    seq = seq + target_ids
    x, y = np.array(seq[:-1], dtype=np.int64), np.array(seq[1:], dtype=np.int64)
    y[: n_context - 1] = IGNORE  # predictions of the prefix and the pauses are not trained
    return x, y


def banned_tokens(n_logits: int, vocab_size: int, pause_id: int, device=None) -> torch.Tensor:
    """(n_logits,) bool, True where the model must put no probability: <pause> and the padded vocab slots
    past the tokenizer's vocab_size. Decoding and choice scoring both mask these."""
    banned = torch.zeros(n_logits, dtype=torch.bool, device=device)
    banned[vocab_size:] = True
    banned[pause_id] = True  # never emit <pause>
    return banned
