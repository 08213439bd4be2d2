#!/usr/bin/env bash
# promtool (Prometheus v0.316.0's, i.e. Prometheus 3.16) for the alert
# rules' tests (deploy/prometheus), built from the Go module proxy into the
# ignored .tools/bin — never in the main module's go.mod. A few minutes on
# a fresh machine, nothing once built.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.tools/bin/promtool
[ -x "$bin" ] && exit 0
mkdir -p .tools/bin
echo "building promtool (github.com/prometheus/prometheus v0.316.0) into $bin" >&2
GOBIN="$PWD/.tools/bin" GOFLAGS=-buildvcs=false go install github.com/prometheus/prometheus/cmd/promtool@v0.316.0
