"""Helpers the benchmark tasks share: locating the local dataset files, reading answers out of model
output (``#### N``, ``\\boxed{...}``, "The answer is ...", numbers, LaTeX values through math-verify),
and extracting code from it."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path

from fewstep.errors import TaskError

DATASETS_ENV = "FEWSTEP_DATASETS"
MATH_VERIFY_TIMEOUT_S = 5
_ROOT_MARKERS = ("pyproject.toml", ".git")

# --- dataset files ------------------------------------------------------------------------------------


def repo_root() -> Path:
    """The repository this package lives in: the nearest parent with a pyproject.toml or .git."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if any((parent / marker).exists() for marker in _ROOT_MARKERS):
            return parent
    return here.parents[3]  # src/fewstep/tasks/extract.py -> the checkout


def datasets_dir() -> Path:
    """Where the local benchmark files are: $FEWSTEP_DATASETS, else ``<repo root>/../shared/datasets``."""
    env = os.environ.get(DATASETS_ENV)
    if env:
        return Path(env)
    return (repo_root().parent / "shared" / "datasets").resolve()


def dataset_file(name: str) -> Path:
    """The path of a local dataset file; TaskError (saying to pass --data) when it is not there."""
    path = datasets_dir() / name
    if not path.is_file():
        raise TaskError(
            f"dataset file {name} not found in {path.parent}; pass --data PATH (JSONL) "
            f"or set {DATASETS_ENV} to the folder that holds it"
        )
    return path


# Where the same data lives on the Hugging Face hub: file -> (dataset name, config, split).
HUB_NAMES: dict[str, tuple[str, str | None, str]] = {
    "gsm8k_test.jsonl": ("openai/gsm8k", "main", "test"),
    "gsm8k_train.jsonl": ("openai/gsm8k", "main", "train"),
    "math500_test.jsonl": ("HuggingFaceH4/MATH-500", None, "test"),
    "mbpp.jsonl": ("google-research-datasets/mbpp", "full", "test"),
}


def load_rows(data: str | None, name: str, required: tuple[str, ...],
              kinds: Mapping[str, str | tuple[str, ...]] | None = None) -> list[dict]:
    """Task rows from ``--data`` if given, else the local copy of ``name``, else (on a machine that
    reaches the hub, with the ``datasets`` package) the usual hub dataset; TaskError otherwise.
    ``kinds``: the fields whose JSON type is checked wherever the rows come from
    (:func:`fewstep.tasks.jsonl.check_fields`)."""
    from fewstep.tasks.jsonl import check_fields, read_jsonl

    if data is not None:
        return read_jsonl(data, required=required, kinds=kinds)
    try:
        return read_jsonl(dataset_file(name), required=required, kinds=kinds)
    except TaskError as local_error:
        if name not in HUB_NAMES:
            raise
        rows = _hub_rows(*HUB_NAMES[name])
        if rows is None:
            raise local_error from None
        missing = [k for k in required if rows and k not in rows[0]]
        if missing:
            raise TaskError(f"hub dataset {HUB_NAMES[name][0]} lacks field(s) {', '.join(missing)}") from None
        check_fields(rows, kinds or {}, f"hub dataset {HUB_NAMES[name][0]}")
        return rows


def _hub_rows(hub: str, config: str | None, split: str) -> list[dict] | None:
    """The rows of a hub dataset split, or None when the datasets package or the hub is out of reach."""
    try:
        import datasets
    except ImportError:
        return None
    try:
        return [dict(r) for r in datasets.load_dataset(hub, config, split=split)]
    except Exception:  # offline, unknown dataset, hub error: fall back to the local-file message
        return None


# --- answers in text ----------------------------------------------------------------------------------

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_BARE = re.compile(r"\\boxed\s+([^\s$]+)")
_LEADING_FRACTION = re.compile(r"\s*([-\u2212]?\d+)\s*/\s*(\d+)(?![\d.])")  # "3/4 of a pie"
_ANSWER_IS = re.compile(r"the (?:final )?answer is\s*:?", re.IGNORECASE)
_NUMBER = re.compile(
    r"(?<![\d.])(?:(?P<sign>[-\u2212])\s*)?(?:\\?\$\s*)?(?P<sign2>[-\u2212])?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
)


def after_marker(text: str, marker: str) -> str | None:
    """The rest of the line after the last occurrence of ``marker``, or None if it does not occur."""
    at = text.rfind(marker)
    if at < 0:
        return None
    return text[at + len(marker) :].split("\n", 1)[0].strip()


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; None if there is none.

    An unclosed box counts as absent. ``\\boxed 5`` (no braces) is read too.
    """
    for match in reversed(list(_BOXED.finditer(text))):
        content = _balanced(text, match.end())
        if content is not None:
            return content.strip()
    bare = list(_BOXED_BARE.finditer(text))
    return bare[-1].group(1) if bare else None


def _balanced(text: str, start: int) -> str | None:
    """The text from ``start`` up to the brace that closes the one just before it; None if unclosed."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{" and text[i - 1] != "\\":
            depth += 1
        elif text[i] == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def answer_is(text: str) -> str | None:
    """What follows the last "The answer is" (to the end of its line), trailing full stop and $ removed."""
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :].split("\n", 1)[0].strip()
    return rest.rstrip(".").strip().strip("$").strip()


def find_numbers(text: str) -> list[Fraction]:
    """Every number written in the text, in order: commas, ``$``, signs and decimals understood."""
    numbers = []
    for match in _NUMBER.finditer(text):
        value = _to_fraction(match.group("num").replace(",", ""))
        if value is None:
            continue
        negative = bool(match.group("sign") or match.group("sign2"))
        numbers.append(-value if negative else value)
    return numbers


def first_number(text: str) -> Fraction | None:
    """The first number in the text, or None."""
    numbers = find_numbers(text)
    return numbers[0] if numbers else None


def last_number(text: str) -> Fraction | None:
    """The last number in the text, or None."""
    numbers = find_numbers(text)
    return numbers[-1] if numbers else None


def parse_number(text: str) -> Fraction | None:
    """A whole string read as one number (``"1,234"``, ``"$5.50"``, ``"-3."``, ``"12%"``); None if it is not one."""
    cleaned = text.strip().replace(",", "").replace("\\$", "").replace("$", "").replace("\u2212", "-")
    cleaned = cleaned.rstrip(".%").strip()
    return _to_fraction(cleaned)


def answer_value(text: str) -> Fraction | None:
    """The number a short answer states: a plain number (``1,234``, ``$5.50``, ``-3``, ``12%``), else,
    when it is written in LaTeX or as a fraction, the value math-verify gives it (``\\frac{1}{2}``,
    ``-\\dfrac{3}{4}``, ``1{,}234``, ``18 \\text{ cm}^2``, ``2^{3}``), else a leading ``a/b`` (``3/4 of
    a pie``), else the first number written in it. A percent sign is dropped (``10\\%`` is 10, as
    GSM8K writes its answers)."""
    value = parse_number(text)
    if value is not None:
        return value
    if any(ch in text for ch in "\\/^{"):
        value = latex_value(text.replace("\\%", "").replace("%", "").strip().rstrip("."))
        if value is not None:
            return value
    fraction = _LEADING_FRACTION.match(text)
    if fraction and int(fraction.group(2)):
        return Fraction(int(fraction.group(1).replace("\u2212", "-")), int(fraction.group(2)))
    return first_number(text)


def latex_value(text: str) -> Fraction | None:
    """The exact rational value of a LaTeX expression (math-verify parses it); None when it has
    none (a symbol, a set, an irrational number) or when math-verify is not installed."""
    parsed = math_verify_parse(f"${text}$")
    expr = parsed[0] if parsed else None
    if expr is None or not getattr(expr, "is_number", False):
        return None
    value = expr.doit()
    if getattr(value, "is_Rational", False):
        return Fraction(int(value.p), int(value.q))
    if getattr(value, "is_Float", False):
        return _to_fraction(str(value))
    return None


def math_verify_timeout() -> int | None:
    """math-verify's timeout in seconds: it enforces timeouts with SIGALRM, which only the main
    thread may use, so other threads run without one."""
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def math_verify_parse(text: str, required: bool = False) -> list:
    """``math_verify.parse(text)`` ([sympy expression, string] or []); [] without math-verify unless
    ``required`` (then TaskError saying how to install it)."""
    try:
        from math_verify import parse
    except ImportError:
        if required:
            raise TaskError("this task's scoring needs math-verify: pip install 'math-verify[antlr4_13_2]'") from None
        return []
    return list(parse(text, parsing_timeout=math_verify_timeout()))


def _to_fraction(text: str) -> Fraction | None:
    """Exact value of a decimal literal, or None."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return Fraction(value) if value.is_finite() else None


def format_number(value: Fraction) -> str:
    """A number as plain text: ``18``, ``-3``, ``0.25`` (fractions that are not decimals as ``a/b``)."""
    if value.denominator == 1:
        return str(value.numerator)
    decimal = Decimal(value.numerator) / Decimal(value.denominator)
    if Fraction(decimal) == value:
        return format(decimal.normalize(), "f")
    return f"{value.numerator}/{value.denominator}"


# --- code in text -------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_BEGIN_DONE = re.compile(r"\[BEGIN\]\s*\n?(.*?)(?:\[DONE\]|\Z)", re.DOTALL)
_CODE_LANGUAGES = ("", "python", "py", "python3")


def extract_code(text: str) -> str:
    """The program in a model's output: the first fenced Python (or unlabelled) block, else the text
    between ``[BEGIN]`` and ``[DONE]``, else the whole text up to any ``[DONE]``. Unclosed fences and
    ``[BEGIN]`` blocks run to the end of the text."""
    for match in _FENCE.finditer(text):
        if match.group(1).lower() in _CODE_LANGUAGES:
            return match.group(2).rstrip() + "\n"
    begin = _BEGIN_DONE.search(text)
    if begin:
        return begin.group(1).rstrip() + "\n"
    return text.split("[DONE]", 1)[0].rstrip() + "\n"
