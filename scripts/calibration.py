"""Does one forward of the diffusion model tell a draft's right tokens from its wrong ones?

For every problem of the task, the drafter answers (greedy, its default budget), the answer is
bridged onto each diffusion model's canvas with every draft position visible (what ``init=inject``
with ``rho=1`` builds), and one forward reads the model's probability of each visible draft token
(:mod:`fewstep.evaluation.calibration`). A draft token is right when it equals the reference
solution's token at the same position (the reference encoded by the diffusion tokenizer, padded
with EOS to gen_length, as in training). Per model: counts, AUROC of p(token) for right vs wrong,
mean p on right and wrong tokens, expected calibration error; for all visible draft tokens, for the
answer's own tokens (the EOS filling after a draft that ended left out) and, as a reference, for the
drafter's own probability of the same tokens. The "masked" judge (each draft position masked alone,
one forward per position) is not measured: too costly.

    python scripts/calibration.py --models tiny-dlm tiny-dlm-edit --drafter tiny-ar --task arith \
        --limit 500 --out runs/results/calibration

Writes DIR/calibration.json and DIR/reliability.png and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fewstep.drafting.drafter import load_drafter
from fewstep.evaluation.calibration import draft_canvas, judge, reference_tokens, summarise_scores
from fewstep.models.loading import load_model
from fewstep.tasks.base import get_task

VARIANTS = {  # key in the JSON -> what the table calls it
    "judge": "model p, all visible draft tokens",
    "judge_answer": "model p, answer tokens (no EOS fill)",
    "drafter": "drafter p, all visible draft tokens",
}


def measure(model_name: str, args: argparse.Namespace, examples: list, gen_length: int) -> dict:
    """Draft, bridge and judge every example with ``model_name``: the summaries of each variant."""
    model = load_model(model_name, device=args.device)
    drafter = load_drafter(args.drafter, device=model.device)
    rows: dict[str, tuple[list[float], list[bool]]] = {k: ([], []) for k in VARIANTS}
    drafts_right = answers_right = 0
    task = get_task(args.task)
    t0 = time.perf_counter()
    for i in range(0, len(examples), args.batch_size):
        batch = examples[i: i + args.batch_size]
        prompts = [e.prompt for e in batch]
        canvas = draft_canvas(model, drafter, prompts, gen_length)
        p = judge(model, prompts, canvas.tokens)
        for j, e in enumerate(batch):
            ref = torch.tensor(reference_tokens(model.tokenizer, e.gold_output, gen_length, model.eos_id))
            tok = canvas.tokens[j]
            seen = tok >= 0
            right = (tok == ref) & seen
            drafts_right += bool(right.sum() == seen.sum())
            answers_right += task.score(e, canvas.texts[j]).correct
            answer = seen & (tok != model.eos_id)
            for key, scores, where in (("judge", p[j], seen), ("judge_answer", p[j], answer),
                                       ("drafter", canvas.drafter_probs[j], seen)):
                rows[key][0].extend(scores[where].tolist())
                rows[key][1].extend(right[where].tolist())
    out = {key: summarise_scores(*rows[key], n_bins=args.bins) for key in VARIANTS}
    return {"model": model_name, "problems": len(examples), "seconds": time.perf_counter() - t0,
            "drafts_all_tokens_right": drafts_right, "drafter_answer_accuracy": answers_right / len(examples),
            **out, "masked": "not measured (one forward per draft position)"}


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def markdown(result: dict) -> str:
    lines = [f"{result['task']}, {result['problems']} problems, drafter {result['drafter']}, one forward on the "
             f"drafted canvas (every draft position visible):", "",
             "| model | score | tokens | right | wrong | AUROC | mean p right | mean p wrong | ECE |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in result["models"]:
        for key, what in VARIANTS.items():
            s = m[key]
            lines.append(f"| {m['model']} | {what} | {s['n']} | {s['right']} | {s['wrong']} | "
                         f"{_num(s['auroc'], '.3f')} | {_num(s['mean_p_right'], '.3f')} | "
                         f"{_num(s['mean_p_wrong'], '.3f')} | {s['ece']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Reliability diagram (binned p vs fraction right, one line per model and the drafter's own p)
    and the histogram of p on right and wrong draft tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rel, hist) = plt.subplots(1, 2, figsize=(11, 4.2))
    rel.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="calibrated")
    lines = [(f"{m['model']} (AUROC {_num(m['judge']['auroc'], '.3f')})", m["judge"], "o-") for m in result["models"]]
    first = result["models"][0]["drafter"]
    lines.append((f"drafter {result['drafter']} (AUROC {_num(first['auroc'], '.3f')})", first, "s--"))
    for label, s, fmt in lines:
        used = [b for b in s["bins"] if b["count"]]
        rel.plot([b["mean_p"] for b in used], [b["fraction_right"] for b in used], fmt, label=label, ms=4)
    rel.set_xlabel("p(draft token) (binned)")
    rel.set_ylabel("fraction of draft tokens right")
    rel.set_xlim(0, 1)
    rel.set_ylim(0, 1)
    rel.legend(fontsize=7, loc="upper left")
    rel.grid(alpha=0.3)
    for m in result["models"]:
        edges = [b["lo"] for b in m["judge"]["bins"]] + [1.0]
        for kind, ls in (("right", "-"), ("wrong", "--")):
            counts = [b["count"] * (b["fraction_right"] if kind == "right" else 1 - b["fraction_right"])
                      if b["count"] else 0 for b in m["judge"]["bins"]]
            hist.stairs(counts, edges, ls=ls, label=f"{m['model']}: {kind}")
    hist.set_yscale("log")
    hist.set_xlabel("p(draft token) of the diffusion model")
    hist.set_ylabel("draft tokens")
    hist.legend(fontsize=7)
    hist.grid(alpha=0.3)
    fig.suptitle(f"{result['task']}: judging {result['drafter']}'s drafts in one forward ({result['problems']} "
                 f"problems)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", required=True, help="diffusion models (bundled names or directories)")
    ap.add_argument("--drafter", default="tiny-ar")
    ap.add_argument("--task", default="arith")
    ap.add_argument("--limit", type=int, default=None, help="the first N problems (default: all)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--gen-length", type=int, default=None, help="default: the task's")
    ap.add_argument("--bins", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True, help="directory for calibration.json and reliability.png")
    args = ap.parse_args()
    torch.set_num_threads(1)
    task = get_task(args.task)
    examples = task.examples()[: args.limit]
    gen_length = args.gen_length or task.default_gen_length
    result = {"task": args.task, "drafter": args.drafter, "problems": len(examples), "gen_length": gen_length,
              "models": [measure(m, args, examples, gen_length) for m in args.models]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out / "reliability.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
