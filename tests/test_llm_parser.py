"""The LLM output parser on the kinds of output small models write."""

import pytest

from irllrec_dist.llm.parser import FAILED, OK, REPAIRED, clean_intents, lenient_loads, parse_output

GOOD = '{"profile": "A quiet cafe for remote work.", "intents": ["quiet place to work", "coffee lovers"]}'
P = "A quiet cafe for remote work."
I2 = ["quiet place to work", "coffee lovers"]

# (name, model output, status, profile, intents, a reason that must be reported or None)
CASES = [
    ("plain json", GOOD, OK, P, I2, None),
    ("reasoning then json", "The item offers wifi and outlets, so people go there to work.\n" + GOOD, OK, P, I2, None),
    ("text after json", GOOD + "\nI hope this helps!", OK, P, I2, None),
    ("code fence", "Reasoning first.\n```json\n" + GOOD + "\n```", OK, P, I2, None),
    ("code fence without lang", "```\n" + GOOD + "\n```", OK, P, I2, None),
    (
        "trailing commas",
        '{"profile": "A quiet cafe for remote work.", "intents": ["quiet place to work", "coffee lovers",],}',
        REPAIRED,
        P,
        I2,
        "trailing comma",
    ),
    (
        "single quotes",
        "{'profile': 'A quiet cafe for remote work.', 'intents': ['quiet place to work', 'coffee lovers']}",
        REPAIRED,
        P,
        I2,
        "single quotes",
    ),
    (
        "apostrophe inside single quotes",
        "{'profile': 'A cafe.', 'intents': ['people's choice']}",
        REPAIRED,
        "A cafe.",
        ["people's choice"],
        "single quotes",
    ),
    (
        "unescaped inner double quotes",
        '{"profile": "A "great" cafe.", "intents": ["work"]}',
        REPAIRED,
        'A "great" cafe.',
        ["work"],
        "unescaped quote in string",
    ),
    (
        "cut off inside list item",
        '{"profile": "A quiet cafe for remote work.", "intents": ["quiet place to work", "coffee lovers", "late ni',
        REPAIRED,
        P,
        I2,
        "cut-off last list item dropped",
    ),
    (
        "cut off after list item",
        '{"profile": "A quiet cafe for remote work.", "intents": ["quiet place to work", "coffee lovers"',
        REPAIRED,
        P,
        I2,
        "unclosed list",
    ),
    (
        "cut off after list",
        '{"profile": "A quiet cafe for remote work.", "intents": ["quiet place to work", "coffee lovers"]',
        REPAIRED,
        P,
        I2,
        "unclosed object",
    ),
    (
        "cut off inside profile",
        '{"intents": ["work"], "profile": "A quiet cafe for re',
        REPAIRED,
        "A quiet cafe for re",
        ["work"],
        "unterminated string",
    ),
    (
        "intents as comma string",
        '{"profile": "A quiet cafe for remote work.", "intents": "quiet place to work, coffee lovers"}',
        REPAIRED,
        P,
        I2,
        "intents given as a string",
    ),
    (
        "intents as semicolon string",
        '{"profile": "X.", "intents": "a; b;"}',
        REPAIRED,
        "X.",
        ["a", "b"],
        "intents given as a string",
    ),
    (
        "duplicate intents",
        '{"profile": "X.", "intents": ["Coffee", "coffee", "work", "Work "]}',
        REPAIRED,
        "X.",
        ["Coffee", "work"],
        "duplicate intents removed",
    ),
    (
        "empty intents strings",
        '{"profile": "X.", "intents": ["", "  ", "work", "..."]}',
        REPAIRED,
        "X.",
        ["work"],
        "empty or placeholder intents dropped",
    ),
    (
        "numbered and bulleted intents",
        '{"profile": "X.", "intents": ["1. work", "- coffee", "(3) wifi."]}',
        REPAIRED,
        "X.",
        ["work", "coffee", "wifi"],
        None,
    ),
    (
        "repeated intents loop cut off",
        '{"profile": "X.", "intents": ["a", "b", "a", "b", "a", "b", "a", "b", "a',
        REPAIRED,
        "X.",
        ["a", "b"],
        "duplicate intents removed",
    ),
    (
        "repeated profile sentences",
        '{"profile": "Great food. Great food. Great food. Cheap.", "intents": ["x"]}',
        REPAIRED,
        "Great food. Cheap.",
        ["x"],
        "repetition removed from profile",
    ),
    (
        "repeated phrase run in profile",
        '{"profile": "very very very very good", "intents": ["x"]}',
        REPAIRED,
        "very good",
        ["x"],
        "repetition removed from profile",
    ),
    (
        "answer repeated: last wins",
        '{"profile": "First.", "intents": ["a"]}\n{"profile": "Second.", "intents": ["b"]}',
        OK,
        "Second.",
        ["b"],
        None,
    ),
    (
        "echoed template example ignored",
        'Format: {"profile": "<one or two sentences summarising the item>", '
        '"intents": ["<short intent>", "..."]}\nAnswer: ' + GOOD,
        OK,
        P,
        I2,
        None,
    ),
    (
        "only the echoed template",
        '{"profile": "<one or two sentences summarising the item>", "intents": ["<short intent>", "..."]}',
        FAILED,
        "",
        [],
        None,
    ),
    ("capitalised keys", '{"Profile": "X.", "Intents": ["a"]}', REPAIRED, "X.", ["a"], "read as 'profile'"),
    ("synonym keys", '{"summary": "X.", "intent": ["a"]}', REPAIRED, "X.", ["a"], "read as 'intents'"),
    (
        "unquoted keys and values",
        "{profile: A cafe, intents: [work, coffee]}",
        REPAIRED,
        "A cafe",
        ["work", "coffee"],
        "unquoted key",
    ),
    ("missing commas", '{"profile": "X." "intents": ["a" "b"]}', REPAIRED, "X.", ["a", "b"], "missing comma"),
    (
        "no opening brace",
        'Answer: "profile": "X.", "intents": ["a", "b"]',
        REPAIRED,
        "X.",
        ["a", "b"],
        "no opening brace",
    ),
    (
        "key: value lines",
        "Reasoning.\nProfile: A quiet cafe for remote work.\nIntents: quiet place to work, coffee lovers",
        REPAIRED,
        P,
        I2,
        "no JSON object; read 'key: value' lines",
    ),
    ("markdown key lines", '**Profile:** X.\n**Intents:** ["a", "b"]', REPAIRED, "X.", ["a", "b"], None),
    (
        "intent objects",
        '{"profile": "X.", "intents": [{"name": "a"}, {"intent": "b"}]}',
        REPAIRED,
        "X.",
        ["a", "b"],
        "intent items are objects",
    ),
    (
        "nested intent lists",
        '{"profile": "X.", "intents": [["a", "b"], "c"]}',
        REPAIRED,
        "X.",
        ["a", "b", "c"],
        "nested intent lists flattened",
    ),
    (
        "non-text intents",
        '{"profile": "X.", "intents": ["a", null, true, 3]}',
        REPAIRED,
        "X.",
        ["a", "3"],
        "non-text intents dropped",
    ),
    (
        "profile as list",
        '{"profile": ["X.", "Y."], "intents": ["a"]}',
        REPAIRED,
        "X. Y.",
        ["a"],
        "profile given as a list",
    ),
    (
        "escapes",
        '{"profile": "Caf\\u00e9 \\"Luna\\".\\nNice.", "intents": ["a"]}',
        OK,
        'Café "Luna". Nice.',
        ["a"],
        None,
    ),
    ("braces in reasoning", 'I think {this} matters. {"profile": "X.", "intents": ["a"]}', OK, "X.", ["a"], None),
    (
        "profile and intents in separate objects",
        '{"profile": "X."}, \n{intents: ["a", "b", "c',
        REPAIRED,
        "X.",
        ["a", "b"],
        "profile and intents read from separate objects",
    ),
    (
        "intents key outside the object",
        '{"profile": "X."}, "intents": ["a"], "json": [{"name": "n", "d": "x',
        REPAIRED,
        "X.",
        ["a"],
        "profile and intents read from separate objects",
    ),
    (
        "intents object before profile object",
        '{"intents": ["a"]} and later {"profile": "X."}',
        REPAIRED,
        "X.",
        ["a"],
        "profile and intents read from separate objects",
    ),
    (
        "repeated reasoning then cut-off profile",
        "Same line.\n" * 20 + '{"profile": "X. Y.", "',
        FAILED,
        "X. Y.",
        [],
        "no intents",
    ),
    # failures: whatever was read is kept for the fallback
    ("empty output", "", FAILED, "", [], "empty output"),
    ("whitespace output", "   \n ", FAILED, "", [], "empty output"),
    ("prose only", "This cafe is nice and quiet.", FAILED, "", [], "no JSON object"),
    ("empty intents list", '{"profile": "X.", "intents": []}', FAILED, "X.", [], "empty intents"),
    ("missing intents", '{"profile": "X."}', FAILED, "X.", [], "no intents"),
    ("empty profile", '{"profile": "", "intents": ["a"]}', FAILED, "", ["a"], "empty profile"),
    ("missing profile", '{"intents": ["a"]}', FAILED, "", ["a"], "no profile"),
    ("only placeholders", '{"profile": "...", "intents": ["..."]}', FAILED, "", [], "empty profile"),
    ("cut off right after key", '{"profile": "X.", "intents": ', FAILED, "X.", [], "empty intents"),
    ("garbage tokens", "ĠĠ the the ,,, }}} ]] {{", FAILED, "", [], None),
    ("unrelated json", '{"answer": 42}', FAILED, "", [], "no JSON object"),
]


@pytest.mark.parametrize("name,text,status,profile,intents,reason", CASES, ids=[c[0] for c in CASES])
def test_parse_cases(name, text, status, profile, intents, reason):
    r = parse_output(text)
    assert r.status == status, (r, name)
    assert r.profile == profile
    assert r.intents == intents
    if status == OK:
        assert r.reasons == []
    else:
        assert r.reasons, "a repair or failure must say why"
    if reason is not None:
        assert any(reason in x for x in r.reasons), r.reasons


def test_caps_and_clipping():
    many = ", ".join(f'"intent {k}"' for k in range(20))
    r = parse_output('{"profile": "X.", "intents": [' + many + "]}", max_intents=5)
    assert r.status == REPAIRED and r.intents == [f"intent {k}" for k in range(5)]
    assert any("kept the first 5" in x for x in r.reasons)
    long_profile = " ".join(["word"] * 50) + " " + " ".join(f"w{k}" for k in range(400))
    r = parse_output(
        '{"profile": "' + long_profile + '", "intents": ["' + "x " * 100 + '"]}',
        max_profile_chars=100,
        max_intent_chars=20,
    )
    assert r.status == REPAIRED and len(r.profile) <= 100 and len(r.intents[0]) <= 20
    assert any("profile clipped" in x for x in r.reasons) and any("intents clipped" in x for x in r.reasons)


def test_deep_nesting_and_huge_input_do_not_crash():
    assert parse_output("[" * 5000 + "{").status == FAILED
    assert parse_output('{"profile": ' + "[" * 5000).status == FAILED
    big = "blah " * 50_000 + GOOD
    assert parse_output(big).intents == I2


def test_lenient_loads_and_clean_intents_directly():
    v, flags = lenient_loads("{'a': [1, 2,], b: \"x\"")
    assert v == {"a": [1, 2], "b": "x"}
    assert {"single quotes", "trailing comma", "unquoted key", "unclosed object"} <= set(flags)
    assert clean_intents("a, b, a") == (["a", "b"], ["intents given as a string", "duplicate intents removed"])
    assert clean_intents(None) == ([], [])


def test_parser_is_deterministic_and_pure():
    text = "reasoning {'profile': 'X', 'intents': 'a, b, b'}"
    assert parse_output(text) == parse_output(text)
