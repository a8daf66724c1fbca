package commands

import "context"

// OnConflictRetry registers f, called each time a command decides again after
// losing an optimistic-concurrency race (the API counts these for /metrics).
// Set it before the service is used.
func (s *Service) OnConflictRetry(f func()) { s.onRetry = f }

// retrying observes a retry and waits before deciding again.
func (s *Service) retrying(ctx context.Context, attempt int) {
	if s.onRetry != nil {
		s.onRetry()
	}
	backoff(ctx, attempt)
}
