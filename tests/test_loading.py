import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fewstep
from fewstep import ModelLoadError
from fewstep.models.adapter import DiffusionModel


def test_llada_directory_loads_with_real_parameter_names(random_dlm_dir):
    model = fewstep.load_model(random_dlm_dir)
    assert isinstance(model, DiffusionModel)
    names = set(model.module.state_dict())
    assert "model.transformer.wte.weight" in names
    assert "model.transformer.blocks.0.attn_out.weight" in names
    assert "model.transformer.ff_out.weight" in names
    cfg = json.loads((random_dlm_dir / "config.json").read_text())
    assert cfg["model_type"] == "llada" and model.mask_id == cfg["mask_token_id"]
    assert model.embedding_table().shape[0] == cfg["embedding_size"]


def test_forward_accepts_embeddings(random_dlm_dir):
    model = fewstep.load_model(random_dlm_dir)
    ids = torch.tensor([model.encode_prompt("Mia has 7 pens .")])
    att = torch.ones_like(ids)
    by_ids = model.logits(input_ids=ids, attention_mask=att)
    by_emb = model.logits(inputs_embeds=model.embedding_table()[ids], attention_mask=att)
    torch.testing.assert_close(by_ids, by_emb)


def test_left_padding_does_not_change_logits(random_dlm_dir):
    model = fewstep.load_model(random_dlm_dir)
    ids = torch.tensor([model.encode_prompt("Mia has 7 pens .")])
    alone = model.logits(input_ids=ids, attention_mask=torch.ones_like(ids))
    padded = torch.cat([torch.full((1, 5), model.pad_id), ids], 1)
    att = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones_like(ids)], 1)
    torch.testing.assert_close(model.logits(input_ids=padded, attention_mask=att)[:, 5:], alone, atol=1e-5, rtol=1e-5)


def test_shifted_logits_are_realigned(random_dlm_dir):
    model = fewstep.load_model(random_dlm_dir)
    ids = torch.tensor([model.encode_prompt("Mia has 7 pens .")])
    plain = model.logits(input_ids=ids)
    model.shifted_logits = True
    shifted = model.logits(input_ids=ids)
    torch.testing.assert_close(shifted[:, 1:], plain[:, :-1])


def test_bfloat16_and_decode(random_dlm_dir):
    model = fewstep.load_model(random_dlm_dir, dtype="bfloat16")
    assert next(model.module.parameters()).dtype == torch.bfloat16
    [r] = fewstep.generate(model, ["Mia has 7 pens ."], fewstep.DecodeConfig(steps=6))
    assert r.nfe == 6 and model.mask_id not in r.token_ids


def test_causal_model_greedy(random_ar_dir):
    model = fewstep.load_model(random_ar_dir)
    assert model.kind == "causal" and model.decode_defaults == {"gen_length": 16}
    out = fewstep.generate(model, ["Mia has 7 pens .", "Tom"], fewstep.DecodeConfig(strategy="ar", gen_length=16))
    assert all(1 <= r.nfe <= 16 for r in out)
    with pytest.raises(fewstep.ConfigError, match="causal model"):
        fewstep.generate(model, ["x"], fewstep.DecodeConfig())


def test_unknown_and_broken_models(tmp_path, random_dlm_dir):
    with pytest.raises(ModelLoadError, match="unknown model"):
        fewstep.load_model("definitely-not-a-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        fewstep.load_model(tmp_path / "empty")

    corrupt = shutil.copytree(random_dlm_dir, tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(ModelLoadError, match="corrupt weight file"):
        fewstep.load_model(corrupt)

    truncated = shutil.copytree(random_dlm_dir, tmp_path / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError):
        fewstep.load_model(truncated)

    mismatch = shutil.copytree(random_dlm_dir, tmp_path / "mismatch")
    cfg = json.loads((mismatch / "config.json").read_text())
    cfg["n_layers"] += 1
    (mismatch / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="do not match"):
        fewstep.load_model(mismatch)

    bad_json = shutil.copytree(random_dlm_dir, tmp_path / "badjson")
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot read"):
        fewstep.load_model(bad_json)


def test_prompt_too_long(random_dlm_dir):
    model = fewstep.load_model(random_dlm_dir)
    with pytest.raises(fewstep.PromptTooLongError, match="context"):
        fewstep.generate(model, ["Mia " * 90], fewstep.DecodeConfig())


def test_import_is_light():
    heavy = "('torch', 'transformers', 'fewstep.evaluation.runner', 'tqdm', 'matplotlib')"
    code = f"import sys, fewstep; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_incomplete_dream_config_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "Dream"}))
    with pytest.raises(ModelLoadError, match="config.json lacks vocab_size"):
        fewstep.load_model(tmp_path)


def test_loading_needs_no_training_code():
    """``fewstep.models`` (the loader and the architectures) imports nothing from ``fewstep.training``,
    lazily or not: lab-model construction lives with training."""
    models = Path(fewstep.__file__).parent / "models"
    imported = set()
    for path in models.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add((path.name, node.module))
            elif isinstance(node, ast.Import):
                imported.update((path.name, alias.name) for alias in node.names)
    assert ("loading.py", "fewstep.models.adapter") in imported  # the walk sees the loader's imports
    assert [(f, m) for f, m in sorted(imported) if m.startswith("fewstep.training")] == []


def test_the_gold_model_lives_in_evaluation():
    """``gold`` decodes nothing: it answers with the task's references, so it sits above the tasks
    (the import layering itself is checked in tests/test_layers.py)."""
    assert type(fewstep.load_model("gold")).__module__ == "fewstep.evaluation.gold"


def test_decode_defaults_live_in_generation_config(tmp_path, random_dlm_dir):
    from fewstep.models.loading import write_decode_defaults

    path = Path(shutil.copytree(random_dlm_dir, tmp_path / "m"))
    (path / "fewstep.json").write_text(json.dumps({"decode_defaults": {"gen_length": 16, "steps": 8}}))
    assert fewstep.load_model(path).decode_defaults == {"gen_length": 16, "steps": 8}  # an older directory
    write_decode_defaults(path, {"gen_length": 32, "steps": 4, "block_length": 8})
    assert not (path / "fewstep.json").exists()
    gen = json.loads((path / "generation_config.json").read_text())
    assert gen == {"max_new_tokens": 32, "steps": 4, "block_length": 8}  # transformers' generate() reads it too
    assert fewstep.load_model(path).decode_defaults == {"gen_length": 32, "steps": 4, "block_length": 8}


@pytest.mark.parametrize("name,gen_length", [("tiny-dlm", 24), ("tiny-dlm-cd", 24), ("tiny-ar", 80)])
def test_bundled_models_keep_their_defaults_in_generation_config(name, gen_length, bundled):
    path = bundled(name)
    assert not (path / "fewstep.json").exists() and (path / "generation_config.json").is_file()
    assert fewstep.load_model(name).decode_defaults["gen_length"] == gen_length


def test_training_export_writes_generation_config(tmp_path, random_ar_dir):
    from fewstep.training.config import TrainConfig
    from fewstep.training.loop import export

    export(TrainConfig(kind="ar"), random_ar_dir, tmp_path / "exported")
    exported = tmp_path / "exported"
    assert not (exported / "fewstep.json").exists()
    gen = json.loads((exported / "generation_config.json").read_text())
    assert gen["max_new_tokens"] == 80 and gen["eos_token_id"] == 2  # merged into transformers' own file
    assert fewstep.load_model(exported).decode_defaults == {"gen_length": 80}


def test_the_architecture_registry_matches_each_config_class():
    """Each entry's model_type and architectures are what its config class writes, its classes and
    builder import, and a config.json of its model_type (any case) is native."""
    from dataclasses import MISSING, fields

    from fewstep.models import registry

    assert registry.model_types() == ("llada", "Dream", "llada2_moe", "lladamoe", "sdar", "Fast_dLLM_Qwen",
                                         "diffusion_gemma")
    for arch in (a for a in registry.ARCHITECTURES if a.implementation == "fewstep"):
        cls = registry.target(arch.config)
        written = cls(**{f.name: 1 for f in fields(cls) if f.default is MISSING}).to_dict()
        assert (written["model_type"], tuple(written["architectures"])) == (arch.model_type, arch.architectures)
        assert callable(registry.target(arch.module)) and callable(registry.target(arch.builder))
        for spelling in (arch.model_type, arch.model_type.upper()):
            assert registry.find(spelling) is arch and registry.native({"model_type": spelling})
    assert [a.model_type for a in registry.ARCHITECTURES if a.block_causal] == ["llada2_moe", "sdar", "Fast_dLLM_Qwen"]
    assert registry.find("llama") is None and not registry.native({})


def test_a_native_directory_loads_through_its_registry_builder(random_dlm_dir, monkeypatch):
    import fewstep.models.loading as loading

    calls = []
    monkeypatch.setattr(loading, "load_llada", lambda path, config, *args: calls.append((path, config)) or "built")
    assert fewstep.load_model(random_dlm_dir) == "built"
    assert calls[0][0] == random_dlm_dir and calls[0][1]["model_type"] == "llada"
