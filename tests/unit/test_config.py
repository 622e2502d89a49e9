import pytest

from xwin.config import ConfigError, load_config


def test_yaml_then_env_then_set_override_in_that_order(tmp_path, monkeypatch):
    path = tmp_path / "p.yaml"
    path.write_text("run:\n  name: from-yaml\n  max_attempts: 4\n")
    assert load_config(path).run.name == "from-yaml"
    monkeypatch.setenv("XWIN_RUN__NAME", "from-env")
    config = load_config(path)
    assert config.run.name == "from-env"
    assert config.run.max_attempts == 4
    assert load_config(path, ["run.name=from-set"]).run.name == "from-set"


def test_unknown_key_is_an_error_naming_file_and_field(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("run:\n  nmae: typo\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert "run.nmae" in str(err.value)


def test_wrong_type_names_the_field(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("run:\n  max_attempts: many\n")
    with pytest.raises(ConfigError, match="run.max_attempts"):
        load_config(path)


def test_missing_file_and_bad_yaml_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_set_needs_key_equals_value():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["run.name"])
