#!/bin/sh
# Run the C tests and every busted spec; print 'N passed, N failed' last.
# usage: scripts/run-tests.sh BUILD_DIR LUA
BUILD=${1:-build}; LUA=${2:-lua5.4}
out=$(mktemp -d "${TMPDIR:-/tmp}/takhin-tests.XXXXXX")
trap 'rm -rf "$out"' EXIT INT TERM
status=0
for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    echo "# $t"
    "$t" > "$out/c.tap" 2>&1 || status=1
    cat "$out/c.tap"; cat "$out/c.tap" >> "$out/all.tap"
done
echo "# busted ($LUA)"
LUA_PATH="lua/?.lua;lua/?/init.lua;spec/?.lua;;" LUA_CPATH="$BUILD/?.so;;" \
TAKHIN_LUA="$LUA" TAKHIN_BUILD="$BUILD" \
    busted --lua="$LUA" -o TAP ${SPECS:-spec} > "$out/lua.tap" 2>&1 || status=1
cat "$out/lua.tap"; cat "$out/lua.tap" >> "$out/all.tap"
passed=$(grep -c '^ok ' "$out/all.tap")
failed=$(grep -c '^not ok ' "$out/all.tap")
[ "$failed" -eq 0 ] || status=1
[ "$passed" -gt 0 ] || status=1
echo "$passed passed, $failed failed"
exit $status
