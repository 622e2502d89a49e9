"""The judge's API key never crosses the network in clear text: with a key, a plain http://
endpoint is accepted only on this machine (loopback) or when the config allows it."""

from __future__ import annotations

import pytest

from xwin.core.errors import ConfigError
from xwin.judge.client import JudgeClient, is_loopback_host
from xwin.judge.config import JudgeConfig


@pytest.mark.parametrize("url", ["http://judge.example.com/v1", "http://10.0.0.7:8000/v1",
                                 "HTTP://judge.example.com/v1", "http://127.0.0.1.nip.io/v1"])
def test_a_key_to_plain_http_on_another_host_is_refused(url):
    with pytest.raises(ConfigError, match=r"judge.base_url .*unencrypted.*allow_insecure_http: true"):
        JudgeClient(url, "m", api_key="sk-test")


@pytest.mark.parametrize("url", ["https://api.openai.com/v1", "http://127.0.0.1:8000/v1",
                                 "http://localhost:8000/v1", "http://[::1]:8000/v1",
                                 "http://127.8.9.10/v1"])
def test_https_and_loopback_http_get_the_key(url):
    JudgeClient(url, "m", api_key="sk-test").close()


def test_plain_http_is_allowed_without_a_key_or_when_the_config_says_so():
    JudgeClient("http://judge.example.com/v1", "m").close()
    JudgeClient("http://judge.example.com/v1", "m", api_key="sk-test", allow_insecure_http=True).close()
    assert JudgeConfig().allow_insecure_http is False


def test_a_lazy_endpoint_is_checked_before_the_first_request_is_sent():
    started = []

    def endpoint() -> str:
        started.append(True)
        return "http://192.0.2.1:9/v1"  # TEST-NET: nothing answers there

    client = JudgeClient(endpoint, "m", api_key="sk-test", max_attempts=1, timeout_s=1)
    with pytest.raises(ConfigError, match="unencrypted"):
        client.complete([{"role": "user", "content": "hi"}])
    assert started and not client.connected
    assert client.stats.requests == 0


def test_the_error_never_repeats_the_key():
    with pytest.raises(ConfigError) as info:
        JudgeClient("http://judge.example.com/v1", "m", api_key="sk-very-secret")
    assert "sk-very-secret" not in str(info.value)


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                                ("10.0.0.1", False), ("example.com", False), (None, False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback_host(host) is loopback
