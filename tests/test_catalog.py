"""``fewstep --version`` and ``fewstep list``: listings built from the registries the package runs on."""

from __future__ import annotations

import json

import pytest

import fewstep
from fewstep import catalog
from fewstep.cli import main
from fewstep.tasks.base import REGISTRY


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fewstep {fewstep.__version__}"


def test_list_tasks_is_the_registry(capsys):
    assert main(["list", "tasks", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == sorted(REGISTRY)
    assert {r["name"]: r["gen_length"] for r in rows}["gsm8k"] == 256
    assert main(["list", "tasks"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["task", "gen_length", "what", "it", "is"] and "math500" in out


def test_list_models_reads_the_bundled_directories(capsys, bundled):
    bundled("tiny-dlm")
    assert main(["list", "models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["tiny-dlm"]["kind"] == "diffusion" and rows["tiny-dlm"]["parameters"] == 3_301_120
    assert rows["tiny-dlm"]["chat_template"] is True
    assert rows["gold"]["kind"] == "reference"
    if rows.get("tiny-ar", {}).get("installed"):
        assert rows["tiny-ar"]["kind"] == "causal" and rows["tiny-ar"]["parameters"] == 764_544


def test_parameter_count_from_the_header_matches_the_loaded_model(bundled, tiny_dlm):
    path = bundled("tiny-dlm")
    model = tiny_dlm
    stored = {k for k in model.module.state_dict()}
    assert catalog.safetensors_parameters(path / "model.safetensors") == sum(
        model.module.state_dict()[k].numel() for k in stored)


DESCRIBED = [
    {"name": "threshold", "summary": "commit every masked position whose confidence is at least the threshold",
     "params": [{"name": "threshold", "type": "float", "default": 0.9, "range": [0, 1],
                 "help": "confidence threshold"},
                {"name": "early_stop", "type": "bool", "default": False, "range": None, "help": "stop at EOS"}]},
    {"name": "llada", "summary": "fixed schedule", "params": []},
]


def test_list_strategies_prints_the_registry_description(capsys, monkeypatch):
    import fewstep.strategies

    monkeypatch.setattr(fewstep.strategies, "describe", lambda: DESCRIBED, raising=False)
    assert main(["list", "strategies"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "threshold: commit every masked position whose confidence is at least the threshold"
    assert out[1].split() == ["parameter", "type", "default", "range", "meaning"]
    assert out[2].split() == ["threshold", "float", "0.9", "[0,", "1]", "confidence", "threshold"]
    assert out[3].split() == ["early_stop", "bool", "false", "-", "stop", "at", "EOS"]
    assert "llada: fixed schedule" in out
    assert main(["list", "strategies", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == DESCRIBED


def test_lm_eval_subcommand_passes_arguments_through(capsys):
    pytest.importorskip("lm_eval")
    assert main(["lm-eval", "--help"]) == 0
    assert "--model_args" in capsys.readouterr().out


def test_list_models_names_every_native_architecture(capsys, tmp_path):
    from fewstep.models.registry import ARCHITECTURES

    assert main(["list", "models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {a.model_type for a in ARCHITECTURES} <= set(rows) and rows["llada2_moe"]["kind"] == "architecture"
    assert rows["llada2_moe"]["attention"] == "block-causal"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llada2_moe"}))
    assert catalog.describe_model_dir(tmp_path)["kind"] == "diffusion"
    assert main(["list", "models"]) == 0
    assert any(line.split()[:2] == ["llada2_moe", "architecture"] for line in capsys.readouterr().out.splitlines())


def test_settings_reference_is_generated_from_the_declarations():
    """docs/settings.md is `fewstep list settings --markdown`: regenerate it when a setting changes."""
    from pathlib import Path

    from fewstep.catalog import settings_reference
    from fewstep.config import DecodeConfig, loop_fields

    doc = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
    assert doc.read_text() == settings_reference() + "\n"
    listed = {line.split("`")[1] for line in settings_reference().splitlines() if line.startswith("| `")}
    assert {f.name for f in loop_fields()} <= listed and "tau" in listed
    assert DecodeConfig().to_dict()["verify_groups"] == 1
