"""Shared by the benchmark scripts: the batches creditlab's training loop draws in an epoch, for a
plain PyTorch reference trained beside it (the same order, and the same random shifts under
--augment, from the same seeded generators)."""

from collections.abc import Iterator

import torch

from creditlab.data.augment import augment, image_shape_of, parse_augment
from creditlab.training.trainer import epoch_permutation, shift_generator


def epoch_batches(data, config, epoch: int, device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, labels) of every training batch of `epoch`, as Trainer.train_epoch draws them."""
    order = epoch_permutation(config.seed, epoch, data.train_x.shape[0], device)
    xs, ys = data.train_x[order], data.train_y[order]
    augments = parse_augment(config.augment)
    if augments:
        shifts = shift_generator(config.seed, epoch, device)
        image = image_shape_of(data.image_shape, data.input_size)
    for a in range(0, xs.shape[0], config.batch_size):
        xb, yb = xs[a : a + config.batch_size], ys[a : a + config.batch_size]
        if augments:
            xb = augment(xb, image, augments, shifts)
        yield xb, yb
