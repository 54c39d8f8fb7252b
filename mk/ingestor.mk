# The Rust ingestor (rust-ingestor/): build, test, bench. Included by the root Makefile.

##@ Ingestor

CARGO ?= cargo
INGESTOR_DIR := rust-ingestor
INGESTOR_BINARY := $(INGESTOR_DIR)/target/release/visiontrack-ingestor

.PHONY: ingestor-build
ingestor-build: ## Build the ingestor release binary (rust-ingestor/target/release/visiontrack-ingestor)
	cd $(INGESTOR_DIR) && $(CARGO) build --release --locked
	@echo "built $(INGESTOR_BINARY)"

.PHONY: ingestor-test
ingestor-test: ## Ingestor tests (unit, shared contract vectors, real redis-server), clippy -D warnings, rustfmt
	cd $(INGESTOR_DIR) && $(CARGO) test --locked
	cd $(INGESTOR_DIR) && $(CARGO) clippy --locked --all-targets -- -D warnings
	@if $(CARGO) fmt --version >/dev/null 2>&1; then cd $(INGESTOR_DIR) && $(CARGO) fmt --check; \
	  else echo "rustfmt not installed: format check skipped"; fi

.PHONY: ingestor-bench
ingestor-bench: ## Ingestor benchmark with nginx as the yardstick in the same run (about 2 minutes; prints a table)
	bash bench/ingestor/run.sh

.PHONY: mqtt-bench
mqtt-bench: ## MQTT benchmark: QoS 1 msg/s with PUBACK after XADD, Mosquitto as yardstick, RSS of 10,000 idle connections
	bash bench/mqtt/run.sh

.PHONY: ingestor-run
ingestor-run: ingestor-build ## Run the ingestor in the foreground with the default settings (Redis on 127.0.0.1:6379)
	$(INGESTOR_BINARY)
