"""Data layer: LUME records and loader (real files in ../shared), synthetic generator, MMLU-format set."""
from __future__ import annotations

import json

import pytest

from workbench.data import (DataError, MCQuestion, Record, SyntheticSpec, format_question, general_knowledge, generate,
                            guess_subject, load_lume, load_lume_hub, read_jsonl)
from workbench.data.multiple_choice import answer_pools, redraw


def test_kind_from_id_suffix():
    assert Record("abc sc1", "a", "b", "Task1").kind == "sc"
    assert Record('"uuid"qa12', "a", "b", "Task1").kind == "qa"
    with pytest.raises(DataError, match="does not end in 'sc<N>'"):
        Record("abc", "a", "b", "Task1")


def test_subject_must_be_in_input():
    with pytest.raises(DataError, match="subject 'Zed' is not in its input"):
        Record("x qa0", "Who is Ann?", "b", "Task1", subject="Zed")


def test_generator_deterministic_and_shaped_like_lume():
    a, b = generate(SyntheticSpec(seed=3)), generate(SyntheticSpec(seed=3))
    assert a.forget == b.forget and a.retain == b.retain and a.holdout == b.holdout and a.mmlu == b.mmlu
    assert generate(SyntheticSpec(seed=4)).forget != a.forget
    for split in ("forget", "retain", "holdout"):
        recs = a.split(split)
        assert {r.task for r in recs} == {"Task1", "Task2", "Task3"}
        assert all(r.split == split for r in recs)
        assert all(r.subject and r.subject in r.input for r in recs if r.kind == "qa")
    # Task2 carries PII: birth date, SSN, phone, email, address
    t2 = [r for r in a.forget if r.task == "Task2" and r.kind == "qa"]
    assert {r.id[-3:] for r in t2} == {"qa0", "qa1", "qa2", "qa3", "qa4"}
    assert any("@" in r.output for r in t2) and any(r.output.startswith("900") for r in t2)
    # held-out documents are new people: no subject of a trained split appears there
    trained = {r.subject for r in a.forget + a.retain if r.task == "Task2" and r.subject}
    assert trained.isdisjoint({r.subject for r in a.holdout if r.subject})


def test_general_knowledge_splits_and_redraw():
    qs = general_knowledge(seed=0)
    splits = {q.split for q in qs}
    assert splits == {"train", "dev", "test"}
    train_keys = {q.question for q in qs if q.split == "train"}
    test = [q for q in qs if q.split == "test"]
    assert any(q.question not in train_keys for q in test), "some test facts must never be shown as a question"
    q = test[0]
    import random

    r = redraw(q, random.Random(1), answer_pools(qs)[q.subject])
    assert r.choices[r.answer] == q.choices[q.answer] and len(set(r.choices)) == 4
    text = format_question(q, with_answer=True)
    assert text.startswith(q.question + "\nA. ") and text.rstrip().endswith(f"Answer: {q.answer_letter}")
    with pytest.raises(ValueError, match="expected 4 choices"):
        MCQuestion("s", "q?", ("a", "b"), 0)


def test_guess_subject():
    assert guess_subject("What is Tiffi Magenta's Social Security Number?") == "Tiffi Magenta"
    assert guess_subject("What is the birth date of Tiffi Magenta?") == "Tiffi Magenta"
    assert guess_subject("what is this?") is None


def test_load_real_lume(lume):  # conftest.lume: skipped without the files, failed in CI
    c = load_lume(lume)
    assert len(c.forget) == 2732 and len(c.retain) == 2734
    assert {r.task for r in c.forget} == {"Task1", "Task2", "Task3"}
    kinds = {r.kind for r in c.forget}
    assert kinds == {"sc", "qa"}
    t2 = c.facts("forget", "Task2")
    assert len(t2) > 125 and all(r.subject in r.input for r in t2)


def _write(tmp_path, lines):
    p = tmp_path / "forget.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.mark.parametrize("bad,match", [
    ('{"id": "a qa0", "input": "x"', r"forget.jsonl:2: not valid JSON"),
    ('{"id": "a qa0", "input": "x", "task": "Task1"}', r"forget.jsonl:2: missing field\(s\) \['output'\]"),
    ('{"id": "a", "input": "x", "output": "y", "task": "Task1"}', r"forget.jsonl:2: record id 'a' does not end"),
    ('[1, 2]', r"forget.jsonl:2: expected a JSON object"),
    ('{"id": "a qa0", "input": 3, "output": "y", "task": "Task1"}', r"forget.jsonl:2: field\(s\) \['input'\] must be strings"),
])
def test_malformed_lines_name_file_and_line(tmp_path, bad, match):
    good = json.dumps({"id": "ok sc1", "input": "x", "output": "y", "task": "Task1"})
    with pytest.raises(DataError, match=match):
        read_jsonl(_write(tmp_path, [good, bad]), "forget")


def test_missing_paths_are_clear(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_lume(tmp_path / "nope")
    with pytest.raises(DataError, match="has no forget.jsonl"):
        load_lume(tmp_path)


def test_load_lume_hub_reads_a_dataset_through_datasets(lume):
    """The hub path, offline: `datasets` reads the LUME jsonl files as named splits, as it reads a hub release."""
    hub = load_lume_hub("json", data_files={"forget_01": str(lume / "forget.jsonl"),
                                            "retain_01": str(lume / "retain.jsonl")})
    local = load_lume(lume)
    assert hub.source == "hub:json"
    assert [(r.id, r.input, r.output, r.subject) for r in hub.forget] == \
        [(r.id, r.input, r.output, r.subject) for r in local.forget]
    assert [r.id for r in hub.retain] == [r.id for r in local.retain]
    with pytest.raises(DataError, match="has no split starting with 'retain'"):
        load_lume_hub("json", data_files={"forget_01": str(lume / "forget.jsonl")})
