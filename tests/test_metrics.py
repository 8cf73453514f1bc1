"""metrics.py: SQuAD-style EM/F1, GSM8K answers, stop strings, standard errors, per-item scores."""
import math

import pytest

import metrics
import tasks


def test_normalized_exact_match():
    assert metrics.exact_match("The Cat!", ["cat"]) == 1.0
    assert metrics.exact_match("a cats", ["cat"]) == 0.0


def test_f1_partial_overlap():
    # tokens after normalisation: [big, cat, sat] vs [cat, sat, down]: p = r = 2/3
    assert metrics.f1("The big cat sat.", ["a cat sat down"]) == pytest.approx(2 / 3)


def test_f1_takes_best_answer():
    # "cat" vs "black cat": p = 1, r = 1/2 -> 2/3
    assert metrics.f1("cat", ["dog", "black cat"]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("text,number", [
    ("so 3 + 4 = 7\n#### 1,234", "1234"), ("#### -5", "-5"), ("#### 3.5", "3.5"), ("####72.", "72"),
    ("the answer is 7", None)])
def test_gsm8k_number(text, number):
    assert metrics.gsm8k_number(text) == number


def test_stderr_of_accuracy_is_the_papers_formula():
    values = [1.0] * 3 + [0.0] * 5  # p = 3/8
    assert metrics.stderr(values) == pytest.approx(math.sqrt(3 / 8 * 5 / 8 / 7))
    assert metrics.stderr([1.0]) == 0.0


def test_stderr_of_f1_is_sample_std_over_sqrt_n():
    # F1 scores 1, 0.5, 0.5, 0: mean 0.5, sample variance (0.25 + 0 + 0 + 0.25) / 3 = 1/6, so stderr = sqrt(1/6 / 4);
    # the Bernoulli formula sqrt(p(1-p)/(n-1)) would say sqrt(1/12)
    assert metrics.stderr([1.0, 0.5, 0.5, 0.0]) == pytest.approx(math.sqrt(1 / 24))


def score(task: str, generated: str, answers: list[str]) -> dict[str, float]:
    return metrics.score_decode(tasks.TASKS[task], generated, answers)


def test_gsm8k_generation_cut_at_stop_strings():
    assert score("gsm8k", " 3+4=7\n#### 7\n\nQuestion: next\n#### 8", ["7"]) == {"em": 1.0}
    assert score("gsm8k", " 3+4=7\n\n#### 7", ["7"]) == {"em": 0.0}


def test_squad_generation_scored_on_first_line():
    assert score("squad", " the Denver Broncos.\nQuestion: who", ["Denver Broncos"]) == {"em": 1.0, "f1": 1.0}


def test_lambada_generation_is_one_word():
    assert score("lambada", " key and left", ["key"]) == {"em": 1.0}


def test_coqa_averages_leave_one_out_over_its_gold_answers():
    # golds normalise to "cat", "white cat", "dog"; the prediction "cat" scores EM 1, 0, 0 and F1 1, 2/3, 0
    # against them. Leaving out each gold in turn, the best of the others: EM 0, 1, 1 -> 2/3; F1 2/3, 1, 1 -> 8/9
    # (the plain max: 1 and 1).
    golds = ["a cat", "white cat", "dog"]
    assert score("coqa", " cat\nQ: next", golds) == pytest.approx({"em": 2 / 3, "f1": 8 / 9})
    assert score("coqa", " white cat", ["White cat"]) == {"em": 1.0, "f1": 1.0}  # one gold: its own score
    # two golds: each is scored against the other only; a prediction equal to one of two different golds gets half
    assert score("coqa", " cat", ["cat", "dog"]) == pytest.approx({"em": 0.5, "f1": 0.5})


def test_nq_open_answer_stops_at_newline_period_and_comma():
    assert score("nq_open", " Linda Davis, who sang it", ["Linda Davis"]) == {"em": 1.0}
    assert score("nq_open", " 1793. It was built", ["1793"]) == {"em": 1.0}
    assert score("nq_open", " 1793\nQ: next", ["1793"]) == {"em": 1.0}


def test_commonsenseqa_accepts_bare_label():
    assert score("commonsenseqa", " B.\n", ["library", "B"]) == {"em": 1.0}
    assert score("commonsenseqa", " A", ["library", "B"]) == {"em": 0.0}


def test_acc_norm_divides_by_choice_length():
    assert metrics.score_choices([-2.0, -6.0], [" a", " much longer"], 1) == {"acc": 0.0, "acc_norm": 1.0}
