"""The judge client against a real HTTP server speaking the OpenAI chat API, with scripted
verdicts and injected faults; every count is taken at the server."""

import pytest
from judge_test_server import ScriptedJudgeServer

from xwin.core.errors import UserError
from xwin.judge.cache import ResponseCache
from xwin.judge.client import JudgeClient, JudgeUnavailable
from xwin.judge.judging import compare_swapped, grade
from xwin.judge.prompts import context_pair, context_single
from xwin.judge.verdicts import Outcome

CONTEXT = [{"role": "user", "content": "Explain DNS briefly."}]


@pytest.fixture
def server():
    with ScriptedJudgeServer() as s:
        yield s


def client_for(server, cache=None, **kwargs) -> JudgeClient:
    kwargs = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, **kwargs}
    return JudgeClient(server.base_url, server.model, cache=cache, **kwargs)


def test_verdicts_come_back_parsed_in_request_order(server):
    client = client_for(server, max_concurrency=4)
    answers = ["quality=3 meh", "quality=9 great", "GARBLE", "quality=12 off the scale"]
    grades = grade(client, [context_single(CONTEXT, a) for a in answers])
    assert [g.rating for g in grades] == [3.0, 9.0, None, 10.0]
    assert [g.status for g in grades] == ["ok", "ok", "unparseable", "ok"]
    assert len(server.requests) == 4
    assert server.requests[0]["temperature"] == 0.0 and server.requests[0]["model"] == server.model


def test_position_swap_combines_both_orders(server):
    client = client_for(server)
    pairs = [("quality=8", "quality=2"), ("quality=2 b", "quality=8 b"), ("quality=5", "quality=5 too"),
             ("POSITION_BIAS quality=9", "quality=1"), ("GARBLE", "quality=1")]
    results = compare_swapped(client, [(context_pair(CONTEXT, x, y), context_pair(CONTEXT, y, x))
                                       for x, y in pairs])
    assert [r.outcome for r in results] == [Outcome.WIN, Outcome.LOSS, Outcome.TIE,
                                            Outcome.INCONSISTENT, Outcome.ERROR]
    assert (results[0].x_first, results[0].y_first) == ("A", "B")
    assert (results[3].x_first, results[3].y_first) == ("A", "A")
    assert len(server.requests) == 2 * len(pairs)


def test_a_rerun_is_answered_from_the_cache_without_any_request(server, tmp_path):
    requests = [context_single(CONTEXT, f"quality={q}") for q in range(1, 7)]
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        first = grade(client_for(server, cache), requests)
    assert len(server.requests) == 6
    with ResponseCache(tmp_path / "cache.sqlite") as cache:  # a new process would do the same
        client = client_for(server, cache)
        second = grade(client, requests)
    assert len(server.requests) == 6  # nothing new reached the server
    assert [g.rating for g in second] == [g.rating for g in first] == [1, 2, 3, 4, 5, 6]
    assert client.stats.cache_hits == 6 and client.stats.requests == 0
    assert not client.connected  # the endpoint was never even opened


def test_identical_requests_in_one_batch_are_sent_once(server, tmp_path):
    same = context_pair(CONTEXT, "quality=4", "quality=4")  # a model against itself
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        results = compare_swapped(client_for(server, cache), [(same, same)] * 3)
    assert len(server.requests) == 1
    assert all(r.outcome is Outcome.TIE for r in results)


def test_cache_is_keyed_by_judge_identity_and_params(server, tmp_path):
    request = [context_single(CONTEXT, "quality=5")]
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        grade(client_for(server, cache, identity="judge@weights-1"), request)
        grade(client_for(server, cache, identity="judge@weights-2"), request)
        grade(client_for(server, cache, identity="judge@weights-2", max_tokens=64), request)
        grade(client_for(server, cache, identity="judge@weights-2", max_tokens=64), request)
    assert len(server.requests) == 3


def test_429_and_5xx_are_retried_until_an_answer_comes(server):
    server.faults = [429, 500, 503]
    client = client_for(server, max_attempts=4)
    assert client.complete(context_single(CONTEXT, "quality=7")).text.endswith("[[7]]")
    assert len(server.requests) == 4
    assert client.stats.retries == 3 and client.stats.requests == 4


def test_a_malformed_reply_is_retried(server):
    server.faults = ["malformed"]
    client = client_for(server)
    assert client.complete(context_single(CONTEXT, "quality=2")).text.endswith("[[2]]")
    assert len(server.requests) == 2


def test_a_timed_out_request_is_retried(server):
    server.faults = [("sleep", 3.0)]
    client = client_for(server, timeout_s=0.5)
    assert client.complete(context_single(CONTEXT, "quality=6")).text.endswith("[[6]]")
    assert len(server.requests) == 2
    assert client.stats.retries == 1


def test_an_endpoint_that_keeps_failing_gives_up_after_max_attempts(server, tmp_path):
    server.faults = [500] * 10
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        client = client_for(server, cache, max_attempts=3)
        with pytest.raises(JudgeUnavailable, match="3 times"):
            client.complete(context_single(CONTEXT, "quality=6"))
        assert len(cache) == 0  # failures are never cached
    assert len(server.requests) == 3


def test_a_refused_request_is_counted_not_cached_and_not_retried(server, tmp_path):
    server.faults = [400]
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        client = client_for(server, cache)
        grades = grade(client, [context_single(CONTEXT, "quality=6"), context_single(CONTEXT, "quality=2")])
        assert len(cache) == 1
    assert sorted(g.status for g in grades) == ["error", "ok"]
    assert client.stats.errors == 1 and len(server.requests) == 2


def test_a_wrong_model_name_or_key_is_a_user_error(server):
    with pytest.raises(UserError, match="404"):
        JudgeClient(server.base_url, "no-such-model").complete(context_single(CONTEXT, "x"))
    server.faults = [401]
    with pytest.raises(UserError, match="API key"):
        client_for(server).complete(context_single(CONTEXT, "x"))


def test_the_api_key_goes_in_the_authorization_header(server):
    client_for(server, api_key="sk-test-secret").complete(context_single(CONTEXT, "quality=1"))
    assert server.headers[-1]["Authorization"] == "Bearer sk-test-secret"


def test_concurrency_is_bounded(server):
    server.delay_s = 0.2
    client = client_for(server, max_concurrency=3)
    grade(client, [context_single(CONTEXT, f"quality={i % 10 + 1} #{i}") for i in range(12)])
    assert len(server.requests) == 12
    assert 1 < server.max_in_flight <= 3


def test_the_endpoint_is_opened_lazily_on_the_first_miss(server):
    opened = []

    def start_server():
        opened.append(True)
        return server.base_url

    client = JudgeClient(start_server, server.model)
    assert not opened
    client.complete_many([context_single(CONTEXT, "quality=3")] * 2)
    client.complete_many([context_single(CONTEXT, "quality=4")])
    assert opened == [True]
