package domain

import (
	"reflect"
	"strings"
	"testing"
)

// unstorable are strings no input may hold: NUL (PostgreSQL's text and jsonb
// refuse it), other C0 controls, DEL, C1 controls and invalid UTF-8.
var unstorable = map[string]string{
	"NUL":              "a\x00b",
	"escaped NUL":      "\u0000",
	"line feed":        "a\nb",
	"carriage return":  "a\rb",
	"tab":              "a\tb",
	"escape":           "\x1b[31mred",
	"DEL":              "a\x7fb",
	"C1 NEL":           "a\u0085b",
	"invalid byte":     "a\xffb",
	"truncated rune":   "caf\xc3",
	"overlong slash":   "\xc0\xaf",
	"UTF-16 surrogate": "\xed\xa0\x80",
}

func TestCheckTextRefusesWhatNoInputMayHold(t *testing.T) {
	for name, s := range unstorable {
		err := CheckText("issuer_name", s)
		de := wantErr(t, err, KindInvalid, CodeInvalidInput)
		if de.Field != "issuer_name" || !strings.Contains(de.Detail, "issuer_name") {
			t.Errorf("%s: field %q, detail %q", name, de.Field, de.Detail)
		}
	}
	for _, s := range []string{"", "Acme", "Acme Hosting GmbH", "Zürich – Ærø", "日本語", "emoji 🔐", "a\u202eb", "\ufffd"} {
		if err := CheckText("f", s); err != nil {
			t.Errorf("%q refused: %v", s, err)
		}
	}
}

func TestPolicyRefusesUnstorableText(t *testing.T) {
	fields := map[string]func(p *Policy, s string){
		"issuer_name":     func(p *Policy, s string) { p.IssuerName = s },
		"support_contact": func(p *Policy, s string) { p.SupportContact = s },
		"mail_from":       func(p *Policy, s string) { p.MailFrom = s },
	}
	for field, set := range fields {
		for name, bad := range unstorable {
			p := DefaultPolicy()
			set(&p, "a@acme.example"+bad)
			de := wantErr(t, p.Validate(), KindInvalid, CodeInvalidInput)
			if de.Field != field {
				t.Errorf("%s with %s: field %q", field, name, de.Field)
			}
		}
	}
	p := DefaultPolicy()
	p.MailFrom = "a@acme.example\r\nBcc: x@evil.example"
	wantErr(t, p.Validate(), KindInvalid, CodeInvalidInput)
}

func TestChangePolicyWithUnstorableTextDecidesNothing(t *testing.T) {
	tp := NewTenantPolicy(tenantID)
	tp.Apply(&TenantCreated{Name: "Acme", Policy: DefaultPolicy()})
	p := DefaultPolicy()
	p.IssuerName = "Acme\x00"
	events, err := tp.ChangePolicy(asAdmin, p)
	refused(t, events, err, KindInvalid, CodeInvalidInput)
}

func TestCreateTenantRefusesUnstorableName(t *testing.T) {
	for name, bad := range unstorable {
		events, err := NewTenantPolicy(tenantID).Create(asSystem, "Acme"+bad, DefaultPolicy())
		if de := refused(t, events, err, KindInvalid, CodeInvalidInput); de.Field != "name" {
			t.Errorf("%s: field %q", name, de.Field)
		}
	}
}

func TestActorRefusesUnstorableID(t *testing.T) {
	for name, bad := range unstorable {
		err := Actor{Kind: ActorAdmin, ID: "bob" + bad}.Validate()
		if de := wantErr(t, err, KindInvalid, CodeInvalidInput); de.Field != "actor_id" {
			t.Errorf("%s: field %q", name, de.Field)
		}
	}
}

// TestCheckEventReachesEveryStringOfEveryEvent puts a NUL into each string
// field of each event type, at any depth, and expects it found and named.
func TestCheckEventReachesEveryStringOfEveryEvent(t *testing.T) {
	found := 0
	for _, proto := range AllEvents() {
		for _, path := range stringPaths(reflect.TypeOf(proto).Elem(), nil) {
			found++
			e := reflect.New(reflect.TypeOf(proto).Elem())
			setString(e.Elem(), path, "x\x00")
			err := CheckEvent(e.Interface().(Event))
			de := wantErr(t, err, KindInvalid, CodeInvalidInput)
			if !strings.HasPrefix(de.Field, proto.EventType()+".") {
				t.Errorf("%s: field %q", proto.EventType(), de.Field)
			}
		}
		if err := CheckEvent(proto); err != nil {
			t.Errorf("empty %s refused: %v", proto.EventType(), err)
		}
	}
	if found < 15 {
		t.Fatalf("only %d string fields found", found)
	}
	hashes := &BackupCodesRegenerated{Hashes: []string{"aGFzaA", "\xff"}}
	if de := wantErr(t, CheckEvent(hashes), KindInvalid, CodeInvalidInput); de.Field != "BackupCodesRegenerated.hashes[1]" {
		t.Errorf("field %q", de.Field)
	}
}

// stringPaths lists the field index paths of every string (or string slice)
// in a struct type, through nested structs.
func stringPaths(t reflect.Type, prefix []int) [][]int {
	var out [][]int
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		path := append(append([]int{}, prefix...), i)
		switch {
		case f.Type.Kind() == reflect.String:
			out = append(out, path)
		case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.String:
			out = append(out, path)
		case f.Type.Kind() == reflect.Struct:
			out = append(out, stringPaths(f.Type, path)...)
		}
	}
	return out
}

func setString(v reflect.Value, path []int, s string) {
	f := v.FieldByIndex(path)
	if f.Kind() == reflect.Slice {
		sl := reflect.MakeSlice(f.Type(), 1, 1)
		sl.Index(0).SetString(s)
		f.Set(sl)
		return
	}
	f.SetString(s)
}
