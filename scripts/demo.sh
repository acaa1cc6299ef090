#!/usr/bin/env bash
# The main job: prepare CMUdict G2P data, train a small attention GRU for a few minutes, show predictions, and end
# on the test split's WER/PER, its size and where the full report is. Sets up .venv first. Safe to run again: it
# starts a fresh run each time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
cw=.venv/bin/crossway
$cw data g2p data/g2p > /dev/null
echo "== data: $(wc -l < data/g2p/train.tsv) train / $(wc -l < data/g2p/valid.tsv) valid / $(wc -l < data/g2p/test.tsv) test rows in data/g2p"
$cw train configs/g2p_demo.yaml --overwrite "$@"
echo "== sample predictions (word, then predicted phonemes)"
words=$(mktemp)
printf '%s\n' crossway tokenizer encoder decoder attention phoneme pytorch bahdanau supercalifragilistic > "$words"
$cw translate --model runs/g2p-demo --input "$words" | paste "$words" -
rm -f "$words"
echo "== test split (WER: words with any phoneme wrong; PER: phoneme edits per reference phoneme)"
$cw evaluate --model runs/g2p-demo --data data/g2p/test.tsv   # a short summary; the full JSON report in the run
