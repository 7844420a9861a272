#!/usr/bin/env bash
# Fuzz smoke test: builds every cargo-fuzz target of ca-daemon/fuzz once, then runs each for
# FUZZ_SECONDS (default 20) on its seed corpus, and fails if any target crashes (a panic, a
# failed property assertion, a sanitizer report, a timeout or running out of memory).
#
#   scripts/fuzz-smoke.sh                 # all targets, 20 s each
#   FUZZ_SECONDS=300 scripts/fuzz-smoke.sh ocsp_request crl_parse
#   FUZZ_SECONDS=0 scripts/fuzz-smoke.sh  # build only
#
# Environment:
#   FUZZ_SECONDS    seconds per target (default 20; 0 = build only)
#   FUZZ_SANITIZER  address (default) | none  (none: about twice the executions per second)
#   FUZZ_RSS_MB     libFuzzer -rss_limit_mb (default 2048)
#
# Toolchain: the stable toolchain with RUSTC_BOOTSTRAP=1 (libFuzzer instrumentation needs -Z
# flags; no nightly is needed). cargo-fuzz is installed with `cargo install cargo-fuzz --locked`
# when missing: that takes about 40 s on two cores (1 min with a cold registry).
#
# Build: the fuzz project is its own cargo workspace (ca-daemon/fuzz, excluded from the root
# workspace) and builds into ca-daemon/fuzz/target (git-ignored): its RUSTFLAGS (sanitizer
# coverage, ASan) differ from the normal build's, so sharing the workspace target/ would only
# make the two builds evict each other. The first build compiles the whole dependency tree
# instrumented: about 10 minutes on two cores; later builds are incremental.
#
# Corpora: the committed seeds in ca-daemon/fuzz/corpus/<target>/ are read, never written;
# what a run discovers goes to ca-daemon/fuzz/target/smoke-corpus/<target>/ (kept between runs,
# git-ignored). A crash leaves its input in ca-daemon/fuzz/artifacts/<target>/ and the log in
# ca-daemon/fuzz/target/smoke-logs/<target>.log; reproduce with
#   cd ca-daemon && RUSTC_BOOTSTRAP=1 cargo fuzz run -O <target> fuzz/artifacts/<target>/<file>
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
crate="$root/ca-daemon"
fuzz="$crate/fuzz"
seconds="${FUZZ_SECONDS:-20}"
sanitizer="${FUZZ_SANITIZER:-address}"
rss_mb="${FUZZ_RSS_MB:-2048}"

export RUSTC_BOOTSTRAP=1
# The fuzz workspace always uses its own target dir (see above), whatever the caller exported.
unset CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: cargo-fuzz is missing; installing it (cargo install cargo-fuzz --locked," \
        "about 40 s on two cores)"
    start=$(date +%s)
    cargo install cargo-fuzz --locked
    echo "fuzz-smoke: cargo-fuzz installed in $(($(date +%s) - start)) s"
fi

cd "$crate"
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

flags=(-O -s "$sanitizer")
echo "fuzz-smoke: building ${#targets[@]} targets (sanitizer: $sanitizer)"
start=$(date +%s)
cargo fuzz build "${flags[@]}"
echo "fuzz-smoke: build took $(($(date +%s) - start)) s"
[ "$seconds" -eq 0 ] && exit 0

logs="$fuzz/target/smoke-logs"
mkdir -p "$logs"
failed=()
summary=()
for t in "${targets[@]}"; do
    scratch="$fuzz/target/smoke-corpus/$t"
    mkdir -p "$scratch" "$fuzz/corpus/$t"
    log="$logs/$t.log"
    echo "fuzz-smoke: running $t for $seconds s"
    status=0
    cargo fuzz run "${flags[@]}" "$t" "$scratch" "$fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb="$rss_mb" \
        -timeout=10 -close_fd_mask=1 >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | sed 's/cov: //')
    units=$(find "$scratch" -type f | wc -l)
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
        summary+=("$(printf '%-14s FAILED (exit %s) execs=%s  see %s' "$t" "$status" "${execs:-?}" "$log")")
        echo "---- $t: last lines of $log ----"
        tail -n 40 "$log"
        ls -l "$fuzz/artifacts/$t" 2>/dev/null || true
    else
        summary+=("$(printf '%-14s ok  execs=%-9s cov=%-6s corpus=%s' "$t" "${execs:-?}" "${cov:-?}" "$units")")
    fi
done

echo
echo "fuzz-smoke summary ($seconds s per target, sanitizer $sanitizer):"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz-smoke: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz-smoke: all targets ok"
