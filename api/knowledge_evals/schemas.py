"""Wire shapes of /v1/knowledge_evals (an ftaas extension; reference: docs/evals.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from db.tables import KnowledgeEval


class ComparisonOptions(BaseModel):
    """Does the model behave like an original? Its answers to held-out prompts compared with the original's
    (docs/evals.md, "Comparing a copy with its original")."""

    model_config = ConfigDict(extra="forbid")

    reference_file: str = Field(
        min_length=1, max_length=64,
        description="A file id: chat JSONL, one held-out prompt per line (messages, optional tools and "
                    "response_format), each ending with the original's answer as the last assistant turn "
                    "(`ftaas transfer compare` writes such a file), or, with reference_model, without it.")
    reference_model: str | None = Field(
        default=None, min_length=1, max_length=320,
        description="A model of this project that answers the prompts as the original (instead of the "
                    "answers in the file).")
    judge_model: str | None = Field(default=None, min_length=1, max_length=320,
                                    description="Ask this model which answer is better (default: no judge).")
    max_new_tokens: int = Field(default=512, ge=1, le=4096, description="Tokens generated per answer.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Draws the order the judge sees the answers in.")


class KnowledgeEvalOptions(BaseModel):
    """What to evaluate: a whole spec, suites from which ftaas builds one, or a comparison with an original
    (exactly one of the three)."""

    model_config = ConfigDict(extra="forbid")

    spec: dict[str, Any] | None = Field(
        default=None, description="An eval spec (schema urn:ftservice:knowledge-eval-spec:v1). Sources: "
                                  "builtin://<suite>?seed=N&size=M or an uploaded file id.")
    suites: list[str] | None = Field(
        default=None, min_length=1, max_length=16,
        description="Suites: built-in names (fictional_people, api_renames, dated_events, control; "
                    "'builtin:fictional_people?size=8&seed=1') or ids of uploaded suite JSONL files.")
    judge_model: str | None = Field(default=None, min_length=1, max_length=320,
                                    description="With suites: score free-text answers with this LLM judge.")
    max_new_tokens: int | None = Field(default=None, ge=1, le=1024,
                                       description="With suites: tokens generated per answer (default 32).")
    comparison: ComparisonOptions | None = Field(
        default=None, description="Instead of spec or suites: compare the model with an original on held-out "
                                  "prompts (agreement, similarity, tool calls, JSON validity, a judge).")


class KnowledgeEvalCreateRequest(KnowledgeEvalOptions):
    model: str = Field(min_length=1, max_length=320, description="The model to evaluate (base, ft: or checkpoint).")
    metadata: dict[str, str] | None = None


class EvalProgress(BaseModel):
    done: int
    total: int


class EvalError(BaseModel):
    code: str | None
    message: str | None
    param: str | None


class KnowledgeEvalObject(BaseModel):
    id: str
    object: Literal["knowledge_eval"] = "knowledge_eval"
    created_at: int
    status: str
    model: str
    base_model: str
    fine_tuning_job_id: str | None
    spec_name: str
    spec_sha256: str
    progress: EvalProgress
    summary: dict[str, Any] | None
    result_files: list[str]
    error: EvalError | None
    started_at: int | None
    finished_at: int | None
    metadata: dict[str, str] | None

    @classmethod
    def of(cls, row: KnowledgeEval) -> KnowledgeEvalObject:
        return cls(id=row.id, created_at=row.created_at, status=row.status, model=row.model,
                   base_model=row.base_model, fine_tuning_job_id=row.job_id, spec_name=row.spec_name,
                   spec_sha256=row.spec_sha256, progress=EvalProgress(done=row.progress_done, total=row.progress_total),
                   summary=row.summary, result_files=list(row.result_files or []),
                   error=EvalError(**row.error) if row.error else None, started_at=row.started_at,
                   finished_at=row.finished_at, metadata=row.user_metadata)


class KnowledgeEvalList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KnowledgeEvalObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


class SuiteObject(BaseModel):
    id: str
    object: Literal["knowledge_eval.suite"] = "knowledge_eval.suite"
    dataset: str
    setting: str
    description: str
    default_size: int


class TrainingFileRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    suite: str = Field(min_length=1, description="A suite reference, as in 'suites'.")
    system_prompt: str | None = None
