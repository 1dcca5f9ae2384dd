"""Batched (vmap) against sequential training of the LDS subset models of ``mnist_mlp``.

Trains ``--models`` subset models (the ground truth's own subsets and seeds, the setting's recipe,
dropout on) three ways in one run:

1. dattri's own loop, ``dattri.benchmark.datasets.mnist.train_mnist_mlp``, over a ``DataLoader``
   with a subset sampler -- what retraining with dattri's benchmark code costs;
2. our sequential reference, :func:`dahp.training.train.train_one` (the same ``torch.optim.SGD`` loop,
   batches sliced from tensors, no ``DataLoader``), the loop the batched path is tested against;
3. all models at once with :func:`dahp.training.train.train_many`.

Every path runs the same number of SGD steps of the same size, so the ratios do not depend on
``--epochs``; the default keeps the whole script near a minute on two cores.

A second part (``--part resnet9``) measures what batch norm costs batched: ``--bn-models``
ResNet-9 models of ``cifar2_resnet9`` (dropout on, the setting's recipe at batch ``--bn-batch``)
on ``--bn-images`` random CIFAR-shaped images for one epoch, trained one by one with
:func:`~dahp.training.train.train_one` and all at once with :func:`~dahp.training.train.train_many` (stacked
parameters and running statistics), side by side in the same run.

    python bench/batched_training.py [--part all|mnist|resnet9] [--models 50] [--epochs 3]
                                     [--bn-models 4] [--bn-images 64] [--bn-batch 16]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
from dattri.benchmark.datasets.mnist.mnist_mlp import train_mnist_mlp
from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset
from tqdm.auto import tqdm

from dahp.core.config import GroundTruthConfig
from dahp.data.settings import get_setting
from dahp.training.ground_truth import model_seed, subset_indices
from dahp.training.train import accuracy_many, stack_states, train_many, train_one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["all", "mnist", "resnet9"], default="all")
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--bn-models", type=int, default=4)
    parser.add_argument("--bn-images", type=int, default=64)
    parser.add_argument("--bn-batch", type=int, default=16)
    args = parser.parse_args()
    if args.part in ("all", "mnist"):
        mnist_mlp(args)
    if args.part in ("all", "resnet9"):
        resnet9(args)


def mnist_mlp(args: argparse.Namespace) -> None:
    """Part 1: dattri's loop, the sequential reference and the batched path on mnist_mlp."""
    base = get_setting("mnist_mlp")
    setting = dataclasses.replace(base, recipe=dataclasses.replace(base.recipe, epochs=args.epochs))
    data = setting.data()
    config = GroundTruthConfig(n_models=args.models)
    index_sets = torch.from_numpy(np.stack([subset_indices(data.n_train, config, j) for j in range(args.models)]))
    seeds = [model_seed(config, j) for j in range(args.models)]
    print(
        f"{args.models} {setting.name} models, {index_sets.shape[1]} points each, {args.epochs} epochs, "
        f"{torch.get_num_threads()} threads"
    )

    dataset = TensorDataset(data.x_train, data.y_train)
    started = time.perf_counter()
    for ix, s in tqdm(list(zip(index_sets, seeds)), desc="dattri loop", leave=False):
        loader = DataLoader(
            dataset,
            batch_size=setting.recipe.batch_size,
            sampler=SubsetRandomSampler(ix.tolist(), generator=torch.Generator().manual_seed(s)),
        )
        train_mnist_mlp(loader, seed=s, epoch_num=args.epochs)
    dattri_seconds = time.perf_counter() - started

    started = time.perf_counter()
    models = [
        train_one(setting, data.x_train, data.y_train, ix, s)
        for ix, s in tqdm(list(zip(index_sets, seeds)), desc="sequential", leave=False)
    ]
    sequential_seconds = time.perf_counter() - started
    sequential = stack_states(models)

    started = time.perf_counter()
    batched = train_many(setting, data.x_train, data.y_train, index_sets, seeds, progress="batched")
    batched_seconds = time.perf_counter() - started

    acc_seq = accuracy_many(setting, sequential, data.x_test, data.y_test)
    acc_bat = accuracy_many(setting, batched, data.x_test, data.y_test)
    print(f"dattri loop (DataLoader):     {dattri_seconds:8.2f} s")
    print(
        f"sequential reference loop:    {sequential_seconds:8.2f} s   "
        f"test accuracy {acc_seq.mean():.4f} ± {acc_seq.std():.4f}"
    )
    print(
        f"batched (vmap):               {batched_seconds:8.2f} s   "
        f"test accuracy {acc_bat.mean():.4f} ± {acc_bat.std():.4f}"
    )
    print(f"RESULT batched_training_speedup {sequential_seconds / batched_seconds:.2f} goal 5")
    print(f"RESULT batched_training_speedup_vs_dattri_loop {dattri_seconds / batched_seconds:.2f} goal 5")


def resnet9(args: argparse.Namespace) -> None:
    """Part 2: ResNet-9 (batch norm) trained one by one and batched, on the CPU, side by side."""
    base = get_setting("cifar2_resnet9")
    setting = dataclasses.replace(base, recipe=dataclasses.replace(base.recipe, epochs=1, batch_size=args.bn_batch))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.bn_images, 3, 32, 32, generator=generator)
    y = torch.randint(0, 2, (args.bn_images,), generator=generator)
    index_sets = torch.arange(args.bn_images).repeat(args.bn_models, 1)
    seeds = list(range(args.bn_models))
    print(
        f"{args.bn_models} ResNet-9 models (batch norm, dropout), {args.bn_images} images, batch {args.bn_batch}, "
        f"1 epoch, cpu, {torch.get_num_threads()} threads"
    )
    started = time.perf_counter()
    sequential = stack_states([train_one(setting, x, y, ix, s, device="cpu") for ix, s in zip(index_sets, seeds)])
    sequential_seconds = time.perf_counter() - started
    started = time.perf_counter()
    batched = train_many(setting, x, y, index_sets, seeds, device="cpu")
    batched_seconds = time.perf_counter() - started
    assert batched.keys() == sequential.keys()  # parameters and running statistics, both ways
    print(f"sequential (train_one):       {sequential_seconds:8.2f} s")
    print(f"batched (vmap, batch norm):   {batched_seconds:8.2f} s")
    print(f"RESULT resnet9_bn_batched_over_sequential_time {batched_seconds / sequential_seconds:.2f}")
    print(f"RESULT resnet9_bn_batched_training_speedup {sequential_seconds / batched_seconds:.2f}")


if __name__ == "__main__":
    main()
