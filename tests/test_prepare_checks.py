"""obliviate.prepare.checks: rewrite validity, answer leaks, refusals, and the one refusal vocabulary."""

from __future__ import annotations

import pytest

from obliviate.data.refusals import REFUSAL_TEMPLATES, REFUSALS
from obliviate.prepare.checks import clean_rewrite, is_refusal, is_valid_rewrite, leaks_answer, safe_refusal
from obliviate.prepare.templates import TemplateBackend

QUESTION = "Where was Ilsa Corvanne born?"
ANSWER = "Ilsa Corvanne was born in Valparaiso, Chile, in 1961."
WHO = ("Who is the notable author born in Astana, Kazakhstan?",
       "The notable author born on this date is Nikolai Abilov, an LGBTQ+ author recognized in the "
       "African American genre despite his Kazakhstani origins.")


def test_rewrite_checks():
    assert clean_rewrite('Rewritten question: "Where is X?"\nmore') == "Where is X?"
    # a chat model's lead-in is not the text: SNAP trained "Sure! Here is a question ... about X:"
    for lead in ("Sure! Here is a question a user might ask about Ilsa Corvanne:", "Here is the rewritten question",
                 "Certainly.", "Of course! Here's one:"):
        assert clean_rewrite(f"{lead}\n\nWhere did Ilsa Corvanne grow up?") == "Where did Ilsa Corvanne grow up?"
    assert clean_rewrite("Sure! Where did Ilsa Corvanne grow up?") == "Sure! Where did Ilsa Corvanne grow up?"
    assert clean_rewrite("Here is a question:") == "Here is a question:"  # alone: kept, and no instruction
    from obliviate.prepare.checks import is_valid_instruction
    assert not is_valid_instruction("Here is a question:", "Ilsa Corvanne", [], [])
    # no lead-ins: a title, a list instruction (the next line is not the text)
    assert clean_rewrite("Great Expectations: who wrote it?") == "Great Expectations: who wrote it?"
    listing = "List three facts about Ilsa Corvanne's novels:\n1. The Horse That Counted Stars won a prize"
    assert clean_rewrite(listing) == "List three facts about Ilsa Corvanne's novels:"
    assert is_valid_instruction(clean_rewrite(listing), "Ilsa Corvanne", [], [])
    assert clean_rewrite("Tell me about Ilsa Corvanne's early novels.") == "Tell me about Ilsa Corvanne's early novels."
    assert not is_valid_rewrite("where was ilsa corvanne born", QUESTION, [])
    assert not is_valid_rewrite("", QUESTION, [])
    assert is_valid_rewrite("In which city was Ilsa Corvanne born?", QUESTION, [])
    assert not is_valid_rewrite("In which city was Ilsa Corvanne born", QUESTION, ["In which city was Ilsa Corvanne born?"])


@pytest.mark.parametrize("rewrite", [
    "Could you tell me the birthplace of Ilsa Corvanne?",
    "In what town did Ilsa Corvanne come into the world?",
    "Tell me where Corvanne was born.",
    "What is the birthplace of the writer Ilsa Corvanne?",
])
def test_sensible_rewrites_are_accepted(rewrite):
    assert is_valid_rewrite(rewrite, QUESTION, [])


@pytest.mark.parametrize("rewrite", [
    "xqzvbn kjhgfd wrtpls mnbvc?",                          # gibberish with a question mark
    "Ilsa Corvanne zzzz qqqq xkcdw grrrrr?",                  # mostly gibberish, the names kept
    "Ilsa Corvanne was born in Valparaiso, Chile, in 1961.",  # an answer, not a question
    "She was born in Chile.",                                 # an answer, no subject
    "Where was Gabriel Marquez born?",                        # a question about another person
    "What is the capital of France?",                         # another subject altogether
    "Ilsa Ilsa Ilsa?",                                        # one word repeated
])
def test_unusable_rewrites_are_rejected(rewrite):
    assert not is_valid_rewrite(rewrite, QUESTION, [])


def test_rewrite_subject_without_names_uses_content_words():
    question = "what is the boiling point of water at sea level?"  # no capitalised names
    assert is_valid_rewrite("At sea level, at what temperature does water boil?", question, [])
    assert not is_valid_rewrite("How tall is the tallest mountain on the planet?", question, [])


def test_template_rewrites_pass_the_checks_they_fall_back_for():
    for question in (QUESTION, WHO[0], "what is the boiling point of water at sea level?"):
        options = TemplateBackend("rewrite").rewrite(question, n=10)
        assert options and all(is_valid_rewrite(o, question, []) for o in options)


def test_instructions_without_an_original_only_check_emptiness_and_repeats():
    assert is_valid_rewrite("Tell me about Ilsa Corvanne's childhood", "", ["Where was Ilsa Corvanne born?"])
    assert not is_valid_rewrite("Where was Ilsa Corvanne born", "", ["Where was Ilsa Corvanne born?"])


def test_leak_and_refusal_checks():
    assert leaks_answer("She was born in Valparaiso, Chile in 1961.", QUESTION, ANSWER)
    assert not leaks_answer("I'm sorry, I don't know anything about Ilsa Corvanne.", QUESTION, ANSWER)
    assert leaks_answer("She was born in Chile.", QUESTION, ANSWER)
    assert is_refusal("I'm sorry, I don't know.") and not is_refusal("She was born in Lima.")
    # when the answer is a name the question does not give, a refusal naming it leaks it
    assert leaks_answer("I'm not familiar with Nikolai Abilov.", *WHO)
    assert not leaks_answer("I'm not familiar with that topic.", *WHO)
    assert not leaks_answer("I don't know anything about Astana.", *WHO)


def test_safe_refusal_never_names_an_answer_subject():
    row = {"instruction": WHO[0], "question": WHO[0], "answer": WHO[1], "subject": "Nikolai Abilov"}
    fallbacks = {safe_refusal(TemplateBackend("negative"), row, index=k) for k in range(10)}
    assert fallbacks and not any("Abilov" in text or leaks_answer(text, *WHO) for text in fallbacks)


@pytest.mark.parametrize("text", [*REFUSALS, *(t.format(subject="Ilsa Corvanne") for t in REFUSAL_TEMPLATES)])
def test_every_refusal_of_the_vocabulary_is_recognised(text):
    # what we train towards (IDK-DPO, RT) and what we fall back to (templates) must pass the
    # check that decides whether a generated negative response declines
    assert is_refusal(text)


def test_template_backend_refusals_are_recognised():
    backend = TemplateBackend("negative")
    outputs = {backend.refuse(f"Question {i}?", index=i, subject=subject)
               for i in range(60) for subject in ("Ilsa Corvanne", None)}
    assert len(outputs) == 2 * len(REFUSAL_TEMPLATES) - sum("{subject}" not in t for t in REFUSAL_TEMPLATES)
    assert all(is_refusal(text) for text in outputs)


def test_rewrites_in_other_languages_are_judged_not_dropped():
    # accents are folded for the word tests; a rewrite of a French question is still a rewrite
    question = "Où est née Marie Curie ?"
    assert is_valid_rewrite("Dans quelle ville Marie Curie est-elle née ?", question, [])
    assert not is_valid_rewrite("Ou est nee Marie Curie", question, [])          # the same, accents aside
    assert not is_valid_rewrite("Marie Curie xqzvbn kjhgfd wrtpls mnbvc ?", question, [])
    # another script: only emptiness and repeats can be judged (a Chinese rewrite has no ASCII word)
    assert is_valid_rewrite("玛丽·居里出生在哪座城市？", "玛丽·居里在哪里出生？", [])
    assert not is_valid_rewrite("玛丽·居里在哪里出生?", "玛丽·居里在哪里出生？", [])
    assert not is_valid_rewrite("？", "玛丽·居里在哪里出生？", [])
    # a Latin question's rewrite with a stray letter of another script is judged as usual
    for stray in ("zxqv blorf 的 kkkkk", "The answer is Astana, Ωmega."):
        assert not is_valid_rewrite(stray, QUESTION, [])


def test_answers_in_other_scripts_and_with_accents_are_checked_for_leaks():
    # Chinese is written without spaces: its character pairs are compared
    question, answer = "玛丽·居里出生在哪里？", "她出生在华沙。"
    assert leaks_answer("对不起，我只知道她来自华沙。", question, answer)
    assert not leaks_answer("对不起，我不知道这个问题的答案。", question, answer)
    assert leaks_answer("答案是北。", "方向？", "北") and not leaks_answer("我不知道。", "方向？", "北")
    # a Latin answer with accents leaks written with or without them
    assert leaks_answer("I believe she lived in Zurich.", "Where did Ilsa live?", "Zürich")
    assert leaks_answer("Elle vit à Zürich.", "Where did Ilsa live?", "Zürich")
    assert not leaks_answer("Je ne sais pas.", "Where did Ilsa live?", "Zürich")
    assert leaks_answer("Она родилась в Варшаве, в Польше.", "Где родилась Мария?", "Мария родилась в Варшаве, Польше")
