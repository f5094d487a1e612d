"""What the `ftaas` commands that talk to a running server share: the client, errors, options."""

from __future__ import annotations

from typing import Any

import click


def client(base_url: str, api_key: str) -> Any:
    import httpx

    return httpx.Client(base_url=base_url.rstrip("/"), headers={"Authorization": f"Bearer {api_key}"}, timeout=300)


def check(response: Any) -> Any:
    """The response, or a ClickException with the server's error message, param and code."""
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            detail = f"{error.get('message')} (param: {error.get('param')}, code: {error.get('code')})"
        except (ValueError, KeyError, TypeError):  # not the OpenAI error envelope
            detail = response.text[:500]
        raise click.ClickException(f"HTTP {response.status_code}: {detail}")
    return response


def server_options(function: Any) -> Any:
    function = click.option("--api-key", envvar="FTAAS_API_KEY", required=True,
                            help="API key (FTAAS_API_KEY).")(function)
    return click.option("--base-url", envvar="FTAAS_BASE_URL", default="http://127.0.0.1:8000/v1", show_default=True,
                        help="The server's /v1 URL (FTAAS_BASE_URL).")(function)
