#!/usr/bin/env bash
# helm v4.3.2 for the chart's tests (deploy/helm: helm lint, helm template),
# built from the Go module proxy into the ignored .tools/bin — never in the
# main module's go.mod. Minutes on a fresh machine, nothing once built.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.tools/bin/helm
[ -x "$bin" ] && exit 0
mkdir -p .tools/bin
echo "building helm (helm.sh/helm/v4 v4.3.2) into $bin" >&2
GOBIN="$PWD/.tools/bin" GOFLAGS=-buildvcs=false go install helm.sh/helm/v4/cmd/helm@v4.3.2
