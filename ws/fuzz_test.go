package ws

import (
	"context"
	"strconv"
	"testing"
	"time"
)

func FuzzDecodeClientMessage(f *testing.F) {
	for _, s := range []string{`{"type":"ping"}`, `{"type":"pong"}`, `{}`, `[]`, `null`, `"ping"`, `{"type":1}`,
		`{"type":"ping"}{"type":"ping"}`, `{"type":"ping"} x`, " {\"type\":\"ping\"}\n", `{"type":"` + string(rune(0)) + `"}`, ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, bad := DecodeClientMessage(b)
		if bad == nil {
			if m.Type != "ping" {
				t.Fatalf("accepted type %q", m.Type)
			}
			return
		}
		if bad.Code != ErrCodeBadJSON && bad.Code != ErrCodeUnknownType || bad.Message == "" || len(bad.Message) > 200 {
			t.Fatalf("error %+v", bad)
		}
	})
}

func FuzzParseSince(f *testing.F) {
	for _, s := range []string{"", "0", "1", "-1", "18446744073709551616", "9223372036854775807", "1e3", " 1", "+1", "0x1", "abc"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, ok, err := ParseSince(s)
		switch {
		case s == "":
			if ok || err != nil {
				t.Fatal("empty since must mean live")
			}
		case err != nil:
			if ok || len(err.Error()) > 160 {
				t.Fatalf("error %v", err)
			}
		default:
			if !ok || n < 0 {
				t.Fatalf("since %q → %d", s, n)
			}
			if back, _ := strconv.ParseInt(s, 10, 64); back != n {
				t.Fatalf("since %q → %d", s, n)
			}
		}
	})
}

func FuzzValidateToken(f *testing.F) {
	a, err := NewAuthenticator(context.Background(), AuthConfig{SecretKey: testSecret, RequireExp: true})
	if err != nil {
		f.Fatal(err)
	}
	good, _ := MintHS256(testSecret, "u1", []string{"r"}, time.Hour)
	for _, s := range []string{good, good[:len(good)-2], "a.b.c", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1In0.", "", "...."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := a.Validate(context.Background(), tok)
		if err == nil {
			if tok != good || c.UserID != "u1" {
				t.Fatalf("accepted %q as %+v", tok, c)
			}
			return
		}
		if len(err.Error()) > 200 {
			t.Fatalf("long error %v", err)
		}
	})
}
