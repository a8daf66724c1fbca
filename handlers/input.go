package handlers

import (
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/twofactor/twofactor/domain"
)

// Input no field may hold (domain.CheckText: NUL, control characters, invalid
// UTF-8) is refused here, before any work, for every source the service reads:
// path and query parameters and headers in inputRules, JSON bodies in bind. Such
// a value reaching SQL answers 500, and reaching the log freezes every
// projector that reads it. Each field's own rules are checked afterwards: the
// contract's (types, enums, patterns, lengths, bounds) by the request validator
// (validate.go), the rest (an id's length in bytes, a code's digits) by the
// domain.

// readHeaders are the headers the service reads. Authorization is not among
// them: a token it cannot hold is simply unknown (401).
var readHeaders = []string{"X-Actor", "Idempotency-Key", "X-Request-Id", "X-Correlation-Id"}

// inputRules refuses a path parameter, query parameter or read header that no
// input may hold.
func (a *API) inputRules(c *gin.Context) {
	if err := checkRequestText(c.Request, c.Params); err != nil {
		a.fail(c, err)
		return
	}
	c.Next()
}

func checkRequestText(r *http.Request, params gin.Params) error {
	for _, p := range params {
		if err := domain.CheckText(p.Key, p.Value); err != nil {
			return invalidInput("path", err)
		}
	}
	// A pair that does not parse would be dropped silently by every reader of
	// the query, so a filter could vanish.
	query, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return invalidInput("query", domain.InvalidInput("query", "the query string is malformed"))
	}
	names := make([]string, 0, len(query))
	for k := range query {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		name := fieldName(k)
		if err := domain.CheckText(name, k); err != nil {
			return invalidInput("query", err)
		}
		for _, v := range query[k] {
			if err := domain.CheckText(name, v); err != nil {
				return invalidInput("query", err)
			}
		}
	}
	for _, h := range readHeaders {
		for _, v := range r.Header.Values(h) {
			if err := domain.CheckText(h, v); err != nil {
				return invalidInput("header", err)
			}
		}
	}
	return nil
}

// fieldName is a client's name for a field, escaped when the name itself is
// what is refused, so a problem never echoes a control character.
func fieldName(name string) string {
	if domain.CheckText("", name) == nil {
		return name
	}
	return strings.Trim(strconv.QuoteToASCII(name), `"`)
}

// joinField names a member of a JSON value for a problem: "policy.issuer_name".
func joinField(parent, key string) string {
	if parent == "" {
		return fieldName(key)
	}
	return parent + "." + fieldName(key)
}
