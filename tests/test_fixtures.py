"""Fixture data is told apart from real data, and every fixture loads through its setting."""

import json
import warnings

import pytest

from dahp.core.config import InvalidParameterError
from dahp.data.fixtures import FIXTURE_MODULES, MARKER, fixture_settings, write_fixtures
from dahp.data.settings import fixture_notice, get_setting


def test_unknown_setting_is_refused_before_writing(tmp_path):
    with pytest.raises(InvalidParameterError, match="settings"):
        write_fixtures(tmp_path, ["mnist_lr"])
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["cifar2_resnet9", "maestro_mt"])
def test_a_written_fixture_loads_and_is_labelled_fixture(tmp_path, name):
    setting = get_setting(name)
    assert setting.data_source(tmp_path) == "missing"
    assert setting.not_judged(tmp_path).startswith("data not supplied")
    write_fixtures(tmp_path, [name])
    assert fixture_settings(tmp_path) == [name]
    assert setting.data_source(tmp_path) == "fixture"
    assert "fixture data only" in setting.not_judged(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # maestro warns that its sizes are the fixture's
        data = setting.data(tmp_path)
    assert data.n_train >= 2 and len(data.y_val) >= 1 and len(data.y_test) >= 1


@pytest.mark.parametrize("name", ["cifar2_resnet9", "maestro_mt", "wikitext2_gpt2"])
def test_fixture_files_copied_without_the_marker_are_still_fixtures(tmp_path, name):
    write_fixtures(tmp_path, [name])
    (tmp_path / MARKER).unlink()
    assert get_setting(name).data_source(tmp_path) == "fixture"
    assert "fixture data only" in get_setting(name).not_judged(tmp_path)


def test_a_damaged_marker_still_marks_every_fixture(tmp_path):
    write_fixtures(tmp_path, ["cifar2_resnet9"])
    (tmp_path / MARKER).write_text("{not json")
    assert fixture_settings(tmp_path) == list(FIXTURE_MODULES)


def test_markers_accumulate(tmp_path):
    write_fixtures(tmp_path, ["cifar2_resnet9"])
    write_fixtures(tmp_path, ["maestro_mt"])
    assert json.loads((tmp_path / MARKER).read_text())["settings"] == ["cifar2_resnet9", "maestro_mt"]


def test_embedded_settings_are_embedded(tmp_path):
    assert get_setting("mnist_lr").data_source(tmp_path) == "embedded"
    assert get_setting("mnist_lr").not_judged(tmp_path) is None


def test_pages_get_a_notice_only_for_settings_on_fixture_data(tmp_path):
    assert fixture_notice(["mnist_lr", "cifar2_resnet9"], tmp_path) is None  # cifar2 missing: no notice
    write_fixtures(tmp_path, ["cifar2_resnet9"])
    notice = fixture_notice(["mnist_lr", "cifar2_resnet9", "cifar2_resnet9"], tmp_path)
    assert "`cifar2_resnet9`" in notice and "mnist_lr" not in notice and "not measurements" in notice


def test_command_line_writes_fixtures_and_refuses_unknown_settings(tmp_path, capsys):
    from dahp.cli import main

    assert main(["fixtures", "--out", str(tmp_path / "fx"), "--setting", "cifar2_resnet9"]) == 0
    assert fixture_settings(tmp_path / "fx") == ["cifar2_resnet9"]
    assert main(["fixtures", "--out", str(tmp_path / "other"), "--setting", "mnist_mlp"]) == 2
    assert "invalid setting='mnist_mlp'" in capsys.readouterr().err  # named as the option --setting
    assert not (tmp_path / "other").exists()
