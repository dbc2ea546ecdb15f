# The two commands a newcomer needs (see README.md):
#   make run    install dependencies, build (Release), start keygate on examples/keygate.toml
#   make test   install dependencies, build with ASan+UBSan, run the whole test suite
JOBS ?= $(shell nproc)
RELEASE_DIR := build/release
ASAN_DIR := build/asan

.PHONY: deps build run test bench clean

deps:
	./scripts/install-deps.sh

build: deps
	cmake -S . -B $(RELEASE_DIR) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(RELEASE_DIR) -j$(JOBS)

run: build
	./$(RELEASE_DIR)/tools/keygate --config examples/keygate.toml

test: deps
	cmake -S . -B $(ASAN_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKEYGATE_SANITIZE=ON
	cmake --build $(ASAN_DIR) -j$(JOBS)
	cd $(ASAN_DIR) && ctest --output-on-failure -j$(JOBS) --timeout 300

bench: build
	./bench/e2e.sh

clean:
	rm -rf build
