"""An eval request (the API's or the CLI's: a spec, or suite names) -> the validated spec, its sources read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from contracts.errors import InvalidRequest
from evals.items import EvalItem, parse_suite
from evals.sources import SourceResolver, load_items, scheme_of
from evals.spec import DEFAULT_GENERATION, EvalSpec, suite_spec, validate_spec


def parse_suite_source(uri: str, data: bytes) -> list[EvalItem]:
    """A suite file's items; a bad line is reported with the URI and the line."""
    try:
        return parse_suite(data)
    except InvalidRequest as exc:
        exc.message = f"{uri}: {exc.message}"
        raise


# ------------------------------------------------------------------------------ requests -> a spec
def suite_uri(reference: str) -> str:
    """`fictional_people`, `builtin:fictional_people?size=8`, `builtin://...` or an uploaded file id -> URI."""
    if reference.startswith("builtin://") or scheme_of(reference) == "file_id":
        return reference
    return "builtin://" + reference.removeprefix("builtin:")


def spec_for_request(*, spec: Mapping[str, Any] | None, suites: Sequence[str] | None, judge_model: str | None,
                     max_new_tokens: int | None, resolver: SourceResolver) -> tuple[EvalSpec, int]:
    """The validated spec an API or CLI request asks for, with its sources read and checked.

    Exactly one of `spec` (a whole spec document) and `suites` (suite references, from which `suite_spec`
    builds the spec) must be given. Returns the spec and its number of questions. Every problem is an
    `InvalidRequest` naming the field, the suite line or the source row at fault.
    """
    if (spec is None) == (not suites):
        raise InvalidRequest("Give either 'spec' (an eval spec document) or 'suites' (suite names or file ids).",
                             code="invalid_eval_spec", param="spec")
    if spec is not None:
        if judge_model is not None or max_new_tokens is not None:
            raise InvalidRequest("'judge_model' and 'max_new_tokens' apply to 'suites'; a spec sets its own "
                                 "scorers and generation.", code="invalid_eval_spec", param="judge_model")
        validated = validate_spec(dict(spec))
    else:
        sources = []
        for index, reference in enumerate(suites or []):
            uri = suite_uri(reference)
            try:
                data = resolver.read(uri, param=f"suites.{index}")
            except InvalidRequest as exc:
                exc.param = exc.param if exc.param and exc.param.startswith("suites") else f"suites.{index}"
                raise
            try:
                sources.append((uri, parse_suite(data)))
            except InvalidRequest as exc:
                exc.message = f"suites.{index} ({reference}): {exc.message}"
                exc.param = f"suites.{index}: {exc.param}" if exc.param else f"suites.{index}"
                raise
        generation = dict(DEFAULT_GENERATION)
        if max_new_tokens is not None:
            generation["max_new_tokens"] = max_new_tokens
        names = "-".join(sorted({item.dataset_id for _, items in sources for item in items}))[:100] or "suites"
        validated = validate_spec(suite_spec(sources, name=names.lower(), generation=generation,
                                             judge_model=judge_model))
    items, controls = load_items(validated, resolver)
    return validated, len(items) + len(controls)
