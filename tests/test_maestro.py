"""maestro_mt: dattri's MIDI encoding, the MAESTRO loader on a fixture in the real layout, the model,
one training run (both paths) and one attribution, all on the CPU in seconds."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import torch
from dattri.benchmark.models.MusicTransformer.midi_processor.processor import decode_midi, encode_midi
from dattri.benchmark.models.MusicTransformer.music_transformer import MusicTransformer

from dahp.attribution.features import per_example_gradients
from dahp.core.config import GroundTruthConfig, TrainingRecipe
from dahp.data import maestro
from dahp.data.settings import MissingDataError, get_setting
from dahp.training.train import train_many, train_one

pytestmark = pytest.mark.filterwarnings("ignore::dahp.data.maestro.FixtureSizesWarning")


@pytest.fixture()
def fixture_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "data"
    maestro.write_fixture(root)
    monkeypatch.setenv("DAHP_DATA_DIR", str(root))
    return root


def _write_midi(path: Path, notes: list[tuple[int, int, float, float]], pedal: list[tuple[float, float]]) -> None:
    midi = pretty_midi.PrettyMIDI(resolution=384, initial_tempo=120.0)
    piano = pretty_midi.Instrument(program=0)
    piano.notes = [pretty_midi.Note(v, p, s, e) for p, v, s, e in notes]
    for down, up in pedal:
        piano.control_changes += [pretty_midi.ControlChange(64, 100, down), pretty_midi.ControlChange(64, 0, up)]
    midi.instruments.append(piano)
    midi.write(str(path))


# --------------------------------------------------------------------------------------------
# Encoding: dattri's representation, by hand

#: (pitch, velocity, start, end) and the pedal (down, up) of the hand-checked example
HAND_NOTES = [(60, 80, 0.0, 0.5), (64, 100, 0.25, 0.5), (67, 40, 2.2, 2.4), (72, 60, 4.0, 4.2)]
HAND_PEDAL = [(0.0, 1.0), (2.5, 3.5)]
# ids: note-on p -> p, note-off p -> 128 + p, shift of k*10 ms -> 256 + k - 1, velocity v -> 356 + v // 4.
# The pedal held 60 and 64 until its release at 1.0 s; dattri's encoder (midi-neural-processor) never
# emits notes that start after the last pedal release, so 72 is not encoded.
HAND_EVENTS = [
    356 + 20, 60,  # velocity 80, note-on 60 at 0 s
    256 + 24, 356 + 25, 64,  # 250 ms later, velocity 100, note-on 64
    256 + 74, 128 + 60, 128 + 64,  # 750 ms later (1.0 s, pedal up): note-off 60, note-off 64
    256 + 99, 256 + 19, 356 + 10, 67,  # 1 s + 200 ms later (2.2 s), velocity 40, note-on 67
    256 + 19, 128 + 67,  # 200 ms later: note-off 67
]  # fmt: skip


def test_encoding_is_dattris_representation_checked_by_hand(tmp_path):
    path = tmp_path / "hand.midi"
    _write_midi(path, HAND_NOTES, HAND_PEDAL)
    events = maestro.encoded_events(path, store=tmp_path / "store")
    assert events.dtype == np.int16
    assert events.tolist() == HAND_EVENTS
    assert encode_midi(str(path)) == HAND_EVENTS  # the cache stores exactly dattri's output
    # a second call reads the stored copy (one entry) and returns the same events
    assert maestro.encoded_events(path, store=tmp_path / "store").tolist() == HAND_EVENTS
    assert len(list((tmp_path / "store").glob("*.npy"))) == 1
    # and back: dattri's decoder gives the sounding notes (pedal-held ends, velocities in steps of 4)
    decoded = sorted((n.pitch, n.velocity, n.start, n.end) for n in decode_midi(HAND_EVENTS).instruments[0].notes)
    expected = [(60, 80, 0.0, 1.0), (64, 100, 0.25, 1.0), (67, 40, 2.2, 2.4)]
    assert [d[:2] for d in decoded] == [e[:2] for e in expected]
    np.testing.assert_allclose([d[2:] for d in decoded], [e[2:] for e in expected], atol=1e-9)


def test_window_starts_are_dattris_full_version_fragments():
    # dattri: offsets range(0, L - max_seq, max_seq), each window needing max_seq + 1 events
    assert list(maestro.window_starts(33, 16)) == [0, 16]
    assert list(maestro.window_starts(32, 16)) == [0]
    assert list(maestro.window_starts(16, 16)) == []


# --------------------------------------------------------------------------------------------
# The model


def _dattri_model(config: maestro.MaestroSizes) -> MusicTransformer:
    return MusicTransformer(
        n_layers=config.n_layers,
        num_heads=config.num_heads,
        d_model=config.d_model,
        dim_feedforward=config.dim_feedforward,
        dropout=config.dropout,
        max_sequence=config.max_sequence,
        rpr=config.rpr,
        device="cpu",
    )


def test_model_is_dattris_music_transformer_at_the_last_position():
    config = dataclasses.replace(maestro.FIXTURE_SIZES, n_layers=2, dropout=0.0)
    torch.manual_seed(0)
    ours = maestro.NextEventTransformer(config).eval()
    theirs = _dattri_model(config).eval()
    result = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert result.missing_keys == ["positional_encoding.pe"] and not result.unexpected_keys
    x = torch.randint(0, 388, (3, config.max_sequence), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x)[:, -1, :], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ours(x.float()), ours(x))  # ids cast to floats by the feature code
    table = maestro.SinusoidalPositions(config.d_model, 0.0).table(config.max_sequence, torch.device("cpu"))
    torch.testing.assert_close(table, theirs.positional_encoding.pe[: config.max_sequence, 0], rtol=0, atol=0)


def test_paper_model_has_dattris_parameters():
    torch.manual_seed(0)
    ours = maestro.NextEventTransformer(maestro.MaestroSizes())
    theirs = _dattri_model(maestro.MaestroSizes())
    names = [n for n, _ in ours.named_parameters()]
    assert names == [n for n, _ in theirs.named_parameters()]  # same flattening order as dattri's
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters()) == 13_115_782
    assert not list(ours.buffers())  # the positions are computed, not stored


def test_target_is_the_negated_loss():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 2])
    target = maestro.next_event_log_probability(logits, labels)
    expected = -torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    torch.testing.assert_close(target, expected)
    torch.testing.assert_close(-target.mean(), get_setting("maestro_mt").loss(logits, labels))


# --------------------------------------------------------------------------------------------
# The fixture and the loader


def test_fixture_has_maestros_layout_and_every_split(tmp_path):
    maestro.write_fixture(tmp_path / "a")
    maestro.write_fixture(tmp_path / "b")
    with (tmp_path / "a" / maestro.CSV_PATH).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == maestro.CSV_COLUMNS
    assert {r["split"] for r in rows} == {"train", "validation", "test"}
    for row in rows:
        assert row["midi_filename"].startswith(f"{row['year']}/") and row["midi_filename"].endswith(".midi")
        midi = pretty_midi.PrettyMIDI(str(tmp_path / "a" / maestro.MAESTRO_DIR / row["midi_filename"]))
        notes = midi.instruments[0].notes
        assert len({n.velocity for n in notes}) > 3 and midi.instruments[0].control_changes
        assert float(row["duration"]) == pytest.approx(midi.get_end_time(), abs=1e-2)  # seconds, as in MAESTRO
    # deterministic: the same bytes every time
    for path in sorted(p for p in (tmp_path / "a").rglob("*") if p.is_file()):
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()


def test_loader_windows_in_dattris_order(fixture_root):
    with pytest.warns(maestro.FixtureSizesWarning, match="not the paper's"):
        data = maestro.load_maestro(fixture_root)
    config = maestro.FIXTURE_SIZES
    n_val = sum(p[0] == "validation" for p in maestro.FIXTURE_PIECES)
    n_test = sum(p[0] == "test" for p in maestro.FIXTURE_PIECES)
    length = config.max_sequence
    for x, y, n in ((data.x_train, data.y_train, config.n_train), (data.x_val, data.y_val, n_val),
                    (data.x_test, data.y_test, n_test)):  # fmt: skip
        assert x.shape == (n, length) and y.shape == (n,)
        assert x.dtype == y.dtype == torch.int64
        assert 0 <= int(x.min()) and int(torch.cat([x.flatten(), y]).max()) < 388
    # reference: dattri's encoder on the files, performances sorted by name, windows every 16 events
    folder = fixture_root / maestro.MAESTRO_DIR

    def events(split: str) -> list[list[int]]:
        names = sorted(f"{y}/{s}.midi" for sp, y, s, *_ in maestro.FIXTURE_PIECES if sp == split)
        return [encode_midi(str(folder / n)) for n in sorted(names, key=lambda n: Path(n).name)]

    expected = [e[s : s + length + 1] for e in events("train") for s in range(0, len(e) - length, length)]
    assert len(expected) >= config.n_train
    expected = torch.tensor(expected[: config.n_train])
    assert torch.equal(data.x_train, expected[:, :-1]) and torch.equal(data.y_train, expected[:, -1])
    for split, x, y in (("validation", data.x_val, data.y_val), ("test", data.x_test, data.y_test)):
        firsts = torch.tensor([e[: length + 1] for e in events(split)])
        assert torch.equal(x, firsts[:, :-1]) and torch.equal(y, firsts[:, -1])


def test_loader_is_deterministic_and_reads_the_encoding_back(fixture_root, tmp_path):
    first = maestro.load_maestro(fixture_root)
    store = tmp_path / "cache" / "maestro_events"
    stored = sorted(store.glob("*.npy"))
    # the files the loader needed: three training performances (4 windows each, 12 needed) and the 2 + 2 queries'
    assert len(stored) == 3 + 2 + 2
    for path in stored:  # a stored sequence that no longer matches would show below
        np.save(path, np.load(path))
    second = maestro.load_maestro(fixture_root)
    assert first.fingerprint == second.fingerprint
    assert sorted(store.glob("*.npy")) == stored


def test_registered_setting_loads_the_fixture(fixture_root):
    setting = get_setting("maestro_mt")
    assert setting.missing_files() == []
    data = setting.data()
    assert data.n_train == maestro.FIXTURE_SIZES.n_train
    model = setting.make_model()
    assert isinstance(model, maestro.NextEventTransformer)
    assert model.d_model == maestro.FIXTURE_SIZES.d_model and setting.n_params() < 20_000
    assert model(data.x_val).shape == (len(data.x_val), 390)
    assert maestro.sizes(fixture_root) == (maestro.FIXTURE_SIZES, True)


def test_without_the_fixture_file_the_sizes_are_the_papers(tmp_path):
    assert maestro.sizes(tmp_path) == (maestro.MaestroSizes(), False)
    assert maestro.MaestroSizes().n_train == 5000 and maestro.MaestroSizes().max_sequence == 256


# --------------------------------------------------------------------------------------------
# Missing and malformed files: one message naming the file, what is wrong, and the source


def _rewrite_csv(root: Path, edit) -> None:
    path = root / maestro.CSV_PATH
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    rows = edit(rows)
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)


def _first_midi(root: Path) -> Path:
    """The first training performance in dattri's order (by file name), which the loader must read."""
    year, stem = min(((y, s) for sp, y, s, *_ in maestro.FIXTURE_PIECES if sp == "train"), key=lambda p: p[1])
    return root / maestro.MAESTRO_DIR / f"{year}/{stem}.midi"


def _set_sizes(root: Path, **values) -> None:
    path = root / maestro.FIXTURE_SIZES_PATH
    content = json.loads(path.read_text())
    content["sizes"].update(values)
    path.write_text(json.dumps(content))


BREAKAGES = {
    "no CSV": (lambda r: (r / maestro.CSV_PATH).unlink(), maestro.CSV_PATH, "Missing:"),
    "no split column": (
        lambda r: _rewrite_csv(r, lambda rows: [row[:2] + row[3:] for row in rows]),
        maestro.CSV_PATH,
        "missing the column(s) split",
    ),
    "unknown split": (
        lambda r: _rewrite_csv(r, lambda rows: [rows[0], [*rows[1][:2], "dev", *rows[1][3:]], *rows[2:]]),
        maestro.CSV_PATH,
        "line 2 has split 'dev'",
    ),
    "split without performances": (
        lambda r: _rewrite_csv(r, lambda rows: [row for row in rows if row[2] != "test"]),
        maestro.CSV_PATH,
        "no performance in the split(s) test",
    ),
    "missing MIDI": (lambda r: _first_midi(r).unlink(), "2008/MIDI-Unprocessed_01_R1_2008", "missing (named by"),
    "damaged MIDI": (
        lambda r: _first_midi(r).write_bytes(b"RIFF not a MIDI file"),
        "2008/MIDI-Unprocessed_01_R1_2008",
        "not a readable MIDI file",
    ),
    "too few training windows": (
        lambda r: _set_sizes(r, n_train=10_000),
        maestro.CSV_PATH,
        "the setting needs 10000",
    ),
    "bad sizes file": (
        lambda r: _set_sizes(r, d_model=15),
        maestro.FIXTURE_SIZES_PATH,
        "not a valid sizes file",
    ),
}


def test_loader_alone_names_the_missing_csv(tmp_path):
    with pytest.raises(MissingDataError, match=r"maestro-v2\.0\.0\.csv: the MAESTRO v2\.0\.0 CSV is missing") as raised:
        maestro.load_maestro(tmp_path)
    assert "maestro-v2.0.0-midi.zip" in str(raised.value)


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_bad_data_stops_with_one_message(fixture_root, breakage):
    breaks, names, what = BREAKAGES[breakage]
    breaks(fixture_root)
    with pytest.raises(MissingDataError) as raised:
        get_setting("maestro_mt").data(fixture_root)
    message = str(raised.value)
    assert names in message and what in message
    assert "maestro-v2.0.0-midi.zip" in message and "magenta" in message


# --------------------------------------------------------------------------------------------
# Training and attribution on the fixture


def _no_dropout(setting, dtype: torch.dtype = torch.float32):
    config = dataclasses.replace(maestro.FIXTURE_SIZES, dropout=0.0)
    return dataclasses.replace(setting, make_model=lambda: maestro.NextEventTransformer(config).to(dtype))


def test_training_lowers_the_training_loss(fixture_root):
    setting = get_setting("maestro_mt")
    data = setting.data()
    recipe = dataclasses.replace(setting.recipe, epochs=8, batch_size=6, lr=1e-2)
    everything = torch.arange(data.n_train)
    before = setting.init_model(3).eval()
    model = train_one(setting, data.x_train, data.y_train, everything, seed=3, recipe=recipe)
    with torch.no_grad():
        loss_before = setting.loss(before(data.x_train), data.y_train)
        loss_after = setting.loss(model(data.x_train), data.y_train)
    assert loss_after < 0.7 * loss_before


def test_train_many_vmaps_this_model_like_train_one(fixture_root):
    # float64: the key biases of attention have a zero gradient up to rounding, and Adam divides
    # a gradient by its own size, so in float32 the two paths' rounding shows in those entries
    setting = _no_dropout(get_setting("maestro_mt"), torch.float64)
    data = setting.data()
    recipe = TrainingRecipe(epochs=3, batch_size=4, lr=1e-3, optimizer="adam", betas=(0.9, 0.98), eps=1e-8)
    index_sets = torch.tensor([[0, 2, 4, 6, 8, 10], [1, 2, 3, 5, 7, 11]])
    seeds = [5, 6]
    stacked = train_many(setting, data.x_train, data.y_train, index_sets, seeds, recipe=recipe)
    for k, seed in enumerate(seeds):
        alone = train_one(setting, data.x_train, data.y_train, index_sets[k], seed, recipe).state_dict()
        for name, value in alone.items():
            torch.testing.assert_close(stacked[name][k], value, rtol=1e-7, atol=1e-9)


def test_per_example_gradients_of_the_target(fixture_root):
    setting = _no_dropout(get_setting("maestro_mt"))
    data = setting.data()
    model = setting.init_model(0).eval()
    state = {k: v.detach() for k, v in model.state_dict().items()}
    rows = per_example_gradients(setting, state, data.x_val, data.y_val, setting.target)
    assert rows.shape == (len(data.x_val), setting.n_params())
    for i in range(len(data.x_val)):  # reference: autograd on one query at a time
        model.zero_grad()
        setting.target(model(data.x_val[i : i + 1]), data.y_val[i : i + 1]).sum().backward()
        reference = torch.cat([p.grad.flatten() for p in model.parameters()])
        torch.testing.assert_close(rows[i], reference, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_lds_of_a_tiny_case(fixture_root):
    from dahp.attribution.attributors import attribute
    from dahp.attribution.lds import lds
    from dahp.training.ground_truth import ground_truth

    setting = get_setting("maestro_mt")
    truth = ground_truth(setting, GroundTruthConfig(n_models=6, models_per_chunk=6), progress=False)
    assert truth.targets("test").shape == (6, len(setting.data().x_test))
    assert bool((truth.targets("test") <= 0).all())  # log-probabilities
    scores = attribute(setting, "iffim", "test", regularization=1e-3)
    assert scores.shape == (setting.data().n_train, len(setting.data().x_test))
    assert bool(torch.isfinite(scores).all())
    result = lds(scores, truth.targets("test"), truth.subsets)
    assert np.isfinite(result.mean) and -1 <= result.mean <= 1
