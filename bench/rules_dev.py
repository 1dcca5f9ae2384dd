"""The λ rules on seven small problems of their own, through the public selector (a development check).

Not the robustness study of issue 13 (:mod:`dahp.experiments.robustness`, held-out families): these
are the problems the rules' author looked at while writing :mod:`dahp.selection.rules` -- scikit-learn digits
(logistic regression; an MLP with SGD + momentum; an MLP with Adam), breast cancer (logistic
regression), a Gaussian mixture (MLP, AdamW with weight decay) and a teacher network (MLP with a
linear-decay schedule; a short logistic regression) -- so their numbers are in-sample for the rules
designed on them (``median_xi_recipe``, ``recipe_gauss_newton``). Each model is trained here with
plain ``torch.optim``, wrapped in a ``dattri`` task and given to
:func:`dahp.selection.selector.select_regularization` in its budget mode (5 retrainings); the judge is the LDS
of ``--models`` further retrained models on 200 test queries over the selector's grid. IFFIM uses
loss gradients; TRAK (one model, full gradients) margin gradients, without TRAK's ``1 − p``
per-point factor in the scores (the selector's budget mode leaves it out too).

    python bench/rules_dev.py [--models 30] [--out rules_dev.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from dattri.task import AttributionTask
from sklearn.datasets import load_breast_cancer, load_digits
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from dahp.attribution.lds import lds
from dahp.data.targets import correct_class_margin
from dahp.selection.rules import RecipeFacts
from dahp.selection.selector import select_regularization, task_factors

PROBLEMS = [
    ("digits", "lr", 600, {"opt": "sgd", "lr": 0.1, "epochs": 20, "bs": 32}),
    ("digits", "mlp", 600, {"opt": "sgd", "lr": 0.02, "epochs": 30, "bs": 32, "mom": 0.9}),
    ("digits", "mlp", 600, {"opt": "adam", "lr": 1e-3, "epochs": 20, "bs": 32}),
    ("cancer", "lr", 300, {"opt": "sgd", "lr": 0.05, "epochs": 50, "bs": 16}),
    ("mixture", "mlp", 600, {"opt": "adamw", "lr": 3e-3, "epochs": 20, "bs": 32, "wd": 1e-2}),
    ("teacher", "mlp", 600, {"opt": "sgd", "lr": 0.1, "epochs": 40, "bs": 32, "sched": "linear"}),
    ("teacher", "lr", 600, {"opt": "sgd", "lr": 0.1, "epochs": 5, "bs": 64}),
]
SHOWN = ["xi_continuous", "xi_saturation_0.9", "recipe", "recipe_gauss_newton", "median_xi_recipe"]
SHOWN += ["spectrum_q0.9", "budget_val_lds_5", "budget_bracket_5"]


def dataset(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels, shuffled by a fixed seed."""
    rng = np.random.default_rng(0)
    if name == "digits":
        x, y = load_digits(return_X_y=True)
        x = x / 16.0
    elif name == "cancer":
        x, y = load_breast_cancer(return_X_y=True)
        x = (x - x.mean(0)) / x.std(0)
    elif name == "mixture":
        centers = rng.normal(0, 1.0, (5, 20))
        y = rng.integers(0, 5, 1400)
        x = centers[y] + rng.normal(0, 1.2, (1400, 20))
    else:  # a random two-layer teacher with label noise
        x = rng.normal(0, 1, (1400, 30))
        hidden, out = rng.normal(0, 1, (30, 16)), rng.normal(0, 1, (16, 4))
        y = np.argmax(np.tanh(x @ hidden) @ out + 0.5 * rng.normal(0, 1, (1400, 4)), 1)
    order = rng.permutation(len(y))
    return torch.tensor(x[order], dtype=torch.float32), torch.tensor(y[order])


def train(arch: str, x, y, rows, seed: int, opt, lr, epochs, bs, mom=0.0, wd=0.0, sched="constant"):
    """Plain torch.optim training; returns the model and its number of steps."""
    torch.manual_seed(seed)
    classes = int(y.max()) + 1
    model = (
        nn.Linear(x.shape[1], classes)
        if arch == "lr"
        else nn.Sequential(nn.Linear(x.shape[1], 32), nn.Tanh(), nn.Linear(32, classes))
    )
    if opt == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=mom, weight_decay=wd)
    else:
        kind = torch.optim.Adam if opt == "adam" else torch.optim.AdamW
        optimizer = kind(model.parameters(), lr=lr, weight_decay=wd)
    total, step = epochs * -(-len(rows) // bs), 0
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        shuffled = torch.as_tensor(rows)[torch.randperm(len(rows), generator=order)]
        for start in range(0, len(shuffled), bs):
            batch = shuffled[start : start + bs]
            if sched == "linear":  # linear decay to 0, no warm-up
                for group in optimizer.param_groups:
                    group["lr"] = lr * (total - step) / total
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
            step += 1
    return model.eval(), total


def run(models: int) -> list[dict]:
    """Every problem x attributor: the selector's picks and their test LDS / best on the grid."""
    rows = []
    for data_name, arch, n, recipe in PROBLEMS:
        x, y = dataset(data_name)
        train_part, val, test = slice(0, n), slice(n, n + 150), slice(n + 150, n + 350)
        xt, yt = x[train_part], y[train_part]
        model, steps = train(arch, xt, yt, np.arange(n), 0, **recipe)

        def loss(params, data, model=model):
            xb, yb = data
            return nn.functional.cross_entropy(
                functional_call(model, params, (xb.reshape(-1, x.shape[1]),)), yb.reshape(-1)
            )

        def margin(params, data, model=model):
            xb, yb = data
            logits = functional_call(model, params, (xb.reshape(-1, x.shape[1]),))
            return correct_class_margin(logits, yb.reshape(-1)).sum()

        def loader(part):
            return DataLoader(TensorDataset(x[part], y[part]), batch_size=400)

        n_params = sum(p.numel() for p in model.parameters())
        facts = RecipeFacts(
            recipe["opt"], recipe["lr"], recipe.get("mom", 0.0), (0.9, 0.999), 1e-8, recipe.get("wd", 0.0),
            recipe.get("sched", "constant"), 0, steps, recipe["bs"], n, n_params,
        )  # fmt: skip

        def retrain(indices, seed, arch=arch, xt=xt, yt=yt, recipe=recipe):
            return train(arch, xt, yt, indices, 1000 + seed, **recipe)[0]

        rng = np.random.default_rng(7)
        subsets = np.stack([np.sort(rng.choice(n, n // 2, replace=False)) for _ in range(models)])
        outcomes = []
        for j, subset in enumerate(subsets):
            judge, _ = train(arch, xt, yt, subset, 5000 + j, **recipe)
            with torch.no_grad():
                outcomes.append(correct_class_margin(judge(x[test]), y[test]))
        outcomes = torch.stack(outcomes)
        for attributor in ("iffim", "trak"):
            task = AttributionTask(
                loss_func=loss if attributor == "iffim" else margin,
                model=model,
                checkpoints=model.state_dict(),
                target_func=margin,
            )
            result = select_regularization(
                task, loader(train_part), loader(val), attributor, recipe=facts, retrain=retrain, device="cpu"
            )
            factors = task_factors(task, loader(train_part), loader(test), attributor, device="cpu")[0]
            sign = -1.0 if attributor == "iffim" else 1.0

            def judged(lam, factors=factors, sign=sign):
                return lds(sign * factors.scores(lam), outcomes, subsets).mean

            curve = [judged(lam) for lam in result.candidates]
            best = float(np.nanmax(curve))
            name = f"{data_name}_{arch}_{recipe['opt']}" + ("_momentum" if recipe.get("mom") else "")
            name += f"_{recipe['sched']}" if recipe.get("sched") else ""
            rows.append(
                {
                    "problem": name,
                    "attributor": attributor,
                    "best": best,
                    "grid": result.candidates,
                    "xi_bar": result.xi_bar.tolist(),
                    "lds": curve,
                    "picks": {p.rule: [p.regularization, judged(p.regularization) / best] for p in result.picks},
                }
            )
            print(f"{name:30s} {attributor:5s} best LDS {best:.3f}", flush=True)
    return rows


def summary(rows: list[dict]) -> None:
    """Per rule and attributor: worst, median and count of problems at >= 0.95 of the best."""
    for attributor in ("iffim", "trak"):
        for rule in SHOWN:
            values = np.array(
                [r["picks"][rule][1] for r in rows if r["attributor"] == attributor and rule in r["picks"]]
            )
            if len(values):
                print(
                    f"{attributor:5s} {rule:20s} worst {values.min():.3f}  median {np.median(values):.3f}  "
                    f">= 0.95: {(values >= 0.95).sum()}/{len(values)}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=30, help="retrained models that judge the picks")
    parser.add_argument("--out", default=None, help="write every row (curves and picks) to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = run(args.models)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(rows, handle, default=float)
    summary(rows)


if __name__ == "__main__":
    main()
