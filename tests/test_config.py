import pytest

from crossway.config import RunConfig, load_config
from crossway.errors import ConfigError
from tests.conftest import REPO


def test_shipped_configs_load():
    for path in (REPO / "configs").glob("*.yaml"):
        assert isinstance(load_config(path), RunConfig)


def test_overrides_are_typed():
    cfg = load_config(REPO / "configs/g2p_demo.yaml", ["train.lr=3e-4", "model.cell=lstm", "train.max_epochs=3",
                                                       "data.src_col=2", "train.progress=false"])
    assert cfg.train.lr == 3e-4 and cfg.model.cell == "lstm" and cfg.train.max_epochs == 3
    assert cfg.data.src_col == "2" and cfg.train.progress is False


def test_override_text_that_yaml_would_read_as_a_mapping_stays_text():
    cfg = load_config(None, ["data.src_prefix=translate English to Spanish: ", "data.src_ext=[x]",
                             "data.tgt_ext=a: b: c"])
    assert cfg.data.src_prefix == "translate English to Spanish: "
    assert cfg.data.src_ext == "[x]" and cfg.data.tgt_ext == "a: b: c"
    with pytest.raises(ConfigError, match="train.lr must be of type float"):
        load_config(None, ["train.lr=fast: please"])


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.learning_rate=1"])
    assert "train.learning_rate" in str(e.value) and "train.lr" in str(e.value)
    with pytest.raises(ConfigError, match="unknown section"):
        load_config(None, ["optim.lr=1"])
    with pytest.raises(ConfigError, match="model.atention"):
        load_config(None, ["model.atention=none"])


def test_unknown_top_level_key_in_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("trian:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="trian"):
        load_config(f)


def test_bad_values_are_rejected():
    with pytest.raises(ConfigError, match="train.max_epochs must be of type int"):
        load_config(None, ["train.max_epochs=many"])
    with pytest.raises(ConfigError, match="attention"):
        load_config(None, ["model.attention=luong"])
    with pytest.raises(ConfigError, match="arch"):
        load_config(None, ["model.arch=lstm"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["lr=1"])


def test_round_trip_through_dict():
    cfg = load_config(REPO / "configs/g2p_rnn.yaml")
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("text,match", [("data: foo\n", "section 'data' must be a mapping"),
                                        ("train: [1]\n", "section 'train' must be a mapping"),
                                        ("- 1\n", "mapping of sections"),
                                        ("train: {log_every: 0}\n", "train.log_every must be >= 1"),
                                        ("model: {dropout: 1.5}\n", "model.dropout must be in"),
                                        ("model: {hidden: 0}\n", "model.hidden must be >= 1")])
def test_wrong_shapes_and_ranges_are_config_errors(tmp_path, text, match):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(f)
