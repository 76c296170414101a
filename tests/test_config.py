"""Config loading: defaults, YAML files, --set overrides, did-you-mean errors, the shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg_attn.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def test_defaults_and_roundtrip(tmp_path):
    config = load_config()
    assert config == Config()
    from medseg_attn.config import from_dict, save_config

    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config
    assert from_dict(config.to_dict()) == config


def test_overrides_parse_yaml_values():
    config = load_config(overrides=["train.lr=3e-4", "model.attention=false", "data.patch_size=[32,48,64]",
                                    "data.labels={0: bg, 1: liver}", "train.minutes=2.5"])
    assert config.train.lr == pytest.approx(3e-4)
    assert config.model.attention is False
    assert config.data.patch_size == (32, 48, 64)
    assert config.data.labels == {0: "bg", 1: "liver"}
    assert config.train.minutes == 2.5


def test_unquoted_on_and_off_are_words_not_booleans(tmp_path):
    # YAML 1.1 reads `amp: on` as True; keys whose words are on / off take it as meant
    (tmp_path / "c.yaml").write_text("train:\n  amp: on\ndata:\n  prefetch: off\n")
    config = load_config(tmp_path / "c.yaml")
    assert config.train.amp == "on" and config.data.prefetch == "off"
    assert load_config(overrides=["train.amp=off"]).train.amp == "off"
    with pytest.raises(ConfigError, match="must be a string"):
        load_config(overrides=["data.intensity=true"])  # no on / off there: still an error


def test_unknown_key_suggests_the_closest(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'train.lrr'; did you mean 'train.lr'\?"):
        load_config(path)
    with pytest.raises(ConfigError, match="did you mean 'model.attention'"):
        load_config(overrides=["model.atention=false"])
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        load_config(overrides=["trian.lr=1"])


@pytest.mark.parametrize("override,message", [
    ("train.batch_size=two", "must be an integer"),
    ("model.attention=maybe", "true or false"),
    ("train.optimizer=adamm", "did you mean 'adamw'"),
    ("data.patch_size=[4,4,4]", "at least 8 voxels"),
    ("inference.overlap=1.5", r"\[0, 1\)"),
    ("data.ct_window=[100,-100]", "low < high"),
    ("data.folds=5", None),
])
def test_bad_values_are_named(override, message):
    if message is None:
        assert load_config(overrides=[override]).data.folds == 5
        return
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_broken_yaml_and_missing_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(path)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    if path.name.startswith("classify"):
        from medseg_attn.config import ClassifyConfig

        assert isinstance(load_config(path, kind=ClassifyConfig), ClassifyConfig)
        return
    config = load_config(path)
    assert isinstance(config, Config)


def test_every_key_is_documented():
    import dataclasses

    text = (REPO / "docs" / "configuration.md").read_text()
    config = Config()
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        assert f"## `{section.name}`" in text
        for field in dataclasses.fields(value):
            if dataclasses.is_dataclass(getattr(value, field.name)):
                for sub in dataclasses.fields(getattr(value, field.name)):
                    assert f"`{sub.name}`" in text, f"{section.name}.{field.name}.{sub.name} is not documented"
            else:
                assert f"`{field.name}`" in text, f"{section.name}.{field.name} is not documented"


def test_demo_config_is_the_shipped_one():
    from importlib import resources

    import yaml

    shipped = resources.files("medseg_attn.resources.configs").joinpath("demo.yaml").read_text()
    assert yaml.safe_load(shipped) == yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    from medseg_attn.segmentation.workflows.demo import demo_config

    assert demo_config().model.attention is True and demo_config(["train.minutes=1"]).train.minutes == 1.0


def test_classify_config_keys_are_documented_and_the_demo_config_is_shipped():
    import dataclasses
    from importlib import resources

    import yaml

    from medseg_attn.config import ClassifyConfig

    text = (REPO / "docs" / "classification.md").read_text()
    config = ClassifyConfig()
    for section in dataclasses.fields(config):
        assert f"### `{section.name}`" in text
        for field in dataclasses.fields(getattr(config, section.name)):
            assert f"`{field.name}`" in text, f"{section.name}.{field.name} is not documented"
    shipped = resources.files("medseg_attn.resources.configs").joinpath("classify_2d.yaml").read_text()
    assert yaml.safe_load(shipped) == yaml.safe_load((REPO / "configs" / "classify_2d.yaml").read_text())
    from medseg_attn.classification.demo import classify_demo_config

    assert classify_demo_config(["train.minutes=1"]).data.image_size == (64, 64)
