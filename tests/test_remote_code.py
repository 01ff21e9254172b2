"""``trust_remote_code`` is an explicit opt-in: a directory whose architecture is its own code loads
only when asked (library argument, ``--trust-remote-code``), never through an interactive prompt;
unknown architectures and remote tokenizers fail with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import fewstep
from fewstep import ModelLoadError
from fewstep.cli import main

CONFIG_CODE = '''from transformers import LlamaConfig


class ShippedConfig(LlamaConfig):
    model_type = "shipped-lm"
'''
MODEL_CODE = '''from transformers import LlamaForCausalLM

from .configuration_shipped import ShippedConfig


class ShippedForCausalLM(LlamaForCausalLM):
    config_class = ShippedConfig
    shipped_code_ran = True
'''


@pytest.fixture
def shipped_dir(tmp_path, random_ar_dir) -> Path:
    """The random causal LM relabelled as an architecture that exists only as code in the directory."""
    path = Path(shutil.copytree(random_ar_dir, tmp_path / "shipped"))
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(model_type="shipped-lm", architectures=["ShippedForCausalLM"],
               auto_map={"AutoConfig": "configuration_shipped.ShippedConfig",
                         "AutoModelForCausalLM": "modeling_shipped.ShippedForCausalLM"})
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "configuration_shipped.py").write_text(CONFIG_CODE)
    (path / "modeling_shipped.py").write_text(MODEL_CODE)
    return path


def test_shipped_code_needs_the_opt_in(shipped_dir, random_ar_dir):
    with pytest.raises(ModelLoadError) as err:
        fewstep.load_model(shipped_dir)
    assert "\n" not in str(err.value) and "trust_remote_code=True" in str(err.value) and "shipped-lm" in str(err.value)
    model = fewstep.load_model(shipped_dir, trust_remote_code=True)
    assert getattr(model.module, "shipped_code_ran", False) and model.kind == "causal"
    plain = fewstep.load_model(random_ar_dir)
    ids = torch.tensor([plain.encode_prompt("Mia has 7 pens .")])
    with torch.no_grad():
        torch.testing.assert_close(model.module(input_ids=ids).logits, plain.module(input_ids=ids).logits)


def test_cli_opt_in(shipped_dir, capsys):
    assert main(["generate", "Mia", "--model", str(shipped_dir), "--set", "gen_length=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fewstep: error: ") and "--trust-remote-code" in err[0]
    assert main(["generate", "Mia", "--model", str(shipped_dir), "--set", "gen_length=4", "--trust-remote-code"]) == 0


def test_trust_remote_code_must_be_a_bool(random_dlm_dir):
    with pytest.raises(ModelLoadError, match="True or False"):
        fewstep.load_model(random_dlm_dir, trust_remote_code=None)  # type: ignore[arg-type]


def test_unknown_architecture_is_one_line(tmp_path, random_ar_dir):
    path = Path(shutil.copytree(random_ar_dir, tmp_path / "unknown"))
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "model_type": "no-such-arch"}))
    with pytest.raises(ModelLoadError) as err:
        fewstep.load_model(path, trust_remote_code=True)
    assert "\n" not in str(err.value) and "unknown architecture" in str(err.value) and "no-such-arch" in str(err.value)


def test_remote_tokenizer_needs_the_opt_in(tmp_path, random_dlm_dir):
    path = Path(shutil.copytree(random_dlm_dir, tmp_path / "remote-tok"))
    tc = json.loads((path / "tokenizer_config.json").read_text())
    tc["auto_map"] = {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}
    (path / "tokenizer_config.json").write_text(json.dumps(tc))
    with pytest.raises(ModelLoadError, match="tokenizer of .* is its own code.*trust_remote_code=True"):
        fewstep.load_model(path)


def test_lm_eval_model_arg(shipped_dir):
    pytest.importorskip("lm_eval")
    from fewstep.integrations.lm_eval import FewstepLM

    with pytest.raises(ModelLoadError, match="trust_remote_code=True"):
        FewstepLM(pretrained=str(shipped_dir))
    lm = FewstepLM(pretrained=str(shipped_dir), trust_remote_code="True")  # as --model_args passes it
    assert getattr(lm.model.module, "shipped_code_ran", False)
    with pytest.raises(fewstep.ConfigError, match="trust_remote_code must be true or false"):
        FewstepLM(pretrained=str(shipped_dir), trust_remote_code="maybe")
