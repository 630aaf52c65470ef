#!/usr/bin/env bash
# The seed paper's claim, measured with the studio's own commands: do pairs the target model could
# plausibly have written (low perplexity under it) teach DPO better than a random sample of the
# same size? Both policies are judged against the base by a reward model trained on prompts that
# neither saw, on prompts that none of the three saw.
#
#   benchmarks/filtering_experiment.sh [WORKSPACE] [SEED]
#
# Sizes fit a 2-core CPU in about an hour. The judge trains one epoch on its 400 pairs and is scored
# on the evaluation part's 100 pairs; each DPO run is one epoch of its 250 pairs (as many steps for
# both) at the guided run's learning rate. JUDGE_STEPS, DPO_STEPS, DPO_LR and EVAL_PROMPTS change them.
set -euo pipefail
WS=${1:-./filtering-experiment}
SEED=${2:-0}
HH=${HH_FILE:-../shared/data/hh-rlhf-harmless-sample.jsonl.gz}
STUDIO=alignstudio
[ -x .venv/bin/alignstudio ] && STUDIO=.venv/bin/alignstudio
# alignstudio COMMAND ARGS... --workspace WS [--models-dir DIR]
A() { "$STUDIO" "$@" --workspace "$WS" ${MODELS_DIR:+--models-dir "$MODELS_DIR"}; }
last_run() { A runs --json | python3 -c "import json,sys; print(max(r['id'] for r in json.load(sys.stdin)))"; }

A import "$HH" --dataset hh
# Prompts: half for the policies, 40% for the judge, 10% (about 100) to evaluate on.
A split --dataset hh --into hh-train hh-rest --share 0.5 --seed "$SEED"
A split --dataset hh-rest --into hh-judge hh-eval --share 0.8 --seed "$SEED"
# The plausible half of the training pairs: perplexity of every response under the default model, then
# the half of the pairs whose less plausible side has the lower perplexity (the filter's quantile).
A score --dataset hh-train
A filter --dataset hh-train --keep-quantile 0.5 --into hh-plausible
KEPT=$(A datasets --json | python3 -c "import json,sys; print(next(d['pairs'] for d in json.load(sys.stdin) if d['name'] == 'hh-plausible'))")
TOTAL=$(A datasets --json | python3 -c "import json,sys; print(next(d['pairs'] for d in json.load(sys.stdin) if d['name'] == 'hh-train'))")
# The control: as many pairs, drawn at random from the same training half.
A split --dataset hh-train --by pair --share "$(python3 -c "print($KEPT / $TOTAL)")" --into hh-random hh-unused --seed "$SEED"

A train rm --dataset hh-judge --eval-dataset hh-eval --max-steps "${JUDGE_STEPS:--1}" --seed "$SEED"
JUDGE=$(last_run)
DPO=(--max-steps "${DPO_STEPS:--1}" --learning-rate "${DPO_LR:-5e-4}" --seed "$SEED")
A train dpo --dataset hh-plausible "${DPO[@]}"
PLAUSIBLE=$(last_run)
A train dpo --dataset hh-random "${DPO[@]}"
RANDOM_RUN=$(last_run)
A rm-report "$JUDGE"
for POLICY in "$PLAUSIBLE" "$RANDOM_RUN"; do
  A evaluate --policy-run "$POLICY" --judge-run "$JUDGE" --prompts hh-eval --limit "${EVAL_PROMPTS:-100}"
done
