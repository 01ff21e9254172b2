"""fewstep's native Dream: transformers' Qwen2 layers run bidirectionally are the reference; random
tiny weights saved in the published layout (sharded safetensors, ``model_type: Dream``, an
``auto_map`` naming modelling code that is not there, Dream's remote tokenizer class) load without
remote code and decode with every strategy, batch-invariantly under left padding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import fewstep
from fewstep import ModelLoadError
from fewstep.models.dream import DreamConfig, DreamModel
from fewstep.models.kvcache import KVCache
from fewstep.tasks import arith

STRATEGIES = {"llada": {}, "threshold": {"threshold": 0.5}, "factor": {}, "cad": {"tau": 0.5},
              "eb": {"entropy_bound": 0.5}}


def dream_tokenizer():
    """A byte-level BPE in Qwen2's tokenizer class, with Dream's special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    texts = [p.question for p in arith.test_set()[:80]]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    m = json.loads(bpe.to_str())["model"]
    merges = [tuple(x.split(" ")) if isinstance(x, str) else tuple(x) for x in m["merges"]]
    tok = Qwen2Tokenizer(vocab=m["vocab"], merges=merges, unk_token=None, bos_token=None,
                             eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"mask_token": "<|mask|>", "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tok


def make_random_dream(path: Path, seed: int = 0, tie: bool = False, kv_heads: int = 2, std: float = 0.3) -> Path:
    from safetensors.torch import save_file

    tok = dream_tokenizer()
    cfg = DreamConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, rms_norm_eps=1e-6, rope_theta=10000.0,
                      tie_word_embeddings=tie, max_position_embeddings=256, mask_token_id=tok.mask_token_id,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    model = DreamModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std if p.dim() == 2 else 0.1)
    path.mkdir(parents=True)
    config = {**cfg.to_dict(), "auto_map": {"AutoConfig": "configuration_dream.DreamConfig",
                                            "AutoModel": "modeling_dream.DreamModel"}, "torch_dtype": "float32"}
    (path / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    shards = {"model-00001-of-00002.safetensors": {k: v for k, v in state.items() if ".layers.1." not in k},
              "model-00002-of-00002.safetensors": {k: v for k, v in state.items() if ".layers.1." in k}}
    for name, part in shards.items():
        save_file(part, path / name, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: n for n, part in shards.items() for k in part}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    tok.save_pretrained(path)
    tc = json.loads((path / "tokenizer_config.json").read_text())
    tc.update(tokenizer_class="DreamTokenizer", auto_map={"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]})
    (path / "tokenizer_config.json").write_text(json.dumps(tc))
    return path


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory) -> Path:
    return make_random_dream(tmp_path_factory.mktemp("models") / "random-dream")


def qwen2_reference(module: DreamModel):
    """transformers' Qwen2 with the same weights (run with a 4-D non-causal mask as Dream does)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    c = module.config
    qc = Qwen2Config(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                     num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                     num_key_value_heads=c.num_key_value_heads, rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta,
                     max_position_embeddings=c.max_position_embeddings, tie_word_embeddings=c.tie_word_embeddings)
    ref = Qwen2ForCausalLM(qc).eval()
    state = dict(module.state_dict())
    if c.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    ref.load_state_dict(state, strict=True)
    return ref


@pytest.mark.parametrize("tie,kv_heads", [(False, 2), (True, 4)])
def test_native_forward_equals_qwen2_layers_without_causal_mask(tmp_path, tie, kv_heads):
    model = fewstep.load_model(make_random_dream(tmp_path / "d", seed=1, tie=tie, kv_heads=kv_heads))
    ref = qwen2_reference(model.module)
    ids = torch.randint(0, model.module.config.vocab_size, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.module(input_ids=ids).logits
        full = ref(input_ids=ids, attention_mask=torch.zeros(2, 1, 13, 13)).logits  # additive 4-D: attend to all
        causal = ref(input_ids=ids).logits
    torch.testing.assert_close(ours, full, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours[:, :-1], causal[:, :-1], atol=1e-3)  # the reference mask matters


def test_left_padding_matches_qwen2_with_a_padding_mask(dream_dir):
    model = fewstep.load_model(dream_dir)
    ref = qwen2_reference(model.module)
    ids = torch.randint(0, model.module.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(3))
    att = torch.ones(2, 10, dtype=torch.long)
    att[1, :4] = 0  # row 1 left-padded by 4
    keys = att.bool()[:, None, None, :].expand(2, 1, 10, 10)
    positions = (att.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model.module(input_ids=ids, attention_mask=att).logits
        theirs = ref(input_ids=ids, attention_mask=keys, position_ids=positions).logits
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[1, 4:], theirs[1, 4:], atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # and the padded row is computed as if it stood alone
        alone = model.module(input_ids=ids[1:, 4:]).logits
    torch.testing.assert_close(ours[1:, 4:], alone, atol=1e-5, rtol=1e-5)


def test_loads_in_the_published_layout_without_remote_code(dream_dir):
    model = fewstep.load_model(dream_dir)  # trust_remote_code=False: no modelling file exists anyway
    cfg = json.loads((dream_dir / "config.json").read_text())
    assert cfg["model_type"] == "Dream" and cfg["architectures"] == ["DreamModel"]
    assert model.kind == "diffusion" and model.shifted_logits
    assert model.mask_id == model.tokenizer.convert_tokens_to_ids("<|mask|>") == cfg["mask_token_id"]
    assert model.eos_id == model.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert model.stop_ids == (model.tokenizer.convert_tokens_to_ids("<|im_end|>"),)
    text = "Mia has 7 pens ."
    assert model.tokenizer.decode(model.tokenizer.encode(text)) == text
    names = set(model.module.state_dict())
    assert {"model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.bias", "model.layers.0.mlp.gate_proj.weight",
            "model.layers.0.post_attention_layernorm.weight", "model.norm.weight", "lm_head.weight"} <= names


def test_adapter_reads_position_i_from_output_i_minus_1(dream_dir):
    model = fewstep.load_model(dream_dir)
    ids = torch.tensor([model.encode_prompt("Mia has 7 pens . She buys 5 more .")])
    with torch.no_grad():
        raw = model.module(input_ids=ids).logits
    shifted = model.logits(input_ids=ids)
    torch.testing.assert_close(shifted[:, 1:], raw[:, :-1])
    torch.testing.assert_close(shifted[:, :1], raw[:, :1])
    torch.testing.assert_close(model.logits(input_ids=ids, positions=slice(4, 9)), shifted[:, 4:9])


def test_window_forward_on_a_fresh_cache_equals_the_full_forward(dream_dir):
    model = fewstep.load_model(dream_dir)
    ids = torch.randint(0, model.module.config.vocab_size, (3, 20), generator=torch.Generator().manual_seed(5))
    att = torch.ones(3, 20, dtype=torch.long)
    att[2, :6] = 0
    full = model.logits(input_ids=ids, attention_mask=att)
    cache = KVCache(rows=3)
    stored = model.logits(input_ids=ids, attention_mask=att, cache=cache)
    torch.testing.assert_close(stored, full)
    for window in (slice(12, 20), slice(12, 16)):  # prefix-style and dual-style windows
        part = model.logits(input_ids=ids, attention_mask=att, positions=slice(window.start, window.stop),
                            cache=cache, window=window)
        torch.testing.assert_close(part, full[:, window], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_decodes_batch_invariantly(dream_dir, strategy):
    model = fewstep.load_model(dream_dir)
    questions = [p.question for p in arith.test_set()[:6]]
    cfg = fewstep.DecodeConfig(strategy=strategy, gen_length=16, block_length=8, early_stop=True,
                               **({"steps": 8} if strategy == "llada" else {}), **STRATEGIES[strategy])
    alone = [fewstep.generate(model, [q], cfg)[0] for q in questions]
    batched = fewstep.generate(model, questions, cfg)
    assert [(r.token_ids, r.nfe) for r in alone] == [(r.token_ids, r.nfe) for r in batched]
    assert all(model.mask_id not in r.token_ids for r in batched)
    assert len({tuple(r.token_ids) for r in batched}) > 1  # the prompts matter


def test_bfloat16_decode(dream_dir):
    model = fewstep.load_model(dream_dir, dtype="bfloat16")
    assert next(model.module.parameters()).dtype == torch.bfloat16
    [r] = fewstep.generate(model, ["Mia has 7 pens ."], fewstep.DecodeConfig(gen_length=8, block_length=8, steps=4))
    assert r.nfe == 4 and model.mask_id not in r.token_ids


@pytest.mark.parametrize("field,value", [("rope_scaling", {"type": "yarn", "factor": 4.0}),
                                         ("use_sliding_window", True), ("hidden_act", "swish_glu"),
                                         ("head_dim", 16)])
def test_unimplemented_dream_values_are_refused(tmp_path, dream_dir, field, value):
    import shutil

    bad = Path(shutil.copytree(dream_dir, tmp_path / "bad"))
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, field: value}))
    with pytest.raises(ModelLoadError) as err:
        fewstep.load_model(bad)
    assert "\n" not in str(err.value) and f"{field}={value!r} is not implemented" in str(err.value)


def dream_confidence_threshold(module, prompt: list[int], mask_id: int, gen_length: int, steps: int,
                               threshold: float) -> tuple[list[int], int]:
    """Dream's ``diffusion_generate(alg="confidence_threshold", temperature=0)`` for one prompt, from
    its description: the whole generation region is one block; each step commits the
    ``gen_length // steps`` masked positions of highest top-1 probability (the first always, the
    others when >= threshold; a shortfall is carried to the next step, and steps are added at the
    end until nothing is left), reading position i from the output at i - 1."""
    x = torch.tensor([prompt + [mask_id] * gen_length])
    per_step, carry, i, nfe = gen_length // steps, 0, 0, 0
    while i < steps and (x == mask_id).any():
        masked = x[0] == mask_id
        with torch.no_grad():
            logits = module(input_ids=x).logits[0]
        logits = torch.cat([logits[:1], logits[:-1]])  # position i from output i - 1
        nfe += 1
        conf, tokens = torch.softmax(logits.float(), -1).max(-1)
        conf = torch.where(masked, conf, torch.full_like(conf, -torch.inf))
        k = min(per_step + carry, int(masked.sum()))
        top, idx = conf.topk(k)
        keep = [int(idx[0])] + [int(j) for c, j in zip(top[1:], idx[1:]) if c >= threshold]
        carry = k - len(keep)
        if carry and i == steps - 1:
            steps, per_step = steps + 1, 0
        x[0, keep] = tokens[keep]
        i += 1
    return x[0, len(prompt):].tolist(), nfe


@pytest.mark.parametrize("steps", [16, 8, 4])
def test_llada_equals_dreams_confidence_threshold_at_threshold_0(dream_dir, steps):
    """Dream's confidence_threshold sampler with threshold 0 and temperature 0 is fewstep's llada with
    one block over the generation (block_length = gen_length) at the same steps: same tokens, same NFE."""
    model = fewstep.load_model(dream_dir)
    cfg = fewstep.DecodeConfig(strategy="llada", gen_length=16, block_length=16, steps=steps)
    outs = []
    for q in [p.question for p in arith.test_set()[:5]]:
        ref_tokens, ref_nfe = dream_confidence_threshold(model.module, model.encode_prompt(q), model.mask_id, 16,
                                                         steps, threshold=0.0)
        [r] = fewstep.generate(model, [q], cfg)
        assert (r.token_ids, r.nfe) == (ref_tokens, ref_nfe) == (r.token_ids, steps)
        outs.append(tuple(ref_tokens))
    assert len(set(outs)) > 1


def test_dreams_own_tokenizer_runs_only_with_the_opt_in(tmp_path, dream_dir):
    import shutil

    path = Path(shutil.copytree(dream_dir, tmp_path / "with-code"))
    (path / "tokenization_dream.py").write_text(
        "from transformers import Qwen2Tokenizer\n\n\nclass DreamTokenizer(Qwen2Tokenizer):\n    shipped = True\n")
    plain = fewstep.load_model(path)
    assert not getattr(plain.tokenizer, "shipped", False)
    shipped = fewstep.load_model(path, trust_remote_code=True)
    assert getattr(shipped.tokenizer, "shipped", False) and shipped.mask_id == plain.mask_id
    assert shipped.tokenizer.encode("Mia has 7 pens .") == plain.tokenizer.encode("Mia has 7 pens .")
