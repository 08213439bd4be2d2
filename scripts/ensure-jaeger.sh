#!/usr/bin/env bash
# Jaeger v2 all-in-one for the end-to-end tracing test, built from the Go
# module proxy as a tool of its own module (tools/jaeger/go.mod: its replace
# directives rule out `go install …@version`) into the ignored .tools/bin.
# About 7 minutes on a fresh machine, seconds with a warm build cache.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.tools/bin/jaeger
[ -x "$bin" ] && exit 0
mkdir -p .tools/bin
echo "building Jaeger v2 (tools/jaeger) into $bin" >&2
(cd tools/jaeger && GOFLAGS=-buildvcs=false go build -o ../../$bin github.com/jaegertracing/jaeger/cmd/jaeger)
