// Package loadtest drives real LDAP traffic (github.com/go-ldap/ldap/v3) against a
// directory, directly or through a NowConnect gateway listener, and gates the result on a
// p99 SLO and an error budget. It backs `nowconnect loadtest ldap`.
//
// Scenarios (see Scenario): bind-search, search, group-write (add then delete a member;
// result codes 20 on the add and 16 on the delete are benign successes, counted apart)
// and a weighted mix. Workers keep one connection each, or reconnect per op.
//
// Open loop (Config.Rate > 0): op k is due at start + k/rate and its latency is measured
// from that intended start, so a stalled server shows up as latency instead of a lower
// offered rate (no coordinated omission). Closed loop (Rate = 0): each worker runs ops
// back to back.
//
// Latencies of successful ops go into a fixed-size log-linear Histogram (≤0.4% relative
// error, no allocation per value); errors are counted by LDAP result code or network
// class. With Config.MetricsURL the hub's nowconnect_tcp_* counters are scraped before
// and after the run and their deltas reported.
//
//	res, err := loadtest.Run(ctx, loadtest.Config{URL: "ldap://127.0.0.1:10389", ...})
//	// err wraps ErrConfig for configuration and preflight failures (exit 2)
//	res.WriteMarkdown(os.Stdout)
//	os.Exit(res.ExitCode()) // 1 when a gate was missed
package loadtest
