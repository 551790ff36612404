# hisa: C11 host library + CUDA kernels (when nvcc is found), the hisa tool, and the tests.
# make            build build/libhisa.a, build/libhisa.so, build/hisa
# make test       run the test suite (GPU tests say "skipped: no CUDA device" without a GPU)
# make run        run the main job: hisa stream with its defaults
# make install PREFIX=/usr/local
# Knobs: CUDA=0|1 (default: 1 when nvcc is found), CUDA_ARCH="-gencode ..." (extra targets),
#        SANITIZE=1 (ASan+UBSan, CPU), NDEBUG=1 (drop asserts and page poisoning), PREFIX.

PREFIX    ?= /usr/local
BUILD     ?= build
CC        ?= cc
# The sanitizer pass is for the CPU tests; CUDA code is checked under compute-sanitizer.
ifeq ($(SANITIZE),1)
CUDA      ?= 0
endif
NVCC      ?= $(shell command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)
CUDA      ?= $(shell command -v nvcc >/dev/null 2>&1 || test -x /usr/local/cuda/bin/nvcc && echo 1 || echo 0)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_ARCH ?=
GENCODE   := -gencode arch=compute_90a,code=sm_90a $(CUDA_ARCH)
VERSION   := 0.1.0

CFLAGS_BASE := -std=c11 -O2 -g -fPIC -Wall -Wextra -Werror -Wno-unused-function -D_GNU_SOURCE
ifeq ($(NDEBUG),1)
CFLAGS_BASE += -DNDEBUG
endif
ifeq ($(SANITIZE),1)
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
BUILD    := build-san
endif
CFLAGS  += $(CFLAGS_BASE) $(SANFLAGS) -DHISA_CUDA=$(CUDA)
LDFLAGS += $(SANFLAGS)
LDLIBS  := -lm -lpthread

ifeq ($(CUDA),1)
CFLAGS   += -I$(CUDA_HOME)/include
NVFLAGS  := -std=c++17 -O3 -g -lineinfo -Xcompiler -fPIC,-Wall $(GENCODE) --expt-relaxed-constexpr \
            -DHISA_CUDA=1 -Werror all-warnings
LDLIBS   += -L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt -lstdc++
ifeq ($(NDEBUG),1)
NVFLAGS  += -DNDEBUG
endif
CU_SRCS  := $(wildcard kernels/*.cu)
endif

LIB_SRCS  := $(wildcard arena/*.c kvcache/*.c runtime/*.c)
TOOL_SRCS := $(wildcard tools/*.c)
TEST_SRCS := $(wildcard tests/*.c)
LIB_OBJS  := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o) $(CU_SRCS:%.cu=$(BUILD)/obj/%.cu.o)
TOOL_OBJS := $(filter-out $(BUILD)/obj/tools/main.o,$(TOOL_SRCS:%.c=$(BUILD)/obj/%.o))
TEST_OBJS := $(TEST_SRCS:%.c=$(BUILD)/obj/%.o)
HEADERS   := $(wildcard runtime/*.h arena/*.h kvcache/*.h kernels/*.h tools/*.h tests/*.h)

# The test binary wraps the allocators so a test can prove nothing allocates after open.
WRAP := -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=aligned_alloc,--wrap=posix_memalign

.PHONY: all test run install clean help soak fuzz
all: $(BUILD)/libhisa.a $(BUILD)/libhisa.so $(BUILD)/hisa

$(BUILD)/obj/%.o: %.c $(HEADERS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/obj/%.cu.o: %.cu $(HEADERS) $(wildcard kernels/*.cuh) Makefile
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

$(BUILD)/libhisa.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/libhisa.so: $(LIB_OBJS)
	$(CC) -shared -o $@ $^ $(LDFLAGS) $(LDLIBS)

$(BUILD)/hisa: $(BUILD)/obj/tools/main.o $(TOOL_OBJS) $(BUILD)/libhisa.a
	$(CC) -o $@ $^ $(LDFLAGS) $(LDLIBS)

$(BUILD)/hisa_tests: $(TEST_OBJS) $(TOOL_OBJS) $(BUILD)/libhisa.a
	$(CC) -o $@ $^ $(LDFLAGS) $(WRAP) $(LDLIBS)

# Tests run from the repo root; HISA_TOOL lets tool tests run the built binary.
test: $(BUILD)/hisa_tests $(BUILD)/hisa
	HISA_TOOL=$(BUILD)/hisa ASAN_OPTIONS=protect_shadow_gap=0:detect_leaks=1 ./$(BUILD)/hisa_tests $(TESTS)

run: $(BUILD)/hisa
	./$(BUILD)/hisa stream

install: all
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/bin \
	    $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 $(BUILD)/libhisa.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/libhisa.so $(DESTDIR)$(PREFIX)/lib/
	install -m 644 runtime/hisa.h $(DESTDIR)$(PREFIX)/include/
	install -m 755 $(BUILD)/hisa $(DESTDIR)$(PREFIX)/bin/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' \
	    -e 's|@LIBS@|$(subst -L$(CUDA_HOME)/lib64,-L$(CUDA_HOME)/lib64,$(LDLIBS))|' hisa.pc.in \
	    > $(DESTDIR)$(PREFIX)/lib/pkgconfig/hisa.pc

clean:
	rm -rf build build-san

help:
	@sed -n '1,7p' Makefile | sed 's/^# \{0,1\}//'

# Reliability (issue 6). make soak: the model-based soak at full length (the test binary's soak
# tests with HISA_SOAK_OPS=SOAK_OPS operations in all). make fuzz FUZZ_SECONDS=N: build the libFuzzer
# targets (clang, ASan+UBSan, CPU only) and run each for N seconds on its corpus; new inputs,
# logs and crash artifacts go under $(BUILD)/fuzz/.
SOAK_OPS      ?= 1000000
FUZZ_SECONDS  ?= 60
FUZZ_CC       ?= $(shell command -v clang 2>/dev/null || command -v clang-14 2>/dev/null || echo clang)
FUZZ_DIR      := $(BUILD)/fuzz
FUZZ_CFLAGS   := -std=c11 -O1 -g -D_GNU_SOURCE -DHISA_CUDA=0 -fno-omit-frame-pointer \
                 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_LIB_SRCS ?= $(LIB_SRCS)

soak: $(BUILD)/hisa_tests
	HISA_SOAK_OPS=$(SOAK_OPS) $(BUILD)/hisa_tests soak

$(FUZZ_DIR)/fuzz_api: tests/fuzz/fuzz_api.c tests/model.c $(FUZZ_LIB_SRCS) $(HEADERS) Makefile
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ tests/fuzz/fuzz_api.c tests/model.c $(FUZZ_LIB_SRCS) -lm -lpthread

$(FUZZ_DIR)/fuzz_npy: tests/fuzz/fuzz_npy.c tools/npy.c tools/npy.h Makefile
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ tests/fuzz/fuzz_npy.c tools/npy.c

fuzz: $(FUZZ_DIR)/fuzz_api $(FUZZ_DIR)/fuzz_npy
	@for t in api npy; do \
	    mkdir -p $(FUZZ_DIR)/corpus_$$t; \
	    echo "== fuzz_$$t: $(FUZZ_SECONDS) s"; \
	    $(FUZZ_DIR)/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -timeout=20 -rss_limit_mb=2048 \
	        -max_len=4096 -print_final_stats=1 -artifact_prefix=$(FUZZ_DIR)/ \
	        $(FUZZ_DIR)/corpus_$$t tests/corpus/$$t > $(FUZZ_DIR)/fuzz_$$t.log 2>&1 \
	        || { tail -n 80 $(FUZZ_DIR)/fuzz_$$t.log; echo "fuzz_$$t FAILED (log: $(FUZZ_DIR)/fuzz_$$t.log)"; exit 1; }; \
	    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)|^Done ' $(FUZZ_DIR)/fuzz_$$t.log; \
	done
