package handlers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"unicode/utf8"

	"github.com/twofactor/twofactor/domain"
)

// decodeObject reads a JSON object body in one pass and refuses what the
// generated decoder would let through: another value at the top, a key twice
// at any depth (parsers disagree on which one wins), any key or string that
// no input may hold (domain.CheckText), data after the object. An empty body
// is nil: whether it may be left out is the operation's to say.
//
// The value keeps each number's literal (json.Number), so that binding it into
// the typed request refuses 1.5 or 1e3 for an integer as encoding/json does.
func decodeObject(body []byte) (map[string]any, error) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return nil, nil
	}
	if trimmed[0] != '{' {
		return nil, newAPIError(http.StatusBadRequest, codeInvalidJSON, "the body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.UseNumber()
	v, err := (&walker{body: trimmed, dec: dec}).value(0, "")
	if err != nil {
		return nil, err
	}
	// A guard only: value names invalid UTF-8 in a string, and anywhere else
	// the JSON does not parse.
	if !utf8.Valid(trimmed) {
		return nil, newAPIError(http.StatusBadRequest, codeInvalidJSON, "the body is not valid UTF-8")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, newAPIError(http.StatusBadRequest, codeInvalidJSON, "unexpected data after the JSON object")
	}
	return v.(map[string]any), nil
}

// walker builds a JSON value from the decoder's tokens, checking each key and
// string on the way and naming it by its path: escapes such as \u0000 are
// decoded first, and invalid UTF-8, which the decoder silently replaces, is
// looked for in the raw bytes of each string.
type walker struct {
	body []byte
	dec  *json.Decoder
}

func (w *walker) text(field, s string, start int64) error {
	if !utf8.Valid(w.body[start:w.dec.InputOffset()]) {
		return invalidInput("body", domain.InvalidInput(field, field+" is not valid UTF-8"))
	}
	if err := domain.CheckText(field, s); err != nil {
		return invalidInput("body", err)
	}
	return nil
}

func (w *walker) value(depth int, field string) (any, error) {
	if depth > 32 {
		return nil, newAPIError(http.StatusBadRequest, codeInvalidJSON, "the JSON nests too deeply")
	}
	start := w.dec.InputOffset()
	tok, err := w.dec.Token()
	if err != nil {
		return nil, jsonError(err)
	}
	if s, ok := tok.(string); ok {
		return s, w.text(field, s, start)
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return tok, nil
	}
	var out any
	switch d {
	case '{':
		obj := map[string]any{}
		for w.dec.More() {
			start := w.dec.InputOffset()
			kt, err := w.dec.Token()
			if err != nil {
				return nil, jsonError(err)
			}
			k, _ := kt.(string)
			member := joinField(field, k)
			if err := w.text(member, k, start); err != nil {
				return nil, err
			}
			if _, twice := obj[k]; twice {
				return nil, newAPIError(http.StatusBadRequest, codeInvalidJSON, fmt.Sprintf("key %q appears twice", k))
			}
			if obj[k], err = w.value(depth+1, member); err != nil {
				return nil, err
			}
		}
		out = obj
	case '[':
		arr := []any{}
		for i := 0; w.dec.More(); i++ {
			v, err := w.value(depth+1, fmt.Sprintf("%s[%d]", field, i))
			if err != nil {
				return nil, err
			}
			arr = append(arr, v)
		}
		out = arr
	}
	if _, err := w.dec.Token(); err != nil {
		return nil, jsonError(err)
	}
	return out, nil
}

// jsonError is the problem of a body encoding/json refused.
func jsonError(err error) error {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		return newAPIError(http.StatusBadRequest, codeInvalidJSON, fmt.Sprintf("malformed JSON at byte %d", syntax.Offset))
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "body"
		}
		return newAPIError(http.StatusBadRequest, codeInvalidJSON, fmt.Sprintf("%s must be %s", field, jsonTypeName(typ.Type.Kind().String())))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return newAPIError(http.StatusBadRequest, codeInvalidJSON, "the JSON body ends early")
	}
	return newAPIError(http.StatusBadRequest, codeInvalidJSON, "the body is not the expected JSON")
}

func jsonTypeName(kind string) string {
	switch kind {
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "int", "int64", "int32", "uint", "uint64", "float64":
		return "a number"
	case "slice":
		return "an array"
	case "struct", "map", "ptr":
		return "an object"
	}
	return "of another type"
}
