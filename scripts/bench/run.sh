#!/usr/bin/env bash
# Benchmarks of ca-daemon side by side with the tools people use today (DESIGN.md §9).
#
#   scripts/bench/run.sh                 # every benchmark, full run; rewrites docs/benchmarks.md
#   scripts/bench/run.sh --only ocsp     # one benchmark (repeatable: --only crl --only reach)
#   scripts/bench/run.sh --smoke         # seconds per benchmark (CI): checks that they still run;
#                                        # results go to a temp dir, docs/ is left alone
#   scripts/bench/run.sh --assemble      # only rebuild docs/benchmarks.md from results/*.md
#
# Benchmarks: redemption, ocsp, crl, reach, scale, footprint, cluster. Loopback only; every step has a time limit.
# Needs openssl, wrk, hyperfine and /usr/bin/time; installs the missing ones with apt-get when
# running as root. Builds the release binaries once (cargo build --release).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ALL=(redemption ocsp crl reach scale footprint cluster)
MODE=full
ONLY=()
ASSEMBLE_ONLY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) MODE=smoke ;;
        --assemble) ASSEMBLE_ONLY=1 ;;
        --only)
            shift
            [ $# -gt 0 ] || { echo "--only needs a benchmark name: ${ALL[*]}" >&2; exit 2; }
            ONLY+=("$1") ;;
        --only=*) ONLY+=("${1#--only=}") ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ ${#ONLY[@]} -eq 0 ]; then ONLY=("${ALL[@]}"); fi
for b in "${ONLY[@]}"; do
    case " ${ALL[*]} " in *" $b "*) ;; *) echo "unknown benchmark: $b (one of: ${ALL[*]})" >&2; exit 2 ;; esac
done

commit=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null | head -1)" ]; then commit="$commit (+ uncommitted changes)"; fi
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
RESULTS="$ROOT/scripts/bench/results"
failed=()
if [ "$ASSEMBLE_ONLY" = 0 ]; then
# ---- peers and tools ---------------------------------------------------------------------
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v wrk >/dev/null || need+=(wrk)
command -v hyperfine >/dev/null || need+=(hyperfine)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing: ${need[*]}" >&2
        apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 \
            || { apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; }
    else
        echo "missing tools: ${need[*]}; install them (e.g. apt-get install ${need[*]})" >&2
        exit 1
    fi
fi

# ---- build -----------------------------------------------------------------------------
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
echo "building release binaries (ca-daemon, pki-bench)..." >&2
# The smoke run (CI) only checks that the benchmarks still run: it reuses the test build's
# profile (dependencies optimised, see the root Cargo.toml) instead of building the world twice.
if [ "$MODE" = smoke ]; then PROFILE=debug; PROFILE_FLAG=(); else PROFILE=release; PROFILE_FLAG=(--release); fi
timeout 3600 cargo build "${PROFILE_FLAG[@]}" -q -p ca-daemon -p pki-bench
export CA_DAEMON_BIN="$TARGET_DIR/$PROFILE/ca-daemon"
BENCH_BIN="$TARGET_DIR/$PROFILE/pki-bench"
# The daemon's own log level during the runs (production default).
export CA_DAEMON_LOG=${CA_DAEMON_LOG:-info}

if [ "$MODE" = smoke ]; then
    RESULTS=$(mktemp -d)
    trap 'rm -rf "$RESULTS"' EXIT
else
    RESULTS="$ROOT/scripts/bench/results"
    mkdir -p "$RESULTS"
fi

limit() { # seconds allowed for one benchmark
    if [ "$MODE" = smoke ]; then echo 300; return; fi
    case "$1" in
        redemption) echo 1500 ;; ocsp) echo 600 ;; crl) echo 900 ;;
        reach) echo 600 ;; scale) echo 1800 ;; footprint) echo 3600 ;; cluster) echo 1200 ;; *) echo 600 ;;
    esac
}

for b in "${ONLY[@]}"; do
    echo "=== $b ($MODE) ===" >&2
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    start=$(date -u '+%Y-%m-%d %H:%M UTC')
    work=$(mktemp -d)
    if timeout --kill-after=30 "$(limit "$b")" "$BENCH_BIN" "$b" --mode "$MODE" \
        --out "$RESULTS/$b.md.new" --work "$work"; then
        {
            cat "$RESULTS/$b.md.new"
            echo
            echo "_Measured $start on commit $commit; $(nproc) cores ($cpu); load average before the run: $load._"
            echo
        } > "$RESULTS/$b.md"
        rm -f "$RESULTS/$b.md.new"
    else
        echo "benchmark $b FAILED (or exceeded $(limit "$b") s)" >&2
        failed+=("$b")
        rm -f "$RESULTS/$b.md.new"
    fi
    rm -rf "$work"
done

fi # ASSEMBLE_ONLY

if [ "$MODE" = full ]; then
    DOC="$ROOT/docs/benchmarks.md"
    mem=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
    {
        cat <<EOF
# Benchmarks

ca-daemon measured side by side with what people use today (DESIGN.md §9): the openssl CLI,
\`openssl ocsp\`, \`openssl ca -gencrl\`, a bare HTTP server, hourly CRL polling. Every number is a
median over rounds, on loopback, on the machine below; client and server share its cores.

**This file is generated** by \`scripts/bench/run.sh\` from \`scripts/bench/results/*.md\` (one
section per benchmark; each section says when and on which commit it was measured). Do not edit
it by hand: re-run the script.

## Machine and build

| | |
| --- | --- |
| date of this assembly | $(date -u '+%Y-%m-%d %H:%M UTC') |
| git commit | $commit |
| CPU | $cpu, $(nproc) cores (\`nproc\`) |
| memory | $mem |
| kernel | $(uname -sr) |
| rustc | $(rustc --version 2>/dev/null || echo unknown) |
| build | \`cargo build --release\` (root Cargo.toml: \`lto = "thin"\`, \`codegen-units = 4\`) |
| peers | $(openssl version | cut -d' ' -f1-2); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); $(hyperfine --version) |

## How to reproduce

\`\`\`sh
scripts/bench/run.sh                  # all five, ~15-25 min on 2 cores; rewrites this file
scripts/bench/run.sh --only crl       # one of: ${ALL[*]}
scripts/bench/run.sh --smoke          # a few seconds each (CI), writes nothing here
\`\`\`

Run it on a quiet machine: the numbers below are only as good as the machine was idle (each
section records the load average before it ran). The benchmark code is the \`pki-bench\` crate
in \`scripts/bench/\`; the openssl peer scripts and configs it writes are in its source
(\`redemption.rs\`, \`ocsp.rs\`, \`crl.rs\`).

EOF
        echo "## Targets at a glance"
        echo
        for b in "${ALL[@]}"; do
            if [ -f "$RESULTS/$b.md" ]; then
                grep -E '^- .*(: |, )(met|\*\*MISSED\*\*)' "$RESULTS/$b.md" | sed "s/^- /- $b: /" || true
            fi
        done
        echo
        for b in "${ALL[@]}"; do
            if [ -f "$RESULTS/$b.md" ]; then
                cat "$RESULTS/$b.md"
            else
                echo "## $b"
                echo
                echo "_Not measured yet: run \`scripts/bench/run.sh --only $b\`._"
                echo
            fi
        done
        if [ -f "$ROOT/scripts/bench/findings.md" ]; then
            cat "$ROOT/scripts/bench/findings.md"
        fi
    } > "$DOC"
    echo "wrote $DOC" >&2
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
if [ "$ASSEMBLE_ONLY" = 1 ]; then exit 0; fi
echo "benchmarks done ($MODE): ${ONLY[*]}" >&2
