"""pause.py, the method on one page, stated: where pauses go in pretraining, finetuning and inference, where
the loss looks, and that <pause> is never emitted."""
import numpy as np
import pytest
import torch

from pause import IGNORE, assemble, banned_tokens, ignore_pause_targets, inject_pauses, prompt_in_block, with_pauses

PAUSE = 0  # the tests use tokens 1..L, so 0 is free for the pause

# ----------------------------------------------------------------------------- pretraining: inject_pauses

def rows(B: int, L: int) -> np.ndarray:
    return np.tile(np.arange(1, L + 1, dtype=np.uint16), (B, 1))


def test_inject_adds_n_pause_per_row_of_which_trimming_may_drop_some():
    counts = (inject_pauses(rows(300, 50), 5, PAUSE, np.random.default_rng(0)) == PAUSE).sum(1)
    assert counts.max() == 5 and counts.mean() < 5  # exactly 5 in the L+5 slots; the trimmed tail holds the rest


def test_inject_keeps_the_original_prefix_in_order():
    out = inject_pauses(rows(50, 30), 6, PAUSE, np.random.default_rng(1))
    assert out.shape == (50, 30) and out.dtype == np.uint16
    for row in out:
        real = row[row != PAUSE]
        assert real.tolist() == list(range(1, len(real) + 1)) and len(real) >= 30 - 6


def test_inject_is_deterministic_given_the_rng():
    a, b, c = (inject_pauses(rows(4, 40), 4, PAUSE, np.random.default_rng(s)) for s in (3, 3, 4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_inject_on_one_row_keeps_its_shape():
    out = inject_pauses(np.arange(1, 21), 3, PAUSE, np.random.default_rng(0))
    assert out.shape == (20,) and out.dtype == np.arange(1).dtype


def test_inject_positions_are_uniform():
    """Each of the L kept slots is a pause with probability n/(L+n): chi-square over positions, df = L-1."""
    B, L, n = 4000, 20, 4
    observed = (inject_pauses(rows(B, L), n, PAUSE, np.random.default_rng(5)) == PAUSE).sum(0)
    expected = B * n / (L + n)
    assert ((observed - expected) ** 2 / expected).sum() < 45  # chi2(19) exceeds 45 with p < 0.001


def test_inject_rows_are_independent():
    patterns = inject_pauses(rows(1000, 20), 4, PAUSE, np.random.default_rng(6)) == PAUSE
    assert len({p.tobytes() for p in patterns}) > 500


def test_the_loss_skips_targets_that_are_pauses_and_keeps_pause_inputs():
    window = torch.tensor([[5, PAUSE, 6, PAUSE, PAUSE, 7]])
    x, y = window[:, :-1], ignore_pause_targets(window[:, 1:].clone(), PAUSE)
    assert y.tolist() == [[IGNORE, 6, IGNORE, IGNORE, 7]]  # the target after a pause input is the next real token
    assert x.tolist() == [[5, PAUSE, 6, PAUSE, PAUSE]]

# ----------------------------------------------------------------------------- finetuning and inference layouts


def test_with_pauses_appends_after_the_prompt_or_before_it():
    assert with_pauses([5, 6], 3, 9) == [5, 6, 9, 9, 9]
    assert with_pauses([5, 6], 0, 9) == [5, 6]
    assert with_pauses([5, 6], 2, 9, prepend=True) == [9, 9, 5, 6]
    with pytest.raises(ValueError):
        with_pauses([5], -1, 9)


def test_prompt_in_block_cuts_the_prefix_from_the_left_and_keeps_pauses_and_answer():
    # room for the prefix: 12 positions - 3 pauses - 4 answer tokens = 5
    assert prompt_in_block(list(range(10)), 3, 9, False, 4, 12) == ([5, 6, 7, 8, 9] + [9] * 3, True)
    assert prompt_in_block([1, 2], 3, 9, True, 4, 12) == ([9] * 3 + [1, 2], False)
    with pytest.raises(ValueError, match="no room for the prompt in block_size 12: at most 7 pauses fit$"):
        prompt_in_block([1], 8, 9, False, 4, 12)


@pytest.mark.parametrize("m", [0, 1, 4])
def test_assemble_is_prefix_pauses_target_with_loss_on_the_target_and_eot_only(m):
    EOT = 8
    x, y = assemble([1, 2, 3], [4, 5, EOT], m, 9, False, 64)
    assert x.tolist() == [1, 2, 3] + [9] * m + [4, 5]
    assert y.tolist() == [IGNORE] * (2 + m) + [4, 5, EOT]  # the last pause predicts the first target token


def test_finetuning_and_inference_read_the_same_prompt():
    """The inputs before the first target are exactly the inference prompt: the model answers where it learnt to."""
    prefix, target = list(range(1, 30)), [4, 5, 8]
    for m, prepend in [(0, False), (5, False), (5, True)]:
        x, _ = assemble(prefix, target, m, 9, prepend, 20)
        prompt, cut = prompt_in_block(prefix, m, 9, prepend, len(target) - 1, 20)
        assert x.tolist()[:len(prompt)] == prompt and cut and len(x) == 20


def test_banned_tokens_are_the_pause_and_the_padded_slots():
    banned = banned_tokens(64, 60, 59)
    assert banned.nonzero()[:, 0].tolist() == [59, 60, 61, 62, 63]
