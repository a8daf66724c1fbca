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

	"github.com/gin-gonic/gin"
)

// bind decodes a JSON object body strictly: valid UTF-8, an object at the top,
// no unknown fields, no duplicate keys, no trailing data. An empty body is
// accepted only when optional.
func bind(c *gin.Context, dst any, optional bool) error {
	body, err := io.ReadAll(c.Request.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		return newAPIError(http.StatusBadRequest, codeInvalidJSON, "the body could not be read")
	}
	return decodeStrict(body, dst, optional)
}

func decodeStrict(body []byte, dst any, optional bool) error {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		if optional {
			return nil
		}
		return newAPIError(http.StatusBadRequest, codeInvalidJSON, "a JSON object body is required")
	}
	if !utf8.Valid(trimmed) {
		return newAPIError(http.StatusBadRequest, codeInvalidJSON, "the body is not valid UTF-8")
	}
	if trimmed[0] != '{' {
		return newAPIError(http.StatusBadRequest, codeInvalidJSON, "the body must be a JSON object")
	}
	if err := checkDuplicateKeys(trimmed); err != nil {
		return err
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

// checkDuplicateKeys refuses an object with a key twice at any depth: parsers
// disagree on which one wins.
func checkDuplicateKeys(body []byte) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var walk func(depth int) error
	walk = func(depth int) error {
		if depth > 32 {
			return newAPIError(http.StatusBadRequest, codeInvalidJSON, "the JSON nests too deeply")
		}
		tok, err := dec.Token()
		if err != nil {
			return jsonError(err)
		}
		d, ok := tok.(json.Delim)
		if !ok {
			return nil
		}
		switch d {
		case '{':
			seen := map[string]bool{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return jsonError(err)
				}
				k, _ := kt.(string)
				if seen[k] {
					return newAPIError(http.StatusBadRequest, codeInvalidJSON, fmt.Sprintf("key %q appears twice", k))
				}
				seen[k] = true
				if err := walk(depth + 1); err != nil {
					return err
				}
			}
		case '[':
			for dec.More() {
				if err := walk(depth + 1); err != nil {
					return err
				}
			}
		}
		if _, err := dec.Token(); err != nil {
			return jsonError(err)
		}
		return nil
	}
	return walk(0)
}
