// Package observability sets up outboxd's logs (log/slog), and will hold its
// OpenTelemetry tracer and meter providers.
//
// Logs are text in development and JSON in production (LOG_FORMAT overrides),
// at LOG_LEVEL. Tokens are never logged: the hub strips them from requests
// before anything can log them.
package observability
