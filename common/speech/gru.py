"""P4's GRU under bf16 autocast on a CPU: the recurrence of an nn.GRU in bf16 end to end, its fp32 weights the masters.

On a CPU, torch trains a GRU frame by frame; under autocast it casts the weights to bf16 again in every frame and
keeps the gate arithmetic in fp32. `gru` casts the weights once per call and runs `GRUFunction`: the input's share
of every frame's gates in one product, one (batch, 3 hidden) product per frame for the state's share, the gates in
bf16, and a backward pass whose per-frame work is the state's gradient alone (the weights' gradients are summed over
all frames in one product each). Outside autocast, or on a GPU (whose fused kernel autocast already uses), `gru` is
the nn.GRU itself: the same numbers as before.

The equations (torch's, gates in the order r, z, n of its weights):
    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)       z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))    h' = (1 - z) n + z h
"""
import torch


class GRUFunction(torch.autograd.Function):
    """A one-layer GRU over x (batch, frames, in) from the state h0 (batch, hidden), computed in the dtype of its
    arguments: (every frame's state (batch, frames, hidden), the last state (batch, hidden))."""

    @staticmethod
    def forward(ctx, x, h0, W_ih, W_hh, b_ih, b_hh):
        batch, frames, _ = x.shape
        H = W_hh.shape[1]
        gi = torch.addmm(b_ih, x.reshape(batch * frames, -1), W_ih.t()).view(batch, frames, 3 * H)  # input's share
        out, gh, rz, n = [], [], [], []  # per frame: the state, the state's share, r and z, n
        h = h0
        for t in range(frames):
            gh.append(torch.addmm(b_hh, h, W_hh.t()))  # the state's share of the gates, (batch, 3 H)
            rz.append(torch.sigmoid(gi[:, t, :2 * H] + gh[t][:, :2 * H]))
            n.append(torch.tanh(torch.addcmul(gi[:, t, 2 * H:], rz[t][:, :H], gh[t][:, 2 * H:])))
            h = torch.lerp(n[t], h, rz[t][:, H:])  # n + z (h - n)
            out.append(h)
        out, gh, rz, n = (torch.stack(v, 1) for v in (out, gh, rz, n))  # (batch, frames, ...)
        ctx.save_for_backward(x, h0, W_ih, W_hh, out, gh, rz, n)
        return out, h

    @staticmethod
    def backward(ctx, d_out, d_last):
        x, h0, W_ih, W_hh, out, gh, rz, n = ctx.saved_tensors
        frames, H = out.shape[1], out.shape[2]
        r, z = rz[..., :H], rz[..., H:]
        h_prev = torch.cat([h0[:, None], out[:, :-1]], 1)  # the state each frame starts from, (batch, frames, H)
        # every frame's local derivatives at once: d h' / d(z's pre-activation), d h' / d(n's), d(n's) / d(r's)
        A_z, A_n, A_r = (h_prev - n) * z * (1 - z), (1 - z) * (1 - n * n), gh[..., 2 * H:] * r * (1 - r)
        d_gh, d_an = torch.empty_like(gh), torch.empty_like(n)  # gradients of the state's share and of n's input
        dh = d_out[:, -1] + d_last  # the gradient reaching the last state
        for t in reversed(range(frames)):
            torch.mul(dh, A_z[:, t], out=d_gh[:, t, H:2 * H])
            torch.mul(dh, A_n[:, t], out=d_an[:, t])
            torch.mul(d_an[:, t], r[:, t], out=d_gh[:, t, 2 * H:])
            torch.mul(d_an[:, t], A_r[:, t], out=d_gh[:, t, :H])
            carried = dh * z[:, t] if t == 0 else torch.addcmul(d_out[:, t - 1], dh, z[:, t])
            dh = torch.addmm(carried, d_gh[:, t], W_hh)  # the gradient reaching the state before frame t
        d_gi = torch.cat([d_gh[..., :2 * H], d_an], -1).view(-1, 3 * H)  # (batch frames, 3 H)
        d_gh = d_gh.view(-1, 3 * H)
        dx = (d_gi @ W_ih).view_as(x) if ctx.needs_input_grad[0] else None
        return (dx, dh, d_gi.t() @ x.reshape(-1, x.shape[-1]), d_gh.t() @ h_prev.reshape(-1, H), d_gi.sum(0),
                d_gh.sum(0))


def gru(rnn, x, state=None):
    """rnn(x, state) for P4's nn.GRU (one layer, one direction, batch_first, biases): under CPU autocast by
    `GRUFunction` in the autocast dtype, its weights cast once (their fp32 masters receive the gradient); elsewhere
    rnn(x, state) itself."""
    device = x.device.type
    if device != "cpu" or not torch.is_autocast_enabled(device):
        return rnn(x, state)
    if rnn.num_layers != 1 or rnn.bidirectional or not rnn.batch_first or not rnn.bias:
        raise ValueError("gru() runs a one-layer, one-way, batch_first GRU with biases")
    dtype = torch.get_autocast_dtype(device)
    h0 = x.new_zeros(len(x), rnn.hidden_size) if state is None else state[0]
    weights = (rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
    with torch.autocast(device, enabled=False):  # every operand is already in `dtype`
        out, last = GRUFunction.apply(x.to(dtype), h0.to(dtype), *(w.to(dtype) for w in weights))
    return out, last[None]
