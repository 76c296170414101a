"""Issue 26: `--set`, `--review-config` and `--review-set` errors name the key (or flag) and the problem."""

from __future__ import annotations

import pytest
import yaml
from cli_helpers import assert_one_line_error
from reliability_helpers import cli, dataset, volume

from medseg_attn.config import ConfigError, load_config


def test_a_patch_of_two_sides_on_3d_data_names_the_patch(capsys, tmp_path):
    data = dataset(tmp_path / "data")
    result = cli(capsys, "plan", "--data", str(data), "--set", "data.patch_size=[64,64]", "--output",
                 str(tmp_path / "plan.json"))
    assert_one_line_error(result, "data.patch_size=[64, 64]", "the data is 3-D", "give 3 values")
    result = cli(capsys, "train", "--data", str(data), "--set", "data.patch_size=[64,64]", "--output",
                 str(tmp_path / "run"))
    assert_one_line_error(result, "data.patch_size=[64, 64]", "the data is 3-D")


@pytest.mark.parametrize("override, words", [
    ("model.head_dim=7", ("model.head_dim=7", "64 channels", "heads")),
    ("train=5", ("train is a section", "train.")),
    ("data=[1,2]", ("data is a section",)),
])
def test_set_errors_name_the_key(override, words):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    for word in words:
        assert word in str(error.value), str(error.value)


def test_spacing_and_patch_of_different_axes_name_both():
    with pytest.raises(ConfigError, match=r"data.spacing \[1.0, 1.0, 1.0\] has 3 values but data.patch_size"):
        load_config(None, ["data.spacing=[1,1,1]", "data.patch_size=[64,64]"])


@pytest.fixture()
def image(tmp_path):
    return volume(tmp_path / "case.nii.gz")


def _predict(capsys, model, image, output, *extra):
    return cli(capsys, "-q", "predict", "--model", str(model), "--input", str(image), "--output", str(output), *extra)


def test_review_config_unknown_class_is_refused_with_a_suggestion(capsys, tmp_path, image, segmentation_model):
    config = tmp_path / "review.yaml"
    config.write_text(yaml.safe_dump({"expected_volume_ml": {"livr": [100, 2000]}}))
    result = _predict(capsys, segmentation_model, image, tmp_path / "out", "--review-config", str(config))
    assert_one_line_error(result, "expected_volume_ml.livr", "did you mean 'liver'?")
    result = _predict(capsys, segmentation_model, image, tmp_path / "out", "--review-set",
                      "expected_volume_ml.kidney=[1,2]")
    assert_one_line_error(result, "expected_volume_ml.kidney", "liver, spleen")
    assert not (tmp_path / "out").exists()


def test_review_flags_get_messages_about_themselves(capsys, tmp_path, image, segmentation_model):
    listed = tmp_path / "list.yaml"
    listed.write_text("- volume_mad_k: 5\n")
    folder = tmp_path / "settings"
    folder.mkdir()
    for extra, words in ((("--review-config", str(listed)), ("--review-config expects a mapping", "YAML list")),
                         (("--review-config", str(folder)), ("is a folder", "--review-config expects a YAML file")),
                         (("--review-set", "volume_mad_k"), ("--review-set 'volume_mad_k'", "expected KEY=VALUE"))):
        result = _predict(capsys, segmentation_model, image, tmp_path / "out", *extra)
        assert_one_line_error(result, *words)
        assert "--set" not in result.stderr.replace("--review-set", "") and "section" not in result.stderr
