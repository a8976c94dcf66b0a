"""Bring your own PyTorch model: `from_torch(module, example_input)` gives the creditlab
Network that computes the same function with the same weights, and `to_torch(net, module)`
writes the network's (trained) parameters and batch-norm statistics back into the module.

The module is traced by torch.fx (symbolic_trace), and every node of the traced graph becomes
a group of the network, or joins one:
  - nn.Linear and nn.Conv2d are dense and convolution groups (bias or not), named after the
    module's path (`layer1.0.conv1`), which is how to_torch finds them again;
  - nn.BatchNorm1d/2d are batch-norm groups (their running statistics copied too);
  - max/average pooling, AdaptiveAvgPool2d(1) (and x.mean((2, 3))) are pooling groups;
  - an activation (module or function) joins the group it follows as that group's f, where
    nothing else reads the value before the activation; otherwise it gets an identity group
    of its own (kind "add" with one input); dropout likewise;
  - `a + b` / torch.add of two values is a residual addition group;
  - nn.Flatten, torch.flatten(x, 1), x.view(x.size(0), -1), reshape to (N, -1), nn.Identity
    and contiguous() change nothing: the engine stores every activity flat already.
Anything else is refused with a UsageError naming the node, its module type or function, and
the supported list: this module never hands a user a traceback from deep inside.

Weights are copied exactly; the network has the module's dtype (float32 or float64) and
device. In evaluation (net.predict) the network computes module.eval()(x); a training pass
computes module.train()(x) (batch statistics, running statistics moved by the momentum), so
bp's updates are autograd's gradients of the loss of module.train()(x) (dropout aside: its
masks are drawn by the network's own generator).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp

from creditlab.engine.activations import LEAKY_SLOPE
from creditlab.engine.activations import activation as lookup_activation
from creditlab.engine.network import DTYPES, Network, bias_name, weight_name
from creditlab.errors import CreditlabError, UsageError

Tensor = torch.Tensor

SUPPORTED = (
    "nn.Linear, nn.Conv2d (square kernel, stride and padding; groups=1, dilation=1, zero "
    "padding; bias or not), nn.MaxPool2d and nn.AvgPool2d (no padding, ceil_mode=False), "
    "nn.AdaptiveAvgPool2d(1), nn.BatchNorm1d/2d (affine, tracking running statistics), "
    "nn.Flatten, torch.flatten(x, 1), x.view(x.size(0), -1) and reshape to (N, -1), "
    "nn.Dropout, nn.Identity, the activations ReLU, LeakyReLU, Tanh, Sigmoid, GELU, ELU "
    "(alpha=1), Softplus (beta=1) as modules, functions (F.relu, torch.tanh, ...) or methods "
    "(x.relu()), x + y / torch.add of two values of the same shape (residual blocks), "
    "x.mean((2, 3)), F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d(x, 1), F.dropout"
)

# Activation modules -> (engine activation name, or a function of the module giving it).
ACTIVATION_MODULES: dict[type, Callable[[nn.Module], str]] = {
    nn.ReLU: lambda m: "relu",
    nn.Tanh: lambda m: "tanh",
    nn.Sigmoid: lambda m: "sigmoid",
    nn.GELU: lambda m: _gelu(m.approximate),
    nn.ELU: lambda m: _elu(m.alpha),
    nn.Softplus: lambda m: _softplus(m.beta, m.threshold),
    nn.LeakyReLU: lambda m: _leaky(m.negative_slope),
}


def _gelu(approximate: str) -> str:
    if approximate != "none":
        raise _Refusal(f"GELU(approximate={approximate!r}): only the exact GELU is supported")
    return "gelu"


def _elu(alpha: float) -> str:
    if alpha != 1.0:
        raise _Refusal(f"ELU(alpha={alpha}): only alpha=1 is supported")
    return "elu"


def _softplus(beta: float, threshold: float) -> str:
    if beta != 1.0 or threshold != 20.0:
        raise _Refusal(f"Softplus(beta={beta}, threshold={threshold}): only the defaults")
    return "softplus"


def _leaky(slope: float) -> str:
    if not 0.0 <= slope < 1.0:
        raise _Refusal(f"LeakyReLU(negative_slope={slope}): the slope must be in [0, 1)")
    return "leaky_relu" if slope == LEAKY_SLOPE else f"leaky_relu:{slope!r}"


# Activation functions -> the engine's name from the node's arguments (after the input).
ACTIVATION_FUNCTIONS: dict[Any, Callable[[fx.Node], str]] = {
    F.relu: lambda n: "relu",
    torch.relu: lambda n: "relu",
    torch.relu_: lambda n: "relu",
    F.relu_: lambda n: "relu",
    torch.tanh: lambda n: "tanh",
    F.tanh: lambda n: "tanh",
    torch.sigmoid: lambda n: "sigmoid",
    F.sigmoid: lambda n: "sigmoid",
    F.gelu: lambda n: _gelu(_arg(n, 1, "approximate", "none")),
    F.elu: lambda n: _elu(_arg(n, 1, "alpha", 1.0)),
    F.softplus: lambda n: _softplus(_arg(n, 1, "beta", 1.0), _arg(n, 2, "threshold", 20.0)),
    F.leaky_relu: lambda n: _leaky(_arg(n, 1, "negative_slope", LEAKY_SLOPE)),
}
ACTIVATION_METHODS = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
ADDS = (operator.add, operator.iadd, torch.add)


class _Refusal(Exception):
    """Why a node cannot be converted; from_torch adds which node it is."""


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    """Argument `name` of a call node, given by position `index` or by keyword."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _pair(value: Any, what: str) -> int:
    """An int, or a pair of equal ints, as one int (the engine's kernels are square)."""
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise _Refusal(f"{what} {tuple(value)} is not square; only equal sizes are supported")
        value = value[0]
    return int(value)


def from_torch(
    module: nn.Module,
    example_input: Tensor,
    loss: str = "cross_entropy",
    *,
    seed: int = 0,
) -> Network:
    """The creditlab Network that computes `module`, with its weights copied exactly.

    `example_input` is one batch as the module receives it, (N, C, H, W) for images or
    (N, features) for vectors; it fixes the shapes. `loss` is the loss the network is trained
    on (cross_entropy, mse, bce). The network has the module's dtype and device; `seed` seeds
    its dropout masks. Raises UsageError for a module it cannot convert, naming the node.
    """
    if not isinstance(module, nn.Module):
        raise UsageError(f"from_torch needs a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(example_input, Tensor):
        raise UsageError(
            f"from_torch needs an example input tensor (one batch), got "
            f"{type(example_input).__name__}"
        )
    return _Converter(module, example_input, loss, seed).net


def _trace(module: nn.Module) -> fx.GraphModule:
    try:
        gm = fx.symbolic_trace(module)
    except CreditlabError:
        raise
    except Exception as err:  # fx's errors vary (TraceError, TypeError, ...): all one answer
        raise UsageError(
            f"torch.fx cannot trace {type(module).__name__}: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}. creditlab converts modules that "
            "torch.fx.symbolic_trace can trace (no control flow that depends on the data). "
            f"Supported: {SUPPORTED}"
        ) from None
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _propagate_shapes(gm: fx.GraphModule, module: nn.Module, example: Tensor) -> None:
    """Record every node's output shape (node.meta['tensor_meta']) by running the module once
    in evaluation mode without gradients, so that no running statistics move."""
    modes = {m: m.training for m in module.modules()}
    try:
        gm.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except Exception as err:
        cause = err.__cause__ or err  # ShapeProp wraps the module's own error
        text = str(cause).splitlines()[0] if str(cause) else ""
        raise UsageError(
            f"{type(module).__name__} fails on the example input of shape "
            f"{tuple(example.shape)}: {type(cause).__name__}: {text}"
        ) from None
    finally:
        for m, training in modes.items():
            m.training = training


class _Converter:
    def __init__(self, module: nn.Module, example: Tensor, loss: str, seed: int):
        self.module = module
        params = list(module.parameters())
        dtype = params[0].dtype if params else example.dtype
        device = params[0].device if params else example.device
        if dtype not in DTYPES.values():
            raise UsageError(
                f"the module's parameters are {dtype}; creditlab computes in float32 or float64 "
                "(convert with module.float() or module.double())"
            )
        if example.dtype != dtype or example.device != device:
            raise UsageError(
                f"the example input is {example.dtype} on {example.device}, the module's "
                f"parameters {dtype} on {device}; give an input of the module's dtype and device"
            )
        self.gm = _trace(module)
        for node in self.gm.graph.nodes:  # refuse what is unsupported before running it
            if not self._supported(node):
                raise UsageError(
                    f"cannot convert {self._describe(node)}: not supported. Supported: {SUPPORTED}"
                )
        _propagate_shapes(self.gm, module, example)
        self.net = Network(dtype=dtype, device=str(device), seed=seed)
        self.value: dict[fx.Node, str] = {}  # node -> the group whose activity it is
        self.sizes: set[fx.Node] = set()  # nodes that hold sizes (x.size(0), x.shape)
        self.used_modules: set[str] = set()
        # Groups with parameters are named after their module's path; the other groups after
        # their node, avoiding those paths.
        self.taken = {
            name
            for name, m in module.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d))
        }
        output = None
        for node in self.gm.graph.nodes:
            if node.op == "output":
                output = node
                break
            try:
                self._convert(node)
            except _Refusal as why:
                raise UsageError(f"cannot convert {self._describe(node)}: {why}") from None
            except CreditlabError as err:
                raise UsageError(f"cannot convert {self._describe(node)}: {err}") from None
        self._finish(output, loss)

    def _supported(self, node: fx.Node) -> bool:
        """Whether the node is of a supported module type, function or method (its settings
        and shapes are checked later, when it is converted)."""
        if node.op in ("placeholder", "output"):
            return True
        if node.op == "call_module":
            return type(self.gm.get_submodule(node.target)) in MODULES
        if node.op == "call_function":
            return node.target in FUNCTIONS
        if node.op == "call_method":
            return node.target in METHODS
        return False

    # ---- naming and describing ------------------------------------------------------------
    def _describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            m = self.gm.get_submodule(node.target)
            what = f"module {node.target!r} ({type(m).__module__}.{type(m).__name__})"
        elif node.op == "call_function":
            what = f"function {_function_name(node.target)}"
        elif node.op == "call_method":
            what = f"method .{node.target}()"
        elif node.op == "get_attr":
            what = f"attribute {node.target!r} (a tensor of the module used directly)"
        else:
            what = node.op
        return f"node {node.name!r}, {what}"

    def _name(self, node: fx.Node) -> str:
        """A new group's name: its module's path for a module (features.6), else the path of
        the module whose forward made it and the operation (layer1.0.add), made unique."""
        if node.op == "call_module":
            return self._fresh(node.target)
        stack = node.meta.get("nn_module_stack") or {}
        path = list(stack.values())[-1][0] if stack else ""
        base = re.sub(r"_\d+$", "", node.name)
        return self._fresh(f"{path}.{base}" if path else base)

    def _fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken or name in self.net.groups:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name

    # ---- helpers --------------------------------------------------------------------------
    def _shape(self, node: fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise _Refusal("its value is not a single tensor")
        return tuple(meta.shape)

    def _group_of(self, arg: Any) -> str:
        if not isinstance(arg, fx.Node) or arg not in self.value:
            raise _Refusal(f"its input {arg!r} is not a tensor computed from the module's input")
        return self.value[arg]

    def _input(self, node: fx.Node) -> str:
        return self._group_of(node.args[0] if node.args else node.kwargs.get("input"))

    def _image_input(self, node: fx.Node) -> str:
        """The group an image operation reads, checking the value is that group's image."""
        i = self._input(node)
        shape = self._shape(node.args[0])
        if len(shape) != 4 or shape[1:] != self.net.groups[i].shape:
            raise _Refusal(
                f"it needs an image batch (N, C, H, W) of the shape of group {i!r} "
                f"{self.net.groups[i].shape}; its input has shape {shape}"
            )
        return i

    def _alone(self, group: str, node: fx.Node) -> bool:
        """Whether `node` is the only reader of group's activity (counting every value that
        stands for it), so that an activation or dropout can join the group."""
        aliases = {n for n, g in self.value.items() if g == group}
        readers = {u for n in aliases for u in n.users} - aliases - self.sizes
        readers = {u for u in readers if not _is_size_read(u)}
        return readers == {node}

    def _check_inplace(self, node: fx.Node, inplace: bool) -> None:
        if inplace and len(node.args[0].users) > 1:
            raise _Refusal(
                "it works in place on a value that other operations also read, which changes "
                "what they see; use the out-of-place form"
            )

    def _activate(self, node: fx.Node, act: str) -> str:
        """The group computing act(input): the input's group when the activation can join
        it, else an identity group of its own with that activation."""
        lookup_activation(act)
        i = self._input(node)
        group = self.net.groups[i]
        if (
            not group.is_input
            and group.act.name == "identity"
            and group.dropout == 0.0
            and self._alone(i, node)
        ):
            group.act = lookup_activation(act)
            return i
        return self.net.add(i, activation=act, name=self._name(node)).name

    def _dropout(self, node: fx.Node, p: float) -> str:
        i = self._input(node)
        if p == 0.0:
            return i
        group = self.net.groups[i]
        if not group.is_input and group.dropout == 0.0 and self._alone(i, node):
            group.dropout = float(p)
            return i
        return self.net.add(i, name=self._name(node), dropout=float(p)).name

    def _flat_alias(self, node: fx.Node) -> str:
        """A value that is the group's activity flattened to (N, features): the same group."""
        i = self._input(node)
        shape = self._shape(node)
        if len(shape) != 2 or shape[1] != self.net.groups[i].size:
            raise _Refusal(
                f"it reshapes to {shape}; only flattening each example, to (N, "
                f"{self.net.groups[i].size}), is supported"
            )
        return i

    def _add(self, node: fx.Node, a: Any, b: Any) -> str:
        if a in self.sizes or b in self.sizes:  # arithmetic on sizes (x.size(1) + 1)
            self.sizes.add(node)
            return ""
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
            raise _Refusal("it adds a constant; only the sum of two computed values is supported")
        ga, gb = self._group_of(a), self._group_of(b)
        if ga == gb:
            raise _Refusal(f"it adds group {ga!r} to itself (write 2 * x as a layer instead)")
        if self._shape(a) != self._shape(b):
            raise _Refusal(
                f"it adds values of shapes {self._shape(a)} and {self._shape(b)}; a residual "
                "addition needs the same shape (no broadcasting)"
            )
        return self.net.add([ga, gb], name=self._name(node)).name

    def _pool(self, node: fx.Node, mode: str, kernel, stride, padding, ceil, extra_ok) -> str:
        i = self._image_input(node)
        k = _pair(kernel, "kernel")
        s = k if stride is None or stride == [] or stride == () else _pair(stride, "stride")
        if _pair(padding, "padding") != 0 or ceil or not extra_ok:
            raise _Refusal(
                "only pooling without padding, ceil_mode=False, dilation 1 and no "
                "divisor_override is supported"
            )
        return self.net.pool(i, k, kind=mode, stride=s, name=self._name(node)).name

    # ---- the nodes ------------------------------------------------------------------------
    def _convert(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            self._placeholder(node)
        elif node.op == "call_module":
            self.value[node] = self._module(node)
        elif node.op == "call_function":
            value = self._function(node)
            if value:
                self.value[node] = value
        elif node.op == "call_method":
            value = self._method(node)
            if value:
                self.value[node] = value
        else:
            raise _Refusal(f"not supported. Supported: {SUPPORTED}")

    def _placeholder(self, node: fx.Node) -> None:
        if self.net.input_name is not None:
            raise _Refusal("the module takes more than one input; creditlab networks take one")
        shape = self._shape(node)[1:]
        if len(shape) not in (1, 3):
            raise _Refusal(
                f"the input has shape {self._shape(node)}; creditlab takes (N, features) or "
                "images (N, C, H, W)"
            )
        size = shape[0] if len(shape) == 1 else shape
        self.value[node] = self.net.input(size, name=self._fresh("input")).name

    def _module(self, node: fx.Node) -> str:
        m = self.gm.get_submodule(node.target)
        kind = type(m)
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)):
            if node.target in self.used_modules:
                raise _Refusal(
                    "the module is called more than once; creditlab gives every call its own "
                    "parameters, so shared weights cannot be converted"
                )
            self.used_modules.add(node.target)
        if kind is nn.Linear:
            return self._linear(node, m)
        if kind is nn.Conv2d:
            return self._conv(node, m)
        if kind in (nn.BatchNorm1d, nn.BatchNorm2d):
            return self._batch_norm(node, m)
        if kind in ACTIVATION_MODULES:
            self._check_inplace(node, getattr(m, "inplace", False))
            return self._activate(node, ACTIVATION_MODULES[kind](m))
        if kind is nn.MaxPool2d:
            if m.return_indices:
                raise _Refusal("MaxPool2d(return_indices=True) is not supported")
            ok = _pair(m.dilation, "dilation") == 1
            return self._pool(node, "max", m.kernel_size, m.stride, m.padding, m.ceil_mode, ok)
        if kind is nn.AvgPool2d:
            ok = m.divisor_override is None
            return self._pool(node, "avg", m.kernel_size, m.stride, m.padding, m.ceil_mode, ok)
        if kind is nn.AdaptiveAvgPool2d:
            return self._global_pool(node, m.output_size)
        if kind is nn.Flatten:
            if m.start_dim != 1 or m.end_dim != -1:
                raise _Refusal(
                    f"Flatten(start_dim={m.start_dim}, end_dim={m.end_dim}): only "
                    "Flatten(1, -1), the default, is supported"
                )
            return self._flat_alias(node)
        if kind is nn.Identity:
            return self._input(node)
        if kind is nn.Dropout:
            self._check_inplace(node, m.inplace)
            return self._dropout(node, m.p)
        raise _Refusal(f"{kind.__name__} is not supported. Supported: {SUPPORTED}")

    def _linear(self, node: fx.Node, m: nn.Linear) -> str:
        i = self._input(node)
        shape = self._shape(node.args[0])
        if len(shape) != 2:
            raise _Refusal(
                f"its input has shape {shape}; a Linear layer reads (N, features) "
                "(flatten images first)"
            )
        bias = m.bias is not None
        j = self.net.dense(i, m.out_features, "identity", name=node.target, bias=bias).name
        with torch.no_grad():
            self.net.W[(i, j)].copy_(m.weight.t())
            if bias:
                self.net.b[j].copy_(m.bias)
        return j

    def _conv(self, node: fx.Node, m: nn.Conv2d) -> str:
        i = self._image_input(node)
        if m.groups != 1 or _pair(m.dilation, "dilation") != 1 or m.padding_mode != "zeros":
            raise _Refusal(
                f"Conv2d(groups={m.groups}, dilation={m.dilation}, padding_mode="
                f"{m.padding_mode!r}): only groups=1, dilation=1 and zero padding are supported"
            )
        k, stride = _pair(m.kernel_size, "kernel_size"), _pair(m.stride, "stride")
        if m.padding == "valid":
            padding = 0
        elif m.padding == "same":
            if k % 2 == 0 or stride != 1:
                raise _Refusal("padding='same' is supported for odd kernels and stride 1")
            padding = k // 2
        else:
            padding = _pair(m.padding, "padding")
        bias = m.bias is not None
        j = self.net.conv(
            i, m.out_channels, k, stride, padding, "identity", name=node.target, bias=bias
        ).name
        with torch.no_grad():
            self.net.W[(i, j)].copy_(m.weight)
            if bias:
                self.net.b[j].copy_(m.bias)
        return j

    def _batch_norm(self, node: fx.Node, m: nn.BatchNorm1d | nn.BatchNorm2d) -> str:
        spatial = isinstance(m, nn.BatchNorm2d)
        i = self._image_input(node) if spatial else self._input(node)
        if not spatial and len(self._shape(node.args[0])) != 2:
            raise _Refusal(
                f"BatchNorm1d of a {self._shape(node.args[0])} input: only (N, features) "
                "inputs are supported"
            )
        if not (m.affine and m.track_running_stats):
            raise _Refusal(
                f"{type(m).__name__}(affine={m.affine}, track_running_stats="
                f"{m.track_running_stats}): only affine batch norm with running statistics "
                "is supported"
            )
        j = self.net.batch_norm(
            i, momentum=m.momentum, eps=m.eps, spatial=spatial, name=node.target
        ).name
        with torch.no_grad():
            self.net.W[(i, j)].copy_(m.weight)
            self.net.b[j].copy_(m.bias)
            for key in ("running_mean", "running_var", "num_batches_tracked"):
                self.net.buffers[f"{key}[{j}]"].copy_(getattr(m, key))
        return j

    def _global_pool(self, node: fx.Node, output_size: Any) -> str:
        if output_size not in (1, (1, 1), [1, 1]):
            raise _Refusal(f"adaptive average pooling to {output_size}: only to 1 is supported")
        i = self._image_input(node)
        return self.net.global_pool(i, name=self._name(node)).name

    def _function(self, node: fx.Node) -> str:
        f = node.target
        if f in ACTIVATION_FUNCTIONS:
            inplace = f in (torch.relu_, F.relu_) or bool(node.kwargs.get("inplace", False))
            self._check_inplace(node, inplace)
            return self._activate(node, ACTIVATION_FUNCTIONS[f](node))
        if f in ADDS:
            if f is torch.add and _arg(node, 2, "alpha", 1) != 1:
                raise _Refusal("torch.add with alpha != 1 is not supported")
            if f is operator.iadd:
                self._check_inplace(node, True)
            return self._add(node, node.args[0], node.args[1])
        if f is torch.flatten:
            start, end = _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
            if start != 1 or end != -1:
                raise _Refusal(
                    f"torch.flatten(start_dim={start}, end_dim={end}): only "
                    "torch.flatten(x, 1) is supported"
                )
            return self._flat_alias(node)
        if (f is getattr and node.args[1] == "shape") or (
            f is operator.getitem and (node.args[0] in self.sizes)
        ):
            self.sizes.add(node)
            return ""
        if f is F.adaptive_avg_pool2d:
            return self._global_pool(node, _arg(node, 1, "output_size", None))
        if f is F.max_pool2d:
            return self._pool(
                node,
                "max",
                _arg(node, 1, "kernel_size", None),
                _arg(node, 2, "stride", None),
                _arg(node, 3, "padding", 0),
                _arg(node, 5, "ceil_mode", False),
                _pair(_arg(node, 4, "dilation", 1), "dilation") == 1
                and not _arg(node, 6, "return_indices", False),
            )
        if f is F.avg_pool2d:
            return self._pool(
                node,
                "avg",
                _arg(node, 1, "kernel_size", None),
                _arg(node, 2, "stride", None),
                _arg(node, 3, "padding", 0),
                _arg(node, 4, "ceil_mode", False),
                _arg(node, 6, "divisor_override", None) is None,
            )
        if f is F.dropout:
            self._check_inplace(node, bool(_arg(node, 3, "inplace", False)))
            training = _arg(node, 2, "training", True)
            return self._dropout(node, _arg(node, 1, "p", 0.5) if training else 0.0)
        raise _Refusal(f"not supported. Supported: {SUPPORTED}")

    def _method(self, node: fx.Node) -> str:
        name = node.target
        if name == "size":
            self.sizes.add(node)
            return ""
        if name in ACTIVATION_METHODS:
            self._check_inplace(node, name.endswith("_"))
            return self._activate(node, ACTIVATION_METHODS[name])
        if name in ("view", "reshape"):
            if self._shape(node) == self._shape(node.args[0]):
                return self._input(node)
            return self._flat_alias(node)
        if name == "flatten":
            start, end = _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
            if start != 1 or end != -1:
                raise _Refusal(f"x.flatten({start}, {end}): only x.flatten(1) is supported")
            return self._flat_alias(node)
        if name == "contiguous":
            return self._input(node)
        if name in ("add", "add_"):
            if _arg(node, 2, "alpha", 1) != 1:
                raise _Refusal("x.add(y, alpha != 1) is not supported")
            self._check_inplace(node, name == "add_")
            return self._add(node, node.args[0], _arg(node, 1, "other", None))
        if name == "mean":
            dims = _arg(node, 1, "dim", None)
            dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
            if len(self._shape(node.args[0])) == 4 and sorted(d % 4 for d in dims) == [2, 3]:
                return self._global_pool(node, 1)
            raise _Refusal(f"x.mean({dims}): only the mean over (2, 3) of an image is supported")
        raise _Refusal(f"not supported. Supported: {SUPPORTED}")

    def _finish(self, output: fx.Node | None, loss: str) -> None:
        value = output.args[0] if output is not None else None
        if not isinstance(value, fx.Node) or value not in self.value:
            raise UsageError(
                f"{type(self.module).__name__} returns {type(value).__name__}; from_torch "
                "needs a module that returns one tensor computed from its input"
            )
        o = self.value[value]
        if o == self.net.input_name:
            raise UsageError(f"{type(self.module).__name__} returns its input unchanged")
        if len(self._shape(value)) != 2:
            raise UsageError(
                f"{type(self.module).__name__} returns shape {self._shape(value)}; the scores "
                "must be (N, classes) (flatten them)"
            )
        self.net.output(o, loss=loss)


MODULES = {
    nn.Linear,
    nn.Conv2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
    *ACTIVATION_MODULES,
}
FUNCTIONS = {
    *ACTIVATION_FUNCTIONS,
    *ADDS,
    torch.flatten,
    getattr,
    operator.getitem,
    F.adaptive_avg_pool2d,
    F.max_pool2d,
    F.avg_pool2d,
    F.dropout,
}
METHODS = {
    *ACTIVATION_METHODS,
    "size",
    "view",
    "reshape",
    "flatten",
    "contiguous",
    "add",
    "add_",
    "mean",
}


def _is_size_read(node: fx.Node) -> bool:
    """x.size(...) and x.shape read only the shape of x, not its values."""
    if node.op == "call_method" and node.target == "size":
        return True
    return node.op == "call_function" and node.target is getattr and node.args[1] == "shape"


def _function_name(f: Any) -> str:
    """How a user would write the function: torch.sin, torch.nn.functional.softmax, ..."""
    name = getattr(f, "__name__", None) or repr(f)
    for prefix, namespace in (
        ("torch.nn.functional", F),
        ("torch", torch),
        ("operator", operator),
    ):
        if getattr(namespace, name, None) is f:
            return f"{prefix}.{name}"
    module = getattr(f, "__module__", None)
    return f"{module}.{name}" if module else name


def parameter_names(net: Network) -> dict[str, tuple[str, bool]]:
    """For a network converted by from_torch: each of its parameters and buffers by the
    engine's name -> (the module's state_dict key, whether the engine holds it transposed).
    A Linear's W_ij is its weight transposed (the engine multiplies from the left)."""
    names: dict[str, tuple[str, bool]] = {}
    for j, group in net.groups.items():
        if group.is_input or group.kind not in ("dense", "conv", "batch_norm"):
            continue
        (i,) = group.ins
        names[weight_name(i, j)] = (f"{j}.weight", group.kind == "dense")
        if j in net.b:
            names[bias_name(j)] = (f"{j}.bias", False)
        if group.kind == "batch_norm":
            for key in ("running_mean", "running_var", "num_batches_tracked"):
                names[f"{key}[{j}]"] = (f"{j}.{key}", False)
    return names


def to_torch(net: Network, module: nn.Module) -> nn.Module:
    """Write the network's parameters and batch-norm buffers into `module`, in place, and
    return it. The module has the structure `net` was converted from (from_torch): every
    Linear, Conv2d and BatchNorm group of the network is the submodule of that path, with
    the same shapes; a UsageError names any that is missing or does not fit."""
    if not isinstance(module, nn.Module):
        raise UsageError(f"to_torch needs a torch.nn.Module, got {type(module).__name__}")
    modules = dict(module.named_modules())
    expected = {
        j: g
        for j, g in net.groups.items()
        if g.kind in ("dense", "conv", "batch_norm") and not g.is_input
    }
    kinds = {"dense": nn.Linear, "conv": nn.Conv2d, "batch_norm": (nn.BatchNorm1d, nn.BatchNorm2d)}
    pending = []
    for j, group in expected.items():
        m = modules.get(j)
        if not isinstance(m, kinds[group.kind]):
            found = "nothing" if m is None else type(m).__name__
            raise UsageError(
                f"group {j!r} ({group.kind}) has no counterpart in {type(module).__name__}: "
                f"its submodule {j!r} is {found}; to_torch needs the structure from_torch "
                "converted"
            )
        (i,) = group.ins
        W = net.W[(i, j)]
        values = {"weight": W.t() if group.kind == "dense" else W}
        if bias_name(j) in net.parameters():
            values["bias"] = net.b[j]
        elif getattr(m, "bias", None) is not None:
            raise UsageError(f"group {j!r} has no bias but module {j!r} has one")
        if group.kind == "batch_norm":
            for key in ("running_mean", "running_var", "num_batches_tracked"):
                values[key] = net.buffers[f"{key}[{j}]"]
        for key, value in values.items():
            target = getattr(m, key)
            if target is None or tuple(target.shape) != tuple(value.shape):
                have = None if target is None else tuple(target.shape)
                raise UsageError(
                    f"{key} of module {j!r} has shape {have}; the network's group {j!r} gives "
                    f"{tuple(value.shape)}"
                )
            pending.append((target, value))
    with torch.no_grad():  # checked everything first: nothing is half written
        for target, value in pending:
            target.copy_(value.to(target.device, target.dtype))
    return module
