# depin-gateway: the two commands of the quick start, and a few more.
#
#   make run    build the plugins and the gateway, create a device key if
#               there is none, run with deploy/gateway.toml on 127.0.0.1:8080
#   make test   run the whole test suite (unit, end-to-end, SDK doc tests)

CARGO ?= cargo
CONFIG ?= deploy/gateway.toml
WASM_TARGET := wasm32-wasip2
# Every plugin component the gateway and its tests use.
PLUGINS := -p template-plugin -p hostile-plugin -p other-world-plugin
PLUGINS += -p storage-cache-plugin
PLUGINS += -p compute-task-plugin
PLUGINS += -p hotspot-relay-plugin
PLUGINS += -p sensor-aggregator-plugin
PLUGINS += -p broken-proofs-plugin
# Job modules (WASI preview 1) of the compute-task tests and benchmark.
JOB_TARGET := wasm32-wasip1

.PHONY: run test plugins gateway collector wasm-target bench bench-ops lint clean

run: plugins gateway
	@test -f data/device.key || ./target/release/depin-gateway keygen --config $(CONFIG)
	./target/release/depin-gateway run --config $(CONFIG)

test: plugins
	$(CARGO) test --workspace

wasm-target:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	@rustup target list --installed | grep -qx $(JOB_TARGET) || rustup target add $(JOB_TARGET)

plugins: wasm-target
	$(CARGO) build --profile plugin --target $(WASM_TARGET) $(PLUGINS)
	@$(MAKE) --no-print-directory python-plugin

gateway:
	$(CARGO) build --release -p depin-gateway

# The reference collector: ./target/release/depin-collector --config deploy/collector.toml
collector:
	$(CARGO) build --release -p depin-collector

bench: plugins
	$(CARGO) run --release -p depin-bench

# TLS vs plain and OTLP tracing on vs off (issue 8); runs the release binary.
bench-ops: plugins gateway
	$(CARGO) run --release -p depin-bench --bin depin-bench-ops

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean

.PHONY: bench-epochs
# Epoch close over 1M records and collector report verification (issue 7).
bench-epochs:
	$(CARGO) run --release -p depin-bench --bin depin-bench-epochs

.PHONY: bench-storage-cache
# storage-cache hits (4 KiB, 16 MiB) vs nginx with wrk (issue 3); needs
# Debian's nginx and wrk.
bench-storage-cache: plugins
	$(CARGO) run --release -p depin-bench --bin depin-bench-storage-cache

.PHONY: bench-hostile
# Slowloris, spoofed UDP sources and an MQTT flood against a gateway
# process, each with its baseline (issue 19); needs mosquitto.
bench-hostile: plugins gateway
	$(CARGO) run --release -p depin-bench --bin depin-bench-hostile

.PHONY: python-plugin
# The Python example plugin, built with componentize-py (PyPI) against wit/:
# the copy .ci/run installs in target/py-tools, else one on PATH. Without
# it the plugin is skipped with a note (the tests that need it say how to
# install it).
COMPONENTIZE_PY ?= $(firstword $(wildcard target/py-tools/bin/componentize-py) $(shell command -v componentize-py 2>/dev/null))
PYTHON_COMPONENT := target/$(WASM_TARGET)/plugin/python_counter.wasm
python-plugin:
	@if [ -z "$(COMPONENTIZE_PY)" ]; then \
		echo "note: componentize-py not found; plugins/python-counter not built (pip install componentize-py)"; \
	else \
		$(MAKE) --no-print-directory $(PYTHON_COMPONENT); \
	fi

$(PYTHON_COMPONENT): plugins/python-counter/app.py $(wildcard wit/*.wit)
	mkdir -p $(dir $@)
	cd plugins/python-counter && $(abspath $(COMPONENTIZE_PY)) -d ../../wit -w resource-plugin \
		componentize app -o ../../$@

.PHONY: bench-fleet
# Simulated gateways (device keys, signed reports, mTLS, challenges, some
# cheating) against collector processes (issue 23). FLEET_ARGS e.g.
# `--gateways 40 --epochs 10`, or `--store postgres --replicas 2` (needs
# Debian's postgresql and a collector with the PostgreSQL store).
FLEET_ARGS ?=
bench-fleet: collector
	$(CARGO) run --release -p depin-bench --bin depin-bench-fleet -- $(FLEET_ARGS)
