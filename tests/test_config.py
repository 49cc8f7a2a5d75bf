from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from sentiment_cli import config
from sentiment_cli.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_come_from_params_yaml(tmp_path):
    cfg = config.load(root=tmp_path)
    params = OmegaConf.load(REPO / "params.yaml")
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(params)
    assert cfg.model.name == "distilbert-base-uncased"
    assert cfg.data.source == "hf:rotten_tomatoes"


@pytest.mark.parametrize("profile", ["cpu", "gpu", "tiny", "vertex"])
def test_every_shipped_profile_loads(profile, tmp_path):
    cfg = config.load(profile, root=tmp_path)
    assert cfg.train.batch_size >= 1


def test_profile_overlays_and_set_overrides_win(tmp_path):
    cfg = config.load("gpu", ["train.batch_size=7", "train.lr=3e-5"], root=tmp_path)
    assert cfg.train.mixed_precision == "bf16"  # from the profile
    assert cfg.train.batch_size == 7  # --set beats the profile's 64
    assert cfg.train.lr == pytest.approx(3e-5)


def test_local_params_yaml_overlays_packaged_defaults(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 9\n")
    assert config.load(root=tmp_path).train.epochs == 9
    # and a local profile folder is found before the packaged one
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "mine.yaml").write_text("train:\n  epochs: 4\n")
    assert config.load("mine", root=tmp_path).train.epochs == 4
    assert "mine" in config.profile_names(tmp_path)


@pytest.mark.parametrize(
    ("profile", "overrides", "fragment"),
    [
        ("nope", [], "no profile named 'nope'"),
        ("../etc", [], "profile name"),
        (None, ["train.nonsense=1"], "nonsense"),
        (None, ["nosection.x=1"], "nosection"),
        (None, ["train.epochs=many"], "train.epochs"),
        (None, ["train.mixed_precision=fp8"], "mixed_precision"),
        (None, ["train.epochs=0"], "epochs"),
        (None, ["justakey"], "expected key=value"),
        (None, ["data.val_fraction=0.6", "data.test_fraction=0.5"], "below 1"),
    ],
)
def test_bad_configuration_is_one_clear_error(tmp_path, profile, overrides, fragment):
    with pytest.raises(ConfigError) as info:
        config.load(profile, overrides, root=tmp_path)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_bad_yaml_file_is_a_config_error(tmp_path):
    (tmp_path / "params.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="params.yaml"):
        config.load(root=tmp_path)
    (tmp_path / "params.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        config.load(root=tmp_path)


def test_resolved_config_is_read_only_and_round_trips(tmp_path):
    cfg = config.load("tiny", root=tmp_path)
    with pytest.raises(Exception):  # noqa: B017 - omegaconf's ReadonlyConfigError
        cfg.train.epochs = 5
    again = config.from_dict(config.to_dict(cfg))
    assert config.to_dict(again) == config.to_dict(cfg)
    flat = config.flatten(cfg)
    assert flat["train.epochs"] == str(cfg.train.epochs)
    assert flat["eval.compare"] == '["torch-int8", "onnx-int8"]'  # lists as JSON


INT_KEYS = ["train.epochs", "train.batch_size", "train.eval_batch_size", "seed", "eval.batch_size"]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(INT_KEYS), st.integers(1, 10_000)), max_size=6))
def test_overrides_merge_last_one_wins(tmp_path_factory, pairs):
    root = tmp_path_factory.mktemp("cfg")
    cfg = config.load("cpu", [f"{k}={v}" for k, v in pairs], root=root)
    expected = {}
    for k, v in pairs:
        expected[k] = v
    for k, v in expected.items():
        assert OmegaConf.select(cfg, k) == v
    untouched = [k for k in INT_KEYS if k not in expected]
    base = config.load("cpu", root=root)
    for k in untouched:
        assert OmegaConf.select(cfg, k) == OmegaConf.select(base, k)


@settings(max_examples=25, deadline=None)
@given(st.text(min_size=1, max_size=20).filter(lambda s: "=" not in s and "\n" not in s))
def test_unknown_keys_never_pass_silently(tmp_path_factory, key):
    root = tmp_path_factory.mktemp("cfg")
    known = set(config.flatten(config.load(root=root)))
    name = f"train.x_{key}"
    if name in known:
        return
    with pytest.raises(ConfigError):
        config.load(None, [f"{name}=1"], root=root)


# ---------------------------------------------------------------- values that used to crash, hang or mislead


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.max_steps=0", "train.max_steps must be -1"),
        ("model.max_length=100000000", "model.max_length must be in 8..32768"),
        ("model.name=${oc.env:HOME}", "interpolations"),
        ("train.lr=${nosuch.key}", "interpolations"),
        ("train.lr=${train.lr}", "interpolations"),
        ("model.scratch.num_heads=3", "must divide model.scratch.hidden_size"),
        ("eval.batch_size=0", "eval.batch_size must be >= 1"),
        ("train.lr=inf", "positive finite number"),
        ("train.lr=nan", "positive finite number"),
        ("train.epochs=1e23", "train.epochs"),
        ("train.epochs=100000", "train.epochs must be in 1..10000"),
        ("model.scratch.vocab_size=0", "model.scratch.vocab_size must be at least 16"),
        ("serve.max_queued_texts=1", "serve.max_queued_texts must be at least serve.max_texts"),
        ("serve.shutdown_budget_s=0", "serve.shutdown_budget_s"),
        ("serve.alone_threads=-1", "serve.alone_threads must be >= 0"),
    ],
)
def test_out_of_range_and_interpolated_values_are_one_line_errors(tmp_path, override, fragment):
    with pytest.raises(ConfigError) as info:
        config.load("tiny", [override], root=tmp_path)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_interpolation_in_a_command_option_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="interpolations"):
        config.load("tiny", root=tmp_path, options={"serve.model": "${oc.env:HOME}"})


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    """Nine levels of nine aliases: ~400 bytes that would expand to 387 million nodes."""
    import time

    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    (tmp_path / "params.yaml").write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    with pytest.raises(ConfigError, match="anchors and aliases"):
        config.load(root=tmp_path)
    assert time.monotonic() - start < 2


def test_a_bad_interpolation_inside_params_yaml_is_a_config_error(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  lr: ${nosuch.key}\n")
    with pytest.raises(ConfigError, match="nosuch"):
        config.load(root=tmp_path)
    (tmp_path / "params.yaml").write_text("train:\n  lr: ${train.lr}\n")
    with pytest.raises(ConfigError):
        config.load(root=tmp_path)


def test_an_oversized_params_yaml_is_refused(tmp_path):
    (tmp_path / "params.yaml").write_text("# " + "x" * (config.MAX_YAML_BYTES + 10) + "\n")
    with pytest.raises(ConfigError, match="at most"):
        config.load(root=tmp_path)
