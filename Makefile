# The two commands a newcomer needs (see README.md), each after ./scripts/install-deps.sh, which
# installs make itself on a bare Debian 12 (it returns at once when everything is installed):
#   make run    build keygate and its tools (Release, no tests or benchmarks), start keygate on
#               examples/keygate.toml
#   make test   build with ASan+UBSan (and the Release keygate of make build), run the whole
#               test suite
#   make tsan   build with ThreadSanitizer, run the suite (not in CI; docs/architecture.md,
#               "Data races: the ThreadSanitizer build")
# and for a host: make install (PREFIX=/usr/local) installs what `make build` built, with the
# systemd unit (docs/operations.md).
# Every target but clean runs scripts/install-deps.sh first as well.
JOBS ?= $(shell nproc)
RELEASE_DIR := build/release
ASAN_DIR := build/asan
TSAN_DIR := build/tsan

.PHONY: deps build run install test tsan bench clean

deps:
	./scripts/install-deps.sh

# Tests and micro-benchmarks are left out: a first `make run` builds only what it runs.
build: deps
	cmake -S . -B $(RELEASE_DIR) -DCMAKE_BUILD_TYPE=Release -DKEYGATE_BUILD_TESTS=OFF \
	  -DKEYGATE_BUILD_BENCH=OFF
	cmake --build $(RELEASE_DIR) -j$(JOBS)

run: build
	./$(RELEASE_DIR)/tools/keygate --config examples/keygate.toml

# keygate, keygatectl, the systemd unit (ExecStart= names PREFIX/bin/keygate), the example
# config and the docs; never /etc (docs/operations.md, "Install").
PREFIX ?= /usr/local
install: build
	cmake --install $(RELEASE_DIR) --prefix $(PREFIX)

# The Release keygate of `make build` too: the tests that run keygate out of descriptors need an
# unsanitized one (tests/integration/test_server.h, KEYGATE_DESCRIPTOR_TESTS).
test: build
	cmake -S . -B $(ASAN_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKEYGATE_SANITIZE=ON \
	  -DKEYGATE_UNSANITIZED_BINARY=$(abspath $(RELEASE_DIR))/tools/keygate
	cmake --build $(ASAN_DIR) -j$(JOBS)
	cd $(ASAN_DIR) && ctest --output-on-failure -j$(JOBS) --timeout 300

# Reports go to $(TSAN_DIR)/tsan-reports/report.<pid> (none: no race seen); a keygate with one
# exits 66, which fails its test. bench_smoke (wrk at full speed) and install_layout (no
# threads) are left out.
tsan: deps
	cmake -S . -B $(TSAN_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKEYGATE_TSAN=ON \
	  -DKEYGATE_BUILD_BENCH=OFF
	cmake --build $(TSAN_DIR) -j$(JOBS)
	rm -rf $(TSAN_DIR)/tsan-reports && mkdir -p $(TSAN_DIR)/tsan-reports
	cd $(TSAN_DIR) && TSAN_OPTIONS="halt_on_error=0 second_deadlock_stack=1 history_size=4 \
	  suppressions=$(abspath tests/tsan.supp) log_path=$(abspath $(TSAN_DIR))/tsan-reports/report" \
	  ctest --output-on-failure -j$(JOBS) --timeout 900 -E '^(bench_smoke|install_layout)$$'
	@ls $(TSAN_DIR)/tsan-reports

# bench/e2e.sh also runs bench/keygate-bare-responder, built only with KEYGATE_BUILD_BENCH.
bench: deps
	cmake -S . -B $(RELEASE_DIR) -DCMAKE_BUILD_TYPE=Release -DKEYGATE_BUILD_TESTS=OFF \
	  -DKEYGATE_BUILD_BENCH=ON
	cmake --build $(RELEASE_DIR) -j$(JOBS)
	./bench/e2e.sh

clean:
	rm -rf build
