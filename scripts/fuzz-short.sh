#!/bin/sh
# The fuzz harnesses of fuzz/ as TAP, "ok N - fuzz <name>", which
# scripts/run-tests.sh counts; exits non-zero when a harness fails.
#
# usage: scripts/fuzz-short.sh --replay [FUZZ_BUILD_DIR]  (make test, make fuzz-replay)
#        scripts/fuzz-short.sh [FUZZ_BUILD_DIR]           (make fuzz-short)
#        scripts/fuzz-short.sh --summary NAME LIBFUZZER_LOG
# FUZZ_BUILD_DIR defaults to build-fuzz.
#
# --replay: each harness runs, once each and in name order, the seeds in
# fuzz/corpus/<name>/ and the findings in fuzz/findings/ named for it
# (<name> without "fuzz_", then "-": segment-*, index-*, manifest-*, archive-*),
# without fuzzing: the same inputs and the same outcome on every run.
# This is what `make test` runs.
#
# Without --replay: each harness runs its seeds and then fuzzes for
# FUZZ_SHORT_SECONDS (default 10) seconds -- random, so never part of
# `make test`.  New inputs go to a temporary corpus (the checked-in seeds
# stay as they are); a failing input is kept in
# FUZZ_BUILD_DIR/short-artifacts/<name>/.
here=$(cd "$(dirname "$0")/.." && pwd)
names="fuzz_segment fuzz_index fuzz_manifest fuzz_archive"
LC_ALL=C; export LC_ALL                  # glob order: byte order of the names

# One line from a libFuzzer log: runs, speed, coverage, corpus size.
summary() {
    awk -v name="$1" '
        / cov: / { last = $0 }
        /^Done [0-9]+ runs in/ { runs = $2; secs = $5 }
        /^stat::average_exec_per_sec:/ { eps = $2 }
        /^stat::new_units_added:/ { added = $2 }
        /^stat::number_of_executed_units:/ { units = $2 }
        END {
            cov = last; sub(/^.* cov: /, "cov: ", cov); sub(/ lim: .*$/, "", cov)
            sub(/ exec\/s: .*$/, "", cov)
            if (runs == "") printf "%s: stopped after %s runs, %s\n", name, units, cov
            else printf "%s: %s runs in %s s (%s/s), %s, %s new units\n", name, runs, secs, eps, cov, added
        }' "$2"
}

if [ "$1" = "--summary" ]; then
    summary "$2" "$3"
    exit 0
fi
replay=0
if [ "$1" = "--replay" ]; then
    replay=1
    shift
fi

build=${1:-build-fuzz}
secs=${FUZZ_SHORT_SECONDS:-10}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/takhin-fuzz-short.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

# How many inputs fuzz/findings/ holds for harness $1.
count_findings() {
    n=0
    for f in "$here/fuzz/findings/${1#fuzz_}"-*; do [ -f "$f" ] && n=$((n + 1)); done
    echo $n
}

# Replay harness $1 (binary $2) over its seeds and findings; TAP point $3.
replay_one() {
    name=$1; bin=$2; i=$3
    set --
    for f in "$here/fuzz/corpus/$name"/* "$here/fuzz/findings/${name#fuzz_}"-*; do
        [ -f "$f" ] && set -- "$@" "$f"
    done
    total=$#
    found=$(count_findings "$name")
    start=$(date +%s)
    "$bin" -seed=1 -timeout=20 "$@" > "$tmp/$name/log" 2>&1
    rc=$?
    ran=$(grep -c '^Executed ' "$tmp/$name/log")
    echo "# $name: replayed $ran of $total inputs ($((total - found)) seeds, $found findings)" \
         "[$(( $(date +%s) - start )) s wall]"
    if [ $rc -eq 0 ] && [ "$ran" -eq "$total" ] && [ "$total" -gt 0 ]; then
        echo "ok $i - fuzz $name"
        return 0
    fi
    echo "not ok $i - fuzz $name (libFuzzer exit $rc, $ran of $total inputs run)"
    last=$(grep '^Running: ' "$tmp/$name/log" | tail -n 1 | sed 's/^Running: //')
    [ -n "$last" ] && echo "#   failing input: $last (FUZZ_DEBUG=1 $bin FILE shows more)"
    tail -n 40 "$tmp/$name/log" | sed 's/^/#   /'
    return 1
}

# Fuzz harness $1 (binary $2) for $secs seconds after its seeds; TAP point $3.
fuzz_one() {
    name=$1; bin=$2; i=$3
    mkdir -p "$tmp/$name/corpus" "$tmp/$name/artifacts"
    start=$(date +%s)
    "$bin" -max_total_time="$secs" -runs=2000000 -timeout=20 -print_final_stats=1 \
        -artifact_prefix="$tmp/$name/artifacts/" \
        "$tmp/$name/corpus" "$here/fuzz/corpus/$name" > "$tmp/$name/log" 2>&1
    rc=$?
    echo "# $(summary "$name" "$tmp/$name/log") [$(( $(date +%s) - start )) s wall]"
    if [ $rc -eq 0 ]; then
        echo "ok $i - fuzz $name"
        return 0
    fi
    echo "not ok $i - fuzz $name (libFuzzer exit $rc)"
    mkdir -p "$build/short-artifacts/$name"
    cp "$tmp/$name/artifacts/"* "$build/short-artifacts/$name/" 2>/dev/null &&
        echo "#   failing input kept in $build/short-artifacts/$name/"
    grep -v '^#[0-9]' "$tmp/$name/log" | tail -n 40 | sed 's/^/#   /'
    return 1
}

status=0
i=0
n=0
for name in $names; do n=$((n + 1)); done
echo "1..$n"
for name in $names; do
    i=$((i + 1))
    bin=$build/$name
    if [ ! -x "$bin" ]; then
        echo "not ok $i - fuzz $name # $bin is missing (make fuzz-build)"
        status=1
        continue
    fi
    mkdir -p "$tmp/$name"
    if [ $replay = 1 ]; then
        replay_one "$name" "$bin" $i || status=1
    else
        fuzz_one "$name" "$bin" $i || status=1
    fi
done
exit $status
