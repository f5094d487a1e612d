"""The one error taxonomy of ftaas.

Every failure a user or operator can see is an `FTaaSError` with a stable machine-readable `code`.
Three families matter for behaviour:

* `UserError` subclasses describe bad input or an illegal request. They are reported and never retried.
* `InfrastructureError` subclasses describe a dependency that failed (storage, database, broker). Work that
  hits one is retried (requeued) and the HTTP layer marks the response retryable.
* `ConfigurationError` subclasses describe a deployment the operator must fix (a bucket that does not exist,
  credentials the store refuses). Retrying cannot help, so work fails at once with the error's code.

The API maps these classes to HTTP statuses and the OpenAI error envelope in exactly one place
(`api.errors`); workers map them to job failures or requeues (`worker.jobs.runner`, and
`worker.standalone.StandaloneWork.settle` for evals and adapter operations).
"""

from __future__ import annotations


class FTaaSError(Exception):
    """Base class. `code` is stable and documented; `public_message` is what a client is shown (`message`
    itself, except where it may name hosts, buckets or keys: those classes set `public`, and the full message
    goes to the log only)."""

    code: str = "internal_error"
    public: str | None = None

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param

    @property
    def public_message(self) -> str:
        return self.public if self.public is not None else self.message


# ----------------------------------------------------------------------------------------- user errors
class UserError(FTaaSError):
    """The request or the data is wrong; retrying the same thing fails the same way."""

    code = "invalid_request"


class InvalidRequest(UserError):
    """A parameter is malformed, out of range or inconsistent (HTTP 400)."""

    code = "invalid_request"


class InvalidFile(UserError):
    """A dataset file failed validation; `errors` holds line-numbered details."""

    code = "invalid_file"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 errors: list[dict] | None = None) -> None:
        super().__init__(message, code=code, param=param)
        self.errors = errors or []


class AuthenticationFailed(UserError):
    """No API key, or one that is unknown or revoked (HTTP 401)."""

    code = "invalid_api_key"


class PermissionDenied(UserError):
    """The caller is known but may not do this (HTTP 403)."""

    code = "permission_denied"


class NotFound(UserError):
    """No such object in the caller's project (HTTP 404). Other projects' objects are reported the same way."""

    code = "not_found"


class Conflict(UserError):
    """The request conflicts with the object's current state (HTTP 409)."""

    code = "conflict"


class IllegalTransition(Conflict):
    """A job status change that the state machine does not allow."""

    code = "invalid_state_transition"


class PayloadTooLarge(UserError):
    """The request body exceeds its limit (HTTP 413)."""

    code = "payload_too_large"


class QuotaExceeded(UserError):
    """A per-project quota is exhausted (HTTP 429). `retry_after` is in seconds."""

    code = "quota_exceeded"

    def __init__(self, message: str, *, retry_after: int = 30, code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message, code=code, param=param)
        self.retry_after = retry_after


class RateLimited(UserError):
    """Too many requests for the caller's API key or project in the current window (HTTP 429 with
    `Retry-After` and `x-ratelimit-*` headers; the SDK waits and retries)."""

    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, limit: int, reset_seconds: float, unit: str = "requests",
                 retryable: bool = True, code: str | None = None, param: str | None = None) -> None:
        """`unit`: "requests" or "tokens"; `retryable` False for a request that could never fit the limit."""
        super().__init__(message, code=code, param=param)
        self.limit = limit
        self.reset_seconds = reset_seconds
        self.unit = unit
        self.retryable = retryable


# ------------------------------------------------------------------------------- infrastructure errors
class InfrastructureError(FTaaSError):
    """A dependency failed. The same request may succeed later; work is requeued, not failed."""

    code = "infrastructure_error"


class StorageUnavailable(InfrastructureError):
    code = "storage_unavailable"
    public = "The artifact store is unavailable; retry later."


class BrokerUnavailable(InfrastructureError):
    code = "broker_unavailable"
    public = "The task broker is unavailable; retry later."


class DatabaseUnavailable(InfrastructureError):
    code = "database_unavailable"
    public = "The database is unavailable; retry later."


class Overloaded(InfrastructureError):
    """The server is at capacity right now (HTTP 429 with `Retry-After`; the SDK backs off and retries)."""

    code = "server_overloaded"

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message, code=code, param=param)
        self.retry_after = retry_after


class Draining(InfrastructureError):
    """This process is shutting down and takes no new work (HTTP 503; another replica can)."""

    code = "server_draining"


class DeadlineExceeded(InfrastructureError):
    """The request did not finish within its deadline (HTTP 504)."""

    code = "request_timeout"


class DependencyOutage(FTaaSError):
    """A dependency stayed unavailable longer than the worker waits (`outage_deadline_seconds`): the work
    fails with this code instead of waiting for ever. Not an InfrastructureError: it is not retried again."""

    code = "dependency_outage"


# ------------------------------------------------------------------------------- configuration errors
class ConfigurationError(FTaaSError):
    """The deployment is misconfigured; the operator must act. Never retried (HTTP 500, not retryable)."""

    code = "configuration_error"
    public = "The server is misconfigured; its operator must fix it (the server log has the details)."


class StorageMisconfigured(ConfigurationError):
    """The artifact store refuses the request for a reason retrying cannot fix (no such bucket, access
    denied, invalid credentials or request)."""

    code = "storage_misconfigured"
    public = ("The artifact store refuses the server's requests (a missing bucket or denied access); the "
              "server's operator must fix it.")


# ------------------------------------------------------------------------------------ integrity errors
class IntegrityFailure(FTaaSError):
    """Stored bytes do not match their recorded SHA-256 or size. Never retried: the data is bad."""

    code = "checksum_mismatch"


class ObjectMissing(IntegrityFailure):
    """A row points at an artifact that is not in the store."""

    code = "artifact_missing"


# ------------------------------------------------------------------------------------- worker-internal
class LeaseLost(FTaaSError):
    """The worker no longer owns the job (fencing token changed, or the job left `running`).

    Not an error of the job: the worker must stop writing and return quietly.
    """

    code = "lease_lost"
