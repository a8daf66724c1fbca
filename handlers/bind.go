package handlers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/twofactor/twofactor/domain"
)

// decodeStrict decodes a JSON object body strictly: valid UTF-8, an object at
// the top, no unknown fields, no duplicate keys, no trailing data. An empty
// body is accepted only when optional.
func decodeStrict(body []byte, dst any, optional bool) error {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		if optional {
			return nil
		}
		return newAPIError(http.StatusBadRequest, codeInvalidJSON, "a JSON object body is required")
	}
	if trimmed[0] != '{' {
		return newAPIError(http.StatusBadRequest, codeInvalidJSON, "the body must be a JSON object")
	}
	if err := checkKeysAndText(trimmed); err != nil {
		return err
	}
	// A guard only: checkKeysAndText names invalid UTF-8 in a string, and
	// anywhere else the JSON does not parse.
	if !utf8.Valid(trimmed) {
		return newAPIError(http.StatusBadRequest, codeInvalidJSON, "the body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return newAPIError(http.StatusBadRequest, codeInvalidJSON, "unexpected data after the JSON object")
	}
	return nil
}

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
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return newAPIError(http.StatusBadRequest, codeUnknownField, strings.TrimPrefix(err.Error(), "json: ")+" is not accepted")
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

// checkKeysAndText refuses an object with a key twice at any depth (parsers
// disagree on which one wins) and any key or string that no input may hold
// (domain.CheckText), naming it by its path: escapes such as \u0000 are
// decoded first, and invalid UTF-8, which the decoder silently replaces, is
// looked for in the raw bytes of each string.
func checkKeysAndText(body []byte) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	text := func(field, s string, start int64) error {
		if !utf8.Valid(body[start:dec.InputOffset()]) {
			return invalidInput("body", domain.InvalidInput(field, field+" is not valid UTF-8"))
		}
		if err := domain.CheckText(field, s); err != nil {
			return invalidInput("body", err)
		}
		return nil
	}
	var walk func(depth int, field string) error
	walk = func(depth int, field string) error {
		if depth > 32 {
			return newAPIError(http.StatusBadRequest, codeInvalidJSON, "the JSON nests too deeply")
		}
		start := dec.InputOffset()
		tok, err := dec.Token()
		if err != nil {
			return jsonError(err)
		}
		if s, ok := tok.(string); ok {
			return text(field, s, start)
		}
		d, ok := tok.(json.Delim)
		if !ok {
			return nil
		}
		switch d {
		case '{':
			seen := map[string]bool{}
			for dec.More() {
				start := dec.InputOffset()
				kt, err := dec.Token()
				if err != nil {
					return jsonError(err)
				}
				k, _ := kt.(string)
				member := joinField(field, k)
				if err := text(member, k, start); err != nil {
					return err
				}
				if seen[k] {
					return newAPIError(http.StatusBadRequest, codeInvalidJSON, fmt.Sprintf("key %q appears twice", k))
				}
				seen[k] = true
				if err := walk(depth+1, member); err != nil {
					return err
				}
			}
		case '[':
			for i := 0; dec.More(); i++ {
				if err := walk(depth+1, fmt.Sprintf("%s[%d]", field, i)); err != nil {
					return err
				}
			}
		}
		if _, err := dec.Token(); err != nil {
			return jsonError(err)
		}
		return nil
	}
	return walk(0, "")
}
