"""The FLOPs ledger: what a training run and an inference cost, pauses and padding counted as the model saw them.

Plain functions of a GPTConfig and token counts, so every result can say what it cost. The formula:

    N            = n_layer * (4 d^2 + 2 d h) + d V     matmul weights: q,k,v and the attention projection,
                                                      the MLP (h = mlp_hidden, or 4d), and the output layer
    forward(T)   = 2 N T + 2 n_layer d T (T + 1)       one causal sequence of T positions: 2 FLOPs per
                                                      multiply-add; query t reads t keys, in QK^T and in AV
    train(B, T)  = 3 B forward(T)                      a (B, T) batch, backward = 2 x forward
    infer(P, A)  = forward(P + A - 1)                  prefill of P = prompt + M_inf pauses, then A decoded
                                                      tokens (the stop token included), the last not fed back

This is PaLM's 6N + 12 n_layer d T per token (nanoGPT's estimate_mfu) with two choices made explicit:
N counts the output layer (d V, tied to the embedding, is a real matmul; embedding lookups, LayerNorms,
biases and softmax are left out), and attention is counted causally (about half of PaLM's term, which
charges every query the whole context). Training batches are counted at their padded length T: right
padding and pauses cost what real tokens cost, because the model computes them. A KV-cache decode step
at position t costs 2N + 4 n_layer d t, so inference is the same causal sum; the padding of a batched
decode is not charged to an example (it is the batch's waste, not the method's cost). One saving is not
credited: the training loss (model.ChunkedCrossEntropy) skips the output layer of rows whose target is
ignored (pauses, padding), so a run is charged 6 d V FLOPs it did not spend for every ignored target. The
ledger stays the model's cost, the same for any implementation, and errs against pauses.
"""
import json
import os

import torch


def mlp_width(config) -> int:
    """The MLP's hidden width: config.mlp_hidden where the field exists and is set, else 4 * n_embd."""
    return getattr(config, "mlp_hidden", 0) or 4 * config.n_embd


def matmul_params(config) -> int:
    """N: the weights that take part in a matmul for every token (output layer included, position table not)."""
    d = config.n_embd
    return config.n_layer * (4 * d * d + 2 * d * mlp_width(config)) + d * config.vocab_size


def forward_flops(config, T: int) -> int:
    """FLOPs of one forward pass over a causal sequence of T positions."""
    return 2 * matmul_params(config) * T + 2 * config.n_layer * config.n_embd * T * (T + 1)


def train_flops(config, batch_size: int, T: int) -> int:
    """FLOPs of one training micro-batch of batch_size rows padded to T positions (forward + backward)."""
    return 3 * batch_size * forward_flops(config, T)


def infer_flops(config, prompt_len: int, decoded: int) -> int:
    """FLOPs to answer one example: the prefill (prompt + its pauses), then `decoded` tokens (stop included)."""
    return forward_flops(config, prompt_len + max(decoded, 1) - 1)


def batch_counts(x: torch.Tensor, y: torch.Tensor, pause_id: int, padded: bool) -> dict[str, int]:
    """Real, pause and padding positions of a (B, T) batch. padded: rows are right-padded (finetuning), and a
    row ends at its last trained target (the closing EOT); otherwise (pretraining) every position is a token."""
    B, T = x.shape
    if padded:
        trained = (y != -1).long()
        lengths = torch.where(trained.any(1), T - trained.flip(1).argmax(1), torch.zeros(B, dtype=torch.long))
    else:
        lengths = torch.full((B,), T, dtype=torch.long)
    inside = torch.arange(T)[None, :] < lengths[:, None]
    pauses = int(((x.cpu() == pause_id) & inside).sum())
    n = int(lengths.sum())
    return {"real_tokens": n - pauses, "pause_tokens": pauses, "pad_tokens": B * T - n}


class Ledger:
    """Cumulative training FLOPs and token counts of a run, added to every step's log record.

    One process counts its own micro-batches and multiplies by the number of processes (exact without
    padding; with padding, the other ranks' padding is taken to be like this one's). A resumed run
    continues from the totals its log recorded for the step before the checkpoint."""

    KEYS = ("train_flops", "real_tokens", "pause_tokens", "pad_tokens")

    def __init__(self, config, padded: bool, world_size: int = 1, log_path: str | None = None, start_step: int = 0):
        self.config, self.padded, self.world_size = config, padded, world_size
        self.totals = dict.fromkeys(self.KEYS, 0)
        if start_step and log_path and os.path.exists(log_path):
            with open(log_path) as f:
                for line in f:
                    record = json.loads(line)
                    if record.get("step") == start_step - 1 and "train_flops" in record:
                        self.totals = {k: record[k] for k in self.KEYS}

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Count one micro-batch (x, y as given to the model, targets -1 where not trained)."""
        counts = batch_counts(x, y, self.config.pause_id, self.padded)
        counts["train_flops"] = train_flops(self.config, x.size(0), x.size(1))
        for k, v in counts.items():
            self.totals[k] += v * self.world_size

    def record(self) -> dict[str, int]:
        return dict(self.totals)


def run_totals(log_path: str) -> dict[str, int]:
    """The ledger's totals at the last training step of a run's log.jsonl (zeros if it has none)."""
    last = dict.fromkeys(Ledger.KEYS, 0)
    with open(log_path) as f:
        for line in f:
            record = json.loads(line)
            if "train_flops" in record:
                last = {k: record[k] for k in Ledger.KEYS}
    return last


if __name__ == "__main__":
    import sys

    from config import module_main, run_main
    run_main(module_main, "flops.py", __doc__, "train.py logs these counts in log.jsonl and eval.py in its results "
             "(python train.py --help, python eval.py --help)", sys.argv[1:])
