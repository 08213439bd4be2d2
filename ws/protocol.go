package ws

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/grupogad/outboxd/stream"
)

// Message types sent by the server besides event topics.
const (
	TypeWelcome        = "welcome"
	TypeResyncRequired = "resync_required"
	TypePong           = "pong"
	TypeError          = "error"
	TypeNotification   = "notification"
	TypeSubscribed     = "subscribed"
	TypeRefreshed      = "refreshed"
)

// CloseError is a documented reason the server closes a connection.
//
//	code  meaning                                   client should
//	1001  server shutting down                      reconnect with since
//	1009  message too big (WS_MAX_MESSAGE_SIZE)     fix the client
//	1012  outbox history changed (database restored) reconnect with since and epoch: resync_required follows
//	4001  token expired                             refresh the token, reconnect
//	4003  revoked (outbox.disconnect)               ask the app for a new token; stop if there is none
//	4008  too far behind, past retention, or slow   reconnect with since: nothing is lost
type CloseError struct {
	Code   int
	Reason string
}

func (e CloseError) Error() string { return fmt.Sprintf("close %d: %s", e.Code, e.Reason) }

// The close codes outboxd sends.
var (
	CloseGoingAway     = CloseError{1001, "server shutting down"}
	CloseTokenExpired  = CloseError{4001, "token expired"}
	CloseTooFarBehind  = CloseError{4008, "too far behind: reconnect with since"}
	ClosePastRetention = CloseError{4008, "past retention: reconnect with since"}
	// CloseRevoked: outbox.disconnect cut the user's sessions (their
	// permissions changed); the client asks the app for a new token. The
	// reason is the one given to outbox.disconnect.
	CloseRevoked = CloseError{4003, "revoked"}
	// CloseHistoryChanged: the database was restored or recreated; the
	// client reconnects and, resuming with its old epoch, is told to resync.
	CloseHistoryChanged = CloseError{1012, "outbox history changed: reconnect"}
)

// ReservedTopicPrefix starts the topics of control rows (outbox.disconnect):
// never delivered as frames, never subscribable (stream's names).
const (
	ReservedTopicPrefix = stream.ReservedTopicPrefix
	TopicDisconnect     = stream.TopicDisconnect
)

// closeReason fits a close reason in a close frame (123 bytes after the
// code), at a UTF-8 boundary; empty takes def.
func closeReason(r, def string) string {
	if r == "" {
		return def
	}
	for len(r) > 123 {
		_, size := utf8.DecodeLastRuneInString(r)
		r = r[:len(r)-size]
	}
	return r
}

// timestampLayout is RFC 3339 in UTC with microseconds, as the seed's clients expect.
const timestampLayout = "2006-01-02T15:04:05.000000Z07:00"

func formatTime(t time.Time) string { return t.UTC().Format(timestampLayout) }

// encodeEvent renders an event envelope once, for every recipient:
// {"type":topic,"seq":N,"id":N,"timestamp":"…","data":payload}.
func encodeEvent(e *stream.Event) []byte {
	b := make([]byte, 0, 80+len(e.Topic)+len(e.Payload))
	b = append(b, `{"type":`...)
	b = strconv.AppendQuote(b, e.Topic) // topics are [a-z0-9_.-]: quoting is exact JSON
	b = append(b, `,"seq":`...)
	b = strconv.AppendInt(b, e.Seq, 10)
	b = append(b, `,"id":`...)
	b = strconv.AppendInt(b, e.ID, 10)
	b = append(b, `,"timestamp":"`...)
	b = e.CreatedAt.UTC().AppendFormat(b, timestampLayout)
	b = append(b, `","data":`...)
	// A frame never holds a raw newline (batched frames are split on
	// them): PostgreSQL prints jsonb on one line; anything else is
	// compacted.
	if p := bytes.TrimSpace(e.Payload); bytes.IndexByte(p, '\n') < 0 {
		b = append(b, p...)
	} else {
		var buf bytes.Buffer
		if json.Compact(&buf, p) == nil {
			b = append(b, buf.Bytes()...)
		} else {
			b = append(b, bytes.ReplaceAll(p, []byte{'\n'}, []byte{' '})...)
		}
	}
	return append(b, '}')
}

// controlFrame is a server message without seq or id.
type controlFrame struct {
	Type      string `json:"type"`
	Timestamp string `json:"timestamp"`
	Data      any    `json:"data,omitempty"`
}

func encodeControl(typ string, data any) []byte {
	b, err := json.Marshal(controlFrame{Type: typ, Timestamp: formatTime(time.Now()), Data: data})
	if err != nil { // data is always one of our own structs
		panic(err)
	}
	return b
}

// WelcomeData is the data of the first frame on every connection.
type WelcomeData struct {
	UserID            string   `json:"user_id"`
	Roles             []string `json:"roles"`
	HeadSeq           int64    `json:"head_seq"`
	HeartbeatInterval int      `json:"heartbeat_interval"`
	// Epoch identifies the history head_seq belongs to: send it back as
	// epoch= with since= when resuming.
	Epoch string `json:"epoch"`
}

// ResyncData tells a client its since cannot be replayed: it must reload
// its state; live delivery continues.
type ResyncData struct {
	OldestSeq int64  `json:"oldest_seq"`
	Reason    string `json:"reason"`
}

// Reasons of resync_required.
const (
	ResyncEpoch     = "epoch"     // since belongs to another history (restored or recreated database)
	ResyncAhead     = "ahead"     // since is ahead of the head
	ResyncRetention = "retention" // events after since were deleted by retention
	ResyncTooFar    = "too_far"   // replay would exceed REPLAY_MAX
)

// ErrorData describes a bad client message.
type ErrorData struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// NotificationData is the test broadcast's payload.
type NotificationData struct {
	Title   string `json:"title"`
	Content string `json:"content"`
	Level   string `json:"level"`
}

// SubscribedData answers a subscribe: events with seq > Seq follow Topics
// (nil: every topic).
type SubscribedData struct {
	Topics []string `json:"topics"`
	Seq    int64    `json:"seq"`
}

// Client frame errors, as ErrorData codes.
const (
	ErrCodeBadJSON     = "bad_json"
	ErrCodeUnknownType = "unknown_type"
	// ErrCodeInvalidToken and ErrCodeSubMismatch answer a refresh whose
	// token is refused, or names another user: the session keeps its
	// token and expiry.
	ErrCodeInvalidToken  = "invalid_token"
	ErrCodeSubMismatch   = "sub_mismatch"
	ErrCodeInvalidTopics = "invalid_topics"
)

// ClientMessage is a frame a client may send: {"type":"ping"}, or
// {"type":"subscribe","data":{"topics":[…]|null}}.
type ClientMessage struct {
	Type string `json:"type"`
	Data struct {
		Topics []string `json:"topics"`
		Token  string   `json:"token"`
	} `json:"data"`
}

// RefreshedData answers a refresh: the session now expires at Exp (unix
// seconds; 0: no exp) and events with seq > Seq are routed by Roles.
type RefreshedData struct {
	Roles []string `json:"roles"`
	Exp   int64    `json:"exp"`
	Seq   int64    `json:"seq"`
}

// MaxTopics bounds a topic filter.
const MaxTopics = 64

var topicRE = regexp.MustCompile(`^[a-z][a-z0-9_.-]{0,63}$`)

// CheckTopics validates a topic filter: at most MaxTopics names, each in the
// topic format, none reserved (outboxd.*). Duplicates are dropped; the
// result is sorted. nil stays nil (every topic).
func CheckTopics(topics []string) ([]string, error) {
	if topics == nil {
		return nil, nil
	}
	if len(topics) > MaxTopics {
		return nil, fmt.Errorf("at most %d topics, got %d", MaxTopics, len(topics))
	}
	out := make([]string, 0, len(topics))
	for _, t := range topics {
		if !topicRE.MatchString(t) {
			return nil, fmt.Errorf("topic %q does not match %s", truncate(t, 70), topicRE)
		}
		if strings.HasPrefix(t, ReservedTopicPrefix) {
			return nil, fmt.Errorf("topic %q is reserved", t)
		}
		out = append(out, t)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// ParseTopics parses the topics query parameter: a comma list (empty or
// absent: every topic).
func ParseTopics(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	return CheckTopics(strings.Split(s, ","))
}

// ParseBatch parses the batch query parameter: "1" (or "true") lets the
// server put several envelopes in one text frame, separated by "\n"; ""
// (absent), "0" or "false" keeps one JSON object per frame.
func ParseBatch(s string) (bool, error) {
	switch s {
	case "", "0", "false":
		return false, nil
	case "1", "true":
		return true, nil
	}
	return false, fmt.Errorf("batch %q: want 1 or 0", truncate(s, 20))
}

// DecodeClientMessage parses a client frame. It accepts a JSON object with a
// string "type": "ping", or "subscribe" with data.topics. The error is an
// ErrorData.
func DecodeClientMessage(b []byte) (ClientMessage, *ErrorData) {
	var m ClientMessage
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&m); err != nil {
		return m, &ErrorData{Code: ErrCodeBadJSON, Message: "frame is not a JSON object with a string \"type\""}
	}
	if dec.More() {
		return m, &ErrorData{Code: ErrCodeBadJSON, Message: "trailing data after the JSON object"}
	}
	if !bytes.HasPrefix(bytes.TrimSpace(b), []byte("{")) {
		return m, &ErrorData{Code: ErrCodeBadJSON, Message: "frame is not a JSON object"}
	}
	switch m.Type {
	case "ping":
		return m, nil
	case "subscribe":
		topics, err := CheckTopics(m.Data.Topics)
		if err != nil {
			return m, &ErrorData{Code: ErrCodeInvalidTopics, Message: err.Error()}
		}
		m.Data.Topics = topics
		return m, nil
	case "refresh":
		if m.Data.Token == "" {
			return m, &ErrorData{Code: ErrCodeInvalidToken, Message: "refresh needs data.token"}
		}
		return m, nil
	case "":
		return m, &ErrorData{Code: ErrCodeUnknownType, Message: "missing \"type\""}
	}
	t := m.Type
	if len(t) > 64 {
		t = t[:64] + "…"
	}
	return m, &ErrorData{Code: ErrCodeUnknownType, Message: fmt.Sprintf("unknown message type %q; supported: ping, subscribe, refresh", t)}
}

// ParseSince parses the since query parameter: empty means live only, else a
// non-negative integer seq.
func ParseSince(s string) (since int64, ok bool, err error) {
	if s == "" {
		return 0, false, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, false, fmt.Errorf("since must be a non-negative integer seq, got %q", truncate(s, 16))
	}
	return n, true, nil
}

// ParseEpoch checks the epoch query parameter: empty (no check), or the
// value a welcome frame carried (letters, digits, '-' and '_', at most 64).
func ParseEpoch(s string) (string, error) {
	if len(s) > 64 {
		return "", fmt.Errorf("epoch longer than 64 characters")
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return "", fmt.Errorf("epoch must be the value of welcome.epoch, got %q", truncate(s, 16))
		}
	}
	return s, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
