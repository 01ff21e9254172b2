import dataclasses

import pytest

from fewstep import ConfigError, DecodeConfig
from fewstep.config import override


def test_defaults_are_valid_and_frozen():
    cfg = DecodeConfig()
    assert cfg.num_blocks * cfg.block_length == cfg.gen_length
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(gen_length=20, block_length=8), "multiple of block_length"),
        (dict(steps=7, block_length=8), "multiple of the number of blocks"),
        (dict(steps=0), "steps must be >= 1"),
        (dict(temperature=-1.0), "temperature"),
        (dict(remasking="sideways"), "remasking"),
        (dict(strategy="nope"), "unknown strategy"),
        (dict(cfg_scale=-0.5), "cfg_scale"),
        (dict(gen_length=0), "gen_length"),
        (dict(steps="many"), "steps must be of type int"),
    ],
)
def test_invalid_values_raise_config_error(kw, message):
    with pytest.raises(ConfigError, match=message):
        DecodeConfig(**kw)


def test_override_parses_by_field_type():
    cfg = override(DecodeConfig(), ["steps=6", "temperature=0.5", "remasking=random", "seed=3"])
    assert (cfg.steps, cfg.temperature, cfg.remasking, cfg.seed) == (6, 0.5, "random", 3)


@pytest.mark.parametrize(
    "assignment,message",
    [("colour=red", "has no setting 'colour'"), ("steps=six", "steps expects a int"), ("steps", "key=value")],
)
def test_override_errors(assignment, message):
    with pytest.raises(ConfigError, match=message):
        override(DecodeConfig(), [assignment])
