"""What the routes share: settings, the loaded checkpoint, the engine, its worker thread, the session hub
and the tick loop. Started once in the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import torch

from server import faults
from server.metrics import Metrics
from server.peers import Peers
from server.sessions import EngineWorker, SessionHub
from server.settings import Settings
from server.tick import TickLoop
from sm1.checkpoint import LoadedCheckpoint, load
from sm1.engine import Engine

log = logging.getLogger("sm1.server")


@dataclass
class Runtime:
    settings: Settings
    checkpoint: LoadedCheckpoint
    engine: Engine
    worker: EngineWorker
    metrics: Metrics
    tick: TickLoop
    hub: SessionHub
    peers: Peers | None = None  # the other workers, if there are any (server/peers.py)
    tasks: list[asyncio.Task] = field(default_factory=list)

    @classmethod
    async def start(
        cls, settings: Settings, checkpoint: LoadedCheckpoint | None = None, peers: Peers | None = None
    ) -> Runtime:
        """`checkpoint`: already loaded on settings' device (sm1-server loads it first, to fail in one line)."""
        device = settings.torch_device()
        if device.type == "cpu":
            torch.set_num_threads(settings.cpu_threads())
        ck = checkpoint or await asyncio.to_thread(load, settings.checkpoint, device)
        ck.model.to(getattr(torch, settings.weights_dtype))  # the engine's pool takes the conv window's dtype from it
        engine = Engine(
            ck.model,
            ck.tokenizer,
            settings.max_sessions,
            prefill_chunk=settings.prefill_chunk,
            prefill_budget=settings.prefill_tokens(device),
            cuda_graphs=settings.cuda_graphs,
            fused_step=settings.fused_step,
            snapshot_key=settings.snapshot_key.get_secret_value().encode() if settings.snapshot_key else None,
        )
        faults.install(engine, settings.inject_faults)
        worker, metrics = EngineWorker(engine), Metrics()
        tick = TickLoop(worker, metrics, settings.batch_window_s)
        hub = SessionHub(worker, ck.name, settings, metrics, tick.wake, peers.id_prefix if peers else "")
        rt = cls(settings, ck, engine, worker, metrics, tick, hub, peers)
        rt.tasks = [asyncio.create_task(t) for t in (tick.run(hub), hub.reap_idle(), hub.watch_sends())]
        floats = engine.state_floats
        log.info(
            "model %s (%s, %d params) on %s, %d threads: %d slots, state %d floats (ssm %d + conv %d) per session",
            ck.name, ck.path, ck.model.num_params(), device, torch.get_num_threads(), settings.max_sessions,
            floats.total, floats.ssm, floats.conv,
        )  # fmt: skip
        return rt

    async def stop(self) -> None:
        if self.hub.accepting:  # not drained by sm1-server's SIGTERM handler: do it now
            await self.hub.drain(self.settings.shutdown_grace_s)
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.to_thread(self.worker.close)
        if self.peers is not None:
            await self.peers.close()
