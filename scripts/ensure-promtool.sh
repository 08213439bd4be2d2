#!/usr/bin/env bash
# promtool (Prometheus 3.16: module v0.316.0) for the alert rules' tests
# (deploy/prometheus), into .tools/bin.
exec "$(dirname "$0")/go-tool.sh" promtool github.com/prometheus/prometheus/cmd/promtool@v0.316.0
