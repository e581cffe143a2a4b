#!/bin/sh
# Short fuzzing pass for `make test` / `make fuzz-short`: each harness of
# fuzz/ runs its seed corpus (fuzz/corpus/<name>) and then fuzzes for
# FUZZ_SHORT_SECONDS (default 10) seconds.  Prints TAP, "ok N - fuzz <name>",
# so scripts/run-tests.sh counts it; exits non-zero when a harness fails.
#
# usage: scripts/fuzz-short.sh [FUZZ_BUILD_DIR]          (default build-fuzz)
#        scripts/fuzz-short.sh --summary NAME LIBFUZZER_LOG
#
# New inputs go to a temporary corpus (the checked-in seeds stay as they
# are); a failing input is kept in FUZZ_BUILD_DIR/short-artifacts/<name>/.
here=$(cd "$(dirname "$0")/.." && pwd)
names="fuzz_segment fuzz_index fuzz_manifest"

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

build=${1:-build-fuzz}
secs=${FUZZ_SHORT_SECONDS:-10}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/takhin-fuzz-short.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
status=0
i=0
set -- $names
echo "1..$#"
for name in $names; do
    i=$((i + 1))
    bin=$build/$name
    if [ ! -x "$bin" ]; then
        echo "not ok $i - fuzz $name # $bin is missing (make fuzz-build)"
        status=1
        continue
    fi
    mkdir -p "$tmp/$name/corpus" "$tmp/$name/artifacts"
    start=$(date +%s)
    "$bin" -max_total_time="$secs" -runs=2000000 -timeout=20 -print_final_stats=1 \
        -artifact_prefix="$tmp/$name/artifacts/" \
        "$tmp/$name/corpus" "$here/fuzz/corpus/$name" > "$tmp/$name/log" 2>&1
    rc=$?
    echo "# $(summary "$name" "$tmp/$name/log") [$(( $(date +%s) - start )) s wall]"
    if [ $rc -eq 0 ]; then
        echo "ok $i - fuzz $name"
    else
        echo "not ok $i - fuzz $name (libFuzzer exit $rc)"
        status=1
        mkdir -p "$build/short-artifacts/$name"
        cp "$tmp/$name/artifacts/"* "$build/short-artifacts/$name/" 2>/dev/null &&
            echo "#   failing input kept in $build/short-artifacts/$name/"
        grep -v '^#[0-9]' "$tmp/$name/log" | tail -n 40 | sed 's/^/#   /'
    fi
done
exit $status
