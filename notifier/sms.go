package notifier

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// SMS is one text message.
type SMS struct {
	// ID is stable for a notification; providers that honour an idempotency key
	// drop the rare duplicate of an at-least-once delivery.
	ID   string
	To   string // E.164
	Body string
	Kind Kind
}

// SMSSender sends a text message. An error means it may not have been accepted;
// it will be tried again.
type SMSSender interface {
	SendSMS(ctx context.Context, s SMS) error
}

// HTTPSMS is the generic provider: it POSTs JSON
//
//	{"id": "...", "to": "+14155550123", "from": "...", "body": "..."}
//
// to a URL with an Authorization header (and the id again as Idempotency-Key),
// and takes any 2xx answer as accepted.
type HTTPSMS struct {
	URL  string
	Auth string // the whole Authorization header value, e.g. "Bearer …"; may be empty
	From string // sender id or number, omitted when empty
	// Client defaults to one with a 30 s timeout.
	Client *http.Client
}

// NewHTTPSMS checks the endpoint URL.
func NewHTTPSMS(endpoint, auth, from string, client *http.Client) (*HTTPSMS, error) {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, errors.New("notifier: the SMS provider URL must be an http(s) URL")
	}
	return &HTTPSMS{URL: endpoint, Auth: auth, From: from, Client: client}, nil
}

func (h *HTTPSMS) SendSMS(ctx context.Context, s SMS) error {
	body, err := json.Marshal(struct {
		ID   string `json:"id"`
		To   string `json:"to"`
		From string `json:"from,omitempty"`
		Body string `json:"body"`
	}{s.ID, s.To, h.From, s.Body})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL, bytes.NewReader(body))
	if err != nil {
		return errors.New("sms: bad request")
	}
	req.Header.Set("Content-Type", "application/json")
	if h.Auth != "" {
		req.Header.Set("Authorization", h.Auth)
	}
	if s.ID != "" {
		req.Header.Set("Idempotency-Key", s.ID)
	}
	return doSMS(client(h.Client), req, "sms")
}

// TwilioSMS speaks Twilio's Messages API (and that of compatible providers):
// POST {base}/2010-04-01/Accounts/{sid}/Messages.json, form-encoded To, From (or
// MessagingServiceSid for an "MG…" sender) and Body, with basic auth sid:token.
type TwilioSMS struct {
	BaseURL    string // default https://api.twilio.com
	AccountSID string
	AuthToken  string
	From       string
	Client     *http.Client
}

// NewTwilioSMS checks the settings.
func NewTwilioSMS(baseURL, accountSID, authToken, from string, client *http.Client) (*TwilioSMS, error) {
	if baseURL == "" {
		baseURL = "https://api.twilio.com"
	}
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, errors.New("notifier: the Twilio base URL must be an http(s) URL")
	}
	if accountSID == "" || authToken == "" || strings.ContainsAny(accountSID, "/?#") {
		return nil, errors.New("notifier: Twilio needs an account SID and an auth token")
	}
	if from == "" {
		return nil, errors.New("notifier: Twilio needs a sender (number or messaging service SID)")
	}
	return &TwilioSMS{BaseURL: strings.TrimRight(baseURL, "/"), AccountSID: accountSID, AuthToken: authToken, From: from, Client: client}, nil
}

func (t *TwilioSMS) SendSMS(ctx context.Context, s SMS) error {
	form := url.Values{"To": {s.To}, "Body": {s.Body}}
	if strings.HasPrefix(t.From, "MG") {
		form.Set("MessagingServiceSid", t.From)
	} else {
		form.Set("From", t.From)
	}
	endpoint := t.BaseURL + "/2010-04-01/Accounts/" + url.PathEscape(t.AccountSID) + "/Messages.json"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return errors.New("twilio: bad request")
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.SetBasicAuth(t.AccountSID, t.AuthToken)
	if s.ID != "" {
		req.Header.Set("I-Twilio-Idempotency-Token", s.ID)
	}
	return doSMS(client(t.Client), req, "twilio")
}

func client(c *http.Client) *http.Client {
	if c != nil {
		return c
	}
	return &http.Client{Timeout: 30 * time.Second}
}

// doSMS sends and reads the status only: a provider's answer can echo the
// number and the text (the code), so none of it reaches an error or a log.
func doSMS(c *http.Client, req *http.Request, provider string) error {
	resp, err := c.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			if ue.Timeout() {
				return fmt.Errorf("%s: timeout", provider)
			}
			return fmt.Errorf("%s: request failed: %v", provider, ue.Err)
		}
		return fmt.Errorf("%s: request failed", provider)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%s: provider answered %d", provider, resp.StatusCode)
	}
	return nil
}
