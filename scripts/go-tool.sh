#!/usr/bin/env bash
# go-tool.sh NAME PACKAGE@VERSION: build a test or benchmark tool from the Go
# module proxy into the ignored .tools/bin/NAME — never in the main module's
# go.mod — unless it is there already. Minutes on a fresh machine for the
# large ones (promtool, helm), nothing once built.
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1 pkg=$2
bin=.tools/bin/$name
[ -x "$bin" ] && exit 0
mkdir -p .tools/bin
echo "building $name ($pkg) into $bin" >&2
GOBIN="$PWD/.tools/bin" GOFLAGS=-buildvcs=false go install "$pkg"
