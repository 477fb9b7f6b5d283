# The two commands of README.md. Each does its own set-up (scripts/setup needs root).
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo

.PHONY: help setup test demo bench doc packages fuzz

help:
	@echo "make demo   run the lab demo (the main job)"
	@echo "make test   run formatting, lints and the whole test suite"
	@echo "make bench  reproduce BENCHMARKS.md"
	@echo "make fuzz   run every fuzz target for FUZZ_SECONDS (default 600) each"
	@echo "make packages  build the .deb packages into target/debian (docs/packages.md)"

setup:
	scripts/setup

# A whole-suite run gains nothing from incremental state, which costs gigabytes of disk.
test: export CARGO_INCREMENTAL := 0
test: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) nextest run --workspace --locked --profile ci
	scripts/fuzz 30

demo: setup
	scripts/demo

FUZZ_SECONDS ?= 600
fuzz: setup
	scripts/fuzz $(FUZZ_SECONDS)

bench: setup
	scripts/bench

packages: setup
	scripts/package

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --locked
