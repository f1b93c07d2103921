#!/usr/bin/env bash
# One prepared run on a lent GPU machine (see README "GPU checks"): installs the abi3 wheel carried
# in .gpu/, runs the GPU tests, the kernel benchmark and the end-to-end benchmark, and leaves logs
# and results under $OUT. SMOKE=1 runs the same plumbing on a CPU with tiny shapes. PART=tests,
# PART=kernels or PART=e2e (comma-separated) runs only those parts, e.g. to split the work over two
# device calls; T_FIRST/T_TESTS/T_KERNELS/T_E2E bound each part in seconds (the defaults add up to
# 540 s, so that the whole run fits one device call of up to 600 s); E2E_BUDGET is the time after
# which bench_e2e starts no new cell; KB_ARGS and E2E_ARGS add bench_kernels / bench_e2e options
# (e.g. KB_ARGS="--only decode", E2E_ARGS="--models 34B").
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
PY=${PY:-python3}
$PY -m pip install -q --no-deps --no-index --target /tmp/site .gpu/*.whl || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site
export CODELLAMA_FAST_SHARED="$PWD/.gpu/shared"
export GIT_SHA="$(cat .gpu/GIT_SHA 2>/dev/null)"  # the wheel's commit (`make gpu-prep`): the copied tree's git state can lag it
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, triton, transformers, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
  $PY -c "import codellama_fast, sys; print('codellama_fast from', codellama_fast.__file__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if [ "${SMOKE:-0}" = 1 ]; then
  KB="--smoke"; E2E="--smoke"; TESTS="tests/test_gpu.py"
else
  KB="--quick"; E2E="--budget-s ${E2E_BUDGET:-175}"
  TESTS="tests/test_gpu.py tests/test_decode_tuning.py tests/test_kernels.py tests/test_beam_search.py::test_beams_through_the_triton_kernels_equal_the_torch_path"
fi
# Tests that failed or never ran on a GPU before run first, so a run cut by its limit still has
# their full messages; the rest follow without them.
FIRST=${FIRST-"tests/test_gpu.py::test_shared_decode_real_sizes tests/test_gpu.py::test_samples_read_their_prompt_once_on_the_captured_state tests/test_gpu.py::test_beams_on_the_captured_state tests/test_gpu.py::test_kept_captured_state_serves_calls_of_other_lengths tests/test_gpu.py::test_conversations_taking_turns_on_the_captured_state tests/test_attention_shared_decode.py tests/test_gpu.py::test_programmatic_dependent_launch_gives_the_same_bits tests/test_decode_tuning.py::test_gpu_tune_picks_a_candidate_that_gives_the_default_bits tests/test_gpu.py::test_threads_sharing_an_engine_on_the_captured_paths tests/test_kernels.py::test_prompt_lookup_through_the_kernels_equals_plain_decoding tests/test_kernels.py::test_assisted_decoding_through_the_kernels_equals_plain_decoding tests/test_cache_growth.py::test_the_triton_kernels_equal_transformers_while_the_cache_grows tests/test_gpu.py::test_a_chats_next_turn_on_the_captured_state_prefills_only_its_new_tokens tests/test_gpu.py::test_shared_prompt_tokens_on_the_captured_state tests/test_kernels.py::test_shared_prompt_tokens_through_the_kernels_are_prefilled_once"}
[ "${SMOKE:-0}" = 1 ] && FIRST=""
DESELECT=""
for t in $FIRST; do DESELECT="$DESELECT --deselect $t"; done
PART=${PART:-tests,kernels,e2e}
want() { [[ ",$PART," == *",$1,"* ]]; }
if want tests; then
  # -v into the log: a run cut by its limit still shows which tests passed
  echo "== GPU tests"; : > "$OUT/tests.log"
  if [ -n "$FIRST" ]; then
    timeout "${T_FIRST:-140}" $PY -m pytest -v -rfE -p no:cacheprovider $FIRST >> "$OUT/tests.log" 2>&1
  fi
  timeout "${T_TESTS:-90}" $PY -m pytest -v -rfE --durations=10 -p no:cacheprovider $TESTS $DESELECT >> "$OUT/tests.log" 2>&1; tail -n 40 "$OUT/tests.log"
fi
if want kernels; then
  echo "== kernel benchmark"; timeout "${T_KERNELS:-90}" $PY benches/bench_kernels.py $KB ${KB_ARGS:-} --out "$OUT" > "$OUT/kernels.log" 2>&1; tail -n 40 "$OUT/kernels.log"
fi
if want e2e; then
  echo "== end-to-end benchmark"; timeout "${T_E2E:-220}" $PY benches/bench_e2e.py $E2E ${E2E_ARGS:-} --out "$OUT" --llama2-tokenizer .gpu/shared/tokenizers/llama2/tokenizer.model > "$OUT/e2e.log" 2>&1; tail -n 80 "$OUT/e2e.log"
fi
if want extras; then  # not in the default run: 8 samples of a 2048-token prompt and 4 beams of one, 7B, vs transformers
  echo "== samples and beams"
  timeout "${T_EXTRAS:-300}" bash -c "$PY benches/bench_generate.py --model 7B --batch 1 --prompt 2048 --new 64 --repeats 2 \
      --rules '{\"do_sample\": true, \"num_return_sequences\": 8}' --out '$OUT' && \
    $PY benches/bench_beams.py --model 7B --beams 4 --batch 1 --prompt 2048 --new 32 --repeats 2 --out '$OUT'" > "$OUT/extras.log" 2>&1
  tail -n 40 "$OUT/extras.log"
fi
ls -la "$OUT"
