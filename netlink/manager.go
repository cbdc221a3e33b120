package netlink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// VIP is the floating-IP control the HA core drives. *Manager implements it; ha may declare
// the same interface, or a narrower one, on its side.
//
// All methods are safe for concurrent use and none of them blocks on the network except
// Release, which waits for its context.
type VIP interface {
	// SetEntitled records whether this node may hold the VIP: true only while it is the primary
	// in the FSM and holds its lease. Only the latest value counts; the call never blocks.
	SetEntitled(entitled bool)
	// Release revokes entitlement and waits until the VIP is off the interface or ctx is done.
	Release(ctx context.Context) error
	// Status returns a snapshot for /nodes and metrics.
	Status() Status
}

// Status is a snapshot of the VIP on this node.
type Status struct {
	// Enabled is false when no vip.address is configured; the other fields are then zero.
	Enabled   bool   `json:"enabled"`
	Address   string `json:"address,omitempty"`
	Interface string `json:"interface,omitempty"`
	// Entitled is the latest value given to SetEntitled.
	Entitled bool `json:"entitled"`
	// Held says whether the VIP was on the interface at the last check. It can differ from
	// Entitled for the few microseconds of a change, or for as long as Error explains.
	Held bool `json:"held"`
	// Since is when Held last changed (or was first observed).
	Since time.Time `json:"since,omitzero"`
	// Error says why the interface is not in the wanted state; empty once it is.
	Error   string    `json:"error,omitempty"`
	ErrorAt time.Time `json:"error_at,omitzero"`
	// AnnounceError says why the last gratuitous ARP or neighbour advertisement failed; empty
	// once one succeeds.
	AnnounceError string    `json:"announce_error,omitempty"`
	LastAnnounced time.Time `json:"last_announced,omitzero"`
	// Privileges are the capabilities found at start-up; PrivilegeProblem says what is missing
	// and what to do, or is empty.
	Privileges       Privileges `json:"privileges"`
	PrivilegeProblem string     `json:"privilege_problem,omitempty"`
	// Counters since start-up.
	Acquisitions    uint64 `json:"acquisitions"`     // times this node put the VIP on the interface
	Releases        uint64 `json:"releases"`         // times it took the VIP off
	ForeignRemovals uint64 `json:"foreign_removals"` // of those, copies it had not added itself
	Announcements   uint64 `json:"announcements"`    // ARP/NA rounds sent
}

// Manager holds the VIP on this node while, and only while, it is entitled to it.
//
// Concurrency: SetEntitled, Release and Status may be called from any goroutine at any time. Run
// owns every netlink and raw-socket operation; it runs once, in its own goroutine, for the life
// of the daemon. Entitlement changes reach Run through a one-slot wake-up channel, so a burst of
// changes costs one reconcile against the latest value.
type Manager struct {
	cfg    Config
	prefix netip.Prefix
	log    *slog.Logger
	ns     netns.NsHandle
	// pollOnly turns kernel address notifications off, leaving the periodic check alone (tests).
	pollOnly bool

	entitled atomic.Bool
	gen      atomic.Uint64 // counts SetEntitled calls; lets Release know its change was applied
	wake     chan struct{} // capacity 1: "reconcile now"
	running  atomic.Bool

	mu       sync.Mutex
	st       Status
	observed bool          // Held has been observed at least once
	applied  uint64        // generation the last successful reconcile applied
	changed  chan struct{} // closed and replaced whenever st or applied changes
}

var _ VIP = (*Manager)(nil)

// Option adjusts a Manager.
type Option func(*Manager)

// WithNetns makes the manager work in network namespace ns instead of the current one: netlink
// requests, the address subscription and the raw ARP/NDP sockets all target ns. The caller keeps
// ns open until Run has returned, then closes it. Tests use this to run several nodes in one
// process.
func WithNetns(ns netns.NsHandle) Option { return func(m *Manager) { m.ns = ns } }

// New checks cfg and the process's capabilities. It does not touch the interface; Run does.
// A missing capability is logged and reported in Status, never returned as an error: the rest of
// the daemon keeps running. logger may be nil.
func New(cfg Config, logger *slog.Logger, opts ...Option) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m := &Manager{
		cfg:     cfg,
		log:     logger,
		ns:      netns.None(),
		wake:    make(chan struct{}, 1),
		changed: make(chan struct{}),
	}
	for _, o := range opts {
		o(m)
	}
	m.st = Status{Enabled: cfg.Enabled()}
	if !cfg.Enabled() {
		m.log.Info("vip disabled: no vip.address configured")
		return m, nil
	}
	m.prefix, _ = cfg.Prefix() // checked by Validate
	m.log = m.log.With("vip", m.prefix.String(), "interface", cfg.Interface)
	m.st.Address, m.st.Interface = m.prefix.String(), cfg.Interface

	priv, err := CurrentPrivileges()
	m.st.Privileges = priv
	switch {
	case err != nil:
		m.st.PrivilegeProblem = fmt.Sprintf("could not read capabilities (%v); VIP operations may fail: %s", err, privilegeHint)
	default:
		m.st.PrivilegeProblem = priv.Problem()
	}
	if m.st.PrivilegeProblem != "" {
		m.log.Error("vip will not work: the rest of pgbastion keeps running", "problem", m.st.PrivilegeProblem)
	}
	return m, nil
}

// SetEntitled implements VIP. It never blocks; Run applies the latest value at once.
func (m *Manager) SetEntitled(entitled bool) {
	m.entitled.Store(entitled)
	m.gen.Add(1)
	select {
	case m.wake <- struct{}{}:
	default: // a wake-up is already pending; it will read the latest value
	}
}

// Release implements VIP. It needs Run to be running; with the VIP disabled it returns at once.
func (m *Manager) Release(ctx context.Context) error {
	m.SetEntitled(false)
	gen := m.gen.Load()
	for {
		m.mu.Lock()
		enabled, done, held, lastErr, changed := m.st.Enabled, m.applied >= gen, m.st.Held, m.st.Error, m.changed
		m.mu.Unlock()
		if !enabled || (done && !held) {
			return nil
		}
		if m.entitled.Load() {
			return errors.New("vip release overtaken: entitlement was granted again")
		}
		select {
		case <-changed:
		case <-ctx.Done():
			if lastErr != "" {
				return fmt.Errorf("releasing vip %s: %w (last error: %s)", m.prefix, ctx.Err(), lastErr)
			}
			return fmt.Errorf("releasing vip %s: %w", m.prefix, ctx.Err())
		}
	}
}

// Status implements VIP.
func (m *Manager) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.st
	st.Entitled = m.entitled.Load()
	return st
}

// Run keeps the interface in line with the entitlement until ctx is done, then removes the VIP
// (retrying for up to resign_timeout) and returns. The error is non-nil only if the VIP may have
// been left on the interface at shutdown, or if Run was called twice. With the VIP disabled Run
// just waits for ctx.
//
// It reconciles at once on every SetEntitled, on every kernel notification about the VIP's
// address, every check_interval, and after a failure with a back-off from 100 ms up to
// check_interval.
func (m *Manager) Run(ctx context.Context) error {
	if !m.cfg.Enabled() {
		<-ctx.Done()
		return nil
	}
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("netlink: Manager.Run called twice")
	}
	r := &runner{m: m}
	defer r.close()
	r.loop(ctx)
	return r.resign()
}

// runner is the state owned by the Run goroutine.
type runner struct {
	m   *Manager
	ifc *iface // opened lazily so that a failure is retried like any other

	events     chan vnl.AddrUpdate // nil while not subscribed
	eventsStop chan struct{}

	annCancel context.CancelFunc // non-nil while an announcement burst may still send
	annQuiet  chan struct{}      // closed once that burst will send nothing more
	bursts    sync.WaitGroup     // every burst goroutine, including ones still closing sockets

	announced bool // a burst was started for the current holding
	ours      bool // this node put the VIP there (or adopted it while entitled) and has not removed it
	wasUp     bool // the interface was operationally up at the last look
}

const (
	minRetry      = 100 * time.Millisecond
	eventsBufSize = 16
)

func (r *runner) loop(ctx context.Context) {
	m := r.m
	tick := time.NewTicker(m.cfg.CheckInterval)
	defer tick.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	backoff := time.Duration(0)

	r.subscribe()
	for {
		if r.reconcile(ctx) {
			backoff = 0
			retry.Stop()
		} else {
			backoff = min(max(2*backoff, minRetry), m.cfg.CheckInterval)
			retry.Reset(backoff)
		}
		if !r.wait(ctx, tick.C, retry.C) {
			return
		}
	}
}

// wait blocks until there is a reason to reconcile; it returns false when ctx is done.
func (r *runner) wait(ctx context.Context, tick, retry <-chan time.Time) bool {
	m := r.m
	vip := m.prefix.Addr().AsSlice()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-m.wake:
			return true
		case <-retry:
			return true
		case <-tick:
			if r.events == nil {
				r.subscribe()
			}
			return true
		case u, ok := <-r.events:
			if !ok {
				m.log.Warn("vip address notifications stopped; relying on the periodic check")
				r.unsubscribe()
				return true
			}
			if u.LinkAddress.IP.Equal(vip) {
				return true
			}
		}
	}
}

// reconcile applies the latest entitlement and reports whether it succeeded.
func (r *runner) reconcile(ctx context.Context) bool {
	m := r.m
	gen := m.gen.Load() // before entitled: the value read below is at least this new
	want := m.entitled.Load()
	held, err := r.apply(ctx, want)
	if err != nil && !(errors.Is(err, errNoInterface) && !want) {
		m.fail(err, held)
		return false
	}
	// A missing interface while not entitled is what was wanted (no VIP here), but it is
	// still a problem worth reporting.
	m.succeed(gen, held, err)
	return true
}

// apply makes the interface hold the VIP iff want. It returns whether the VIP is on the
// interface afterwards (as far as it knows) and what went wrong.
func (r *runner) apply(ctx context.Context, want bool) (held bool, err error) {
	m := r.m
	if !want {
		// Stop announcing first, and make sure after the removal that the burst has stopped
		// sending, so that no announcement for the VIP leaves this node once it is gone.
		// Waiting for it before the removal could only delay the removal.
		r.cancelAnnouncing()
		defer r.quietAnnouncing()
	}
	if r.ifc == nil {
		if r.ifc, err = openIface(m.ns, m.cfg.Interface, m.prefix); err != nil {
			return false, err
		}
	}
	link, err := r.ifc.link()
	if errors.Is(err, errNoInterface) {
		r.ours, r.announced = false, false
		return false, err // no interface, no VIP on it
	}
	if err != nil {
		return r.ours, err
	}
	found, err := r.ifc.find(link)
	if err != nil {
		if !want { // cannot see it, so remove the configured copy blindly
			if rmErr := r.ifc.remove(link, nil); rmErr != nil {
				err = errors.Join(err, rmErr)
			}
		}
		return r.ours, err
	}

	if !want {
		if len(found) == 0 {
			r.ours, r.announced = false, false
			return false, nil
		}
		if err := r.ifc.remove(link, found); err != nil {
			return true, err
		}
		m.released(!r.ours)
		r.ours, r.announced = false, false
		return false, nil
	}

	added := false
	if !r.ifc.exact(found) {
		if err := r.ifc.add(link); err != nil {
			return len(found) > 0, err
		}
		added = true
	}
	if extra := inexact(found, m.prefix.Bits()); len(extra) > 0 {
		// A copy with another prefix length (an older configuration, an operator's typo):
		// keep exactly the configured one.
		if err := r.ifc.remove(link, extra); err != nil {
			m.log.Warn("vip: could not remove a copy with another prefix length", "err", err)
		}
	}
	if added {
		m.acquired(r.ours)
	} else if !r.ours {
		m.log.Info("vip already on the interface; adopting it")
	}
	r.ours = true
	// Announce on every acquisition, and again when the link comes back: announcements sent
	// while it was down went nowhere, and peers would otherwise keep the old MAC until their
	// neighbour entries time out.
	up := linkUp(link)
	if added || !r.announced || (up && !r.wasUp) {
		r.startAnnouncing(ctx)
		r.announced = true
	}
	r.wasUp = up
	return true, nil
}

// linkUp reports whether the link can carry frames. Interfaces that do not track carrier
// (some virtual ones) report "unknown" and count as up.
func linkUp(l vnl.Link) bool {
	s := l.Attrs().OperState
	return s == vnl.OperUp || s == vnl.OperUnknown
}

// inexact returns the copies in found whose prefix length is not bits.
func inexact(found []vnl.Addr, bits int) []vnl.Addr {
	var out []vnl.Addr
	for _, a := range found {
		if ones, _ := a.Mask.Size(); ones != bits {
			out = append(out, a)
		}
	}
	return out
}

// resign removes the VIP at shutdown, retrying until it is gone or resign_timeout has passed.
func (r *runner) resign() error {
	m := r.m
	deadline := time.Now().Add(m.cfg.ResignTimeout)
	backoff := 50 * time.Millisecond
	for {
		held, err := r.apply(context.Background(), false)
		if err == nil || errors.Is(err, errNoInterface) {
			m.succeed(0, false, err)
			return nil
		}
		m.fail(err, held)
		if time.Now().Add(backoff).After(deadline) {
			m.log.Error("vip may still be on the interface after shutdown", "resign_timeout", m.cfg.ResignTimeout, "err", err)
			return fmt.Errorf("vip %s on %s not removed within resign_timeout %v: %w", m.prefix, m.cfg.Interface, m.cfg.ResignTimeout, err)
		}
		time.Sleep(backoff) // a retry pause, not a wait for a condition
		backoff = min(2*backoff, time.Second)
	}
}

func (r *runner) close() {
	r.cancelAnnouncing()
	r.bursts.Wait()
	r.unsubscribe()
	if r.ifc != nil {
		r.ifc.close()
	}
}

// subscribe asks the kernel for address change notifications in the manager's namespace, so
// that a VIP added or removed behind our back is seen at once. Failure only costs latency: the
// periodic check still runs.
func (r *runner) subscribe() {
	m := r.m
	if m.pollOnly {
		return
	}
	ch := make(chan vnl.AddrUpdate, eventsBufSize)
	stop := make(chan struct{})
	ns := m.ns
	err := vnl.AddrSubscribeWithOptions(ch, stop, vnl.AddrSubscribeOptions{
		Namespace:     &ns,
		ErrorCallback: func(err error) { m.log.Debug("vip address subscription", "err", err) },
	})
	if err != nil {
		close(stop)
		m.log.Warn("vip: no address notifications; relying on the periodic check", "err", err)
		return
	}
	r.events, r.eventsStop = ch, stop
}

// unsubscribe stops the subscription and drains its channel until the library's goroutine has
// closed it, so that no goroutine is left blocked on a send.
func (r *runner) unsubscribe() {
	if r.eventsStop == nil {
		return
	}
	close(r.eventsStop)
	for range r.events {
	}
	r.events, r.eventsStop = nil, nil
}

func (r *runner) startAnnouncing(ctx context.Context) {
	r.cancelAnnouncing()
	r.quietAnnouncing()
	actx, cancel := context.WithCancel(ctx)
	quiet := make(chan struct{})
	r.annCancel, r.annQuiet = cancel, quiet
	r.bursts.Add(1)
	go func() {
		defer r.bursts.Done()
		r.m.announce(actx, quiet)
	}()
}

func (r *runner) cancelAnnouncing() {
	if r.annCancel != nil {
		r.annCancel()
	}
}

// quietAnnouncing waits until the current burst sends nothing more. It does not wait for the
// burst to close its socket: closing a packet socket waits for an RCU grace period (several
// milliseconds), which must not hold up the reconcile loop.
func (r *runner) quietAnnouncing() {
	if r.annCancel != nil {
		<-r.annQuiet
		r.annCancel, r.annQuiet = nil, nil
	}
}

// announce sends garp_count announcements garp_interval apart, the first at once, until ctx is
// cancelled (the VIP is being released). It runs on its own goroutine, which it moves into the
// manager's namespace for good.
// quiet is closed once it will send nothing more, before the socket is closed.
func (m *Manager) announce(ctx context.Context, quiet chan<- struct{}) {
	var a announcer
	defer func() {
		close(quiet)
		if a != nil {
			_ = a.close()
		}
	}()
	if err := enterNetns(m.ns); err != nil {
		m.announceFailed(err)
		return
	}
	a, err := openAnnouncer(m.cfg.Interface, m.prefix.Addr())
	if err != nil {
		m.announceFailed(err)
		return
	}
	t := time.NewTimer(0)
	defer t.Stop()
	for i := range m.cfg.GARPCount {
		if i > 0 {
			t.Reset(m.cfg.GARPInterval)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := a.announce(); err != nil {
			m.announceFailed(err) // e.g. the link is down: try again next round
			continue
		}
		m.announceSent()
	}
}

// Status bookkeeping. Each method takes m.mu and wakes Release waiters.

func (m *Manager) notifyLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

func (m *Manager) setHeldLocked(held bool) {
	if !m.observed || held != m.st.Held {
		m.st.Held, m.st.Since, m.observed = held, time.Now(), true
	}
}

// succeed records that the entitlement of generation gen is applied; problem, if not nil, is
// reported although it did not stand in the way.
func (m *Manager) succeed(gen uint64, held bool, problem error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.setHeldLocked(held)
	m.applied = max(m.applied, gen)
	if problem != nil {
		m.noteErrorLocked(problem, held)
	} else if m.st.Error != "" {
		m.log.Info("vip recovered", "held", held)
		m.st.Error = ""
	}
	m.notifyLocked()
}

func (m *Manager) fail(err error, held bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.setHeldLocked(held)
	m.noteErrorLocked(err, held)
	m.notifyLocked()
}

func (m *Manager) noteErrorLocked(err error, held bool) {
	if msg := err.Error(); msg != m.st.Error { // log each distinct problem once
		m.log.Error("vip reconcile failed", "entitled", m.entitled.Load(), "held", held, "err", err)
		m.st.Error = msg
	}
	m.st.ErrorAt = time.Now()
}

func (m *Manager) acquired(reAdded bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.st.Acquisitions++
	if reAdded {
		m.log.Warn("vip was removed by something else while entitled; added it again")
	} else {
		m.log.Info("vip acquired")
	}
}

func (m *Manager) released(foreign bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.st.Releases++
	if foreign {
		m.st.ForeignRemovals++
		m.log.Warn("vip found on this node while not entitled; removed it")
	} else {
		m.log.Info("vip released")
	}
}

func (m *Manager) announceSent() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.st.Announcements++
	m.st.LastAnnounced = time.Now()
	m.st.AnnounceError = ""
	m.notifyLocked()
}

func (m *Manager) announceFailed(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if msg := err.Error(); msg != m.st.AnnounceError {
		m.log.Error("vip announcement failed", "err", err)
		m.st.AnnounceError = msg
	}
	m.notifyLocked()
}
