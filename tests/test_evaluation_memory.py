"""Evaluation passes take as many examples at once as memory allows, and give the same
accuracy and (up to rounding) the same loss whatever the chunk."""

import torch

from creditlab import rule
from creditlab.engine import memory
from creditlab.engine.models import build_model
from creditlab.training.trainer import evaluate


def test_a_capsule_network_evaluates_in_small_chunks_and_an_mlp_in_large_ones():
    caps = build_model("capsnet:small", 784, 10, dtype="float64", image_shape=(28, 28))
    mlp = build_model("mlp:256-256", 784, 10)
    assert memory.evaluation_chunk(caps) < 1024  # 8,192 float64 capsule examples held 12 GiB
    assert memory.evaluation_chunk(mlp) == 8192


def test_the_chunk_changes_nothing_but_rounding():
    net = build_model("lenet", 784, 10, dtype="float64", image_shape=(28, 28))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 784, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (300,), generator=g)
    bp = rule("bp")
    whole = evaluate(net, bp, x, y, 10, chunk=300)
    pieces = evaluate(net, bp, x, y, 10, chunk=7)
    assert pieces[1] == whole[1]
    assert abs(pieces[0] - whole[0]) < 1e-12
