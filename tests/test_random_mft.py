"""Random M_ft (beyond the paper): each drawn example gets its own number of pauses, loss only on target + EOT."""
import json

import numpy as np
import pytest

from config import UserError
from finetune import FinetuneConfig, FinetuneData, parse_m_ft
from tokenizer import WordTokenizer

WORDS = "gap . \n " + " ".join(map(str, range(40)))


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("task") / "train.jsonl"
    with open(path, "w") as f:
        for _ in range(50):
            values = rng.choice(30, size=rng.integers(3, 9), replace=False).tolist()  # variable length
            s = sorted(values)
            f.write(json.dumps({"text": f"gap {' '.join(map(str, values))} {max(b - a for a, b in zip(s, s[1:]))}"}) + "\n")
    return str(path)


def make_data(task_file, m_ft, **kw):
    tok = WordTokenizer.build([WORDS])
    cfg = FinetuneConfig(task="lambada", task_file=task_file, m_ft=m_ft, batch_size=16, val_frac=0.1, seed=3, **kw)
    return tok, FinetuneData(cfg, tok, block_size=64)


def test_parse_m_ft():
    assert parse_m_ft("12") == (12, 12) and parse_m_ft(7) == (7, 7) and parse_m_ft("0:24") == (0, 24)
    for bad in ("-1", "5:2", "a", "1:b"):
        with pytest.raises(UserError):
            parse_m_ft(bad)


def test_random_m_ft_batch_has_exactly_the_drawn_pauses_after_each_prefix(task_file):
    tok, data = make_data(task_file, "0:24")
    seen = set()
    for step in range(6):
        x, y = data.batch(step)
        idx = np.random.default_rng((data.seed, step, 0)).choice(data.train, data.batch_size)
        ms = np.random.default_rng((data.seed, step, 0))
        ms.choice(data.train, data.batch_size)  # the same draws as the loader, in the same order
        ms = ms.integers(0, 25, size=data.batch_size)
        for row, (i, m) in enumerate(zip(idx, ms)):
            prefix, target = data.ids[i]
            seq = prefix + [tok.pause_id] * int(m) + target
            n = len(seq) - 1
            assert x[row, :n].tolist() == seq[:-1] and (x[row, n:] == 0).all()  # then right padding
            assert (x[row] == tok.pause_id).sum() == m
            assert y[row][y[row] != -1].tolist() == target  # target + EOT only
            assert y[row, : len(prefix) + m - 1].eq(-1).all()
            seen.add(int(m))
    assert len(seen) > 15 and min(seen) >= 0 and max(seen) <= 24  # the whole range is drawn


def test_fixed_m_ft_batches_are_unchanged_by_the_range_code(task_file):
    _, fixed = make_data(task_file, "12")
    _, ranged = make_data(task_file, "12:12")
    for step in range(3):
        a, b = fixed.batch(step), ranged.batch(step)
        assert all((u == v).all() for u, v in zip(a, b))


def test_validation_batches_are_fixed(task_file):
    _, data = make_data(task_file, "0:24")
    a, b = data.val_batch(0), data.val_batch(0)
    assert all((u == v).all() for u, v in zip(a, b))


def test_range_whose_largest_m_does_not_fit_is_a_user_error(task_file):
    with pytest.raises(UserError):
        make_data(task_file, "0:70")
