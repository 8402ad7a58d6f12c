# moat's front door. `make up` runs moat; `make test` runs every test. See README.md.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
JOBS ?= $(shell nproc)
BUILD := build
GUEST := $(BUILD)/guest
FUZZ_SECONDS ?= 30

.PHONY: all setup deps build build-asan guest up test test-unit test-asan test-integration \
        test-e2e test-compat fuzz fmt fmt-check tidy bench clean

all: build

# Everything a fresh machine needs: packages, the build, the guest image (cached by content).
setup: deps build guest

deps:
	@scripts/setup-deps.sh

$(BUILD)/build.ninja:
	cmake --preset default >/dev/null

build: $(BUILD)/build.ninja
	cmake --build $(BUILD) -j$(JOBS)

build-asan:
	@[ -f build-asan/build.ninja ] || cmake --preset asan >/dev/null
	cmake --build build-asan -j$(JOBS) --target unit_tests

guest: build
	guest/build-kernel.sh $(GUEST)
	guest/build-rootfs.sh $(GUEST) $(BUILD)/bin/moat-guest

up: setup
	$(BUILD)/bin/moatd serve --listen 127.0.0.1:3000 --data-dir .moat

test: setup fmt-check test-unit test-asan fuzz test-integration test-e2e test-compat
	@echo "make test: all suites passed"

test-unit: build
	ctest --test-dir $(BUILD) -L unit --output-on-failure

test-asan: build-asan
	ctest --test-dir build-asan -L unit --output-on-failure

test-integration: build
	ctest --test-dir $(BUILD) -L integration --output-on-failure

test-e2e: build guest
	ctest --test-dir $(BUILD) -L e2e --output-on-failure

# The official e2b SDK (tests/compat, npm lockfile) against a real moatd with real VMs.
test-compat: build guest
	ctest --test-dir $(BUILD) -L compat --output-on-failure

# Benchmarks, side by side in one run; JSON lands in build/bench/.
bench: build guest
	$(BUILD)/bin/sandbox_bench --guest-dir $(GUEST) --json $(BUILD)/bench/sandbox.json
	$(BUILD)/bin/snapshot_bench --guest-dir $(GUEST) --json $(BUILD)/bench/snapshot.json
	$(BUILD)/bin/net_bench --guest-dir $(GUEST) --json $(BUILD)/bench/net.json
	$(BUILD)/bin/api_bench --guest-dir $(GUEST) --json $(BUILD)/bench/api.json

# The fuzz targets, each for a bounded time (FUZZ_SECONDS): the channel decoder (bytes from the
# guest) and the RAM splitter (the migration stream from QEMU).
fuzz:
	@[ -f build-fuzz/build.ninja ] || cmake --preset fuzz >/dev/null
	cmake --build build-fuzz -j$(JOBS) --target frame_decoder_fuzz ram_split_fuzz
	mkdir -p build-fuzz/corpus build-fuzz/corpus-ram-split
	@build-fuzz/bin/frame_decoder_fuzz -max_total_time=$(FUZZ_SECONDS) -max_len=4096 \
	  -print_final_stats=1 build-fuzz/corpus > build-fuzz/frame_decoder_fuzz.log 2>&1; \
	  rc=$$?; tail -n 5 build-fuzz/frame_decoder_fuzz.log; exit $$rc
	@build-fuzz/bin/ram_split_fuzz -max_total_time=$(FUZZ_SECONDS) -max_len=16384 \
	  -print_final_stats=1 build-fuzz/corpus-ram-split tests/fuzz/seeds/ram_split \
	  > build-fuzz/ram_split_fuzz.log 2>&1; rc=$$?; tail -n 5 build-fuzz/ram_split_fuzz.log; exit $$rc

FORMAT_FILES = $(shell git ls-files '*.cc' '*.h' 2>/dev/null)

fmt:
	clang-format -i $(FORMAT_FILES)

fmt-check:
	@clang-format --dry-run -Werror $(FORMAT_FILES)

tidy: build
	run-clang-tidy -quiet -p $(BUILD) 'src/' 2>/dev/null || \
	  clang-tidy -p $(BUILD) $(filter src/%.cc,$(FORMAT_FILES))

clean:
	rm -rf $(BUILD) build-asan build-fuzz
