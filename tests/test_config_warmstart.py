"""The warm-start settings a drafter brings (:func:`fewstep.config.resolve_config`): ``init=inject``
unless an init is given, and the model's recommended ones (``warm_start`` in its decode defaults)
where no warm-start setting is given at all; explicit settings always win, and the same holds on
the command line, in a server request and with a task's generation length."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest

from fewstep import ConfigError
from fewstep.commands import settings_of
from fewstep.config import WARM_START, DecodeConfig, check_warm_start, loop_fields, resolve_config

RECOMMENDED = {"init": "inject", "remask_threshold": 0.5, "confirm_threshold": 0.5, "reject": "edit"}


def model(warm_start=None, **defaults):
    if warm_start is not None:
        defaults["warm_start"] = warm_start
    return SimpleNamespace(kind="diffusion", name="stub", decode_defaults=defaults)


def cli(*settings, drafter=None):
    return settings_of(argparse.Namespace(settings=list(settings), drafter=drafter))


def warm(cfg: DecodeConfig) -> dict:
    return {k: getattr(cfg, k) for k in ("drafter", *WARM_START)}


def test_a_drafter_alone_takes_the_recommendation():
    cfg = resolve_config(model(RECOMMENDED, gen_length=16, block_length=16), "threshold", cli(drafter="tiny-ar"))
    assert (cfg.drafter, cfg.init, cfg.remask_threshold, cfg.confirm_threshold, cfg.reject) == \
        ("tiny-ar", "inject", 0.5, 0.5, "edit")
    assert cfg.gen_length == 16 and cfg.edit_min_confidence == 0.0  # the rest: defaults
    assert warm(resolve_config(model(RECOMMENDED), None, cli("drafter=tiny-ar"))) == warm(cfg)  # --set drafter=


def test_the_recommendation_is_all_or_nothing():
    """One explicit warm-start setting and none of the recommendation applies (init=inject still does)."""
    cfg = resolve_config(model(RECOMMENDED), None, cli("remask_threshold=0.3", drafter="tiny-ar"))
    assert (cfg.init, cfg.remask_threshold, cfg.confirm_threshold, cfg.reject) == ("inject", 0.3, 1.0, "mask")
    cfg = resolve_config(model(RECOMMENDED), None, cli("init=interpolate", drafter="tiny-ar"))
    assert (cfg.init, cfg.remask_threshold, cfg.reject) == ("interpolate", 0.0, "mask")  # an explicit init wins
    cfg = resolve_config(model(RECOMMENDED), None, cli("seed=3", drafter="tiny-ar"))  # not a warm-start setting
    assert cfg.reject == "edit" and cfg.seed == 3


def test_without_a_drafter_the_recommendation_is_ignored():
    assert warm(resolve_config(model(RECOMMENDED), None, cli("remask_threshold=0.2"))) == \
        {**warm(DecodeConfig()), "remask_threshold": 0.2}
    assert warm(resolve_config(model(RECOMMENDED), None, cli("drafter="))) == warm(DecodeConfig())


def test_a_model_without_a_recommendation_injects():
    cfg = resolve_config(model(), None, cli(drafter="tiny-ar"))
    assert warm(cfg) == {**warm(DecodeConfig()), "drafter": "tiny-ar", "init": "inject"}
    assert resolve_config(model(), None, cli("init=mask", drafter="tiny-ar")).init == "mask"


def test_a_recommended_init_is_applied():
    cfg = resolve_config(model({"init": "interpolate", "alpha": 0.25}), None, cli(drafter="tiny-ar"))
    assert (cfg.init, cfg.alpha) == ("interpolate", 0.25)


def test_request_settings_count_as_explicit():
    """A server's request: its settings come after the server's and after max_tokens, and a
    warm-start setting there leaves the recommendation out as one on the command line does."""
    m = model(RECOMMENDED, gen_length=16, block_length=16)
    cfg = resolve_config(m, None, cli(drafter="tiny-ar"), gen_length=8, request=["confirm_threshold=0.9"])
    assert (cfg.gen_length, cfg.block_length, cfg.init, cfg.confirm_threshold, cfg.reject) == \
        (8, 8, "inject", 0.9, "mask")
    cfg = resolve_config(m, None, [], request={"drafter": "tiny-ar"})  # the drafter from the request
    assert warm(cfg) == {**warm(DecodeConfig()), "drafter": "tiny-ar", **RECOMMENDED}


def test_a_task_generation_length_and_a_recommendation_together():
    cfg = resolve_config(model(RECOMMENDED), "llada", cli(drafter="tiny-ar"), default_gen_length=32)
    assert (cfg.gen_length, cfg.steps, cfg.reject) == (32, 32, "edit")


@pytest.mark.parametrize("bad,message", [
    (["inject"], "warm_start must be an object of warm-start settings"),
    ({"steps": 4}, "'steps' is not a warm-start setting"),
    ({"drafter": "tiny-ar"}, "'drafter' is not a warm-start setting"),
    ({"remask_threshold": 1.5}, r"warm_start: remask_threshold must be in \[0, 1\], got 1.5"),
    ({"reject": "replace"}, "warm_start: reject must be one of mask, edit"),
    ({"verify_prefix": "yes"}, "warm_start: verify_prefix must be true or false"),
    ({"remask_threshold": 0.8, "confirm_threshold": 0.5},
     r"remask_threshold \(0.8\) must not exceed confirm_threshold \(0.5\)"),
])
def test_a_bad_recommendation_is_one_clear_line(bad, message):
    with pytest.raises(ConfigError, match=message) as e:
        check_warm_start(bad)
    assert "\n" not in str(e.value)


def test_every_warm_start_setting_is_a_loop_setting():
    assert set(WARM_START) <= {f.name for f in loop_fields()}
    assert check_warm_start(RECOMMENDED) == RECOMMENDED


def test_a_server_request_resolves_the_same_way():
    pytest.importorskip("pydantic")
    from fewstep.serve.requests import ServerConfig, request_config
    from fewstep.serve.schemas import CompletionRequest

    m = model(RECOMMENDED, gen_length=16, block_length=16)
    with_drafter = ServerConfig(None, tuple(cli(drafter="tiny-ar")))
    cfg = request_config(m, with_drafter, CompletionRequest(model="stub", prompt="hi", max_tokens=8))
    assert warm(cfg) == {**warm(DecodeConfig()), "drafter": "tiny-ar", **RECOMMENDED} and cfg.gen_length == 8
    body = CompletionRequest(model="stub", prompt="hi", settings={"verify_prefix": True})
    cfg = request_config(m, with_drafter, body)
    assert (cfg.init, cfg.verify_prefix, cfg.reject, cfg.remask_threshold) == ("inject", True, "mask", 0.0)
    body = CompletionRequest(model="stub", prompt="hi", settings={"drafter": "tiny-ar"})
    assert warm(request_config(m, ServerConfig(), body)) == warm(resolve_config(m, None, cli(drafter="tiny-ar")))
