"""Profile the GPT's KV-cache step on a GPU: where compare_models' 60 ms a token went (2026-11-23, H100).

The answer was aten::_cudnn_attention_forward, ~14 ms of CPU a call: cuDNN's attention plans every new shape,
and with a growing cache every step is one; sm1/gpt.py now keeps the cached path off cuDNN. Run it again to
check another GPU or torch version:

    python scripts/profile_gpt_step.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compare_models

from sm1.gpt import GPT, GPTConfig


def main() -> None:
    device = torch.device("cuda")
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=443, d_model=256, n_layer=4, n_head=4)).to(device).eval().to(torch.bfloat16)
    print(compare_models.generation_cost(gpt, 1024, 32, device))
    tokens = torch.randint(0, 443, (1, 1200), device=device)
    state = gpt.allocate_state(1, max_len=1200)
    with torch.no_grad():
        for start in range(0, 1024, 256):
            gpt(tokens[:, start : start + 256], state)
        for i in range(5):
            gpt.step(tokens[:, 1024 + i], state)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(10):
                t = time.perf_counter()
                gpt.step(tokens[:, 1030 + i], state)
                torch.cuda.synchronize()
                print(f"step {(time.perf_counter() - t) * 1e3:.2f} ms")
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=50))


if __name__ == "__main__":
    main()
