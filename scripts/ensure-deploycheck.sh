#!/usr/bin/env bash
# deploycheck (tools/deploycheck, a module of its own: the Kubernetes,
# Prometheus Operator and compose-go types stay out of the main go.mod)
# into the ignored .tools/bin. Rebuilt when its sources change.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .tools/bin
(cd tools/deploycheck && GOFLAGS=-buildvcs=false go build -o ../../.tools/bin/deploycheck .)
