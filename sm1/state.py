"""The per-session recurrent state: the only thing a session owns on the device.

For every layer: the ssm state h (d_inner x d_state, always fp32: a bf16 state drifts 8-17% from the
reference) and the conv window (the last d_conv - 1 inputs of the causal conv). Both are counted and
reported; the ssm part alone is what the SM1 post quoted, and it is the smaller part.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sm1.blob import pack_blob, split_blob

if TYPE_CHECKING:
    from sm1.model import SM1Config

MAGIC = b"SM1S"
VERSION = 1


class StateFormatError(ValueError):
    """A state blob that does not belong to this model (other config, other version, damaged bytes)."""


@dataclass(frozen=True)
class StateFloats:
    """Floats of one session's state, by part."""

    ssm: int
    conv: int

    @property
    def total(self) -> int:
        return self.ssm + self.conv


def state_floats(config: SM1Config) -> StateFloats:
    return StateFloats(
        ssm=config.n_layer * config.d_inner * config.d_state,
        conv=config.n_layer * config.d_inner * (config.d_conv - 1),
    )


def config_fingerprint(config: SM1Config) -> str:
    """Names the state layout: a state restores only into a model with the same fingerprint."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class SM1State:
    ssm: Tensor  # (n_layer, B, d_inner, d_state) float32
    conv: Tensor  # (n_layer, B, d_conv - 1, d_inner) model dtype: channels innermost, so a step's window
    # shift and conv are copies and reductions over whole rows (a 3-wide innermost dim made them 4x slower)

    @classmethod
    def zeros(
        cls, config: SM1Config, batch: int, device: torch.device | str | None = None, dtype=torch.float32
    ) -> SM1State:
        """The state before any token."""
        return cls(
            ssm=torch.zeros(config.n_layer, batch, config.d_inner, config.d_state, device=device),
            conv=torch.zeros(config.n_layer, batch, config.d_conv - 1, config.d_inner, device=device, dtype=dtype),
        )

    @property
    def batch_size(self) -> int:
        return self.ssm.shape[1]

    def nbytes(self) -> int:
        return self.ssm.nbytes + self.conv.nbytes

    def clone(self) -> SM1State:
        return SM1State(self.ssm.clone(), self.conv.clone())

    def select(self, idx: Tensor | list[int]) -> SM1State:
        """A copy of the rows `idx` (sessions) of this state."""
        idx = torch.as_tensor(idx, device=self.ssm.device)
        return SM1State(self.ssm.index_select(1, idx), self.conv.index_select(1, idx))

    def assign(self, idx: Tensor | list[int], other: SM1State) -> None:
        """Write `other`'s rows into rows `idx` of this state, in place."""
        idx = torch.as_tensor(idx, device=self.ssm.device)
        self.ssm.index_copy_(1, idx, other.ssm.to(self.ssm))
        self.conv.index_copy_(1, idx, other.conv.to(self.conv))

    def to_bytes(self, config: SM1Config) -> bytes:
        """Versioned blob: header (config fingerprint, shapes, dtypes, payload digest) + raw tensors."""
        payload = b"".join(_raw(t) for t in (self.ssm, self.conv))
        header = json.dumps(
            {
                "fingerprint": config_fingerprint(config),
                "batch": self.batch_size,
                "conv_dtype": str(self.conv.dtype).removeprefix("torch."),
                "sha256": hashlib.sha256(payload).hexdigest(),
            }
        ).encode()
        return pack_blob(MAGIC, VERSION, header, payload)

    @classmethod
    def from_bytes(cls, data: bytes, config: SM1Config, device: torch.device | str = "cpu") -> SM1State:
        """Parse a blob from `to_bytes`, refusing one from another model, version or a damaged one."""
        head, payload = split_blob(data, MAGIC, VERSION, "state blob", StateFormatError)
        try:
            header = json.loads(head)
            batch, conv_dtype = int(header["batch"]), getattr(torch, header["conv_dtype"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise StateFormatError(f"state blob header is unreadable: {e}") from e
        if header["fingerprint"] != config_fingerprint(config):
            raise StateFormatError("state blob was made by a model with another config; it cannot be restored here")
        if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
            raise StateFormatError("state blob is damaged (payload digest does not match)")
        template = cls.zeros(config, batch, dtype=conv_dtype)
        n_ssm = template.ssm.nbytes
        if len(payload) != n_ssm + template.conv.nbytes:
            raise StateFormatError("state blob has the wrong size for this model")
        ssm = torch.frombuffer(bytearray(payload[:n_ssm]), dtype=torch.float32).view_as(template.ssm)
        conv = torch.frombuffer(bytearray(payload[n_ssm:]), dtype=conv_dtype).view_as(template.conv)
        return cls(ssm.to(device), conv.to(device))


def _raw(t: Tensor) -> bytes:
    return t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes()
