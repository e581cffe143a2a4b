-- takhin from a checkout, as root (or add --local, or --tree=DIR):
--     luarocks --lua-version=5.4 make
-- builds the C core (takhin.core) with the builtin backend and installs the
-- Lua modules and the `takhin` command.  --lua-version=5.4 is needed where
-- LuaRocks defaults to another Lua (Debian's luarocks defaults to 5.1): the
-- rock is for Lua 5.4 only (dependencies below), and without it the build
-- would fail against the 5.1 headers.  LuaJIT (OpenResty) builds the same
-- sources with `make luajit`; this rockspec does not cover it.  `make` (the
-- Makefile) is the development build; both compile the same sources.
--
-- The builtin backend compiles in the checkout: it leaves csrc/*.o and
-- takhin/core.so there (`make clean` removes them).
--
-- Compiler flags: the builtin backend compiles with LuaRocks' CFLAGS
-- (`-O2 -fPIC` by default) plus the defines and incdirs below; a rockspec
-- cannot add other flags.  The sources are C11 with _GNU_SOURCE and build
-- under GCC's and Clang's default (gnu17); for the Makefile's strict
-- standard, pass it on the command line:
--     luarocks --lua-version=5.4 make CFLAGS="-O2 -fPIC -std=c11"
rockspec_format = "3.0"
package = "takhin"
version = "scm-1"

source = {
    -- Only `luarocks install`/`download` fetch this; `luarocks make` builds
    -- the checkout it is run in.  The repository's public address is not
    -- settled yet: replace this placeholder when it is.
    url = "git+https://github.com/takhin/takhin.git",
}

description = {
    summary = "Crash-safe, Kafka-style segmented commit log with point-in-time snapshots",
    detailed = [[
An embeddable commit log: a directory of segments with sparse offset and
time indexes, CRC32C-framed records, one writer and many readers across
processes, and hard-link snapshots that can be restored anywhere.  The
engine is C (csrc/, with a public header); require("takhin") loads it into
Lua 5.4 or LuaJIT.  Includes the `takhin` command-line tool.
]],
    -- license: the project has not declared one yet (no LICENSE file).
    labels = { "log", "kafka", "storage", "snapshot" },
}

-- The binding builds for the Lua 5.4 C API and for LuaJIT's (see above),
-- not for PUC Lua 5.1 to 5.3.
dependencies = {
    "lua >= 5.4, < 5.5",
}

external_dependencies = {
    JANSSON = { header = "jansson.h", library = "jansson" },
    ZSTD = { header = "zstd.h", library = "zstd" },
}

build = {
    type = "builtin",
    modules = {
        -- Every C file of csrc/: the engine and the Lua binding.
        ["takhin.core"] = {
            sources = {
                "csrc/archive.c",
                "csrc/crc32c.c",
                "csrc/cursors.c",
                "csrc/error.c",
                "csrc/fs.c",
                "csrc/index.c",
                "csrc/job.c",
                "csrc/lock.c",
                "csrc/log.c",
                "csrc/lua_takhin.c",
                "csrc/manifest.c",
                "csrc/names.c",
                "csrc/record.c",
                "csrc/restore.c",
                "csrc/segment.c",
                "csrc/snapshot.c",
                "csrc/state.c",
                "csrc/sys.c",
                "csrc/transfer.c",
                "csrc/watch.c",
            },
            -- TK_LUA_MODULE: the engine's API stays hidden inside the
            -- module (takhin.h, TK_API); only luaopen_takhin_core is exported.
            defines = { "_GNU_SOURCE", "TK_LUA_MODULE" },
            incdirs = { "csrc", "$(JANSSON_INCDIR)", "$(ZSTD_INCDIR)" },
            libdirs = { "$(JANSSON_LIBDIR)", "$(ZSTD_LIBDIR)" },
            libraries = { "jansson", "zstd", "pthread" },
        },
        ["takhin"] = "lua/takhin/init.lua",
        ["takhin.cli"] = "lua/takhin/cli.lua",
        ["takhin.cli.args"] = "lua/takhin/cli/args.lua",
        ["takhin.cli.common"] = "lua/takhin/cli/common.lua",
        ["takhin.cli.cursor"] = "lua/takhin/cli/cursor.lua",
        ["takhin.cli.log"] = "lua/takhin/cli/log.lua",
        ["takhin.cli.output"] = "lua/takhin/cli/output.lua",
        ["takhin.cli.snapshot"] = "lua/takhin/cli/snapshot.lua",
        ["takhin.cli.forward"] = "lua/takhin/cli/forward.lua",
        ["takhin.cli.transfer"] = "lua/takhin/cli/transfer.lua",
        ["takhin.duration"] = "lua/takhin/duration.lua",
        ["takhin.metrics"] = "lua/takhin/metrics.lua",
        ["takhin.ngx"] = "lua/takhin/ngx.lua",
        -- The forwarder's Lua side; it needs takhin.kafka, which this
        -- rockspec does not build (librdkafka would become a requirement
        -- of every install): `make kafka` / `make install` build it.
        ["takhin.forwarder"] = "lua/takhin/forwarder.lua",
        ["takhin.policy"] = "lua/takhin/policy.lua",
        ["takhin.scheduler"] = "lua/takhin/scheduler.lua",
    },
    install = {
        bin = { takhin = "bin/takhin" },
    },
}
