"""The tick loop's choice of streams: those due within the batch window, plus, where the step pads its
batch anyway, the next ones due (soonest first, within FILL_WINDOWS windows)."""

from dataclasses import dataclass

from server.tick import FILL_WINDOWS, TickLoop


@dataclass(eq=False)
class Due:
    """A stream that will want a token in `wait` seconds (None: not by the clock: paused, or a full outbox)."""

    wait: float | None

    def seconds_until_wanted(self, now: float) -> float | None:
        return self.wait


def test_free_rows_go_to_the_soonest_due_streams_within_the_fill_horizon():
    loop = TickLoop(worker=None, metrics=None, batch_window_s=0.05)
    ready = [Due(0.0)]
    later = [Due(0.12), Due(None), Due(0.01), Due(0.5), Due(0.15), Due((FILL_WINDOWS - 1) * 0.05 + 0.01)]
    chosen = loop._next_due([*ready, *later], ready, now=0.0, n=3)
    assert [s.wait for s in chosen] == [0.01, 0.12, 0.15]
    assert [s.wait for s in loop._next_due([*ready, *later], ready, now=0.0, n=10)] == [0.01, 0.12, 0.15]
