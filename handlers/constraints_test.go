package handlers_test

import (
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/twofactor/twofactor/handlers"
)

// violation is one request that breaks one constraint of the contract.
type violation struct {
	name   string
	path   string            // the concrete path
	query  string            // the raw query, without "?"
	header map[string]string // replaces the default header of that name
	body   any               // nil: the operation's sample body
	raw    bool              // body is sent as is, even when nil
	ct     string
}

// TestEveryConstraintOfTheContractIsRefusedWithItsProblem walks the loaded
// document, so that an operation added to it is covered without touching the
// test: for every parameter and body field it derives requests that break
// each constraint the contract states (required, type, enum, pattern, length,
// bounds, unknown fields) and checks that the answer is a 4xx the operation
// documents, as a problem, matching the contract (do checks every response).
func TestEveryConstraintOfTheContractIsRefusedWithItsProblem(t *testing.T) {
	h := newHarness(t, nil)
	h.enrolTOTP("ivy")
	doc, err := openapi3.NewLoader().LoadFromData(handlers.OpenAPI)
	must(t, err)
	before := h.eventCount()
	paths := doc.Paths.InMatchingOrder()
	sort.Strings(paths)
	checked := 0
	for _, path := range paths {
		item := doc.Paths.Find(path)
		methods := make([]string, 0)
		for m := range item.Operations() {
			methods = append(methods, m)
		}
		sort.Strings(methods)
		for _, method := range methods {
			op := item.GetOperation(method)
			params := append(openapi3.Parameters{}, item.Parameters...)
			params = append(params, op.Parameters...)
			operator := strings.HasPrefix(path, "/v1/operator")
			valid := map[string]string{"user_id": "ivy", "method": "totp", "key_id": h.keyIDs[handlers.RoleApp], "tenant_id": h.Tenant}
			concrete := func(override map[string]string) string {
				p := path
				for k, v := range valid {
					if o, ok := override[k]; ok {
						v = o
					}
					p = strings.ReplaceAll(p, "{"+k+"}", url.PathEscape(v))
				}
				return p
			}
			gin := path
			for k := range valid {
				gin = strings.ReplaceAll(gin, "{"+k+"}", ":"+k)
			}
			key := method + " " + gin
			query := strings.TrimPrefix(sampleQuery[key], "?")
			var cases []violation
			for _, ref := range params {
				p := ref.Value
				if p.Schema == nil || p.Schema.Value == nil {
					continue
				}
				for _, bad := range badValues(p.Schema.Value) {
					v := violation{name: p.In + " " + p.Name + ": " + bad.what, query: query}
					switch p.In {
					case "path":
						if bad.text == "" {
							continue // an empty segment is another path (404), not a value of this one
						}
						v.path = concrete(map[string]string{p.Name: bad.text})
					case "query":
						v.path = concrete(nil)
						q, _ := url.ParseQuery(query)
						q.Set(p.Name, bad.text)
						v.query = q.Encode()
					case "header":
						if operator && p.Name == "X-Actor" {
							continue // the operator key acts as system:operator and reads no X-Actor
						}
						v.path = concrete(nil)
						v.header = map[string]string{p.Name: bad.text}
					}
					cases = append(cases, v)
				}
			}
			if op.RequestBody != nil && op.RequestBody.Value != nil {
				mt := op.RequestBody.Value.Content.Get("application/json")
				schema := mt.Schema.Value
				sample, _ := sampleBodies[key].(map[string]any)
				if sample == nil {
					sample = map[string]any{}
				}
				with := func(k string, v any) map[string]any {
					out := map[string]any{}
					for sk, sv := range sample {
						out[sk] = sv
					}
					if v == nil {
						delete(out, k)
					} else {
						out[k] = v
					}
					return out
				}
				if op.RequestBody.Value.Required {
					cases = append(cases, violation{name: "body: missing", raw: true})
				}
				cases = append(cases,
					violation{name: "body: unknown field", body: with("not_in_the_contract", 1)},
					violation{name: "body: an array", body: "[]", raw: true},
					violation{name: "body: malformed", body: "{", raw: true},
					violation{name: "body: text/plain", body: "{}", raw: true, ct: "text/plain"},
				)
				for _, req := range schema.Required {
					if _, ok := sample[req]; ok {
						cases = append(cases, violation{name: "body " + req + ": missing", body: with(req, nil)})
					}
				}
				names := make([]string, 0, len(schema.Properties))
				for n := range schema.Properties {
					names = append(names, n)
				}
				sort.Strings(names)
				for _, n := range names {
					prop := schema.Properties[n].Value
					cases = append(cases, violation{name: "body " + n + ": wrong type", body: with(n, wrongType(prop))})
					for _, bad := range badValues(prop) {
						var v any = bad.text
						if bad.num != nil {
							v = *bad.num
						}
						cases = append(cases, violation{name: "body " + n + ": " + bad.what, body: with(n, v)})
					}
				}
			}
			if op.RequestBody == nil {
				// A route that takes no body reads none: whatever is sent is
				// not refused with an answer the operation does not list
				// (413, 415), which h.do checks against the contract.
				tok, actor := h.tokens[handlers.RoleSuperAdmin], "superadmin:carol"
				if operator {
					tok, actor = h.operatorKey, ""
				} else if op.Security != nil && len(*op.Security) == 0 {
					tok, actor = "", ""
				}
				if method == "GET" {
					p := concrete(nil)
					if query != "" {
						p += "?" + query
					}
					h.do(call{method: method, path: p, token: tok, actor: actor, body: strings.Repeat("x", 70<<10), contentType: "text/plain"})
				}
			}
			for _, v := range cases {
				if v.path == "" {
					v.path = concrete(nil)
					v.query = query
				}
				c := call{method: method, path: v.path, contentType: v.ct, header: map[string]string{}}
				if v.query != "" {
					c.path += "?" + v.query
				}
				if operator {
					c.token = h.operatorKey
				} else {
					c.token, c.actor = h.tokens[handlers.RoleSuperAdmin], "superadmin:carol"
				}
				for k, val := range v.header {
					if k == "X-Actor" {
						c.actor = val
					} else {
						c.header[k] = val
					}
				}
				switch {
				case v.raw:
					c.body = v.body
				case v.body != nil:
					c.body = v.body
				case op.RequestBody != nil:
					c.body = sampleBodies[key]
				}
				res := h.do(c)
				checked++
				status := strconv.Itoa(res.code)
				if res.code < 400 || res.code >= 500 || op.Responses.Value(status) == nil {
					t.Errorf("%s %s, %s: answered %d, not a documented 4xx: %s", method, path, v.name, res.code, res.raw)
					continue
				}
				if ct := res.header.Get("Content-Type"); ct != handlers.ProblemContentType {
					t.Errorf("%s %s, %s: %d as %q", method, path, v.name, res.code, ct)
				}
			}
		}
	}
	t.Logf("%d violations sent", checked)
	if checked < 100 {
		t.Fatalf("only %d violations sent", checked)
	}
	if after := h.eventCount(); after != before {
		t.Fatalf("invalid requests appended %d events", after-before)
	}
}

type badValue struct {
	what string
	text string
	num  *float64
}

// badValues derives, from one schema, values that break each of its constraints.
func badValues(s *openapi3.Schema) []badValue {
	var out []badValue
	str := func(what, text string) { out = append(out, badValue{what: what, text: text}) }
	number := func(what string, n float64) {
		out = append(out, badValue{what: what, text: strconv.FormatFloat(n, 'f', -1, 64), num: &n})
	}
	switch {
	case s.Type.Is("string"):
		if len(s.Enum) > 0 {
			str("not in the enum", "not-a-member")
		}
		if s.Pattern != "" {
			re := regexp.MustCompile(s.Pattern)
			for _, cand := range []string{"a b", "a\tb", "§", "a"} {
				if !re.MatchString(cand) {
					str("pattern", cand)
					break
				}
			}
		}
		if s.MaxLength != nil {
			str("maxLength", strings.Repeat("a", int(*s.MaxLength)+1))
		}
		if s.MinLength > 0 {
			str("minLength", "")
		}
		if s.Format == "date-time" {
			str("format", "yesterday")
		}
	case s.Type.Is("integer"), s.Type.Is("number"):
		str("not a number", "x")
		if s.Min != nil {
			number("minimum", *s.Min-1)
		}
		if s.Max != nil {
			number("maximum", *s.Max+1)
		}
	case s.Type.Is("boolean"):
		str("not a boolean", "maybe")
	case s.Type.Is("array") && s.Items != nil:
		// A repeatable query parameter: one value that breaks the items.
		return badValues(s.Items.Value)
	}
	return out
}

// wrongType is a JSON value of another type than the schema's.
func wrongType(s *openapi3.Schema) any {
	if s.Type.Is("string") {
		return 12345
	}
	if s.Type.Is("object") {
		return []int{1}
	}
	return fmt.Sprintf("not a %v", s.Type.Slice())
}

// TestIdsTheContractAcceptsAreNotRefused: the other half of the constraint
// test, for the ids the domain checks itself (domain.ValidateIdentifier): a
// value the contract allows is never answered 400, and one the server refuses
// breaks the contract's own pattern or length.
func TestIdsTheContractAcceptsAreNotRefused(t *testing.T) {
	h := newHarness(t, nil)
	doc, err := openapi3.NewLoader().LoadFromData(handlers.OpenAPI)
	must(t, err)
	userID := doc.Components.Parameters["UserID"].Value.Schema.Value
	actor := doc.Components.Parameters["XActor"].Value.Schema.Value
	tok := h.tokens[handlers.RoleSuperAdmin]
	for _, id := range []string{strings.Repeat("a", 200), "ünïcödé-日本_x", "a/b", "mail+tag@example.com", strings.Repeat("é", 100)} {
		if err := userID.VisitJSON(id); err != nil {
			t.Fatalf("contract refuses %q: %v", id, err)
		}
		h.do(call{method: "GET", path: "/v1/users/" + url.PathEscape(id), token: tok, actor: "superadmin:carol"}).want(404, "user_not_found")
		if err := actor.VisitJSON("superadmin:" + id); err != nil {
			t.Fatalf("contract refuses actor %q: %v", id, err)
		}
		h.do(call{method: "GET", path: "/v1/policy", token: tok, actor: "superadmin:" + id}).want(200)
	}
	for _, id := range []string{"a\u00a0b", "a\u200bb", "a\u2028b", strings.Repeat("a", 201), strings.Repeat("é", 101)} {
		h.do(call{method: "GET", path: "/v1/users/" + url.PathEscape(id), token: tok, actor: "superadmin:carol"}).want(400)
		// 101 "é" are 202 bytes: the byte limit a schema cannot state, only
		// its description.
		if strings.Count(id, "é") != 101 && userID.VisitJSON(id) == nil {
			t.Errorf("the server refuses user id %q, which the contract accepts", id)
		}
	}
}
