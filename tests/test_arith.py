import random

import pytest

from fewstep.tasks import arith
from fewstep.tasks.base import get_task
from fewstep.training import tokenizers
from fewstep.training.data import encode, problems_for_step


def test_generator_is_deterministic():
    r1, r2 = random.Random(11), random.Random(11)
    assert [arith.make_problem(r1) for _ in range(50)] == [arith.make_problem(r2) for _ in range(50)]
    assert arith.make_problem(random.Random(11)) != arith.make_problem(random.Random(12))


def test_test_set_is_fixed_large_and_distinct():
    ts = arith.test_set()
    assert len(ts) == arith.TEST_SIZE == 1000
    assert len({p.question for p in ts}) == len(ts)
    assert arith.test_set.__wrapped__() == ts  # built again from the seed, not the cached tuple
    assert arith.test_set.__wrapped__(seed=arith.TEST_SEED + 1)[:10] != ts[:10]
    assert {p.steps for p in ts} == {1, 2, 3}


def test_solutions_are_consistent():
    """Every equation is true, each step starts from the previous result, and #### holds the answer."""
    for p in arith.test_set()[:300]:
        equations = p.solution.split(" #### ")[0].split(" . ")
        assert len(equations) == p.steps
        prev = None
        for eq in equations:
            a, op, b, _, c = eq.rstrip(" .").split()
            a, b, c = int(a), int(b), int(c)
            assert {"+": a + b, "-": a - b, "x": a * b, "/": a / b}[op] == c
            assert 1 <= c <= arith.MAX_VALUE
            assert prev is None or a == prev
            prev = c
        assert arith.extract_answer(p.solution) == p.answer == prev


def test_training_never_sees_test_questions():
    test_q = {p.question for p in arith.test_set()}
    seen = [p.question for step in range(40) for p in problems_for_step(0, step, 64)]
    assert not test_q.intersection(seen)
    with pytest.raises(ValueError):
        next(arith.train_problems(arith.TEST_SEED))


def test_training_stream_overlaps_test_distribution():
    """The filter is what keeps them apart: unfiltered draws do hit test questions sometimes,
    so the separation test above is not vacuous."""
    rng = random.Random(0)
    test_q = {p.question for p in arith.test_set()}
    short = {q for q in test_q if q.count(".") == 2}  # one-step problems are the likely collisions
    drawn = {arith.make_problem(rng).question for _ in range(20_000)}  # 6 hits with this seed
    assert drawn & short


@pytest.mark.parametrize(
    "text,expected",
    [
        ("7 + 5 = 12 . #### 12", 12),
        ("#### 3 then #### 4", 4),
        ("####7", 7),
        ("#### -2", -2),
        ("7 + 5 = 12 .", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert arith.extract_answer(text) == expected


def test_task_scoring():
    task = get_task("arith")
    ex = task.examples()[0]
    assert task.score(ex, ex.gold_output).correct
    assert not task.score(ex, ex.gold_output.replace(f"#### {ex.reference}", f"#### {ex.reference + 1}")).correct
    assert not task.score(ex, "").correct


def test_word_tokenizer_covers_the_task():
    tok = tokenizers.word_level(arith.vocabulary())
    batch = encode(tok, list(arith.test_set()), gen_length=24)
    assert not (batch.input_ids == tok.unk_token_id).any()
    answers = batch.input_ids[batch.answer_mask].view(len(arith.test_set()), 24)
    assert (answers[:, -1] == tok.eos_token_id).all()  # every answer fits with room for EOS


VAL_SHA256 = "1854c7d1193659a3ecce58f9f7a39b4ca050c66b0b18b7a1575e5024b5b7fabc"


def test_validation_set_is_disjoint_from_test_and_stable():
    """Settings are chosen on arith-val: it must never hold a test question, and it must not move."""
    import hashlib

    val, test = arith.val_set(), arith.test_set()
    assert len(val) == len(test) == arith.TEST_SIZE
    assert len({p.question for p in val}) == len(val)
    assert not {p.question for p in val} & {p.question for p in test}
    assert arith.val_set.__wrapped__() == val  # built again from the seed, not the cached tuple
    assert {p.steps for p in val} == {1, 2, 3}
    digest = hashlib.sha256("\n".join(f"{p.question}|{p.solution}" for p in val).encode()).hexdigest()
    assert digest == VAL_SHA256, "the validation set changed: results chosen on it no longer apply"
    with pytest.raises(ValueError):
        arith.val_set(seed=arith.TEST_SEED)


def test_validation_task():
    task = get_task("arith-val")
    assert task.name == "arith-val" and task.default_gen_length == get_task("arith").default_gen_length
    examples = task.examples()
    assert [e.prompt for e in examples] == [p.question for p in arith.val_set()]
    assert all(task.score(e, e.gold_output).correct for e in examples[:50])
    assert examples[0].prompt != get_task("arith").examples()[0].prompt
