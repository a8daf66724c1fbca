package domain

import (
	"fmt"
	"reflect"
	"strings"
	"unicode"
	"unicode/utf8"
)

// CheckText refuses a string that may not enter the log: PostgreSQL's text and
// jsonb cannot hold NUL, an invalid UTF-8 sequence cannot be stored faithfully,
// and control characters (C0, DEL, C1) have no place in any id, name, address
// or reason of ours while they forge lines in logs and mail headers. Ordinary
// Unicode, spaces included, is left to the field's own rules.
func CheckText(field, s string) error {
	if !utf8.ValidString(s) {
		return InvalidInput(field, field+" is not valid UTF-8")
	}
	if strings.IndexFunc(s, unicode.IsControl) >= 0 {
		return InvalidInput(field, field+" must not contain NUL or other control characters")
	}
	return nil
}

// InvalidInput is the error of a string that CheckText refuses.
func InvalidInput(field, detail string) *Error {
	e := Invalid(CodeInvalidInput, detail)
	e.Field = field
	return e
}

// CheckEvent refuses an event holding a string that CheckText refuses, in any
// field at any depth. Every decision is checked at its inputs already; this is
// the last line, so that no path the checks forgot can freeze the read side
// with a row no projector can store.
func CheckEvent(e Event) error {
	// Every command passes here: the field's name is built only for a refusal.
	if path, bad, found := firstBadText(reflect.ValueOf(e)); found {
		return CheckText(e.EventType()+path, bad)
	}
	return nil
}

// firstBadText finds the first string below v that CheckText refuses, and
// its path below v (".hashes[1]").
func firstBadText(v reflect.Value) (path, bad string, found bool) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return "", "", false
		}
		return firstBadText(v.Elem())
	case reflect.String:
		if CheckText("", v.String()) != nil {
			return "", v.String(), true
		}
	case reflect.Struct:
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			if p, b, ok := firstBadText(v.Field(i)); ok {
				return "." + jsonName(f) + p, b, true
			}
		}
	case reflect.Slice, reflect.Array:
		for i := 0; i < v.Len(); i++ {
			if p, b, ok := firstBadText(v.Index(i)); ok {
				return fmt.Sprintf("[%d]", i) + p, b, true
			}
		}
	case reflect.Map:
		iter := v.MapRange()
		for iter.Next() {
			if _, b, ok := firstBadText(iter.Key()); ok {
				return "", b, true
			}
			if _, b, ok := firstBadText(iter.Value()); ok {
				return "", b, true
			}
		}
	}
	return "", "", false
}

func jsonName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	if name == "" || name == "-" {
		return f.Name
	}
	return name
}
