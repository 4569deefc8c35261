"""ReadBudget: one read per wake-up in an exchange, doubling batches in a burst."""

from __future__ import annotations

from slirpy.runtime.loop import EventLoop, ReadBudget


def test_one_read_per_wake_up_while_items_come_one_at_a_time() -> None:
    loop = EventLoop()
    reads = ReadBudget(loop, 64)
    for _ in range(5):
        loop.polls += 2  # another fd's wake-up in between: a request, then its answer
        assert reads.take() == 1
        reads.used(1)
    loop.close()


def test_a_burst_doubles_the_batch_up_to_the_most_and_a_dry_read_resets_it() -> None:
    loop = EventLoop()
    reads = ReadBudget(loop, 8)
    sizes = []
    for _ in range(6):
        loop.polls += 1  # ready in consecutive polls
        sizes.append(reads.take())
        reads.used(sizes[-1])  # every read found an item
    assert sizes == [1, 2, 4, 8, 8, 8]
    loop.polls += 1
    assert reads.take() == 8
    reads.used(3)  # ran dry
    loop.polls += 1
    assert reads.take() == 1
    loop.close()
