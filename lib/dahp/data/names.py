"""The names of the registered settings and query splits, without importing torch.

The command line offers these names as choices and must answer ``--help`` without loading the
models; :mod:`dahp.data.settings` (the registry) and :mod:`dahp.training.ground_truth` (the splits)
import torch. ``tests/test_cli.py`` checks that these tuples equal what those modules register.
"""

from __future__ import annotations

#: the settings :mod:`dahp.data.settings` registers, in its order
SETTING_NAMES = ("mnist_lr", "mnist_mlp", "cifar2_resnet9", "wikitext2_gpt2", "maestro_mt")
#: the held-out splits whose points are attribution queries (the LDS is judged on ``test``)
QUERY_SPLITS = ("val", "test")
