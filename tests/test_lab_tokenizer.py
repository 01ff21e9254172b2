"""The bundled models' tokenizer without transformers gives the same token ids and text as with it."""

from __future__ import annotations

import pytest

from fewstep.models.lab_tokenizer import LabTokenizer
from fewstep.models.loading import ASSETS, _tokenizer, load_lab_model, load_model

PROMPTS = [
    "Tom has 9 eggs . He sells 4 . How many eggs are left ?",
    "What is 2 + 3?",
    "",
    "  leading and trailing spaces  ",
    "line one\nline two\ttab",
    "unknown words: zyzzyva, naïve café, 北京, emoji 🙂",
    "special tokens typed by a user: <bos> <eos> <mask> <pad> <unk> <|eot_id|>",
    "Q: 12 + 7 A: 19 Q: 3 * 4 A:",
    "{{ not a template }} {% raw %}",
]


@pytest.fixture(scope="module", params=["tiny-dlm", "tiny-dlm-cd"])
def pair(request):
    path = ASSETS / request.param
    if not (path / "config.json").is_file():
        pytest.skip(f"{request.param} is not installed")
    return LabTokenizer(path), _tokenizer(path)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_same_ids_and_text_as_transformers(pair, prompt):
    lab, hf = pair
    messages = [{"role": "user", "content": prompt}]
    for add in (True, False):
        assert lab.apply_chat_template(messages, add_generation_prompt=add, tokenize=False) == \
            hf.apply_chat_template(messages, add_generation_prompt=add, tokenize=False)
        ids = lab.apply_chat_template(messages, add_generation_prompt=add, tokenize=True)
        assert ids == list(hf.apply_chat_template(messages, add_generation_prompt=add, tokenize=True,
                                                  return_dict=False))
    assert lab.encode(prompt) == list(hf.encode(prompt))
    assert lab.encode(prompt, add_special_tokens=False) == list(hf.encode(prompt, add_special_tokens=False))
    for skip in (True, False):
        assert lab.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    assert [lab.decode([t]) for t in ids] == [hf.decode([t]) for t in ids]


def test_same_special_tokens_and_lookups(pair):
    lab, hf = pair
    for name in ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token"):
        assert getattr(lab, name) == getattr(hf, name)
        assert getattr(lab, name + "_id") == getattr(hf, name + "_id")
    for token in ("<|eot_id|>", "<eos>", "5", "eggs", "no-such-token"):
        assert lab.convert_tokens_to_ids(token) == hf.convert_tokens_to_ids(token)
    assert len(lab) == len(hf)
    assert bool(lab.chat_template) == bool(hf.chat_template)


def test_lab_model_generates_what_the_transformers_loaded_model_generates():
    from fewstep.config import resolve_config
    from fewstep.engine import generate

    fast, slow = load_lab_model("tiny-dlm"), load_model("tiny-dlm")
    assert fast is not None and isinstance(fast.tokenizer, LabTokenizer)
    assert fast.stop_ids == slow.stop_ids and fast.eos_id == slow.eos_id and fast.mask_id == slow.mask_id
    prompts = PROMPTS[:2]
    for strategy in ("llada", "threshold"):
        a = generate(fast, prompts, resolve_config(fast, strategy, []))
        b = generate(slow, prompts, resolve_config(slow, strategy, []))
        assert [(r.token_ids, r.text, r.nfe) for r in a] == [(r.token_ids, r.text, r.nfe) for r in b]


def test_only_bundled_llada_models_take_the_fast_path(tmp_path):
    assert load_lab_model("tiny-ar") is None
    assert load_lab_model(str(tmp_path)) is None
    assert load_lab_model("gold") is None


@pytest.mark.parametrize("template", [
    "{{ bos_token }}Q: {{ messages[-1]['content'] }} A:",
    '{{bos_token}}{{ messages[-1]["content"] }}{{ eos_token }}\n',
    "plain {{ undefined_name }} {{ messages[-1]['content'] }}\n\n",
    "{% for m in messages %}{{ m['content'] }}{% endfor %}",  # not plain substitution: jinja2
    "{{- bos_token }} {{ messages[-1]['content'] | upper }}",
])
def test_template_rendering_equals_jinja2(template):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from fewstep.models.lab_tokenizer import _template

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    variables = {"bos_token": "<bos>", "eos_token": "<eos>", "add_generation_prompt": True}
    for content in ["Tom has 9 eggs", "", "{{ not a template }} {% raw %}", "a\nb"]:
        messages = [{"role": "user", "content": content}]
        assert _template(template).render(messages=messages, **variables) == \
            env.from_string(template).render(messages=messages, **variables)


def test_generate_with_a_bundled_model_imports_neither_transformers_nor_jinja2():
    """The start-up path (README "Start-up"): the command prints the answer, exits 0 without the
    interpreter's teardown, and its import tree has no transformers and no jinja2."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fewstep.cli", "generate",
         "Tom has 9 eggs . He sells 4 . How many eggs are left ?"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "9 - 4 = 5 . #### 5"
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" in imported and "tokenizers" in imported
    assert not {m for m in imported if m.split(".")[0] in ("transformers", "jinja2")}
