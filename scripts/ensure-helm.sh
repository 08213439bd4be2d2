#!/usr/bin/env bash
# helm v4.3.2 for the chart's tests (deploy/helm: lint, template), into
# .tools/bin.
exec "$(dirname "$0")/go-tool.sh" helm helm.sh/helm/v4/cmd/helm@v4.3.2
