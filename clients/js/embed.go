// Package jsclient embeds the browser client's ES module (src/index.js, the
// npm package outboxd-client) so that outboxd's demo page serves the very
// file the package publishes, not a copy.
package jsclient

import _ "embed"

// Module is src/index.js: an ES module with no imports, served as
// /outboxd-client.js.
//
//go:embed src/index.js
var Module []byte
