"""DiffusionGemma: a tiny random checkpoint written by transformers' ``save_pretrained`` loads by
path and decodes in fewstep's loop token for token as transformers' own ``generate()`` (a batch
of one after ``torch.manual_seed``), batch-invariant, streamed, warm-started and from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import fewstep
from dgemma_helpers import make_tiny_dgemma
from fewstep.cli import main
from fewstep.config import DecodeConfig, resolve_config
from fewstep.decoding.canvas import CanvasInit
from fewstep.decoding.loop import decode
from fewstep.engine import generate, stream
from fewstep.errors import ConfigError
from fewstep.models.diffusion_gemma import DiffusionGemmaModel
from fewstep.models.loading import load_model

PROMPTS = ["what is 2 + 3 ?", "tom has 5 apples . he buys 7 more . how many apples does he have ?", "hi"]


@pytest.fixture(scope="module")
def dg_dir(tmp_path_factory) -> Path:
    return make_tiny_dgemma(tmp_path_factory.mktemp("dg") / "tiny", std=0.5, max_new_tokens=24, entropy_bound=2.0)


@pytest.fixture(scope="module")
def dg(dg_dir) -> DiffusionGemmaModel:
    model = load_model(dg_dir)
    assert isinstance(model, DiffusionGemmaModel)
    return model


@pytest.fixture(scope="module")
def eos_dir(tmp_path_factory) -> Path:
    """Always confident (the stop waits for stability only), and a frequent token as EOS, so that
    answers end inside a block and rows finish at different blocks."""
    path = make_tiny_dgemma(tmp_path_factory.mktemp("dg") / "eos", std=0.5, confidence_threshold=6.0,
                            max_new_tokens=32, entropy_bound=2.0)
    gen = json.loads((path / "generation_config.json").read_text())
    gen["eos_token_id"] = 142
    (path / "generation_config.json").write_text(json.dumps(gen))
    return path


def reference(model: DiffusionGemmaModel, prompt: list[int], seed: int, **kw):
    torch.manual_seed(seed)
    out = model.module.generate(torch.tensor([prompt]), **kw)
    return out.sequences[0, len(prompt):].tolist(), float(out.tokens_per_forward[0])


def test_loads_by_path_through_transformers(dg, dg_dir):
    assert json.loads((dg_dir / "config.json").read_text())["model_type"] == "diffusion_gemma"
    assert type(dg.module).__name__ == "DiffusionGemmaForBlockDiffusion"  # transformers' class, no remote code
    assert dg.kind == "uniform" and dg.mask_id < 0 and dg.canvas_length == 8
    assert dg.decode_defaults == {"gen_length": 24, "block_length": 8, "early_stop": True, "max_denoising_steps": 6,
                                  "t_min": 0.4, "t_max": 0.8, "stability_threshold": 1,
                                  "confidence_threshold": 0.005, "entropy_bound": 2.0}
    cfg = resolve_config(dg, None, [])
    assert cfg.strategy == "uniform_eb" and cfg.entropy_bound == 2.0 and cfg.gen_length == 24


def test_list_models_knows_it():
    from fewstep.catalog import model_rows

    [row] = [r for r in model_rows() if r["name"] == "diffusion_gemma"]
    assert row["architecture"] == "DiffusionGemma"


def test_logits_are_the_decoders_and_ignore_left_padding(dg):
    """The adapter's logits of a canvas equal transformers' forward (prompt encoded, then the
    decoder over the canvas); a left-padded copy of the row gets the same logits."""
    from transformers import DynamicCache

    prompt = torch.tensor([dg.encode_prompt(PROMPTS[0])])
    canvas = torch.randint(0, 171, (1, 8), generator=torch.Generator().manual_seed(0))
    p = prompt.shape[1]
    cache = DynamicCache(config=dg.module.config.get_text_config(decoder=True))
    with torch.no_grad():
        ref = dg.module(input_ids=prompt, cache=cache, decoder_input_ids=canvas).logits
    ids = torch.cat([prompt, canvas], 1)
    ours = dg.logits(input_ids=ids, attention_mask=torch.ones_like(ids), positions=slice(p, p + 8))
    assert torch.allclose(ours, ref, atol=1e-5)
    padded = torch.cat([torch.full((1, 3), dg.pad_id), ids], 1)
    both = torch.cat([torch.cat([ids[:, :1].repeat(1, 3), ids], 1), padded])  # row 0: a longer prompt
    att = torch.ones_like(both)
    att[1, :3] = 0
    out = dg.logits(input_ids=both, attention_mask=att, positions=slice(p + 3, p + 11))
    assert torch.allclose(out[1], ours[0], atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_generate_is_transformers_token_for_token(eos_dir, seed, prompt):
    """Same tokens up to the first EOS (transformers pads after it, fewstep repeats EOS) and the
    same forwards (tokens per forward: transformers' generated non-pad tokens over its NFE)."""
    model = load_model(eos_dir)
    ids = model.encode_prompt(prompt)
    cfg = DecodeConfig(**{**resolve_config(model, None, []).to_dict(), "seed": seed})
    [ours] = generate(model, [ids], cfg)
    ref, tokens_per_forward = reference(model, ids, seed)
    n = model.answer_length(ref)
    assert ours.token_ids[:n + 1] == ref[:n + 1]
    assert all(t == model.eos_id for t in ours.token_ids[n:])
    assert tokens_per_forward == pytest.approx(sum(t != model.pad_id for t in ref) / ours.nfe)


@pytest.mark.parametrize("sample", [True, False])
def test_multi_block_parity_without_eos(dg, sample):
    ids = dg.encode_prompt(PROMPTS[1])
    cfg = DecodeConfig(**{**resolve_config(dg, None, []).to_dict(), "seed": 3, "sample": sample})
    [ours] = generate(dg, [ids], cfg)
    if sample:
        ref, tpf = reference(dg, ids, 3)
        assert ours.token_ids == ref and ours.nfe == 18 and tpf == pytest.approx(24 / 18)
    assert ours.committed_at == [5] * 8 + [11] * 8 + [17] * 8  # every block takes its 6 steps


def test_batch_invariance(eos_dir):
    model = load_model(eos_dir)
    cfg = resolve_config(model, None, [])
    alone = [generate(model, [p], cfg)[0] for p in PROMPTS]
    together = generate(model, PROMPTS, cfg)
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert [r.nfe for r in together] == [r.nfe for r in alone]
    assert len({r.nfe for r in alone}) > 1  # rows end at different blocks: the NFE is counted per row


def test_streaming_shows_the_canvas_being_resampled(dg):
    cfg = resolve_config(dg, None, [])
    updates = list(stream(dg, [PROMPTS[0]], cfg))
    assert len(updates) == 18 and updates[-1].done
    first = updates[0].event
    assert (first.canvas[0, :8] >= 0).all() and (first.canvas[0, 8:] == dg.mask_id).all()  # later blocks wait
    assert not first.committed.any() and updates[5].event.committed[0, :8].all()
    assert updates[-1].results()[0].token_ids == generate(dg, [PROMPTS[0]], cfg)[0].token_ids


def test_a_draft_is_the_starting_canvas(dg):
    """transformers' ``decoder_input_ids`` (the first canvas given) and fewstep's injected draft
    give the same tokens: the draft replaces the random start, the random stream stays aligned."""
    ids = dg.encode_prompt(PROMPTS[0])
    draft = torch.tensor([[140, 141, 142, 143, 144, 145, 146, 147]])
    cfg = DecodeConfig(**{**resolve_config(dg, None, []).to_dict(), "seed": 5})
    tokens = torch.full((1, 24), -1)
    tokens[:, :8] = draft
    *_, last = decode(dg, [ids], cfg, init=CanvasInit(tokens=tokens), snapshots=False)
    ref, _ = reference(dg, ids, 5, decoder_input_ids=draft)
    assert last.canvas[0].tolist() == ref
    *_, cold = decode(dg, [ids], cfg, snapshots=False)
    assert cold.canvas[0].tolist() != ref


def test_warm_start_from_the_drafter_is_used(dg, monkeypatch, bundled):
    bundled("tiny-ar")
    seen: list[torch.Tensor] = []
    logits = DiffusionGemmaModel.logits

    def spy(self, input_ids=None, attention_mask=None, positions=None, **kw):
        seen.append(input_ids[:, positions].clone())
        return logits(self, input_ids=input_ids, attention_mask=attention_mask, positions=positions, **kw)

    monkeypatch.setattr(DiffusionGemmaModel, "logits", spy)
    cfg = resolve_config(dg, None, ["drafter=tiny-ar"])
    assert cfg.init == "inject"
    updates = list(stream(dg, [PROMPTS[0]], cfg, snapshots=False))
    injected = updates[-1].injected()
    assert injected is not None and (injected[0, :8] >= 0).any()
    drafted = injected[0, :8] >= 0
    assert torch.equal(seen[0][0, drafted], injected[0, :8][drafted])  # the first forward sees the draft
    assert updates[-1].results()[0].drafter_nfe > 0


def test_a_mask_strategy_is_refused(dg, bundled):
    with pytest.raises(ConfigError, match="uniform-state"):
        generate(dg, [PROMPTS[0]], DecodeConfig(strategy="llada", gen_length=8, block_length=8, steps=8))
    tiny = fewstep.load_model(bundled("tiny-dlm"))
    with pytest.raises(ConfigError, match="masked diffusion"):
        generate(tiny, [PROMPTS[0]], DecodeConfig(strategy="uniform_eb", gen_length=8, block_length=8))


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_generate_stats_and_stream(capsys, dg_dir, dg):
    code, out, err = run(capsys, "generate", PROMPTS[0], "--model", str(dg_dir), "--stats")
    assert code == 0, err
    [expected] = generate(dg, [PROMPTS[0]], resolve_config(dg, None, []))
    assert out.strip() == expected.text.strip() and f"nfe={expected.nfe}" in err
    code, out, err = run(capsys, "generate", PROMPTS[0], "--model", str(dg_dir), "--stream")
    assert code == 0 and out.strip() == expected.text.strip() and len(err.strip().splitlines()) >= 18


@pytest.mark.parametrize("argv", [("--strategy", "threshold"), ("--set", "temperature=0.7")])
def test_cli_bad_input_is_one_line_exit_2(capsys, dg_dir, argv):
    code, out, err = run(capsys, "generate", PROMPTS[0], "--model", str(dg_dir), *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1, err


def test_the_stop_rule_ends_blocks_early_as_transformers_does(tmp_path):
    """stability_threshold=0 and a loose confidence threshold: every block stops at its first step."""
    path = make_tiny_dgemma(tmp_path / "stop", std=0.5, stability_threshold=0, confidence_threshold=3.0,
                            max_new_tokens=24, entropy_bound=2.0)
    model = load_model(path)
    ids = model.encode_prompt(PROMPTS[2])
    for seed in (0, 1):
        [ours] = generate(model, [ids], DecodeConfig(**{**resolve_config(model, None, []).to_dict(), "seed": seed}))
        ref, tokens_per_forward = reference(model, ids, seed)
        assert ours.token_ids == ref and ours.nfe == 3 and tokens_per_forward == pytest.approx(24 / 3)
