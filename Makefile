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

# The tests run the CLI too (KVP_CLI) and replay the fuzz corpus.
test: $(BUILD)/kvpack-tests $(BUILD)/kvpack
	KVP_CLI=$(BUILD)/kvpack $(BUILD)/kvpack-tests $(T)

asan:
	$(MAKE) BUILD=build-asan OPT=-O1 EXTRA_CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	    LDFLAGS="-fsanitize=address,undefined" test

FUZZ_SECONDS ?= 60
fuzz:
	$(MAKE) CC=clang BUILD=build-fuzz/lib OPT=-O1 EXTRA_CFLAGS="-fsanitize=fuzzer-no-link,address,undefined" build-fuzz/lib/libkvpack.a
	for f in $(FUZZ_SRC); do n=$$(basename $$f .c); \
	  clang -g -O1 -fsanitize=fuzzer,address,undefined -DKVP_LIBFUZZER -std=c11 -D_GNU_SOURCE -Iinclude -Isrc \
	    $$f build-fuzz/lib/libkvpack.a -o build-fuzz/$$n -lm -pthread || exit 1; \
	  mkdir -p build-fuzz/corpus-$$n tests/fuzz/corpus/$$n; \
	  build-fuzz/$$n -max_total_time=$(FUZZ_SECONDS) -max_len=65536 build-fuzz/corpus-$$n tests/fuzz/corpus/$$n || exit 1; \
	done

clean:
	rm -rf build build-asan build-fuzz

-include $(LIB_OBJ:.o=.d) $(TOOL_OBJ:.o=.d) $(TEST_OBJ:.o=.d)

