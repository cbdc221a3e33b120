# PGBastion build. `make help` lists the targets.
GO        ?= go
TAGS      := hashicorpmetrics
GOFLAGS   := -tags=$(TAGS)
BIN       := bin/pgbastion
PKGS      := ./...

.PHONY: build test check bench demo help fuzz clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

build: ## build bin/pgbastion
	$(GO) build $(GOFLAGS) -o $(BIN) ./cmd/pgbastion

test: build ## run unit, integration and end-to-end tests with the race detector
	$(GO) test $(GOFLAGS) -race -count=1 -timeout 40m $(PKGS)

check: ## go vet, gofmt and the tests
	$(GO) vet $(GOFLAGS) $(PKGS)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(MAKE) test

bench: build ## micro-benchmarks, then the proxy comparison (needs pgbench, pgbouncer, haproxy)
	$(GO) test $(GOFLAGS) -run '^$$' -bench . -benchmem ./pgwire ./pool ./engine
	$(GO) run $(GOFLAGS) ./bench/cmd/pgbench-compare

FUZZ_PKGS := ./pgwire ./pgwire/auth ./engine ./ha/fsm ./cmd/pgbastion

fuzz: ## run each fuzz target for 30 s
	@for p in $(FUZZ_PKGS); do \
		for t in $$($(GO) test $(GOFLAGS) -list 'Fuzz.*' $$p | grep ^Fuzz); do \
			$(GO) test $(GOFLAGS) $$p -run '^$$' -fuzz "^$$t$$" -fuzztime 30s || exit 1; done; done

demo: build ## start a local demo cluster and print how to connect (Ctrl-C stops it)
	./$(BIN) demo

clean: ## remove build output
	rm -rf bin
