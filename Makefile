# moat's front door. `make up` runs moat; `make test` runs every test. See README.md.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
JOBS ?= $(shell nproc)
BUILD := build
GUEST := $(BUILD)/guest
FUZZ_SECONDS ?= 20

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
	guest/build-rootfs.sh $(GUEST) $(BUILD)/bin/moat-guest code-interpreter

up: setup
	$(BUILD)/bin/moatd serve --listen 127.0.0.1:3000 --data-dir .moat

# One after the other, each step's time said (a fresh machine's run is mostly the three builds,
# the guest image and the VM suites: docs/testing.md).
TEST_STEPS = setup fmt-check test-unit test-asan fuzz test-integration test-e2e test-compat
test:
	@start=$$(date +%s); \
	for step in $(TEST_STEPS); do \
	  t=$$(date +%s); \
	  $(MAKE) --no-print-directory $$step || { echo "make test: $$step FAILED"; exit 1; }; \
	  echo "make test: $$step took $$(( $$(date +%s) - t )) s"; \
	done; \
	echo "make test: all suites passed in $$(( $$(date +%s) - start )) s"

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
	$(BUILD)/bin/mapped_ram_bench --guest-dir $(GUEST) --json $(BUILD)/bench/mapped_ram.json
	$(BUILD)/bin/net_bench --guest-dir $(GUEST) --json $(BUILD)/bench/net.json
	$(BUILD)/bin/api_bench --guest-dir $(GUEST) --json $(BUILD)/bench/api.json
	$(BUILD)/bin/template_bench --guest-dir $(GUEST) --json $(BUILD)/bench/template.json
	bench/fleet_bench.sh $(BUILD) $(BUILD)/bench/fleet.json
	bench/code_interpreter_bench.sh $(BUILD) $(BUILD)/bench/code_interpreter.json
	bench/store_bench.sh $(BUILD) $(BUILD)/bench/store.json
	bench/sdk_bench.sh $(BUILD) $(BUILD)/bench/sdk.json
	bench/capacity_bench.sh $(BUILD) $(BUILD)/bench/capacity.json
	$(BUILD)/bin/history_bench --guest-dir $(GUEST) --json $(BUILD)/bench/history.json

# The fuzz targets (tests/fuzz, docs/security.md "Fuzzing"), one after the other: the channel
# decoder and the RAM splitter for FUZZ_SECONDS (20 s) each, every other parser for
# FUZZ_SECONDS_EACH (12 s): about 3 minutes in all (tests/fuzz/campaign.sh runs long ones). Each
# starts from its seeds (tests/fuzz/seeds/<name>) and the corpus of earlier runs
# (build-fuzz/corpora/<name>); a crash fails `make fuzz`, names the target and shows its log (the
# crashing input is saved as build-fuzz/<name>_fuzz-crash-*).
fuzz:
	@[ -f build-fuzz/build.ninja ] || cmake --preset fuzz >/dev/null
	cmake --build build-fuzz -j$(JOBS) --target frame_decoder_fuzz ram_split_fuzz api_json_fuzz \
	  connect_fuzz multipart_fuzz gzip_fuzz query_fuzz qmp_fuzz domain_proxy_fuzz envd_target_fuzz \
	  guest_reply_fuzz code_stream_fuzz execute_stream_fuzz remote_manifest_fuzz
	@each=$(or $(FUZZ_SECONDS_EACH),12); failed=""; \
	for spec in frame_decoder:4096:$(FUZZ_SECONDS) ram_split:16384:$(FUZZ_SECONDS) \
	    api_json:2048:$$each connect:2048:$$each multipart:4096:$$each gzip:8192:$$each \
	    query:1024:$$each qmp:1024:$$each domain_proxy:4096:$$each envd_target:1024:$$each \
	    guest_reply:2048:$$each code_stream:4096:$$each execute_stream:4096:$$each \
	    remote_manifest:4096:$$each; do \
	  IFS=: read -r name max_len secs <<< "$$spec"; \
	  mkdir -p build-fuzz/corpora/$$name; \
	  seeds=tests/fuzz/seeds/$$name; [ -d $$seeds ] || seeds=; \
	  log=build-fuzz/$${name}_fuzz.log; \
	  if build-fuzz/bin/$${name}_fuzz -max_total_time=$$secs -max_len=$$max_len \
	      -print_final_stats=1 -artifact_prefix=build-fuzz/$${name}_fuzz- \
	      build-fuzz/corpora/$$name $$seeds > $$log 2>&1; then \
	    echo "fuzz $$name: ok, $$(grep -o 'number_of_executed_units: [0-9]*' $$log | grep -o '[0-9]*$$') runs in $$secs s"; \
	  else \
	    echo "fuzz $$name: FAILED ($$log):"; tail -n 40 $$log; failed="$$failed $$name"; \
	  fi; \
	done; \
	if [ -n "$$failed" ]; then echo "make fuzz: crashes in$$failed"; exit 1; fi

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
