package main

import (
	"strings"
	"testing"

	"github.com/grupogad/outboxd/server"
)

// configVars lists every environment variable Config reads.
func configVars() []string {
	var out []string
	for _, v := range server.Variables() {
		out = append(out, v.Name)
	}
	return out
}

// Any value of any variable either loads or is refused with a message that
// names that variable; nothing panics.
func FuzzLoadConfig(f *testing.F) {
	vars := configVars()
	for i, v := range []string{"", "0", "-1", "NaN", "1e309", "1h", "-5s", "true", "x", ",,,", "*", "http://", "postgres://u@h:1/d",
		"production", "\x00", "999999999999999999999", "https://a.example,https://b.example"} {
		f.Add(uint8(i), v)
	}
	f.Fuzz(func(t *testing.T, which uint8, value string) {
		name := vars[int(which)%len(vars)]
		_, err := LoadConfig(map[string]string{name: value})
		if err != nil && !strings.Contains(err.Error(), name) {
			// Production additionally requires other variables; those are
			// named instead.
			if name == "ENVIRONMENT" && value == "production" {
				return
			}
			t.Fatalf("%s=%q refused without naming it: %v", name, value, err)
		}
	})
}
