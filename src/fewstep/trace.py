"""Seeing how a strategy decodes: the live canvas in a terminal, and trajectory pictures.

A trajectory is the per-position commit step of one decode (``GenerationResult.committed_at``)
together with the final tokens. :func:`write_trace` draws it as a PNG (one cell per position,
coloured by the step at which it was committed) and as a self-contained HTML page. With a warm
start, each position also has an origin (:func:`origins`): a draft token the model confirmed
(``confirmed``, green outline), a position the model revoked and decoded again (``revoked``, red
outline), or one the model decoded from a mask (``model``).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

MASK_GLYPH = "░"


def token_strings(model, ids: Sequence[int]) -> list[str]:
    """One display string per position (mask shown as a shaded block)."""
    out = []
    for t in ids:
        if t == getattr(model, "mask_id", None):
            out.append(MASK_GLYPH)
        elif t == model.eos_id:
            out.append("⏎")
        else:
            out.append(model.tokenizer.decode([t]).strip() or "·")
    return out


def render_canvas(model, ids: Sequence[int]) -> str:
    return " ".join(token_strings(model, ids))


ORIGIN_COLOURS = {"confirmed": "#1a9850", "revoked": "#d73027"}


def origins(injected: Sequence[int], revoked_ever: Sequence[bool], final: Sequence[int]) -> list[str]:
    """Per position: ``confirmed`` (a draft token kept), ``revoked`` (sent back to mask at some step)
    or ``model``. injected: the initial canvas (-1 where masked)."""
    out = []
    for inj, rev, tok in zip(injected, revoked_ever, final):
        out.append("revoked" if rev else "confirmed" if inj >= 0 and inj == tok else "model")
    return out


def write_trace(model, question: str, token_ids: list[int], committed_at: list[int], nfe: int, spec: str,
                out_dir: str | Path, origin: list[str] | None = None) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokens = token_strings(model, token_ids)
    data = {"question": question, "strategy": spec, "nfe": nfe, "tokens": tokens, "token_ids": token_ids,
            "committed_at": committed_at, "origin": origin or ["model"] * len(token_ids)}
    (out / "trace.json").write_text(json.dumps(data, indent=2) + "\n")
    paths = {"json": out / "trace.json", "html": out / "trace.html"}
    (out / "trace.html").write_text(_html(data))
    if _png(data, out / "trace.png"):
        paths["png"] = out / "trace.png"
    return paths


def _colour(step: int, last: int) -> str:
    """Early commits dark blue, late ones yellow (a viridis-like ramp without matplotlib)."""
    stops = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]
    x = 0.0 if last <= 0 else max(0, step) / last
    i = min(int(x * (len(stops) - 1)), len(stops) - 2)
    f = x * (len(stops) - 1) - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(stops[i], stops[i + 1]))
    return f"rgb({r},{g},{b})"


def _html(d: dict) -> str:
    last = max(d["committed_at"]) if d["committed_at"] else 0
    cells = []
    for i, (tok, step, org) in enumerate(zip(d["tokens"], d["committed_at"], d["origin"])):
        fg = "#000" if step > last / 2 else "#fff"
        edge = f";outline:3px solid {ORIGIN_COLOURS[org]}" if org in ORIGIN_COLOURS else ""
        cells.append(f'<span class="t" style="background:{_colour(step, last)};color:{fg}{edge}" '
                     f'title="position {i}, committed at step {step}, {org}">'
                     f'{html.escape(tok)}<sub>{step}</sub></span>')
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>fewstep trace</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:60em}}
.t{{display:inline-block;margin:2px;padding:4px 6px;border-radius:4px;font-family:monospace}}
sub{{font-size:60%;opacity:.8;margin-left:2px}}</style></head>
<body><h2>How <code>{html.escape(d['strategy'])}</code> decoded</h2>
<p><b>Prompt:</b> {html.escape(d['question'])}</p>
<p>{d['nfe']} forward passes, {len(d['tokens'])} positions. Each token shows the step at which it was committed
(dark: early, yellow: late); a green outline marks a draft token the model confirmed, a red one a
position it revoked and decoded again; hover for details.</p>
<div>{''.join(cells)}</div></body></html>
"""


def _png(d: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps, tokens = d["committed_at"], d["tokens"]
    last = max(steps) if steps else 0
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(tokens)), 2.8))
    edges = [ORIGIN_COLOURS.get(o, "none") for o in d["origin"]]
    ax.scatter(range(len(steps)), steps, c=steps, cmap="viridis", s=60, zorder=3, edgecolors=edges, linewidths=2)
    for i, (tok, s) in enumerate(zip(tokens, steps)):
        ax.annotate(tok, (i, s), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax.set_xlabel("position in the generation")
    ax.set_ylabel("step committed")
    ax.set_ylim(-0.8, last + 1.5)
    ax.grid(alpha=0.3, zorder=0)
    ax.set_title(f"{d['strategy']}: {d['nfe']} forward passes", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
