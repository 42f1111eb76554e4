"""One batched decode step over rows of the session pool: padded, graph-captured, or fused."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from sm1.model import SM1
from sm1.state import SM1State

log = logging.getLogger(__name__)

MIN_EAGER_ROWS = 16  # BLAS gives each row the same bits for every batch of at least this many rows


class BatchedStep:
    """`model.step` on rows `slots` of the pool; on CUDA, replayed from one CUDA graph per batch bucket.

    Buckets are powers of two; padding rows point at a scratch slot (the pool's last row), so the graph
    reads and writes the pool in place and no state is copied in or out of graph buffers. The fused step
    works on the pool rows in place, where padding rows sharing the scratch slot would race (and make a
    captured graph disagree with itself): its padding rows get slot -1, which its kernels skip.

    Eagerly, a batch of fewer than MIN_EAGER_ROWS is padded up to it the same way: below that size BLAS picks
    other kernels per batch size (other summation orders), so a session's logits would change in their last
    bits as others come and go, and a seeded stream could take another turn. From 16 rows on, the CPU kernels
    give a row the same bits whatever the batch (tests/server/test_engine.py checks it bit for bit); it costs
    a lone session about 2 ms a step more on a 2-core CPU. On CUDA, each bucket has its own cuBLAS kernels,
    so there the promise is only "the same up to the last bits".
    """

    def __init__(self, model: SM1, pool: SM1State, scratch_slot: int, use_graphs: bool, fused: bool = False) -> None:
        self.model, self.pool, self.scratch = model, pool, scratch_slot
        self.device = pool.ssm.device
        self.use_graphs = use_graphs and self.device.type == "cuda"
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, GraphInputs, Tensor]] = {}
        self._mempool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self.fused = fused and self._fused_step_agrees()
        self.pad_slot = -1 if self.fused else scratch_slot

    def _fused_step_agrees(self) -> bool:
        """The Triton step (sm1/step_triton.py) against the eager one, on the scratch row: used only if it
        compiles here and gives the same logits and state."""
        slots = torch.tensor([self.scratch], device=self.device)
        tokens = torch.tensor([1], device=self.device)
        saved = self.pool.select(slots)
        try:
            want = self.model.step(tokens, self.pool, slots=slots)
            after = self.pool.select(slots)
            self.pool.assign(slots, saved)
            got = self.model.step(tokens, self.pool, slots=slots, fused=True)
            # the fused kernels compute in fp32 whatever the weights: in bf16 the eager step is the rougher one
            tol = 1e-3 if self.model.embedding.weight.dtype == torch.float32 else 5e-2
            agrees = _close(got, want, tol) and _close(self.pool.select(slots).ssm, after.ssm, tol)
        except Exception as e:  # no GPU Triton can compile for, or a kernel bug: serve with the eager step
            log.warning("the fused Triton step failed here (%s): using the eager step", e)
            agrees = False
        else:
            if not agrees:
                log.warning("the fused Triton step does not reproduce the eager step here: using the eager step")
        self.pool.assign(slots, saved)
        return agrees

    def rows(self, batch: int) -> int:
        """Rows a step of `batch` sessions computes (padding included): sessions up to this many ride free."""
        if self.use_graphs:
            return 1 << (batch - 1).bit_length()
        return max(batch, MIN_EAGER_ROWS)

    def __call__(self, tokens: Tensor, slots: Tensor, rows: slice | None = None) -> Tensor:
        """tokens, slots (B,) int64 on the device -> logits (B, V). `rows`: the slots are exactly this
        range, so (eagerly) the step can work on a view of the pool, with no gather and scatter."""
        B = tokens.shape[0]
        bucket = self.rows(B)
        if not self.use_graphs:
            if pad := bucket - B:
                tokens = torch.cat([tokens, tokens.new_zeros(pad)])
                slots = torch.cat([slots, slots.new_full((pad,), self.pad_slot)])
                return self.model.step(tokens, self.pool, slots=slots, fused=self.fused)[:B]
            if rows is not None:
                return self.model.step(
                    tokens, SM1State(self.pool.ssm[:, rows], self.pool.conv[:, rows]), fused=self.fused
                )
            return self.model.step(tokens, self.pool, slots=slots, fused=self.fused)
        if bucket not in self._graphs:
            try:
                self._graphs[bucket] = self._capture(bucket)
            except Exception as e:  # a model that cannot be captured still serves, eagerly
                log.warning("CUDA graph capture failed at batch %d (%s): running the step eagerly", bucket, e)
                self.use_graphs = False
                return self.model.step(tokens, self.pool, slots=slots, fused=self.fused)
        graph, inputs, out = self._graphs[bucket]
        inputs.stage(tokens, slots)
        graph.replay()
        return out[:B]

    def _capture(self, bucket: int) -> tuple[torch.cuda.CUDAGraph, GraphInputs, Tensor]:
        inputs = GraphInputs(bucket, self.pad_slot, self.device)
        tok_buf, slot_buf = inputs.tokens, inputs.slots
        saved = self.pool.select([self.scratch])
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up touches only the scratch slot
            for _ in range(2):
                self.model.step(tok_buf, self.pool, slots=slot_buf, fused=self.fused)
        torch.cuda.current_stream().wait_stream(side)
        self.pool.assign([self.scratch], saved)
        eager = self.model.step(tok_buf, self.pool, slots=slot_buf, fused=self.fused)
        self.pool.assign([self.scratch], saved)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._mempool):
            out = self.model.step(tok_buf, self.pool, slots=slot_buf, fused=self.fused)
        graph.replay()
        self.pool.assign([self.scratch], saved)
        if not torch.allclose(out, eager, rtol=1e-3, atol=1e-4):
            raise RuntimeError("the captured step does not reproduce the eager step")
        return graph, inputs, out


class GraphInputs:
    """A captured step's input buffers for one bucket, staged for each replay in as few launches as the call
    allows. Each launch costs about 10 us of host time on an H100 machine, beside a 0.34-ms graph at one row
    (benchmarks/RESULTS.md, 2026-12-05): so padding rows keep the tokens they had (any token is valid there and
    they write nothing), padding slots are written only where a smaller batch leaves rows, and the slots are
    not copied again when the caller passes the same tensor unchanged (same object, same version: the engine
    keeps one while its sessions stay the same). Such a tensor must be changed through torch, which counts
    its versions, not by a kernel writing to its memory behind torch's back."""

    def __init__(self, bucket: int, pad_slot: int, device: torch.device) -> None:
        self.tokens = torch.zeros(bucket, dtype=torch.long, device=device)
        self.slots = torch.full((bucket,), pad_slot, dtype=torch.long, device=device)
        self.pad_slot = pad_slot
        self._live = 0  # leading rows of self.slots that hold a caller's slots; the rest hold pad_slot
        self._copied: tuple[Tensor, int] | None = None  # the slots tensor copied last and its version then

    def stage(self, tokens: Tensor, slots: Tensor) -> None:
        """tokens, slots (B,) on the buffers' device into the first B rows, the rest made padding."""
        B = tokens.shape[0]
        self.tokens[:B].copy_(tokens)
        version = -1 if slots.is_inference() else slots._version  # inference tensors count no versions
        if self._copied is None or self._copied[0] is not slots or self._copied[1] != version or version < 0:
            self.slots[:B].copy_(slots)
        if self._live > B:
            self.slots[B : self._live].fill_(self.pad_slot)
        self._live = B
        self._copied = (slots, version)


def _close(x: Tensor, y: Tensor, tol: float) -> bool:
    """Equal to within `tol` of y's largest magnitude (at least 1)."""
    return bool((x.float() - y.float()).abs().max() <= tol * max(1.0, y.float().abs().max().item()))
