"""Retrying a failing service: delays that grow to a cap, log lines that grow rarer."""

from __future__ import annotations

from foreman.worker._backoff import Backoff


def test_delays_double_up_to_the_cap_with_at_most_a_quarter_of_jitter() -> None:
    backoff = Backoff(first_s=0.5, max_s=5.0)
    delays = [backoff.failed() for _ in range(8)]
    for delay, nominal in zip(delays, [0.5, 1, 2, 4, 5, 5, 5, 5], strict=True):
        assert 0.75 * nominal <= delay <= nominal


def test_failures_are_logged_at_the_first_second_fourth_eighth() -> None:
    backoff = Backoff(first_s=0.5, max_s=5.0)
    logged = []
    for n in range(1, 70):
        backoff.failed()
        if backoff.should_log():
            logged.append(n)
    assert logged == [1, 2, 4, 8, 16, 32, 64]


def test_a_success_starts_over_and_says_how_many_failures_it_ended() -> None:
    backoff = Backoff(first_s=0.5, max_s=5.0)
    for _ in range(3):
        backoff.failed()
    assert backoff.succeeded() == 3
    assert backoff.succeeded() == 0
    assert backoff.failed() <= 0.5
    assert backoff.should_log()
