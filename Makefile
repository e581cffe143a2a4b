# takhin -- build, test, bench.  `make help` lists the targets.

LUA        ?= lua5.4
LUA_INC    ?= /usr/include/lua5.4
CC         ?= cc
BUILD      ?= build
OPT        ?= -O2
CFLAGS_WARN = -Wall -Wextra -Werror -Wshadow -Wpointer-arith -Wstrict-prototypes
CFLAGS_BASE = -std=c11 -D_GNU_SOURCE -g $(OPT) -fPIC -fvisibility=hidden $(CFLAGS_WARN)
SAN        ?=
CFLAGS_ALL  = $(CFLAGS_BASE) $(SAN) $(CFLAGS)
LDLIBS_ALL  = -ljansson -lpthread $(LDLIBS)

ENGINE_SRC = csrc/crc32c.c csrc/error.c csrc/fs.c csrc/lock.c csrc/record.c csrc/restore.c \
             csrc/index.c csrc/segment.c csrc/log.c csrc/manifest.c csrc/snapshot.c
ENGINE_OBJ = $(ENGINE_SRC:csrc/%.c=$(BUILD)/obj/%.o)
BINDING    = csrc/lua_takhin.c
HEADERS    = $(wildcard csrc/*.h)
C_TESTS    = $(BUILD)/tests/test_crc32c $(BUILD)/tests/test_threads

BUSTED     = busted --lua=$(LUA)
SPEC_ENV   = LUA_PATH='lua/?.lua;lua/?/init.lua;spec/?.lua;;' \
             LUA_CPATH='$(BUILD)/?.so;;' TAKHIN_LUA=$(LUA) TAKHIN_BUILD=$(BUILD)

.PHONY: all help deps fault luajit test test-asan test-tsan bench demo clean

all: $(BUILD)/takhin/core.so $(BUILD)/libtakhin.a $(C_TESTS)

help:
	@echo "make            build $(BUILD)/takhin/core.so (Lua 5.4) and $(BUILD)/libtakhin.a"
	@echo "make luajit     build build/luajit/takhin/core.so for LuaJIT 2.1 (OpenResty)"
	@echo "make deps       install missing Debian packages (as root) or print the command"
	@echo "make test       run every C test and busted spec; last line 'N passed, N failed'"
	@echo "make test-asan  the same under AddressSanitizer + UndefinedBehaviorSanitizer"
	@echo "make test-tsan  the C thread test under ThreadSanitizer"
	@echo "make fault      the crash-point build ($(BUILD)-fault) used by spec/fault_spec.lua"
	@echo "make bench      benchmarks with ratios against baselines run side by side"
	@echo "make demo       run examples/quickstart.lua"
	@echo "make install    install under PREFIX=$(PREFIX) (DESTDIR too): Lua module, bin/takhin, takhin.h, libtakhin.a"
	@echo "make clean      remove build outputs"

# ---------------------------------------------------------------- build

$(BUILD)/obj/%.o: csrc/%.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

$(BUILD)/libtakhin.a: $(ENGINE_OBJ)
	@rm -f $@
	ar rcs $@ $^

# The module is not linked against liblua: the host provides the API.
$(BUILD)/takhin/core.so: $(BINDING) $(BUILD)/libtakhin.a $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -I$(LUA_INC) -shared $(BINDING) $(BUILD)/libtakhin.a -o $@ $(LDLIBS_ALL)

$(BUILD)/tests/%: tests/%.c $(BUILD)/libtakhin.a $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Icsrc $< $(BUILD)/libtakhin.a -o $@ $(LDLIBS_ALL)

# LuaJIT / nginx's Lua module: the same sources against the Lua 5.1 API.
LUAJIT_INC ?= /usr/include/luajit-2.1

luajit:
	@$(MAKE) --no-print-directory build/luajit/takhin/core.so BUILD=build/luajit LUA_INC=$(LUAJIT_INC)

# ---------------------------------------------------------------- deps

deps:
	@sh scripts/deps.sh

# ---------------------------------------------------------------- tests

# The crash-point build (csrc/fault.h): only the fault specs load it.
fault: deps
	@$(MAKE) --no-print-directory $(FAULT_BUILD)/takhin/core.so BUILD=$(FAULT_BUILD) \
	  SAN="$(SAN) -DTK_FAULT_INJECTION"

FAULT_BUILD ?= $(BUILD)-fault

test: deps
	@$(MAKE) --no-print-directory all fault
	@TAKHIN_FAULT_BUILD=$(FAULT_BUILD) sh scripts/run-tests.sh $(BUILD) $(LUA)

ASAN_LIB = $(shell $(CC) -print-file-name=libasan.so)
UBSAN_LIB = $(shell $(CC) -print-file-name=libubsan.so)

ASAN_FLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

test-asan: deps
	@$(MAKE) --no-print-directory all fault BUILD=build-asan OPT=-O1 SAN="$(ASAN_FLAGS)"
	@TAKHIN_FAULT_BUILD=build-asan-fault LD_PRELOAD="$(ASAN_LIB) $(UBSAN_LIB)" ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/scripts/lsan.supp:print_suppressions=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  sh scripts/run-tests.sh build-asan $(LUA)

test-tsan: deps
	@$(MAKE) --no-print-directory build-tsan/tests/test_threads BUILD=build-tsan OPT=-O1 \
	  SAN="-fsanitize=thread"
	TSAN_OPTIONS=halt_on_error=1 build-tsan/tests/test_threads

bench: deps
	@$(MAKE) --no-print-directory all
	@$(SPEC_ENV) $(LUA) bench/log_bench.lua
	@$(SPEC_ENV) $(LUA) bench/snapshot_bench.lua

demo: deps
	@$(MAKE) --no-print-directory all
	@$(SPEC_ENV) $(LUA) examples/quickstart.lua
	@echo
	@$(SPEC_ENV) $(LUA) examples/snapshot_example.lua

# ---------------------------------------------------------------- install

# make install [PREFIX=/usr/local] [DESTDIR=/staging/root]: the C module in
# lib/lua/5.4/takhin/core.so, the Lua modules in share/lua/5.4/takhin/, the
# command in bin/, the C header and static library in include/ and lib/.
PREFIX      ?= /usr/local
LUA_VERSION ?= 5.4
INSTALL     ?= install
INST_CMOD    = $(DESTDIR)$(PREFIX)/lib/lua/$(LUA_VERSION)/takhin
INST_LMOD    = $(DESTDIR)$(PREFIX)/share/lua/$(LUA_VERSION)/takhin

.PHONY: install
install: $(BUILD)/takhin/core.so $(BUILD)/libtakhin.a
	$(INSTALL) -d $(INST_CMOD) $(INST_LMOD) $(DESTDIR)$(PREFIX)/bin \
	  $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib
	$(INSTALL) -m 755 $(BUILD)/takhin/core.so $(INST_CMOD)/core.so
	$(INSTALL) -m 644 lua/takhin/*.lua $(INST_LMOD)/
	$(INSTALL) -m 755 bin/takhin $(DESTDIR)$(PREFIX)/bin/takhin
	$(INSTALL) -m 644 csrc/takhin.h $(DESTDIR)$(PREFIX)/include/takhin.h
	$(INSTALL) -m 644 $(BUILD)/libtakhin.a $(DESTDIR)$(PREFIX)/lib/libtakhin.a

clean:
	rm -rf build build-fault build-asan build-asan-fault build-tsan
