"""Batch normalisation (Ioffe and Szegedy 2015), as torch.nn.BatchNorm1d and BatchNorm2d.

A batch-norm group j reads one group i and normalises each feature (a unit of a vector, or a
channel of an image over all its positions) with statistics of the batch while training and
with running statistics in evaluation, then scales and shifts it:
    xhat = (z_i - mu) / sqrt(var + eps),      s_j = gamma * xhat + beta
mu and var (biased) are over the batch, and the height and width for an image. While
training, the running statistics move towards the batch's, as torch's do:
    running_mean <- (1 - m) running_mean + m mu,  running_var <- (1 - m) running_var + m var_u
with var_u the unbiased variance (n / (n - 1) var over the n values per feature), and m the
momentum, or 1 / (batches seen) when the momentum is None (a cumulative average).

gamma is the connection's W_ij (one number per feature) and beta the group's bias b_j.
The running statistics are the network's buffers (net.buffers: running_mean[j],
running_var[j], num_batches_tracked[j]); they are saved with the parameters
(net.copy_parameters) and so travel through checkpoints and the best epoch's restore.

The way back is exact and no rule replaces it (the kind is `exact`): with batch statistics
every xhat depends on every example of the batch, and with d = delta_j * gamma,
    dE/dz_i = (1 / sqrt(var + eps)) * (d - mean(d) - xhat * mean(d * xhat)),
the means over the batch (and positions) per feature; with running statistics the
normalisation is a fixed affine map and dE/dz_i = delta_j * gamma / sqrt(running_var + eps).
The rule's delta_j trains gamma and beta: dE/dgamma = sum of delta_j * xhat / N and
dE/dbeta = sum of delta_j / N (sums over the batch and positions).

Both directions call torch's batch-norm kernels directly (aten.native_batch_norm, and
aten.native_batch_norm_backward, which computes the three formulas above in one fused pass
from the batch's saved mean and 1 / sqrt(var + eps)), as the convolutions call
aten.convolution_backward; no autograd graph is built or walked. Written as separate tensor
operations the same formulas took about three times as long on the CPU (ResNet-20, batch 128).
The gradient check (checks/gradcheck.py) compares them with finite differences and with
autograd through the formulas written out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from creditlab.engine.kinds.base import (
    Kind,
    KindOption,
    RandomGraph,
    accumulate,
    image_of,
    random_biases,
)
from creditlab.engine.losses import LOSSES
from creditlab.errors import UsageError

Tensor = torch.Tensor


def features_view(net, group, value: Tensor) -> Tensor:
    """A flat (N, size) activity as (N, features, positions): (N, C, H*W) for an image
    (2-D batch norm), (N, size, 1) for a vector (1-D)."""
    features = group.shape[0] if group.options["spatial"] else group.size
    return value.reshape(value.shape[0], features, -1)


def _momentum(key: str, value, group: str) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1
    ):
        raise UsageError(
            f"momentum of group {group!r} must be a number in [0, 1] or None, got {value!r}"
        )


def _eps(key: str, value, group: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UsageError(f"eps of group {group!r} must be a number > 0, got {value!r}")


def random_residual_graph(net, rng, loss: str, trial: int) -> None:
    """A small random residual graph: an image input, a convolution without bias and 2-D batch
    norm, one or two residual blocks (conv-bn-act-conv-bn, the shortcut the identity or, where
    the stride or channels change, a 1x1 convolution with batch norm), added and activated;
    then global average or max pooling, a dense group without bias, 1-D batch norm and a dense
    output. Random activations, strides, channels, momenta and eps; gamma and beta drawn away
    from 1 and 0 so that both matter."""
    acts = ["relu", "tanh", "elu", "gelu", "softplus", "leaky_relu:0.2", "sigmoid"]
    side = rng.randint(5, 7)
    x = net.input((rng.randint(1, 2), side, side))

    def conv_bn(src, channels, kernel, stride, act):
        c = net.conv(
            src, channels, kernel, stride, padding=kernel // 2, activation="identity", bias=False
        )
        momentum = rng.choice([0.1, 0.3, None])
        return net.batch_norm(c, momentum=momentum, eps=rng.choice([1e-5, 1e-3]), activation=act)

    h = conv_bn(x, rng.randint(2, 3), 3, 1, rng.choice(acts))
    for _ in range(rng.randint(1, 2)):
        stride = rng.choice([1, 1, 2]) if min(h.shape[1:]) >= 4 else 1
        channels = h.shape[0] if rng.random() < 0.5 else rng.randint(2, 4)
        branch = conv_bn(h, channels, 3, stride, rng.choice(acts))
        branch = conv_bn(branch, channels, 3, 1, "identity")
        if stride == 1 and channels == h.shape[0]:
            shortcut = h
        else:
            shortcut = conv_bn(h, channels, 1, stride, "identity")
        h = net.add([branch, shortcut], activation=rng.choice(acts))
    h = net.global_pool(h) if rng.random() < 0.6 else net.pool(h, 2, kind="max")
    d = net.dense(h, rng.randint(3, 5), activation="identity", bias=False)
    d = net.batch_norm(d, momentum=0.1, activation=rng.choice(acts))
    out = net.dense(d, rng.randint(2, 4), activation="identity", name="out")
    net.output(out, loss=loss)
    random_biases(net)
    g = torch.Generator().manual_seed(net.seed + 7)
    for (_, j), W in net.W.items():
        if net.groups[j].kind == "batch_norm":
            W.copy_(1.0 + 0.5 * torch.randn(W.shape, generator=g, dtype=W.dtype))


# Batch norm, residual additions, global pooling and layers without bias share one family;
# trial t's loss is the t-th, in turn.
RESIDUAL_GRAPH = RandomGraph(
    "residual+batch_norm",
    random_residual_graph,
    lambda trial: [list(LOSSES)[trial % len(LOSSES)]],
)


class BatchNorm(Kind):
    name = "batch_norm"
    exact = True  # the signal back is always the true batch-norm backward
    options = {
        "momentum": KindOption(object, 0.1, check=_momentum, help="None: cumulative average"),
        "eps": KindOption(object, 1e-5, check=_eps, help="added to the variance"),
        "spatial": KindOption(bool, False, help="per channel of an image (BatchNorm2d)"),
    }
    random_graph = RESIDUAL_GRAPH

    def reference(self, net, group, inputs, W, b, labels):
        (i,) = group.ins
        o = group.options
        u = inputs[0].view(-1, *net.groups[i].shape) if o["spatial"] else inputs[0]
        # batch statistics, as in a training pass (gradcheck's)
        return F.batch_norm(u, None, None, W[i], b, training=True, eps=o["eps"])

    def shape(self, net, group):
        (i,) = group.ins
        if group.options["spatial"]:
            return image_of(net, i, group)
        return (net.groups[i].size,)

    def weight_shape(self, net, i, group):
        return (self.features(net, group),)

    def bias_shape(self, group):
        return (group.shape[0] if group.options["spatial"] else group.size,)

    def features(self, net, group) -> int:
        (i,) = group.ins
        shape = net.groups[i].shape
        return shape[0] if group.options["spatial"] else net.groups[i].size

    def fans(self, net, group):
        return 1, 1

    def initial_weight(self, net, i, group, shape):
        return torch.ones(shape, dtype=net.dtype, device=net.device)  # gamma = 1, as torch

    def initial_buffers(self, net, group):
        n = self.features(net, group)
        j = group.name
        return {
            f"running_mean[{j}]": torch.zeros(n, dtype=net.dtype, device=net.device),
            f"running_var[{j}]": torch.ones(n, dtype=net.dtype, device=net.device),
            f"num_batches_tracked[{j}]": torch.zeros((), dtype=torch.long, device=net.device),
        }

    def forward(self, net, group, trace, inputs):
        (i,), j = group.ins, group.name
        x = features_view(net, group, inputs[0])  # (N, C, L)
        gamma, beta = net.W[(i, j)], net.b[j]
        eps, momentum = group.options["eps"], group.options["momentum"]
        mean, var = net.buffers[f"running_mean[{j}]"], net.buffers[f"running_var[{j}]"]
        m = 0.0
        if trace.train:
            count = x.shape[0] * x.shape[2]
            if count < 2:
                raise UsageError(
                    f"batch-norm group {j!r} needs more than one value per feature while "
                    f"training; the batch gives {count} (use batches of 2 or more)"
                )
            tracked = net.buffers[f"num_batches_tracked[{j}]"]
            tracked.add_(1)
            m = 1.0 / float(tracked) if momentum is None else momentum
        # Training: normalise with the batch's mean and (biased) variance, and move the
        # running statistics by m towards the batch's mean and unbiased variance; evaluation:
        # normalise with the running statistics.
        s, saved_mean, saved_rstd = torch.ops.aten.native_batch_norm(
            x, gamma, beta, mean, var, trace.train, m, eps
        )
        trace.cache[j] = {"x": x, "mean": saved_mean, "rstd": saved_rstd, "train": trace.train}
        return s.reshape(x.shape[0], -1)

    def _backward(self, net, trace, group, delta: Tensor, mask: list[bool]):
        """(dE/dz_i, sum of delta * xhat, sum of delta) for delta_j, per the formulas above,
        in one pass of torch's batch-norm backward kernel (None where `mask` says False)."""
        (i,), j = group.ins, group.name
        memo = trace.cache[j]
        mean, var = net.buffers[f"running_mean[{j}]"], net.buffers[f"running_var[{j}]"]
        return torch.ops.aten.native_batch_norm_backward(
            features_view(net, group, delta),
            memo["x"],
            net.W[(i, j)],
            mean,
            var,
            memo["mean"],
            memo["rstd"],
            memo["train"],
            group.options["eps"],
            mask,
        )

    def signal(self, net, trace, i, group, delta, F, out=None):
        # F is None: the kind is exact, and gamma itself carries the signal whatever the rule.
        # gamma's gradient comes in the same pass; weight_grad takes it for this delta.
        back, grad_gamma, _ = self._backward(net, trace, group, delta, [True, True, False])
        trace.cache[group.name]["grad_gamma"] = (delta, grad_gamma)
        return accumulate(out, back.reshape(delta.shape))

    def weight_grad(self, net, trace, i, group, delta):
        kept = trace.cache[group.name].get("grad_gamma")
        if kept is not None and kept[0] is delta:
            grad = kept[1]
        else:  # no signal was asked for (dfa): the gradient alone
            grad = self._backward(net, trace, group, delta, [False, True, False])[1]
        return grad.mul(1.0 / delta.shape[0])

    def bias_grad(self, group, delta):
        n = delta.shape[0]
        features = group.shape[0] if group.options["spatial"] else group.size
        return delta.reshape(n, features, -1).sum(dim=(0, 2)).mul_(1.0 / n)
