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

from creditlab.engine.kinds.base import Kind, accumulate, image_of
from creditlab.errors import UsageError

Tensor = torch.Tensor


def features_view(net, group, value: Tensor) -> Tensor:
    """A flat (N, size) activity as (N, features, positions): (N, C, H*W) for an image
    (2-D batch norm), (N, size, 1) for a vector (1-D)."""
    features = group.shape[0] if group.options["spatial"] else group.size
    return value.reshape(value.shape[0], features, -1)


class BatchNorm(Kind):
    name = "batch_norm"
    exact = True  # the signal back is always the true batch-norm backward

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
