"""OpenAI's GPT-2 as a starting point. A tiny random Hugging Face GPT-2 (made with transformers, a test-only
dependency) read through GPT.from_pretrained gives transformers' logits, with and without the KV cache; <pause>
is a new row, never emitted; finetune -> eval -> plots run from its folder; a named model downloads from the
hub (here a local server) into a cache, fails in one line and resumes."""
import json
import os
import threading
from http.server import ThreadingHTTPServer

import pytest
import torch

import checkpoint
import eval as evaluation
import finetune
import plots
import runtime
from config import parse_config, run_main
from model import GPT, GPTConfig
from pause import banned_tokens
from sample import generate
from test_download import Handler

FILES = ("config.json", "model.safetensors")


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """(transformers' model, the folder save_pretrained wrote it to): 2 layers, 32 wide, GPT-2's 50257 tokens."""
    if os.environ.get("CI", "").lower() in ("", "0", "false"):
        pytest.importorskip("transformers", reason="test-only dependency: pip install -r requirements-test.txt")
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    # weights wider than GPT-2's 0.02, so that the logits spread and a wrong transpose or GELU shows
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=50257, initializer_range=0.3)
    model = GPT2LMHeadModel(config).eval()
    folder = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    model.save_pretrained(folder, safe_serialization=True)
    return model, str(folder)


@pytest.fixture(scope="module")
def gpt(hf):
    return GPT.from_pretrained(hf[1])


def test_logits_equal_transformers(hf, gpt):
    idx = torch.randint(0, 50257, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, (got, _) = hf[0](idx).logits, gpt(idx)
    assert got.shape[-1] == 50304 and want.std() > 0.5
    assert (got[..., :50257] - want).abs().max() <= 1e-4


def test_logits_equal_transformers_with_the_kv_cache(hf, gpt):
    idx = torch.randint(0, 50257, (2, 30), generator=torch.Generator().manual_seed(2))
    cache = gpt.new_cache(2, 30)
    with torch.no_grad():
        want = hf[0](idx).logits
        steps = [gpt(idx[:, :26], cache=cache)[0]] + [gpt(idx[:, t:t + 1], cache=cache)[0] for t in range(26, 30)]
    assert (torch.cat(steps, 1)[..., :50257] - want).abs().max() <= 1e-4


def test_the_hubs_own_tensor_names_read_the_same(hf, gpt, tmp_path):
    """The hub's files name tensors without "transformer.", keep each layer's causal mask, may hold lm_head."""
    from safetensors.torch import load_file, save_file
    _, folder = hf
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(os.path.join(folder, FILES[1])).items()}
    tensors |= {"h.0.attn.bias": torch.ones(1, 1, 64, 64), "lm_head.weight": tensors["wte.weight"].clone()}
    save_file(tensors, tmp_path / FILES[1])
    (tmp_path / FILES[0]).write_text(open(os.path.join(folder, FILES[0])).read())
    a, b = gpt.state_dict(), GPT.from_pretrained(str(tmp_path)).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gpt2_shape_biases_tanh_gelu_and_a_pause_row(gpt):
    c, wte = gpt.config, gpt.transformer.wte.weight
    assert (c.n_layer, c.n_embd, c.block_size, c.bias, c.gelu_approx) == (2, 32, 64, True, "tanh")
    assert (c.vocab_size, c.pause_id) == (50304, 50257) and gpt.lm_head.weight is wte
    assert torch.allclose(wte[50257], wte[:50257].mean(0))  # <pause>: the mean of GPT-2's token embeddings
    assert GPTConfig().gelu_approx == "none"  # this project's own models keep the exact GELU


def test_pause_and_padding_are_never_emitted(gpt):
    bump = torch.zeros(50304)
    bump[50257:] = 1e4  # <pause> and the padding rows would win every step, were they not masked
    hook = gpt.lm_head.register_forward_hook(lambda module, inputs, out: out + bump)
    try:
        assert gpt(torch.tensor([[1, 2, 3]]))[0][0, -1].argmax() >= 50257
        rows = generate(gpt, [[1, 2, 3], [464, 3290, 50257, 50257]], 12, 50258, temperature=1.0,
                        generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert all(0 <= t < 50257 for r in rows for t in r) and sum(map(len, rows)) == 24
    assert banned_tokens(50304, 50258, 50257)[50257:].all()


def test_read_meta_of_a_folder_is_a_stdpt_pretraining_with_its_source(hf):
    meta = checkpoint.read_meta(hf[1])
    assert meta["kind"] == "pretrain" and meta["config"] == {"pause_frac": 0.0}
    assert meta["tokenizer"] == {"kind": "gpt2", "vocab_size": 50258, "eot_id": 50256, "pause_id": 50257}
    assert meta["source"] == os.path.abspath(hf[1]) and meta["model"]["gelu_approx"] == "tanh"


def test_a_gpt2_this_code_would_not_compute_exactly_is_refused(hf, tmp_path, capsys):
    config = json.load(open(os.path.join(hf[1], FILES[0])))
    (tmp_path / FILES[0]).write_text(json.dumps({**config, "activation_function": "relu",
                                                 "scale_attn_by_inverse_layer_idx": True}))
    os.symlink(os.path.join(hf[1], FILES[1]), tmp_path / FILES[1])
    err = cli_error(capsys, GPT.from_pretrained, str(tmp_path))
    assert "scale_attn_by_inverse_layer_idx=True" in err and "activation_function=relu" in err


def test_a_folder_without_weights_is_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    err = cli_error(capsys, checkpoint.read_meta, str(tmp_path))
    assert "model.safetensors" in err and "save_pretrained" in err


@pytest.mark.bpe
def test_finetune_eval_and_plot_from_a_folder(hf, tmp_path):
    rows = [{"question": f"What is {a} plus {b}?", "answer": f"#### {a + b}"} for a in range(3) for b in range(3)]
    task = tmp_path / "add.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ev = ["--task=gsm8k", f"--task_file={task}", "--device=cpu", "--max_new_tokens=4", "--m_inf=0,2"]
    base = evaluation.main(parse_config(evaluation.EvalConfig, [f"--ckpt={hf[1]}", *ev]))
    assert base[0]["variant"] == "StdPT" and base[0]["n"] == 9
    finetune.main(parse_config(finetune.FinetuneConfig, [
        f"--init_from={hf[1]}", "--task=gsm8k", f"--task_file={task}", f"--out_dir={tmp_path}/ft", "--m_ft=2",
        "--max_iters=2", "--batch_size=4", "--eval_interval=2", "--val_frac=0.2", "--device=cpu"]))
    meta = checkpoint.read_meta(f"{tmp_path}/ft/ckpt.pt")
    assert meta["init_from"] == hf[1] and meta["source"] == os.path.abspath(hf[1]) and meta["step"] == 2
    results = evaluation.main(parse_config(evaluation.EvalConfig, [f"--ckpt={tmp_path}/ft/ckpt.pt", *ev,
                                                                   f"--out={tmp_path}/r.json"]))
    assert [r["m_inf"] for r in results] == [0, 2] and results[0]["variant"] == "StdPT_PauseFT"
    plots.cli(["minf", f"{tmp_path}/r.json", f"--out={tmp_path}/minf.png"])
    assert (tmp_path / "minf.png").stat().st_size > 0


# ----------------------------------------------------------------------------- the hub, as a local server
@pytest.fixture
def hub(hf, tmp_path, monkeypatch):
    """A server holding the tiny GPT-2 as every hub name; $PAUSEGPT_HF_URL points at it, the cache is in tmp_path."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # test_download's: ranges, 404, truncation
    blobs = {f: open(os.path.join(hf[1], f), "rb").read() for f in FILES}
    srv.files = {f"/{name}/resolve/main/{f}": blob for name in runtime.GPT2_HUB for f, blob in blobs.items()}
    srv.ranges, srv.support_range, srv.truncate = [], True, False
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    monkeypatch.setenv(runtime.HF_URL_ENV, f"http://127.0.0.1:{srv.server_address[1]}")
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "cache"))
    yield srv
    srv.shutdown()
    srv.server_close()


def cli_error(capsys, main, *args) -> str:
    """main(*args) as run_main runs a script: exit status 2, and the last line of stderr (after progress bars) is
    its one error line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(main, *args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "Traceback" not in err and err.count("error: ") == 1, err
    return err.splitlines()[-1]


def test_a_named_model_downloads_once_into_the_cache(hub, gpt, tmp_path):
    model = GPT.from_pretrained("gpt2-medium")
    assert sorted(os.listdir(tmp_path / "cache" / "gpt2-medium")) == sorted(FILES) and len(hub.ranges) == 2
    GPT.from_pretrained("gpt2-medium")
    assert len(hub.ranges) == 2  # the cache is used
    assert checkpoint.read_meta("gpt2-medium")["source"] == f"{os.environ[runtime.HF_URL_ENV]}/gpt2-medium/resolve/" \
                                                            "main/model.safetensors"
    assert torch.equal(model.transformer.h[0].mlp.c_fc.weight, gpt.transformer.h[0].mlp.c_fc.weight)


def test_a_truncated_download_is_one_line_never_taken_as_whole_and_resumes(hub, tmp_path, capsys):
    hub.truncate = True
    err = cli_error(capsys, lambda: GPT.from_pretrained("gpt2-large"))
    assert "config.json stopped at" in err and "run again to resume" in err
    folder = tmp_path / "cache" / "gpt2-large"
    assert os.listdir(folder) == ["config.json.part"]
    hub.truncate = False
    GPT.from_pretrained("gpt2-large")
    assert hub.ranges[-2].startswith("bytes=") and sorted(os.listdir(folder)) == sorted(FILES)


def test_a_wrong_checksum_is_one_line_and_nothing_is_kept(hub, tmp_path, capsys):
    err = cli_error(capsys, checkpoint.load_checkpoint, "gpt2")  # the tiny model is not OpenAI's gpt2
    assert "sha256" in err and "expected 0daed7749b4f" in err
    assert os.listdir(tmp_path / "cache" / "gpt2") == []


def test_a_missing_file_is_one_line_naming_the_url_and_a_mirror(hub, capsys):
    hub.files = {}
    err = cli_error(capsys, lambda: evaluation.main(parse_config(evaluation.EvalConfig, [
        "--ckpt=gpt2-xl", "--task=gsm8k", "--device=cpu"])))
    assert "/gpt2-xl/resolve/main/config.json failed: HTTP 404" in err and runtime.HF_URL_ENV in err


def test_the_study_runs_the_stdpt_arms_from_gpt2_and_names_what_it_skips(hf, tmp_path, capsys):
    from experiments import study
    rows = [{"question": f"What is {a} plus {b}?", "answer": f"#### {a + b}"} for a in range(3) for b in range(3)]
    task = tmp_path / "add.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = study.parse_config(study.StudyConfig, [
        f"--std_ckpt={hf[1]}", "--task=gsm8k", f"--task_train={task}", f"--task_eval={task}", f"--out_dir={tmp_path}/s",
        "--m_ft=2", "--m_inf=0,2", "--ft_iters=2", "--ft_batch_size=4", "--device=cpu", "--eval_batch_size=16"])
    study.main(cfg)
    assert "skipping PausePT_StdFT, PausePT_PauseFT: no --pause_ckpt given" in capsys.readouterr().out
    summary = json.load(open(tmp_path / "s" / "summary.json"))
    assert [a["name"] for a in summary["arms"]] == ["StdPT_StdFT", "StdPT_PauseFT"]
    assert {r["variant"] for r in summary["records"]} == {"StdPT_StdFT", "StdPT_PauseFT"}
