"""Truncated SVD of weight matrices, P1's rank-D network (which P2 and P3 start from), and parameter / MAC counts.

Conventions follow torch.linalg.svd: W = U diag(S) Vh, W of shape (out, in), U (out, k), S (k,), Vh (k, in),
k = min(out, in). "Rank D" keeps the first D columns of U, entries of S and rows of Vh.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .mnist_mlp import PIXEL_MEAN, PIXEL_STD, with_hidden


def svd(W):
    """Thin SVD (U, S, Vh) of a (out, in) weight; computed once and sliced for every rank."""
    return torch.linalg.svd(W, full_matrices=False)


def truncate(U, S, Vh, rank):
    """The first `rank` singular triplets; rank=None or >= k keeps them all."""
    return U[:, :rank], S[:rank], Vh[:rank]


def low_rank(U, S, Vh, rank):
    """The best rank-`rank` approximation U_D diag(S_D) Vh_D (Eckart-Young), as a dense matrix."""
    U, S, Vh = truncate(U, S, Vh, rank)
    return (U * S) @ Vh


# oneDNN's linear layer with a fused pointwise op: what torch.compile's CPU backend emits for Linear + ReLU. A
# rank-20 layer at batch 1000 is two thin products that stream (batch, 1024) activations through memory; done
# this way P1's rank-20 network ran 1.3x faster at 2 threads (the ReLU costs no pass of its own, and oneDNN splits
# the thin products better over threads); below a batch of ~256 its call overhead costs more than it saves.
LINEAR_POINTWISE = (getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available()
                    else None)
FUSED_MIN_BATCH = 256


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


class LowRankLinear(nn.Module):
    """x -> U (S * (Vh x)) + b: a linear layer stored and computed as its rank-D factors.

    Costs D * (in + out + 1) numbers and multiply-adds instead of in * out.
    """

    def __init__(self, U, S, Vh, bias):
        super().__init__()
        self.register_buffer("U", U.contiguous())    # (out, D)
        self.register_buffer("S", S.contiguous())    # (D,)
        self.register_buffer("Vh", Vh.contiguous())  # (D, in)
        self.register_buffer("bias", bias.detach().clone())  # (out,)

    def forward(self, x):  # (batch, in) -> (batch, out)
        return rank_d_product(x, self.U, self.S, self.Vh, self.bias)

    def extra_repr(self):
        return f"in={self.Vh.shape[1]}, out={self.U.shape[0]}, rank={self.S.numel()}"


class LowRankMLP(nn.Module):
    """P1's rank-D network, for inference: the baseline's hidden layers as LowRankLinear, its last layer dense.

    The forward pass is the baseline's (standardise the pixels, then ReLU(layer(x)) five times, then the head). At
    batch 1 a rank-20 layer is two tiny products, and Python sets the speed: the layers' factors are gathered once
    (20 buffer lookups through nn.Module cost a quarter of the pass) and used without module calls and their hooks
    (measured in benchmarks/rank_forward.py). Eval only: there is no dropout.
    """

    def __init__(self, layers, head):
        super().__init__()
        self.hidden = nn.ModuleList(layers)
        self.head = head
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


def low_rank_cost(shapes, rank):
    """(parameters, multiply-adds per input vector) of the layers `shapes` [(out, in), ...] at `rank`.

    Each layer stores U (out x D), S (D numbers), Vh (D x in) and its bias (out), and computes
    Vh x (D * in), then S (D), then U (out * D). rank=None means full rank, D = min(out, in).
    """
    params = macs = 0
    for out, n_in in shapes:
        d = min(out, n_in) if rank is None else min(rank, out, n_in)
        params += d * (n_in + 1 + out) + out
        macs += d * (n_in + 1 + out)
    return params, macs


def compress(model, factors, rank):
    """P1's rank-D network (LowRankMLP, eval mode) built from the MLP `model` at `rank` (None = full).

    factors: [(U, S, Vh), ...], the SVD of each hidden weight (`svd`), computed once and sliced for every rank.
    The last layer is copied as it is.
    """
    layers = [LowRankLinear(*truncate(U, S, Vh, rank), layer.bias) for (U, S, Vh), layer in zip(factors, model.hidden)]
    net = with_hidden(model, layers)
    return LowRankMLP(net.hidden, net.head).eval()


def cost(model, rank):
    """(parameters, multiply-adds per image) of the MLP `model` with its hidden layers at `rank` (0 = dense).

    The last layer stays dense either way.
    """
    head = model.head.weight.numel() + model.head.bias.numel()
    if rank == 0:
        hidden = [layer.weight for layer in model.hidden]
        return (sum(w.numel() + w.shape[0] for w in hidden) + head,
                sum(w.numel() for w in hidden) + model.head.weight.numel())
    params, macs = low_rank_cost([tuple(layer.weight.shape) for layer in model.hidden], rank)
    return params + head, macs + model.head.weight.numel()
