"""dattri's published benchmark folder, read from disk: layout, checks, and the LDS through our `lds`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dattri.benchmark.models.mlp import MLPMnist
from dattri.metric import lds as dattri_lds

from dahp.attribution.lds import lds
from dahp.core.config import InvalidParameterError
from dahp.data.benchmark_folder import (
    DATTRI_BENCHMARKS,
    INDICES_FILE,
    MNIST_FILES,
    MNIST_RAW,
    TARGETS_FILE,
    benchmark_ground_truth,
    benchmark_setting,
    benchmark_split,
    protocol_difference,
    read_benchmark,
    write_fixture,
)
from dahp.data.settings import MissingDataError, get_setting

N_FULL, N_HALF = 2, 6


@pytest.fixture()
def fixture(tmp_path):
    """(download_path, identifier folder, θ) of a fresh mnist_lr fixture."""
    theta = write_fixture(tmp_path / "dattri", "mnist_lr", n_full=N_FULL, n_half=N_HALF)
    return tmp_path / "dattri", tmp_path / "dattri" / "benchmark" / "mnist_lr", theta


def _problem(root, setting="mnist_lr") -> str:
    with pytest.raises(MissingDataError) as caught:
        read_benchmark(root, setting)
    message = str(caught.value)
    # every message ends with where the folder comes from
    assert "load_benchmark(model='lr', dataset='mnist', metric='lds', download_path='DIR')" in message
    return message


def test_layout_is_dattris(fixture):
    """The fixture holds exactly the paths dattri's load_benchmark reads (it would not download)."""
    _, source, _ = fixture
    expected = {
        *(f"models_full/{i}/model_weights_0.pt" for i in range(N_FULL)),
        *(f"models_half/{i}/model_weights_0.pt" for i in range(N_HALF)),
        *(f"models_half/{i}/indices.txt" for i in range(N_HALF)),
        INDICES_FILE,
        TARGETS_FILE,
    }
    assert {str(p.relative_to(source)) for p in source.rglob("*") if p.is_file()} == expected
    # load_benchmark's own reader: plain torch.load (weights-only by default in this torch)
    targets, indices = torch.load(source / TARGETS_FILE), torch.load(source / INDICES_FILE)
    assert targets.shape == (N_HALF, 500) and targets.dtype == torch.float32 and (targets < 0).all()
    assert indices.shape == (N_HALF, 2500) and indices.dtype == torch.int64


def test_dattris_own_reader_finds_the_same(fixture, monkeypatch):
    """dattri's load_benchmark, with downloading and its torchvision datasets stubbed out, reads the
    fixture without downloading and returns the same checkpoints and ground truth as read_benchmark."""
    import dattri.benchmark.load as dattri_load

    def no_network(*args, **kwargs):
        raise AssertionError("load_benchmark tried to download: the layout is not dattri's")

    monkeypatch.setattr(dattri_load, "_download", no_network)
    monkeypatch.setitem(dattri_load.SUPPORTED_DATASETS, "mnist", lambda path: (None, None))
    root, _, _ = fixture
    details, (targets, indices) = dattri_load.load_benchmark("lr", "mnist", "lds", download_path=str(root))
    folder = read_benchmark(root, "mnist_lr")
    assert tuple(details["models_full"]) == folder.full_paths
    assert tuple(details["models_half"]) == folder.half_paths
    assert torch.equal(targets, folder.target_values) and torch.equal(indices, folder.subset_indices)
    assert list(details["train_sampler"]) == list(folder.train_range)
    assert list(details["test_sampler"]) == list(folder.test_range)


def test_round_trip(fixture):
    root, source, _ = fixture
    for given in (root, source):  # the download_path or the benchmark's own folder
        folder = read_benchmark(given, "mnist_lr")
        assert folder.source == source
        assert folder.train_range == range(5000) and folder.test_range == range(500)
        assert folder.dataset_dir == root / "dataset"
        assert folder.full_paths == tuple(source / f"models_full/{i}/model_weights_0.pt" for i in range(N_FULL))
        assert len(folder.models_half) == N_HALF and folder.targets_negated
        assert torch.equal(folder.subset_indices, torch.load(source / INDICES_FILE))
        assert torch.equal(folder.target_values, torch.load(source / TARGETS_FILE))
        for kind, paths in (("full", folder.full_paths), ("half", folder.half_paths)):
            for i, path in enumerate(paths):
                saved = torch.load(path)
                loaded = folder.model(kind, i).state_dict()
                assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    # different checkpoints really are different models
    assert not torch.equal(folder.models_full[0]["linear.weight"], folder.models_full[1]["linear.weight"])


def test_true_datamodel_scores_give_lds_one(fixture):
    """Scores equal to the fixture's linear datamodel give LDS 1; their negation −1; same as dattri's lds."""
    root, _, theta = fixture
    truth = benchmark_ground_truth(read_benchmark(root, "mnist_lr"))
    assert truth.n_models == N_HALF and truth.alpha == 0.5
    assert torch.equal(truth.membership().sum(1), torch.full((N_HALF,), 2500.0))
    perfect = lds(theta, truth.targets("test"), truth.subsets)
    assert np.array_equal(perfect.per_query, np.ones(500)) and perfect.n_dropped == 0
    assert lds(-theta, truth.targets("test"), truth.subsets).mean == pytest.approx(-1.0)
    # a scrambled attribution is no better than chance, and dattri's metric agrees with ours on it
    scrambled = np.random.default_rng(1).permutation(theta)
    ours = lds(scrambled, truth.targets(), truth.subsets)
    theirs = dattri_lds(torch.from_numpy(scrambled), truth.for_dattri())[0].numpy()
    np.testing.assert_allclose(ours.per_query, theirs, atol=1e-6)
    assert abs(ours.mean) < 0.2


def test_raw_loss_file_is_negated_and_mixed_signs_rejected(fixture):
    """A target file with the loss itself (>= 0) is recognised; one with both signs is not a loss at all."""
    root, source, theta = fixture
    stored = torch.load(source / TARGETS_FILE)
    torch.save(-stored, source / TARGETS_FILE)
    folder = read_benchmark(root, "mnist_lr")
    assert not folder.targets_negated
    truth = benchmark_ground_truth(folder)
    assert lds(theta, truth.targets(), truth.subsets).mean == pytest.approx(1.0)
    torch.save(stored - stored.mean(), source / TARGETS_FILE)
    message = _problem(root)
    assert str(source / TARGETS_FILE) in message and "both signs" in message


def test_missing_folder(tmp_path):
    message = _problem(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "benchmark" / "mnist_lr") in message and "missing" in message


@pytest.mark.parametrize(
    "remove",
    [INDICES_FILE, TARGETS_FILE, "models_full/1/model_weights_0.pt", "models_half/0/model_weights_0.pt"],
)
def test_each_missing_file_is_named(fixture, remove):
    root, source, _ = fixture
    (source / remove).unlink()
    message = _problem(root)
    assert f"{source / remove}: missing" in message
    assert message.count("\n  - ") == 1  # one problem, one line


def test_missing_model_folders(fixture):
    import shutil

    root, source, _ = fixture
    shutil.rmtree(source / "models_half")
    (source / "models_full" / "1").rename(source / "models_full" / "seed1")
    message = _problem(root)
    assert f"{source / 'models_half'}: missing" in message
    assert f"{source / 'models_full' / '1' / 'model_weights_0.pt'}: missing" in message


def test_malformed_files(fixture):
    root, source, _ = fixture
    (source / INDICES_FILE).write_bytes(b"not a torch file")
    torch.save(torch.zeros(N_HALF, 499), source / TARGETS_FILE)
    message = _problem(root)
    assert f"{source / INDICES_FILE}: not readable by torch.load" in message
    assert f"{source / TARGETS_FILE}: 499 columns, but dattri's mnist_lr has 500 test queries" in message


@pytest.mark.parametrize(
    ("indices", "expected"),
    [
        (lambda i: i[:-1], f"{N_HALF} rows, but"),  # rows disagree with the targets
        (lambda i: i.float(), "expected an integer tensor"),
        (lambda i: i + 5000, "outside dattri's training range 0..4999"),
        (lambda i: torch.cat([i[:, :1], i[:, :-1]], 1), "subset 0 repeats a training index"),
        (lambda i: torch.stack([torch.randperm(5000)] * len(i)), "not proper subsets of the 5000 training points"),
    ],
)
def test_inconsistent_indices(fixture, indices, expected):
    root, source, _ = fixture
    torch.save(indices(torch.load(source / INDICES_FILE)), source / INDICES_FILE)
    assert expected in _problem(root)


def test_inconsistent_targets(fixture):
    root, source, _ = fixture
    targets, indices = torch.load(source / TARGETS_FILE), torch.load(source / INDICES_FILE)
    targets[2, 7] = float("nan")
    torch.save(targets, source / TARGETS_FILE)
    assert f"{source / TARGETS_FILE}: 1 values are not finite" in _problem(root)
    torch.save(targets[:1].nan_to_num(), source / TARGETS_FILE)
    torch.save(indices[:1], source / INDICES_FILE)
    assert f"{source / INDICES_FILE}: fewer than 2 subsets" in _problem(root)


def test_subset_listing_must_match_its_row(fixture):
    root, source, _ = fixture
    (source / "models_half" / "2" / "indices.txt").write_text("\n".join(map(str, range(2500))))
    message = _problem(root)
    assert f"{source / 'models_half' / '2' / 'indices.txt'}: lists a different subset than row 2" in message


def test_wrong_architecture_is_named(fixture):
    root, source, _ = fixture
    torch.save(MLPMnist().state_dict(), source / "models_full" / "1" / "model_weights_0.pt")
    bad_shape = {"linear.weight": torch.zeros(10, 100), "linear.bias": torch.zeros(10)}
    torch.save(bad_shape, source / "models_half" / "3" / "model_weights_0.pt")
    torch.save(MLPMnist(), source / "models_half" / "4" / "model_weights_0.pt")  # a whole pickled model
    message = _problem(root)
    assert f"{source / 'models_full/1/model_weights_0.pt'}: does not match the model of our setting" in message
    assert "missing keys linear.weight, linear.bias" in message and "unexpected keys" in message
    assert "wrong shapes linear.weight (10, 100) (ours (10, 784))" in message
    assert f"{source / 'models_half/4/model_weights_0.pt'}: not readable by torch.load(weights_only=True)" in message
    assert f"{source / 'models_full/0/model_weights_0.pt'}" not in message  # the good ones are not blamed


def test_legacy_torch_format_is_read(fixture):
    """Checkpoints written by torch.save's pre-1.6 format (which cannot be memory-mapped) still load."""
    root, source, _ = fixture
    path = source / "models_full" / "0" / "model_weights_0.pt"
    state = torch.load(path)
    torch.save(state, path, _use_new_zipfile_serialization=False)
    folder = read_benchmark(root, "mnist_lr")
    assert all(torch.equal(folder.models_full[0][k], state[k]) for k in state)


def test_other_benchmarks_use_dattris_names(tmp_path):
    with pytest.raises(MissingDataError, match="model='gpt2', dataset='wikitext2'") as caught:
        read_benchmark(tmp_path, "wikitext2_gpt2")
    assert str(tmp_path / "benchmark" / "wikitext2_gpt2") in str(caught.value)
    with pytest.raises(MissingDataError, match=r"benchmark/maestro_musictransformer: missing"):
        read_benchmark(tmp_path, "maestro_mt")


def test_bad_arguments(fixture):
    root, _, _ = fixture
    with pytest.raises(InvalidParameterError, match="setting"):
        read_benchmark(root, "imagenet_resnet18")
    folder = read_benchmark(root, "mnist_lr")
    with pytest.raises(InvalidParameterError, match="kind"):
        folder.model("quarter", 0)
    with pytest.raises(InvalidParameterError, match=r"\[0, 2\)"):
        folder.state_dict("full", 2)
    with pytest.raises(InvalidParameterError, match="no validation queries"):
        benchmark_ground_truth(folder).targets("val")


def test_protocol_statement_names_the_differences():
    assert set(DATTRI_BENCHMARKS) == {"mnist_lr", "mnist_mlp", "cifar2_resnet9", "maestro_mt", "wikitext2_gpt2"}
    text = protocol_difference("mnist_lr")
    for fact in (
        "cross-entropy loss, negated",
        "where our ground truth records the correct-class margin",
        "first 5,000",
        "first 500",
        "dattri's scripts",
    ):
        assert fact in text
    assert "first 178" in protocol_difference("maestro_mt")


def test_dattris_mnist_points(tmp_path):
    """dattri's MNIST points from torchvision's raw files: its first 5,000 / 500, scaled as dattri does."""
    root = tmp_path / "dattri"
    write_fixture(root, "mnist_lr", with_data=True)
    split = benchmark_split(read_benchmark(root, "mnist_lr"))
    raw = root / "dataset" / MNIST_RAW

    def idx(name, ndim):
        return np.frombuffer((raw / name).read_bytes(), dtype=np.uint8, offset=4 + 4 * ndim)

    images = idx(MNIST_FILES["train"][0], 3).reshape(-1, 784)
    labels = idx(MNIST_FILES["train"][1], 1)
    test_images = idx(MNIST_FILES["test"][0], 3).reshape(-1, 784)
    assert (split.n_train, len(split.y_val), len(split.y_test)) == (5000, 500, 500)
    expected = (images[[0, 4999, 5000]] / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(split.x_train[[0, 4999]].numpy(), expected[:2], rtol=1e-6)
    np.testing.assert_allclose(split.x_val[0].numpy(), expected[2], rtol=1e-6)  # just past dattri's range
    np.testing.assert_allclose(split.x_test[-1].numpy(), (test_images[499] / 255.0 - 0.1307) / 0.3081, rtol=1e-6)
    assert torch.equal(split.y_train, torch.from_numpy(labels[:5000].astype(np.int64)))
    # the same points through a setting, as the experiments take data
    setting = benchmark_setting(read_benchmark(root, "mnist_lr"))
    assert setting.name == "mnist_lr" and setting.recipe == get_setting("mnist_lr").recipe
    assert torch.equal(setting.data().x_test, split.x_test) and torch.equal(setting.data().y_val, split.y_val)
    assert setting.data().fingerprint != get_setting("mnist_lr").data().fingerprint


def test_dattris_mnist_points_missing_or_malformed(tmp_path):
    root = tmp_path / "dattri"
    write_fixture(root, "mnist_lr", with_data=True)
    raw = root / "dataset" / MNIST_RAW
    (raw / MNIST_FILES["test"][1]).unlink()
    truncated = raw / MNIST_FILES["train"][0]
    truncated.write_bytes(truncated.read_bytes()[:-1])
    folder = read_benchmark(root, "mnist_lr")
    with pytest.raises(MissingDataError) as caught:
        benchmark_split(folder)
    message = str(caught.value)
    assert f"{raw / MNIST_FILES['test'][1]}: missing" in message
    assert f"{truncated}: 4311999 bytes of data, but its header announces shape (5500, 28, 28)" in message
    assert "download_path='DIR'" in message
