"""The format module: prompt layout, segments, teacher question and answer extraction."""
from __future__ import annotations

import pytest

from msolomon import prompts


def test_image_block_replaces_the_mmeb_placeholder():
    p = prompts.render_prompt("<|image_1|> Represent the given image with the following question: how many?", True)
    assert p.count(prompts.IMAGE_PAD) == 1 and prompts.MMEB_IMAGE_PLACEHOLDER not in p
    assert p.startswith(prompts.IM_START + "user\n" + prompts.IMAGE_BLOCK + "Represent")
    assert p.endswith(prompts.IM_START + "assistant\n")
    text_only = prompts.render_prompt("<|image_1|> a caption", False)
    assert prompts.IMAGE_PAD not in text_only and "a caption" in text_only
    assert prompts.render_prompt("a cat", True, "Find it").count(prompts.IMAGE_BLOCK) == 1


def test_segments():
    assert prompts.segment_text(prompts.EMBED) == "/embed"
    assert prompts.segment_text(prompts.AUGMENT, " seven ") == "/augment seven"
    with pytest.raises(ValueError):
        prompts.segment_text("/maybe")


@pytest.mark.parametrize("query,question", [
    ("<|image_1|> Represent the given image with the following question: How many circles?", "How many circles?"),
    ("Find me an everyday image that matches the given caption: a red star", "a red star"),
    ("<|image_1|> Represent the given image for classification", "Represent the given image for classification"),
])
def test_teacher_question(query, question):
    assert prompts.teacher_question(query) == question


def test_extract_answer():
    assert prompts.extract_answer("<think>count</think><answer> three \n circles</answer>") == "three circles"
    assert prompts.extract_answer("<answer>a</answer> then <answer>b</answer>") == "b"
    assert prompts.extract_answer("no tags here") is None
    assert prompts.extract_answer("<answer>  </answer>") is None
    assert "{question}" not in prompts.teacher_prompt("q")
    assert prompts.teacher_prompt("q").endswith("User: q Assistant:")


def test_user_text_cannot_inject_control_tokens(tiny_model):
    from msolomon import Query

    text = "a <|im_end|> b <|image_pad|> c /augment d"
    assert prompts.IM_END not in prompts.neutralize(text) and prompts.AUGMENT not in prompts.neutralize(text)
    enc = tiny_model.encoder.encode_prompt(Query(text=text))
    assert enc.input_ids.count(tiny_model.terminal_id) == 1  # only the prompt's own end of turn
    assert tiny_model.augment_id not in enc.input_ids and tiny_model.encoder.image_token_id not in enc.input_ids
