"""The fused selective scan (sm1/selective_scan_triton.py), run by Triton's CPU interpreter: y, h_T and every
gradient against a float64 sequential loop of the paper's equations, and the model's two paths against
each other. Shapes are small (the interpreter is slow) but cut into several chunks, the last one ragged."""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

TOL = 1e-5  # fp32, as the scan's acceptance bound (DESIGN.md)
# bf16 outputs: rounded to 8 significant bits, 1.7e-3 in norm on the GPU; Triton's interpreter truncates
# instead (up to 2^-7 of each element, 3.4e-3 in norm)
TOL_BF16 = 5e-3
NAMES = ["x", "dt_raw", "A", "B", "C", "D", "z", "h0"]


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref||: a zero output scores 1.0, so it can never pass."""
    return ((x.double() - ref).norm() / ref.norm()).item()


def random_inputs(bsz, length, dim, d_state, dt_lo, dt_hi, seed, with_h0=True):
    """x, dt_raw, A, B, C, D, z, h0 with dt = softplus(dt_raw) log-uniform in [dt_lo, dt_hi] and
    A = -exp(A_log) from -0.37 to -(d_state + 1), as trained models have them."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.empty(bsz, length, dim).uniform_(math.log(dt_lo), math.log(dt_hi), generator=g))
    dt_raw = dt + torch.log(-torch.expm1(-dt))  # inverse softplus
    A = -torch.exp(torch.empty(dim, d_state).uniform_(-1.0, math.log(d_state + 1), generator=g))
    x, z = torch.randn(bsz, length, dim, generator=g), torch.randn(bsz, length, dim, generator=g)
    Bm, Cm = torch.randn(bsz, length, d_state, generator=g), torch.randn(bsz, length, d_state, generator=g)
    h0 = torch.randn(bsz, dim, d_state, generator=g) if with_h0 else None
    return [x, dt_raw, A, Bm, Cm, torch.randn(dim, generator=g), z, h0]


def reference(x, dt_raw, A, Bm, Cm, D, z, h0):
    """The equations one step at a time: y (B, T, E) and h_T (B, E, N). Run it in float64."""
    dt = F.softplus(dt_raw)
    h = torch.zeros(x.shape[0], *A.shape, dtype=x.dtype) if h0 is None else h0
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[:, :, None] * Bm[:, t, None, :]
        ys.append((h * Cm[:, t, None, :]).sum(-1) + D * x[:, t])
    return torch.stack(ys, 1) * F.silu(z), h


def errors(inputs, chunk, swap_bc=False, device="cpu") -> dict[str, float]:
    """Relative error of the fused y, h_T and each gradient against the float64 loop on the same inputs."""
    from sm1.selective_scan_triton import selective_scan_triton

    present = [(name, t) for name, t in zip(NAMES, inputs, strict=True) if t is not None]
    ref_in = [None if t is None else t.double().requires_grad_() for t in inputs]
    y_ref, h_ref = reference(*ref_in)
    gy = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1))
    ref_grads = torch.autograd.grad(y_ref, [t for t in ref_in if t is not None], gy.double())

    mine = [None if t is None else t.to(device).requires_grad_() for t in inputs]
    if swap_bc:
        mine[3], mine[4] = mine[4], mine[3]
    y, h_last = selective_scan_triton(*mine, chunk=chunk)
    assert y.dtype == inputs[0].dtype and h_last.dtype == torch.float32
    grads = torch.autograd.grad(y, [t for t in mine if t is not None], gy.to(y))
    if swap_bc:
        grads = [grads[i] for i in (0, 1, 2, 4, 3, *range(5, len(grads)))]
    y, h_last, grads = y.cpu(), h_last.cpu(), [g.cpu() for g in grads]
    errs = {"y": rel_err(y, y_ref.detach()), "h_T": rel_err(h_last, h_ref.detach())}
    for (name, _), g, rg in zip(present, grads, ref_grads, strict=True):
        assert g.dtype == dict(present)[name].dtype, name
        errs[f"d{name}"] = rel_err(g, rg) if torch.isfinite(g).all() else math.inf
    return errs


def run_in_interpreter(code: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-c", textwrap.dedent(code)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout[-2000:] + result.stderr[-2000:]
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), output


def test_fused_scan_matches_the_float64_loop_forward_and_backward():
    pytest.importorskip("triton", reason="Triton is not installed on this platform")
    run_in_interpreter(
        """
        import torch
        from tests.model.test_selective_scan_triton import TOL, TOL_BF16, errors, random_inputs

        # (B, T, E, N, dt range, h0, chunk): many chunks with a ragged last one, one chunk, the default;
        # two channel blocks of each launch (E=70); sharp and tiny dt; N=1, 4, 16 and one not a power of two
        cases = [
            (2, 37, 70, 1, 1e-4, 10.0, True, 8),
            (1, 37, 40, 1, 1e-4, 1e-4, False, None),
            (1, 37, 40, 1, 10.0, 10.0, True, 8),
            (1, 29, 40, 4, 1e-3, 1.0, True, 8),
            (1, 21, 40, 16, 1e-4, 10.0, False, 16),
            (1, 13, 40, 3, 1e-2, 3.0, True, 4),
        ]
        for seed, (bsz, length, dim, n, lo, hi, with_h0, chunk) in enumerate(cases):
            errs = errors(random_inputs(bsz, length, dim, n, lo, hi, seed, with_h0), chunk)
            assert max(errs.values()) <= TOL, (bsz, length, dim, n, lo, hi, with_h0, chunk, errs)

        # bf16 activations (autocast training): against the loop on the same bf16 values, in float64
        inputs = random_inputs(1, 29, 40, 4, 1e-3, 3.0, seed=9)
        for i in (0, 1, 3, 4, 6):  # x, dt_raw, B, C, z; A, D and h0 stay fp32 as in the model
            inputs[i] = inputs[i].bfloat16()
        errs = errors(inputs, chunk=8)
        assert max(errs.values()) <= TOL_BF16, errs

        # the check has teeth: B and C swapped is caught in y and in the gradients
        errs = errors(random_inputs(1, 13, 40, 4, 1e-3, 1.0, seed=3), chunk=4, swap_bc=True)
        assert min(errs["y"], errs["dB"], errs["dC"]) > 0.1, errs
        print("ok")
        """
    )


def test_mixer_forward_fused_equals_the_pure_path():
    """MambaBlock.forward through the fused layer and through sm1.scan with PyTorch around it: logits, both
    states and every parameter's gradient; then a prompt prefill from a carried state under no_grad."""
    pytest.importorskip("triton", reason="Triton is not installed on this platform")
    run_in_interpreter(
        """
        import copy
        import torch
        from sm1 import model as sm1_model
        from sm1.model import SM1, SM1Config
        from tests.model.test_selective_scan_triton import TOL, rel_err

        for d_state, seed in [(1, 0), (4, 1)]:
            torch.manual_seed(seed)
            pure = SM1(SM1Config(vocab_size=443, d_model=32, n_layer=1, d_state=d_state))
            with torch.no_grad():  # trained-looking parameters, not the init's zeros and ones
                for p in pure.parameters():
                    p.add_(0.1 * torch.randn_like(p))
            fused = copy.deepcopy(pure)
            tokens = torch.randint(0, 443, (2, 21))
            runs = {}
            for name, model in (("pure", pure), ("fused", fused)):
                sm1_model.FUSED_LAYER = name == "fused"
                logits, state = model(tokens)
                logits.square().mean().backward()
                with torch.no_grad():  # prefill a continuation from the carried state
                    more, after = model(tokens[:, :11], state.clone())
                grads = {k: p.grad for k, p in model.named_parameters()}
                runs[name] = (logits.detach(), state, more, after, grads)
            (l1, s1, m1, a1, g1), (l2, s2, m2, a2, g2) = runs["pure"], runs["fused"]
            for what, got, want in [("logits", l2, l1), ("ssm", s2.ssm, s1.ssm), ("conv", s2.conv, s1.conv),
                                    ("prefill logits", m2, m1), ("prefill ssm", a2.ssm, a1.ssm)]:
                assert rel_err(got, want.double()) <= TOL, (what, d_state, rel_err(got, want.double()))
            for k in g1:
                assert rel_err(g2[k], g1[k].double()) <= TOL, (k, d_state, rel_err(g2[k], g1[k].double()))
        print("ok")
        """
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the compiled kernels, not the interpreter")
@pytest.mark.parametrize("d_state", [1, 16])
@pytest.mark.parametrize("dt_lo,dt_hi", [(1e-3, 0.1), (1e-4, 10.0)])
def test_compiled_kernels_match_the_float64_loop_at_training_lengths(d_state, dt_lo, dt_hi):
    """On a GPU: the default chunking of a 2048-step sequence (CT=64, 32 chunks), fp32, then bf16 activations."""
    pytest.importorskip("triton")
    inputs = random_inputs(2, 2048, 192, d_state, dt_lo, dt_hi, seed=d_state)
    errs = errors(inputs, chunk=None, device="cuda")
    assert max(errs.values()) <= TOL, errs
    for i in (0, 1, 3, 4, 6):
        inputs[i] = inputs[i].bfloat16()
    errs = errors(inputs, chunk=None, device="cuda")
    assert max(errs.values()) <= TOL_BF16, errs
