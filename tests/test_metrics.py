import pytest

from crossway.metrics import METRICS, edit_distance, error_rates, position_errors


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["a", "b"]) == 2
    assert edit_distance(["a", "b"], ["a", "b"]) == 0


def test_wer_counts_a_word_right_if_it_matches_any_reference():
    hyps = [["R", "EH", "D"], ["L", "IH", "V"], ["K", "AE", "T"]]
    refs = [[["R", "IY", "D"], ["R", "EH", "D"]], [["L", "AY", "V"]], [["K", "AE", "T", "S"]]]
    m = error_rates(hyps, refs)
    assert m["wer"] == pytest.approx(2 / 3) and m["exact_match"] == pytest.approx(1 / 3)
    # PER: distance to the closest reference over its length: 0/3 + 1/3 + 1/4 -> (0 + 1 + 1) / (3 + 3 + 4)
    assert m["per"] == pytest.approx(2 / 10)
    assert m["n"] == 3


def test_per_uses_the_closest_reference():
    m = error_rates([["A", "B", "C"]], [[["X", "Y", "Z", "W", "V"], ["A", "B"]]])
    assert m["per"] == pytest.approx(1 / 2)


def test_cer_on_characters():
    m = error_rates([["ab"]], [[["ac"]]])
    assert m["cer"] == pytest.approx(1 / 2)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        error_rates([["a"]], [])


def test_metrics_table_has_the_caption_metrics():
    assert METRICS["bleu4"] == METRICS["cider"] == "max"
    assert METRICS["bleu"] == "max" and METRICS["wer"] == "min"


def test_position_errors_follow_the_alignment():
    ref = "a b c".split()
    assert position_errors(ref, ref) == [False, False, False]
    assert position_errors("a c".split(), ref) == [False, True, False]  # deletion
    assert position_errors("a q c".split(), ref) == [False, True, False]  # substitution
    assert position_errors("a x b c".split(), ref) == [False, True, False]  # insertion before b
    assert position_errors("a b c d".split(), ref) == [False, False, True]  # trailing insertion: the last one
    assert position_errors([], ref) == [True, True, True]
    assert position_errors(["x"], []) == []
    # an early deletion costs one position, not every later one (a shifted comparison would mark all four)
    assert position_errors("b c d e".split(), "a b c d e".split()) == [True, False, False, False, False]
