"""A local OpenAI-compatible judge over real HTTP, for testing the judge client and the judged
stages: it answers /v1/chat/completions with scripted verdicts, injects faults on demand
(429, 5xx, slow replies, malformed JSON) and records every request it receives.

The scripted judge reads the answers out of the prompt the way a real judge would see them,
and decides by a rule the tests can recompute independently:
- an answer's merit is N for a `quality=N` marker in it, else its length in characters; the
  GPT-4 reference answer (shipped with MT-bench) of the question asked beats any answer, so
  the default judge passes the eval stage's calibration (judge gate) the way a good judge does;
- single grading: `[[rating]]` with rating = merit clipped to 1-10 for a marker, else
  1 + length % 10;
- pairwise: the answer with the higher merit wins, equal merit is a tie `[[C]]`;
- an answer containing POSITION_BIAS makes the judge always say `[[A]]` (order-dependent);
  an answer containing GARBLE makes it reply without any verdict.
Other judges for the gate's tests: `always_a` (pure position bias) and `length_judge` (the
longer answer wins, references or not).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from typing_extensions import Self

_PAIR_PATTERNS = [
    (r"\[The Start of Assistant A's Answer\]\n(.*?)\n\[The End of Assistant A's Answer\]",
     r"\[The Start of Assistant B's Answer\]\n(.*?)\n\[The End of Assistant B's Answer\]"),
    (r"\[The Start of Output A\]\n(.*?)\n\[The End of Output A\]",
     r"\[The Start of Output B\]\n(.*?)\n\[The End of Output B\]"),
]
_SINGLE = r"\[The Start of Assistant's Answer\]\n(.*?)\n\[The End of Assistant's Answer\]"
# The last "### Assistant X:" block before the end of X's conversation (the turn-2 answer).
_MULTI_TURN = (r"### Assistant {x}:\n((?:(?!### Assistant {x}:).)*?)\n\n"
               r"<\|The End of Assistant {x}'s Conversation")


def merit(answer: str) -> int:
    m = re.search(r"quality=(\d+)", answer)
    return int(m[1]) if m else len(answer)


@lru_cache(maxsize=1)
def _reference_questions() -> dict[str, str]:
    """GPT-4 turn-1 reference answer -> the turn-1 question it answers (shipped MT-bench)."""
    from xwin.data.mtbench import load_mtbench_questions

    return {q.reference[0].strip(): q.turns[0] for q in load_mtbench_questions() if q.reference}


def is_reference_answer(answer: str, prompt: str) -> bool:
    """The answer is the GPT-4 reference answer of the question this prompt asks."""
    question = _reference_questions().get(answer.strip())
    return question is not None and f"[User Question]\n{question}\n" in prompt


def is_calibration_request(body: dict[str, Any]) -> bool:
    """A request of the eval stage's judge calibration: a pairwise prompt showing some GPT-4
    reference answer as an assistant's answer (the models under test never produce one)."""
    try:
        answers = extract_answers(body["messages"][-1]["content"])
    except ValueError:
        return False
    return len(answers) == 2 and any(a.strip() in _reference_questions() for a in answers)


def judged_requests(requests: list[dict]) -> list[dict]:
    """The requests of the real judgments, calibration left out."""
    return [r for r in requests if not is_calibration_request(r)]


def single_rating(answer: str) -> int:
    m = re.search(r"quality=(\d+)", answer)
    return min(10, max(1, int(m[1]))) if m else 1 + len(answer) % 10


def pair_verdict(answer_a: str, answer_b: str) -> str:
    if merit(answer_a) > merit(answer_b):
        return "A"
    return "B" if merit(answer_b) > merit(answer_a) else "C"


def _last(pattern: str, text: str) -> str | None:
    found = re.findall(pattern, text, flags=re.DOTALL)
    return found[-1] if found else None


def extract_answers(prompt: str) -> tuple[str, ...]:
    """(answer,) for a single-grading prompt, (answer_a, answer_b) for a pairwise one; the
    multi-turn templates are read at their last (second-turn) answer."""
    for pa, pb in _PAIR_PATTERNS:
        a, b = _last(pa, prompt), _last(pb, prompt)
        if a is not None and b is not None:
            return (a, b)
    a, b = _last(_MULTI_TURN.format(x="A"), prompt), _last(_MULTI_TURN.format(x="B"), prompt)
    if a is not None and b is not None:
        return (a, b)
    single = _last(_SINGLE, prompt)
    if single is not None:
        return (single,)
    if a is not None:  # single-grading multi-turn template ("Assistant A" only)
        return (a,)
    raise ValueError(f"scripted judge: no answers found in prompt:\n{prompt[:500]}")


def scripted_reply(body: dict[str, Any]) -> str:
    prompt = body["messages"][-1]["content"]
    answers = extract_answers(prompt)
    if any("GARBLE" in a for a in answers):
        return "I cannot decide; both answers look fine to me."
    if len(answers) == 1:
        return f"The answer is adequate. Rating: [[{single_rating(answers[0])}]]"
    if any("POSITION_BIAS" in a for a in answers):
        return "The first answer is better. [[A]]"
    ref_a, ref_b = (is_reference_answer(a, prompt) for a in answers)
    if ref_a != ref_b:
        return f"Only one answer fully answers the question. [[{'A' if ref_a else 'B'}]]"
    return f"Comparing both answers carefully. [[{pair_verdict(*answers)}]]"


def always_a(body: dict[str, Any]) -> str:
    """A judge that always prefers the first answer (and grades everything 5)."""
    answers = extract_answers(body["messages"][-1]["content"])
    return "Rating: [[5]]" if len(answers) == 1 else "Assistant A is better. [[A]]"


def length_judge(body: dict[str, Any]) -> str:
    """The longer answer wins (in characters), equal lengths tie; single grades by length too."""
    answers = extract_answers(body["messages"][-1]["content"])
    if len(answers) == 1:
        return f"Rating: [[{single_rating(answers[0])}]]"
    a, b = (len(x) for x in answers)
    return f"The longer one. [[{'A' if a > b else 'B' if b > a else 'C'}]]"


class ScriptedJudgeServer:
    """`faults`: consumed one per request before answering normally; each is an HTTP status
    (int), ("sleep", seconds) to answer late, or "malformed" for a 200 that is not JSON."""

    def __init__(self, reply: Callable[[dict], str] = scripted_reply, model: str = "scripted-judge"):
        self.reply = reply
        self.model = model
        self.faults: list[Any] = []
        self.requests: list[dict] = []  # bodies of every chat request, faulty ones included
        self.headers: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay_s = 0.0  # every normal reply waits this long (to observe concurrency)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, payload: bytes, headers: dict | None = None):
                # A request stops counting as in flight before its reply is written: once the
                # client has the reply it may send the next one before this thread runs again.
                self._done()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, json.dumps({"object": "list", "data": [
                        {"id": server.model, "object": "model"}]}).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    fault = server.faults.pop(0) if server.faults else None
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                self._counted = True
                try:
                    self._answer(body, fault)
                finally:
                    self._done()

            def _done(self):
                if getattr(self, "_counted", False):
                    self._counted = False
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self, body, fault):
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, b'{"error": "not found"}')
                if isinstance(fault, int):
                    return self._send(fault, json.dumps({"error": f"scripted {fault}"}).encode(),
                                      {"Retry-After": "0"} if fault == 429 else None)
                if fault == "malformed":
                    return self._send(200, b"<html>proxy error</html>")
                if isinstance(fault, tuple) and fault[0] == "sleep":
                    time.sleep(fault[1])
                elif server.delay_s:
                    time.sleep(server.delay_s)
                if body.get("model") != server.model:
                    return self._send(404, json.dumps({"error": f"no model {body.get('model')}"}).encode())
                text = server.reply(body)
                self._send(200, json.dumps({
                    "id": "chatcmpl-test", "object": "chat.completion", "model": server.model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }).encode())

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
