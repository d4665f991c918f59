"""The benchmarks' timing helper (benchmarks/timing.py): interleaved rounds, summaries and per-round ratios."""

from benchmarks.timing import interleaved, ratio, summary


def test_summary_of_known_values():
    s = summary([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s["median"], s["q1"], s["q3"], s["min"], s["max"], s["rounds"]) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
    assert s["spread"] == 2.0 / 3.0 and s["noisy"]
    assert not summary([1.0, 1.01, 0.99, 1.0])["noisy"]
    assert summary([2.0], scale=1e3)["median"] == 2000.0


def test_rounds_are_interleaved_in_rotating_order_and_ratios_taken_per_round():
    order = []
    variants = {name: (lambda name=name: order.append(name)) for name in "abc"}
    times = interleaved(variants, rounds=3, warmup=0, min_seconds=0)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    calibration = 3  # calls_for runs each variant once to learn that one call is enough
    assert order[calibration:] == list("abc" "bca" "cab")
    per_round = ratio({"a": [2.0, 4.0, 9.0], "b": [1.0, 1.0, 3.0]}, "a", "b")
    assert per_round["median"] == 3.0  # the median of 2, 4, 3, not 5 / 1.67
