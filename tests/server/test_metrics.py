"""The recent-sample ring behind /healthz's quantiles: exact over its window, fixed in size."""

import time

import pytest

from server.metrics import Recent


def test_the_ring_keeps_the_last_n_samples_and_summarises_a_window():
    ring = Recent(n=100)
    for x in range(250):  # wraps twice: only 150..249 are left
        ring.add(x / 1000)
    s = ring.summary(window_s=60)
    assert s["n"] == 100 and s["max"] == pytest.approx(249) and s["p50"] == pytest.approx(199.5)
    time.sleep(0.05)
    ring.add(1.0)
    assert ring.summary(window_s=0.03) == {"n": 1, "p50": 1000.0, "p99": 1000.0, "max": 1000.0}
    assert Recent(n=10).summary(window_s=60) == {"n": 0}


def test_the_ring_owns_all_its_memory_from_the_start():
    ring = Recent(n=1000)
    before = (ring.times.nbytes + ring.values.nbytes, ring.times.ctypes.data, ring.values.ctypes.data)
    for x in range(5000):
        ring.add(float(x))
    assert (ring.times.nbytes + ring.values.nbytes, ring.times.ctypes.data, ring.values.ctypes.data) == before
