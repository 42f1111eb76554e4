"""The fused decode step (sm1/step_persistent.py for one row, sm1/step_triton.py for more) against the eager
step in float64 on fresh random models, states and scattered pool slots: in Triton's CPU interpreter (CI), and
compiled on a GPU where there is one, where a CUDA graph's replay and the persistent kernel's barriers must
also give the bits of the same kernels launched one by one."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_the_fused_step_matches_the_float64_eager_step(device):
    """cpu: the kernels in Triton's interpreter; cuda: compiled."""
    pytest.importorskip("triton", reason="Triton is not installed on this platform")
    code = textwrap.dedent(
        """
        import copy
        import sys
        import torch
        from sm1.model import SM1, SM1Config
        from sm1 import step_triton

        dev = torch.device(sys.argv[1])
        assert step_triton.available(dev)
        # one block of channels (E=96) and a ragged third one (E=320); d_state 1 and 4; both launch plans (one
        # row: every layer in the persistent kernel, phase by phase under the interpreter; more rows: the tiles)
        cases = [(48, 1, 0, 1), (160, 1, 1, 3), (48, 4, 2, 1), (160, 4, 3, 1), (160, 1, 4, 20), (48, 4, 5, 20)]
        for d_model, d_state, seed, rows in cases:
            torch.manual_seed(seed)
            model = SM1(SM1Config(vocab_size=443, d_model=d_model, n_layer=2, d_state=d_state)).eval().to(dev)
            with torch.no_grad():  # trained-looking parameters, not the init's zeros and ones
                for p in model.parameters():
                    p.add_(0.1 * torch.randn_like(p))
            pool = model.allocate_state(41)
            pool.ssm.normal_()
            pool.conv.normal_()
            slots = torch.randperm(40)[:rows].to(dev)
            tokens = torch.randint(0, 443, (rows,)).to(dev)
            ref_model, ref_pool = copy.deepcopy(model).double(), copy.deepcopy(pool)
            ref_pool.ssm, ref_pool.conv = ref_pool.ssm.double(), ref_pool.conv.double()
            for step in range(2):  # twice: the second step reads what the first wrote into the pool
                got = model.step(tokens, pool, slots=slots, fused=True)
                ref = ref_model.step(tokens, ref_pool, slots=slots)
                err = (got.double() - ref).abs().max().item() / ref.abs().max().item()
                assert err <= 1e-5, ("logits", d_model, d_state, step, err)
            for mine, want in ((pool.ssm, ref_pool.ssm), (pool.conv, ref_pool.conv)):
                assert (mine.double() - want).abs().max().item() <= 1e-5 * want.abs().max().item(), (d_model, d_state)
            untouched = [s for s in range(41) if s not in slots.tolist()]
            assert torch.equal(pool.ssm[:, untouched].double(), ref_pool.ssm[:, untouched])
            # the engine's batched step takes it after its own check against the eager step
            from sm1.batched_step import BatchedStep
            batched = BatchedStep(model, pool, scratch_slot=40, use_graphs=False, fused=True)
            assert batched.fused
            ref = ref_model.step(tokens, ref_pool, slots=slots)
            scratch = pool.ssm[:, 40].clone(), pool.conv[:, 40].clone()
            got = batched(tokens, slots)  # rows padded to 16 with slot -1: read as zeros, never written
            assert (got.double() - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
            assert torch.equal(pool.ssm[:, 40], scratch[0]) and torch.equal(pool.conv[:, 40], scratch[1])
            ref = ref_model.step(tokens, ref_pool, slots=slots)
            with_pad = torch.cat([tokens[:1], tokens])  # a padding row (slot -1) second
            padded_slots = torch.cat([slots[:1], torch.tensor([-1], device=dev), slots[1:]])
            got = model.step(with_pad, pool, slots=padded_slots, fused=True)[[0, *range(2, rows + 1)]]
            assert (got.double() - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
            for mine, want in ((pool.ssm, ref_pool.ssm), (pool.conv, ref_pool.conv)):
                assert (mine.double() - want).abs().max().item() <= 1e-5 * want.abs().max().item()
        # weights changed in place are seen by the next fused step of either plan: nothing derived goes stale
        for n, scale in ((1, 1.0), (20, -1.0)):
            with torch.no_grad():
                for net in (model, ref_model):
                    net.layers[0].mixer.A_log.add_(0.5 * scale)
                    net.layers[1].mixer.conv1d.weight.mul_(1.5)
                    net.layers[0].norm.weight.mul_(1.25)  # folded into the decode layout of in_proj
                    net.layers[1].mixer.x_proj.weight.add_(0.05 * scale)
                    net.layers[0].mixer.out_proj.weight.mul_(0.75)
                    net.layers[1].mixer.dt_proj.bias.add_(0.1 * scale)
            ref = ref_model.step(tokens[:n], ref_pool, slots=slots[:n])
            got = model.step(tokens[:n], pool, slots=slots[:n], fused=True)
            assert (got.double() - ref).abs().max().item() <= 1e-5 * ref.abs().max().item(), ("weights", n)
        for n in (1, 1, 20):  # the head alone (in the one-row kernel with norm_f's weight folded in), twice at one
            # row: the first step also sees the layers changed above, the second only the head
            with torch.no_grad():
                for net in (model, ref_model):
                    net.norm_f.weight.mul_(1.1)
                    net.lm_head.weight.mul_(0.9)
            ref = ref_model.step(tokens[:n], ref_pool, slots=slots[:n])
            got = model.step(tokens[:n], pool, slots=slots[:n], fused=True)
            assert (got.double() - ref).abs().max().item() <= 1e-5 * ref.abs().max().item(), ("head", n)
        # in bf16 (the GPU's serving dtype) the engine's start-up check passes too, within bf16's rounding
        bf16 = SM1(SM1Config(vocab_size=443, d_model=48, n_layer=2)).eval().to(dev, torch.bfloat16)
        pool = bf16.allocate_state(5)
        pool.ssm.normal_()
        pool.conv.normal_()
        assert BatchedStep(bf16, pool, scratch_slot=4, use_graphs=False, fused=True).fused
        if dev.type == "cuda":
            # a CUDA graph replays the very kernels of the eager fused step, so it must give the same bits: a
            # difference is a race between kernels (programmatic dependent launch lets them overlap)
            torch.manual_seed(9)
            wide = SM1(SM1Config(vocab_size=443, d_model=768, n_layer=4)).eval().to(dev, torch.bfloat16)
            # the persistent kernel's barriers: one launch gives the bits of one launch per phase
            from sm1 import step_persistent
            for slots in ([2], [3, 0, 1]):  # one row (the kernel's own case, compiled for it) and three
                pool = wide.allocate_state(5)
                pool.ssm.normal_()
                pool.conv.normal_()
                twin, u = pool.clone(), wide.embedding(torch.tensor([5, 7, 9][: len(slots)], device=dev))
                slots = torch.tensor(slots, device=dev)
                for step, block_c in enumerate((16, 16, 8)):  # 8: 192 programs, more than most GPUs hold at once
                    step_persistent.BLOCK_C = block_c
                    one = step_persistent.step_logits(wide, u.clone(), pool.ssm, pool.conv, slots)
                    step_persistent.GRID_SYNC = False
                    phased = step_persistent.step_logits(wide, u.clone(), twin.ssm, twin.conv, slots)
                    step_persistent.GRID_SYNC = True
                    assert torch.equal(one, phased) and torch.equal(pool.ssm, twin.ssm), ("barriers", len(slots), step)
                step_persistent.BLOCK_C = 16
            for rows in (1, 3, 20):
                bucket = 1 << (rows - 1).bit_length()
                pool = wide.allocate_state(rows + 1)
                pool.ssm.normal_()
                pool.conv.normal_()
                twin = pool.clone()
                graphed = BatchedStep(wide, pool, scratch_slot=rows, use_graphs=True, fused=True)
                slots = torch.randperm(rows, device=dev)
                pad = torch.full((bucket - rows,), -1, device=dev)
                for step in range(4):
                    tokens = torch.randint(0, 443, (rows,), device=dev)
                    got = graphed(tokens, slots)
                    padded = torch.cat([tokens, torch.zeros_like(pad)])
                    want = wide.step(padded, twin, slots=torch.cat([slots, pad]), fused=True)[:rows]
                    assert graphed._graphs and torch.equal(got, want), ("graph", rows, step)
                assert torch.equal(pool.ssm, twin.ssm) and torch.equal(pool.conv, twin.conv), ("graph state", rows)
            # one graph (bucket 8) over changing batches, one slots tensor passed again, changed in place once:
            # the staged inputs (GraphInputs) leave no stale slot or token behind
            pool = wide.allocate_state(9)
            pool.ssm.normal_()
            pool.conv.normal_()
            twin = pool.clone()
            graphed = BatchedStep(wide, pool, scratch_slot=8, use_graphs=True, fused=True)
            same, other = torch.tensor([4, 1, 6, 0, 3], device=dev), torch.tensor([7, 2, 5, 0, 1, 3, 6], device=dev)
            for step, slots in enumerate((same, same, same[:3], other, same, same, same)):
                if step == 5:
                    same[0] = 2
                tokens = torch.randint(0, 443, (len(slots),), device=dev)
                got = graphed(tokens, slots)
                pad = torch.full((8 - len(slots),), -1, device=dev)
                want = wide.step(torch.cat([tokens, 0 * pad]), twin, slots=torch.cat([slots, pad]), fused=True)
                assert torch.equal(got, want[: len(slots)]), ("staged", step)
            assert torch.equal(pool.ssm, twin.ssm) and torch.equal(pool.conv, twin.conv), "staged state"
        print("ok")
        """
    )
    env = dict(os.environ, TRITON_INTERPRET="1" if device == "cpu" else "0")
    result = subprocess.run([sys.executable, "-c", code, device], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
