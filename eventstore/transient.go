package eventstore

import (
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"
)

// Transient reports whether err is a failure of the database or of the way to
// it, not of the statement: the server unreachable, restarting or shutting
// down, the connection lost, too many connections, or a serialization failure,
// deadlock or lock time-out that a new try does not meet again. The same work
// succeeds once the database is back; every other error fails the same way
// each time. The API answers such errors 503 with Retry-After, and consumers
// retry them without limit (messaging.Transient).
func Transient(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, pgx.ErrTxClosed) || errors.Is(err, puddle.ErrClosedPool) {
		return true
	}
	// A server error: only the codes where the server, not the statement, failed.
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return transientSQLState(pgErr.Code)
	}
	// pgconn says a statement was never sent ("conn closed", "conn busy" on a
	// dead connection, dial failures), or the connection timed out.
	if pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return true
	}
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) {
		return true
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE)
}

// transientSQLState: SQLSTATEs that a retry later succeeds past.
func transientSQLState(code string) bool {
	switch code {
	case "40001", // serialization_failure
		"40P01",                                     // deadlock_detected
		"55P03",                                     // lock_not_available
		"57014",                                     // query_canceled (statement timeout, pg_cancel_backend)
		"57P01",                                     // admin_shutdown (server stopping, pg_terminate_backend)
		"57P02",                                     // crash_shutdown
		"57P03",                                     // cannot_connect_now (server starting or in recovery)
		"57P05",                                     // idle_session_timeout
		"25P03",                                     // idle_in_transaction_session_timeout
		"25P02",                                     // in_failed_sql_transaction: the cause was one of these, seen earlier
		"53000", "53100", "53200", "53300", "53400": // insufficient resources, too many connections
		return true
	}
	// Class 08: connection exception.
	return len(code) == 5 && code[:2] == "08"
}
