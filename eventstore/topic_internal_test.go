package eventstore

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// The envelope LogSchema builds by hand decodes exactly as the one
// encoding/json writes, whatever the strings hold.
func TestAppendEnvelopeDecodesAsJSONMarshal(t *testing.T) {
	for _, s := range []string{"plain", `quote " and \ backslash`, "control \x00\x01\x1f\t\n", "ünïcødé ✓ \u2028", "bad \xff utf8", "<&>"} {
		env := Envelope{Position: 42, EventID: "0192e7a0-0000-7000-8000-000000000001", TenantID: s, StreamID: "user:" + s + ":u",
			Version: 7, Type: "TOTPVerified", SchemaVersion: 1, Payload: json.RawMessage(`{"step": 59847956}`),
			Metadata:   json.RawMessage(`{"actor":{"kind":"user","id":"u"},"tenant_id":"t","occurred_at":"2026-11-23T12:57:46.449468Z"}`),
			RecordedAt: time.Date(2026, 11, 23, 12, 57, 46, 450063000, time.UTC)}
		std, err := json.Marshal(env)
		if err != nil {
			t.Fatal(err)
		}
		var want, got Envelope
		if err := json.Unmarshal(std, &want); err != nil {
			t.Fatal(err)
		}
		mine := appendEnvelope(nil, &env)
		if err := json.Unmarshal(mine, &got); err != nil {
			t.Fatalf("%q: %v in %s", s, err, mine)
		}
		// RawMessage keeps its bytes: compare those compacted.
		want.Payload, got.Payload = compact(t, want.Payload), compact(t, got.Payload)
		want.Metadata, got.Metadata = compact(t, want.Metadata), compact(t, got.Metadata)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%q:\n got %+v\nwant %+v", s, got, want)
		}
	}
}

func compact(t *testing.T, b json.RawMessage) json.RawMessage {
	t.Helper()
	var out []byte
	out, err := json.Marshal(json.RawMessage(b))
	if err != nil {
		t.Fatal(err)
	}
	return out
}
