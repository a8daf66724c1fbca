package main

import (
	"crypto/rand"
	"encoding/base64"
	"log/slog"
	"net"
	"net/http"
	"strings"

	"github.com/twofactor/twofactor/webui"
)

// webUIOn: the reference web UI runs with --web-ui, and always with --dev.
func (c Config) webUIOn() bool { return c.WebUI || c.Dev }

// prepareWebUI gives the API an operator key when the UI is on and none is
// configured: the UI creates its demo tenants' keys through the operator API,
// and this process's key, random and never printed, lets only it do so.
func prepareWebUI(cfg Config, log *slog.Logger) (Config, error) {
	if !cfg.webUIOn() || cfg.OperatorKey != "" {
		return cfg, nil
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return cfg, err
	}
	cfg.OperatorKey = "tfop_" + base64.RawURLEncoding.EncodeToString(b)
	log.Info("web UI: the operator API is enabled with a key of this process only, for the UI's demo tenants")
	return cfg, nil
}

// withWebUI serves the UI under /ui/ beside the API. The UI calls the API over
// HTTP at this process's own address, as any host product's backend would.
func withWebUI(cfg Config, api http.Handler, addr net.Addr, log *slog.Logger) (http.Handler, error) {
	if !cfg.webUIOn() {
		return api, nil
	}
	ui, err := webui.New(webui.Config{APIBase: "http://" + loopback(addr), OperatorKey: cfg.OperatorKey, Dev: cfg.Dev,
		Log: log.With("component", "webui")})
	if err != nil {
		return nil, err
	}
	log.Warn("web UI at /ui/: its demo sign-in lets anyone who reaches it act for any of its tenants; never expose it publicly",
		"url", "http://"+addr.String()+webui.Prefix)
	mux := http.NewServeMux()
	mux.Handle(webui.Prefix, ui)
	mux.Handle("/ui", http.RedirectHandler(webui.Prefix, http.StatusFound))
	mux.Handle("/", api)
	return mux, nil
}

// loopback is the listener's address as the process reaches itself: an
// unspecified host (0.0.0.0, ::) is dialled on the loopback interface.
func loopback(addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		if ip != nil && ip.To4() == nil && !strings.Contains(host, ".") {
			host = "::1"
		} else {
			host = "127.0.0.1"
		}
	}
	return net.JoinHostPort(host, port)
}
