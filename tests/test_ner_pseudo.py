from mtpf.data.ner_pseudo import IGNORE, LabelledSentences, align_first_subtoken, tokenize_labelled
from mtpf.encoder import load_tokenizer


def test_first_subtoken_alignment():
    assert align_first_subtoken([None, 0, 0, 1, 2, 2, None], [5, 6, 7]) == [IGNORE, 5, IGNORE, 6, 7, IGNORE, IGNORE]


def test_long_sentences_are_windowed_on_word_boundaries(tiny_bert):
    tok = load_tokenizer(tiny_bert)
    words = [f"unbelievably{i}" for i in range(40)]  # several pieces per word
    sents = LabelledSentences([words, ["short", "one"]], [list(range(40)), [1, 2]], 41, [])
    ids, labels = tokenize_labelled(tok, sents, max_length=24)
    assert len(ids) > 2 and all(len(x) <= 24 for x in ids)
    # every word keeps exactly one label, in order, across the windows
    kept = [l for lab in labels[:-1] for l in lab if l != IGNORE]
    assert kept == list(range(40))
    assert [l for l in labels[-1] if l != IGNORE] == [1, 2]
