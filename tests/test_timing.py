"""The benchmarks' timing helper (common/timing.py) and P1's rank-D network forward (common/svd.py)."""
import torch

from common.mnist_mlp import MLP
from common.svd import LowRankLinear, compress, svd
from common.timing import interleaved, ratio, summary


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


def test_the_rank_d_network_computes_what_its_layers_compute_one_by_one():
    torch.manual_seed(0)
    model = MLP(width=24, depth=3).eval()
    factors = [svd(layer.weight.detach()) for layer in model.hidden]
    net = compress(model, factors, 5)
    x = torch.rand(7, 784)
    h = (x - 0.1307) / 0.3081
    for layer in net.hidden:
        assert isinstance(layer, LowRankLinear)
        h = torch.relu(h @ (layer.U * layer.S @ layer.Vh).T + layer.bias)
    expected = h @ model.head.weight.T + model.head.bias
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():  # the fast path (in-place operations) gives the same numbers
        torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)
