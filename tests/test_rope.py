"""Rotary positions (pos="rope"): the rotation itself, no position parameters, old checkpoints load as learned,
train.py --pos=rope recorded in the checkpoint, a bad --pos refused. KV cache and left padding with rope:
test_model.py and test_sample.py."""
import dataclasses

import pytest
import torch

import train
from bench import random_data_dir
from checkpoint import load_checkpoint, save_checkpoint
from config import parse_config, run_main
from model import GPT, GPTConfig, apply_rope, rope_angles
from checkpoint import load_model
from tokenizer import CharTokenizer

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=64, pause_id=63)


def rotated(x: torch.Tensor, positions: list[int]) -> torch.Tensor:
    return apply_rope(x, *rope_angles(torch.tensor(positions), x.size(-1)))


def test_rotary_is_rotate_half_with_base_10000():
    x, pos = torch.randn(1, 1, 3, 8, generator=torch.Generator().manual_seed(0)), [0, 1, 7]
    theta = 10000.0 ** -(torch.arange(0, 8, 2) / 8)
    # pairs (x[i], x[i + 4]) as complex numbers, turned by pos * theta_i
    z = torch.complex(x[..., :4], x[..., 4:]) * torch.polar(torch.ones(3, 4), torch.tensor(pos)[:, None] * theta)
    assert torch.allclose(rotated(x, pos), torch.cat([z.real, z.imag], -1), atol=1e-6)


def test_rotary_attention_scores_depend_only_on_relative_position():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)

    def score(m: int, n: int) -> float:  # query at position m, key at position n
        return (rotated(q, [m]) * rotated(k, [n])).sum().item()

    assert score(5, 2) == pytest.approx(score(3, 0), abs=1e-5)
    assert score(5, 2) == pytest.approx(score(205, 202), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-2)  # and they do depend on it


def test_attention_with_rope_is_unchanged_by_shifting_all_positions():
    torch.manual_seed(0)
    attn = GPT(GPTConfig(**TINY, pos="rope")).transformer.h[0].attn
    x = torch.randn(2, 12, 32)

    def shifted(start: int) -> torch.Tensor:  # every query and key at start, start+1, ...
        return attn(x, rope=rope_angles(torch.arange(start, start + 12), 16))
    assert torch.allclose(shifted(0), shifted(100), atol=1e-5)


def test_rope_model_has_no_position_parameters():
    learned, rope = GPT(GPTConfig(**TINY)), GPT(GPTConfig(**TINY, pos="rope"))
    assert not any("wpe" in name for name, _ in rope.named_parameters())
    assert rope.num_params() == rope.num_params(non_embedding=False) == learned.num_params()
    position_table = TINY["block_size"] * TINY["n_embd"]
    assert learned.num_params(non_embedding=False) - rope.num_params(non_embedding=False) == position_table


def test_rope_positions_change_the_logits():
    """The same weights without any position information (learned, wpe zeroed) give other logits."""
    torch.manual_seed(0)
    rope = GPT(GPTConfig(**TINY, pos="rope")).eval()
    with torch.no_grad():  # larger weights: sharper attention, so positions matter more than at init
        for p in rope.parameters():
            p.mul_(4.0)
    nope = GPT(GPTConfig(**TINY)).eval()
    nope.load_state_dict(rope.state_dict(), strict=False)
    torch.nn.init.zeros_(nope.transformer.wpe.weight)
    idx = torch.randint(0, 63, (2, 20), generator=torch.Generator().manual_seed(1))
    assert (rope(idx)[0] - nope(idx)[0]).abs().max() > 1e-3


def test_bad_pos_or_odd_head_size_is_refused():
    with pytest.raises(ValueError, match="'learned' or 'rope'"):
        GPT(GPTConfig(**TINY, pos="alibi"))
    with pytest.raises(ValueError, match="even head size"):
        GPT(GPTConfig(**{**TINY, "n_head": 4, "n_embd": 36}, pos="rope"))
    GPT(GPTConfig(**{**TINY, "n_head": 4, "n_embd": 36}))  # learned positions take any head size


def test_checkpoint_records_pos_and_an_old_one_loads_as_learned(tmp_path):
    tok = CharTokenizer.build(["abc \n"])
    for pos in ("learned", "rope"):
        conf = GPTConfig(**{**TINY, "pause_id": tok.pause_id}, pos=pos)
        model_meta = dataclasses.asdict(conf)
        if pos == "learned":
            del model_meta["pos"]  # written before the field existed
        save_checkpoint(str(tmp_path / f"{pos}.pt"), GPT(conf), None, {"model": model_meta, "tokenizer": tok.meta()})
        model, _, _ = load_model(str(tmp_path / f"{pos}.pt"), "cpu")
        assert model.config.pos == pos and (model.transformer.wpe is None) == (pos == "rope")


def test_train_with_pos_rope_records_it_in_the_checkpoint(tmp_path):
    data_dir = random_data_dir(str(tmp_path), 4096, seed=0)
    args = [f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'out'}", "--device=cpu", "--n_layer=1", "--n_head=2",
            "--n_embd=16", "--block_size=32", "--batch_size=2", "--max_iters=2", "--eval_iters=1", "--pos=rope"]
    train.main(parse_config(train.TrainConfig, args))
    ckpt = load_checkpoint(str(tmp_path / "out" / "ckpt.pt"))
    assert ckpt["meta"]["model"]["pos"] == "rope" and not any("wpe" in k for k in ckpt["model"])


def test_bad_pos_option_is_one_line_and_exit_2(tmp_path, capsys):
    cfg = [f"--data_dir={tmp_path / 'none'}", f"--out_dir={tmp_path / 'out'}", "--device=cpu", "--pos=bogus"]
    with pytest.raises(SystemExit) as e:
        run_main(lambda: train.main(parse_config(train.TrainConfig, cfg, prog="train.py")))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: --pos") and "\n" not in err
    assert not (tmp_path / "out").exists()
