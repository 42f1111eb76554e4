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


def test_the_loop_logs_a_fault_of_its_own_and_goes_on():
    """An exception outside the engine call (a bug in choosing streams, say) must not end the loop: every
    stream would stop for good while the server went on accepting them."""
    import asyncio

    from server.metrics import Metrics

    class Engine:
        has_pending_input = False

    class Worker:
        engine = Engine()

    class Hub:
        looks = 0

        @property
        def sessions(self):
            self.looks += 1
            if self.looks == 1:
                raise RuntimeError("a fault in the loop's own code")
            return {}

    async def main():
        loop, hub = TickLoop(Worker(), Metrics(), batch_window_s=0.05), Hub()
        task = asyncio.create_task(loop.run(hub))
        await asyncio.sleep(0.3)
        task.cancel()
        return loop.metrics.errors.labels("tick_loop")._value.get(), hub.looks

    errors, looks = asyncio.run(main())
    assert errors == 1 and looks >= 2
