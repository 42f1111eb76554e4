"""`sm1-server --workers N`: N server processes on one port and one device.

One event loop with one engine thread holds a few hundred dense real-time streams (benchmarks/RESULTS.md):
past that, the per-session Python of ticks and sockets is the limit, not the device. So each worker here is
a whole server (its own engine and sessions on the same GPU or CPU), listening on the shared port with
SO_REUSEPORT (the kernel spreads connections evenly) and on a unix socket of its own, through which the
others pass on calls for its sessions (server/peers.py). This process only starts the workers, restarts one
that dies, and on SIGTERM/SIGINT has every worker drain its streams (`end`, close 1001) before it exits.
Linux (SO_REUSEPORT spreads connections there; macOS binds the port but does not spread them); on Windows,
run one worker.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

import httpx

from server.settings import Settings

log = logging.getLogger("sm1.server")

READY_TIMEOUT_S = 300.0  # a worker loading a checkpoint and capturing CUDA graphs
MAX_QUICK_DEATHS = 3  # a worker that dies this many times within a minute of starting is not restarted


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound with SO_REUSEPORT (not yet listening): every worker binds its own on the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def worker_main(settings: Settings, index: int, run_dir: Path) -> None:
    """One worker process: the app on the shared port and on its own unix socket."""
    _die_with_parent()
    from server.main import serve  # the worker imports torch and the app only here, after the spawn
    from server.peers import Peers

    logging.basicConfig(
        level=settings.log_level.upper(), format=f"%(asctime)s %(levelname)s %(name)s [w{index}]: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per call between workers
    peers = Peers(index, settings.workers, run_dir)
    uds = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = peers.socket_path(index)
    path.unlink(missing_ok=True)  # a restarted worker's predecessor left it
    uds.bind(str(path))
    serve(settings, [listening_socket(settings.host, settings.port), uds], peers)


def run_workers(settings: Settings) -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        sys.exit("sm1-server: several workers need SO_REUSEPORT (Linux): run one (SM1_WORKERS=1)")
    run_dir = Path(tempfile.mkdtemp(prefix="sm1-"))
    metrics_dir = run_dir / "metrics"
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # read by prometheus_client in each worker
    hold = listening_socket(settings.host, settings.port)  # holds the port (0: the OS picks one) for the workers
    settings = settings.model_copy(update={"port": hold.getsockname()[1]})
    supervisor = Supervisor(settings, run_dir)
    try:
        supervisor.run()
    finally:
        hold.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    sys.exit(supervisor.exit_code)


class Supervisor:
    def __init__(self, settings: Settings, run_dir: Path) -> None:
        self.settings, self.run_dir = settings, run_dir
        self.context = mp.get_context("spawn")  # a fresh interpreter: no CUDA context or threads inherited
        self.procs: dict[int, BaseProcess] = {}
        self.started: dict[int, list[float]] = {}
        self.stopping = False
        self.exit_code = 0

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for i in range(self.settings.workers):
            self._start(i)
        if self._wait_ready():
            s = self.settings
            log.info("%d workers serving on http://%s:%d", s.workers, s.host, s.port)
        while self.procs:
            ended = wait([p.sentinel for p in self.procs.values()], timeout=1.0)
            for i, p in [(i, p) for i, p in self.procs.items() if p.sentinel in ended]:
                self._ended(i, p)

    def _start(self, i: int) -> None:
        p = self.context.Process(target=worker_main, args=(self.settings, i, self.run_dir), name=f"sm1-worker-{i}")
        p.start()
        self.procs[i] = p
        self.started.setdefault(i, []).append(time.monotonic())

    def _ended(self, i: int, p: BaseProcess) -> None:
        p.join()
        del self.procs[i]
        _forget_metrics(p.pid)
        if self.stopping:
            return
        recent = [t for t in self.started[i] if t > time.monotonic() - 60]
        if len(recent) >= MAX_QUICK_DEATHS:
            log.error("worker %d exited with %s %d times in a minute: stopping the server", i, p.exitcode, len(recent))
            self.exit_code = 1
            self._stop()
            return
        log.error("worker %d exited with %s (its sessions are lost): starting it again", i, p.exitcode)
        self._start(i)

    def _wait_ready(self) -> bool:
        """Every worker answers /healthz on its unix socket (False: one died first, or stopping)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        for i in range(self.settings.workers):
            path = str(self.run_dir / f"w{i}.sock")
            with httpx.Client(transport=httpx.HTTPTransport(uds=path), base_url="http://sm1", timeout=5) as c:
                while time.monotonic() < deadline and not self.stopping and self.procs[i].is_alive():
                    try:
                        if c.get("/healthz", params={"scope": "worker"}).status_code == 200:
                            break
                    except httpx.HTTPError:
                        time.sleep(0.2)
                else:
                    return False
        return True

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self.stopping:  # a second signal: no more waiting for drains
            log.warning("signal %d again: killing the workers", sig)
            for p in self.procs.values():
                p.kill()
            return
        log.info("signal %d: every worker drains its streams, then exits", sig)
        self._stop()

    def _stop(self) -> None:
        self.stopping = True
        for p in self.procs.values():
            if p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)


def _forget_metrics(pid: int | None) -> None:
    """A worker's gauges (sessions, connections) leave the sums when it does."""
    if pid is not None and "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker if sm1-server itself dies (even by SIGKILL), so no worker outlives it;
    and its own process group, so a terminal's Ctrl-C reaches sm1-server alone, which then stops each once."""
    os.setpgrp()
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
