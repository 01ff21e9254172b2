"""Trace pictures and the terminal canvas, from a hand-made trajectory (no model, no decode)."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from fewstep.trace import MASK_GLYPH, render_canvas, write_trace

WORDS = {10: "7", 11: "+", 12: "5", 13: "=", 14: "12", 15: "a<b", 16: " "}
MASK, EOS = 1, 2


class WordTokenizer:
    def decode(self, ids: list[int]) -> str:
        return " ".join(WORDS[i] for i in ids)


MODEL = SimpleNamespace(tokenizer=WordTokenizer(), mask_id=MASK, eos_id=EOS)

# viridis-like ramp of trace._colour at 0, 1/2 and 1 of the last step
DARK, MIDDLE, YELLOW = "rgb(68,1,84)", "rgb(33,145,140)", "rgb(253,231,37)"


def test_render_canvas_shows_masks_eos_and_blank_tokens():
    assert render_canvas(MODEL, [10, 11, MASK, 16, EOS]) == f"7 + {MASK_GLYPH} · ⏎"


def test_write_trace_html_and_json(tmp_path):
    ids = [10, 11, 12, 13, 14, 15, EOS]
    steps = [0, 2, 0, 2, 1, 2, 0]
    paths = write_trace(MODEL, "Mia has 7 pens .", ids, steps, 3, "threshold", tmp_path / "t")
    assert set(paths) >= {"json", "html"} and all(p.is_file() for p in paths.values())

    data = json.loads(paths["json"].read_text())
    assert data["tokens"] == ["7", "+", "5", "=", "12", "a<b", "⏎"]
    assert data["committed_at"] == steps and data["token_ids"] == ids and data["nfe"] == 3

    page = paths["html"].read_text()
    cells = re.findall(r'background:(rgb\([\d,]+\));color:(#\w+)" title="position (\d+), committed at step (\d+), '
                       r'model">(.*?)<sub>(\d+)</sub>', page)
    assert cells == [
        (DARK, "#fff", "0", "0", "7", "0"),
        (YELLOW, "#000", "1", "2", "+", "2"),
        (DARK, "#fff", "2", "0", "5", "0"),
        (YELLOW, "#000", "3", "2", "=", "2"),
        (MIDDLE, "#fff", "4", "1", "12", "1"),
        (YELLOW, "#000", "5", "2", "a&lt;b", "2"),  # token text is escaped
        (DARK, "#fff", "6", "0", "⏎", "0"),
    ]
    assert "<code>threshold</code>" in page and "Mia has 7 pens ." in page and "3 forward passes, 7 positions" in page


def test_write_trace_png_has_a_point_per_commit_step(tmp_path):
    pytest.importorskip("matplotlib")
    image_module = pytest.importorskip("PIL.Image")
    paths = write_trace(MODEL, "q", [10, 11, 12, 13], [0, 3, 3, 1], 4, "llada", tmp_path)
    with image_module.open(paths["png"]) as img:
        assert img.format == "PNG" and img.size == (660, 308)  # 6 x 2.8 inches at 110 dpi
        colours = {c for _, c in img.convert("RGB").getcolors(maxcolors=1 << 20)}
    assert (68, 1, 84) in colours and (253, 231, 37) in colours  # viridis ends: the first and the last step


def test_warm_start_origins_are_outlined(tmp_path):
    from fewstep.trace import origins

    org = origins([10, 20, -1, 13], [False, True, False, False], [10, 11, 12, 13])
    assert org == ["confirmed", "revoked", "model", "confirmed"]
    page = write_trace(MODEL, "q", [10, 11, 12, 13], [0, 1, 0, 0], 2, "threshold", tmp_path, org)["html"].read_text()
    assert page.count("outline:3px solid #1a9850") == 2 and page.count("outline:3px solid #d73027") == 1
