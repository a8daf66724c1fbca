package notifier

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/secrets"
)

// Run delivers due notifications until ctx ends: Config.Concurrency workers each
// claim one due row at a time, send it and mark it. On cancellation the sends in
// flight are finished and marked (each bounded by SendTimeout) before Run returns,
// so a clean shutdown leaves no duplicate behind.
func (n *Notifier) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for range n.cfg.Concurrency {
		wg.Go(func() { n.worker(ctx) })
	}
	wg.Go(func() { n.refreshMetrics(ctx) })
	wg.Wait()
	return nil
}

func (n *Notifier) worker(ctx context.Context) {
	for ctx.Err() == nil {
		c, ok, err := n.claim(ctx)
		if err != nil {
			if ctx.Err() == nil {
				n.log.Warn("notifier: claiming a notification failed", "error", err)
			}
			n.idle(ctx)
			continue
		}
		if !ok {
			n.idle(ctx)
			continue
		}
		// One row was due, so more may be: let an idle worker look as well.
		n.nudge()
		n.deliver(context.WithoutCancel(ctx), c)
	}
}

func (n *Notifier) nudge() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// idle waits for a reason to claim again. Only one idle worker at a time polls
// (holds n.poller and claims again after PollInterval): every poll is a
// transaction, and Concurrency workers polling each would cost that many per
// interval while nothing is due, without finding a due row any sooner. The
// others wait for a nudge (a row recorded here, or a worker that found a due
// row and so lets the next one look) or for the poller's turn to come free:
// when the poller leaves to claim, one of them takes its place at once, so a
// poll is never more than PollInterval away whatever the others are doing.
func (n *Notifier) idle(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-n.wake:
		return
	case n.poller <- struct{}{}:
	}
	defer func() { <-n.poller }()
	t := time.NewTimer(n.cfg.PollInterval)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-n.wake:
	case <-t.C:
	}
}

func (n *Notifier) refreshMetrics(ctx context.Context) {
	t := time.NewTicker(n.cfg.MetricsInterval)
	defer t.Stop()
	for {
		if err := n.refreshLedger(ctx); err != nil && ctx.Err() == nil {
			n.log.Warn("notifier: reading the ledger for metrics failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// claimed is a ledger row this worker holds until its lease ends.
type claimed struct {
	eventID  string
	kind     Kind
	tenantID string
	userID   string
	streamID string
	version  int64
	attempt  int
	token    string
}

// claim takes the most urgent due row: pending and due, or sending with an
// expired lease (its worker died). SKIP LOCKED lets concurrent claimers pass each
// other; the claim itself commits at once, so no transaction stays open during a send.
//
// A notice (priority 1) is due only when no earlier notice of its user is open
// (pending, retrying or leased): a person reads the last message as the truth,
// so "8 codes remain" must not overtake "9 remain", whichever worker holds
// either and however often either is retried. Finished rows (sent, skipped,
// dead) never reopen by themselves, so a claimer whose snapshot shows the
// earlier notice finished is right whatever commits meanwhile; one that sees it
// open, even just claimed by another worker, leaves the user alone. One-time
// codes take no part: someone waits for each at a login page, a code
// contradicts no notice, and a newer code supersedes an older one anyway.
func (n *Notifier) claim(ctx context.Context) (claimed, bool, error) {
	now := n.clock().UTC()
	token := uuid.NewString()
	var c claimed
	var kind string
	err := n.pool.QueryRow(ctx, `
		WITH due AS (
			SELECT event_id, kind FROM notifications AS cand
			WHERE status IN ('pending', 'sending') AND next_attempt_at <= $1
			  AND (priority = 0 OR NOT EXISTS (
				SELECT 1 FROM notifications AS earlier
				WHERE earlier.stream_id = cand.stream_id AND earlier.priority = 1
				  AND earlier.status IN ('pending', 'sending')
				  AND (earlier.stream_version, earlier.ordinal) < (cand.stream_version, cand.ordinal)))
			ORDER BY priority, next_attempt_at
			LIMIT 1
			FOR UPDATE SKIP LOCKED
		)
		UPDATE notifications AS n
		SET status = 'sending', attempts = n.attempts + 1, next_attempt_at = $2, claim_token = $3, updated_at = $1
		FROM due
		WHERE n.event_id = due.event_id AND n.kind = due.kind
		RETURNING n.event_id::text, n.kind, n.tenant_id, n.user_id, n.stream_id, n.stream_version, n.attempts`,
		now, now.Add(n.cfg.Lease), token,
	).Scan(&c.eventID, &kind, &c.tenantID, &c.userID, &c.streamID, &c.version, &c.attempt)
	if errors.Is(err, pgx.ErrNoRows) {
		return claimed{}, false, nil
	}
	if err != nil {
		return claimed{}, false, err
	}
	c.kind = Kind(kind)
	c.token = token
	return c, true, nil
}

// outcome of preparing a message.
type prepared struct {
	channel Channel
	mail    Mail
	sms     SMS
	// skip: nothing to send, for this reason (terminal).
	skip string
	// secrets to keep out of any error text: the plain address and code.
	plain []string
	// recordedAt: when the event was recorded, for the latency metric.
	recordedAt time.Time
}

// errPermanent marks failures that no retry can fix.
type errPermanent struct{ error }

func (n *Notifier) deliver(ctx context.Context, c claimed) {
	p, err := n.prepare(ctx, c)
	if err != nil {
		var perm errPermanent
		n.failed(ctx, c, err, errors.As(err, &perm), p.plain)
		return
	}
	if p.skip != "" {
		n.skipped(ctx, c, p.skip)
		return
	}
	sendCtx, cancel := context.WithTimeout(ctx, n.cfg.SendTimeout)
	if p.channel == ChannelSMS {
		err = n.sms.SendSMS(sendCtx, p.sms)
	} else {
		err = n.mail.SendMail(sendCtx, p.mail)
	}
	cancel()
	if err != nil {
		n.failed(ctx, c, err, false, p.plain)
		return
	}
	// The window of the at-least-once guarantee: sent, not yet marked.
	n.sent(ctx, c, p)
}

// prepare reads the event, finds the recipient, opens the sealed values and renders.
func (n *Notifier) prepare(ctx context.Context, c claimed) (prepared, error) {
	var p prepared
	tenantRecs, err := n.store.Load(ctx, eventstore.TenantStream(c.tenantID))
	if err != nil {
		return p, err
	}
	tenant := domain.NewTenantPolicy(c.tenantID)
	for _, r := range tenantRecs {
		tenant.Apply(r.Event)
	}
	policy := tenant.Policy()
	if !tenant.Exists() {
		policy = domain.DefaultPolicy()
	}
	stream, err := n.store.Load(ctx, c.streamID)
	if err != nil {
		return p, err
	}
	at := -1
	if i := int(c.version) - 1; i >= 0 && i < len(stream) && stream[i].EventID == c.eventID {
		at = i
	}
	if at < 0 {
		return p, errPermanent{fmt.Errorf("event %s is not at version %d of its stream", c.eventID, c.version)}
	}
	rec := stream[at]
	p.recordedAt = rec.RecordedAt
	for _, r := range stream[at:] {
		if _, ok := r.Event.(*domain.UserForgotten); ok {
			p.skip = "user erased"
			return p, nil
		}
	}
	data := messageData(c.kind, rec, policy)
	if c.kind.isCode() {
		sealedCode, expires := codeOf(rec.Event)
		if sealedCode == "" {
			return p, errPermanent{fmt.Errorf("%s event carries no code", rec.Type)}
		}
		if !n.clock().Before(expires) {
			p.skip = "code expired before it could be sent"
			return p, nil
		}
		if superseded(stream, at) {
			p.skip = "a newer code was issued before it could be sent"
			return p, nil
		}
		data.Lifetime = formatLifetime(expires.Sub(rec.RecordedAt))
		data.SetupApp = c.kind == KindOTPCode && setupAppPending(c.tenantID, c.userID, stream, at, policy)
	}
	to, ok := resolveTarget(c.kind, c.tenantID, c.userID, stream, at)
	if !ok {
		p.skip = "no registered email address or phone number"
		return p, nil
	}
	p.channel = to.channel
	if to.channel == ChannelSMS {
		data.Destination = "phone number"
	}
	// Only now, just before sending, are the address and the code opened.
	address, err := n.vault.Open(ctx, c.tenantID, c.userID, to.purpose(), to.sealed)
	if err != nil {
		err = openError(err, &p)
		return p, err
	}
	p.plain = append(p.plain, string(address))
	if c.kind.isCode() {
		sealedCode, _ := codeOf(rec.Event)
		code, err := n.vault.Open(ctx, c.tenantID, c.userID, secrets.PurposeOTPCode, sealedCode)
		if err != nil {
			err = openError(err, &p)
			return p, err
		}
		data.Code = string(code)
		p.plain = append(p.plain, data.Code)
	}
	msg, err := n.tmpl.render(c.kind, data)
	if err != nil {
		return p, errPermanent{fmt.Errorf("template %s: %w", c.kind, err)}
	}
	id := c.eventID + "." + string(c.kind)
	if to.channel == ChannelSMS {
		p.sms = SMS{ID: id, To: string(address), Body: oneLine(msg.sms), Kind: c.kind}
		return p, nil
	}
	from := n.cfg.DefaultFrom
	if policy.MailFrom != "" {
		from = policy.MailFrom
	}
	p.mail = Mail{
		MessageID: "<" + id + "@" + from[strings.LastIndexByte(from, '@')+1:] + ">",
		FromName:  data.Issuer, From: from, To: string(address),
		Subject: msg.subject, Text: msg.text, HTML: msg.html, Kind: c.kind,
	}
	return p, nil
}

// setupAppPending: when stream[at] was recorded, the user was to set up the app
// after a switch, so the login code is the last one before that set-up.
func setupAppPending(tenantID, userID string, stream []*eventstore.Record, at int, policy domain.Policy) bool {
	u := domain.NewUserTwoFactor(tenantID, userID)
	for _, r := range stream[:at] {
		u.Apply(r.Event, r.RecordedAt)
	}
	return u.Snapshot(stream[at].RecordedAt, policy).SetupAppAtNextLogin
}

// openError: an erased user is skipped; a value that does not open never will.
func openError(err error, p *prepared) error {
	switch {
	case errors.Is(err, secrets.ErrKeyErased):
		p.skip = "user erased"
		return nil
	case errors.Is(err, secrets.ErrOpenFailed):
		return errPermanent{errors.New("a sealed value does not open")}
	}
	return err
}

// superseded: a later code for the same method replaced this one (only the newest
// code of a method is accepted), so sending it would only mislead.
func superseded(stream []*eventstore.Record, at int) bool {
	method := func(e domain.Event) domain.Method {
		switch e := e.(type) {
		case *domain.OTPChallengeIssued:
			return e.Method
		case *domain.OTPMethodSetupStarted:
			return e.Method
		}
		return ""
	}
	m := method(stream[at].Event)
	for _, r := range stream[at+1:] {
		if r.Type == stream[at].Type && method(r.Event) == m {
			return true
		}
	}
	return false
}

func codeOf(e domain.Event) (sealed string, expires time.Time) {
	switch e := e.(type) {
	case *domain.OTPChallengeIssued:
		return e.SealedCode, e.ExpiresAt
	case *domain.OTPMethodSetupStarted:
		return e.SealedCode, e.ExpiresAt
	}
	return "", time.Time{}
}

// messageData fills in what the templates need, from the event and the tenant.
func messageData(k Kind, rec *eventstore.Record, policy domain.Policy) msgData {
	d := msgData{
		Issuer:      oneLine(policy.IssuerName),
		Contact:     oneLine(policy.SupportContact),
		Destination: "email address",
		ByAdmin:     rec.Metadata.Actor.Kind != domain.ActorUser,
	}
	if d.Issuer == "" {
		d.Issuer = "twofactor"
	}
	if d.Contact == "" {
		d.Contact = "your administrator"
	}
	when := rec.Metadata.OccurredAt
	if when.IsZero() {
		when = rec.RecordedAt
	}
	d.When = formatTime(when)
	switch e := rec.Event.(type) {
	case *domain.TwoFactorEnabled:
		d.To, d.ToName = e.Method, methodName(e.Method)
	case *domain.TwoFactorDisabled:
		d.Reason = e.Reason
		d.ByAdmin = e.Reason == domain.DisabledByAdmin
	case *domain.MethodSwitched:
		d.From, d.To = e.From, e.To
		d.FromName, d.ToName = methodName(e.From), methodName(e.To)
		d.Cancelled = e.From == e.To
	case *domain.BackupCodeConsumed:
		d.Remaining = e.Remaining
	case *domain.TwoFactorLocked:
		d.Until = formatTime(e.Until)
	case *domain.SecurityKeyRemoved:
		d.Remaining = e.Remaining
	case *domain.SecurityKeyCloneSuspected:
		d.Refused = e.Refused
	}
	return d
}

func (n *Notifier) sent(ctx context.Context, c claimed, p prepared) {
	now := n.clock().UTC()
	tag, err := n.pool.Exec(ctx, `
		UPDATE notifications SET status = 'sent', channel = $4, sent_at = $5, updated_at = $5,
			last_error = NULL, claim_token = NULL
		WHERE event_id = $1 AND kind = $2 AND claim_token = $3`,
		c.eventID, string(c.kind), c.token, string(p.channel), now)
	n.metrics.sent.WithLabelValues(string(c.kind), string(p.channel)).Inc()
	n.metrics.latency.WithLabelValues(string(p.channel)).Observe(now.Sub(p.recordedAt).Seconds())
	switch {
	case err != nil:
		// It will be sent again when the lease ends: the documented duplicate.
		n.log.Error("notifier: sent, but marking it sent failed; it will be sent again", n.attrs(c, "error", err)...)
	case tag.RowsAffected() == 0:
		n.log.Warn("notifier: sent after the lease ended; another worker may send it too", n.attrs(c)...)
	default:
		n.log.Info("notification sent", n.attrs(c, "channel", p.channel)...)
	}
}

func (n *Notifier) skipped(ctx context.Context, c claimed, reason string) {
	now := n.clock().UTC()
	_, err := n.pool.Exec(ctx, `
		UPDATE notifications SET status = 'skipped', last_error = $4, updated_at = $5, claim_token = NULL
		WHERE event_id = $1 AND kind = $2 AND claim_token = $3`,
		c.eventID, string(c.kind), c.token, reason, now)
	n.metrics.skipped.WithLabelValues(string(c.kind), reason).Inc()
	if err != nil {
		n.log.Error("notifier: marking a notification skipped failed", n.attrs(c, "error", err)...)
		return
	}
	n.log.Info("notification skipped", n.attrs(c, "reason", reason)...)
}

func (n *Notifier) failed(ctx context.Context, c claimed, cause error, permanent bool, plain []string) {
	now := n.clock().UTC()
	msg := redact(cause.Error(), plain)
	dead := permanent || c.attempt >= n.cfg.MaxAttempts
	next := now.Add(n.backoff(c.attempt))
	status := "pending"
	if dead {
		status = "dead"
		next = now
	}
	_, err := n.pool.Exec(ctx, `
		UPDATE notifications SET status = $4, next_attempt_at = $5, last_error = $6, updated_at = $7, claim_token = NULL
		WHERE event_id = $1 AND kind = $2 AND claim_token = $3`,
		c.eventID, string(c.kind), c.token, status, next, msg, now)
	n.metrics.failures.WithLabelValues(string(c.kind)).Inc()
	if err != nil {
		n.log.Error("notifier: recording a failed attempt failed; it is retried when the lease ends", n.attrs(c, "error", err)...)
		return
	}
	if dead {
		n.metrics.dead.WithLabelValues(string(c.kind)).Inc()
		n.log.Error("notification dead: giving up", n.attrs(c, "error", msg)...)
		return
	}
	n.log.Warn("notification failed; will retry", n.attrs(c, "error", msg, "retry_at", next)...)
}

func (n *Notifier) attrs(c claimed, extra ...any) []any {
	return append([]any{"event_id", c.eventID, "kind", c.kind, "tenant_id", c.tenantID, "attempt", c.attempt}, extra...)
}

// backoff before attempt+1: base·2^(attempt-1), capped, with jitter between half
// and all of it, so retries of many messages after an outage spread out.
func (n *Notifier) backoff(attempt int) time.Duration {
	d := n.cfg.BackoffBase
	for i := 1; i < attempt && d < n.cfg.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, n.cfg.BackoffMax)
	half := d / 2
	return half + rand.N(d-half+1)
}

var (
	emailLike  = regexp.MustCompile(`[^\s<>"'()\[\],;:]+@[^\s<>"'()\[\],;:]+`)
	digitsLike = regexp.MustCompile(`\+?[0-9]{6,}`)
)

// redact removes from an error text the plain address and code of the message
// and anything shaped like an address, a phone number or a code.
func redact(s string, plain []string) string {
	for _, p := range plain {
		if p != "" {
			s = strings.ReplaceAll(s, p, "[redacted]")
		}
	}
	s = emailLike.ReplaceAllString(s, "[address]")
	s = digitsLike.ReplaceAllString(s, "[number]")
	if len(s) > 500 {
		s = s[:500]
	}
	return s
}
