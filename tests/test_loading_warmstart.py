"""A model directory's recommended warm-start settings: ``warm_start`` in generation_config.json,
written by ``write_decode_defaults``, checked when the directory loads, applied by ``fewstep
generate --drafter`` when no warm-start setting is given."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import fewstep
from fewstep import ConfigError, ModelLoadError
from fewstep.cli import main
from fewstep.config import check_warm_start, resolve_config
from fewstep.models.loading import write_decode_defaults

RECOMMENDED = {"init": "inject", "remask_threshold": 0.5, "confirm_threshold": 0.5, "reject": "edit"}


@pytest.fixture
def recommending_dir(tmp_path, random_dlm_dir) -> Path:
    path = Path(shutil.copytree(random_dlm_dir, tmp_path / "m"))
    write_decode_defaults(path, {"gen_length": 16, "block_length": 16, "warm_start": RECOMMENDED})
    return path


def test_the_recommendation_is_written_and_read(recommending_dir):
    gen = json.loads((recommending_dir / "generation_config.json").read_text())
    assert gen["warm_start"] == RECOMMENDED and gen["max_new_tokens"] == 16
    model = fewstep.load_model(recommending_dir)
    assert model.decode_defaults["warm_start"] == RECOMMENDED
    cfg = resolve_config(model, None, ["drafter=tiny-ar"])
    assert (cfg.gen_length, cfg.init, cfg.remask_threshold, cfg.confirm_threshold, cfg.reject) == \
        (16, "inject", 0.5, 0.5, "edit")
    write_decode_defaults(recommending_dir, {"gen_length": 16})  # other defaults keep the recommendation
    assert fewstep.load_model(recommending_dir).decode_defaults["warm_start"] == RECOMMENDED


def test_generate_with_a_drafter_takes_the_recommendation(recommending_dir, capsys):
    assert main(["generate", "--model", str(recommending_dir), "--drafter", "tiny-ar", "--stats",
                 "Mia has 7 pens ."]) == 0
    stats = capsys.readouterr().err
    assert "edited=" in stats and "injected=" in stats  # reject=edit: the recommendation was applied
    assert main(["generate", "--model", str(recommending_dir), "--drafter", "tiny-ar", "--stats",
                 "--set", "remask_threshold=0.2", "Mia has 7 pens ."]) == 0
    assert "edited=" not in capsys.readouterr().err  # an explicit warm-start setting: none of it


def test_a_bad_recommendation_is_refused_with_one_line(tmp_path, random_dlm_dir):
    path = Path(shutil.copytree(random_dlm_dir, tmp_path / "m"))
    (path / "generation_config.json").write_text(json.dumps({"warm_start": {"remask_threshold": 2}}))
    model = fewstep.load_model(path)  # the settings are checked where a configuration is resolved
    with pytest.raises(ConfigError, match=r"generation_config.json: warm_start: remask_threshold must be in "
                                          r"\[0, 1\], got 2") as e:
        resolve_config(model, "threshold", ["drafter=tiny-ar"])
    assert "\n" not in str(e.value)
    (path / "generation_config.json").write_text(json.dumps({"warm_start": "edit"}))
    with pytest.raises(ModelLoadError, match="warm_start must be an object of warm-start settings"):
        fewstep.load_model(path)
    with pytest.raises(ConfigError, match="'steps' is not a warm-start setting"):
        check_warm_start({"steps": 4})
    with pytest.raises(ConfigError, match="warm_start must be an object"):
        write_decode_defaults(path, {"warm_start": "edit"})
