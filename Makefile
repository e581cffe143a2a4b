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
LDLIBS_ALL  = -ljansson -lzstd -lpthread $(LDLIBS)

ENGINE_SRC = csrc/crc32c.c csrc/error.c csrc/sys.c csrc/names.c csrc/fs.c csrc/lock.c \
             csrc/state.c csrc/cursors.c csrc/record.c csrc/restore.c csrc/index.c csrc/segment.c csrc/log.c \
             csrc/manifest.c csrc/job.c csrc/snapshot.c csrc/archive.c csrc/transfer.c csrc/watch.c
ENGINE_OBJ = $(ENGINE_SRC:csrc/%.c=$(BUILD)/obj/%.o)
BINDING    = csrc/lua_takhin.c
HEADERS    = $(wildcard csrc/*.h)
C_TESTS    = $(BUILD)/tests/test_crc32c $(BUILD)/tests/test_threads $(BUILD)/tests/test_api \
             $(BUILD)/tests/test_group_commit
# The optional takhin.kafka module and the specs' mock cluster ("kafka"
# below): only where librdkafka-dev is installed.
RDKAFKA_LIBS ?= -lrdkafka
HAVE_RDKAFKA := $(shell printf '\043include <librdkafka/rdkafka.h>\n\043include <librdkafka/rdkafka_mock.h>\n' | \
                  $(CC) -E -x c - >/dev/null 2>&1 && echo yes)
KAFKA_TARGETS = $(if $(HAVE_RDKAFKA),$(BUILD)/takhin/kafka.so $(BUILD)/kafka/kafka_mock)

BUSTED     = busted --lua=$(LUA)
SPEC_ENV   = LUA_PATH='lua/?.lua;lua/?/init.lua;spec/?.lua;;' \
             LUA_CPATH='$(BUILD)/?.so;;' TAKHIN_LUA=$(LUA) TAKHIN_BUILD=$(BUILD)

.PHONY: all help deps fault luajit test test-asan test-tsan bench demo clean

all: $(BUILD)/takhin/core.so $(BUILD)/libtakhin.a $(C_TESTS) $(KAFKA_TARGETS)

help:
	@echo "make            build $(BUILD)/takhin/core.so (Lua 5.4) and $(BUILD)/libtakhin.a"
	@echo "make luajit     build build/luajit/takhin/core.so for LuaJIT 2.1 (OpenResty)"
	@echo "make kafka      build the optional takhin.kafka module (librdkafka; part of make and make luajit when librdkafka-dev is installed)"
	@echo "make deps       install missing Debian packages (as root) or print the command"
	@echo "make test       run every C test and busted spec; last line 'N passed, N failed'"
	@echo "make test-asan  the same under AddressSanitizer + UndefinedBehaviorSanitizer"
	@echo "make test-tsan  the C thread tests (test_threads, test_group_commit) under ThreadSanitizer"
	@echo "make test-valgrind  the C tests and specs under valgrind memcheck ($(VG_BUILD)); ends with valgrind's verdict and 'N passed, N failed'"
	@echo "make soak       randomized writer/kill/snapshot/restore run checked against a model (SOAK_SECONDS=$(SOAK_SECONDS), SOAK_DIR=temp); not in CI"
	@echo "make fuzz       build the libFuzzer harnesses (clang) into $(FUZZ_BUILD)/ and run each for FUZZ_SECONDS=$(FUZZ_SECONDS); -j2 for two at once"
	@echo "make fuzz-replay each harness on its seed corpus and fuzz/findings/, no fuzzing (TAP; part of make test)"
	@echo "make fuzz-short each harness on its seed corpus plus ~10 s of fuzzing (TAP; random, not in make test)"
	@echo "make fault      the crash-point build ($(BUILD)-fault) used by spec/fault_spec.lua"
	@echo "make bench      benchmarks with ratios against baselines run side by side"
	@echo "make demo       run examples/quickstart.lua"
	@echo "make openresty-demo [PORT=8080]  start examples/openresty in nginx on 127.0.0.1:PORT (prefix $(OPENRESTY_DEMO_DIR)); prints what to try"
	@echo "make openresty-demo-stop         stop it (SIGQUIT to its pid)"
	@echo "make install    install under PREFIX=$(PREFIX) (DESTDIR too): Lua module, bin/takhin, takhin.h, libtakhin.a, takhin.pc"
	@echo "make clean      remove build outputs (also what luarocks make leaves in the checkout)"

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
	$(CC) $(CFLAGS_ALL) -I$(LUA_INC) -shared $(BINDING) $(BUILD)/libtakhin.a -o $@ -Wl,--exclude-libs,ALL $(LDLIBS_ALL)

$(BUILD)/tests/%: tests/%.c tests/tap.h $(BUILD)/libtakhin.a $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Icsrc $< $(BUILD)/libtakhin.a -o $@ $(LDLIBS_ALL)

# LuaJIT / nginx's Lua module: the same sources against the Lua 5.1 API.
LUAJIT_INC ?= /usr/include/luajit-2.1

luajit:
	@$(MAKE) --no-print-directory build/luajit/takhin/core.so $(if $(HAVE_RDKAFKA),build/luajit/takhin/kafka.so) \
	  BUILD=build/luajit LUA_INC=$(LUAJIT_INC)

# ---------------------------------------------------------------- kafka

# The optional module takhin.kafka (csrc/kafka/lua_kafka.c, a librdkafka producer
# binding that lua/takhin/forwarder.lua uses) and the mock Kafka cluster
# the specs start (tests/kafka_mock.c).  Built by `make` and `make luajit`
# only where librdkafka's headers are (Debian: librdkafka-dev); takhin.core
# never links librdkafka.

.PHONY: kafka
kafka:
ifeq ($(HAVE_RDKAFKA),yes)
	@$(MAKE) --no-print-directory $(KAFKA_TARGETS)
else
	@echo "kafka: librdkafka-dev is not installed: takhin.kafka not built (make deps installs it)"
endif

# It links the engine (produce_log reads logs itself), hidden as in core.so.
# -z nodelete: Lua unloads C modules when a state closes, and librdkafka is
# not made to be unloaded (its global state -- SASL, SSL -- would leak, and
# a producer collected late would run code that is gone).
$(BUILD)/takhin/kafka.so: csrc/kafka/lua_kafka.c $(BUILD)/libtakhin.a $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -DTK_LUA_MODULE -Icsrc -I$(LUA_INC) -shared $< $(BUILD)/libtakhin.a -o $@ \
	  -Wl,--exclude-libs,ALL -Wl,-z,nodelete $(RDKAFKA_LIBS) $(LDLIBS_ALL)

$(BUILD)/kafka/kafka_mock: tests/kafka_mock.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) $< -o $@ $(RDKAFKA_LIBS)

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
	@$(MAKE) --no-print-directory all fault fuzz-replay-wrapper
	@$(MAKE) --no-print-directory luajit
	@LUAJIT_BUILD=build/luajit TAKHIN_FAULT_BUILD=$(FAULT_BUILD) sh scripts/run-tests.sh $(BUILD) $(LUA)

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
	@$(MAKE) --no-print-directory build-tsan/tests/test_threads build-tsan/tests/test_group_commit \
	  BUILD=build-tsan OPT=-O1 SAN="-fsanitize=thread"
	TSAN_OPTIONS=halt_on_error=1 build-tsan/tests/test_threads
	TSAN_OPTIONS=halt_on_error=1 build-tsan/tests/test_group_commit

# valgrind memcheck over the C tests, busted and every lua5.4 child the
# specs start (scripts/valgrind-tests.sh says how); suppressions for code
# outside takhin only, in valgrind.supp.  7 to 15 minutes on 2 busy cores.
VG_BUILD ?= build/valgrind

.PHONY: test-valgrind soak
test-valgrind: deps
	@$(MAKE) --no-print-directory all fault BUILD=$(VG_BUILD) FAULT_BUILD=$(VG_BUILD)-fault OPT=-O1
	@TAKHIN_FAULT_BUILD=$(VG_BUILD)-fault sh scripts/valgrind-tests.sh $(VG_BUILD) $(LUA)

# make soak [SOAK_SECONDS=1800] [SOAK_DIR=dir]: soak/README.md.
SOAK_SECONDS ?= 1800
SOAK_DIR     ?=
soak: deps
	@$(MAKE) --no-print-directory all
	@$(SPEC_ENV) SOAK_SECONDS=$(SOAK_SECONDS) SOAK_DIR='$(SOAK_DIR)' $(LUA) soak/soak.lua

# The C programs the benches run (bench/*.c), linked as the C tests are.
BENCH_PROGS = $(BUILD)/bench/group_commit

$(BUILD)/bench/%: bench/%.c $(BUILD)/libtakhin.a $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Icsrc $< $(BUILD)/libtakhin.a -o $@ $(LDLIBS_ALL)

bench: deps
	@$(MAKE) --no-print-directory all $(BENCH_PROGS)
	@$(SPEC_ENV) $(LUA) bench/log_bench.lua
	@$(SPEC_ENV) $(LUA) bench/append_bench.lua
	@$(SPEC_ENV) $(LUA) bench/snapshot_bench.lua
	@$(SPEC_ENV) $(LUA) bench/follow_bench.lua
	@$(SPEC_ENV) $(LUA) bench/kafka_bench.lua
	@$(SPEC_ENV) $(LUA) bench/transfer_bench.lua
	@$(SPEC_ENV) $(LUA) bench/nginx_bench.lua

demo: deps
	@$(MAKE) --no-print-directory all
	@$(SPEC_ENV) $(LUA) examples/quickstart.lua
	@echo
	@$(SPEC_ENV) $(LUA) examples/snapshot_example.lua

# make openresty-demo [PORT=8080] [OPENRESTY_DEMO_DIR=dir]: the OpenResty
# example (examples/openresty/demo.sh says what it does) in nginx on
# 127.0.0.1:PORT; make openresty-demo-stop stops it.
PORT               ?= 8080
OPENRESTY_DEMO_DIR ?= build/openresty-demo

.PHONY: openresty-demo openresty-demo-stop
openresty-demo:
	@$(MAKE) --no-print-directory luajit
	@sh examples/openresty/demo.sh start '$(PORT)' '$(OPENRESTY_DEMO_DIR)'

openresty-demo-stop:
	@sh examples/openresty/demo.sh stop '$(OPENRESTY_DEMO_DIR)'

# ---------------------------------------------------------------- install

# make install [PREFIX=/usr/local] [DESTDIR=/staging/root]: the C module in
# lib/lua/5.4/takhin/core.so, the Lua modules in share/lua/5.4/takhin/ (the
# command's own in takhin/cli/), the command in bin/, the C header and static
# library in include/ and lib/, and lib/pkgconfig/takhin.pc (from
# takhin.pc.in) for C programs: `pkg-config --cflags --libs takhin`.
PREFIX      ?= /usr/local
VERSION     := $(shell sed -n 's/^\#define TAKHIN_VERSION "\(.*\)"/\1/p' csrc/takhin.h)
LUA_VERSION ?= 5.4
INSTALL     ?= install
INST_CMOD    = $(DESTDIR)$(PREFIX)/lib/lua/$(LUA_VERSION)/takhin
INST_LMOD    = $(DESTDIR)$(PREFIX)/share/lua/$(LUA_VERSION)/takhin

.PHONY: install
install: $(BUILD)/takhin/core.so $(BUILD)/libtakhin.a $(if $(HAVE_RDKAFKA),$(BUILD)/takhin/kafka.so)
	$(INSTALL) -d $(INST_CMOD) $(INST_LMOD) $(INST_LMOD)/cli $(DESTDIR)$(PREFIX)/bin \
	  $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/lib/pkgconfig
	$(INSTALL) -m 755 $(BUILD)/takhin/core.so $(INST_CMOD)/core.so
	$(if $(HAVE_RDKAFKA),$(INSTALL) -m 755 $(BUILD)/takhin/kafka.so $(INST_CMOD)/kafka.so)
	$(INSTALL) -m 644 lua/takhin/*.lua $(INST_LMOD)/
	$(INSTALL) -m 644 lua/takhin/cli/*.lua $(INST_LMOD)/cli/
	$(INSTALL) -m 755 bin/takhin $(DESTDIR)$(PREFIX)/bin/takhin
	$(INSTALL) -m 644 csrc/takhin.h $(DESTDIR)$(PREFIX)/include/takhin.h
	$(INSTALL) -m 644 $(BUILD)/libtakhin.a $(DESTDIR)$(PREFIX)/lib/libtakhin.a
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' takhin.pc.in \
	  > $(DESTDIR)$(PREFIX)/lib/pkgconfig/takhin.pc
	chmod 644 $(DESTDIR)$(PREFIX)/lib/pkgconfig/takhin.pc

# `luarocks make` (builtin backend) compiles in the checkout: objects next
# to the sources and the module as takhin/core.so, which Lua's default
# ./?.so would load in place of build/'s.  clean removes those too.
clean:
	rm -rf build build-fault build-asan build-asan-fault build-tsan build-fuzz
	rm -f csrc/*.o csrc/kafka/*.o takhin/core.so
	rmdir takhin 2>/dev/null || true

# ---------------------------------------------------------------- fuzzing

# libFuzzer harnesses (fuzz/README.md), built with clang under ASan + UBSan.
# make fuzz [FUZZ_SECONDS=600]: each harness fuzzes for FUZZ_SECONDS on
# $(FUZZ_BUILD)/corpus/<name>, a copy of the seeds in fuzz/corpus/<name> that
# keeps what earlier runs found; `make -j2 fuzz` runs two at a time.  Logs go
# to $(FUZZ_BUILD)/logs/, crashing inputs to $(FUZZ_BUILD)/artifacts/<name>/.
FUZZ_CC      ?= clang
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 600
FUZZ_FLAGS   ?=
FUZZ_NAMES    = fuzz_segment fuzz_index fuzz_manifest fuzz_archive
FUZZ_CFLAGS   = -std=c11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Icsrc -fno-omit-frame-pointer \
                -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_OBJ      = $(ENGINE_SRC:csrc/%.c=$(FUZZ_BUILD)/obj/%.o)
FUZZ_BINS     = $(FUZZ_NAMES:%=$(FUZZ_BUILD)/%)
FUZZ_RUNS     = $(FUZZ_NAMES:%=fuzz-run-%)

.PHONY: fuzz fuzz-build fuzz-replay fuzz-short fuzz-replay-wrapper $(FUZZ_RUNS)

fuzz-build: $(FUZZ_BINS)
.SECONDARY: $(FUZZ_OBJ)

$(FUZZ_BUILD)/obj/%.o: csrc/%.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_BUILD)/fuzz_%: fuzz/fuzz_%.c fuzz/common.c $(FUZZ_OBJ) $(HEADERS)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $< $(FUZZ_OBJ) -o $@ -ljansson -lzstd -lpthread

fuzz: $(FUZZ_RUNS)

$(FUZZ_RUNS): fuzz-run-%: $(FUZZ_BUILD)/%
	@mkdir -p $(FUZZ_BUILD)/corpus/$* $(FUZZ_BUILD)/artifacts/$* $(FUZZ_BUILD)/logs
	@cp -n fuzz/corpus/$*/* $(FUZZ_BUILD)/corpus/$*/ 2>/dev/null || true
	@echo "fuzz $*: $(FUZZ_SECONDS) s, log in $(FUZZ_BUILD)/logs/$*.log"
	@nice -n 10 $(FUZZ_BUILD)/$* -max_total_time=$(FUZZ_SECONDS) -timeout=30 -print_final_stats=1 \
	  -artifact_prefix=$(FUZZ_BUILD)/artifacts/$*/ $(FUZZ_FLAGS) $(FUZZ_BUILD)/corpus/$* \
	  > $(FUZZ_BUILD)/logs/$*.log 2>&1; rc=$$?; \
	  sh scripts/fuzz-short.sh --summary $* $(FUZZ_BUILD)/logs/$*.log; \
	  [ $$rc -eq 0 ] || { echo "fuzz $*: FAILED (exit $$rc): see $(FUZZ_BUILD)/logs/$*.log, $(FUZZ_BUILD)/artifacts/$*/"; exit 1; }

# Each harness runs its seed corpus and its fuzz/findings/ once, without
# fuzzing (deterministic), as TAP ("ok N - fuzz <name>").
fuzz-replay: $(FUZZ_BINS)
	@sh scripts/fuzz-short.sh --replay $(FUZZ_BUILD)

# Seed corpus plus ~10 s of fuzzing per harness, as TAP (random: not part
# of `make test`).
fuzz-short: $(FUZZ_BINS)
	@sh scripts/fuzz-short.sh $(FUZZ_BUILD)

# For `make test`: $(BUILD)/tests/test_fuzz_replay runs fuzz-replay inside
# scripts/run-tests.sh, which counts its TAP lines.  Without a clang that
# links -fsanitize=fuzzer it prints "ok N - fuzz <name> # SKIP ..." lines.
# (test_fuzz_short, which fuzzed for ~30 s, is removed from older builds.)
fuzz-replay-wrapper:
	@mkdir -p $(BUILD)/tests
	@rm -f $(BUILD)/tests/test_fuzz_short
	@w=$(BUILD)/tests/test_fuzz_replay; \
	if printf 'int LLVMFuzzerTestOneInput(const char *d, long n) { return 0; }\n' | \
	    $(FUZZ_CC) -x c -fsanitize=fuzzer,address,undefined - -o $$w.probe >/dev/null 2>&1; then \
	  rm -f $$w.probe; \
	  $(MAKE) -s --no-print-directory fuzz-build || exit 1; \
	  printf '#!/bin/sh\nexec sh "%s/scripts/fuzz-short.sh" --replay "%s"\n' "$(CURDIR)" "$(abspath $(FUZZ_BUILD))" > $$w; \
	else \
	  rm -f $$w.probe; \
	  printf '#!/bin/sh\nfor n in $(FUZZ_NAMES); do i=$$((i + 1)); echo "ok $$i - fuzz $$n # SKIP $(FUZZ_CC) cannot link -fsanitize=fuzzer"; done\n' > $$w; \
	fi; chmod +x $$w
