"""/v1/webhooks: a project's endpoints, created with a signing secret shown once, listed and deleted within
the project; bad destinations are clear 400s and store nothing."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api

PUBLIC = "https://93.184.215.14/ftaas-hooks"


def test_an_endpoint_is_created_with_its_secret_shown_once_listed_and_deleted(api: Api) -> None:
    made = api.client.post("/v1/webhooks", headers=api.headers(), json={
        "url": PUBLIC, "event_types": ["fine_tuning.job.succeeded", "fine_tuning.job.failed"], "description": "ci"})
    assert made.status_code == 200, made.text
    endpoint = made.json()
    assert endpoint["object"] == "webhook_endpoint" and endpoint["id"].startswith("whep_")
    assert endpoint["secret"].startswith("whsec_") and len(endpoint["secret"]) > 30
    assert endpoint["event_types"] == ["fine_tuning.job.failed", "fine_tuning.job.succeeded"]

    shown = api.client.get(f"/v1/webhooks/{endpoint['id']}", headers=api.headers()).json()
    listed = api.client.get("/v1/webhooks", headers=api.headers()).json()
    assert shown["secret"] is None and [e["secret"] for e in listed["data"]] == [None]
    assert [e["id"] for e in listed["data"]] == [endpoint["id"]]
    assert api.client.get(f"/v1/webhooks/{endpoint['id']}/deliveries", headers=api.headers()).json()["data"] == []

    # another project sees nothing and cannot delete it
    assert api.client.get("/v1/webhooks", headers=api.headers(api.other_key)).json()["data"] == []
    assert api.client.delete(f"/v1/webhooks/{endpoint['id']}", headers=api.headers(api.other_key)).status_code == 404

    deleted = api.client.delete(f"/v1/webhooks/{endpoint['id']}", headers=api.headers())
    assert deleted.json() == {"id": endpoint["id"], "object": "webhook_endpoint", "deleted": True}
    gone = api.client.get(f"/v1/webhooks/{endpoint['id']}", headers=api.headers())
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "webhook_endpoint_not_found"


def test_an_endpoint_without_event_types_takes_every_event(api: Api) -> None:
    made = api.client.post("/v1/webhooks", headers=api.headers(), json={"url": PUBLIC}).json()
    assert "knowledge_eval.succeeded" in made["event_types"] and "adapter_operation.failed" in made["event_types"]


@pytest.mark.parametrize(("body", "param", "fragment"), [
    ({"url": "ftp://93.184.215.14/x"}, "url", "only http and https"),
    ({"url": "http://169.254.169.254/latest/meta-data/"}, "url", "link-local"),
    ({"url": "http://127.0.0.1:8080/hook"}, "url", "loopback"),
    ({"url": "http://10.1.2.3/hook"}, "url", "private"),
    ({"url": "not a url"}, "url", ""),
    ({"url": PUBLIC, "event_types": ["fine_tuning.job.created"]}, "event_types", "unknown event types"),
    ({"url": PUBLIC, "secret": "whsec_mine"}, "secret", ""),
    ({}, "url", ""),
])
def test_bad_endpoints_are_clear_400s_and_store_nothing(api: Api, body: dict, param: str, fragment: str) -> None:
    response = api.client.post("/v1/webhooks", headers=api.headers(), json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and fragment in error["message"], error
    assert api.client.get("/v1/webhooks", headers=api.headers()).json()["data"] == []


# ------------------------------------------------------------------ integrations in the job body (same API)
@pytest.mark.parametrize(("integration", "fragment"), [
    ({"type": "wandb", "wandb": {"project": "p", "api_key": "k"}}, "credentials"),
    ({"type": "mlflow", "mlflow": {"tracking_uri": "http://x"}}, "credentials"),
    ({"type": "wandb", "wandb": {}}, "project"),
    ({"type": "comet", "comet": {}}, ""),
    ({"type": "wandb", "wandb": {"project": "p"}}, "not configured"),
])
def test_bad_or_unconfigured_integrations_are_400s(api: Api, integration: dict, fragment: str) -> None:
    from tests.factories import training_jsonl

    uploaded = api.client.post("/v1/files", headers=api.headers(), data={"purpose": "fine-tune"},
                               files={"file": ("t.jsonl", training_jsonl(10))}).json()
    response = api.client.post("/v1/fine_tuning/jobs", headers=api.headers(), json={
        "model": "ftaas-tiny", "training_file": uploaded["id"], "integrations": [integration]})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and (error["param"] or "").startswith("integrations"), error
    assert api.client.get("/v1/fine_tuning/jobs", headers=api.headers()).json()["data"] == []
