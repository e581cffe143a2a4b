#!/bin/sh
# Run the C tests and every busted spec, twice: under LUA against BUILD_DIR,
# then under LuaJIT against the LuaJIT build of the module; print
# 'N passed, N failed' (both passes together) last.
# usage: scripts/run-tests.sh BUILD_DIR LUA
# environment:
#   SPECS         spec files or directories (default: spec)
#   LUAJIT        the LuaJIT interpreter (default: luajit)
#   LUAJIT_BUILD  the LuaJIT build, holding takhin/core.so (default:
#                 BUILD_DIR/luajit; `make luajit` makes build/luajit)
# The LuaJIT pass is skipped, with a note, when LUAJIT or
# LUAJIT_BUILD/takhin/core.so is missing.  In it the specs' children run
# LuaJIT too (TAKHIN_LUA), except the programs that are Lua 5.4 programs
# (bin/takhin, the crash-point build): those run LUA against BUILD_DIR
# (TAKHIN_LUA54, TAKHIN_LUA54_BUILD; spec/helpers/proc.lua).
BUILD=${1:-build}; LUA=${2:-lua5.4}
LUAJIT=${LUAJIT:-luajit}; LJ_BUILD=${LUAJIT_BUILD:-$BUILD/luajit}
SPEC_PATH="lua/?.lua;lua/?/init.lua;spec/?.lua;;"
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
LUA_PATH="$SPEC_PATH" LUA_CPATH="$BUILD/?.so;;" \
TAKHIN_LUA="$LUA" TAKHIN_BUILD="$BUILD" \
    busted --lua="$LUA" -o TAP ${SPECS:-spec} > "$out/lua.tap" 2>&1 || status=1
cat "$out/lua.tap"; cat "$out/lua.tap" >> "$out/all.tap"
if ! command -v "$LUAJIT" >/dev/null 2>&1; then
    echo "# busted ($LUAJIT) SKIPPED: $LUAJIT is not installed (apt-get install luajit2 libluajit2-5.1-dev)"
elif [ ! -f "$LJ_BUILD/takhin/core.so" ]; then
    echo "# busted ($LUAJIT) SKIPPED: $LJ_BUILD/takhin/core.so is missing (make luajit builds build/luajit)"
else
    echo "# busted ($LUAJIT, $LJ_BUILD)"
    LUA_PATH="$SPEC_PATH" LUA_CPATH="$LJ_BUILD/?.so;;" \
    TAKHIN_LUA="$LUAJIT" TAKHIN_BUILD="$LJ_BUILD" \
    TAKHIN_LUA54="$LUA" TAKHIN_LUA54_BUILD="$BUILD" \
        busted --lua="$LUAJIT" -o TAP ${SPECS:-spec} > "$out/luajit.tap" 2>&1 || status=1
    cat "$out/luajit.tap"; cat "$out/luajit.tap" >> "$out/all.tap"
fi
# A skipped test (the other interpreter's half of a pair, a fuzzer the
# compiler cannot link) is counted apart, never as passed.
ok=$(grep -c '^ok ' "$out/all.tap")
failed=$(grep -c '^not ok ' "$out/all.tap")
skipped=$(grep -ci '^ok .*# skip' "$out/all.tap")
passed=$((ok - skipped))
[ "$failed" -eq 0 ] || status=1
[ "$passed" -gt 0 ] || status=1
echo "# $skipped skipped (# SKIP lines above say why)"
echo "$passed passed, $failed failed"
exit $status
