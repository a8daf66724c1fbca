package domain

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The domain is pure: it imports nothing outside the standard library.
func TestDomainImportsOnlyTheStandardLibrary(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, name, src, parser.ImportsOnly)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		checked++
		for _, imp := range f.Imports {
			path, err := strconv.Unquote(imp.Path.Value)
			if err != nil {
				t.Fatalf("%s: import %s: %v", name, imp.Path.Value, err)
			}
			if !isStandardLibrary(path) {
				t.Errorf("%s imports %q: the domain imports nothing outside the standard library", name, path)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no domain source file found")
	}
}

// isStandardLibrary: standard packages have no dot in their first path element
// (and this module's own packages are not standard either).
func isStandardLibrary(path string) bool {
	first, _, _ := strings.Cut(path, "/")
	return !strings.Contains(first, ".") && first != "C"
}

func TestIsStandardLibrary(t *testing.T) {
	for path, want := range map[string]bool{
		"time":                               true,
		"crypto/hmac":                        true,
		"encoding/base64":                    true,
		"github.com/ThreeDotsLabs/watermill": false,
		"github.com/twofactor/twofactor/eventstore": false,
		"golang.org/x/text/unicode/norm":            false,
		"gopkg.in/yaml.v3":                          false,
		"C":                                         false,
	} {
		if got := isStandardLibrary(path); got != want {
			t.Errorf("isStandardLibrary(%q) = %v, want %v", path, got, want)
		}
	}
}
