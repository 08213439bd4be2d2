#!/usr/bin/env bash
# Centrifugo v6.9.1, the peer of `outboxbench -scenario vs-centrifugo`,
# built from the Go module proxy into the ignored .tools/bin (never
# committed, never in the main module's go.mod).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.tools/bin/centrifugo
[ -x "$bin" ] && exit 0
mkdir -p .tools/bin
echo "building Centrifugo v6.9.1 into $bin" >&2
GOBIN="$PWD/.tools/bin" GOFLAGS=-buildvcs=false go install github.com/centrifugal/centrifugo/v6@v6.9.1
