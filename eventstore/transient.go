package eventstore

import (
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// Transient reports whether err is a failure of the database that a later try
// can outlast: the server unreachable, restarting or shutting down, the
// connection lost, too many connections, or a serialization failure or
// deadlock that a new transaction does not meet again. Anything else (a
// constraint, a type, a bug) fails the same way every time.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "08"): // connection exception
			return true
		case strings.HasPrefix(pgErr.Code, "57P"): // admin/crash shutdown, cannot connect now, database dropped
			return pgErr.Code != "57P04"
		}
		switch pgErr.Code {
		case "40001", "40P01", // serialization failure, deadlock
			"53300", "53400", // too many connections, configuration limit exceeded
			"55006": // object in use (a database being dropped or restored)
			return true
		}
		return false
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	switch {
	case errors.As(err, &connectErr), errors.As(err, &netErr), pgconn.SafeToRetry(err), pgconn.Timeout(err):
		return true
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return true
	}
	// pgx reports a connection that died under a transaction or a batch only
	// in words.
	msg := err.Error()
	return strings.Contains(msg, "conn closed") || strings.Contains(msg, "closed pool") ||
		strings.Contains(msg, "unexpected EOF") || strings.Contains(msg, "connection reset by peer") ||
		strings.Contains(msg, "broken pipe")
}
