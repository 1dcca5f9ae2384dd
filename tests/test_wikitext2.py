"""The wikitext2_gpt2 setting on tiny files in the real formats (written by ``write_fixture``), on the CPU.

The loader, every malformed-file message, the model against Hugging Face's own GPT2LMHeadModel,
one fine-tuning run against dattri's training loop (AdamW + transformers' linear schedule),
the batched trainer, per-example gradients, and dattri's LoGra through ``dahp.attribution.dattri_bridge`` and
``dahp.experiments.grid`` on a fine-tuned model.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from dahp.data import wikitext2
from dahp.data.settings import MissingDataError, get_setting

SETTING = "wikitext2_gpt2"


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wikitext2")
    wikitext2.write_fixture(root)
    return root


@pytest.fixture()
def data_root(fixture_root, tmp_path, monkeypatch) -> Path:
    """A private copy of the fixture, set as the data directory."""
    root = tmp_path / "data"
    shutil.copytree(fixture_root, root)
    monkeypatch.setenv("DAHP_DATA_DIR", str(root))
    return root


@pytest.fixture()
def data(data_root):
    return get_setting(SETTING).data()


def _reference_hf_model(root: Path):
    """Hugging Face's GPT2LMHeadModel from the same checkpoint, untouched (Conv1D layers, tied head)."""
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(str(root / "gpt2"), local_files_only=True, attn_implementation="eager")


CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _in_hf_layout(state: dict) -> dict:
    """Our state in GPT2LMHeadModel's layout (its Conv1D weights are stored transposed)."""
    return {k: v.T if k.endswith(CONV1D_WEIGHTS) else v for k, v in state.items()}


def _without_dropout(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


# --------------------------------------------------------------------------------------------
# Loader


def test_split_shapes_dtypes_and_vocabulary(data, data_root):
    vocab = json.loads((data_root / "gpt2" / "config.json").read_text())["vocab_size"]
    for split in ("train", "val", "test"):
        x, y = (data.x_train, data.y_train) if split == "train" else data.queries(split)
        assert x.dtype == torch.int64 and x.ndim == 2 and x.shape[1] == wikitext2.BLOCK_SIZE
        assert len(x) >= 2 and torch.equal(x, y)
        assert 0 <= int(x.min()) and int(x.max()) < vocab
    assert data.n_train >= 8


@pytest.mark.parametrize(
    ("split", "file"), [("train", "wiki.train.raw"), ("val", "wiki.test.raw"), ("test", "wiki.valid.raw")]
)
def test_blocks_are_the_files_text_in_order(data, data_root, split, file):
    """Decoded, the blocks of a split are the start of its file's text with blank lines dropped."""
    tokenizer = wikitext2.load_tokenizer(data_root)
    x = data.x_train if split == "train" else data.queries(split)[0]
    decoded = tokenizer.decode(x.flatten().tolist())
    texts = wikitext2.read_raw_texts(data_root / "wikitext-2-raw" / file)
    joined = "".join(texts)
    assert decoded == joined[: len(decoded)]
    assert len(joined) - len(decoded) < len(joined) / len(x)  # only the remainder of one block is dropped


def test_fingerprint_is_deterministic(fixture_root, tmp_path):
    """Two fixtures written independently load to the same split, bit for bit."""
    other = tmp_path / "again"
    wikitext2.write_fixture(other)
    for name in ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw"):
        assert (other / "wikitext-2-raw" / name).read_bytes() == (fixture_root / "wikitext-2-raw" / name).read_bytes()
    assert (other / "gpt2" / "tokenizer.json").read_bytes() == (fixture_root / "gpt2" / "tokenizer.json").read_bytes()
    first, second = wikitext2.load_wikitext2(fixture_root), wikitext2.load_wikitext2(other)
    assert first.fingerprint == second.fingerprint


def test_raw_texts_are_the_lines_of_the_file(tmp_path):
    """One text per line ending in a newline (other line separators stay inside), blank lines empty."""
    path = tmp_path / "wiki.train.raw"
    path.write_bytes(" = Title = \n \n One\u2028two . \r\n = = Part = = \nlast".encode())
    assert wikitext2.read_raw_texts(path) == [" = Title = \n", "", " One\u2028two . \n", " = = Part = = \n", "last"]


class _CountingTokenizer:
    """Every text is three tokens: its index in the call, three times (hand-checkable grouping)."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[i, i, i] for i, _ in enumerate(texts)]}


def test_blocks_are_cut_per_thousand_texts():
    """Per run of 1,000 texts the tokens are cut into blocks and the remainder dropped (dattri's grouping)."""
    blocks = wikitext2.token_blocks(["t"] * 2500, _CountingTokenizer(), block_size=7)
    # 3,000 tokens -> 428 blocks (4 dropped), twice; 1,500 -> 214 blocks (2 dropped)
    assert blocks.shape == (428 + 428 + 214, 7)
    assert blocks[428].tolist() == [0, 0, 0, 1, 1, 1, 2]  # the second run starts a fresh block
    assert blocks[427].tolist() == [996, 996, 997, 997, 997, 998, 998]


# --------------------------------------------------------------------------------------------
# Missing and malformed files: one message naming the file, the problem and the source


def _train_raw(root: Path) -> Path:
    return root / "wikitext-2-raw" / "wiki.train.raw"


def _edit_config(root: Path, **changes) -> None:
    path = root / "gpt2" / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


BAD_FILES = {
    "missing raw file": (lambda r: _train_raw(r).unlink(), "wikitext-2-raw/wiki.train.raw", "Missing"),
    "missing weights": (lambda r: (r / "gpt2" / "model.safetensors").unlink(), "gpt2/model.safetensors", "Missing"),
    "empty raw file": (
        lambda r: (r / "wikitext-2-raw" / "wiki.valid.raw").write_bytes(b""),
        "wikitext-2-raw/wiki.valid.raw",
        "empty",
    ),
    "not UTF-8": (
        lambda r: _train_raw(r).write_bytes(b" = T = \n\xff\xfe\n"),
        "wikitext-2-raw/wiki.train.raw",
        "UTF-8",
    ),
    "no headings": (
        lambda r: _train_raw(r).write_text("just some words\n" * 50),
        "wikitext-2-raw/wiki.train.raw",
        "not a WikiText raw file",
    ),
    "too short": (
        lambda r: (r / "wikitext-2-raw" / "wiki.test.raw").write_text(" = Short = \n \n A few words . \n"),
        "wikitext-2-raw/wiki.test.raw",
        "not one block of 512 tokens",
    ),
    "config not JSON": (
        lambda r: (r / "gpt2" / "config.json").write_text("{model_type: gpt2"),
        "gpt2/config.json",
        "not valid JSON",
    ),
    "config not GPT-2": (lambda r: _edit_config(r, model_type="bert"), "gpt2/config.json", "not a GPT-2 config"),
    "positions too few": (lambda r: _edit_config(r, n_positions=128), "gpt2/config.json", "n_positions=128"),
    "tokenizer of another model": (
        lambda r: _edit_config(r, vocab_size=50257),
        "gpt2/tokenizer.json",
        "vocab_size=50257",
    ),
    "tokenizer not JSON": (
        lambda r: (r / "gpt2" / "tokenizer.json").write_text("vocab"),
        "gpt2/tokenizer.json",
        "not a tokenizers JSON",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_stops_with_one_message(data_root, case):
    spoil, file, problem = BAD_FILES[case]
    spoil(data_root)
    setting = get_setting(SETTING)
    with pytest.raises(MissingDataError) as caught:
        setting.data()
    message = str(caught.value)
    assert str(data_root / file) in message and problem in message
    source = "Salesforce/wikitext" if file.startswith("wikitext") else "Hugging Face model 'gpt2'"
    assert source in message
    # one file named: no other file of the setting appears in the message
    others = [f for f in wikitext2.REQUIRED_FILES if f != file]
    assert not any(str(data_root / f) in message for f in others)


def test_corrupt_weights_name_the_file(data_root):
    (data_root / "gpt2" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(MissingDataError, match=r"model\.safetensors: cannot be loaded"):
        get_setting(SETTING).make_model()


# --------------------------------------------------------------------------------------------
# Model, loss and target


def test_model_matches_hugging_face_gpt2(data, data_root):
    """Our module (Linear for Conv1D, functional tied head) computes GPT2LMHeadModel's logits and loss."""
    setting = get_setting(SETTING)
    ours, reference = setting.make_model().eval(), _reference_hf_model(data_root).eval()
    x = data.x_train[:3]
    with torch.no_grad():
        expected = reference(input_ids=x, labels=x)
        logits = ours(x)
        torch.testing.assert_close(logits, expected.logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(setting.loss(logits, x), expected.loss, rtol=1e-6, atol=1e-6)
        per_example = torch.stack([reference(input_ids=x[i : i + 1], labels=x[i : i + 1]).loss for i in range(3)])
        torch.testing.assert_close(setting.target(logits, x), -per_example, rtol=1e-5, atol=1e-6)
        # the forms other parts of the package hand in: float ids, flattened labels, labels= keyword
        torch.testing.assert_close(ours(x.float()), logits)
        torch.testing.assert_close(setting.loss(logits, x.reshape(-1)), expected.loss, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ours(x, labels=x).loss, expected.loss, rtol=1e-6, atol=1e-6)


def test_every_seed_starts_from_the_pretrained_weights(data_root):
    """A seed sets the dropout stream only: loading (cached or not) draws nothing from it."""
    setting = get_setting(SETTING)
    wikitext2._pretrained.cache_clear()
    torch.manual_seed(5)
    expected_draw = torch.rand(4)
    setting.init_model(5)
    assert torch.equal(torch.rand(4), expected_draw)
    first, second = setting.init_model(0).state_dict(), setting.init_model(7).state_dict()
    reference = _reference_hf_model(data_root).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(value, reference[k]) for k, value in _in_hf_layout(first).items())


def test_recipe_is_dattris_fine_tuning():
    recipe = get_setting(SETTING).recipe
    assert (recipe.optimizer, recipe.lr, recipe.batch_size, recipe.epochs) == ("adamw", 5e-5, 8, 3)
    assert (recipe.schedule, recipe.warmup_steps, recipe.weight_decay) == ("linear", 0, 0.0)


# --------------------------------------------------------------------------------------------
# Training


def _fast(setting, **changes):
    """The setting's recipe with a learning rate large enough that 6 steps move every weight visibly."""
    return dataclasses.replace(setting, recipe=dataclasses.replace(setting.recipe, lr=1e-2, **changes))


@pytest.mark.slow
def test_fine_tuning_is_dattris_training_loop(data, data_root):
    """train_one reproduces dattri's loop: HF GPT-2, model(**batch).loss, AdamW and transformers' linear schedule."""
    from transformers import get_linear_schedule_with_warmup

    from dahp.training.train import epoch_orders, order_generator, train_one

    setting = _fast(get_setting(SETTING))
    recipe, seed = setting.recipe, 3
    indices = torch.arange(data.n_train)
    ours = train_one(setting, data.x_train, data.y_train, indices, seed)

    reference = _reference_hf_model(data_root).train()
    torch.manual_seed(seed)  # the dropout stream, as Setting.init_model seeds it
    optimizer = torch.optim.AdamW(reference.parameters(), lr=recipe.lr, weight_decay=0.0)
    total = recipe.epochs * recipe.steps_per_epoch(data.n_train)
    schedule = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=0, num_training_steps=total)
    generator = order_generator(seed)
    for _ in range(recipe.epochs):
        order = epoch_orders(indices, generator)
        for start in range(0, len(order), recipe.batch_size):
            batch = data.x_train[order[start : start + recipe.batch_size]]
            reference(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
    start = _reference_hf_model(data_root).state_dict()
    expected = reference.state_dict()
    for name, value in _in_hf_layout(ours.state_dict()).items():
        moved, reference_moved = value - start[name], expected[name] - start[name]
        assert torch.linalg.norm(moved - reference_moved) <= 1e-3 * torch.linalg.norm(reference_moved), name


@pytest.mark.slow
def test_batched_training_matches_one_by_one(data):
    """train_many (vmap over the stacked GPT-2s) equals train_one model for model without dropout."""
    from dahp.training.train import train_many, train_one

    base = _fast(get_setting(SETTING))
    setting = dataclasses.replace(base, make_model=lambda: _without_dropout(wikitext2.make_gpt2()))
    index_sets = torch.stack([torch.arange(0, 8), torch.arange(1, 9)])
    stacked = train_many(setting, data.x_train, data.y_train, index_sets, [0, 1])
    for k, seed in enumerate([0, 1]):
        one = train_one(setting, data.x_train, data.y_train, index_sets[k], seed).state_dict()
        start = setting.init_model(seed).state_dict()
        for name, value in one.items():
            moved, batched_moved = value - start[name], stacked[name][k] - start[name]
            assert torch.linalg.norm(batched_moved - moved) <= 1e-3 * torch.linalg.norm(moved) + 1e-7, name


def test_targets_of_stacked_models(data):
    """evaluate_many (the LDS ground truth's path: vmap over stacked states) gives each model's target."""
    from dahp.training.train import evaluate_many, stack_states

    setting = get_setting(SETTING)
    models = [setting.init_model(0), _without_dropout(setting.init_model(0))]
    with torch.no_grad():
        for parameter in models[1].parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    values = evaluate_many(setting, stack_states(models), data.x_test, data.y_test)
    with torch.no_grad():
        expected = torch.stack([setting.target(m.eval()(data.x_test), data.y_test) for m in models])
    torch.testing.assert_close(values, expected, rtol=1e-5, atol=1e-5)
    assert (values < 0).all() and not torch.allclose(values[0], values[1])  # negative losses, two models


def test_batched_training_with_dropout_differs_by_seed(data):
    from dahp.training.train import train_many

    setting = _fast(get_setting(SETTING), epochs=1)
    index_sets = torch.stack([torch.arange(8), torch.arange(8)])
    stacked = train_many(setting, data.x_train, data.y_train, index_sets, [0, 1])
    wte = stacked["transformer.wte.weight"]
    assert torch.isfinite(wte).all() and not torch.equal(wte[0], wte[1])  # different orders and masks


# --------------------------------------------------------------------------------------------
# Attribution


def _gradient_reference(setting, state, x, y, fn) -> torch.Tensor:
    """Per-example gradients by plain autograd, one example at a time, in named_parameters order."""
    model = setting.make_model().eval()
    model.load_state_dict(state)
    rows = []
    for i in range(len(x)):
        model.zero_grad()
        fn(model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return torch.stack(rows)


def test_per_example_gradients_through_torch_func(data):
    from dahp.attribution.features import per_example_gradients

    setting = get_setting(SETTING)
    state = setting.init_model(0).state_dict()
    x, y = data.x_train[:4], data.y_train[:4]
    loss_rows = per_example_gradients(setting, state, x, y, setting.loss)
    torch.testing.assert_close(loss_rows, _gradient_reference(setting, state, x, y, setting.loss), rtol=1e-4, atol=1e-6)
    target_rows = per_example_gradients(setting, state, x, y, setting.target)
    torch.testing.assert_close(target_rows, -loss_rows, rtol=1e-5, atol=1e-7)  # one example: target = -loss


HOOKED = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  #: the Linear layers of every block


def _projected_gradients(setting, state, x, scorer) -> torch.Tensor:
    """Exact per-example gradients of each hooked layer, weight and bias as LoGra lays them out (the
    bias as the last input column), projected by the scorer's own projection matrices: ``(len(x), D)``.

    dattri projects the factors of each layer's gradient, ``(P1ᵀ δ_t)(P2ᵀ a_t)ᵀ`` summed over positions;
    the projections are linear, so this is ``P1ᵀ G P2`` of the whole gradient ``G`` (rows: outputs),
    flattened row-major, which this function forms from plain autograd, one example at a time.
    """
    model = setting.make_model().eval()
    model.load_state_dict(state)
    modules = dict(model.named_modules())
    attributor = scorer._attr
    rows = []
    for i in range(len(x)):
        model.zero_grad()
        setting.loss(model(x[i : i + 1]), x[i : i + 1]).backward()
        parts = []
        for k, name in enumerate(attributor.layer_names):
            layer = modules[name]
            gradient = torch.cat([layer.weight.grad, layer.bias.grad.unsqueeze(1)], dim=1)
            left, right = attributor.compressors[k].sparsifier.sparsifier_comp
            projected = right(left(gradient.T.contiguous(), ensemble_id=0).T.contiguous(), ensemble_id=0)
            parts.append(projected.reshape(-1))
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def _fine_tuned_state(setting, data):
    """A model some AdamW steps away from the pretrained weights (no dropout: one deterministic state)."""
    from dahp.training.train import train_one

    fast = dataclasses.replace(_fast(setting, epochs=1), make_model=lambda: _without_dropout(wikitext2.make_gpt2()))
    return train_one(fast, data.x_train, data.y_train, torch.arange(data.n_train), 0).state_dict()


@pytest.mark.slow
def test_logra_without_curvature_is_the_exact_gradient_inner_product(data):
    """Through the bridge, LoGra with the identity Hessian scores the inner products of the per-example
    loss gradients of every block's Linear layers (weights and biases), projected by its own matrices,
    whatever the batch size: 16 training points in batches of 3 and 4 queries in batches of 3 leave
    a smaller last batch on both sides, and batches of 16 give the same scores."""
    from dahp.attribution.dattri_bridge import LoGraScorer

    setting = get_setting(SETTING)
    state = _fine_tuned_state(setting, data)
    x_query = data.queries("val")[0]
    assert data.n_train % 3 and len(x_query) % 3  # ragged last batches on both sides
    ragged = LoGraScorer(setting, state, 64, "val", hessian="Identity", batch_size=3)
    scores = ragged.scores(0.0)
    assert scores.shape == (data.n_train, len(x_query)) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    blocks = len(setting.make_model().transformer.h)
    assert ragged._attr.layer_names == [f"transformer.h.{b}.{layer}" for b in range(blocks) for layer in HOOKED]

    train = _projected_gradients(setting, state, data.x_train, ragged)
    queries = _projected_gradients(setting, state, x_query, ragged)
    assert train.shape[1] == len(ragged._attr.layer_names) * 64
    exact = train @ queries.T
    torch.testing.assert_close(scores, exact, rtol=1e-4, atol=1e-5 * float(exact.abs().max()))
    assert not torch.allclose(scores, 2 * exact, rtol=0.1)  # the scale is one example's loss, not a batch's

    whole = LoGraScorer(setting, state, 64, "val", hessian="Identity", batch_size=16).scores(0.0)
    torch.testing.assert_close(whole, scores, rtol=1e-4, atol=1e-5 * float(scores.abs().max()))


@pytest.mark.slow
def test_logra_scores_are_the_damped_fisher_inverse_at_every_lambda(data):
    """With the eFIM, each layer's block is ``H = mean g gᵀ`` of the training points' projected
    gradients and λ is relative: ``score = Σ_layers g_trainᵀ (H + λ trace(H)/d I)⁻¹ g_query``. A sweep
    over λ (one gradient pass) gives what a fresh attributor gives at each λ."""
    from dahp.attribution.dattri_bridge import LoGraScorer

    setting = get_setting(SETTING)
    state = _fine_tuned_state(setting, data)
    sweep = LoGraScorer(setting, state, 16, "test", batch_size=4)
    first, second = sweep.scores(1e-3), sweep.scores(1.0)
    fresh = LoGraScorer(setting, state, 16, "test", batch_size=4).scores(1.0)
    assert torch.equal(second, fresh)

    train = _projected_gradients(setting, state, data.x_train, sweep).double()
    queries = _projected_gradients(setting, state, data.x_test, sweep).double()
    for lam, scores in ((1e-3, first), (1.0, second)):
        expected = torch.zeros(len(train), len(queries), dtype=torch.float64)
        for block_train, block_query in zip(train.split(16, dim=1), queries.split(16, dim=1)):
            fisher = block_train.T @ block_train / len(block_train)
            damped = fisher + lam * torch.trace(fisher) / len(fisher) * torch.eye(len(fisher), dtype=torch.float64)
            expected += block_train @ torch.linalg.solve(damped, block_query.T)
        torch.testing.assert_close(scores.double(), expected, rtol=2e-3, atol=2e-3 * float(expected.abs().max()))
    assert not torch.allclose(first, second, rtol=0.1)


@pytest.mark.slow
def test_logra_grid_runs_on_the_fixture(data, tmp_path):
    """A 2 λ × 1 projection grid of LoGra through dahp.experiments.grid: the fine-tuned full-data model,
    two fine-tuned subset models as the ground truth, one LDS row per λ on the fixture's 3 test queries;
    the grid's scores are the bridge's on the same checkpoint."""
    from dahp.attribution.attributors import make_params, scorer
    from dahp.attribution.dattri_bridge import LoGraScorer
    from dahp.core.cache import Cache
    from dahp.core.config import GroundTruthConfig
    from dahp.experiments.grid import make_grid_spec, run_grid
    from dahp.training.train import train_full

    cache = Cache(tmp_path / "cache")
    spec = make_grid_spec(
        SETTING,
        "logra",
        vary={"proj_dim": [16], "regularization": [1e-3, 1e-1]},
        ground_truth_config=GroundTruthConfig(n_models=2, seed=0),
    )
    record = run_grid(spec, cache=cache, progress=False)
    table = record.table
    assert list(table["regularization"]) == [1e-3, 1e-1] and set(table["proj_dim"]) == {16}
    assert (table["n_queries"] == len(data.y_test)).all()
    # with two models a query's Spearman correlation is ±1, or dropped when its targets tie
    assert ((table["lds_mean"].abs() <= 1) | (table["n_dropped"] == len(data.y_test))).all()
    assert len(record.per_query) == 2 * len(data.y_test)

    setting = get_setting(SETTING)
    state = train_full(setting, 0, cache, progress=False).state(setting.recipe.epochs)
    ours = scorer(setting, "logra", make_params("logra", proj_dim=16), cache=cache, progress=False)
    assert isinstance(ours, LoGraScorer)
    direct = LoGraScorer(setting, state, 16, "test").scores(1e-1)
    assert torch.equal(ours.scores(1e-1), direct)


def test_another_pretrained_checkpoint_changes_the_cache_key(data_root):
    setting = get_setting(SETTING)
    before = setting.spec()
    assert before == setting.spec() and "pretrained" in before["model"]
    weights = data_root / wikitext2.MODEL_DIR / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1  # one bit of one weight: same data, another starting point for every fine-tune
    weights.write_bytes(bytes(blob))
    assert setting.spec()["model"] != before["model"]
    assert setting.spec()["data"] == before["data"]


def test_accuracy_counts_next_tokens():
    logits = torch.full((1, 4, 5), -1.0)
    logits[0, 0, 2] = logits[0, 1, 3] = logits[0, 2, 0] = logits[0, 3, 4] = 1.0  # predicts 2, 3, 0 (last: unused)
    labels = torch.tensor([[9, 2, 3, 1]])  # next tokens 2, 3, 1: two of three right
    assert wikitext2.next_token_accuracy(logits, labels).tolist() == [pytest.approx(2 / 3)]
    assert get_setting(SETTING).correct is wikitext2.next_token_accuracy
