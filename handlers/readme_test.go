package handlers_test

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// The README's route table is where integrators look first: a route missing
// there is a route they do not know about (an app-only user receives no message
// until PUT …/contact-address is called). The key-management routes are
// described in the README's "Keys" paragraph instead.
func TestREADMERouteTableListsEveryRoute(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(readme)
	start := strings.Index(text, "## HTTP API")
	if start < 0 {
		t.Fatal("README.md has no HTTP API section")
	}
	text = text[start:]
	if end := strings.Index(text[1:], "\n## "); end >= 0 {
		text = text[:end+1]
	}
	param := regexp.MustCompile(`\{[^}]*\}`)
	var rows []string
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "| `") {
			rows = append(rows, param.ReplaceAllString(strings.ReplaceAll(line, `\|`, "|"), "{}"))
		}
	}
	if len(rows) == 0 {
		t.Fatal("no route table in the HTTP API section")
	}
	colon := regexp.MustCompile(`:[a-z_]+`)
	h := newHarness(t, nil)
	for _, r := range h.api.Engine().Routes() {
		if !strings.HasPrefix(r.Path, "/v1/") || strings.HasPrefix(r.Path, "/v1/operator/") || strings.HasPrefix(r.Path, "/v1/api-keys") {
			continue
		}
		path := colon.ReplaceAllString(r.Path, "{}")
		// Written in full, or abbreviated as "…/" and the end of the path.
		forms := []string{path}
		for i := 1; i < len(path); i++ {
			if path[i] == '/' {
				forms = append(forms, "…"+path[i:])
			}
		}
		if !listed(rows, r.Method, forms) {
			t.Errorf("README's route table does not list %s %s", r.Method, r.Path)
		}
	}
}

func listed(rows []string, method string, forms []string) bool {
	for _, row := range rows {
		if !strings.Contains(row, method+" ") && !strings.Contains(row, method+"`") {
			continue
		}
		for _, f := range forms {
			for _, end := range []string{"`", "?", " "} {
				if strings.Contains(row, f+end) {
					return true
				}
			}
		}
	}
	return false
}
