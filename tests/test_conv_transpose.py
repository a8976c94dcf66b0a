"""Transposed convolution and image-shaped dense groups: gradients and input signals against
both oracles, every error-carrying rule without per-kind code, specs, and bad geometry."""

import json

import pytest
import torch

import creditlab as cl
from creditlab.checks import gradcheck
from creditlab.engine.activations import activation
from creditlab.errors import GraphError, UsageError
from creditlab.gan.losses import GAN_LOSSES
from tests.test_conv import CARRYING, Transposed


@pytest.mark.parametrize("seed", range(6))
def test_random_upsampling_graphs_match_finite_differences_and_autograd(seed):
    net = gradcheck.random_deconv_net(300 + seed, loss=["cross_entropy", "mse", "bce"][seed % 3])
    x, y = gradcheck.random_batch(net, 4, seed)
    fd, ag = gradcheck.check_network(net, x, y, "conv_transpose").worst()
    assert fd < 1e-6 and ag < 1e-10


def test_random_upsampling_graphs_cover_strides_paddings_and_output_paddings():
    seen = set()
    for seed in range(300, 330):
        for g in gradcheck.random_deconv_net(seed).groups.values():
            if g.kind == "conv_transpose":
                seen |= {(k, v) for k, v in g.options.items() if k != "channels"}
    for key, values in {
        "stride": (1, 2, 3),
        "padding": (0, 1),
        "output_padding": (0, 1, 2),
        "kernel": (1, 2, 3, 4),
    }.items():
        assert {(key, v) for v in values} <= seen, key


def reading_the_image(seed=0, kind="conv_transpose"):
    """An image input read by a transposed convolution (or a convolution), then dense."""
    net = cl.Network(dtype=torch.float64, seed=seed)
    x = net.input((2, 3, 4))
    if kind == "conv_transpose":
        h = net.conv_transpose(
            x, 3, kernel=3, stride=2, padding=1, output_padding=1, activation="tanh"
        )
    else:
        h = net.conv(x, 3, kernel=3, stride=2, padding=1, activation="tanh")
    net.output(net.dense(h, 3, activation="tanh", name="out"), loss="mse")
    gradcheck._random_biases(net, seed)
    return net


@pytest.mark.parametrize(
    "make",
    [
        lambda s: reading_the_image(s, "conv_transpose"),
        lambda s: reading_the_image(s, "conv"),
        lambda s: gradcheck.random_conv_net(400 + s),
    ],
    ids=["conv_transpose", "conv", "random conv"],
)
@pytest.mark.parametrize("seed", range(2))
def test_input_signal_is_the_gradient_through_conv_kinds(make, seed):
    net = make(seed)
    x, _ = gradcheck.random_batch(net, 3, seed)
    fd, ag = gradcheck.input_signal_errors(net, x, seed)
    assert fd < 1e-6 and ag < 1e-10


def test_generator_and_discriminator_of_a_dcgan_give_the_gan_loss_gradient():
    from creditlab.gan import dcgan

    g = dcgan.generator(3, 4, (1, 8, 8), torch.float64, "cpu", 0)
    d = dcgan.discriminator(3, (1, 8, 8), torch.float64, "cpu", 1)
    latent = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bp, loss = cl.rule("bp"), GAN_LOSSES["nonsaturating"]
    g_trace = g.forward(latent, train=True)
    fake = g_trace.z["out"]
    d_trace = d.forward(fake, train=True)
    signal = bp.input_signal(d, fake, loss.g_fake(d_trace.z["out"])[1], d_trace)
    ours = bp.updates_for_signal(g, latent, signal, g_trace)

    params = {k: v.clone().requires_grad_(True) for k, v in g.parameters().items()}
    image = gradcheck.reference_forward(g, params, latent)["out"]
    logits = gradcheck.reference_forward(d, d.parameters(), image)["out"]
    energy = loss.g_fake(logits)[0].mean()
    auto = dict(zip(params, torch.autograd.grad(energy, list(params.values())), strict=True))
    for name in params:
        torch.testing.assert_close(ours[name], auto[name], rtol=1e-10, atol=1e-12)


def test_feedback_rule_with_w_in_place_is_backprop_on_upsampling_nets():
    net = gradcheck.random_deconv_net(7)
    x, y = gradcheck.random_batch(net, 5, 7)
    ours, bp = Transposed().updates(net, x, y), cl.rule("bp").updates(net, x, y)
    for key in bp:
        torch.testing.assert_close(ours[key], bp[key], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["fa", "frsf", "usf", "brsf"])
def test_feedback_stand_ins_of_transposed_convolutions_have_kernel_shapes(name):
    net = reading_the_image(1)
    deep = cl.Network(dtype=torch.float64, seed=1)
    h = deep.dense(deep.input(3), (2, 3, 3), activation="tanh")
    up = deep.conv_transpose(h, 2, kernel=4, stride=2, padding=1, activation="tanh")
    deep.output(deep.dense(up, 2, activation="identity", name="out"))
    x, y = gradcheck.random_batch(deep, 4, 0)
    learner = cl.rule(name)
    learner.updates(deep, x, y)
    B = learner.feedback_matrices(deep)
    assert B[f"W[{h.name}->{up.name}]"].shape == (2, 2, 4, 4)  # the kernel's (C_in, C_out, k, k)
    if name == "usf":
        assert torch.equal(B[f"W[{h.name}->{up.name}]"].sign(), deep.W[(h.name, up.name)].sign())
    # and a signal into an image input read by a transposed convolution, through the rule's B
    x, _ = gradcheck.random_batch(net, 4, 1)
    r = torch.ones(4, net.output_size, dtype=torch.float64)
    signal = cl.rule(name).input_signal(net, x, r)  # a rule's matrices belong to one network
    assert signal.shape == x.shape and bool(torch.isfinite(signal).all())
    assert not torch.allclose(signal, cl.rule("bp").input_signal(net, x, r))


@pytest.mark.parametrize("kind", ["conv_transpose", "conv"])
def test_fa_with_w_as_its_input_feedback_sends_bp_signal(kind, monkeypatch):
    """fa's signal to an image input goes through the reader's own kind, with B in W's place:
    with W itself as B, it is bp's."""
    net = reading_the_image(2, kind)
    learner = cl.rule("fa")
    monkeypatch.setattr(learner, "signal_feedback", lambda n: n.feedback_view)
    monkeypatch.setattr(learner, "input_feedback", lambda n: n.feedback_view)
    x, _ = gradcheck.random_batch(net, 4, 2)
    r = torch.randn(4, net.output_size, dtype=torch.float64)
    torch.testing.assert_close(
        learner.input_signal(net, x, r), cl.rule("bp").input_signal(net, x, r), rtol=0, atol=0
    )
    assert cl.rule("fa").B_input.get(net)[f"W[input->{net.order[1]}]"].shape == tuple(
        net.W[("input", net.order[1])].shape
    )


@pytest.mark.parametrize("name", CARRYING)
def test_every_carrying_rule_trains_and_signals_through_transposed_convolutions(name):
    net = gradcheck.random_deconv_net(11)
    x, y = gradcheck.random_batch(net, 5, 11)
    learner = cl.rule(name)
    for _ in range(2):
        updates = learner.updates(net, x, y)
    assert list(updates) == list(net.parameters())
    assert all(bool(torch.isfinite(u).all()) for u in updates.values())
    reached = [float(u.abs().max()) > 0 for k, u in updates.items() if "->h2" in k]
    assert any(reached) or name in ("dni", "cdni")  # synthesizers start by predicting 0
    if name == "cdni":
        return  # conditions its synthesizers on a target an outside signal does not have
    image = reading_the_image(3)
    x, _ = gradcheck.random_batch(image, 5, 3)
    r = torch.randn(5, image.output_size, dtype=torch.float64)
    learner = cl.rule(name)  # a rule's matrices belong to one network
    for _ in range(3):  # dni's synthesizers need steps before a signal gets down
        signal = learner.input_signal(image, x, r)
    assert signal.shape == x.shape and float(signal.abs().max()) > 0


def test_dfa_sizes_its_matrices_by_the_flattened_groups():
    net = reading_the_image(0)
    learner = cl.rule("dfa")
    learner.updates(net, *gradcheck.random_batch(net, 4, 0))
    shapes = {k: tuple(v.shape) for k, v in learner.state_dict()["B"].items()}
    assert shapes == {"h1": (3, 3 * 6 * 8)}


def test_shapes_of_a_generator_and_the_spec_round_trip():
    net = cl.Network(seed=3)
    u = net.input(10)
    h = net.dense(u, (8, 7, 7), activation="relu")
    up = net.conv_transpose(h, 4, activation="relu")  # kernel 4, stride 2, padding 1
    out = net.conv_transpose(up, 1, kernel=3, stride=2, padding=1, output_padding=1)
    net.output(out, loss="mse")
    assert (h.shape, h.size, up.shape, out.shape) == ((8, 7, 7), 392, (4, 14, 14), (1, 28, 28))
    assert net.W[(h.name, up.name)].shape == (8, 4, 4, 4)
    assert net.W[(u.name, h.name)].shape == (10, 392)
    spec = json.loads(json.dumps(net.spec()))  # through JSON, as configs and checkpoints
    again = cl.Network.from_spec(spec, seed=99)
    again.load_parameters(net.parameters())
    assert again.groups[h.name].shape == (8, 7, 7)
    assert again.groups[out.name].options["output_padding"] == 1
    x = torch.randn(3, 10)
    torch.testing.assert_close(again.predict(x), net.predict(x), rtol=0, atol=0)
    assert net.predict(x).shape == (3, 1, 28, 28)


def test_bad_geometry_is_refused_naming_the_group():
    net = cl.Network()
    x = net.input((1, 4, 4))
    v = net.dense(x, 5, name="flat")
    with pytest.raises(GraphError, match=r"group 'up' \(conv_transpose\) reads 'flat'.*image"):
        net.conv_transpose(v, 2, name="up")
    with pytest.raises(GraphError, match=r"output_padding of group 'op' \(2\) must be smaller"):
        net.conv_transpose(x, 2, stride=2, output_padding=2, name="op")
    with pytest.raises(GraphError, match=r"group 'tiny' \(conv_transpose\) would give .* 0x0"):
        net.conv_transpose(x, 2, kernel=1, stride=1, padding=2, name="tiny")
    with pytest.raises(GraphError, match="stride of group 's' must be an integer >= 1"):
        net.conv_transpose(x, 2, stride=0, name="s")
    with pytest.raises(GraphError, match="output_padding of group 'n' must be an integer >= 0"):
        net.conv_transpose(x, 2, output_padding=-1, name="n")
    with pytest.raises(GraphError, match="channels of group 'c' must be an integer >= 1"):
        net.conv_transpose(x, 0, name="c")
    with pytest.raises(GraphError, match=r"group 'two' \(conv_transpose\) reads exactly one"):
        net.conv_transpose([x, v], 2, name="two")
    with pytest.raises(GraphError, match=r"group 'd' needs a size n or a shape \(C, H, W\)"):
        net.dense(x, (3, 4), name="d")
    with pytest.raises(GraphError, match="'z' needs a positive integer size"):
        net.dense(x, (3, 0, 2), name="z")
    spec = {
        "groups": [
            {"name": "in", "size": 4, "ins": []},
            {"name": "d", "size": 5, "shape": [1, 2, 2], "ins": ["in"]},
        ],
        "output": "d",
        "loss": "mse",
    }
    with pytest.raises(GraphError, match=r"group 'd' has size 5 but shape \(1, 2, 2\)"):
        cl.Network.from_spec(spec)


def test_leaky_relu_slopes():
    a = activation("leaky_relu:0.2")
    s = torch.tensor([-2.0, 0.0, 3.0])
    assert torch.equal(a.f(s), torch.tensor([-0.4, 0.0, 3.0]))
    assert torch.equal(a.df(s, a.f(s)), torch.tensor([0.2, 0.2, 1.0]))
    assert activation("leaky_relu").df(s, s)[0] == pytest.approx(0.01)
    for bad in ("leaky_relu:2", "leaky_relu:x", "leaky_relu:"):
        with pytest.raises(UsageError, match="the slope must be a number in"):
            activation(bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_transposed_convolutions_give_the_same_updates_and_signals_on_cuda():
    from creditlab.gan import dcgan

    results = []
    for device in ("cpu", "cuda"):
        g = dcgan.generator(4, 6, (1, 8, 8), torch.float64, device, 0)
        d = dcgan.discriminator(4, (1, 8, 8), torch.float64, device, 1)
        gen = torch.Generator().manual_seed(0)
        u = torch.randn(5, 6, generator=gen, dtype=torch.float64).to(device)
        y = torch.rand(5, 1, 8, 8, generator=gen, dtype=torch.float64).to(device)
        r = torch.randn(5, 1, generator=gen, dtype=torch.float64).to(device)
        updates = cl.rule("bp").updates(g, u, y)
        signal = cl.rule("bp").input_signal(d, y.reshape(5, -1), r)
        results.append(({k: v.cpu() for k, v in updates.items()}, signal.cpu()))
    (cpu_updates, cpu_signal), (gpu_updates, gpu_signal) = results
    for key in cpu_updates:
        torch.testing.assert_close(gpu_updates[key], cpu_updates[key], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gpu_signal, cpu_signal, rtol=1e-9, atol=1e-12)


def test_dni_with_perfect_synthesizers_is_bp_through_transposed_convolutions():
    from creditlab.engine.backward import (
        backward_sweep,
        incoming_signal,
        local_delta,
        transpose_feedback,
    )

    net = cl.Network(dtype=torch.float64, seed=4)
    x = net.input((1, 3, 3))
    up = net.conv_transpose(x, 2, kernel=4, stride=2, padding=1, activation="tanh")
    up2 = net.conv_transpose(up, 2, kernel=3, stride=2, padding=1, output_padding=1)
    net.output(net.dense(up2, 3, activation="tanh", name="out"), loss="mse")
    u, _ = gradcheck.random_batch(net, 4, 4)
    r = torch.randn(4, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    trace = net.forward(u)
    exact = backward_sweep(net, trace, {"out": local_delta(net, trace, "out", r)})
    learner = cl.rule("dni")
    learner.oracle = lambda _net, _trace, _y, b: incoming_signal(
        net, exact, b, transpose_feedback(net), trace
    )
    bp = cl.rule("bp")
    torch.testing.assert_close(learner.input_signal(net, u, r), bp.input_signal(net, u, r))
    ours, expected = learner.updates_for_signal(net, u, r), bp.updates_for_signal(net, u, r)
    for key in expected:
        torch.testing.assert_close(ours[key], expected[key])
