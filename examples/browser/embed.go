// Package browser holds outboxd's demo page, index.html, served at GET /
// with the browser client (the npm package in clients/js) at
// GET /outboxd-client.js: embedded, no CDN, works offline.
package browser

import (
	"embed"
	"net/http"

	jsclient "github.com/grupogad/outboxd/clients/js"
)

//go:embed index.html
var files embed.FS

// Routes registers GET / and GET /outboxd-client.js on mux.
func Routes(mux *http.ServeMux) {
	serve := func(body []byte, ctype string) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			h := w.Header()
			h.Set("Content-Type", ctype)
			h.Set("Cache-Control", "no-cache")
			h.Set("X-Content-Type-Options", "nosniff")
			h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:; img-src 'self' data:")
			_, _ = w.Write(body)
		}
	}
	page, err := files.ReadFile("index.html")
	if err != nil {
		panic(err) // embedded at build time: cannot happen
	}
	mux.HandleFunc("GET /{$}", serve(page, "text/html; charset=utf-8"))
	mux.HandleFunc("GET /outboxd-client.js", serve(jsclient.Module, "text/javascript; charset=utf-8"))
}
