"""The d_state=1 scan h_t = a_t * h_{t-1} + b_t, exact and stable.

Three definitions of one function:

* `scan_reference`: the sequential loop. Slow, obviously right: the oracle every other path is tested
  against (run it in float64).
* `scan_chunked`: pure PyTorch, parallel over T, on any device. Inside chunks of `CHUNK` steps a
  Hillis-Steele scan over pairs (a, b) with the combine (a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2); across
  chunks the same scan, recursively, on the chunk totals. Products of a_t are carried as sums of
  log a_t <= 0 over at most log2(T) levels: no division by a long product (the published cumprod/cumsum
  form underflows and lies), no exp of a positive number (the closed form overflows for large dt), no
  difference of two large cumulative sums (the log-space closed form loses digits), and no bias from
  multiplying thousands of rounded a_t near 1 (which even the fp32 sequential loop suffers).
* `scan_triton` (sm1/scan_triton.py): chunked sequential passes in Triton kernels on CUDA, with a
  fused backward, chosen automatically by `scan` when Triton is present.

The backward of the recurrence is the same recurrence run in reverse (dh_t = g_t + a_{t+1} dh_{t+1}), so
`scan` has a hand-written backward that calls the same forward scan on flipped inputs: as exact and as
fast as the forward, and no autograd graph through the log2(T) levels of the parallel scan.
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK = 32  # steps per chunk of the two-level scan: 5 Hillis-Steele levels inside, recursion across


def scan_reference(log_a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """h_t = exp(log_a_t) * h_{t-1} + b_t, one step at a time. log_a, b: (B, T, D); h0: (B, D)."""
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0.to(b.dtype)
    a = log_a.exp()
    out = torch.empty_like(b)
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        out[:, t] = h
    return out


def _hillis_steele(log_a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Inclusive scan along dim -2 of the pairs (log_a, b): returns (sum log_a[..s..t], h_t from h = 0).

    Products of a are carried as sums of log a: a = exp(-1e-4) rounded to fp32 is off by 6e-4 of its
    distance to 1, and a product of thousands of them repeats that bias; a sum of logs does not.
    """
    length = log_a.shape[-2]
    k = 1
    while k < length:
        # combine each step with the one k steps back: (la, b)_t <- (la_{t-k} + la_t, exp(la_t) b_{t-k} + b_t)
        b = torch.cat([b[..., :k, :], torch.addcmul(b[..., k:, :], log_a[..., k:, :].exp(), b[..., :-k, :])], dim=-2)
        log_a = torch.cat([log_a[..., :k, :], log_a[..., k:, :] + log_a[..., :-k, :]], dim=-2)
        k *= 2
    return log_a, b


def _scan_pairs(log_a: Tensor, b: Tensor) -> Tensor:
    """The two-level scan of (B, T, D) log multipliers (log_a <= 0) and inputs b, from h_{-1} = 0."""
    bsz, length, dim = b.shape
    if length <= CHUNK:
        return _hillis_steele(log_a, b)[1]
    n_chunks = -(-length // CHUNK)
    pad = n_chunks * CHUNK - length
    if pad:
        log_a = torch.nn.functional.pad(log_a, (0, 0, 0, pad))
        b = torch.nn.functional.pad(b, (0, 0, 0, pad))
    log_a = log_a.view(bsz, n_chunks, CHUNK, dim)
    b = b.view(bsz, n_chunks, CHUNK, dim)
    la_prefix, h_local = _hillis_steele(log_a, b)  # (B, C, L, D): within-chunk log products and states
    # state at the end of each chunk: the same recurrence over chunk totals, one level up
    h_end = _scan_pairs(la_prefix[:, :, -1], h_local[:, :, -1])  # (B, C, D)
    h_start = torch.cat([torch.zeros_like(h_end[:, :1]), h_end[:, :-1]], dim=1)  # state entering each chunk
    h = torch.addcmul(h_local, la_prefix.exp(), h_start.unsqueeze(2))
    return h.view(bsz, n_chunks * CHUNK, dim)[:, :length]


def scan_chunked(log_a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """Pure-PyTorch parallel scan, no autograd of its own (see `scan`). Shapes as `scan_reference`."""
    if h0 is not None:
        b = torch.cat([torch.addcmul(b[:, :1], log_a[:, :1].exp(), h0.unsqueeze(1)), b[:, 1:]], dim=1)
    return _scan_pairs(log_a, b)


def _forward_kernel(log_a: Tensor) -> type[_ScanFn]:
    """The one place the fast path is chosen: Triton on CUDA where it imports, else pure PyTorch."""
    if log_a.is_cuda:
        from sm1 import scan_triton

        if scan_triton.available():
            return _ScanTriton
    return _ScanChunked


class _ScanFn(torch.autograd.Function):
    """Exact scan with the reverse-scan backward; subclasses pick the forward kernel."""

    @staticmethod
    def kernel(log_a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:
        raise NotImplementedError

    @classmethod
    def forward(cls, ctx, log_a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:  # type: ignore[override]
        h = cls.kernel(log_a, b, h0)
        ctx.save_for_backward(log_a, h, h0)
        return h

    @classmethod
    def backward(cls, ctx, grad_h: Tensor):  # type: ignore[override]
        log_a, h, h0 = ctx.saved_tensors
        # adjoint: delta_t = g_t + a_{t+1} delta_{t+1}, i.e. the forward scan on flipped inputs
        log_a_next = torch.cat([log_a[:, 1:], torch.zeros_like(log_a[:, :1])], dim=1)
        delta = cls.kernel(log_a_next.flip(1), grad_h.contiguous().flip(1), None).flip(1)
        h_prev = torch.cat([torch.zeros_like(h[:, :1]) if h0 is None else h0.unsqueeze(1), h[:, :-1]], dim=1)
        grad_log_a = delta * h_prev * log_a.exp()  # dL/da_t * da_t/dlog_a_t
        grad_h0 = None if h0 is None else delta[:, 0] * log_a[:, 0].exp()
        return grad_log_a, delta, grad_h0


class _ScanChunked(_ScanFn):
    kernel = staticmethod(scan_chunked)


class _ScanTriton(_ScanFn):
    """The Triton kernels (CUDA), with their fused reverse-scan backward."""

    @staticmethod
    def kernel(log_a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:
        from sm1.scan_triton import scan_triton

        return scan_triton(log_a, b, h0)

    @staticmethod
    def backward(ctx, grad_h: Tensor):  # type: ignore[override]
        from sm1.scan_triton import scan_triton_backward

        log_a, h, h0 = ctx.saved_tensors
        return scan_triton_backward(log_a, h, h0, grad_h)


def scan(log_a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """h_t = exp(log_a_t) h_{t-1} + b_t for all t, in parallel, exact, with gradients to log_a, b, h0.

    log_a: (B, T, D) with log_a <= 0 (a = exp(dt * A), A < 0); b: (B, T, D); h0: (B, D) or None.
    Returns h: (B, T, D). Computed in the inputs' dtype: pass float32 (the state is never kept in bf16).
    """
    return _forward_kernel(log_a).apply(log_a.contiguous(), b.contiguous(), h0)
