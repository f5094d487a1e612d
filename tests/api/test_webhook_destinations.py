"""Webhook destinations: http(s) only, never link-local or cloud metadata addresses, private and loopback
ones only where the deployment allows them, every resolved address checked (a name that resolves to one
public and one private address is refused)."""

from __future__ import annotations

import pytest

from contracts.errors import InvalidRequest
from contracts.webhooks.destinations import check_destination


def _resolver(table: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("unknown host")
        return table[host]
    return resolve


NAMES = _resolver({"hooks.example.com": ["93.184.215.14"], "split.example.com": ["93.184.215.14", "10.0.0.7"],
                   "metadata.example.com": ["169.254.169.254"], "v6.example.com": ["2606:4700::6810:84e5"]})


@pytest.mark.parametrize("url", ["https://hooks.example.com/ftaas", "http://hooks.example.com:8080/x?y=1",
                                 "https://v6.example.com/", "https://93.184.215.14/hook"])
def test_public_http_and_https_destinations_are_accepted(url: str) -> None:
    assert check_destination(url, allow_private=False, resolve=NAMES) == url


@pytest.mark.parametrize("url, reason", [
    ("ftp://hooks.example.com/x", "only http and https"),
    ("file:///etc/passwd", "only http and https"),
    ("https:///nohost", "no host"),
    ("https://user:pw@hooks.example.com/", "credentials"),
    ("https://nowhere.example.com/", "does not resolve"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://metadata.example.com/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fd00:ec2::254]/", "metadata"),
    ("http://[::ffff:169.254.169.254]/", "link-local"),
    ("http://10.1.2.3/", "private"),
    ("http://192.168.1.10/", "private"),
    ("http://127.0.0.1:9000/", "private"),
    ("http://split.example.com/", "private"),
    ("http://0.0.0.0/", "not a unicast"),
    ("http://224.0.0.1/", "not a unicast"),
    ("https://hooks.example.com:99999/", "does not parse"),
])
def test_unsafe_destinations_are_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_destination(url, allow_private=False, resolve=NAMES)
    assert refused.value.code == "invalid_webhook_url" and refused.value.param == "url"
    assert reason in str(refused.value)


def test_private_networks_only_where_allowed_and_metadata_never() -> None:
    assert check_destination("http://10.1.2.3/hook", allow_private=True, resolve=NAMES) == "http://10.1.2.3/hook"
    assert check_destination("http://127.0.0.1:9000/", allow_private=True, resolve=NAMES)
    with pytest.raises(InvalidRequest):
        check_destination("http://169.254.169.254/", allow_private=True, resolve=NAMES)
