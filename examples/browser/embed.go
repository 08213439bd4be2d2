// Package browser holds the browser side of outboxd: outboxd-client.js, the
// dependency-free client a frontend copies, and index.html, the demo page
// outboxd serves at GET / (embedded, no CDN, works offline).
package browser

import (
	"embed"
	"net/http"
)

//go:embed index.html outboxd-client.js
var files embed.FS

// Routes registers GET / and GET /outboxd-client.js on mux.
func Routes(mux *http.ServeMux) {
	serve := func(name, ctype string) http.HandlerFunc {
		body, err := files.ReadFile(name)
		if err != nil {
			panic(err) // embedded at build time: cannot happen
		}
		return func(w http.ResponseWriter, _ *http.Request) {
			h := w.Header()
			h.Set("Content-Type", ctype)
			h.Set("Cache-Control", "no-cache")
			h.Set("X-Content-Type-Options", "nosniff")
			h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:; img-src 'self' data:")
			_, _ = w.Write(body)
		}
	}
	mux.HandleFunc("GET /{$}", serve("index.html", "text/html; charset=utf-8"))
	mux.HandleFunc("GET /outboxd-client.js", serve("outboxd-client.js", "text/javascript; charset=utf-8"))
}
