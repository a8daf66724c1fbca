package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
)

// The web UI is off unless asked for (--web-ui, TWOFACTOR_WEB_UI) or --dev.
func TestTheWebUIIsOffByDefault(t *testing.T) {
	api := http.NotFoundHandler()
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}
	cfg := DefaultConfig()
	if h, err := withWebUI(cfg, api, addr, quiet); err != nil || h == nil {
		t.Fatal(err)
	} else {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ui/", nil))
		if rec.Code != http.StatusNotFound {
			t.Fatalf("without --web-ui /ui/ answered %d", rec.Code)
		}
	}
	if c, _ := prepareWebUI(cfg, quiet); c.OperatorKey != "" {
		t.Fatal("an operator key was made with the UI off")
	}
	for _, on := range []Config{{WebUI: true}, {Dev: true}} {
		c, err := prepareWebUI(on, quiet)
		if err != nil || len(c.OperatorKey) < 40 {
			t.Fatalf("%+v: operator key %q, %v", on, c.OperatorKey, err)
		}
		h, err := withWebUI(c, api, addr, quiet)
		if err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ui/", nil))
		if rec.Code != http.StatusOK {
			t.Fatalf("%+v: /ui/ answered %d", on, rec.Code)
		}
	}
	t.Setenv("TWOFACTOR_WEB_UI", "true")
	if !fromEnv(DefaultConfig()).WebUI {
		t.Fatal("TWOFACTOR_WEB_UI=true did not turn the UI on")
	}
}

func TestTheUICallsItsOwnListenerOnLoopback(t *testing.T) {
	for in, want := range map[string]string{"0.0.0.0:8080": "127.0.0.1:8080", "[::]:8080": "[::1]:8080",
		"127.0.0.1:9": "127.0.0.1:9", "10.1.2.3:80": "10.1.2.3:80"} {
		addr, err := net.ResolveTCPAddr("tcp", in)
		if err != nil {
			t.Fatal(err)
		}
		if got := loopback(addr); got != want {
			t.Errorf("loopback(%s) = %s, want %s", in, got, want)
		}
	}
}
