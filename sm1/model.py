"""SM1: a Mamba1 language model (Gu & Dao, 2023) with d_state=1 by default, in pure PyTorch.

The block is the paper's: in_proj to (x, z), causal depthwise conv1d, x_proj to (dt, B, C), dt_proj with
softplus, A = -exp(A_log), selective scan, D skip, SiLU gate, out_proj; pre-norm residual blocks; RMSNorm.
`forward` runs a whole sequence (training, prompt prefill) through the exact parallel scan (on CUDA, the scan
and its neighbours fused in Triton: sm1/selective_scan_triton.py); `step` runs one token of a batch of sessions
through the same equations. They are the same function, and the tests hold them to it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sm1 import selective_scan_triton
from sm1.scan import scan
from sm1.state import SM1State

# None: the fused Triton layer on CUDA wherever Triton imports, else the pure path. True / False force one
# (the tests run the fused one in Triton's interpreter on the CPU; the benchmarks time both).
FUSED_LAYER: bool | None = None


def _fused_layer(x: Tensor) -> bool:
    """The one place MambaBlock.forward's path is chosen."""
    if FUSED_LAYER is not None:
        return FUSED_LAYER
    return x.is_cuda and selective_scan_triton.available(x.device)


@dataclass
class SM1Config:
    vocab_size: int
    d_model: int = 256
    n_layer: int = 8
    d_state: int = 1
    expand: int = 2
    d_conv: int = 4
    dt_rank: int = 0  # 0: ceil(d_model / 16), as in Mamba
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    tie_embeddings: bool = True
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.dt_rank == 0:
            self.dt_rank = math.ceil(self.d_model / 16)

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SM1Config:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SM1Config fields: {sorted(unknown)}")
        return cls(**d)


class MambaBlock(nn.Module):
    """The Mamba1 mixer. Shapes: B batch, T time, E d_inner, N d_state, R dt_rank."""

    def __init__(self, cfg: SM1Config) -> None:
        super().__init__()
        self.cfg = cfg
        E, N, R = cfg.d_inner, cfg.d_state, cfg.dt_rank
        self.in_proj = nn.Linear(cfg.d_model, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, cfg.d_conv, groups=E, padding=0, bias=True)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.out_proj = nn.Linear(E, cfg.d_model, bias=False)
        # S4D real initialization: A_n = -(n + 1), the same for every channel
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))  # (E, N)
        self.D = nn.Parameter(torch.ones(E))
        self._init_dt()

    def _init_dt(self) -> None:
        cfg = self.cfg
        std = cfg.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        # Initialize dt bias so that softplus(dt_bias) is log-uniform between dt_min and dt_max
        dt = torch.exp(
            torch.rand(cfg.d_inner) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)
        ).clamp(min=cfg.dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus

    def _projections(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """From the conv output x (..., E): dt before its softplus (..., E), B (..., N), C (..., N)."""
        R, N = self.cfg.dt_rank, self.cfg.d_state
        dt, B, C = self.x_proj(x).split([R, N, N], dim=-1)
        return self.dt_proj(dt), B, C

    @staticmethod
    def _ssm_inputs(dt_raw: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """From `_projections`: dt = softplus(dt_raw), B and C, all fp32 (the pure path's inputs to the scan)."""
        return F.softplus(dt_raw.float()), B.float(), C.float()

    def forward(self, u: Tensor, ssm: Tensor, conv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """u (B, T, d_model); ssm (B, E, N) and conv (B, d_conv-1, E) entering. Returns y and both states."""
        Bsz, T, _ = u.shape
        E, N = self.cfg.d_inner, self.cfg.d_state
        x, z = self.in_proj(u).chunk(2, dim=-1)  # (B, T, E) each
        # causal conv continued from the carried window: prepend the last d_conv-1 inputs
        x_win = torch.cat([conv.to(x.dtype), x], dim=1)  # (B, d_conv-1+T, E)
        new_conv = x_win[:, -(self.cfg.d_conv - 1) :]
        # contiguous: a (1, T, E) transposed view would send x_proj down another GEMM path than a batch of them
        # do (other bits on some CPUs), and a prompt must read the same alone as beside others
        x = F.silu(self.conv1d(x_win.transpose(1, 2))).transpose(1, 2).contiguous()  # (B, T, E)
        dt_raw, B, C = self._projections(x)
        A = -torch.exp(self.A_log.float())  # (E, N)
        if _fused_layer(x):
            y, h_last = selective_scan_triton.selective_scan_triton(x, dt_raw, A, B, C, self.D, z, ssm)
            return self.out_proj(y), h_last, new_conv
        dt, B, C = self._ssm_inputs(dt_raw, B, C)
        log_a = dt.unsqueeze(-1) * A  # (B, T, E, N)
        b = (dt * x.float()).unsqueeze(-1) * B.unsqueeze(2)  # (B, T, E, N)
        h = scan(log_a.view(Bsz, T, E * N), b.view(Bsz, T, E * N), ssm.reshape(Bsz, E * N)).view(Bsz, T, E, N)
        y = (h * C.unsqueeze(2)).sum(-1) + self.D * x.float()  # (B, T, E)
        y = y.to(x.dtype) * F.silu(z)
        return self.out_proj(y), h[:, -1], new_conv

    def step_constants(self) -> tuple[Tensor, Tensor]:
        """A = -exp(A_log) (E, N) fp32 and the conv weight as (d_conv, E) rows (contiguous rows make the
        product 2x faster), for `step` and the fused step: made once per version of the weights, not on every
        token (a weight changed in place, moved or cast makes them again)."""
        A_log, w = self.A_log, self.conv1d.weight
        version = (A_log._version, A_log.data_ptr(), w._version, w.data_ptr(), w.dtype)
        if getattr(self, "_step_constants", (None,))[0] != version:
            with torch.no_grad():
                self._step_constants = (version, -torch.exp(A_log.float()).contiguous(), w[:, 0].T.contiguous())
        return self._step_constants[1], self._step_constants[2]

    def step(self, u: Tensor, ssm: Tensor, conv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One token: u (B, d_model); ssm (B, E, N) fp32; conv (B, d_conv-1, E). Same equations as forward."""
        x, z = self.in_proj(u).chunk(2, dim=-1)  # (B, E)
        x_win = torch.cat([conv, x.unsqueeze(1).to(conv.dtype)], dim=1)  # (B, d_conv, E)
        A, weight = self.step_constants()  # (E, N), (d_conv, E)
        x = (x_win.to(x.dtype) * weight).sum(1) + self.conv1d.bias  # (B, E)
        x = F.silu(x)
        dt, B, C = self._ssm_inputs(*self._projections(x))  # (B, E), (B, N), (B, N)
        h = torch.exp(dt.unsqueeze(-1) * A) * ssm + (dt * x.float()).unsqueeze(-1) * B.unsqueeze(1)  # (B, E, N)
        y = (h * C.unsqueeze(1)).sum(-1) + self.D * x.float()  # (B, E)
        y = y.to(x.dtype) * F.silu(z)
        return self.out_proj(y), h, x_win[:, 1:]


class Block(nn.Module):
    """Pre-norm residual: x + mixer(norm(x))."""

    def __init__(self, cfg: SM1Config) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = MambaBlock(cfg)


class SM1(nn.Module):
    def __init__(self, cfg: SM1Config) -> None:
        super().__init__()
        self.config = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        nn.init.normal_(self.embedding.weight, std=0.02)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        # apply special scaled init to the residual projections, per GPT-2 paper (as Mamba does)
        for layer in self.layers:
            nn.init.normal_(layer.mixer.out_proj.weight, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def allocate_state(self, batch: int, device: torch.device | str | None = None) -> SM1State:
        p = self.embedding.weight
        return SM1State.zeros(self.config, batch, device=device or p.device, dtype=p.dtype)

    def forward(self, tokens: Tensor, state: SM1State | None = None) -> tuple[Tensor, SM1State]:
        """tokens (B, T) -> logits (B, T, V) float32 and the state after the last token."""
        if state is None:
            state = self.allocate_state(tokens.shape[0], tokens.device)
        x = self.embedding(tokens)  # (B, T, d_model)
        ssm, conv = [], []
        for i, layer in enumerate(self.layers):
            y, h, c = layer.mixer(layer.norm(x), state.ssm[i], state.conv[i])
            x = x + y
            ssm.append(h)
            conv.append(c)
        logits = self.lm_head(self.norm_f(x)).float()
        return logits, SM1State(torch.stack(ssm), torch.stack(conv).to(state.conv.dtype))

    @torch.no_grad()
    def step(self, tokens: Tensor, state: SM1State, slots: Tensor | None = None, fused: bool = False) -> Tensor:
        """One token per session: tokens (B,) -> logits (B, V) float32.

        Updates `state` in place. With `slots` (B,) int64, rows `slots` of a larger pool state are read
        and written (no copying whole states in and out of the pool). `fused`: Triton kernels that work on
        the pool rows in place (CUDA, or the interpreter): one row runs every layer in one persistent kernel
        and the head (sm1/step_persistent.py), more rows each block in five launches (sm1/step_triton.py).
        """
        x = self.embedding(tokens)  # (B, d_model)
        if fused:
            from sm1 import step_persistent, step_triton

            if slots is None:
                slots = torch.arange(tokens.shape[0], device=tokens.device)
            if tokens.shape[0] <= step_persistent.MAX_ROWS:
                return step_persistent.step_logits(self, x, state.ssm, state.conv, slots)
            for i, layer in enumerate(self.layers):
                x = step_triton.block_step(layer, x, state.ssm[i], state.conv[i], slots)
            return step_triton.logits(self, self.norm_f(x))
        for i, layer in enumerate(self.layers):
            ssm_i, conv_i = state.ssm[i], state.conv[i]  # (S, E, N), (S, d_conv-1, E)
            if slots is None:
                y, h, c = layer.mixer.step(layer.norm(x), ssm_i, conv_i)
                ssm_i.copy_(h)
                conv_i.copy_(c)
            else:
                y, h, c = layer.mixer.step(layer.norm(x), ssm_i.index_select(0, slots), conv_i.index_select(0, slots))
                ssm_i.index_copy_(0, slots, h)
                conv_i.index_copy_(0, slots, c.to(conv_i.dtype))
            x = x + y
        return self.lm_head(self.norm_f(x)).float()
