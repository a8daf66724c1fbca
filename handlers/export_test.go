package handlers

// SetCommitHooks installs test hooks that run just before and just after an
// idempotent request's transaction commits: a panic with http.ErrAbortHandler
// there is a crash at the worst moment.
func SetCommitHooks(a *API, before, after func()) {
	a.idem.beforeCommit, a.idem.afterCommit = before, after
}
