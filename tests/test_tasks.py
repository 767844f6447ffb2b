"""Prompt sources and user prompt files, including the bad files."""
import json

import pandas as pd
import pytest

from workbench.errors import InputDataError
from workbench.tasks import get_task
from workbench.tasks.corpus import passages
from workbench.tasks.instructions import load_seeds


def test_arithmetic_exact_and_seeded():
    a = get_task("arithmetic", n=200, digits=3, operators="+-*/", seed=7)
    assert a.equals(get_task("arithmetic", n=200, digits=3, operators="+-*/", seed=7))
    assert not a["prompt"].equals(get_task("arithmetic", n=200, digits=3, operators="+-*/", seed=8)["prompt"])
    for row in a.itertuples():
        expected = {"+": row.operand_a + row.operand_b, "-": row.operand_a - row.operand_b,
                    "*": row.operand_a * row.operand_b, "/": row.operand_a / row.operand_b}[row.operator]
        assert int(row.reference) == expected
        assert f"{row.operand_a} {row.operator} {row.operand_b}" in row.prompt
    assert set(a["operator"]) == set("+-*/")
    assert a["operand_b"].between(100, 999).all()


@pytest.mark.parametrize("kwargs", [dict(n=0), dict(digits=0), dict(operators="^")])
def test_arithmetic_bad_params(kwargs):
    with pytest.raises(InputDataError):
        get_task("arithmetic", **kwargs)


def test_instruction_seeds():
    seeds = load_seeds()
    assert len(seeds) >= 100 and seeds["instruction"].is_unique and seeds["id"].is_unique
    assert seeds["category"].nunique() >= 10
    answer = get_task("instructions", n=250)
    assert len(answer) == 250 and answer["prompt_id"].is_unique and answer["reference"].notna().all()
    new = get_task("instructions", n=5, mode="new_task", k_examples=3)
    assert all(p.count("\n1. ") == 1 and "\n3. " in p for p in new["prompt"])


def test_corpus_default_is_real_text_and_split_is_disjoint():
    train = get_task("corpus", n=None)
    held = get_task("corpus", n=None, split="heldout")
    assert len(train) > 800 and len(held) >= 200  # issue 15: at least 200 held-out passages
    assert not set(train["prompt_id"]) & set(held["prompt_id"])
    assert not set(train["prompt"]) & set(held["prompt"])
    # both built-in sources contribute, and the held-out split of each is a subset of the combined one's
    pydoc = get_task("corpus", n=None, split="heldout", source="pydoc")
    docstrings = get_task("corpus", n=None, split="heldout", source="docstrings")
    assert len(pydoc) > 30 and len(docstrings) > 150
    assert set(pydoc["prompt_id"]) | set(docstrings["prompt_id"]) == set(held["prompt_id"])
    assert (train["prompt"].str.split().str.len() == 32).all()
    assert (train["chat"] == False).all()  # noqa: E712 - raw continuation
    assert train["prompt"].str.contains("object|function|statement|class", regex=True).mean() > 0.3


def test_corpus_held_out_request_larger_than_the_split_is_an_error_with_counts(tmp_path):
    (tmp_path / "c.txt").write_text("\n\n".join(" ".join(f"w{i}_{j}" for j in range(50)) for i in range(30)))
    available = len(get_task("corpus", source=tmp_path / "c.txt", split="heldout", n=None))
    with pytest.raises(InputDataError, match=rf"held-out split has {available} passages.*fewer than the 500 asked") as info:
        get_task("corpus", source=tmp_path / "c.txt", split="heldout", n=500)
    assert f"at most {available}" in info.value.fix


def test_corpus_from_files(tmp_path):
    text = "\n\n".join(" ".join(f"w{i}_{j}" for j in range(60)) for i in range(5))
    (tmp_path / "c.txt").write_text(text)
    assert len(get_task("corpus", source=tmp_path / "c.txt", split="all", n=None)) == 5
    pd.DataFrame({"text": text.split("\n\n")}).to_parquet(tmp_path / "c.parquet")
    assert len(get_task("corpus", source=tmp_path / "c.parquet", split="all", n=3)) == 3
    import datasets

    datasets.Dataset.from_dict({"text": text.split("\n\n")}).save_to_disk(str(tmp_path / "ds"))
    assert len(get_task("corpus", source=tmp_path / "ds", split="all", n=None)) == 5
    pd.DataFrame({"body": ["x"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputDataError, match="no 'text' column"):
        get_task("corpus", source=tmp_path / "bad.csv")


def test_passages_skip_code_blocks():
    prose = " ".join(["word"] * 50)
    assert passages([prose + "\n\n   code = 1\n   more = 2 " + prose]) == [prose]


def test_prompt_files_all_formats(tmp_path):
    rows = [{"prompt": "a?", "reference": "1"}, {"prompt": "b?", "reference": "2"}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pd.DataFrame(rows).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "p.parquet")
    frames = [get_task(str(tmp_path / f"p.{ext}")) for ext in ("jsonl", "csv", "parquet")]
    for frame in frames:
        assert list(frame["prompt"]) == ["a?", "b?"] and frame["prompt_id"].is_unique
    assert list(frames[0]["prompt_id"]) == list(frames[1]["prompt_id"])  # content-addressed


def test_prompt_files_drop_missing_and_empty_prompts_with_a_count(tmp_path):
    # a JSON null prompt used to reach the hashing of prompt ids and fail there with an AttributeError
    rows = [{"prompt": "a?"}, {"prompt": None}, {"prompt": "b?"}]
    (tmp_path / "nulls.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "blanks.csv").write_text("prompt,reference\na?,1\n,2\nb?,3\n")
    pd.DataFrame({"prompt": ["a?", None, "b?"]}).to_parquet(tmp_path / "nulls.parquet")
    frames = []
    for name, missing in [("nulls.jsonl", 1), ("blanks.csv", 0), ("nulls.parquet", 1)]:
        with pytest.warns(UserWarning, match=rf"Dropped 1 of 3 row\(s\) .*{name}.*\({missing} missing\)"):
            frames.append(get_task(str(tmp_path / name)))
    for frame in frames:
        assert list(frame["prompt"]) == ["a?", "b?"] and list(frame["prompt_id"]) == list(frames[0]["prompt_id"])
    (tmp_path / "all_null.jsonl").write_text('{"prompt": null}\n{"prompt": null}\n')
    with pytest.raises(InputDataError, match="Every prompt .* is empty or missing"):
        get_task(str(tmp_path / "all_null.jsonl"))


@pytest.mark.parametrize("name, content, needle", [
    ("noprompt.jsonl", b'{"text": "hi"}\n', "no 'prompt' column"),
    ("empty.jsonl", b"", "is empty"),
    ("blank.csv", b"\n\n  \n", "is empty"),
    ("latin1.csv", "prompt\ncaf\u00e9\n".encode("latin-1"), "not valid UTF-8"),
    ("broken.jsonl", b'{"prompt": "a"\n', "could not be parsed"),
    ("empties.csv", b"prompt\n\"\"\n\"  \"\n", "Every prompt"),
    ("p.xlsx", b"x", "unsupported extension"),
])
def test_bad_prompt_files(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputDataError, match=needle) as info:
        get_task("file", path=path)
    assert "Fix:" in str(info.value)
    assert path.read_bytes() == content  # nothing the user wrote is touched


def test_unknown_task():
    with pytest.raises(InputDataError, match="Unknown task"):
        get_task("poetry")


def test_corpus_prompt_ids_are_unique_over_the_whole_corpus():
    # the reference manual repeats paragraphs across topics; a repeat used to give two prompts one id
    for split in ("train", "heldout", "all"):
        prompts = get_task("corpus", n=None, split=split)
        assert prompts["prompt_id"].is_unique and prompts["prompt"].is_unique
