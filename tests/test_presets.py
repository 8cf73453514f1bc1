"""The model presets in config/: their shapes and sizes, and the MLP width field that the 1b preset needs."""
import dataclasses
import os

import torch

import train
from checkpoint import save_checkpoint
from config import load_toml
from model import GPT, GPTConfig
from checkpoint import load_model
from tokenizer import CharTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def preset_model(name: str) -> GPT:
    """The preset's model on the meta device: shapes and counts without allocating its weights."""
    cfg = train.TrainConfig(**load_toml(train.TrainConfig, os.path.join(ROOT, "config", f"{name}.toml")))
    with torch.device("meta"):
        return GPT(GPTConfig(block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                             mlp_hidden=cfg.mlp_hidden))


def test_1b_preset_is_1024_wide_as_the_papers_pause_embedding_and_about_1b():
    model = preset_model("1b")
    assert model.config.n_embd == 1024  # the paper: <pause> adds 1024 parameters (one embedding row) to its 1B model
    assert model.transformer.wte.weight[50257].numel() == 1024
    assert 0.95e9 < model.num_params() < 1.1e9


def test_130m_preset_is_about_130m():
    assert 0.12e9 < preset_model("130m").num_params() < 0.14e9


def test_mlp_width_defaults_to_four_times_the_embedding():
    def mlp(**kw):
        conf = GPTConfig(block_size=8, vocab_size=64, n_layer=1, n_head=2, n_embd=16, pause_id=63, **kw)
        return GPT(conf).transformer.h[0].mlp
    assert mlp().c_fc.weight.shape == (64, 16) and mlp(mlp_hidden=24).c_fc.weight.shape == (24, 16)
    assert mlp(mlp_hidden=24).c_proj.weight.shape == (16, 24)


def test_checkpoint_without_mlp_hidden_loads_unchanged(tmp_path):
    tok = CharTokenizer.build(["ab"])
    conf = GPTConfig(block_size=8, vocab_size=64, n_layer=1, n_head=2, n_embd=16, pause_id=tok.pause_id)
    old_meta = {k: v for k, v in dataclasses.asdict(conf).items() if k != "mlp_hidden"}  # written before the field
    model = GPT(conf)
    save_checkpoint(str(tmp_path / "old.pt"), model, None, {"model": old_meta, "tokenizer": tok.meta()})
    loaded, _, _ = load_model(str(tmp_path / "old.pt"), "cpu")
    assert loaded.config == conf
    x = torch.tensor([[0, 1, 0]])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert torch.allclose(loaded(x)[0], model(x)[0], atol=1e-6)  # its weights are laid out for decoding
