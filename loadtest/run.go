package loadtest

import (
	"context"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/nowconnect/nowconnect/internal/pace"
)

// kindStats are the counters of one op kind (and of all ops together).
type kindStats struct {
	hist     Histogram // latency of successful ops (benign included)
	errors   atomic.Uint64
	benign20 atomic.Uint64
	benign16 atomic.Uint64
}

func (k *kindStats) record(lat time.Duration, o *outcome) {
	if o.err != nil {
		k.errors.Add(1)
		return
	}
	k.hist.Record(lat)
	if o.benign20 {
		k.benign20.Add(1)
	}
	if o.benign16 {
		k.benign16.Add(1)
	}
}

type errKey struct {
	kind  string // scenario of the op, "" if none
	step  string
	class string
}

type errVal struct {
	count  uint64
	sample string
}

// stats is shared by all workers: atomic counters and histograms, a mutex only on the
// error path.
type stats struct {
	all    kindStats
	kinds  [numKinds]kindStats
	warmup atomic.Uint64 // ops done during warmup (not recorded)
	// Actual start times of the first and last recorded ops, as ns since the start plus
	// one (0 = none yet), and the number of recorded ops that started: the achieved rate.
	firstStart, lastStart atomic.Int64
	issued                atomic.Uint64

	mu     sync.Mutex
	errors map[errKey]*errVal
}

func (s *stats) record(k int, lat time.Duration, o *outcome) {
	s.all.record(lat, o)
	s.kinds[k].record(lat, o)
	if o.err != nil {
		s.addError(errKey{kind: string(opKinds[k]), step: o.step, class: classify(o.err)}, 1, o.err.Error())
	}
}

func (s *stats) addError(key errKey, n uint64, sample string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.errors[key]
	if v == nil {
		if len(sample) > 200 {
			sample = sample[:200] + "…"
		}
		v = &errVal{sample: sample}
		s.errors[key] = v
	}
	v.count += n
}

// runner is one run's immutable plan plus its shared stats.
type runner struct {
	cfg     Config
	dialer  *net.Dialer
	tlsConf *tls.Config

	users    []user
	groups   []string
	existing map[uint64]struct{} // (user, group) pairs that were members before the run

	kind    int   // op kind of a single-kind scenario
	mixCum  []int // cumulative weights (mixed)
	mixKind []int

	st stats

	// Timeline, written before the workers are released (closing go).
	start, measureStart, end time.Time
	interval                 float64 // ns between intended op starts (open loop)
	tickets                  atomic.Int64
}

// Run executes one load test. It returns an error wrapping ErrConfig when the
// configuration is invalid or the preflight against the target fails; every failure
// during the run itself is counted in the Result. Cancelling ctx (SIGINT) ends the run
// early: in-flight ops finish, and the Result covers the time until then.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	r := &runner{cfg: cfg, dialer: &net.Dialer{Timeout: cfg.OpTimeout}, st: stats{errors: map[errKey]*errVal{}}}
	if u, _ := url.Parse(cfg.URL); u != nil && u.Scheme == "ldaps" {
		r.tlsConf = &tls.Config{ServerName: u.Hostname()}
	}
	if err := r.plan(); err != nil {
		return nil, err
	}
	if err := r.preflight(); err != nil {
		return nil, err
	}
	var before map[string]float64
	if cfg.MetricsURL != "" {
		var err error
		if before, err = scrapeMetrics(ctx, cfg.MetricsURL); err != nil {
			return nil, fmt.Errorf("%w: --metrics-url: %v", ErrConfig, err)
		}
	}
	started := time.Now()
	window, interrupted := r.execute(ctx)
	res := r.result(started, window, interrupted)
	if cfg.MetricsURL != "" {
		// A fresh context: the "after" scrape must happen even after SIGINT.
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		after, err := scrapeSettled(sctx, cfg.MetricsURL, 2*time.Second)
		cancel()
		res.Gateway = gatewayDeltas(cfg.MetricsURL, before, after, err)
	}
	res.evaluate()
	return res, nil
}

// plan renders users and groups and the mix table.
func (r *runner) plan() error {
	c := &r.cfg
	r.users = make([]user, c.UserCount)
	for n := range r.users {
		i := c.UserOffset + n
		v := templateVars{base: c.BaseDN, i: i}
		uid, err := expand(c.UIDTemplate, v)
		if err != nil {
			return fmt.Errorf("%w: --uid: %v", ErrConfig, err)
		}
		v.uid = uid
		u := user{uid: uid}
		if u.dn, err = expand(c.UserDNTmpl, v); err != nil {
			return fmt.Errorf("%w: --user-dn: %v", ErrConfig, err)
		}
		if u.pw, err = expand(c.UserPWTmpl, v); err != nil {
			return fmt.Errorf("%w: --user-pw: %v", ErrConfig, err)
		}
		v.escapeUID = true
		if u.filter, err = expand(c.Filter, v); err != nil {
			return fmt.Errorf("%w: --filter: %v", ErrConfig, err)
		}
		r.users[n] = u
	}
	if c.usesKind(GroupWrite) {
		r.groups = make([]string, c.GroupCount)
		for g := range r.groups {
			dn, err := expand(c.GroupDNTmpl, templateVars{base: c.BaseDN, g: g})
			if err != nil {
				return fmt.Errorf("%w: --group-dn: %v", ErrConfig, err)
			}
			r.groups[g] = dn
		}
	}
	if c.Scenario == Mixed {
		sum := 0
		for k, sc := range opKinds {
			if w := c.Mix[sc]; w > 0 {
				sum += w
				r.mixCum = append(r.mixCum, sum)
				r.mixKind = append(r.mixKind, k)
			}
		}
	} else {
		r.kind = kindIndex(c.Scenario)
	}
	return nil
}

func (r *runner) dial() (*ldap.Conn, error) {
	opts := []ldap.DialOpt{ldap.DialWithDialer(r.dialer)}
	if r.tlsConf != nil {
		opts = append(opts, ldap.DialWithTLSConfig(r.tlsConf))
	}
	c, err := ldap.DialURL(r.cfg.URL, opts...)
	if err != nil {
		return nil, err
	}
	c.SetTimeout(r.cfg.OpTimeout)
	return c, nil
}

// preflight checks, with one connection, that the target answers and that the
// credentials and templates work, so a misconfiguration fails fast (exit 2) instead of
// producing a run of errors. For group-write it also records the memberships that exist
// before the run.
func (r *runner) preflight() error {
	c, err := r.dial()
	if err != nil {
		return fmt.Errorf("%w: preflight: connect %s: %v", ErrConfig, r.cfg.URL, err)
	}
	defer c.Close()
	w := &worker{r: r, c: c, bound: boundAnon}
	u := &r.users[0]
	if r.cfg.usesKind(BindSearch) {
		if err := c.Bind(u.dn, u.pw); err != nil {
			return fmt.Errorf("%w: preflight: bind as %q (--user-dn/--user-pw): %v", ErrConfig, u.dn, err)
		}
		w.bound = 0
		if err := w.searchUser(c, u); err != nil {
			return fmt.Errorf("%w: preflight: search %q under %q as %q: %v", ErrConfig, u.filter, r.cfg.BaseDN, u.dn, err)
		}
	}
	if r.cfg.usesKind(Search) || r.cfg.usesKind(GroupWrite) {
		if err := w.ensureAdmin(c); err != nil {
			return fmt.Errorf("%w: preflight: bind as %q: %v", ErrConfig, r.cfg.BindDN, err)
		}
	}
	if r.cfg.usesKind(Search) {
		if err := w.searchUser(c, u); err != nil {
			return fmt.Errorf("%w: preflight: search %q under %q: %v", ErrConfig, u.filter, r.cfg.BaseDN, err)
		}
	}
	if r.cfg.usesKind(GroupWrite) {
		return r.readMembers(c)
	}
	return nil
}

func (r *runner) readMembers(c *ldap.Conn) error {
	index := make(map[string]int, len(r.users))
	for i := range r.users {
		index[normDN(r.users[i].dn)] = i
	}
	existing := map[uint64]struct{}{}
	for g, gdn := range r.groups {
		res, err := c.Search(ldap.NewSearchRequest(gdn, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false,
			"(objectClass=*)", []string{"member"}, nil))
		if err != nil {
			return fmt.Errorf("%w: preflight: read group %q (--group-dn/--group-count): %v", ErrConfig, gdn, err)
		}
		if len(res.Entries) != 1 {
			return fmt.Errorf("%w: preflight: group %q not found", ErrConfig, gdn)
		}
		for _, m := range res.Entries[0].GetAttributeValues("member") {
			if i, ok := index[normDN(m)]; ok {
				existing[pairKey(i, g)] = struct{}{}
			}
		}
	}
	if r.cfg.AllowExisting {
		return nil
	}
	if len(existing) >= len(r.users)*len(r.groups) {
		return fmt.Errorf("%w: preflight: every picked user is already a member of every picked group; "+
			"group-write never removes memberships that existed before the run (widen --user-count/--user-offset/--group-count, or --allow-existing)", ErrConfig)
	}
	r.existing = existing
	return nil
}

// normDN is a comparison key for DNs: parsed, re-rendered, lower-cased.
func normDN(s string) string {
	if d, err := ldap.ParseDN(s); err == nil {
		s = d.String()
	}
	return strings.ToLower(s)
}

// execute runs the workers and the progress loop until the duration is over or ctx is
// cancelled. It returns the measured window and whether the run was interrupted.
func (r *runner) execute(ctx context.Context) (time.Duration, bool) {
	cfg := &r.cfg
	// Workers stop taking new ops at r.end; in open loop a backlog may still drain until
	// hardStop, after which ops that never started are counted as errors.
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()

	var wg, ready sync.WaitGroup
	release := make(chan struct{})
	workers := make([]*worker, cfg.Concurrency)
	seed := cfg.Seed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	for n := range workers {
		w := &worker{r: r, rng: rand.New(rand.NewPCG(seed, uint64(n))), bound: boundAnon}
		workers[n] = w
		ready.Add(1)
		wg.Add(1)
		go func() { // worker: owned here, waited for by wg.Wait below
			defer wg.Done()
			defer w.drop()
			if !cfg.Reconnect {
				_, _ = w.conn() // connect before the clock starts; a failure retries in the first op
			}
			ready.Done()
			select {
			case <-release:
			case <-runCtx.Done():
				return
			}
			if cfg.Rate > 0 {
				r.openLoop(runCtx, w)
			} else {
				r.closedLoop(runCtx, w)
			}
		}()
	}
	ready.Wait()
	r.start = time.Now()
	r.measureStart = r.start.Add(cfg.Warmup)
	r.end = r.measureStart.Add(cfg.Duration)
	if cfg.Rate > 0 {
		r.interval = float64(time.Second) / cfg.Rate
	}
	hardStop := r.end.Add(cfg.OpTimeout)
	close(release)

	done := make(chan struct{})
	go func() { // closes done once every worker has returned
		wg.Wait()
		close(done)
	}()

	var tick <-chan time.Time
	if cfg.Progress != nil {
		t := time.NewTicker(cfg.ProgressInterval)
		defer t.Stop()
		tick = t.C
	}
	drainTimer := time.NewTimer(time.Until(hardStop))
	defer drainTimer.Stop()
	p := progress{r: r, last: r.start}
	interrupted := false
	var stopAt time.Time
loop:
	for {
		select {
		case <-done:
			break loop
		case <-ctx.Done():
			if !interrupted {
				interrupted = true
				stopAt = time.Now()
				cancel()
			}
			<-done
			break loop
		case <-drainTimer.C:
			cancel() // backlog past the op timeout: stop taking tickets
		case now := <-tick:
			p.print(now)
		}
	}
	if cfg.Progress != nil {
		p.final(time.Now())
	}
	end := r.end
	if interrupted && stopAt.Before(end) {
		end = stopAt
	}
	if !interrupted && cfg.Rate > 0 {
		r.countUnstarted()
	}
	window := end.Sub(r.measureStart)
	if window < 0 {
		window = 0
	}
	return window, interrupted
}

// dueTime is the intended start of open-loop op k.
func (r *runner) dueTime(k int64) time.Time {
	return r.start.Add(time.Duration(float64(k) * r.interval))
}

// openLoop takes op tickets in order; ticket k is due at start + k/rate and its latency
// is measured from that intended start, so a slow server shows up as latency (queueing
// included) instead of silently lowering the offered rate.
func (r *runner) openLoop(ctx context.Context, w *worker) {
	for ctx.Err() == nil {
		k := r.tickets.Add(1) - 1
		due := r.dueTime(k)
		if !due.Before(r.end) {
			return
		}
		// internal/pace, not a timer: a timer fires up to a millisecond
		// late in a quiet process, and that lateness would be reported as
		// the server's latency.
		if pace.Until(ctx, due) != nil {
			return
		}
		if !due.Before(r.measureStart) {
			r.noteStart(time.Now())
		}
		kind := w.pickKind()
		o := w.do(kind)
		lat := time.Since(due)
		w.finish()
		r.note(kind, due, lat, &o)
	}
}

// closedLoop runs ops back to back; latency is measured from the actual start.
func (r *runner) closedLoop(ctx context.Context, w *worker) {
	for ctx.Err() == nil {
		st := time.Now()
		if !st.Before(r.end) {
			return
		}
		r.noteStart(st)
		kind := w.pickKind()
		o := w.do(kind)
		lat := time.Since(st)
		w.finish()
		r.note(kind, st, lat, &o)
	}
}

func (r *runner) note(kind int, start time.Time, lat time.Duration, o *outcome) {
	if start.Before(r.measureStart) {
		r.st.warmup.Add(1)
		return
	}
	r.st.record(kind, lat, o)
}

// noteStart records the actual start of a measured op (for open loop, after its wait).
func (r *runner) noteStart(actual time.Time) {
	if actual.Before(r.measureStart) {
		return
	}
	r.st.issued.Add(1)
	v := int64(actual.Sub(r.start)) + 1
	for {
		cur := r.st.firstStart.Load()
		if (cur != 0 && cur <= v) || r.st.firstStart.CompareAndSwap(cur, v) {
			break
		}
	}
	for {
		cur := r.st.lastStart.Load()
		if cur >= v || r.st.lastStart.CompareAndSwap(cur, v) {
			break
		}
	}
}

// countUnstarted adds, after an open-loop run that hit its drain limit, the ops of the
// measured window that were due but never started: they are errors (their latency
// would exceed the op timeout), not silently dropped load.
func (r *runner) countUnstarted() {
	due := r.firstDueAtOrAfter(r.end)            // tickets 0..due-1 were due before end
	first := r.firstDueAtOrAfter(r.measureStart) // first measured ticket
	from := max(r.tickets.Load(), first)
	if from >= due {
		return
	}
	n := uint64(due - from)
	r.st.all.errors.Add(n)
	r.st.addError(errKey{step: "schedule", class: "client: not started (backlog past --op-timeout)"}, n,
		"the offered rate was not sustained: ops were still queued when the run ended")
}

// firstDueAtOrAfter returns the smallest ticket whose due time is not before t.
func (r *runner) firstDueAtOrAfter(t time.Time) int64 {
	k := int64(float64(t.Sub(r.start)) / r.interval)
	for k > 0 && !r.dueTime(k-1).Before(t) {
		k--
	}
	for r.dueTime(k).Before(t) {
		k++
	}
	return k
}

// progress prints the live line.
type progress struct {
	r       *runner
	last    time.Time
	lastOps uint64
}

func (p *progress) print(now time.Time) {
	r := p.r
	cfg := &r.cfg
	st := &r.st
	ops := st.all.hist.Count() + st.all.errors.Load()
	var line string
	if now.Before(r.measureStart) {
		line = fmt.Sprintf("warmup %s/%s  ops %d", roundDur(now.Sub(r.start)), cfg.Warmup, st.warmup.Load())
	} else {
		if p.last.Before(r.measureStart) {
			p.last = r.measureStart
		}
		rate := 0.0
		if dt := now.Sub(p.last).Seconds(); dt > 0 {
			rate = float64(ops-p.lastOps) / dt
		}
		el := now.Sub(r.measureStart)
		if el > cfg.Duration {
			el = cfg.Duration
		}
		line = fmt.Sprintf("%s/%s  ops %d  %.0f ops/s  p99 %s  errors %d  benign %d",
			roundDur(el), cfg.Duration, ops, rate, fmtDur(st.all.hist.Quantile(0.99)), st.all.errors.Load(),
			st.all.benign16.Load()+st.all.benign20.Load())
		p.lastOps = ops
	}
	p.last = now
	p.write(line, false)
}

// final prints the closing line with the average rate over the measured window.
func (p *progress) final(now time.Time) {
	st := &p.r.st
	ops := st.all.hist.Count() + st.all.errors.Load()
	el := now.Sub(p.r.measureStart)
	if el > p.r.cfg.Duration {
		el = p.r.cfg.Duration
	}
	rate := 0.0
	if el > 0 {
		rate = float64(ops) / el.Seconds()
	}
	p.write(fmt.Sprintf("done %s  ops %d  %.0f ops/s avg  p99 %s  errors %d  benign %d", roundDur(el), ops, rate,
		fmtDur(st.all.hist.Quantile(0.99)), st.all.errors.Load(), st.all.benign16.Load()+st.all.benign20.Load()), true)
}

func (p *progress) write(line string, last bool) {
	w := p.r.cfg.Progress
	switch {
	case !p.r.cfg.ProgressTTY:
		fmt.Fprintln(w, line)
	case last:
		fmt.Fprintf(w, "\r\x1b[K%s\n", line)
	default:
		fmt.Fprintf(w, "\r\x1b[K%s", line)
	}
}

func roundDur(d time.Duration) time.Duration { return d.Round(100 * time.Millisecond) }

// result assembles the Result from the stats (every worker has returned).
func (r *runner) result(started time.Time, window time.Duration, interrupted bool) *Result {
	cfg := &r.cfg
	st := &r.st
	res := &Result{
		Config:      summarize(cfg),
		Started:     started,
		Window:      window,
		Interrupted: interrupted,
		WarmupOps:   st.warmup.Load(),
	}
	// The achieved rate is the rate at which ops actually started: n ops whose actual
	// starts span d make n-1 intervals, so the span is d·n/(n-1). An open-loop run that
	// cannot keep up starts its backlog late and shows a lower rate than offered; one
	// that started ops early would show a higher one. Falls back to the window.
	res.RateSpan = window
	if n, first, last := st.issued.Load(), st.firstStart.Load(), st.lastStart.Load(); n >= 2 && last > first {
		res.RateSpan = time.Duration(float64(last-first) * float64(n) / float64(n-1))
	}
	res.Totals = totals(&st.all, res.RateSpan)
	if res.RateSpan > 0 { // ops never started (open-loop backlog) are not part of the rate
		res.Totals.Rate = float64(st.issued.Load()) / res.RateSpan.Seconds()
	}
	res.Latency = summary(&st.all.hist)
	for k, sc := range opKinds {
		ks := &st.kinds[k]
		if ks.hist.Count()+ks.errors.Load() == 0 {
			continue
		}
		res.Scenarios = append(res.Scenarios, ScenarioResult{Scenario: sc, Totals: totals(ks, res.RateSpan), Latency: summary(&ks.hist)})
	}
	st.mu.Lock()
	for k, v := range st.errors {
		res.Errors = append(res.Errors, ErrorCount{Class: k.class, Scenario: Scenario(k.kind), Step: k.step, Count: v.count, Sample: v.sample})
	}
	st.mu.Unlock()
	sort.Slice(res.Errors, func(i, j int) bool {
		a, b := res.Errors[i], res.Errors[j]
		if a.Count != b.Count {
			return a.Count > b.Count
		}
		return a.Class+string(a.Scenario)+a.Step < b.Class+string(b.Scenario)+b.Step
	})
	return res
}

func totals(k *kindStats, span time.Duration) Totals {
	t := Totals{
		Succeeded: k.hist.Count(),
		Errors:    k.errors.Load(),
		Benign20:  k.benign20.Load(),
		Benign16:  k.benign16.Load(),
	}
	t.Ops = t.Succeeded + t.Errors
	t.Benign = t.Benign20 + t.Benign16
	if t.Ops > 0 {
		t.ErrorRate = float64(t.Errors) / float64(t.Ops)
	}
	if span > 0 {
		t.Rate = float64(t.Ops) / span.Seconds()
	}
	return t
}

func summary(h *Histogram) Latency {
	return Latency{
		Count: h.Count(),
		Min:   h.Min(),
		Mean:  h.Mean(),
		P50:   h.Quantile(0.50),
		P95:   h.Quantile(0.95),
		P99:   h.Quantile(0.99),
		P999:  h.Quantile(0.999),
		Max:   h.Max(),
	}
}
