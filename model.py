"""GPT-2-style decoder with a <pause> token id in its config, a KV cache for incremental decoding and
key masks for left-padded batches; learned (GPT-2) or rotary position embeddings. Read top to bottom;
the method lives in pause.py (the model only knows the pause's id). Below the model, a speed section:
code that gives the same numbers faster, each part tested equal to the plain path; last, OpenAI's GPT-2 weights
read into this model (GPT.from_pretrained), tested equal to transformers' logits.

References: karpathy/nanoGPT model.py; GPT-2 (Radford et al., 2019); Goyal et al., ICLR 2024 (pause tokens);
Su et al., 2021 (RoFormer, rotary position embeddings).
"""
import json
import math
import os
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from config import UserError
from runtime import GPT2_HUB, hub_folder

# Dense bf16 tensor-core peak per GPU (NVIDIA datasheets); first substring of the device name that matches wins.
PEAK_BF16_FLOPS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 + <pause> (50257), padded to a multiple of 64
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    mlp_hidden: int = 0  # MLP hidden width; 0 = 4 * n_embd (GPT-2)
    dropout: float = 0.0
    bias: bool = False  # biases in Linears and LayerNorms (GPT-2 has them; without is a bit better and faster)
    pause_id: int = 50257  # the <pause> token's id: a config field, never a magic number elsewhere
    pos: str = "learned"  # positions: "learned" (GPT-2's wpe table) or "rope" (rotary q and k, no parameters)
    gelu_approx: str = "none"  # GELU: "none" (exact, this project's models) or "tanh" (OpenAI's GPT-2 weights)


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


def rope_angles(pos: torch.Tensor, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles pos * base^(-2i/head_dim), i < head_dim/2, for positions (T,) or (B, T);
    shaped (1 or B, 1, T, head_dim/2) to broadcast over the heads."""
    inv_freq = base ** -(torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim)
    angles = (pos[..., None].float() * inv_freq).unsqueeze(-3)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[i], x[i + head_dim/2]) of x (B, nh, T, head_dim) by its angle (rotate-half, as GPT-NeoX)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class KVCache:
    """Preallocated keys and values of every layer, each (n_layer, B, n_head, max_len, head_dim).

    The first `pos` positions are filled; setting `pos` back rewinds (later slots are overwritten)."""

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0

    @property
    def batch_size(self) -> int:
        return self.k.size(1)

    @property
    def max_len(self) -> int:
        return self.k.size(3)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, n_head, T, head_dim) at pos..pos+T-1 of `layer`; return that layer's keys, values so far."""
        end = self.pos + k.size(2)
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class CausalSelfAttention(nn.Module):

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v of all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout, self.layer = config.n_head, config.n_embd, config.dropout, layer

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, attn_mask: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if rope is not None:  # keys are cached rotated: a key's angle depends only on its own position
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        # No mask: either a fresh chunk (plain causal, the fast path) or one new token that may see all the past.
        # (SDPA's is_causal aligns top-left, so it is only right when keys and queries start together.)
        is_causal = attn_mask is None and k.size(2) == T
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.mlp_hidden or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.gelu = nn.GELU(approximate=config.gelu_approx)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, attn_mask: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, attn_mask, rope)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    chunked_loss = True  # the loss of the speed section below (torch.compile fuses the plain one itself)
    loss_chunk = 1024  # rows of logits it holds at once (1024 x 50304 float32: 0.2 GB; fewer rows make the output
    #                    layer's matmuls slower on a CPU)

    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.n_embd % config.n_head != 0:
            raise ValueError(f"n_embd={config.n_embd} is not a multiple of n_head={config.n_head}")
        if not 0 <= config.pause_id < config.vocab_size:
            raise ValueError(f"pause_id={config.pause_id} is outside the vocabulary 0..{config.vocab_size - 1}")
        if config.pos not in ("learned", "rope"):
            raise ValueError(f"pos={config.pos!r} must be 'learned' or 'rope'")
        if config.gelu_approx not in ("none", "tanh"):
            raise ValueError(f"gelu_approx={config.gelu_approx!r} must be 'none' or 'tanh'")
        if config.pos == "rope" and (config.n_embd // config.n_head) % 2:
            raise ValueError(f"pos='rope' needs an even head size, not n_embd/n_head={config.n_embd // config.n_head}")
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd) if config.pos == "learned" else None,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied: the <pause> row is both its input and output vector
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # residual projections, scaled as in GPT-2
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @classmethod
    def from_pretrained(cls, name_or_folder: str) -> "GPT":
        """OpenAI's GPT-2 (gpt2, gpt2-medium, gpt2-large or gpt2-xl, downloaded once from the Hugging Face hub) or a
        folder holding a Hugging Face GPT-2 (config.json + model.safetensors), with <pause> added; in eval mode."""
        config, state = gpt2_state_dict(gpt2_folder(name_or_folder))
        model = cls(config)
        model.load_state_dict(state)
        return model.eval()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; non_embedding leaves out learned position embeddings (token ones are tied to lm_head)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding and self.transformer.wpe is not None else n

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty KV cache for `batch_size` rows of up to `max_len` positions, on the model's device and dtype."""
        c, w = self.config, self.lm_head.weight
        return KVCache(c.n_layer, batch_size, c.n_head, max_len, c.n_embd // c.n_head, w.device, w.dtype)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                key_mask: torch.Tensor | None = None,
                last_only: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(float32 logits (B, T, vocab), None) without targets, (None, mean cross-entropy over targets != -1) with
        them: training never builds the full logits. last_only: logits (B, 1, vocab) of the last position only.

        With `cache`, idx continues the cached sequence; `key_mask` (B, cache.pos+T) is False at left padding."""
        B, T = idx.size()
        past = 0 if cache is None else cache.pos
        L = past + T
        if L > self.config.block_size:
            raise ValueError(f"sequence of {L} positions is longer than block_size={self.config.block_size}")
        if cache is not None and (L > cache.max_len or B != cache.batch_size):
            raise ValueError(f"cache holds {cache.batch_size} rows x {cache.max_len} positions; "
                             f"cannot add {B} rows x {T} to its {past} filled positions")
        if key_mask is None:
            pos = torch.arange(past, L, device=idx.device)
            attn_mask = None if past == 0 or T == 1 else self._causal_mask(past, T, idx.device)
        else:
            if key_mask.dtype != torch.bool or key_mask.shape != (B, L):
                raise ValueError(f"key_mask must be a bool tensor of shape ({B}, {L}), got "
                                 f"{key_mask.dtype} {tuple(key_mask.shape)}")
            # positions count from each row's first real token, so left padding does not shift them
            pos = (key_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            diagonal = torch.arange(L, device=idx.device) == torch.arange(past, L, device=idx.device)[:, None]
            # a padded query sees only itself (nothing real reads it): some SDPA kernels give NaN for a row of all -inf
            attn_mask = ((self._causal_mask(past, T, idx.device) & key_mask[:, None, :]) | diagonal)[:, None]

        x, rope = self.transformer.wte(idx), None
        if self.config.pos == "rope":  # the same per-row positions rotate q and k in every layer instead
            rope = rope_angles(pos, self.config.n_embd // self.config.n_head)
        else:
            x = x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, cache, attn_mask, rope)
        if cache is not None:
            cache.pos = L
        x = self.transformer.ln_f(x[:, -1:] if last_only else x)  # generation reads the last position only
        if targets is None:
            return self.lm_head(x).float(), None
        if self.chunked_loss and not torch.compiler.is_compiling():  # the same loss, faster (speed section below)
            return None, chunked_cross_entropy(x.reshape(B * T, -1), self.lm_head.weight, targets.reshape(-1),
                                               self.loss_chunk)
        # next-token cross-entropy; targets that are pauses (and prompts, padding) are -1 in the data: no loss
        logits = self.lm_head(x).float()
        return None, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)

    @staticmethod
    def _causal_mask(past: int, T: int, device: torch.device) -> torch.Tensor:
        """(T, past+T) bool: query i (at position past+i) may see keys 0..past+i."""
        return torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past)

    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas: tuple[float, float],
                             device_type: str) -> torch.optim.AdamW:
        """AdamW with weight decay on matrices and embeddings (dim >= 2) only, not on biases and LayerNorm gains."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        # fused: one kernel over all tensors instead of a few small ops per tensor, on a CPU as well
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type in ("cuda", "cpu"))

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training flops per token on sequences of seq_len (default block_size) positions, PaLM appendix B:
        6N for the matmuls (forward + backward) plus the attention scores over the context."""
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * (seq_len or c.block_size)

    def estimate_mfu(self, tokens_per_sec: float, device: torch.device | str,
                     seq_len: int | None = None) -> float | None:
        """Training model flops utilization (fraction of the GPU's bf16 peak) on sequences of seq_len positions
        (the padded batch width; default block_size); None off CUDA or on an unknown GPU."""
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            return None
        name = torch.cuda.get_device_name(device)
        peak = next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
        if peak is None:
            return None
        return tokens_per_sec * self.flops_per_token(seq_len) / peak

    # ------------------------------------------------------------------------- speed: the same numbers, faster
    def column_major_(self) -> "GPT":
        """Store every matmul weight column-major, same values and shapes, for inference on a CPU: a one-row matmul
        streams a weight so laid out about twice as fast, and decoding one row is such matmuls (at 6 x 384 wide,
        119 MB of weights a token, 77 MB of them the output layer, tied to the embedding table)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.weight.data = module.weight.data.t().contiguous().t()
        return self


# ----------------------------------------------------------------------------- speed: the training loss
def chunked_cross_entropy(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """F.cross_entropy(h @ w.T, targets, ignore_index=-1), `chunk` rows at a time (tested equal to it)."""
    with_grad = torch.is_grad_enabled() and (h.requires_grad or w.requires_grad)
    return ChunkedCrossEntropy.apply(h, w, targets, chunk, with_grad)


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of the logits h @ w.T (h: rows x d, w: vocab x d) over targets != -1, `chunk` rows at a
    time, the gradient taken on the spot: the full (rows x vocab) float32 logits and their softmax are never held
    (at batch 8 x 256, vocab 50304 that is 0.4 GB each, and several passes over memory a step)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk: int,
                with_grad: bool) -> torch.Tensor:
        rows = (targets != -1).nonzero()[:, 0]  # ignored targets (pauses) cost no logits at all
        dev = h.device.type  # the matmuls run in autocast's dtype, cast here: autocast skips the in-place addmm_
        cdt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else w.dtype
        hk, tk, n, wc = h[rows].to(cdt), targets[rows], max(len(rows), 1), w.to(cdt)
        loss = torch.zeros((), device=h.device)
        grad_h = torch.zeros_like(h) if with_grad else None
        grad_w = None
        with torch.autocast(dev, enabled=False):
            for s in range(0, len(rows), chunk):
                hc, t = hk[s:s + chunk], tk[s:s + chunk]
                logp = torch.log_softmax((hc @ wc.t()).float(), -1)  # one fused pass over the chunk's logits
                loss -= logp.gather(1, t[:, None]).sum()
                if with_grad:  # d loss / d logits = (softmax - one_hot(target)) / n
                    probs = logp.exp_()
                    probs[torch.arange(len(t), device=t.device), t] -= 1.0
                    grad_h[rows[s:s + chunk]] = (probs.to(cdt) @ wc).div_(n).to(h.dtype)
                    g = probs.t().to(cdt)
                    # the first chunk writes the vocab x d gradient, the others add in place: no zero-filled
                    # temporary; the sum is kept in w's dtype (float32) when the products are in bfloat16
                    if grad_w is None:
                        grad_w = (g @ hc).to(w.dtype).div_(n)
                    elif cdt == w.dtype:
                        grad_w.addmm_(g, hc, alpha=1 / n)
                    else:
                        grad_w.add_(g @ hc, alpha=1 / n)
        if with_grad and grad_w is None:  # every target ignored
            grad_w = torch.zeros_like(w)
        ctx.save_for_backward(grad_h, grad_w)
        return loss / n

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss, grad_w * grad_loss, None, None, None


# ----------------------------------------------------------------------------- OpenAI's GPT-2 weights
def gpt2_folder(name_or_folder: str) -> str:
    """The folder of a Hugging Face GPT-2: name_or_folder itself, or the hub's model of that name (hub_folder)."""
    if os.path.isdir(name_or_folder):
        if missing := [f for f in ("config.json", "model.safetensors")
                       if not os.path.isfile(os.path.join(name_or_folder, f))]:
            raise UserError(f"{name_or_folder} holds no {' or '.join(missing)}: give a folder as save_pretrained("
                            "..., safe_serialization=True) writes it, or a name (" + ", ".join(GPT2_HUB) + ")")
        return name_or_folder
    if name_or_folder in GPT2_HUB:
        return hub_folder(name_or_folder)
    raise UserError(f"{name_or_folder!r} is neither a folder nor one of " + ", ".join(GPT2_HUB))


def gpt2_config(folder: str) -> GPTConfig:
    """The GPTConfig of the Hugging Face GPT-2 in `folder` (its config.json): GPT-2's shape, biases and tanh GELU,
    its 50257 tokens and <pause> right after them (GPTConfig's vocab_size and pause_id); a UserError for a model
    this code would not compute exactly."""
    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            hf = json.load(f)
        act = hf.get("activation_function", "gelu_new")
        gelu = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}.get(act)
        shape = {k: hf[k] for k in ("n_positions", "n_layer", "n_head", "n_embd")}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
        raise UserError(f"{path} is not a GPT-2 config.json ({type(e).__name__}: {e})") from None
    wrong = [f"{k}={hf.get(k)}" for k, want in (("model_type", "gpt2"), ("vocab_size", GPTConfig.pause_id),
             ("layer_norm_epsilon", 1e-5), ("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
             ("tie_word_embeddings", True)) if hf.get(k, want) != want]
    wrong += [f"activation_function={act}"] * (gelu is None)
    wrong += [f"{k}={v}" for k, v in shape.items() if type(v) is not int or v < 1]
    if not wrong and shape["n_embd"] % shape["n_head"]:
        wrong = [f"n_embd={shape['n_embd']} is not a multiple of n_head={shape['n_head']}"]
    if wrong:
        raise UserError(f"{path}: not a GPT-2 this code computes exactly ({', '.join(wrong)})")
    return GPTConfig(block_size=shape["n_positions"], n_layer=shape["n_layer"], n_head=shape["n_head"],
                     n_embd=shape["n_embd"], mlp_hidden=hf.get("n_inner") or 0, bias=True, gelu_approx=gelu)


def gpt2_state_dict(folder: str, device: str | torch.device = "cpu") -> tuple[GPTConfig, dict]:
    """(config, state dict of this project's GPT) of the Hugging Face GPT-2 in `folder`, read with safetensors
    (no pickle), every tensor's name and shape checked. The <pause> row (50257) and the padding rows up to 50304
    start as the mean of GPT-2's token embeddings: a new row's logit is then the mean of the real tokens' logits,
    so it starts with at most about an average token's probability (N(0, 0.02) would put its logit near 0 wherever
    GPT-2's logits lie, which can hand it a large share of the softmax that finetuning must first unlearn)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    config, path = gpt2_config(folder), os.path.join(folder, "model.safetensors")
    try:
        hf = load_file(path, device=str(device))
    except (OSError, SafetensorError) as e:
        raise UserError(f"{path} cannot be read as safetensors ({e}); delete it to download it again") from None
    # the hub's files name tensors without "transformer." and hold each layer's causal mask as attn.(masked_)bias
    hf = {k.removeprefix("transformer."): v for k, v in hf.items()
          if not re.fullmatch(r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias", k)}
    head = hf.pop("lm_head.weight", None)
    if head is not None and not torch.equal(head, hf.get("wte.weight", head[:0])):
        raise UserError(f"{path}: its output layer is not its token embedding; this GPT ties them, as GPT-2 does")
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    E, H = config.n_embd, config.mlp_hidden or 4 * config.n_embd
    layer = {"ln_1.weight": (E,), "ln_1.bias": (E,), "attn.c_attn.weight": (3 * E, E), "attn.c_attn.bias": (3 * E,),
             "attn.c_proj.weight": (E, E), "attn.c_proj.bias": (E,), "ln_2.weight": (E,), "ln_2.bias": (E,),
             "mlp.c_fc.weight": (H, E), "mlp.c_fc.bias": (H,), "mlp.c_proj.weight": (E, H), "mlp.c_proj.bias": (E,)}
    want = {"wte.weight": (config.vocab_size, E), "wpe.weight": (config.block_size, E),
            **{f"h.{i}.{k}": s for i in range(config.n_layer) for k, s in layer.items()},
            "ln_f.weight": (E,), "ln_f.bias": (E,)}  # GPT's tensors, but for lm_head (tied to wte)
    state = {}
    for name, shape in want.items():
        if name not in hf:
            raise UserError(f"{path} has no tensor {name}: not a GPT-2 of its config.json's shape")
        t = hf.pop(name).float()
        t = t.t() if name.endswith(conv1d) else t  # HF's Conv1D keeps (in, out); nn.Linear is (out, in)
        if name == "wte.weight" and t.shape == (config.pause_id, config.n_embd):
            t = torch.cat([t, t.mean(0, keepdim=True).expand(config.vocab_size - len(t), -1)])
        if t.shape != shape:
            raise UserError(f"{path}: {name} is {tuple(t.shape)}, its config.json's shape needs {tuple(shape)}")
        state["transformer." + name] = t.contiguous()
    if hf:
        raise UserError(f"{path} holds tensors a GPT-2 has no place for (e.g. {next(iter(hf))})")
    state["lm_head.weight"] = state["transformer.wte.weight"]  # tied: one tensor, as in GPT
    return config, state


if __name__ == "__main__":
    import sys

    from config import module_main, run_main
    run_main(module_main, "model.py", __doc__, "train it with python train.py, sample from it with python sample.py "
             "(each takes --help)", sys.argv[1:])
