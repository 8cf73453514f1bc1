"""The metrics of the downstream tasks: SQuAD-style normalisation, EM and F1, GSM8K's `#### N`,
stop strings, standard errors, and the score of one decoded answer or one scored item.

Nothing here reads files or knows a model; tasks.py says which task uses what (its TaskSpec).
"""
import math
import re
import string
from collections import Counter

_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """As the official SQuAD v1.1 script: lowercase, drop punctuation and articles, squeeze spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(pred: str, answers: list[str]) -> float:
    return max((float(normalize_answer(pred) == normalize_answer(a)) for a in answers), default=0.0)


def _f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def f1(pred: str, answers: list[str]) -> float:
    """Token-level F1 of the official SQuAD v1.1 script, the best over the gold answers."""
    return max((_f1(pred, a) for a in answers), default=0.0)


def leave_one_out(metric, pred: str, answers: list[str]) -> float:
    """CoQA's official average over several gold answers (also lm-evaluation-harness's coqa/utils.py):
    the mean, over each gold left out in turn, of the best score against the others; one gold: its score.
    A human answer is scored the same way against the other humans, so model and human scores compare."""
    if len(answers) < 2:
        return metric(pred, answers)
    return sum(metric(pred, answers[:i] + answers[i + 1:]) for i in range(len(answers))) / len(answers)


def gsm8k_number(text: str) -> str | None:
    """The number after the first '#### ' ('1,234' -> '1234', '5.' -> '5'), or None."""
    m = re.search(r"####\s*(-?[0-9.,]*[0-9])", text)
    return m.group(1).replace(",", "").rstrip(".") if m else None


def stderr(values: list[float]) -> float:
    """Standard error of the mean of per-item scores: sample std / sqrt(n). For 0/1 scores (accuracy,
    EM) this is the paper's sqrt(p(1-p)/(n-1)); for F1 and other graded scores it is the right one."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def truncate(generated: str, stop: tuple[str, ...]) -> str:
    """The generation without leading whitespace, cut at the first stop string."""
    text = generated.lstrip()
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


def score_decode(spec, generated: str, answers: list[str]) -> dict[str, float]:
    """Metrics of one decoded answer of task `spec` (a tasks.TaskSpec): the generation cut at the
    task's stop strings, then EM (+F1) against the gold `answers`."""
    if spec.kind != "decode":
        raise ValueError(f"{spec.name} is a scored task; use score_choices")
    text = truncate(generated, spec.stop)
    if spec.name == "gsm8k":
        number = gsm8k_number(text)
        return {"em": float(number is not None and number == answers[0])}
    if spec.name == "commonsenseqa":  # answers = [text, label]; a bare label ("B", "B.") also counts
        label_hit = text.strip().rstrip(".)") == answers[1]
        return {"em": max(exact_match(text, answers[:1]), float(label_hit))}
    if spec.name == "coqa":
        return {"em": leave_one_out(exact_match, text, answers), "f1": leave_one_out(f1, text, answers)}
    scores = {"em": exact_match(text, answers)}
    if "f1" in spec.metrics:
        scores["f1"] = f1(text, answers)
    return scores


def score_choices(logliks: list[float], choices: list[str], label: int) -> dict[str, float]:
    """acc and acc_norm (log-likelihood per character of the choice, as lm-eval) of one scored item."""
    best = max(range(len(logliks)), key=lambda i: logliks[i])
    best_norm = max(range(len(logliks)), key=lambda i: logliks[i] / max(1, len(choices[i].lstrip(" "))))
    return {"acc": float(best == label), "acc_norm": float(best_norm == label)}


if __name__ == "__main__":
    import sys

    from config import module_main, run_main
    run_main(module_main, "metrics.py", __doc__, "python eval.py scores a checkpoint with these metrics "
             "(python eval.py --help)", sys.argv[1:])
