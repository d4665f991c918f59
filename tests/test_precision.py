"""The precision policy of the training loop, fused AdamW and the whole-batch data path (common/train.py)."""
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from common import precision
from common.cli import UserError
from common.precision import Dropout, autocast, machine, resolve_precision
from common.train import adamw, fit, load_checkpoint, loader, train_or_reuse


@pytest.mark.parametrize("hardware, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_is_bf16_only_where_the_device_has_bf16_matrix_instructions(monkeypatch, hardware, expected):
    monkeypatch.setattr(precision, "bf16_in_hardware", lambda device: hardware)
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(UserError, match="unknown precision"):
        resolve_precision("fp16", "cpu")


def test_machine_says_where_a_result_was_made():
    info = machine("cpu", "fp32")
    assert info["cpu"] and info["isa"] and info["torch"] == torch.__version__ and info["precision"] == "fp32"
    assert info["threads"] == torch.get_num_threads() and isinstance(info["bf16_matmul_in_hardware"], bool)


def tiny_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(96, 12, generator=g), torch.randint(0, 3, (96,), generator=g)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    return model, TensorDataset(x, y)


def cross_entropy(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


def test_bf16_trains_the_forward_in_bf16_and_keeps_weights_and_optimizer_in_fp32():
    model, data = tiny_problem()
    seen = []
    model[0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    optimizer = adamw(model.parameters(), 1e-2, 0.0, "cpu")
    history = fit(model, cross_entropy, optimizer, data, epochs=3, batch_size=32, seed=0, precision="bf16", quiet=True)
    assert seen and set(seen) == {torch.bfloat16}  # the linear layers computed in bf16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(v.dtype == torch.float32 for state in optimizer.state.values() for v in state.values()
               if torch.is_tensor(v) and v.is_floating_point())
    losses = [h["train_loss"] for h in history]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]  # it learns


def test_fp32_forward_is_untouched_by_the_policy():
    model, data = tiny_problem()
    x = data.tensors[0]
    with autocast("fp32", "cpu"):
        inside = model(x)
    assert inside.dtype == torch.float32 and torch.equal(inside, model(x))


def test_a_checkpoint_is_reused_only_by_its_own_precision(tmp_path):
    path = tmp_path / "run.pt"
    runs = []

    def run(precision, overwrite=False):
        model, data = tiny_problem()
        runs.append(precision)
        return train_or_reuse(model, cross_entropy, data, validate=lambda m: {"score": 0.0}, monitor="score",
                              warmup=0, epochs=1, batch_size=32, lr=1e-2, weight_decay=0.0, seed=0, ckpt_path=path,
                              config={"precision": precision}, overwrite=overwrite, device="cpu", precision=precision,
                              quiet=True)

    first = run("bf16")
    assert run("bf16") == first  # reused: the same history, nothing trained
    with pytest.raises(UserError, match="precision"):  # the finished bf16 run is not an fp32 run
        load_checkpoint(path, config={"precision": "fp32"})
    with pytest.raises(UserError, match="precision='bf16' but this run asks for precision='fp32'; pass --overwrite"):
        run("fp32")  # never replaced silently
    assert run("fp32", overwrite=True) != first  # trained anew in fp32, replacing the bf16 checkpoint
    assert load_checkpoint(path)["config"] == {"precision": "fp32"}


def test_fused_adamw_takes_the_step_of_the_plain_one():
    model, data = tiny_problem()
    twin = tiny_problem()[0]
    fused, plain = adamw(model.parameters(), 1e-2, 0.1, "cpu"), torch.optim.AdamW(twin.parameters(), 1e-2,
                                                                                   weight_decay=0.1)
    assert fused.defaults["fused"]
    for _ in range(3):
        for m, opt in ((model, fused), (twin, plain)):
            opt.zero_grad()
            cross_entropy(m, data.tensors).backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_whole_batches_are_the_batches_of_the_plain_data_loader():
    x, y = torch.randn(100, 3, 2), torch.arange(100)
    data = TensorDataset(x, y)
    samplers = [DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=5) for _ in range(2)]
    plain = list(DataLoader(data, batch_size=16, sampler=samplers[0]))
    whole = list(loader(data, 16, sampler=samplers[1]))
    assert len(plain) == len(whole) == 7
    for (a, b), (c, d) in zip(plain, whole):
        assert torch.equal(a, c) and torch.equal(b, d)


def test_dropout_is_torchs_outside_autocast_and_under_it_drops_p_and_keeps_the_mean():
    x = torch.rand(200, 500) + 0.5
    torch.manual_seed(0)
    ours = Dropout(0.2)(x)
    torch.manual_seed(0)
    assert torch.equal(ours, torch.nn.Dropout(0.2)(x))  # fp32: nn.Dropout's mask and numbers
    assert torch.equal(Dropout(0.2).eval()(x), x)
    drop = round(0.2 * 65536)
    for dtype in (torch.float32, torch.bfloat16):
        xd = x.to(dtype).clone().requires_grad_()
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = Dropout(0.2)(xd)
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(Dropout(0.2)(xd), y)  # seeded: the same mask
        kept = y != 0
        assert abs(1 - kept.double().mean().item() - drop / 65536) < 4 * (0.2 * 0.8 / x.numel()) ** 0.5
        scale = 65536 / (65536 - drop)
        assert torch.equal(y[kept], (xd.detach()[kept] * scale).to(dtype))  # the kept, scaled to keep the mean
        y.backward(torch.ones_like(y))
        assert torch.equal(xd.grad, (kept * scale).to(dtype))  # the gradient passes where the element did
        assert xd.grad.dtype == dtype and y.dtype == dtype
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(Dropout(0.0)(x), x)
