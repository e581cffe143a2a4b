#!/bin/sh
# Run the C tests and every busted spec under valgrind memcheck, then
# report valgrind's verdict.  Used by `make test-valgrind`.
#
# usage: scripts/valgrind-tests.sh [BUILD_DIR [LUA]]
#   BUILD_DIR  a build of takhin (`make all BUILD=...`), default build/valgrind
#   LUA        the Lua interpreter, default lua5.4
# environment:
#   TAKHIN_FAULT_BUILD  the crash-point build for spec/fault_spec.lua (as for
#                       scripts/run-tests.sh; unset: those specs are pending)
#   SPECS               spec files or directories (default: spec)
#   VALGRIND_CHILDREN   1 (default): the lua5.4 children the specs start run
#                       under valgrind too; 0: only busted and the C tests do
#   VALGRIND_OPTS_EXTRA more memcheck options (e.g. --track-origins=yes)
#   VALGRIND_KEEP       a directory: keep the XML reports there
#
# How it works.  scripts/run-tests.sh is run unchanged with:
#   * LUA = a wrapper that execs `valgrind ... lua5.4`.  run-tests.sh runs
#     `busted --lua=$LUA`, which re-executes busted through the wrapper,
#     and exports TAKHIN_LUA=$LUA, which spec/helpers/util.lua (and the
#     specs that build their own command lines) use to start lua5.4
#     children: so every lua5.4 process of the suite runs under memcheck,
#     without --trace-children (which would also trace every sh, env, ls,
#     sleep... the specs run).  Not traced: the shell tools, `luarocks`
#     and `make` run by spec/rockspec_spec.lua, and bin/takhin when a
#     spec runs it as an executable (its #! line names lua5.4 itself).
#   * LUAJIT_BUILD = a missing directory: run-tests.sh's LuaJIT pass is
#     skipped (LuaJIT under memcheck is another project).
#   * BUILD_DIR = a run directory whose tests/test_* are wrappers running
#     BUILD_DIR's C tests under valgrind, and whose other entries link to
#     BUILD_DIR (the module takhin/core.so, libtakhin.a, obj/).
# Each process writes an XML report (--xml-file=...%p.xml); errors that
# valgrind.supp does not suppress are read back from those reports.
# Processes the specs kill with SIGKILL (spec/crash_spec.lua,
# spec/fault_spec.lua, ...) report the errors they made before dying but
# get no leak check.
#
# Verdict: the run fails when the tests fail, or when any unsuppressed
# memcheck error or definitely lost block is reported.  Each one is
# printed with its stack and marked [takhin] when a frame is in
# takhin/core.so, a C test or csrc/; others are outside takhin (lua5.4,
# libc, a Lua C module): suppress those in valgrind.supp once understood,
# never takhin's.  "possibly lost" blocks are counted but do not fail.
#
# The last line is run-tests.sh's "N passed, N failed", repeated after the
# verdict.

BUILD=${1:-build/valgrind}; LUA=${2:-lua5.4}
ROOT=$(pwd)
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
LUA_REAL=$(command -v "$LUA") || { echo "valgrind-tests: $LUA not found" >&2; exit 2; }
VALGRIND=$(command -v valgrind) || { echo "valgrind-tests: valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
SUPP="$ROOT/valgrind.supp"
[ -f "$BUILD/takhin/core.so" ] || { echo "valgrind-tests: $BUILD/takhin/core.so is missing (make all BUILD=...)" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/takhin-valgrind.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
mkdir -p "$work/xml" "$work/bin" "$work/run/tests"
# Some specs run their children as another user (util.nobody_prefix): they
# must reach the wrapper and write their reports.
chmod 755 "$work" "$work/bin" "$work/run" "$work/run/tests"
chmod 1777 "$work/xml"

VG_ERROR_EXIT=99
VG_OPTS="--tool=memcheck --leak-check=full --show-leak-kinds=definite,possible \
--errors-for-leak-kinds=definite --error-exitcode=$VG_ERROR_EXIT --num-callers=40 \
--child-silent-after-fork=yes --suppressions=$SUPP --xml=yes \
--xml-file=$work/xml/vg.%p.xml --log-file=$work/xml/vg.%p.log ${VALGRIND_OPTS_EXTRA:-}"

# The Lua wrapper: busted (re-executed as `LUA /usr/bin/busted --ignore-lua
# ...`) always runs under valgrind; children unless VALGRIND_CHILDREN=0.
cat > "$work/bin/lua" <<EOF
#!/bin/sh
if [ "\${VALGRIND_CHILDREN:-1}" = 0 ] && [ "\$2" != --ignore-lua ]; then
    exec '$LUA_REAL' "\$@"
fi
exec '$VALGRIND' $VG_OPTS '$LUA_REAL' "\$@"
EOF
chmod +x "$work/bin/lua"

# The run directory: everything links to BUILD, except the C tests.
for e in "$BUILD"/* "$BUILD"/.[!.]*; do
    [ -e "$e" ] || continue
    [ "$(basename "$e")" = tests ] && continue
    ln -s "$e" "$work/run/$(basename "$e")"
done
for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    # only compiled tests: a script (such as `make test`'s fuzz-short
    # wrapper, which runs ASan binaries) is not for valgrind
    if [ "$(head -c 4 "$t" | od -An -c | tr -d ' ')" != '177ELF' ]; then
        echo "# valgrind: not running $t (not an ELF executable)"
        continue
    fi
    cat > "$work/run/tests/$(basename "$t")" <<EOF
#!/bin/sh
exec '$VALGRIND' $VG_OPTS '$t' "\$@"
EOF
    chmod +x "$work/run/tests/$(basename "$t")"
done

echo "# valgrind: $($VALGRIND --version), children ${VALGRIND_CHILDREN:-1}, suppressions $SUPP"
# run-tests.sh's second pass (LuaJIT) is not for valgrind: point it at a
# build that does not exist, so it is skipped with a note naming this.
LUAJIT_BUILD="$work/luajit-not-under-valgrind" \
    sh "$ROOT/scripts/run-tests.sh" "$work/run" "$work/bin/lua" > "$work/tests.out" 2>&1
tests_status=$?
cat "$work/tests.out"
summary=$(tail -n 1 "$work/tests.out")

if [ -n "${VALGRIND_KEEP:-}" ]; then
    mkdir -p "$VALGRIND_KEEP" && cp "$work"/xml/* "$VALGRIND_KEEP"/ 2>/dev/null
fi

# Read the XML reports back (plain Lua, no XML library needed: valgrind's
# XML is regular and one element per line).
"$LUA_REAL" - "$work/xml" <<'EOF'
local dir = arg[1]
local function unxml(s)
    return (s:gsub("&lt;", "<"):gsub("&gt;", ">"):gsub("&quot;", '"'):gsub("&apos;", "'"):gsub("&amp;", "&"))
end
local function tag(s, name) local v = s:match("<" .. name .. ">(.-)</" .. name .. ">"); return v and unxml(v) end

local files = {}
local p = assert(io.popen("ls " .. dir .. " 2>/dev/null"))
for name in p:lines() do if name:match("%.xml$") then files[#files + 1] = name end end
p:close()
table.sort(files)

local procs, killed, finished = 0, 0, 0
local kinds = { busted = 0, ctest = 0, child = 0 }
local takhin_errors, other_errors, possibly = {}, {}, 0
local possibly_takhin, possibly_sites = 0, {}
local supp = {}

local function is_takhin_frame(fr)
    local obj, d = tag(fr, "obj") or "", tag(fr, "dir") or ""
    return obj:find("takhin/core.so", 1, true) or obj:find("/tests/test_", 1, true)
        or d:find("/csrc$") ~= nil
end

local function render(err, cmd)
    local out = {}
    local what = tag(err, "what") or tag(err:match("<xwhat>(.-)</xwhat>") or "", "text") or "?"
    out[#out + 1] = ("  %s: %s"):format(tag(err, "kind") or "?", what)
    out[#out + 1] = "    in: " .. cmd
    -- every stack, with the auxwhat that introduces the second one
    local pos = 1
    while true do
        local s, e = err:find("<stack>.-</stack>", pos)
        if not s then break end
        local before = err:sub(pos, s - 1)
        local aux = tag(before, "auxwhat")
        if aux then out[#out + 1] = "    " .. aux end
        for fr in err:sub(s, e):gmatch("<frame>(.-)</frame>") do
            local fn, file, line, obj = tag(fr, "fn"), tag(fr, "file"), tag(fr, "line"), tag(fr, "obj")
            local where = file and (file .. ":" .. (line or "?")) or (obj or "?")
            out[#out + 1] = ("      %s %s (%s)"):format(is_takhin_frame(fr) and "*" or " ", fn or "???", where)
        end
        pos = e + 1
    end
    return table.concat(out, "\n")
end

for _, name in ipairs(files) do
    local f = assert(io.open(dir .. "/" .. name, "rb"))
    local x = f:read("a")
    f:close()
    procs = procs + 1
    local argv = {}
    local av = x:match("<argv>(.-)</argv>") or ""
    argv[1] = tag(av, "exe") or "?"
    for a in av:gmatch("<arg>(.-)</arg>") do argv[#argv + 1] = unxml(a) end
    local cmd = table.concat(argv, " ")
    if cmd:find("--ignore-lua", 1, true) then kinds.busted = kinds.busted + 1
    elseif argv[1]:find("/tests/test_", 1, true) then kinds.ctest = kinds.ctest + 1
    else kinds.child = kinds.child + 1 end
    if x:find("</valgrindoutput>", 1, true) then finished = finished + 1 else killed = killed + 1 end
    for err in x:gmatch("<error>(.-)</error>") do
        local kind = tag(err, "kind") or ""
        if kind == "Leak_PossiblyLost" then
            possibly = possibly + 1
            -- who called the allocator?
            for fr in err:gmatch("<frame>(.-)</frame>") do
                local fn = tag(fr, "fn") or "?"
                if not (fn:match("^malloc") or fn:match("^calloc") or fn:match("^realloc")
                        or fn:match("^strn?dup")) then
                    if is_takhin_frame(fr) then
                        possibly_takhin = possibly_takhin + 1
                        possibly_sites[fn] = true
                    end
                    break
                end
            end
        else
            local mine = false
            for fr in err:gmatch("<frame>(.-)</frame>") do
                if is_takhin_frame(fr) then mine = true; break end
            end
            local list = mine and takhin_errors or other_errors
            list[#list + 1] = render(err, cmd)
        end
    end
    for pair in (x:match("<suppcounts>(.-)</suppcounts>") or ""):gmatch("<pair>(.-)</pair>") do
        local n, sname = tonumber(tag(pair, "count")), tag(pair, "name")
        if n and sname then supp[sname] = (supp[sname] or 0) + n end
    end
end

print(("# valgrind: %d processes under memcheck (%d busted, %d C tests, %d lua5.4 children); "
       .. "%d ran to exit and were leak-checked, %d were killed first")
      :format(procs, kinds.busted, kinds.ctest, kinds.child, finished, killed))
local names = {}
for n in pairs(supp) do names[#names + 1] = n end
table.sort(names)
for _, n in ipairs(names) do print(("# valgrind: suppressed %d x %s"):format(supp[n], n)) end
if possibly > 0 then
    -- Processes that end with os.exit(n) do not close their Lua state:
    -- what Lua's heap holds (takhin handles included) may then be reached
    -- only through interior pointers, which memcheck calls "possibly lost".
    local sites = {}
    for fn in pairs(possibly_sites) do sites[#sites + 1] = fn end
    table.sort(sites)
    print(("# valgrind: %d possibly-lost records, not failing (Lua heaps of processes ending with "
           .. "os.exit without closing the state); %d allocated by takhin itself%s")
          :format(possibly, possibly_takhin, #sites > 0 and (" (" .. table.concat(sites, ", ") .. ")") or ""))
end
for _, e in ipairs(takhin_errors) do print("# [takhin]\n" .. e) end
for _, e in ipairs(other_errors) do print("# [outside takhin: suppress in valgrind.supp once understood]\n" .. e) end
local bad = #takhin_errors + #other_errors
if procs == 0 or kinds.busted == 0 then
    print("valgrind: NO REPORT (busted did not run under valgrind)")
    os.exit(1)
end
if bad == 0 then
    print("valgrind: clean (0 errors, 0 definite leaks)")
else
    print(("valgrind: FAILED (%d attributable to takhin, %d outside takhin)"):format(#takhin_errors, #other_errors))
end
os.exit(bad == 0 and 0 or 1)
EOF
vg_status=$?

echo "$summary"
[ "$tests_status" -eq 0 ] && [ "$vg_status" -eq 0 ] && exit 0
exit 1
