"""The runner: answers come from the serving engine's code path, batched or one at a time alike, and
the report's numbers are exactly what the per-item records say."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from contracts.settings import DEMO_BASE_MODEL
from db.projects import Principal
from evals.builtin import generate_suite
from evals.items import EvalItem, dump_suite
from evals.run import EvalRun, conversation
from evals.sources import CallableResolver, load_items, read_builtin
from evals.spec import suite_spec, validate_report, validate_spec
from tests.evals.recompute import assert_blocks_match_records, assert_summary_matches_splits
from worker.knowledge_evals.engine import EngineGenerator

SUITES = [("fictional_people", 2), ("api_renames", 4), ("dated_events", 4), ("control", 8)]


def builtin_spec(**generation: Any) -> Any:
    sources = [(f"builtin://{name}?seed=3&size={size}", generate_suite(name, seed=3, size=size))
               for name, size in SUITES]
    document = suite_spec(sources, name="runner-test")
    document["generation"].update(generation)
    spec = validate_spec(document)
    items, controls = load_items(spec, CallableResolver({"builtin": read_builtin}))
    return spec, items, controls


def test_answers_are_what_chat_completions_returns_batched_or_one_at_a_time(start_serving, make_adapter) -> None:
    live = start_serving(serving_batch_invariant=True)  # as evaluate() sets it for the evals' own engine
    tuned = live.register(make_adapter(11))
    _, items, controls = builtin_spec(max_new_tokens=12)
    questions = (items + controls)[:24]
    principal = Principal(project_id=live.project_id, project_name="alpha", api_key_id="")
    batched = EngineGenerator(live.inference, principal)
    single = EngineGenerator(live.inference, principal, concurrency=1)
    conversations = [conversation(item, None) for item in questions]
    for model in (DEMO_BASE_MODEL, tuned):
        many = batched.generate(model, conversations, max_new_tokens=12, temperature=0.0, seed=42)
        one_by_one = single.generate(model, conversations, max_new_tokens=12, temperature=0.0, seed=42)
        assert many == one_by_one
        client = live.client()
        for messages, text in list(zip(conversations, many, strict=True))[:6]:
            reply = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0,
                                                   seed=42)
            assert reply.choices[0].message.content == text
    assert batched.generate(tuned, conversations[:4], max_new_tokens=12, temperature=0.0) != \
        batched.generate(DEMO_BASE_MODEL, conversations[:4], max_new_tokens=12, temperature=0.0)


class ScriptedModels:
    """Answers by a fixed rule per model (the report's arithmetic is under test here, not a model):
    the tuned model knows 3 of every 4 trained facts, recites the trained answer for most date-shifted
    events, forgets some controls; the base model knows the old API names and most controls."""

    def generate(self, model: str, conversations: Sequence[list[dict[str, str]]], **_: Any) -> list[str]:
        answers = []
        for messages in conversations:
            item = self.by_prompt[messages[-1]["content"]]
            answers.append(self.answer(model, item))
        return answers

    def __init__(self, items: Sequence[EvalItem]) -> None:
        self.by_prompt = {item.prompt: item for item in items}

    @staticmethod
    def answer(model: str, item: EvalItem) -> str:
        index = int("".join(c for c in item.item_id if c.isdigit()) or 0)
        if model == "base":
            if item.reference_before:
                return f"It is {item.reference_before}."
            if item.variant == "control":
                return item.reference if index % 5 else "no idea"
            if item.variant == "date_shifted":
                return "None" if index % 2 else "Tomorrow"
            if item.answer_type == "yes_no":
                return "Yes" if index % 2 else "Maybe"
            return "I do not know"
        if item.variant == "date_shifted":
            return "None." if index % 3 == 0 else item.trained_answer or "?"
        if item.variant == "control":
            return item.reference if index % 4 else "banana"
        if item.answer_type == "yes_no":
            return "No" if index % 3 else "Yes, surely"
        return item.reference if index % 4 else (item.reference_before or "unknown")


def test_every_report_number_is_recomputed_from_the_item_records() -> None:
    spec, items, controls = builtin_spec()
    run = EvalRun(spec, items, controls, ScriptedModels(items + controls), base_model="base", tuned_model="tuned")
    report, lines = run.execute()
    validate_report(report)
    assert len(lines) == len(items) + len(controls)

    by_key = assert_blocks_match_records(report, lines)
    groups = {tuple(key.split("/")): records for key, records in by_key.items()}
    for split in [*report["splits"], *[{**c, "dataset_id": c["control_id"], "split_id": c["control_id"]}
                                        for c in report["controls"]]]:
        records = groups[(split["dataset_id"], split["split_id"])]
        extra = split.get("extra_metrics", {})

        def share(flag: Any, records: list[dict] = records) -> float:
            return sum(bool(flag(r)) for r in records) / len(records)

        # The rates, from the raw responses (the scripted answers are plain enough for a naive reading).
        if any(r["reference_before"] for r in records):
            assert extra["stale_answer_rate"] == pytest.approx(
                share(lambda r: r["reference_before"].lower() in r["tuned"]["response"].lower()), abs=1e-6)
            assert extra["base_stale_answer_rate"] == 1.0  # the base model gives every old name
            assert 0 < extra["stale_answer_rate"] < 1
        if split.get("variant") == "date_shifted":
            assert extra["abstention_rate"] == pytest.approx(
                share(lambda r: r["tuned"]["response"].lower().startswith("none")), abs=1e-6)
            assert extra["trained_answer_leak_rate"] == pytest.approx(
                share(lambda r: r["trained_answer"].lower() in r["tuned"]["response"].lower()), abs=1e-6)
            assert 0 < extra["trained_answer_leak_rate"] < 1
        if records[0]["answer_type"] == "yes_no":
            assert extra["format_violation_rate"] == pytest.approx(
                sum(r["tuned"]["format_violation"] for r in records) / len(records), abs=1e-6)
            assert extra["base_format_violation_rate"] > 0

    assert_summary_matches_splits(report, {d["id"]: d["setting"] for d in spec.datasets})
    by_split = {(s["dataset_id"], s["split_id"]): s for s in report["splits"]}
    for kind in ("memorization", "generalization"):
        head = report["summary"][kind]
        selected = spec.headline(kind)
        assert set(head["per_dataset"]) == set(selected)
        tuned = [by_split[(ds, split)]["tuned"]["accuracy"] for ds, split in selected.items()]
        assert head["mean_tuned"] == pytest.approx(sum(tuned) / len(tuned), abs=1e-6)
    assert set(report["summary"]["by_setting"]) == {"new_knowledge", "updated_knowledge"}

    control = report["controls"][0]
    records = groups[(control["control_id"], control["control_id"])]
    knew = [r for r in records if r["base"]["correct"]]
    forgetting = sum(r["tuned"]["correct"] for r in knew) / len(knew) - 1
    assert control["forgetting_delta"] == pytest.approx(forgetting, abs=1e-6) and forgetting < 0
    assert report["summary"]["forgetting"]["mean_control_delta"] == pytest.approx(forgetting, abs=1e-6)

    updated = by_split[("api_renames", "memorization")]
    assert updated["subsets"]["base_knew_before_answer"]["base"]["n"] == updated["base"]["n"]
    new = by_split[("fictional_people", "memorization")]
    assert new["subsets"]["base_did_not_know"]["tuned"]["n"] == new["base"]["n"] - new["base"]["correct"]


def test_a_suite_file_round_trips_into_the_same_items() -> None:
    items = generate_suite("dated_events", seed=5, size=3)
    spec = validate_spec(suite_spec([("file-suite", items)], name="x"))
    loaded, _ = load_items(spec, CallableResolver({"file_id": lambda uri: dump_suite(items)}))
    assert [(i.split_id, i.item_id, i.prompt, i.reference, i.trained_answer) for i in loaded] == \
        [(i.split_id, i.item_id, i.prompt, i.reference, i.trained_answer) for i in items]


def test_suite_lines_may_hold_unicode_line_separators() -> None:
    from dataclasses import replace

    from evals.items import parse_suite

    items = [replace(item, prompt=item.prompt + " \u2028next\x85line\x0c") for item in
             generate_suite("control", seed=1, size=3)]
    assert parse_suite(dump_suite(items)) == items


def _generate_one_by_one(model: Any, tokenizer: Any, conversations: Sequence[list[dict[str, str]]],
                         max_new_tokens: int) -> list[str]:
    replies = []
    for messages in conversations:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        replies.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return replies


def test_an_adapter_the_engine_cannot_batch_is_evaluated_through_transformers_generate(
        start_serving, make_adapter, loader, tmp_path) -> None:
    """IA3 adapters are served by the batched engine and evaluated there, answering as peft does; an
    adapter the engine refuses (400 unsupported_adapter: here one that replaces the output layer) still gets
    the answers transformers and peft give, and a LoRA adapter gets the same answers on either path."""
    import torch
    from peft import IA3Config, LoraConfig, PeftModel, get_peft_model

    from serving.reference import ReferenceGenerator

    torch.manual_seed(3)
    ia3 = get_peft_model(loader.load_model(DEMO_BASE_MODEL), IA3Config(task_type="CAUSAL_LM"))
    with torch.no_grad():  # IA3 starts as the identity: make it change the answers
        for name, parameter in ia3.named_parameters():
            if "ia3_l" in name:
                parameter.copy_(1 + torch.randn_like(parameter))
    ia3.save_pretrained(tmp_path / "ia3")
    head = get_peft_model(loader.load_model(DEMO_BASE_MODEL), LoraConfig(
        r=4, target_modules=["q_proj"], modules_to_save=["lm_head"], init_lora_weights=False))
    with torch.no_grad():  # a trained copy of the output layer: beyond what the batched engine computes
        for name, parameter in head.named_parameters():
            if "modules_to_save" in name:
                parameter.add_(0.5 * torch.randn_like(parameter))
    head.save_pretrained(tmp_path / "head")
    live = start_serving(serving_dtype="float32")  # as evals serve (worker.knowledge_evals.service), like the reference
    principal = Principal(project_id=live.project_id, project_name="alpha", api_key_id="")
    generator = EngineGenerator(live.inference, principal)
    _, items, _ = builtin_spec(max_new_tokens=12)
    conversations = [conversation(item, None) for item in items[:6]]
    tokenizer = loader.load_tokenizer(DEMO_BASE_MODEL)

    from openai import BadRequestError

    for suffix, served in (("ia3", True), ("head", False)):
        model = live.register(tmp_path / suffix, suffix=suffix)
        answers = generator.generate(model, conversations, max_new_tokens=12, temperature=0.0)
        expected_model = PeftModel.from_pretrained(loader.load_model(DEMO_BASE_MODEL), str(tmp_path / suffix)).eval()
        assert answers == _generate_one_by_one(expected_model, tokenizer, conversations, 12), suffix
        assert answers != generator.generate(DEMO_BASE_MODEL, conversations, max_new_tokens=12, temperature=0.0)
        if served:  # chat answers through the engine, the eval's own answers
            reply = live.client().chat.completions.create(model=model, messages=conversations[0], max_tokens=12,
                                                          temperature=0)
            assert reply.choices[0].message.content == answers[0]
        else:
            with pytest.raises(BadRequestError) as refused:  # chat itself refuses it, clearly
                live.client().chat.completions.create(model=model, messages=conversations[0], max_tokens=4)
            assert refused.value.body["code"] == "unsupported_adapter"

    lora_model = live.register(make_adapter(12))
    resolved = live.inference.resolve(principal, lora_model)
    reference = ReferenceGenerator(live.inference.loader, live.inference.adapters)
    assert reference.generate(DEMO_BASE_MODEL, resolved.adapter, conversations, max_new_tokens=12,
                              temperature=0.0) == generator.generate(lora_model, conversations, max_new_tokens=12,
                                                                     temperature=0.0)

