#!/usr/bin/env bash
# The device check: the CUDA path proved and measured on one GPU, in under 10 minutes.
#
#   bash bench/gpu_check.sh [--data DIR] [--work DIR] [--budget SECONDS] [--epochs N] [--no-evaluate]
#   bash bench/gpu_check.sh --cpu-smoke [--data DIR | --archive FILE] [--work DIR]   (the plumbing, on the CPU)
#   bash bench/gpu_check.sh --stage-carry [--from DIR] [--data DIR]   (here, before a device call: see below)
#
# Run in the repository root. In order, each step under a time limit (the whole check under --budget,
# default 500 s, so that it ends and reports inside a 10-minute command):
#   1. packages: installs carried wheels (DIR/wheels/*.whl) when a package is missing, else names what is
#      missing in one line and stops; then the machine, versions, TF32 state and which ops sync the host
#   2. archive: the full CIFAR-10 archive from DIR/cifar10-jpeg.tar.gz with DIR/make_archive.py (~40 s), or
#      DIR/cifar-10-python.tar.gz if it is there, or --archive FILE
#   3. prepare: `python -m stages.prepare` in WORK (no DVC: the stage scripts run directly)
#   4. tests: `python -m pytest -q -ra tests/unit/test_cuda.py` (the CUDA tests)
#   5. train baseline, train mixup: `python -m stages.train VARIANT`, 35 epochs, fp32, seed 0, through
#      bench/gpu_check.py, which also reads the stage's peak GPU memory
#   6. benchmark: `python -m bench.train_speed --device cuda`
#   7. evaluate baseline, evaluate mixup: `python -m stages.evaluate VARIANT`, only if the budget has room
#   8. the report: per variant, training seconds, images per second, ms per step, peak GPU memory, peak and
#      final eval accuracy and the training path, beside the CPU study's run (study/runs) and its seeds'
#      spread; PASS/FAIL per goal: 35 epochs in <= 10 s of training (< 0.3 ms per step), >= 10x the
#      benchmark's DataLoader loop, accuracy within the CPU seeds' spread, the cuda-graph path, the tests.
# The stages run in WORK (default build/gpu_check/, git-ignored) with WORK/params.yaml: the project's params
# with device cuda, 35 epochs, fp32, seed 0, nothing capped, so the repository's own data/, models/ and
# metrics/ are never touched. Outputs: under $OUT when it is set (the device tool returns files from
# there), else WORK/out: gpu_check.log, report.txt, report.json, bench.txt, {baseline,mixup}-summary.json,
# {baseline,mixup}-epochs.tsv (8 files, flat: what the device tool brings back). Exit status 0 when every
# step ran and no goal failed.
#
# The data does not travel with the working tree (../shared is outside the repository), and the device
# machine lacks ruamel.yaml (params.yaml is read as DVC reads it). So, here, before the device call:
#   bash bench/gpu_check.sh --stage-carry        # copies ../shared/cifar10/{cifar10-jpeg.tar.gz,make_archive.py}
#                                                # into build/device/ and downloads the ruamel.yaml wheel there
# and name build/device (git-ignored, ~19 MB) in the call's `carry`. The device command is then just
#   PYTHONUNBUFFERED=1 bash bench/gpu_check.sh
# A missing package can be carried the same way: `python3 -m pip download --no-deps --only-binary=:all:
# --python-version 3.12 --implementation cp --platform manylinux_2_17_x86_64 -d build/device/wheels NAME==VERSION`
# (see the device README); the check installs build/device/wheels/*.whl into WORK/site when something is missing.
#
# --cpu-smoke: the same steps on the CPU, on 1,000 training images (make_archive.py --limit 100) or --archive,
# 1 epoch, a short benchmark of two loops, the mixup variant alone evaluated; tests/pipeline/test_gpu_check.py runs it so
# that this script cannot rot.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=${GPU_CHECK_DATA:-build/device}
WORK=${GPU_CHECK_WORK:-build/gpu_check}
BUDGET=${GPU_CHECK_BUDGET:-500}
ARCHIVE="" SMOKE=0 EPOCHS="" EVALUATE=1 STAGE=0 FROM="$ROOT/../shared/cifar10"
RUAMEL=ruamel.yaml==0.19.1  # requirements.txt's pin

usage() { sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case $1 in
        --data) DATA=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        --archive) ARCHIVE=$2; shift 2 ;;
        --budget) BUDGET=$2; shift 2 ;;
        --epochs) EPOCHS=$2; shift 2 ;;
        --no-evaluate) EVALUATE=0; shift ;;
        --cpu-smoke) SMOKE=1; shift ;;
        --stage-carry) STAGE=1; shift ;;
        --from) FROM=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
absolute() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
DATA=$(absolute "$DATA") WORK=$(absolute "$WORK")
[ -n "$ARCHIVE" ] && ARCHIVE=$(absolute "$ARCHIVE")
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python
else PY=python3
fi

if [ "$STAGE" = 1 ]; then  # here, before a device call: what must travel, in DATA
    mkdir -p "$DATA/wheels" || exit 1
    for f in cifar10-jpeg.tar.gz make_archive.py; do
        [ -f "$FROM/$f" ] || { echo "error: $FROM/$f not found (--from DIR names the folder holding it)" >&2; exit 1; }
        cp -f "$FROM/$f" "$DATA/" || exit 1
    done
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 -d "$DATA/wheels" "$RUAMEL" || exit 1
    echo "staged for the device call: $(du -sh "$DATA" | cut -f1) in $DATA:"; ls -l "$DATA" "$DATA/wheels"
    echo "carry: [\"${DATA#"$ROOT"/}\"]"
    exit 0
fi

if [ "$SMOKE" = 1 ]; then DEVICE=cpu LIMIT=100 EPOCHS=${EPOCHS:-1}
else DEVICE=cuda LIMIT="" EPOCHS=${EPOCHS:-35}
fi
OUTDIR=${OUT:-$WORK/out}
if [ -e "$WORK" ] && [ ! -e "$WORK/.gpu_check" ]; then
    echo "error: $WORK exists and is not this check's folder (no .gpu_check in it); name another with --work" >&2
    exit 2
fi
rm -rf "$WORK" && mkdir -p "$WORK" "$OUTDIR" && touch "$WORK/.gpu_check" || exit 1
cd "$ROOT" || exit 1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
START=$SECONDS

record() {  # NAME STATUS: one line in the log and in WORK/steps.tsv, which the report reads
    printf '%s\t%s\n' "$1" "$2" >>"$WORK/steps.tsv"
    echo "$1: $2"
}

# run_step NAME NEED CAP [--log FILE] CMD...: CMD under a limit of CAP seconds or what is left of the budget;
# skipped when less than NEED seconds are left. Returns CMD's status (1 when skipped).
run_step() {
    local name=$1 need=$2 cap=$3 log="" left limit t0 rc
    shift 3
    if [ "$1" = --log ]; then log=$2; shift 2; fi
    left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt "$need" ]; then
        record "$name" "skipped (${left} s of the ${BUDGET} s budget left; it needs about ${need} s)"
        return 1
    fi
    limit=$((left < cap ? left : cap))
    echo "== $name (limit ${limit} s): $*"
    t0=$SECONDS
    if [ -n "$log" ]; then
        timeout -k 10 "$limit" "$@" 2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
    else
        timeout -k 10 "$limit" "$@"
        rc=$?
    fi
    if [ "$rc" = 0 ]; then record "$name" "ok ($((SECONDS - t0)) s)"
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then record "$name" "TIMED OUT after $((SECONDS - t0)) s"
    else record "$name" "FAILED (exit $rc, $((SECONDS - t0)) s)"
    fi
    return "$rc"
}

check() {
    local missing status=0 prepared=0 wheels
    echo "gpu_check: $([ "$SMOKE" = 1 ] && echo "cpu smoke" || echo "device check"), device $DEVICE, $EPOCHS epochs," \
         "budget ${BUDGET} s; data $DATA; work $WORK; outputs $OUTDIR; python $PY"
    missing=$("$PY" -m bench.gpu_check missing) || { record packages "FAILED ($PY cannot run)"; return 3; }
    wheels=$(ls "$DATA"/wheels/*.whl 2>/dev/null)
    if [ -n "$missing" ] && [ -n "$wheels" ]; then
        echo "missing: $missing; installing the carried wheels into $WORK/site"
        # shellcheck disable=SC2086  # one argument per wheel
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
            $wheels && export PYTHONPATH="$WORK/site:$PYTHONPATH"
        missing=$("$PY" -m bench.gpu_check missing)
    fi
    if [ -n "$missing" ]; then
        record packages "FAILED: missing Python packages: $missing (carry their wheels in $DATA/wheels: see the header of bench/gpu_check.sh)"
        return 3
    fi
    record packages ok
    run_step preflight 0 120 "$PY" -m bench.gpu_check preflight --device "$DEVICE" --json "$WORK/machine.json" ||
        return 4
    "$PY" -m bench.gpu_check setup "$WORK" --device "$DEVICE" --epochs "$EPOCHS" || return 1

    mkdir -p "$WORK/data/raw"
    local raw="$WORK/data/raw/cifar-10-python.tar.gz"
    if [ -n "$ARCHIVE" ]; then
        if cp "$ARCHIVE" "$raw"; then record archive "ok (copied $ARCHIVE)"; else record archive "FAILED (copy)"; fi
    elif [ -f "$DATA/cifar-10-python.tar.gz" ] && [ -z "$LIMIT" ]; then
        if cp "$DATA/cifar-10-python.tar.gz" "$raw"; then record archive "ok (copied $DATA/cifar-10-python.tar.gz)"
        else record archive "FAILED (copy)"; fi
    elif [ -f "$DATA/make_archive.py" ] && [ -f "$DATA/cifar10-jpeg.tar.gz" ]; then
        run_step archive 30 180 "$PY" "$DATA/make_archive.py" "$raw" ${LIMIT:+--limit "$LIMIT"}
    else
        record archive "FAILED: no $DATA/cifar10-jpeg.tar.gz and make_archive.py (bash bench/gpu_check.sh --stage-carry, then carry build/device)"
    fi
    if [ -f "$raw" ] && run_step prepare 10 120 env -C "$WORK" "$PY" -m stages.prepare; then prepared=1; fi

    run_step tests 30 200 --log "$WORK/pytest.txt" "$PY" -m pytest -q -ra -p no:cacheprovider tests/unit/test_cuda.py || status=1

    if [ "$prepared" = 1 ]; then
        for variant in baseline mixup; do
            run_step "train $variant" 30 240 env -C "$WORK" "$PY" -m bench.gpu_check train "$variant" \
                --json "$WORK/train-$variant.json" || status=1
        done
        if [ "$SMOKE" = 1 ]; then
            set -- --device cpu --steps 5 --warmup 1 --threads 1 --loops project,dataloader
        else
            set -- --device cuda
        fi
        run_step benchmark 40 150 --log "$WORK/bench.txt" env -C "$WORK" "$PY" -m bench.train_speed "$@" || status=1
        if [ "$EVALUATE" = 1 ]; then
            # the smoke evaluates one variant: the same plumbing, 10 s less
            for variant in $([ "$SMOKE" = 1 ] && echo mixup || echo baseline mixup); do
                if [ -f "$WORK/models/$variant/final.pt" ]; then
                    run_step "evaluate $variant" 45 90 env -C "$WORK" "$PY" -m stages.evaluate "$variant" || status=1
                fi
            done
        else
            record evaluate "skipped (--no-evaluate)"
        fi
    else
        status=1
        record train "skipped: no prepared data"
    fi

    echo
    echo "== report ($((SECONDS - START)) s so far)"
    timeout 120 "$PY" -m bench.gpu_check report --work "$WORK" --out "$OUTDIR" $([ "$SMOKE" = 1 ] && echo --smoke) ||
        status=1
    echo "gpu_check: done in $((SECONDS - START)) s, exit status $status"
    return "$status"
}

check 2>&1 | tee "$OUTDIR/gpu_check.log"
exit "${PIPESTATUS[0]}"
