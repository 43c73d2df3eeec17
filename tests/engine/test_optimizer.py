"""FusedSGD against PyTorch's for-loop SGD: the same update for every layout of parameter and
gradient, no copies, interchangeable state, GradScaler's scale and inf flag honoured."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from sfpn.engine.optimizer import FusedSGD


def _parameters(generator):
    """Parameters in the layouts a detector has: a channels_last conv weight, a contiguous one, a
    bias, a linear weight, and a channels_last weight whose gradient comes NCHW."""
    shapes = [(8, 6, 3, 3), (8, 6, 3, 3), (8,), (5, 7), (4, 3, 3, 3)]
    channels_last = [True, False, False, False, True]
    params = []
    for shape, cl in zip(shapes, channels_last):
        value = torch.randn(shape, generator=generator)
        params.append(torch.nn.Parameter(value.contiguous(memory_format=torch.channels_last) if cl else value))
    return params


def _gradients(params, generator, mismatch_last: bool = True):
    """Random gradients in their parameters' layouts; with ``mismatch_last``, the last one
    contiguous whatever its parameter's layout (_parameters' last: channels_last)."""
    grads = [torch.empty_like(p).copy_(torch.randn(p.shape, generator=generator)) for p in params]
    if mismatch_last:
        grads[-1] = grads[-1].contiguous()
    return grads


def _twins(generator):
    params = _parameters(generator)
    return params, [torch.nn.Parameter(p.detach().clone()) for p in params]


def _step_both(fused, reference, params, twins, generator):
    """One step of each optimizer on the same fresh gradients."""
    for p, q, g in zip(params, twins, _gradients(params, generator)):
        p.grad, q.grad = g.clone(), g.clone()
    fused.step()
    reference.step()


@pytest.mark.parametrize("options", [
    dict(momentum=0.9, weight_decay=1e-2),
    dict(momentum=0.9, weight_decay=1e-2, nesterov=True),
    dict(momentum=0.5, dampening=0.3, maximize=True),
    dict(momentum=0.0, weight_decay=1e-3),
])
def test_fused_sgd_takes_the_for_loop_step_in_every_layout(options):
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    params, twins = _twins(generator)
    fused = FusedSGD(params, lr=0.05, **options)
    reference = torch.optim.SGD(twins, lr=0.05, foreach=False, **options)
    for _ in range(3):
        _step_both(fused, reference, params, twins, generator)
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        assert p.stride() == q.stride()  # updated in place, layout kept
    if options["momentum"]:
        for p, q in zip(params, twins):
            torch.testing.assert_close(fused.state[p]["momentum_buffer"], reference.state[q]["momentum_buffer"],
                                       rtol=1e-6, atol=1e-7)


def test_fused_sgd_parameter_whose_first_gradient_comes_late():
    """A parameter without a gradient in the first step (a branch not yet used) starts its
    momentum when its first gradient comes, while the others continue theirs."""
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    params, twins = _twins(generator)
    fused = FusedSGD(params, lr=0.1, momentum=0.9)
    reference = torch.optim.SGD(twins, lr=0.1, momentum=0.9, foreach=False)
    for step in range(3):
        for i, (p, q, g) in enumerate(zip(params, twins, _gradients(params, generator))):
            late = i == 1 and step == 0
            p.grad, q.grad = (None, None) if late else (g.clone(), g.clone())
        fused.step()
        reference.step()
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_fused_sgd_copies_nothing_when_layouts_agree():
    """The reason for the class: ATen's fused SGD copies every channels_last gradient."""
    generator = torch.Generator().manual_seed(0)
    params = _parameters(generator)
    optimizer = FusedSGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    for step in range(2):
        for p, g in zip(params, _gradients(params, generator, mismatch_last=False)):
            p.grad = g
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            optimizer.step()
        ops = {event.key for event in prof.key_averages()}
        assert "aten::_fused_sgd_" in ops
        assert not ops & {"aten::clone", "aten::copy_", "aten::contiguous"}, ops


def test_fused_sgd_state_dict_is_pytorch_sgd_state_dict():
    """Checkpoints move both ways between FusedSGD and torch.optim.SGD."""
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    params, twins = _twins(generator)
    fused = FusedSGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)
    reference = torch.optim.SGD(twins, lr=0.1, momentum=0.9, weight_decay=1e-3, foreach=False)
    _step_both(fused, reference, params, twins, generator)
    # Swap the states: each continues from the other's momentum buffers.
    fused_state, reference_state = fused.state_dict(), reference.state_dict()
    fused.load_state_dict(reference_state)
    reference_state_from_fused = {**fused_state, "param_groups": [
        {**group, "fused": None, "foreach": False} for group in fused_state["param_groups"]]}
    reference.load_state_dict(reference_state_from_fused)
    _step_both(fused, reference, params, twins, generator)
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_fused_sgd_honours_the_grad_scaler():
    """With a GradScaler the step unscales the gradients, and skips the step on an inf."""
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    params, twins = _twins(generator)
    fused = FusedSGD(params, lr=0.1, momentum=0.9)
    reference = torch.optim.SGD(twins, lr=0.1, momentum=0.9, foreach=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))  # as scaling the loss does: the scaler's state starts here
    for p, q, g in zip(params, twins, _gradients(params, generator)):
        p.grad, q.grad = g * 1024.0, g.clone()
    scaler.step(fused)
    scaler.update()
    reference.step()
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.full_like(p, float("inf"))
    scaler.scale(torch.ones(()))
    scaler.step(fused)
    for p, b in zip(params, before):
        assert torch.equal(p, b)


def test_fused_sgd_refuses_a_parameter_with_gaps():
    parameter = torch.nn.Parameter(torch.randn(4, 6)[:, ::2])
    parameter.grad = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"strides \(6, 2\) is not dense"):
        FusedSGD([parameter], lr=0.1).step()


def test_fused_sgd_refuses_a_sparse_gradient():
    parameter = torch.nn.Parameter(torch.randn(4, 3))
    parameter.grad = torch.randn(4, 3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        FusedSGD([parameter], lr=0.1).step()
