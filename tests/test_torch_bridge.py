"""from_torch / to_torch: a user's torch.nn module in, the same module out, trained by any rule.

A generated family of random modules (MLPs, CNNs, residual blocks with batch norm, written
with activation modules, functional activations, methods, views, reshapes and flattens) is
converted and checked against torch itself: the forward pass (evaluation and training), bp's
updates against autograd's gradients, three steps of SGD against torch.optim.SGD, and the
round trip to_torch(from_torch(m)) into a fresh copy.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import creditlab as cl
from creditlab.engine.torch_bridge import parameter_names
from creditlab.errors import UsageError
from creditlab.training.output_init import apply_output_init
from tests.conftest import train_on_digits

# ---- the generated family ------------------------------------------------------------------

ACT_MODULES = [
    nn.ReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.ELU,
    nn.Softplus,
    lambda: nn.LeakyReLU(0.2),
    nn.LeakyReLU,
]
ACT_FUNCTIONS = [
    F.relu,
    torch.tanh,
    torch.sigmoid,
    F.gelu,
    F.elu,
    F.softplus,
    lambda x: F.leaky_relu(x, 0.1),
    torch.relu,
    lambda x: x.relu(),
    lambda x: x.tanh(),
]


def flatten_any(x, how: int):
    """Four ways users flatten each example."""
    if how == 0:
        return torch.flatten(x, 1)
    if how == 1:
        return x.view(x.size(0), -1)
    if how == 2:
        return x.reshape(x.shape[0], -1)
    return x.flatten(1)


class RandomMLP(nn.Module):
    def __init__(self, rng: random.Random, features: int, classes: int):
        super().__init__()
        layers, n = [], features
        for _ in range(rng.randint(1, 3)):
            out = rng.randint(3, 7)
            layers.append(nn.Linear(n, out, bias=rng.random() < 0.6))
            if rng.random() < 0.5:
                layers.append(nn.BatchNorm1d(out, momentum=rng.choice([0.1, 0.5, None])))
            layers.append(rng.choice(ACT_MODULES)())
            if rng.random() < 0.3:
                layers.append(rng.choice([nn.Identity(), nn.Dropout(0.0)]))
            n = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(n, classes)
        self.act = rng.choice(ACT_FUNCTIONS)

    def forward(self, x):
        return self.head(self.act(self.body(x)))


class RandomCNN(nn.Module):
    def __init__(self, rng: random.Random, channels: int, side: int, classes: int):
        super().__init__()
        layers, c = [], channels
        for _ in range(rng.randint(1, 2)):
            out, k = rng.randint(2, 4), rng.choice([1, 3])
            stride = rng.choice([1, 2])
            layers.append(nn.Conv2d(c, out, k, stride, padding=k // 2, bias=rng.random() < 0.5))
            side = (side + 2 * (k // 2) - k) // stride + 1
            if rng.random() < 0.6:
                layers.append(nn.BatchNorm2d(out, eps=rng.choice([1e-5, 1e-3])))
            layers.append(rng.choice(ACT_MODULES)())
            if side >= 4 and rng.random() < 0.6:
                layers.append(rng.choice([nn.MaxPool2d(2), nn.AvgPool2d(2)]))
                side //= 2
            c = out
        self.features = nn.Sequential(*layers)
        self.how = rng.randint(0, 4)
        self.fc = nn.Linear(c * side * side, classes)

    def forward(self, x):
        x = self.features(x)
        if self.how == 4:
            return self.fc(torch.flatten(F.dropout(x, 0.0, self.training), 1))
        return self.fc(flatten_any(x, self.how))


class Block(nn.Module):
    """A basic residual block (He et al. 2016) in one of several ways of writing the sum."""

    def __init__(self, rng: random.Random, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.act = rng.choice(ACT_FUNCTIONS)
        self.style = rng.randint(0, 2)

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.style == 0:
            out += self.shortcut(x)
        elif self.style == 1:
            out = torch.add(out, self.shortcut(x))
        else:
            out = self.shortcut(x) + out
        return F.relu(out)


class RandomResNet(nn.Module):
    def __init__(self, rng: random.Random, channels: int, classes: int):
        super().__init__()
        width = rng.randint(2, 4)
        self.stem = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        blocks = []
        for _ in range(rng.randint(1, 2)):
            out = rng.choice([width, width + 1])
            blocks.append(Block(rng, width, out, rng.choice([1, 2])))
            width = out
        self.blocks = nn.Sequential(*blocks)
        self.pool_mean = rng.random() < 0.5
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        x = x.mean((2, 3)) if self.pool_mean else flatten_any(self.pool(x), 1)
        return self.fc(x)


FAMILY = ("mlp", "cnn", "resnet")


def random_model(seed: int, dtype=torch.float64) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A random module of the family (by seed), its random batch and labels, with batch-norm
    affine parameters and running statistics drawn away from their defaults."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    kind = FAMILY[seed % len(FAMILY)]
    classes = rng.randint(2, 5)
    if kind == "mlp":
        features = rng.randint(3, 6)
        module, x = RandomMLP(rng, features, classes), torch.randn(6, features)
    elif kind == "cnn":
        c, side = rng.randint(1, 3), rng.randint(5, 8)
        module, x = RandomCNN(rng, c, side, classes), torch.randn(6, c, side, side)
    else:
        c, side = rng.randint(1, 3), rng.randint(4, 6)
        module, x = RandomResNet(rng, c, classes), torch.randn(6, c, side, side)
    module = module.to(dtype)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(rng.randint(0, 5))
    return module, x.to(dtype), torch.randint(0, classes, (x.shape[0],))


def as_module_state(net: cl.Network, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Engine-named values (updates, parameters) by the module's state_dict keys."""
    names = parameter_names(net)
    return {names[k][0]: (v.t() if names[k][1] else v) for k, v in values.items()}


def assert_close_rel(
    a: torch.Tensor, b: torch.Tensor, rel: float, what: str, floor: float = 1e-12
) -> None:
    """max |a - b| <= rel * the scale of b (at least `floor`: a gradient that is zero in
    exact arithmetic, a bias before batch norm, is round-off on both sides)."""
    b = b.detach()
    scale = max(float(b.abs().max()), floor) if b.numel() else 1.0
    err = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    assert err <= rel * scale, f"{what}: max error {err:.3g} against scale {scale:.3g}"


SEEDS = range(12)


# ---- equivalence with torch ----------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_converted_forward_equals_the_module(seed):
    module, x, _ = random_model(seed)
    net = cl.from_torch(module, x)
    assert net.dtype == torch.float64
    module.eval()
    with torch.no_grad():
        assert_close_rel(net.predict(x), module(x), 1e-10, "evaluation forward")
    # A training pass: batch statistics, and the running statistics move as torch's do.
    module.train()
    with torch.no_grad():
        expected = module(x)
    trace = net.forward(x, train=True)
    assert_close_rel(trace.z[net.output_name], expected, 1e-10, "training forward")
    buffers = as_module_state(net, net.buffers)
    for key, value in module.state_dict().items():
        if key in buffers:
            assert_close_rel(buffers[key], value, 1e-12, key)


@pytest.mark.parametrize("seed", SEEDS)
def test_bp_updates_equal_autograd_gradients_in_training_mode(seed):
    module, x, y = random_model(seed)
    net = cl.from_torch(module, x)
    ours = as_module_state(net, cl.rule("bp").updates(net, x, y))
    module.train()
    loss = F.cross_entropy(module(x), y)
    grads = torch.autograd.grad(loss, list(module.parameters()))
    named = dict(zip((n for n, _ in module.named_parameters()), grads, strict=True))
    assert set(ours) == set(named)
    largest = max(float(g.abs().max()) for g in grads)
    for key, grad in named.items():
        assert_close_rel(ours[key], grad, 1e-10, key, floor=largest)


@pytest.mark.parametrize("seed", SEEDS)
def test_three_sgd_steps_exported_equal_torch_optim_sgd(seed):
    module, x, y = random_model(seed)
    reference = copy.deepcopy(module)
    net = cl.from_torch(module, x)
    rule, opt = cl.rule("bp"), cl.optim.SGD()
    params = net.parameters()
    state = opt.init(params)
    torch_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    reference.train()
    for step in range(3):
        xb, yb = x.roll(step, 0), y.roll(step, 0)
        opt.update(params, rule.updates(net, xb, yb), state, 0.1)
        torch_opt.zero_grad()
        F.cross_entropy(reference(xb), yb).backward()
        torch_opt.step()
    cl.to_torch(net, module)
    for key, value in reference.state_dict().items():
        assert_close_rel(module.state_dict()[key], value, 1e-10, key)


@pytest.mark.parametrize("seed", SEEDS)
def test_from_torch_then_to_torch_into_a_fresh_copy_is_the_identity(seed):
    module, x, _ = random_model(seed)
    fresh, _, _ = random_model(seed)
    with torch.no_grad():  # the fresh copy has other values everywhere
        for t in fresh.state_dict().values():
            t.copy_(torch.randn_like(t.double()).to(t.dtype) if t.is_floating_point() else t + 7)
    returned = cl.to_torch(cl.from_torch(module, x), fresh)
    assert returned is fresh
    for key, value in module.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_dtype_and_device_follow_the_module():
    module = nn.Sequential(nn.Linear(4, 3))
    net = cl.from_torch(module, torch.zeros(2, 4))
    assert net.dtype == torch.float32 and net.device == torch.device("cpu")
    assert net.W[("input", "0")].dtype == torch.float32
    with pytest.raises(
        UsageError,
        match=r"example input is torch.float64 on cpu, the module's parameters torch.float32",
    ):
        cl.from_torch(module, torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(UsageError, match=r"float16"):
        cl.from_torch(nn.Linear(4, 3).half(), torch.zeros(2, 4).half())


def test_the_module_is_left_as_it_was():
    module, x, _ = random_model(2)
    module.train()
    before = copy.deepcopy(module.state_dict())
    cl.from_torch(module, x)
    assert module.training and all(m.training for m in module.modules())
    for key, value in before.items():
        assert torch.equal(module.state_dict()[key], value), key


def test_an_activation_read_twice_gets_its_own_group():
    """conv -> (pre-activation used by the sum, relu of it): relu cannot join the conv."""

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.fc = nn.Linear(2 * 16, 3)

        def forward(self, x):
            s = self.conv(x)
            return self.fc(torch.flatten(s + torch.tanh(s), 1))

    module = Twice().double()
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    net = cl.from_torch(module, x)
    assert net.groups["conv"].act.name == "identity"
    assert [g.kind for g in net.groups.values()].count("add") == 2
    assert_close_rel(net.predict(x), module(x), 1e-12, "forward")


def test_dropout_converts_and_keeps_working():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(6, 20), nn.ReLU(), nn.Dropout(0.5), nn.Linear(20, 3))
    net = cl.from_torch(module, torch.zeros(2, 6))
    assert net.groups["0"].dropout == 0.5 and net.groups["0"].act.name == "relu"
    x = torch.randn(50, 6)
    module.eval()
    torch.testing.assert_close(net.predict(x), module(x), rtol=0, atol=1e-6)
    trace = net.forward(x, train=True)
    kept = (trace.gain["0"] != 0).float().mean()
    assert 0.4 < kept < 0.6  # about half dropped while training, the rest doubled
    torch.testing.assert_close(trace.z["0"], trace.undropped["0"] * trace.gain["0"])
    assert set(trace.gain["0"].unique().tolist()) == {0.0, 2.0}


# ---- refusals ------------------------------------------------------------------------------


class Wrap(nn.Module):
    """A module that applies `inner` after a Linear, so the refused node is not the first."""

    def __init__(self, inner: nn.Module, features: int = 4):
        super().__init__()
        self.fc = nn.Linear(features, features)
        self.inner = inner

    def forward(self, x):
        return self.inner(self.fc(x))


class CustomOp(nn.Module):
    def forward(self, x):
        return torch.cat([x, torch.sin(x)], dim=1)


class Untraceable(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # control flow on the data: fx cannot trace it
            return x
        return -x


class InPlaceIndex(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x)
        h[:, 0] = 0  # an in-place trick on a slice
        return h


class SharedLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.fc(x)))


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) * 2


class RawParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(4, 4))

    def forward(self, x):
        return x @ self.w


class Softmaxed(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return F.softmax(self.fc(x), dim=1)


class InPlaceShared(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x)
        return h + F.relu(h, inplace=True)


REFUSED = [
    # (module, example input, pattern the message must match)
    (Wrap(nn.LSTM(4, 4)), (2, 4), r"node 'inner', module 'inner' \(torch.nn.modules.rnn.LSTM\)"),
    (
        Wrap(nn.MultiheadAttention(4, 2)),
        (2, 4),
        r"module 'inner' \(torch.nn.modules.activation.MultiheadAttention\)",
    ),
    (Wrap(nn.Softmax(dim=1)), (2, 4), r"module 'inner' .*Softmax\): not supported"),
    (Wrap(CustomOp()), (2, 4), r"node 'sin', function torch.sin: not supported"),
    (Wrap(nn.Conv1d(1, 1, 1)), (2, 4), r"module 'inner' .*Conv1d"),
    (Untraceable(), (2, 4), r"torch.fx cannot trace Untraceable"),
    (InPlaceIndex(), (2, 4), r"torch.fx cannot trace InPlaceIndex.*item assignment"),
    (SharedLayer(), (2, 4), r"node 'fc_1', module 'fc' .* called more than once"),
    (Scaled(), (2, 4), r"node 'mul', function operator.mul"),
    (RawParameter(), (2, 4), r"node 'w', attribute 'w'"),
    (Softmaxed(), (2, 4), r"node 'softmax', function torch.nn.functional.softmax"),
    (InPlaceShared(), (2, 4), r"node 'relu'.*in place on a value that other operations"),
    (Wrap(nn.BatchNorm1d(4, affine=False)), (2, 4), r"affine=False"),
    (Wrap(nn.ELU(alpha=2.0)), (2, 4), r"ELU\(alpha=2.0\)"),
    (nn.Sequential(nn.Conv2d(1, 2, 3, dilation=2)), (2, 1, 8, 8), r"dilation"),
    (nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)), (2, 2, 8, 8), r"groups=2"),
    (nn.Sequential(nn.MaxPool2d(2, ceil_mode=True)), (2, 1, 5, 5), r"ceil_mode"),
    (nn.Sequential(nn.AdaptiveAvgPool2d(2)), (2, 1, 4, 4), r"pooling to 2"),
    (nn.Sequential(nn.Flatten(0)), (2, 1, 4, 4), r"Flatten\(start_dim=0"),
    (nn.Sequential(nn.Linear(4, 4), nn.Unflatten(1, (2, 2))), (2, 4), r"Unflatten"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(6, 2)), (2, 1, 8, 8), r"reads \(N, feat"),
]


@pytest.mark.parametrize(("module", "shape", "pattern"), REFUSED)
def test_unsupported_layers_are_refused_naming_the_node(module, shape, pattern):
    with pytest.raises(UsageError, match=pattern) as err:
        cl.from_torch(module, torch.randn(*shape))
    assert isinstance(err.value, cl.CreditlabError)
    if "not supported" in pattern:
        assert "Supported: nn.Linear, nn.Conv2d" in str(err.value)


def test_to_torch_refuses_a_module_of_another_structure():
    module, x, _ = random_model(1)  # a CNN
    net = cl.from_torch(module, x)
    with pytest.raises(UsageError, match=r"has no counterpart in Sequential"):
        cl.to_torch(net, nn.Sequential(nn.Linear(2, 2)))
    other, _, _ = random_model(4)  # another CNN with other shapes
    with pytest.raises(UsageError, match=r"no counterpart|has shape"):
        cl.to_torch(net, other)


# ---- rules on converted models -------------------------------------------------------------


def small_bn_cnn() -> nn.Module:
    """A small CNN with batch norm for 8x8 digits."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(256, 64, bias=False),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


# Measured on the development machine (seed 0, Adam 3e-3, batch 32, 10 epochs), test accuracy:
# bp 0.986, fa 0.989, usf 0.994, dfa 0.958 (chance 0.10). The bars are those of the MLP tests
# (tests/test_feedback_rules.py: 0.95 for fa, usf, dfa).
@pytest.mark.parametrize("name", ["fa", "usf", "dfa"])
def test_feedback_rules_train_a_converted_cnn_with_batch_norm_on_digits(digits, name):
    torch.manual_seed(0)
    net = cl.from_torch(small_bn_cnn(), torch.zeros(2, 1, 8, 8))
    train_on_digits(net, name, digits, epochs=10)
    accuracy = (net.predict(digits.test_x).argmax(1) == digits.test_y).float().mean()
    assert accuracy >= 0.95, float(accuracy)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        rng = random.Random(0)
        self.block1 = Block(rng, 8, 8, 1)
        self.block2 = Block(rng, 8, 16, 2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.block2(self.block1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# How each rule trains the converted residual network on digits: (rule options, Adam's rate,
# whether the output weights start at zero as feedback alignment needs, the accuracy bar).
# dni and cdni put their synthesizers at the blocks' outputs (the residual sums), as the paper
# puts them between blocks; at every hidden group (the default) they learnt far slower here.
# Test accuracies after 8 epochs on the development machine (seed 0), chance 0.10: bp 0.992,
# fa 0.853, usf 0.986, brsf 0.978, frsf 0.981, dfa 0.356, dni 0.897, cdni 0.769. dfa stays
# weak on this residual network with batch norm (the plain CNN with batch norm above reaches
# 0.958): its bar says only that it learns, well above chance.
RESNET_RUNS = {
    "bp": ({}, 3e-3, False, 0.9),
    "fa": ({}, 3e-3, True, 0.75),
    "usf": ({}, 3e-3, False, 0.9),
    "brsf": ({}, 3e-3, False, 0.9),
    "frsf": ({}, 3e-3, False, 0.9),
    "dfa": ({}, 3e-3, True, 0.2),
    "dni": ({"boundaries": ("block1.add", "block2.add")}, 3e-3, False, 0.8),
    "cdni": ({"boundaries": ("block1.add", "block2.add")}, 1e-3, False, 0.65),
}


@pytest.mark.parametrize("name", list(RESNET_RUNS))
def test_every_rule_for_every_kind_trains_a_converted_residual_network(digits, name):
    """bp, the feedback rules, dfa and the synthetic-gradient rules train a converted network
    with residual blocks and batch norm, above chance; every parameter gets an update."""
    opts, lr, zero_output, bar = RESNET_RUNS[name]
    torch.manual_seed(0)
    net = cl.from_torch(TinyResNet(), torch.zeros(2, 1, 8, 8))
    if zero_output:
        apply_output_init(net, "zero")
    rule, opt = cl.rule(name, **opts), cl.optim.Adam()
    params = net.parameters()
    state = opt.init(params)
    for epoch in range(8):
        for a in range(0, len(digits.train_y), 32):
            updates = rule.updates(net, digits.train_x[a : a + 32], digits.train_y[a : a + 32])
            if epoch == 0 and a == 0:
                assert set(updates) == set(params)
            opt.update(params, updates, state, lr)
    accuracy = (net.predict(digits.test_x).argmax(1) == digits.test_y).float().mean()
    assert accuracy >= bar, float(accuracy)


@pytest.mark.parametrize("name", ["dtp", "pc", "ff"])
def test_chain_only_rules_refuse_converted_residual_networks_by_name(name):
    net = cl.from_torch(TinyResNet(), torch.zeros(2, 1, 8, 8))
    with pytest.raises(UsageError, match=rf"rule '{name}' trains dense groups only; group"):
        cl.rule(name).check(net)
    mlp = cl.from_torch(
        nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 2)), torch.zeros(2, 4)
    )
    with pytest.raises(UsageError, match=rf"rule '{name}' .* group '0' has none"):
        cl.rule(name).check(mlp)
