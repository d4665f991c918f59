"""The fast inference path of P1's rank-D network: the same function as p1_svd.compress's network, computed with
less overhead. An optimisation only; tests/test_p1.py checks it against the plain network, and
benchmarks/rank_forward.py times it.

Two changes, both for a CPU:
- the hidden layers' factors (U, S, Vh, bias) are gathered once into a list, and the pass runs without module calls
  and their hooks: at batch 1 a rank-20 layer is two tiny products, and Python sets the speed;
- for large fp32 batches without gradient, each layer is two oneDNN linear products with the ReLU applied as the
  second one writes its output (torch.ops.mkldnn._linear_pointwise, what torch.compile's CPU backend emits); for
  small batches its call overhead costs more than it saves.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .mlp import PIXEL_MEAN, PIXEL_STD

# a private op, looked up so that a torch without it takes the plain path
LINEAR_POINTWISE = (getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available()
                    else None)
FUSED_MIN_BATCH = 256  # rows: below this the plain products are faster


def fused_linear_pays(x):
    """Whether rank_d_product takes the fused oneDNN path for `x`: fp32 on a CPU, a batch of at least
    FUSED_MIN_BATCH rows, no gradient being recorded (the fused op is for inference), and a torch that has it."""
    return (x.shape[0] >= FUSED_MIN_BATCH and LINEAR_POINTWISE is not None and x.dim() == 2  # batch first: cheap
            and x.dtype == torch.float32 and x.device.type == "cpu" and not torch.is_grad_enabled())


def rank_d_product(x, U, S, Vh, bias, relu=False, fused=False):
    """U (S * (Vh x)) + b for a batch x (batch, in) -> (batch, out), then ReLU if `relu`. `fused` (with relu; see
    fused_linear_pays): two oneDNN products, the ReLU applied as the second one writes its output."""
    if fused:
        return LINEAR_POINTWISE(LINEAR_POINTWISE(x, Vh * S[:, None], None, "none", [], ""), U, bias, "relu", [], "")
    y = F.linear(F.linear(x, Vh).mul_(S), U, bias)  # (batch, D) scaled by S, then (batch, out)
    return y.relu_() if relu else y


class FastRankNetwork(nn.Module):
    """P1's rank-D network `net` (an MLP whose hidden layers hold U, S, Vh and bias; p1_svd.compress), for inference.

    The forward pass is the baseline's (standardise the pixels, then ReLU(layer(x)) five times, then the head),
    through `rank_d_product`. Eval only: there is no dropout.
    """

    def __init__(self, net):
        super().__init__()
        self.hidden = net.hidden
        self.head = net.head
        self._factors = None  # [(U, S, Vh, bias) of each hidden layer], gathered by the first forward

    def _apply(self, fn, *args, **kwargs):  # .to(), .double(), ... replace the buffers: gather them again
        self._factors = None
        return super()._apply(fn, *args, **kwargs)

    def forward(self, x):  # (batch, 28, 28) or (batch, 784) pixels in [0, 1] -> logits (batch, 10)
        if self._factors is None:
            self._factors = [(layer.U, layer.S, layer.Vh, layer.bias) for layer in self.hidden]
        x = (x.flatten(1) - PIXEL_MEAN) / PIXEL_STD
        fused = fused_linear_pays(x)  # decided once per pass
        for U, S, Vh, bias in self._factors:
            x = rank_d_product(x, U, S, Vh, bias, relu=True, fused=fused)
        return self.head.forward(x)


def fast(net):
    """The rank-D network `net` as a FastRankNetwork, in eval mode (it shares net's tensors)."""
    return FastRankNetwork(net).eval()
