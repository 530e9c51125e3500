"""The REST rate limit (trading/binance_client.py ``RollingWindow``): ccxt's rolling-window
rule, checked against a direct count of the window on random request sequences."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from tests.fake_binance import API_KEY, API_SECRET
from trading.binance_client import RollingWindow, make_client
from trading.brokers.credentials import Credentials


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@given(
    st.lists(
        st.tuples(st.floats(0, 0.4), st.sampled_from([0.5, 1.0, 2.0, 5.0])),
        min_size=1,
        max_size=200,
    )
)
def test_a_request_goes_at_once_exactly_when_the_window_has_room(
    requests: list[tuple[float, float]],
) -> None:
    """Each request (after a pause, with a cost) goes at once iff the costs of the requests
    sent in the last second leave room for it, or none was sent in it."""
    clock = Clock()
    window = RollingWindow(1000, 10.0, clock=clock)
    sent: list[tuple[float, float]] = []
    for pause, cost in requests:
        clock.now += pause
        in_window = [c for t, c in sent if t > clock.now - 1.0]
        expected = not in_window or sum(in_window) + cost <= 10.0
        assert window._take(cost) is expected
        if expected:
            sent.append((clock.now, cost))


async def test_requests_beyond_the_window_wait_in_order_until_it_has_room() -> None:
    window = RollingWindow(60, 2.0)
    order: list[int] = []

    async def request(i: int) -> None:
        await window.wait(1.0)
        order.append(i)

    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.gather(*(request(i) for i in range(5)))
    assert order == [0, 1, 2, 3, 4]  # two at once, then each as the window frees, in order
    assert loop.time() - start >= 0.06 * 2  # the fifth waited for two windows to pass


async def test_the_client_limits_its_rest_requests_with_ccxts_figures_for_binance() -> None:
    keys = Credentials(SecretStr(API_KEY), SecretStr(API_SECRET))
    client = make_client(keys, "testnet", "http://127.0.0.1:9")
    try:
        await client.throttle()
        window = client._window
        assert window is not None
        # ccxt's Binance: a request weight of 1 per 50 ms, over a rolling minute.
        assert (window.window_s, window.max_weight) == (60.0, 1200.0)
    finally:
        await client.close()
