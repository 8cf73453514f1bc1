"""The chain-of-thought -> pause curriculum: stage k replaces exactly the first k CoT tokens by pauses, the loss
is on real targets only, the last stage is PauseFT's example, and earlier stages are mixed in."""
import json

import numpy as np
import pytest

from config import UserError
from experiments.curriculum import CurriculumConfig, CurriculumData, largest_gap_cot, stage_at, stage_example
from finetune import FinetuneConfig, FinetuneData
from tokenizer import WordTokenizer

WORDS = "gap . \n " + " ".join(map(str, range(40)))


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("task") / "train.jsonl"
    with open(path, "w") as f:
        for _ in range(60):
            values = rng.choice(30, size=6, replace=False).tolist()
            s = sorted(values)
            f.write(json.dumps({"text": f"gap {' '.join(map(str, values))} {max(b - a for a, b in zip(s, s[1:]))}"}) + "\n")
    return str(path)


def test_largest_gap_cot_by_hand():
    assert largest_gap_cot("gap 9 2 5 20", "sorted") == " 2 5 9 20"
    assert largest_gap_cot("gap 9 2 5 20", "gaps") == " 3 4 11"
    with pytest.raises(UserError):
        largest_gap_cot("sort 1 2", "sorted")


def test_stage_k_replaces_exactly_k_cot_tokens_and_trains_only_real_targets():
    P, EOT = 99, 98
    prefix, cot, target = [1, 9, 2, 5], [2, 5, 9], [4, EOT]  # "gap 9 2 5" -> sorted 2 5 9 -> answer 4
    for k in range(3):
        x, y = stage_example(prefix, cot, target, k, 3, P, 64)
        seq = prefix + [P] * k + cot[k:] + target
        assert x.tolist() == seq[:-1] and (x == P).sum() == k
        assert y[y != -1].tolist() == cot[k:] + target  # remaining CoT, answer, EOT: never a pause or the question
        assert (y[: len(prefix) + k - 1] == -1).all()
    x, y = stage_example(prefix, cot, target, 3, 3, P, 64)  # the last stage: PauseFT, answer only
    assert x.tolist() == (prefix + [P] * 3 + target)[:-1] and y[y != -1].tolist() == target


def test_schedule_walks_one_token_at_a_time_then_stays_at_pauseft():
    stages = [stage_at(s, 100, 4, 0.4) for s in range(100)]
    assert stages[:40] == [0] * 10 + [1] * 10 + [2] * 10 + [3] * 10 and set(stages[40:]) == {4}


def test_curriculum_batches_end_as_pauseft_and_mix_earlier_stages(task_file):
    tok = WordTokenizer.build([WORDS])
    kw = dict(task="lambada", task_file=task_file, m_ft="6", batch_size=32, val_frac=0.1, seed=3, max_iters=100)
    data = CurriculumData(CurriculumConfig(cot="sorted", cot_frac=0.5, cot_mix=0.3, **kw), tok, 64)
    plain = FinetuneData(FinetuneConfig(**kw), tok, 64)
    assert data.n_cot == 6
    x, y = data.batch(0)
    assert (x == tok.pause_id).sum() == 0  # stage 0: the full chain of thought
    unmixed = CurriculumData(CurriculumConfig(cot="sorted", cot_frac=0.5, cot_mix=0.0, **kw), tok, 64)
    x, y = unmixed.batch(99)
    px, py = plain.batch(99)
    assert x.tolist() == px.tolist() and y.tolist() == py.tolist()  # final stage, no mixing: exactly PauseFT
    assert data.val_batch(0)[0].tolist() == plain.val_batch(0)[0].tolist()
    x, y = data.batch(45)  # stage 5 with earlier stages mixed in
    pauses = (x == tok.pause_id).sum(1).tolist()
    assert set(pauses) <= set(range(6)) and pauses.count(5) > len(pauses) / 2 and min(pauses) < 5
    for row in range(len(x)):  # whatever the stage, no pause is ever a target
        assert not (y[row] == tok.pause_id).any()
