from crossway.data.g2p import prepare_g2p, split_of
from crossway.data.text import read_tsv

LEXICON = {
    "read": [["R", "IY1", "D"], ["R", "EH1", "D"]],
    "live": [["L", "IH1", "V"], ["L", "AY1", "V"]],
    "a.m.": [["EY2", "EH1", "M"]],
    "'cause": [["K", "AH0", "Z"]],
    "able-bodied": [["EY1", "B", "AH0", "L"]],
    "o'neil": [["OW0", "N", "IY1", "L"]],
    "either": [["IY1", "DH", "ER0"], ["IY0", "DH", "ER0"]],  # equal once stress is removed
}
WORDS = [f"w{c}{d}" for c in "abcdefghij" for d in "klmnopqrst"]


def test_rule_stress_and_all_pronunciations(tmp_path):
    stats = prepare_g2p(tmp_path, lexicon=LEXICON)
    rows = [p for name in ("train", "valid", "test") for p in read_tsv(tmp_path / f"{name}.tsv")]
    words = {p.src for p in rows}
    assert words == {"read", "live", "o'neil", "either"}
    assert stats["words_dropped_by_rule"] == 3
    assert sorted(p.tgt for p in rows if p.src == "read") == ["R EH D", "R IY D"]
    assert [p.tgt for p in rows if p.src == "either"] == ["IY DH ER"]
    assert not any(ch.isdigit() for p in rows for ch in p.tgt)
    prepare_g2p(tmp_path / "s", keep_stress=True, lexicon=LEXICON)
    kept = [p for n in ("train", "valid", "test") for p in read_tsv(tmp_path / "s" / f"{n}.tsv")]
    assert sorted(p.tgt for p in kept if p.src == "either") == ["IY0 DH ER0", "IY1 DH ER0"]


def test_split_is_stable_disjoint_and_about_90_5_5(tmp_path):
    lexicon = {w: [["AH"]] for w in WORDS}
    prepare_g2p(tmp_path, lexicon=lexicon)
    splits = {n: {p.src for p in read_tsv(tmp_path / f"{n}.tsv")} for n in ("train", "valid", "test")}
    assert set().union(*splits.values()) == set(WORDS)
    assert sum(len(s) for s in splits.values()) == len(WORDS)
    assert all(w in splits[split_of(w)] for w in WORDS)
    assert split_of("hello") == split_of("hello") == "train"  # fixed by SHA-1, not Python's hash seed
    counts = [split_of(f"word{i}") for i in range(20000)]
    assert 0.88 < counts.count("train") / 20000 < 0.92
