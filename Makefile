# hisa: C11 host library + CUDA kernels (when nvcc is found), the hisa tool, and the tests.
#
# `make help` prints the targets and knobs of this file from its `##` comments: a `## text` at the
# end of a rule line documents that target, `##` lines right above an assignment document that
# knob. Document a new target or knob where it is defined and help lists it.
#
# Every object, library and binary depends on $(BUILD)/flags.txt, which holds the compilers and
# flags of the build and is rewritten only when they change: `make CUDA=0` then `make` rebuilds
# everything with CUDA, and `make` twice in a row does nothing the second time.

## =DIR: install prefix
PREFIX    ?= /usr/local
## =DIR: staging root for packages (make install puts files under DESTDIR/PREFIX)
DESTDIR   ?=
## =1: ASan+UBSan build of the CPU library and tests in build-san/ (CUDA defaults to 0)
SANITIZE  ?=
## =1: drop asserts and page poisoning
NDEBUG    ?=
## ="word ...": make test runs only the tests whose names contain one of the words
TESTS     ?=
## =N: tests make test runs at once, each in its own process (default: the CPUs, at most 8; 1: one
## after another in one process)
TEST_JOBS ?=
BUILD     ?= build
CC        ?= cc
ifeq ($(SANITIZE),1)
# The sanitizer pass is for the CPU tests; CUDA code is checked under compute-sanitizer.
BUILD     := build-san
endif

NVCC      ?= $(or $(shell command -v nvcc 2>/dev/null),/usr/local/cuda/bin/nvcc)
NVCC      := $(NVCC)
HAVE_NVCC := $(shell command -v '$(NVCC)' >/dev/null 2>&1 && echo 1 || echo 0)
## =0|1: build the CUDA backend and kernels (default: 1 when nvcc is found, 0 with SANITIZE=1)
CUDA      ?= $(if $(filter 1,$(SANITIZE)),0,$(HAVE_NVCC))
CUDA      := $(CUDA)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
## ="-gencode ...": extra nvcc targets. Always built: sm_90a (Hopper: wgmma, bulk copies,
## griddepcontrol) and the portable image, sm_80 code plus compute_80 PTX, which Ampere, Ada and
## Blackwell cards run (decode and prefill on the mma.sync kernels). E.g. Ada code
## without a JIT at first load: CUDA_ARCH="-gencode arch=compute_89,code=sm_89"
CUDA_ARCH ?=
GENCODE   := -gencode arch=compute_90a,code=sm_90a -gencode arch=compute_80,code=sm_80 \
             -gencode arch=compute_80,code=compute_80 $(CUDA_ARCH)

# The library version comes from hisa.h; the shared library is libhisa.so.MAJOR.MINOR.PATCH, its
# SONAME libhisa.so.MAJOR, and libhisa.so -> libhisa.so.MAJOR -> libhisa.so.MAJOR.MINOR.PATCH.
VERSION   := $(shell awk '$$2 ~ /^HISA_VERSION_(MAJOR|MINOR|PATCH)$$/ { v[$$2] = $$3 } \
               END { print v["HISA_VERSION_MAJOR"] "." v["HISA_VERSION_MINOR"] "." v["HISA_VERSION_PATCH"] }' \
               runtime/hisa.h)
SOMAJOR   := $(firstword $(subst ., ,$(VERSION)))
SONAME    := libhisa.so.$(SOMAJOR)
SOREAL    := libhisa.so.$(VERSION)

# User CFLAGS / LDFLAGS (environment or command line) come last, so they add to these or override.
CFLAGS_BASE := -std=c11 -O2 -g -fPIC -Wall -Wextra -Werror -Wno-unused-function -D_GNU_SOURCE
ifeq ($(NDEBUG),1)
CFLAGS_BASE += -DNDEBUG
endif
ifeq ($(SANITIZE),1)
SANFLAGS  := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
endif
HISA_CFLAGS  := $(CFLAGS_BASE) $(SANFLAGS) -DHISA_CUDA=$(CUDA)
HISA_LDFLAGS := $(SANFLAGS) $(LDFLAGS)
LDLIBS    := -lm -lpthread

ifeq ($(CUDA),1)
HISA_CFLAGS += -I$(CUDA_HOME)/include
NVFLAGS  := -std=c++17 -O3 -g -lineinfo -Xcompiler -fPIC,-Wall $(GENCODE) --expt-relaxed-constexpr \
            -DHISA_CUDA=1 -Werror all-warnings
LDLIBS   += -L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt -lstdc++
ifeq ($(NDEBUG),1)
NVFLAGS  += -DNDEBUG
endif
CU_SRCS  := $(sort $(shell find kernels -name '*.cu' 2>/dev/null))
endif
HISA_CFLAGS += $(CFLAGS)

# Sources at any depth; an object's path mirrors its source's (build/obj/kernels/decode/x.cu.o).
LIB_SRCS  := $(sort $(shell find arena kvcache runtime -name '*.c' 2>/dev/null))
TOOL_SRCS := $(sort $(shell find tools -name '*.c' 2>/dev/null))
TEST_SRCS := $(wildcard tests/*.c)
LIB_OBJS  := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o) $(CU_SRCS:%.cu=$(BUILD)/obj/%.cu.o)
TOOL_OBJS := $(filter-out $(BUILD)/obj/tools/main.o,$(TOOL_SRCS:%.c=$(BUILD)/obj/%.o))
TEST_OBJS := $(TEST_SRCS:%.c=$(BUILD)/obj/%.o)
HEADERS   := $(sort $(shell find runtime arena kvcache kernels tools tests \
                 \( -name '*.h' -o -name '*.cuh' \) 2>/dev/null))

# The test binary wraps the allocators so a test can prove nothing allocates after open.
WRAP := -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=aligned_alloc,--wrap=posix_memalign

# Reliability (issue 6): the soak at full length and the libFuzzer targets (clang, ASan+UBSan, CPU
# only); fuzz inputs, logs and crash artifacts go under $(BUILD)/fuzz/.
## =N: operations in all for make soak
SOAK_OPS      ?= 1000000
## =N: seconds each fuzz target runs for make fuzz
FUZZ_SECONDS  ?= 60
FUZZ_CC       ?= $(or $(shell command -v clang 2>/dev/null || command -v clang-14 2>/dev/null),clang)
FUZZ_CC       := $(FUZZ_CC)
FUZZ_DIR      := $(BUILD)/fuzz
FUZZ_CFLAGS   := -std=c11 -O1 -g -D_GNU_SOURCE -DHISA_CUDA=0 -fno-omit-frame-pointer \
                 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_LIB_SRCS ?= $(LIB_SRCS)

# The flags stamp: one line per setting. It is compared with what this run would build with while
# the Makefile is read, and rewritten (so everything rebuilds) only when they differ.
FLAGS_FILE := $(BUILD)/flags.txt
define FLAGS_NOW
CC=$(strip $(CC))
CFLAGS=$(strip $(HISA_CFLAGS))
NVCC=$(strip $(NVCC))
NVFLAGS=$(strip $(NVFLAGS))
GENCODE=$(strip $(GENCODE))
CUDA=$(strip $(CUDA))
NDEBUG=$(strip $(NDEBUG))
SANITIZE=$(strip $(SANITIZE))
LDFLAGS=$(strip $(HISA_LDFLAGS))
LDLIBS=$(strip $(LDLIBS))
VERSION=$(VERSION)
FUZZ_CC=$(strip $(FUZZ_CC))
FUZZ_CFLAGS=$(strip $(FUZZ_CFLAGS))
endef
ifneq ($(filter-out help clean,$(or $(MAKECMDGOALS),all)),)
ifneq ($(if $(wildcard $(FLAGS_FILE)),$(file <$(FLAGS_FILE))),$(FLAGS_NOW))
$(if $(wildcard $(FLAGS_FILE)),$(info $(FLAGS_FILE): build flags changed, rebuilding $(BUILD)))
$(shell mkdir -p $(BUILD))
$(file >$(FLAGS_FILE),$(FLAGS_NOW))
endif
endif

.PHONY: all test run install clean help soak fuzz sharing launch-probe
all: $(BUILD)/libhisa.a $(BUILD)/libhisa.so $(BUILD)/hisa ## build/libhisa.a, build/libhisa.so (-> .so.0 -> .so.0.1.0), build/hisa

# Only when the stamp is missing although it was written above (make clean all, or deleted).
$(FLAGS_FILE):
	$(shell mkdir -p $(@D))$(file >$@,$(FLAGS_NOW))

$(BUILD)/obj/%.o: %.c $(HEADERS) Makefile $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(CC) $(HISA_CFLAGS) -c $< -o $@

$(BUILD)/obj/%.cu.o: %.cu $(HEADERS) Makefile $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

$(BUILD)/libhisa.a: $(LIB_OBJS) $(FLAGS_FILE)
	@rm -f $@
	ar rcs $@ $(filter %.o,$^)

# The exports of libhisa.so: exactly the functions hisa.h declares (a line that starts with a type,
# or with the name, and names hisa_*( ); everything else (hisa__*, the kernels, cudart, libstdc++)
# stays local. --no-undefined-version: a declared function nobody defines fails the link.
$(BUILD)/hisa.map: runtime/hisa.h Makefile $(FLAGS_FILE)
	@mkdir -p $(@D)
	@{ echo '/* generated by the Makefile from runtime/hisa.h: the exports of libhisa.so */'; \
	   echo '{'; echo '  global:'; \
	   sed -n -E -e '/^(typedef|static)[^A-Za-z0-9_]/d' \
	       -e 's/^([A-Za-z_][A-Za-z0-9_ ]*[ *])?(hisa_[A-Za-z0-9_]+) *\(.*/    \2;/p' runtime/hisa.h; \
	   echo '  local: *;'; echo '};'; } > $@.tmp
	@grep -q '^    hisa_' $@.tmp || { echo "$@: no function declarations found in runtime/hisa.h"; exit 1; }
	@mv $@.tmp $@

$(BUILD)/$(SOREAL): $(LIB_OBJS) $(BUILD)/hisa.map $(FLAGS_FILE)
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=$(BUILD)/hisa.map \
	    -Wl,--no-undefined-version -o $@ \
	    $(filter %.o,$^) $(HISA_LDFLAGS) $(LDLIBS)

$(BUILD)/$(SONAME): $(BUILD)/$(SOREAL)
	ln -sfn $(SOREAL) $@

$(BUILD)/libhisa.so: $(BUILD)/$(SONAME)
	ln -sfn $(SONAME) $@

$(BUILD)/hisa: $(BUILD)/obj/tools/main.o $(TOOL_OBJS) $(BUILD)/libhisa.a $(FLAGS_FILE)
	$(CC) -o $@ $(filter %.o %.a,$^) $(HISA_LDFLAGS) $(LDLIBS)

$(BUILD)/hisa_tests: $(TEST_OBJS) $(TOOL_OBJS) $(BUILD)/libhisa.a $(FLAGS_FILE)
	$(CC) -o $@ $(filter %.o %.a,$^) $(HISA_LDFLAGS) $(WRAP) $(LDLIBS)

# Tests run from the repo root; HISA_TOOL lets tool tests run the built binary. Then
# tests/check_lib.sh checks libhisa.so: its exports are hisa.h's functions, its SONAME, and a
# program linked with -lhisa runs; tests/readme_examples.sh compiles the README's C blocks
# against hisa.h and runs the ones marked <!-- test: c-program --> linked with -lhisa.
test: $(BUILD)/hisa_tests $(BUILD)/hisa $(BUILD)/libhisa.so ## run the tests (GPU tests say "skipped: no CUDA device" without a GPU), then check libhisa.so and the README's C code
	HISA_TOOL=$(BUILD)/hisa HISA_TEST_JOBS=$(TEST_JOBS) ASAN_OPTIONS=protect_shadow_gap=0:detect_leaks=1 \
	    ./$(BUILD)/hisa_tests $(TESTS)
	CC='$(CC)' CFLAGS='$(SANFLAGS)' ASAN_OPTIONS=detect_leaks=1 bash tests/check_lib.sh $(BUILD)
	CC='$(CC)' CFLAGS='$(SANFLAGS)' ASAN_OPTIONS=detect_leaks=1 bash tests/readme_examples.sh $(BUILD)
	bash python/run_tests.sh $(BUILD) $(TESTS)

run: $(BUILD)/hisa ## the main job: hisa stream with its defaults
	./$(BUILD)/hisa stream

install: all ## install the libraries, hisa.h, hisa.pc and the hisa tool under DESTDIR/PREFIX
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/bin \
	    $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 $(BUILD)/libhisa.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/$(SOREAL) $(DESTDIR)$(PREFIX)/lib/
	ln -sfn $(SOREAL) $(DESTDIR)$(PREFIX)/lib/$(SONAME)
	ln -sfn $(SONAME) $(DESTDIR)$(PREFIX)/lib/libhisa.so
	install -m 644 runtime/hisa.h $(DESTDIR)$(PREFIX)/include/
	install -m 755 $(BUILD)/hisa $(DESTDIR)$(PREFIX)/bin/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' -e 's|@LIBS@|$(LDLIBS)|' hisa.pc.in \
	    > $(DESTDIR)$(PREFIX)/lib/pkgconfig/hisa.pc

clean: ## remove build/ and build-san/
	rm -rf build build-san

# The text is this file's `##` comments (see the top); a .PHONY target without one is named too.
define HELP_AWK
NR == 1 { sub(/^# */, ""); title = $$0 }
/^##( |$$)/ { d = d (d == "" ? "" : "\n") substr($$0, 4); next }
/^\.PHONY:/ { n = split($$0, w, /[ \t]+/); for (i = 2; i <= n; i++) phony[w[i]] = 1 }
/^[a-z][a-z_-]*:([^=]|$$).*## / {
    t = $$0; sub(/:.*/, "", t); x = $$0; sub(/.*## /, "", x)
    nt++; tn[nt] = t; td[nt] = x; seen[t] = 1; d = ""; next
}
/^[A-Z][A-Z0-9_]* *[?:+]?=/ && d != "" {
    v = $$0; sub(/ *[?:+]?=.*/, "", v); x = $$0; sub(/^[^=]*= */, "", x)
    if (d ~ /^=[^:]*:/) { v = v substr(d, 1, index(d, ":") - 1); d = substr(d, index(d, ":") + 2) }
    if (x != "" && x !~ /[$$]/) d = d " (default " x ")"
    nk++; kn[nk] = v; kd[nk] = d; d = ""; next
}
{ d = "" }
END {
    print title; print ""; print "Targets:"
    for (i = 1; i <= nt; i++) printf "  make %-10s %s\n", tn[i], td[i]
    for (t in phony) if (!(t in seen)) printf "  make %-10s (undocumented)\n", t
    print ""; print "Knobs (make VAR=value; CC, NVCC, CFLAGS, LDFLAGS, BUILD are honoured too):"
    for (i = 1; i <= nk; i++) {
        x = kd[i]; gsub(/\n/, "\n                    ", x)
        if (length(kn[i]) > 17) printf "  %s\n                    %s\n", kn[i], x
        else printf "  %-17s %s\n", kn[i], x
    }
}
endef

help: export HELP_AWK := $(HELP_AWK)
help: ## this list
	@awk "$$HELP_AWK" Makefile

soak: $(BUILD)/hisa_tests ## the model-based soak at full length (SOAK_OPS operations)
	HISA_SOAK_OPS=$(SOAK_OPS) $(BUILD)/hisa_tests soak

# A measurement for kernel design, on the CPU reference (no GPU): bench/sharing.c.
$(BUILD)/bench_sharing: bench/sharing.c $(BUILD)/obj/tools/synth.o $(BUILD)/libhisa.a $(HEADERS) $(FLAGS_FILE)
	$(CC) $(HISA_CFLAGS) -o $@ bench/sharing.c $(BUILD)/obj/tools/synth.o $(BUILD)/libhisa.a $(HISA_LDFLAGS) $(LDLIBS)

sharing: $(BUILD)/bench_sharing ## kept blocks shared by neighbouring queries of the prefill bench's chunk (CPU reference)
	./$(BUILD)/bench_sharing --json $(BUILD)/sharing.json

# A measurement for kernel design, on a Hopper GPU: what a stage boundary of the decode chain
# costs (a PDL launch against a grid barrier), bench/launch_probe.cu.
$(BUILD)/launch_probe: bench/launch_probe.cu $(FLAGS_FILE)
	@test "$(CUDA)" = 1 || { echo "make launch-probe: CUDA=$(CUDA): the probe needs nvcc (a CUDA build)"; exit 2; }
	$(NVCC) -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a -o $@ bench/launch_probe.cu

launch-probe: $(BUILD)/launch_probe ## kernel boundary (PDL) against grid barrier on the GPU (Hopper; bench/launch_probe.cu)
	./$(BUILD)/launch_probe --json $(BUILD)/launch_probe.json

$(FUZZ_DIR)/fuzz_api: tests/fuzz/fuzz_api.c tests/model.c $(FUZZ_LIB_SRCS) $(HEADERS) Makefile $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ tests/fuzz/fuzz_api.c tests/model.c $(FUZZ_LIB_SRCS) -lm -lpthread

$(FUZZ_DIR)/fuzz_npy: tests/fuzz/fuzz_npy.c tools/npy.c tools/npy.h Makefile $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ tests/fuzz/fuzz_npy.c tools/npy.c

fuzz: $(FUZZ_DIR)/fuzz_api $(FUZZ_DIR)/fuzz_npy ## build the libFuzzer targets (clang) and run each FUZZ_SECONDS on its corpus
	@for t in api npy; do \
	    mkdir -p $(FUZZ_DIR)/corpus_$$t; \
	    echo "== fuzz_$$t: $(FUZZ_SECONDS) s"; \
	    $(FUZZ_DIR)/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -timeout=20 -rss_limit_mb=2048 \
	        -max_len=4096 -print_final_stats=1 -artifact_prefix=$(FUZZ_DIR)/ \
	        $(FUZZ_DIR)/corpus_$$t tests/corpus/$$t > $(FUZZ_DIR)/fuzz_$$t.log 2>&1 \
	        || { tail -n 80 $(FUZZ_DIR)/fuzz_$$t.log; echo "fuzz_$$t FAILED (log: $(FUZZ_DIR)/fuzz_$$t.log)"; exit 1; }; \
	    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)|^Done ' $(FUZZ_DIR)/fuzz_$$t.log; \
	done
