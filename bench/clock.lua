-- Wall-clock time for the benchmarks (os.clock is CPU time; I/O needs wall
-- time).  lua-system and lua-socket come with busted (a dependency of
-- `make test`); `date` is the last resort (one fork per timed section,
-- ~1 ms of its own latency).  Returns now(), a description.
local ok, sys = pcall(require, "system")
if ok and type(sys) == "table" and sys.monotime then
    return sys.monotime, "system.monotime (lua-system, CLOCK_MONOTONIC)"
end
local ok2, socket = pcall(require, "socket")
if ok2 and type(socket) == "table" and socket.gettime then
    return socket.gettime, "socket.gettime (lua-socket, gettimeofday)"
end
return function()
    local p = io.popen("date +%s%N")
    local s = p:read("l")
    p:close()
    return tonumber(s) / 1e9
end, "date +%s%N (one fork per timed section)"
