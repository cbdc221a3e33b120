package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// FSM adapts State to raft.FSM. It holds the current immutable *State in an atomic pointer, so
// readers never block Apply, and it notifies subscribers of every change.
//
// If a log entry cannot be decoded the FSM halts: it stops applying (every later entry is
// answered with ErrHalted and leaves the state untouched), refuses to snapshot, and calls the
// OnHalt hook so that the owner shuts the node down. Applying some entries and skipping others
// would let this node's state diverge from its peers'; stopping keeps the log intact, so a
// fixed binary replays it correctly.
type FSM struct {
	log    *slog.Logger
	onHalt func(error)

	state atomic.Pointer[State]

	mu      sync.Mutex // serialises publishing and subscription changes
	subs    map[*Subscription]struct{}
	haltErr error
	halted  chan struct{}
}

// New returns an FSM holding the empty state. onHalt, if not nil, is called once, from raft's
// FSM goroutine, when the FSM halts; it must not block on raft.
func New(logger *slog.Logger, onHalt func(error)) *FSM {
	f := &FSM{log: logger, onHalt: onHalt, subs: map[*Subscription]struct{}{}, halted: make(chan struct{})}
	f.state.Store(NewState())
	return f
}

// State returns the current state. It is immutable; do not modify it.
func (f *FSM) State() *State { return f.state.Load() }

// Halted is closed when the FSM halts.
func (f *FSM) Halted() <-chan struct{} { return f.halted }

// Err returns why the FSM halted, or nil.
func (f *FSM) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.haltErr
}

// Apply implements raft.FSM. It returns a Result.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return Result{Index: l.Index}
	}
	select {
	case <-f.halted:
		return Result{Err: ErrHalted, Index: l.Index}
	default:
	}
	cmd, at, err := Decode(l.Data)
	if errors.Is(err, ErrIgnorable) {
		f.log.Warn("skipping unknown ignorable command", "index", l.Index, "type", l.Data[0])
		return Result{Index: l.Index}
	}
	if err != nil {
		f.halt(fmt.Errorf("log entry %d (term %d): %w", l.Index, l.Term, err))
		return Result{Err: ErrHalted, Index: l.Index}
	}
	cur := f.state.Load()
	next, res := cur.Apply(cmd, Meta{Index: l.Index, At: at, Trace: DecodeExtensions(l.Extensions).Trace})
	if next != cur {
		f.publish(next)
	}
	return res
}

func (f *FSM) halt(err error) {
	f.mu.Lock()
	if f.haltErr != nil {
		f.mu.Unlock()
		return
	}
	f.haltErr = err
	close(f.halted)
	f.mu.Unlock()
	f.log.Error("state machine halted: cannot apply a log entry, stopping rather than diverging", "error", err)
	if f.onHalt != nil {
		f.onHalt(err)
	}
}

// publish stores s and hands it to every subscriber, replacing any value they have not read.
func (f *FSM) publish(s *State) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state.Store(s)
	for sub := range f.subs {
		select {
		case <-sub.ch:
		default:
		}
		sub.ch <- s // cannot block: the buffer is empty and only publish sends, under f.mu
	}
}

// Subscription delivers state changes with latest-value semantics: C holds at most one state,
// and a newer state replaces an unread older one. A slow reader therefore never blocks the FSM
// and always sees the newest state.
type Subscription struct {
	C  <-chan *State
	ch chan *State
	f  *FSM
}

// Subscribe starts a subscription. C first receives the current state.
func (f *FSM) Subscribe() *Subscription {
	ch := make(chan *State, 1)
	sub := &Subscription{C: ch, ch: ch, f: f}
	f.mu.Lock()
	f.subs[sub] = struct{}{}
	ch <- f.state.Load()
	f.mu.Unlock()
	return sub
}

// Close ends the subscription. C is not closed; just stop reading it.
func (s *Subscription) Close() {
	s.f.mu.Lock()
	delete(s.f.subs, s)
	s.f.mu.Unlock()
}

// Snapshot implements raft.FSM. The state is immutable, so the snapshot is the current pointer;
// encoding happens in Persist, concurrently with Apply.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	if err := f.Err(); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	return &snapshot{state: f.state.Load()}, nil
}

// Restore implements raft.FSM: it decodes a complete fresh state and only then swaps it in.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	s, err := ReadSnapshot(rc)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	f.publish(s)
	return nil
}

// Snapshot format: the magic, one version byte, then the State as JSON.
const snapshotMagic = "PGBSTATE"

const (
	snapshotVersion = 1
	// maxSnapshotSize bounds what Restore will read. The state is kilobytes; this is generous.
	maxSnapshotSize = 256 << 20
)

type snapshot struct{ state *State }

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if err := WriteSnapshot(sink, s.state); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *snapshot) Release() {}

// WriteSnapshot writes s in the snapshot format: the state as JSON, then, when there are
// any, its advisory extras (operations' traces) as a second JSON object, which a binary of an
// older version never reads (see snapshotExtras).
func WriteSnapshot(w io.Writer, s *State) error {
	st, extras := s.splitExtras()
	body, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	var tail []byte
	if extras != nil {
		if tail, err = json.Marshal(extras); err != nil {
			return fmt.Errorf("encode state extras: %w", err)
		}
	}
	var buf bytes.Buffer
	buf.Grow(len(snapshotMagic) + 1 + len(body) + len(tail))
	buf.WriteString(snapshotMagic)
	buf.WriteByte(snapshotVersion)
	buf.Write(body)
	buf.Write(tail)
	_, err = w.Write(buf.Bytes())
	return err
}

// ReadSnapshot reads a state written by WriteSnapshot.
func ReadSnapshot(r io.Reader) (*State, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxSnapshotSize+1))
	if err != nil {
		return nil, fmt.Errorf("read snapshot: %w", err)
	}
	if len(b) > maxSnapshotSize {
		return nil, fmt.Errorf("snapshot larger than %d bytes", maxSnapshotSize)
	}
	if !bytes.HasPrefix(b, []byte(snapshotMagic)) || len(b) < len(snapshotMagic)+1 {
		return nil, errors.New("not a PGBastion state snapshot")
	}
	if v := b[len(snapshotMagic)]; v != snapshotVersion {
		return nil, fmt.Errorf("unsupported snapshot version %d", v)
	}
	s := NewState()
	body := b[len(snapshotMagic)+1:]
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(s); err != nil {
		return nil, fmt.Errorf("decode state: %w", err)
	}
	if s.Members == nil {
		s.Members = map[string]Member{}
	}
	s.joinExtras(decodeExtras(body[dec.InputOffset():]))
	return s, nil
}
