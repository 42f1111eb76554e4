"""Command-line pieces shared by sm1-bridge and sm1-generate: the server, the sampling flags, the prompt."""

from __future__ import annotations

import argparse
import base64
import os
from pathlib import Path
from typing import Any

SAMPLING = ("temperature", "top_p", "top_k", "seed")


def connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=os.environ.get("SM1_SERVER", "127.0.0.1:8000"), help="host:port or URL")
    p.add_argument("--api-key", default=os.environ.get("SM1_API_KEY"), help="the server's API key (or SM1_API_KEY)")


def sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, help="sampling temperature (server default 1.0; 0: greedy)")
    p.add_argument("--top-p", type=float, dest="top_p", help="nucleus sampling threshold (0, 1]")
    p.add_argument("--top-k", type=int, dest="top_k", help="sample among the k most likely tokens (0: off)")
    p.add_argument("--seed", type=int, help="seed: the same seed, prompt and params give the same music")


def sampling_params(args: argparse.Namespace) -> dict[str, Any] | None:
    """The sampling flags given, as the protocol's `params` (None: the server's defaults)."""
    params = {k: getattr(args, k) for k in SAMPLING if getattr(args, k) is not None}
    return params or None


def prompt_b64(path: Path | None) -> str | None:
    return base64.b64encode(path.read_bytes()).decode() if path is not None else None
