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
	return checkValue(reflect.ValueOf(e), e.EventType())
}

func checkValue(v reflect.Value, path string) error {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return nil
		}
		return checkValue(v.Elem(), path)
	case reflect.String:
		return CheckText(path, v.String())
	case reflect.Struct:
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			if err := checkValue(v.Field(i), path+"."+jsonName(f)); err != nil {
				return err
			}
		}
	case reflect.Slice, reflect.Array:
		for i := 0; i < v.Len(); i++ {
			if err := checkValue(v.Index(i), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	case reflect.Map:
		iter := v.MapRange()
		for iter.Next() {
			if err := checkValue(iter.Key(), path); err != nil {
				return err
			}
			if err := checkValue(iter.Value(), path); err != nil {
				return err
			}
		}
	}
	return nil
}

func jsonName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	if name == "" || name == "-" {
		return f.Name
	}
	return name
}
