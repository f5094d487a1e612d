"""Grader templates: {{item.*}} and {{sample.*}} parse, name the item fields they need, and render."""

from __future__ import annotations

import pytest

from graders.templates import MissingVariable, TemplateSyntaxError, parse


def test_references_and_rendering() -> None:
    template = parse("Answer: {{ sample.output_text }} / expected {{item.answer}} ({{item.meta.tags[1]}})")
    assert [r.text for r in template.references] == ["sample.output_text", "item.answer", "item.meta.tags[1]"]
    assert [r.item_field for r in template.references] == [None, "answer", "meta"]
    rendered = template.render({"sample": {"output_text": "42"},
                                "item": {"answer": "42", "meta": {"tags": ["a", "b"]}}})
    assert rendered == "Answer: 42 / expected 42 (b)"


def test_values_that_are_not_strings_are_inserted_as_json() -> None:
    template = parse("{{item.numbers}} {{item.flag}} {{sample.output_json.city}}")
    assert template.render({"item": {"numbers": [1, 2], "flag": True},
                            "sample": {"output_json": {"city": "Paris"}}}) == "[1,2] true Paris"


@pytest.mark.parametrize("text, position, words", [
    ("{{item.answer}", 0, "never closed"),
    ("a }} b", 2, "closes no"),
    ("x {{answer}}", 2, "unknown namespace"),
    ("{{item..answer}}", 0, "not a variable path"),
    ("{{ item.answer + 1 }}", 0, "not a variable path"),
    ("{{sample.text}}", 0, "the sample has"),
    ("{{sample.output_text.x}}", 0, "output_text is a string"),
])
def test_templates_that_do_not_parse_say_where(text: str, position: int, words: str) -> None:
    with pytest.raises(TemplateSyntaxError, match=words) as caught:
        parse(text)
    assert caught.value.position == position


@pytest.mark.parametrize("namespaces", [
    {"item": {}, "sample": {}},
    {"item": {"answer": None}, "sample": {}},
    {"item": {"other": 1}, "sample": {}},
])
def test_a_missing_value_is_reported_by_its_path(namespaces: dict) -> None:
    with pytest.raises(MissingVariable, match=r"item\.answer"):
        parse("{{item.answer}}").render(namespaces)
