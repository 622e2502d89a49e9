"""The verifiable-instruction checkers (xwin/judge/verifiable.py): every kept type labels a
hand-made compliant and non-compliant answer right, strict and loose; the dropped types really
need NLTK data; draws are seeded and their train and held-out arguments never meet; the
accuracies match a hand computation; IFBench_test loads with kept types only. Offline, fast."""

import itertools
import random

import pytest
from pydantic import ValidationError

from xwin.judge import verifiable as v
from xwin.judge.verifiable import Constraint, check

AFRICA = [
    "Algeria", "Angola", "Benin", "Botswana", "Burkina Faso", "Burundi", "Cabo Verde", "Cameroon",
    "Central African Republic", "Chad", "Comoros", "Congo", "Djibouti", "Egypt",
    "Equatorial Guinea", "Eritrea", "Eswatini", "Ethiopia", "Gabon", "Gambia", "Ghana", "Guinea",
    "Guinea-Bissau", "Ivory Coast", "Kenya", "Lesotho", "Liberia", "Libya", "Madagascar",
    "Malawi", "Mali", "Mauritania", "Mauritius", "Morocco", "Mozambique", "Namibia", "Niger",
    "Nigeria", "Rwanda", "São Tomé and Príncipe", "Senegal", "Seychelles", "Sierra Leone",
    "Somalia", "South Africa", "South Sudan", "Sudan", "Tanzania", "Togo", "Tunisia", "Uganda",
    "Zambia", "Zimbabwe",
]
CAPITALS = [
    "Reykjavik", "Helsinki", "Oslo", "Tallinn", "Stockholm", "Riga", "Moscow", "Copenhagen",
    "Vilnius", "Minsk", "Dublin", "Berlin", "Amsterdam", "Warsaw", "London", "Brussels", "Prague",
    "Luxembourg", "Paris", "Vienna", "Bratislava", "Budapest", "Vaduz", "Chisinau", "Bern",
    "Ljubljana", "Zagreb",
]


def mcq(n_questions: int) -> str:
    out = []
    for q in range(1, n_questions + 1):
        out.append(f"Question {q}: Which art movement came {'very ' * q}early?")
        out += [f"{letter}. Option {letter}" for letter in "ABCDE"]
    return "\n".join(out)


def csv_rows(n: int, special: bool) -> str:
    brand = '"Tools & More"' if special else "Acme"
    rows = ["ProductID,Category,Brand,Price,Stock"]
    rows += [f"{i},Tools,{brand if i == 1 else 'Acme'},9.99,{i}" for i in range(1, n + 1)]
    return "\n".join(rows)


def quoted_tsv(quoted: bool) -> str:
    q = '"' if quoted else ""
    rows = [["StudentID", "Subject", "Grade", "Semester", "Score"],
            ["1", "Math", "A", "Fall", "95"], ["2", "Art", "B", "Fall", "85"],
            ["3", "Music", "A", "Spring", "91"]]
    return "\n".join("\t".join(f"{q}{f}{q}" for f in row) for row in rows)


def alphabet_story(n: int) -> str:
    return " ".join(f"{c.upper()}ow sings here." for c in "abcdefghijklmnopqrstuvwxyz"[:n])


def keyword_counts(counts: list[int]) -> str:
    words = ["alpha", "beta", "gamma", "delta", "omega"]
    return " ".join(" ".join([w] * n) for w, n in zip(words, counts)) + "."


MULTIPLE = {f"keyword{i}": w for i, w in enumerate(["alpha", "beta", "gamma", "delta", "omega"], 1)}

# (instruction id, kwargs, compliant answer, non-compliant answer, the non-compliant answer's loose
# verdict). The last is True only where IFEval's loose transformations make the checker vacuous.
CASES = [
    # IFEval
    ("keywords:existence", {"keywords": ["apple", "river"]},
     "I ate an apple by the river.", "I ate a pear by the lake.", False),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"},
     "The cat saw another cat.", "The cat slept.", False),
    ("keywords:forbidden_words", {"forbidden_words": ["blue"]},
     "The sky is grey today.", "The sky is blue today.", False),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"},
     "Zebras zigzag.", "Horses run.", False),
    ("language:response_language", {"language": "fr"},
     "Bonjour, je suis très heureux de vous rencontrer aujourd'hui. Nous allons parler de la "
     "cuisine française et de ses fromages.",
     "Hello, I am very happy to meet you today. We are going to talk about French cooking and "
     "its cheeses.", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3},
     "One.\n***\nTwo.\n***\nThree.", "One.\n***\nTwo.", False),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"},
     "Short answer here.", "This answer has far too many words in it.", False),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "however"},
     "Cats are great.\n\nHowever, dogs are loyal.", "Cats are great.\n\nDogs are loyal.", False),
    ("detectable_content:number_placeholders", {"num_placeholders": 2},
     "Dear [name], meet me at [address].", "Dear friend, meet me at home.", False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."},
     "Thanks for reading.\nP.S. See you soon.", "Thanks for reading.", False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2},
     "* first\n* second", "* one\n* two\n* three\n* four\n* five", False),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Probably.", False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2},
     "This is *very* important and *urgent*.", "This is very important.", False),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nIntro.\nSection 2\nBody.", "Intro.\nBody.", False),
    ("detectable_format:json_format", {}, '{"answer": 42}', "The answer is 42.", False),
    ("detectable_format:title", {}, "<<My Poem>>\nRoses are red.", "My Poem\nRoses are red.", False),
    ("combination:two_responses", {}, "Answer one.\n******\nAnswer two.", "Answer one only.", False),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a haiku about rain."},
     "Write a haiku about rain. Drops on the roof sing.", "Here is a haiku: drops sing.", False),
    ("startend:end_checker", {"end_phrase": "Any other questions?"},
     "Here is the answer. Any other questions?", "Here is the answer.", False),
    ("change_case:english_capital", {},
     "THIS IS MY ANSWER AND I WROTE IT IN ENGLISH FOR YOU TODAY.",
     "This is my answer and I wrote it in English for you today.", False),
    ("change_case:english_lowercase", {},
     "this is my answer and i wrote it in english for you today.",
     "This is my answer and I wrote it in English for you today.", False),
    ("punctuation:no_comma", {}, "No commas here.", "Yes, commas here.", False),
    ("startend:quotation", {}, '"Wrapped in quotes."', "Not wrapped.", False),
    # IFBench
    ("count:word_count_range", {"min_words": 3, "max_words": 5},
     "one two three four", "one two", False),
    ("count:unique_word_count", {"N": 4}, "apples bananas cherries dates", "apple apple apple", False),
    ("ratio:sentence_type", {}, "I like tea. I like coffee. Do you?", "I like tea. Do you?", False),
    ("ratio:sentence_balance", {}, "I run. Do you run? Run!", "I run. I walk. Do you?", False),
    ("count:conjunctions", {"small_n": 3},
     "I ran and jumped but fell so I rested.", "I ran and jumped.", False),
    ("count:person_names", {"N": 2}, "Emma met Liam.", "Emma met a friend.", False),
    ("ratio:overlap", {"reference_text": "the quick brown fox", "percentage": 100},
     "the quick brown fox", "a slow green turtle", False),
    ("count:numbers", {"N": 2}, "I have 3 cats and 4 dogs.", "I have 3 cats.", False),
    ("words:alphabet", {}, "Apples bring cheer daily.", "Apples are good.", False),
    ("words:vowel", {}, "A cat sat on a mat.", "The quick brown fox jumps over the lazy dog.", False),
    ("words:consonants", {}, "Strong trees stand.", "I am a cat.", False),
    ("sentence:alliteration_increment", {},
     "Big dogs run. Silly snakes slither.", "Silly snakes slither. Big dogs run.", False),
    ("words:palindrome", {}, "level radar civic kayak refer madam rotor stats tenet racecar",
     "level radar civic", False),
    ("count:punctuation", {}, "Really?! Yes, it is; truly: wow! Why? Done.", "Hello, world.", False),
    ("format:parentheses", {}, "(a [b {c (d [e])}])", "(a [b])", False),
    ("format:quotes", {}, "\"He said 'she said \"hi\" to me' today\"", "\"He said 'hi' today\"",
     False),
    ("words:prime_lengths", {}, "We are happy", "This is wrong", False),
    ("format:options", {"options": "yes/no/maybe"}, "Yes.", "Yes, because it rains.", False),
    ("format:newline", {}, "Hello\nworld\nagain", "one two\nthree four\nfive six", False),
    ("format:emoji", {}, "I love pizza 🍕. It is tasty 😋.", "I love pizza. It is tasty.", False),
    ("ratio:sentence_words", {}, "Dogs bark. Cats purr. Fish swim.",
     "Dogs bark. Cats purr loudly. Fish swim.", False),
    ("count:words_japanese", {"N": 2}, "I 猫 like 犬 them 鳥", "I like cats and dogs", False),
    ("words:repeats", {"small_n": 2}, "the cat and the dog", "the the the cat", False),
    ("sentence:keyword", {"word": "ocean", "N": 2},
     "I like trees. The ocean is vast.", "The ocean is vast. I like trees.", False),
    ("count:pronouns", {"N": 3}, "I told you about her.", "The cat sat.", False),
    ("words:odd_even_syllables", {}, "cat water dog apple", "cat dog", False),
    ("words:last_first", {}, "I like tea. Tea is warm.", "I like tea. Coffee is warm.", False),
    ("words:paragraph_last_first", {}, "love conquers all love\ntime heals time",
     "love conquers all", False),
    ("sentence:increment", {"small_n": 1}, "I ran. I ran far. I ran very far.",
     "I ran far. I ran.", False),
    ("words:no_consecutive", {}, "The big cat ran.", "The tall tree.", False),
    ("format:line_indent", {}, "a\n b\n  c", "a\nb\nc\nd", False),
    ("format:quote_unquote", {}, 'He said "hello" to me.', 'He said "hello"', False),
    ("format:list", {"sep": "SEPARATOR"}, "SEPARATOR apples\nSEPARATOR pears", "* apples\n* pears",
     False),
    ("format:thesis", {}, "<i>Cats rule.</i> Because they do.", "Cats rule. Because they do.",
     False),
    # Without its `*` any answer has no bullets left to lack a sub-bullet: loose is vacuous.
    ("format:sub-bullets", {}, "* Fruit\n  - apple\n* Veg\n  - kale", "* Fruit\n* Veg", True),
    ("format:no_bullets_bullets", {}, "I like fruit. Here is a list.\n* apple\n* pear",
     "* apple\n* pear", False),
    ("custom:multiples", {}, "14, 21, 28, 35, 42, 49", "10, 14, 21", False),
    ("custom:mcq_count_length", {}, mcq(4), mcq(3), False),
    ("custom:reverse_newline", {}, "\n".join(reversed(AFRICA)), "\n".join(AFRICA), False),
    ("custom:word_reverse", {}, "eagle bald the is symbol national The",
     "The national symbol is the bald eagle.", False),
    ("custom:character_reverse", {}, "elgae dlab ehT", "The bald eagle", False),
    ("custom:sentence_alphabet", {}, alphabet_story(26), alphabet_story(25), False),
    ("custom:european_capitals_sort", {}, ", ".join(CAPITALS), ", ".join(reversed(CAPITALS)),
     False),
    ("custom:csv_city", {},
     "ID,Country,City,Year,Count\n" + "\n".join(f"{i},France,Paris,2020,{i}" for i in range(7)),
     "ID,Country,City,Year,Count\n" + "\n".join(f"{i},France,Paris,2020,{i}" for i in range(5)),
     False),
    ("custom:csv_special_character", {}, csv_rows(14, special=True), csv_rows(14, special=False),
     False),
    ("custom:csv_quotes", {}, quoted_tsv(True), quoted_tsv(False), False),
    ("custom:date_format_list", {}, "1796-04-12, 1805-12-02", "April 12, 1796", False),
    ("count:keywords_multiple", MULTIPLE, keyword_counts([1, 2, 3, 5, 7]),
     keyword_counts([1, 1, 1, 1, 1]), False),
    ("repeat:repeat_change", {"prompt_to_repeat": "Tell me a story about dragons."},
     "Write me a story about dragons.", "Tell me a story about dragons.", False),
    ("repeat:repeat_simple", {}, "Only output this sentence here, ignore all other requests.",
     "Sure! Here it is.", False),
    ("repeat:repeat_span", {"prompt_to_repeat": "The quick brown fox jumps over the lazy dog",
                            "n_start": 1, "n_end": 4},
     "quick brown fox", "The quick brown fox", False),
    ("format:output_template", {}, "My Answer: 4 My Conclusion: math Future Outlook: bright",
     "Answer: 4", False),
    ("format:no_whitespace", {}, "nowhitespacehere", "some whitespace", False),
]


def test_every_kept_type_has_a_case():
    assert sorted(c[0] for c in CASES) == sorted(v.KEPT_INSTRUCTIONS)


@pytest.mark.parametrize("instruction_id, kwargs, good, bad, bad_loose", CASES,
                         ids=[c[0] for c in CASES])
def test_kept_type_labels_hand_made_answers(instruction_id, kwargs, good, bad, bad_loose):
    constraint = Constraint(instruction_id=instruction_id, kwargs=kwargs)
    assert check(good, constraint, "the prompt") == (True, True)
    assert check(bad, constraint, "the prompt") == (False, bad_loose)


@pytest.mark.parametrize("instruction_id, kwargs, response", [
    # an intro line before the JSON: only removing the first line makes it parse
    ("detectable_format:json_format", {}, 'Sure, here is the JSON:\n{"answer": 42}'),
    # a closing remark after it: removing the last line
    ("detectable_format:json_format", {}, '{"answer": 42}\nI hope this helps.'),
    # bold markup around the quoted answer and the end phrase: removing `*`
    ("startend:quotation", {}, '**"Wrapped in quotes."**'),
    ("startend:end_checker", {"end_phrase": "Any other questions?"},
     "Here is the answer. **Any other questions?**"),
])
def test_strict_fails_where_loose_passes(instruction_id, kwargs, response):
    assert check(response, Constraint(instruction_id=instruction_id, kwargs=kwargs), "") == \
        (False, True)


def test_empty_response_never_follows():
    assert check("   ", Constraint(instruction_id="punctuation:no_comma"), "") == (False, False)


def test_registries_are_the_packages_and_kept_and_dropped_partition_them():
    assert tuple(v._checkers()) == v.IFEVAL_INSTRUCTIONS + v.IFBENCH_INSTRUCTIONS
    assert set(v.DROPPED) <= set(v._checkers())
    assert not set(v.DROPPED) & set(v.KEPT_INSTRUCTIONS)
    assert set(v.DROPPED) | set(v.KEPT_INSTRUCTIONS) == set(v._checkers())
    assert set(v.DRAWABLE) <= set(v.KEPT_INSTRUCTIONS) & set(v.IFEVAL_INSTRUCTIONS)


DROPPED_KWARGS = {
    "length_constraints:number_sentences": {"num_sentences": 2, "relation": "at least"},
    "change_case:capital_word_frequency": {"capital_frequency": 1, "capital_relation": "at least"},
    "ratio:stop_words": {"percentage": 50},
    "words:start_verb": {},
    "words:keywords_specific_position": {"keyword": "cat", "n": 1, "m": 2},
    "words:words_position": {"keyword": "cat"},
    "format:title_case": {},
}


def _has_nltk_data() -> bool:
    import nltk

    for resource in ("tokenizers/punkt", "tokenizers/punkt_tab", "corpora/stopwords"):
        try:
            nltk.data.find(resource)
            return True
        except LookupError:
            pass
    return False


@pytest.mark.skipif(_has_nltk_data(), reason="this machine has NLTK data")
@pytest.mark.parametrize("instruction_id", sorted(v.DROPPED))
def test_dropped_type_needs_nltk_data(instruction_id):
    checker = v._checkers()[instruction_id](instruction_id)
    checker.build_description(**DROPPED_KWARGS[instruction_id])
    with pytest.raises(LookupError):
        checker.check_following("The cat sat on the mat. The dog sat too.")
    with pytest.raises(ValidationError, match="cannot be checked offline"):
        Constraint(instruction_id=instruction_id, kwargs=DROPPED_KWARGS[instruction_id])


def test_constraint_validation():
    with pytest.raises(ValidationError, match="unknown instruction id"):
        Constraint(instruction_id="keywords:nonsense")
    with pytest.raises(ValidationError, match="rejected by its checker"):
        Constraint(instruction_id="punctuation:no_comma", kwargs={"num_words": 3})
    with pytest.raises(ValidationError, match="rejected by its checker"):
        Constraint(instruction_id="length_constraints:number_words",
                   kwargs={"num_words": 3, "relation": "about"})
    c = Constraint(instruction_id="punctuation:no_comma", kwargs={"language": None})
    assert c.kwargs == {}  # IFBench's null arguments are dropped
    assert Constraint.model_validate(c.model_dump()) == c


def test_check_leaves_the_global_random_state_alone():
    random.seed(5)
    expected = random.random()
    random.seed(5)
    check("word " * 10, Constraint(instruction_id="length_constraints:number_words"), "")
    assert random.random() == expected


def test_constraint_prompt_appends_the_checkers_descriptions():
    constraints = [
        Constraint(instruction_id="length_constraints:number_words",
                   kwargs={"num_words": 100, "relation": "at least"}),
        Constraint(instruction_id="punctuation:no_comma"),
    ]
    assert v.constraint_prompt("Write about cats.  ", constraints) == (
        "Write about cats.\n\nAnswer with at least 100 words.\n"
        "In your entire response, refrain from the use of any commas.")
    assert v.constraint_prompt("Write about cats.", []) == "Write about cats."


def _draws(seed: int, k: int, pool: str = "train") -> list[list[Constraint]]:
    rng = random.Random(seed)
    return [v.draw_constraints(rng, k, pool=pool) for _ in range(20)]


def test_draw_is_deterministic_for_a_seed():
    assert _draws(7, 3) == _draws(7, 3)
    assert _draws(7, 3) != _draws(8, 3)
    assert _draws(7, 3, "heldout") != _draws(7, 3, "train")


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_draw_is_distinct_compatible_and_checkable(k):
    conflicts = v._conflicts()
    for constraints in _draws(k, k) + _draws(k, k, "heldout"):
        ids = [c.instruction_id for c in constraints]
        assert len(ids) == k and len(set(ids)) == k
        assert all(b not in conflicts[a] for a, b in itertools.combinations(ids, 2))
        words = [w for c in constraints for name in ("keywords", "forbidden_words", "keyword",
                                                     "first_word") for w in
                 ([c.kwargs[name]] if isinstance(c.kwargs.get(name), str)
                  else c.kwargs.get(name, []))]
        assert len(words) == len(set(words))  # never include and forbid the same word
        prompt = v.constraint_prompt("Tell me about the sea.", constraints)
        assert all(c.description() in prompt for c in constraints)


def test_draw_rejects_impossible_requests():
    with pytest.raises(ValueError, match="not drawable"):
        v.draw_constraints(random.Random(0), 1, instruction_ids=["combination:repeat_prompt"])
    with pytest.raises(ValueError, match="mutually compatible"):
        v.draw_constraints(random.Random(0), 2, instruction_ids=[
            "detectable_format:json_format", "detectable_format:constrained_response"])


def test_train_and_heldout_pools_are_disjoint_and_draws_stay_in_theirs():
    pools = v.arg_pools()
    assert set(v.KWARG_POOL.values()) == set(pools)
    for name, sides in pools.items():
        assert sides["train"] and sides["heldout"], name
        assert not set(sides["train"]) & set(sides["heldout"]), name
    for pool in ("train", "heldout"):
        seen = {name: set() for name in pools}
        for constraints in _draws(11, 3, pool) + _draws(12, 4, pool):
            for c in constraints:
                for arg, value in c.kwargs.items():
                    if arg in v.KWARG_POOL:
                        values = value if isinstance(value, list) else [value]
                        seen[v.KWARG_POOL[arg]].update(values)
        for name, values in seen.items():
            assert values <= set(pools[name][pool]), (pool, name)
        assert sum(map(bool, seen.values())) >= 8  # the draws did reach most pools


def test_score_responses_against_a_hand_computation():
    no_comma = Constraint(instruction_id="punctuation:no_comma")
    end = Constraint(instruction_id="startend:end_checker",
                     kwargs={"end_phrase": "Any other questions?"})
    json_ = Constraint(instruction_id="detectable_format:json_format")
    apple = Constraint(instruction_id="keywords:existence", kwargs={"keywords": ["apple"]})
    no_pear = Constraint(instruction_id="keywords:forbidden_words",
                         kwargs={"forbidden_words": ["pear"]})
    items = [
        ("p1", [no_comma, end], "Hello there. Any other questions?"),  # strict 2/2, loose 2/2
        ("p2", [json_], 'Here you go:\n{"a": 1}'),                      # strict 0/1, loose 1/1
        ("p3", [apple, no_pear], "I like apple and pear."),             # strict 1/2, loose 1/2
    ]
    scores = v.score_responses(items)
    assert scores["n_prompts"] == 3
    assert scores["n_instructions"] == 5
    assert scores["prompt_strict"] == pytest.approx(1 / 3)  # p1
    assert scores["prompt_loose"] == pytest.approx(2 / 3)  # p1, p2
    assert scores["instruction_strict"] == pytest.approx(3 / 5)  # 2 + 0 + 1
    assert scores["instruction_loose"] == pytest.approx(4 / 5)  # 2 + 1 + 1
    assert scores["by_instruction"]["detectable_format:json_format"] == \
        {"n": 1, "strict": 0.0, "loose": 1.0}
    assert scores["by_instruction"]["keywords:forbidden_words"] == \
        {"n": 1, "strict": 0.0, "loose": 0.0}
    empty = v.score_responses([])
    assert empty["n_prompts"] == 0 and empty["prompt_strict"] != empty["prompt_strict"]  # NaN
    with pytest.raises(ValueError, match="without constraints"):
        v.score_responses([("p", [], "r")])


def test_load_ifbench_test_keeps_only_checkable_prompts():
    data = v.load_ifbench_test()
    assert data.n_source == 294
    assert len(data) + sum(data.dropped.values()) == data.n_source
    assert set(data.dropped) <= set(v.DROPPED) | {v.UNREPRODUCIBLE}
    assert data.dropped[v.UNREPRODUCIBLE] == 1  # repeat_span's n_start=0, redrawn at random
    assert all(c.instruction_id in v.KEPT_INSTRUCTIONS for item in data for c in item.constraints)
    assert len({item.key for item in data}) == len(data)
    assert all(item.constraints for item in data)
    first = data[0]
    assert first.constraints[0].instruction_id == "count:keywords_multiple"
    assert "kaleidoscope" in first.prompt and first.constraints[0].kwargs["keyword1"] == \
        "kaleidoscope"
    scores = v.score_responses((item.prompt, item.constraints, "") for item in data)
    assert scores["n_prompts"] == len(data) and scores["instruction_loose"] == 0.0
