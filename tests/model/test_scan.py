"""The scan is exact and stable: every path against a float64 sequential loop, forward and gradients."""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from sm1 import scan as scan_module
from sm1.scan import scan, scan_chunked, scan_reference

TOL = 1e-5  # relative error in float32, the acceptance bound of DESIGN.md


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref||: a zero output scores 1.0, so it can never pass."""
    return ((x.double() - ref).norm() / ref.norm()).item()


def random_inputs(bsz, length, dim, dt_lo, dt_hi, seed, with_h0=True):
    """log_a = dt * A with A = -1 and dt log-uniform in [dt_lo, dt_hi]; b and h0 standard normal."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.empty(bsz, length, dim).uniform_(math.log(dt_lo), math.log(dt_hi), generator=g))
    b = torch.randn(bsz, length, dim, generator=g)
    h0 = torch.randn(bsz, dim, generator=g) if with_h0 else None
    return -dt, b, h0


DT_RANGES = [(1e-4, 1e-4), (1e-4, 1e-3), (1e-3, 0.1), (0.01, 1.0), (1.0, 10.0), (10.0, 10.0), (1e-4, 10.0)]


@pytest.mark.parametrize("dt_lo,dt_hi", DT_RANGES)
@pytest.mark.parametrize("length", [1, 7, 33, 1000, 4096])
def test_scan_matches_float64_loop_for_every_dt(dt_lo, dt_hi, length):
    log_a, b, h0 = random_inputs(2, length, 16, dt_lo, dt_hi, seed=length)
    ref = scan_reference(log_a.double(), b.double(), h0.double())
    out = scan(log_a, b, h0)
    assert out.dtype == torch.float32 and out.shape == b.shape
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= TOL


@pytest.mark.parametrize("dt_lo,dt_hi", [(1e-4, 1e-4), (1e-4, 10.0), (10.0, 10.0)])
def test_scan_forward_and_gradients_exact_at_16384_steps(dt_lo, dt_hi):
    log_a, b, h0 = random_inputs(1, 16384, 8, dt_lo, dt_hi, seed=7)
    grad_out = torch.randn(b.shape, generator=torch.Generator().manual_seed(8))
    ref_inputs = [t.double().requires_grad_() for t in (log_a, b, h0)]
    ref = scan_reference(*ref_inputs)
    ref_grads = torch.autograd.grad(ref, ref_inputs, grad_out.double())

    inputs = [t.clone().requires_grad_() for t in (log_a, b, h0)]
    out = scan(*inputs)
    grads = torch.autograd.grad(out, inputs, grad_out)

    assert rel_err(out, ref.detach()) <= TOL
    for name, g, rg in zip(["log_a", "b", "h0"], grads, ref_grads, strict=True):
        assert torch.isfinite(g).all(), name
        assert rel_err(g, rg) <= TOL, name


def test_published_cumprod_form_is_wrong_where_ours_is_exact():
    """The form shipped with the original SM1, kept here only as the counter-example it is."""
    log_a, b, _ = random_inputs(2, 1024, 64, 1e-3, 0.1, seed=3, with_h0=False)
    ref = scan_reference(log_a.double(), b.double())
    cum = torch.cumprod(log_a.exp(), dim=1)
    published = cum * torch.cumsum(b / cum.clamp(min=1e-6), dim=1)
    assert rel_err(published, ref) > 0.05
    assert rel_err(scan(log_a, b), ref) <= TOL


@pytest.mark.parametrize("chunk", [2, 4, 32])
@pytest.mark.parametrize("length", [1, 5, 37, 130])
def test_scan_gradcheck_float64_through_every_recursion_level(monkeypatch, chunk, length):
    monkeypatch.setattr(scan_module, "CHUNK", chunk)  # small chunks: several levels of recursion at small T
    log_a, b, h0 = random_inputs(2, length, 3, 1e-3, 3.0, seed=length)
    inputs = [t.double().requires_grad_() for t in (log_a, b, h0)]
    assert torch.autograd.gradcheck(lambda la, bb, h: scan(la, bb, h), inputs)
    assert torch.autograd.gradcheck(lambda la, bb: scan(la, bb), inputs[:2])


def test_chunked_path_without_h0_matches_reference():
    log_a, b, _ = random_inputs(3, 2500, 5, 1e-4, 10.0, seed=11, with_h0=False)
    assert rel_err(scan_chunked(log_a, b), scan_reference(log_a.double(), b.double())) <= TOL


def test_triton_kernels_match_reference_in_the_interpreter():
    """The CUDA fast path, forward and backward, run by Triton's CPU interpreter: same oracle, same bound."""
    pytest.importorskip("triton", reason="Triton is not installed on this platform")
    code = textwrap.dedent(
        """
        import torch
        from sm1.scan import scan_reference
        from sm1.scan_triton import scan_triton, scan_triton_backward
        from tests.model.test_scan import random_inputs, rel_err
        # many chunks with a ragged last one, one chunk, the default; two channel blocks (70 > 64)
        cases = [(1e-4, 1e-4, True, 4), (1e-4, 10.0, False, 16), (10.0, 10.0, True, None), (1e-4, 10.0, True, 4)]
        for lo, hi, with_h0, chunk in cases:
            la, b, h0 = random_inputs(2, 37, 70, lo, hi, seed=5, with_h0=with_h0)
            ref_in = [la.double().requires_grad_(), b.double().requires_grad_()]
            ref_in += [h0.double().requires_grad_()] if with_h0 else []
            ref = scan_reference(*ref_in)
            g = torch.randn(b.shape, generator=torch.Generator().manual_seed(9))
            ref_grads = torch.autograd.grad(ref, ref_in, g.double())
            h = scan_triton(la, b, h0, chunk=chunk)
            assert rel_err(h, ref.detach()) <= 1e-5, ("forward", lo, hi, with_h0, chunk)
            grads = scan_triton_backward(la, h, h0, g, chunk=chunk)
            for got, want in zip(grads, ref_grads):
                assert rel_err(got, want) <= 1e-5, ("backward", lo, hi, with_h0, chunk)
        print("ok")
        """
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
