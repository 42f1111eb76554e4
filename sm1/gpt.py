"""A small GPT (nanoGPT-like) to measure SM1 against: same data, same loop, same parameter count.

It speaks the same interface as `sm1.model.SM1`, so the training loop and the benchmarks never ask which
model they hold:

    logits, cache = model(tokens)             # (B, T) -> (B, T, V); cache is None when none was given
    cache = model.allocate_state(batch)       # an empty KV cache for up to config.max_len tokens
    logits, cache = model(tokens, cache)      # prefill: appends the keys and values of `tokens`
    logits = model.step(tokens, cache)        # (B,) -> (B, V); appends one token IN PLACE

Positions are rotary (RoPE), so there is no learned table tied to a context length: the model can be
asked for a 16K-token cache although it trained on short windows, which is what the latency benchmark does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


@dataclass
class GPTConfig:
    vocab_size: int
    d_model: int = 256
    n_layer: int = 4
    n_head: int = 4
    max_len: int = 16384  # the longest KV cache allocate_state makes by default
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError(f"d_model {self.d_model} must split into {self.n_head} heads of even size")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        return cls(**d)


# With a KV cache every step attends over a new length, and cuDNN's attention plans each new shape anew: on an
# H100 that planning took about 14 ms a call, 60 ms a token for 4 layers (torch profiler, 2026-11-23). The other
# backends take any length as it comes.
CACHED_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class KVCache:
    """Keys and values of every layer for `length` tokens, preallocated for `max_len` tokens."""

    def __init__(self, config: GPTConfig, batch: int, max_len: int, device=None, dtype=torch.float32):
        shape = (config.n_layer, batch, config.n_head, max_len, config.head_dim)  # (L, B, nh, max_len, hs)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def nbytes(self) -> int:
        """Bytes held for the cached tokens so far (what grows with context; SM1's state does not)."""
        per_token = self.k[:, :, :, :1].numel() * self.k.element_size() * 2
        return per_token * self.length


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding on the last dim, in halves (GPT-NeoX layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        heads = (B, T, self.n_head, C // self.n_head)
        q, k, v = (t.view(heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        q, k = rotate(q, cos, sin).to(v.dtype), rotate(k, cos, sin).to(v.dtype)  # autocast: cos may be fp32
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            start = cache.length
            cache.k[layer, :, :, start : start + T] = k
            cache.v[layer, :, :, start : start + T] = v
            k = cache.k[layer, :, :, : start + T]  # (B, nh, start + T, hs)
            v = cache.v[layer, :, :, : start + T]
            with sdpa_kernel(CACHED_BACKENDS):
                if T == 1:  # one new token sees everything before it: no mask needed
                    y = F.scaled_dot_product_attention(q, k, v)
                elif start == 0:
                    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                else:  # a chunk after earlier tokens: query i sees keys up to start + i
                    mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
                    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.d_model, 4 * config.d_model, bias=False)
        self.proj = nn.Linear(4 * config.d_model, config.d_model, bias=False)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), cos, sin, cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.embedding.weight  # weight tying, as GPT-2 (and SM1) do
        inv_freq = 1.0 / config.rope_base ** (torch.arange(0, config.head_dim, 2).float() / config.head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.apply(self._init_weights)
        # apply special scaled init to the residual projections, per GPT-2 paper
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _rope(self, start: int, T: int, dtype: torch.dtype):
        pos = torch.arange(start, start + T, device=self.inv_freq.device, dtype=torch.float32)
        angles = torch.outer(pos, self.inv_freq)  # (T, hs/2)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def allocate_state(self, batch: int, device=None, max_len: int | None = None) -> KVCache:
        """An empty KV cache in the model's dtype and device (or `device`)."""
        p = self.embedding.weight
        return KVCache(self.config, batch, max_len or self.config.max_len, device or p.device, p.dtype)

    def forward(self, tokens: torch.Tensor, state: KVCache | None = None):
        T = tokens.shape[1]
        start = 0 if state is None else state.length
        if state is not None and start + T > state.max_len:
            raise ValueError(f"KV cache holds {state.max_len} tokens; {start} + {T} do not fit")
        x = self.embedding(tokens)  # (B, T, C)
        cos, sin = self._rope(start, T, x.dtype)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, state, i)
        if state is not None:
            state.length += T
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        return logits.float(), state

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, state: KVCache) -> torch.Tensor:
        """One token per row: (B,) -> logits (B, V); appends to the cache in place."""
        logits, _ = self(tokens[:, None], state)
        return logits[:, -1]
