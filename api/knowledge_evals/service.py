"""Knowledge evals: creation (spec checked and sources read before anything is stored), lookups, cancel,
result downloads, built-in suites and training files built from a suite's memorization split."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

from api.knowledge_evals.schemas import (
    ComparisonOptions,
    KnowledgeEvalCreateRequest,
    KnowledgeEvalOptions,
    SuiteObject,
)
from api.leased_work import LeasedWorkService
from basemodels.registry import BaseModelRegistry
from contracts.errors import Conflict, InvalidRequest, NotFound
from db import files, ids, knowledge_evals, models
from db.projects import Principal
from db.session import Database
from db.states import FileStatus
from db.tables import File, KnowledgeEval
from evals.artifacts import RESULT_FILES
from evals.comparison import ComparisonSpec, reference_items
from evals.requests import parse_suite_source, spec_for_request, suite_uri
from evals.sources import CallableResolver, project_resolver
from evals.spec import EvalSpec
from storage import ArtifactStore, layout


class KnowledgeEvalService(LeasedWorkService[KnowledgeEval]):
    queue = knowledge_evals.QUEUE
    not_found_code = "knowledge_eval_not_found"

    def __init__(self, db: Database, store: ArtifactStore, registry: BaseModelRegistry, *, max_attempts: int,
                 external_judge: bool = False) -> None:
        self.db = db
        self.store = store
        self.registry = registry
        self.max_attempts = max_attempts
        #: True when FTAAS_EVAL_JUDGE_BASE_URL names the judge's endpoint; else ftaas serves the judge model,
        #: which must then be a model of the caller's project (checked at creation, not mid-run).
        self.external_judge = external_judge

    def resolver(self, principal: Principal) -> CallableResolver:
        return project_resolver(files.content_reader(self.db, self.store, principal.project_id))

    def check_options(self, principal: Principal, options: KnowledgeEvalOptions
                      ) -> tuple[EvalSpec | ComparisonSpec, int]:
        """The spec to run and the number of generations it makes for the evaluated model and its reference
        (its base model, for a knowledge eval: doubled by `create` when the model is not the base)."""
        if options.comparison is not None:
            if options.spec is not None or options.suites or options.judge_model or options.max_new_tokens:
                raise InvalidRequest("Give either 'comparison' or 'spec'/'suites' (with their judge_model and "
                                     "max_new_tokens), not both.", code="invalid_eval_spec", param="comparison")
            comparison = self.check_comparison(principal, options.comparison)
            return comparison, comparison.generations
        spec, questions = spec_for_request(spec=options.spec, suites=options.suites, judge_model=options.judge_model,
                                           max_new_tokens=options.max_new_tokens, resolver=self.resolver(principal))
        if not self.external_judge:
            for name, config in spec.scorers.items():
                if config["type"] != "llm_judge":
                    continue
                try:
                    self.base_model_of(principal, config["judge_model"])
                except NotFound:
                    param = "judge_model" if options.spec is None else f"spec.scorers.{name}.judge_model"
                    raise InvalidRequest(f"The judge model {config['judge_model']!r} is not a model of this "
                                         "project (the judge is served by ftaas itself: no judge endpoint is "
                                         "configured).", code="model_not_found", param=param) from None
        return spec, questions

    def check_comparison(self, principal: Principal, options: ComparisonOptions) -> ComparisonSpec:
        """The reference file read and checked line by line, the reference and judge models looked up."""
        data = files.content_reader(self.db, self.store, principal.project_id)(options.reference_file)
        if data is None:
            raise InvalidRequest(f"No such file in this project: {options.reference_file}.", code="file_not_found",
                                 param="comparison.reference_file")
        items = reference_items(data, with_answers=options.reference_model is None,
                                param="comparison.reference_file")
        for field, name in (("reference_model", options.reference_model), ("judge_model", options.judge_model)):
            if name is None or (field == "judge_model" and self.external_judge):
                continue
            try:
                self.base_model_of(principal, name)
            except NotFound:
                raise InvalidRequest(f"The model {name!r} is not a model of this project.", code="model_not_found",
                                     param=f"comparison.{field}") from None
        return ComparisonSpec.of(reference_file=options.reference_file, reference_model=options.reference_model,
                                 judge_model=options.judge_model, max_new_tokens=options.max_new_tokens,
                                 seed=options.seed, items=len(items))

    def base_model_of(self, principal: Principal, name: str) -> str:
        if name in self.registry:
            return name
        with self.db.read() as session:
            found = models.find_adapter(session, principal.project_id, name)
        if found is not None:
            return found.base_model
        raise NotFound(f"The model '{name}' does not exist or you do not have access to it.",
                       code="model_not_found", param="model")

    def create(self, principal: Principal, request: KnowledgeEvalCreateRequest) -> KnowledgeEval:
        base_model = self.base_model_of(principal, request.model)
        spec, questions = self.check_options(principal, request)
        row = KnowledgeEval(
            id=ids.new_id(ids.KNOWLEDGE_EVAL), project_id=principal.project_id, model=request.model,
            base_model=base_model, job_id=None, status="queued", spec=spec.document, spec_name=spec.name,
            spec_sha256=spec.sha256, progress_done=0,
            progress_total=(questions if isinstance(spec, ComparisonSpec)
                            else questions * (1 if request.model == base_model else 2)), result_files=[],
            user_metadata=request.metadata, created_at=int(time.time()), attempt=0,
            max_attempts=self.max_attempts, fencing_token=0)
        with self.db.write() as session:
            knowledge_evals.insert(session, row, dispatch=True)
        return row

    def check_cancellable(self, row: KnowledgeEval) -> None:
        if row.job_id is not None:
            raise Conflict("This eval belongs to a fine-tuning job; cancel the job instead.",
                           code="invalid_state_transition", param="knowledge_eval_id")

    def artifact(self, principal: Principal, eval_id: str, kind: str) -> tuple[str, Iterator[bytes]]:
        """A finished eval's report, items, chart or loss curve: (media type, verified bytes)."""
        row = self.get(principal, eval_id)
        if row.status != "succeeded":
            raise Conflict(f"The knowledge eval has status {row.status}; results exist once it has succeeded.",
                           code="eval_not_finished", param="knowledge_eval_id")
        with self.db.read() as session:
            for file_id in row.result_files:
                file = files.get(session, principal.project_id, file_id, include_expired=True)
                name, media_type = RESULT_FILES[kind]
                if file is not None and file.filename.endswith(name):
                    return media_type, self.store.iter_verified(file.storage_key, sha256=file.sha256,
                                                                       size=file.bytes)
        raise NotFound(f"This eval has no {kind} file.", code="not_found", param="kind")

    @staticmethod
    def suites() -> list[SuiteObject]:
        from evals.builtin import SUITES

        return [SuiteObject(id=info.name, dataset=info.dataset_id, setting=info.setting, description=info.description,
                            default_size=info.default_size) for info in SUITES.values()]

    def training_file(self, principal: Principal, suite: str, system_prompt: str | None) -> File:
        """Chat JSONL of a suite's memorization split, stored as a `fine-tune` file of the project."""
        from evals.builtin import training_file

        uri = suite_uri(suite)
        data = training_file(parse_suite_source(uri, self.resolver(principal).read(uri, param="suite")),
                             system_prompt=system_prompt)
        file_id = ids.new_id(ids.FILE)
        key = layout.file_key(file_id)
        stored = self.store.put_bytes(key, data)
        name = suite.split("?")[0].removeprefix("builtin:").strip("/").replace("/", "_")
        row = File(id=file_id, project_id=principal.project_id, filename=f"{name}-memorization-{secrets.token_hex(3)}.jsonl",
                   purpose="fine-tune", bytes=stored.size, sha256=stored.sha256, storage_key=key,
                   status=FileStatus.UPLOADED, created_at=int(time.time()), error_count=0)
        with self.db.write() as session:
            files.insert(session, row)
        return row
