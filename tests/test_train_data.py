"""Training data: the paper pipeline's prompt, label masking, EOS, truncation, GSM8K conversion, early errors."""

from __future__ import annotations

import json

import pytest

from abba.data import (IGNORE_INDEX, DataError, build_train_dataset, check_data_source, format_prompt,
                       gsm8k_to_metamath, tokenize_example)


def test_prompt_is_the_alpaca_template_written_out_by_hand():
    expected = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                "the request.\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:\n")
    assert format_prompt("Add 2 and 3.") == expected
    with_input = format_prompt("Translate.", "Hallo")
    assert with_input.startswith("Below is an instruction that describes a task, paired with an input that provides")
    assert with_input.endswith("### Instruction:\nTranslate.\n\n### Input:\nHallo\n\n### Response:\n")


def test_official_indent_indents_every_line_after_the_first_by_12_spaces():
    lines = format_prompt("Q?", official_indent=True).split("\n")
    assert not lines[0].startswith(" ")
    assert all(line.startswith(" " * 12) for line in lines[1:])
    assert [line.strip() for line in lines] == [line.strip() for line in format_prompt("Q?").split("\n")]


def test_gsm8k_record_becomes_a_metamathqa_style_response():
    record = gsm8k_to_metamath("How many?", "Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72")
    assert record == {"instruction": "How many?", "input": "", "output": "Natalia sold 48/2 = 24 clips.\nThe answer is: 72"}
    with pytest.raises(DataError, match="####"):
        gsm8k_to_metamath("q", "no final answer")


def test_labels_mask_the_prompt_and_learn_the_response_and_eos(tokenizer):
    record = {"instruction": "What is 6 times 7?", "input": "", "output": "The answer is: 42"}
    out = tokenize_example(record, tokenizer, max_length=512)
    prompt_ids = tokenizer(format_prompt(record["instruction"]))["input_ids"]
    ids, labels = out["input_ids"], out["labels"]
    assert ids[: len(prompt_ids)] == prompt_ids
    assert labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert labels[len(prompt_ids):] == ids[len(prompt_ids):]
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[len(prompt_ids):-1]).strip() == record["output"]
    assert not out["truncated"] and out["attention_mask"] == [1] * len(ids)


def test_truncation_cuts_at_max_length_without_eos_and_is_counted(tokenizer, tmp_path):
    record = {"instruction": "Say something long.", "input": "", "output": "word " * 200}
    prompt_len = len(tokenizer(format_prompt(record["instruction"]))["input_ids"])
    out = tokenize_example(record, tokenizer, max_length=prompt_len + 10)
    assert len(out["input_ids"]) == prompt_len + 10 and out["truncated"]
    assert out["input_ids"][-1] != tokenizer.eos_token_id
    path = tmp_path / "tiny.json"
    short = {"instruction": "Hi", "input": "", "output": "ok", "answer": "ok"}
    path.write_text(json.dumps([record, short, record]))
    cfg = {"name": "t", "format": "commonsense", "path": str(path), "max_length": prompt_len + 10, "num_proc": 1}
    dataset, n_truncated = build_train_dataset(cfg, tokenizer)
    assert n_truncated == 2 and len(dataset) == 3


def test_real_commonsense_and_gsm8k_files_load(excerpt_data, tokenizer):
    gsm = {"name": "g", "format": "gsm8k", "path": str(excerpt_data / "math_train/gsm8k_train.jsonl"),
           "subset_size": 5, "subset_mode": "first", "max_length": 512, "num_proc": 1}
    dataset, _ = build_train_dataset(gsm, tokenizer)
    first = json.loads((excerpt_data / "math_train/gsm8k_train.jsonl").read_text().splitlines()[0])
    answer = first["answer"].rsplit("####", 1)[1].strip()
    text = tokenizer.decode([t for t in dataset[0]["labels"] if t != IGNORE_INDEX])
    assert len(dataset) == 5 and text.removesuffix("</s>").endswith(f"The answer is: {answer}")
    boolq = {"name": "b", "format": "commonsense", "path": [str(excerpt_data / "commonsense_train/boolq/train.json")],
             "subset_size": 4, "subset_mode": "random", "subset_seed": 0, "max_length": 256, "num_proc": 1}
    dataset, _ = build_train_dataset(boolq, tokenizer)
    text = tokenizer.decode([t for t in dataset[0]["labels"] if t != IGNORE_INDEX])
    assert len(dataset) == 4 and text.startswith("the correct answer is ")


def test_missing_file_and_unknown_format_fail_with_one_line_naming_them(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(DataError) as err:
        check_data_source({"name": "c", "format": "commonsense", "path": str(missing)})
    assert str(missing) in str(err.value) and "commonsense_170k.json" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="unknown dataset format 'alpaca'"):
        check_data_source({"name": "c", "format": "alpaca", "path": str(missing)})
