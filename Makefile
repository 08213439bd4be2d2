# outboxd — run `make help` for the targets.
GO        ?= go
PKGS      ?= ./...
BENCHTIME ?= 1x

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-12s %s\n", $$1, $$2}'

.PHONY: db-up
db-up: ## Make sure the local PostgreSQL is running (starts it if down)
	@scripts/ensure-postgres.sh

.PHONY: test-deps
test-deps: db-up ## Everything the tests need (apt-installs what is missing): PostgreSQL up, chromium, pgbouncer, node and npm, the Python packages, Jaeger, promtool, helm, deploycheck, Centrifugo (the benchmark's peer)
	@scripts/ensure-chromium.sh
	@scripts/ensure-pgbouncer.sh
	@scripts/ensure-node.sh
	@scripts/ensure-python.sh
	@scripts/python-venv.sh >/dev/null
	@scripts/ensure-jaeger.sh
	@scripts/ensure-promtool.sh
	@scripts/ensure-helm.sh
	@scripts/ensure-deploycheck.sh
	@scripts/ensure-centrifugo.sh

.PHONY: run
run: db-up ## Run the sidecar with the default (development) config on :8002
	$(GO) run ./cmd/outboxd

.PHONY: demo
demo: ## Run outboxd and the FastAPI example app together (http://127.0.0.1:8000/); apt-installs Debian's Python packages if missing, says which first
	@scripts/demo.sh

.PHONY: build
build: ## Build bin/outboxd
	$(GO) build -o bin/outboxd ./cmd/outboxd

.PHONY: test
test: test-deps ## go vet, then every test with -race against the real PostgreSQL (chaos short forms included)
	$(GO) vet $(PKGS)
	$(GO) vet -tags pgrestart ./internal/chaos
	@# The producer library is a module of its own (outbox/go.mod).
	cd outbox && $(GO) vet ./... && $(GO) test -race -count=1 ./...
	$(GO) test -race -count=1 -timeout 15m $(PKGS)
	@# Restarts the PostgreSQL cluster: alone, after every other test.
	$(GO) test -race -count=1 -timeout 5m -tags pgrestart -run '^TestPostgresRestart$$' ./internal/chaos

.PHONY: chaos
chaos: test-deps ## Long chaos forms: 20,000 events with kills every 2 s, a 1,000,000-row burst, PostgreSQL restart
	OUTBOXD_CHAOS_LONG=1 $(GO) test -count=1 -timeout 30m -tags pgrestart -v ./internal/chaos

.PHONY: test-race
test-race: test ## Same as test (tests always run with -race)

.PHONY: test-short
test-short: db-up ## Tests without -race, for a quick loop
	cd outbox && $(GO) test -count=1 ./...
	$(GO) test -count=1 $(PKGS)

.PHONY: bench
bench: db-up ## Benchmarks (BENCHTIME=1x in CI; e.g. make bench BENCHTIME=3x)
	$(GO) test -run '^$$' -bench . -benchtime=$(BENCHTIME) -timeout 30m $(PKGS)

.PHONY: fuzz
fuzz: ## Run each fuzz target for FUZZTIME (default 30s)
	@for f in FuzzDecodeClientMessage FuzzParseSince FuzzValidateToken; do \
		$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $${FUZZTIME:-30s} ./ws || exit 1; done
	$(GO) test -run '^$$' -fuzz '^FuzzLoadConfig$$' -fuzztime $${FUZZTIME:-30s} ./cmd/outboxd

.PHONY: lint
lint: ## gofmt, go vet and staticcheck (installed on demand)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet $(PKGS)
	cd outbox && $(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)

.PHONY: db-reset
db-reset: db-up ## Drop and recreate the outbox schema in DATABASE_URL (destroys events!)
	$(GO) run ./cmd/outboxd migrate down
	$(GO) run ./cmd/outboxd migrate up
