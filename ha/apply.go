package ha

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/tracing"
	"github.com/pgbastion/pgbastion/ha/transport"
)

// defaultApplyTimeout bounds an Apply whose context has no deadline.
const defaultApplyTimeout = 10 * time.Second

// Apply runs cmd through Raft and returns the state machine's Result. On the leader it is
// proposed directly; on a follower it is forwarded to the leader over the Raft port. The leader
// stamps the command with its clock. Apply retries while no leader is known or the leader
// changes before the command was proposed, until ctx ends.
//
// A returned error means the command's fate is unknown or it was never proposed. A command
// the state machine rejected returns a nil error and Result.Err set. When a forwarded call
// fails after delivery the command may have been applied and is retried; every command type
// tolerates that (a duplicate is harmless or rejected as a conflict).
func (n *Node) Apply(ctx context.Context, cmd fsm.Command) (fsm.Result, error) {
	b, err := fsm.Encode(cmd, time.Time{})
	if err != nil {
		return fsm.Result{}, err
	}
	return n.applyEncoded(ctx, b)
}

// applyChecked is Apply with a rejection turned into an error.
func (n *Node) applyChecked(ctx context.Context, cmd fsm.Command) (fsm.Result, error) {
	res, err := n.Apply(ctx, cmd)
	if err != nil {
		return res, err
	}
	return res, res.Error()
}

func (n *Node) applyEncoded(ctx context.Context, b []byte) (fsm.Result, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultApplyTimeout)
		defer cancel()
	}
	backoff := 5 * time.Millisecond
	for {
		res, retry, err := n.tryApply(ctx, b)
		if !retry {
			return res, err
		}
		select {
		case <-ctx.Done():
			return fsm.Result{}, fmt.Errorf("apply: %w (last error: %v)", ctx.Err(), err)
		case <-n.ctx.Done():
			return fsm.Result{}, ErrClosed
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

func (n *Node) tryApply(ctx context.Context, b []byte) (fsm.Result, bool, error) {
	if n.ctx.Err() != nil {
		return fsm.Result{}, false, ErrClosed
	}
	if n.raft.State() == raft.Leader {
		return n.applyLocal(ctx, b)
	}
	addr, _ := n.raft.LeaderWithID()
	if addr == "" {
		return fsm.Result{}, true, ErrNoLeader
	}
	resp, err := n.forward(ctx, string(addr), rpcRequest{Kind: rpcApply, Command: b, Extensions: extensionsFrom(ctx)})
	if err != nil {
		return fsm.Result{}, ctx.Err() == nil, err
	}
	if resp.Error != nil {
		if resp.Error.Code == codeNotLeader {
			return fsm.Result{}, true, ErrNoLeader
		}
		return fsm.Result{}, false, resp.Error
	}
	if resp.Result == nil {
		return fsm.Result{}, false, errors.New("forwarded apply: empty response")
	}
	return *resp.Result, false, nil
}

// applyLocal proposes b on this node, which believes it is the leader.
func (n *Node) applyLocal(ctx context.Context, b []byte) (fsm.Result, bool, error) {
	stamped, err := fsm.Stamp(b, n.now())
	if err != nil {
		return fsm.Result{}, false, err
	}
	timeout := defaultApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return fsm.Result{}, false, ctx.Err()
		}
	}
	f := n.raft.ApplyLog(raft.Log{Data: stamped, Extensions: extensionsFrom(ctx)}, timeout)
	if err := n.await(ctx, f); err != nil {
		// Not proposed: safe to retry, possibly on the new leader.
		retry := errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrEnqueueTimeout)
		return fsm.Result{}, retry && ctx.Err() == nil && n.ctx.Err() == nil, fmt.Errorf("raft apply: %w", err)
	}
	res, ok := f.Response().(fsm.Result)
	if !ok {
		return fsm.Result{}, false, fmt.Errorf("raft apply: unexpected response %T", f.Response())
	}
	return res, false, nil
}

// The forwarding protocol: JSON requests and responses over transport's RPC frames.
type rpcKind string

const (
	rpcApply        rpcKind = "apply"
	rpcAddVoter     rpcKind = "add_voter"
	rpcRemoveServer rpcKind = "remove_server"
	rpcRemoveMember rpcKind = "remove_member"
	rpcBackup       rpcKind = "backup"
	rpcRestore      rpcKind = "restore"
)

const codeNotLeader fsm.ErrorCode = "not_leader"

type rpcRequest struct {
	Kind    rpcKind `json:"kind"`
	Command []byte  `json:"command,omitempty"`
	// Extensions go with Command into its log entry (fsm.Extensions: an operation's trace).
	// A leader of an older version ignores the field, and the operation is not traced.
	Extensions []byte `json:"extensions,omitempty"`
	ID         string `json:"id,omitempty"`
	Address    string `json:"address,omitempty"`
	Data       []byte `json:"data,omitempty"`
}

type rpcResponse struct {
	Result *fsm.Result `json:"result,omitempty"`
	Error  *fsm.Error  `json:"error,omitempty"`
	Data   []byte      `json:"data,omitempty"`
}

func (n *Node) forward(ctx context.Context, addr string, req rpcRequest) (rpcResponse, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return rpcResponse{}, err
	}
	out, err := n.deps.fwd.Call(ctx, addr, b)
	if err != nil {
		return rpcResponse{}, fmt.Errorf("forward %s to leader %s: %w", req.Kind, addr, err)
	}
	var resp rpcResponse
	if err := json.Unmarshal(out, &resp); err != nil {
		return rpcResponse{}, fmt.Errorf("forward %s to leader %s: bad response: %w", req.Kind, addr, err)
	}
	return resp, nil
}

// handleRPC serves requests forwarded by followers. Only the leader serves them; others answer
// not_leader and the caller retries against the leader it learns from Raft.
func (n *Node) handleRPC(ctx context.Context, b []byte) ([]byte, error) {
	var req rpcRequest
	if err := json.Unmarshal(b, &req); err != nil {
		return nil, fmt.Errorf("bad request: %w", err)
	}
	resp := n.serve(ctx, req)
	return json.Marshal(resp)
}

func (n *Node) serve(ctx context.Context, req rpcRequest) rpcResponse {
	if n.raft.State() != raft.Leader {
		return rpcResponse{Error: &fsm.Error{Code: codeNotLeader, Message: "not the leader"}}
	}
	ctx, cancel := context.WithTimeout(ctx, defaultApplyTimeout)
	defer cancel()
	fail := func(err error) rpcResponse {
		var fe *fsm.Error
		if errors.As(err, &fe) {
			return rpcResponse{Error: fe}
		}
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, ErrNotLeader) {
			return rpcResponse{Error: &fsm.Error{Code: codeNotLeader, Message: err.Error()}}
		}
		return rpcResponse{Error: &fsm.Error{Code: fsm.CodeInternal, Message: err.Error()}}
	}
	switch req.Kind {
	case rpcApply:
		// Never propose what this leader cannot decode: every node would halt on it (a newer
		// follower during a rolling upgrade, or a bug). Refused, it costs one request.
		if _, _, err := fsm.Decode(req.Command); err != nil {
			return rpcResponse{Error: &fsm.Error{Code: fsm.CodeInvalid, Message: "refusing to propose: " + err.Error()}}
		}
		if len(req.Extensions) > 0 && len(req.Extensions) <= fsm.MaxExtensionsSize {
			ctx = withExtensions(ctx, req.Extensions)
		}
		res, retry, err := n.applyLocal(ctx, req.Command)
		if err != nil {
			if retry {
				return rpcResponse{Error: &fsm.Error{Code: codeNotLeader, Message: err.Error()}}
			}
			return fail(err)
		}
		return rpcResponse{Result: &res}
	}
	// The leader-only operations are idempotent: when leadership is lost under them, the
	// caller retries on the next leader.
	idempotent := func(err error) rpcResponse {
		if errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrEnqueueTimeout) {
			return rpcResponse{Error: &fsm.Error{Code: codeNotLeader, Message: err.Error()}}
		}
		return fail(err)
	}
	switch req.Kind {
	case rpcAddVoter:
		return failOrOK(idempotent, n.addVoterLocal(ctx, req.ID, req.Address))
	case rpcRemoveServer:
		return failOrOK(idempotent, n.removeServerLocal(ctx, req.ID))
	case rpcRemoveMember:
		return failOrOK(idempotent, n.removeMemberLocal(ctx, req.ID))
	case rpcBackup:
		data, err := n.backupLocal(ctx)
		if err != nil {
			return idempotent(err)
		}
		return rpcResponse{Data: data}
	case rpcRestore:
		return failOrOK(idempotent, n.restoreLocal(ctx, req.Data))
	}
	return fail(fmt.Errorf("unknown request kind %q", req.Kind))
}

func failOrOK(fail func(error) rpcResponse, err error) rpcResponse {
	if err != nil {
		return fail(err)
	}
	return rpcResponse{}
}

// ErrNotLeader is returned by leader-only operations run on another node.
var ErrNotLeader = errors.New("not the raft leader")

// onLeader runs a leader-only operation here if this node leads, or forwards it.
func (n *Node) onLeader(ctx context.Context, req rpcRequest, local func() error) (rpcResponse, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultApplyTimeout)
		defer cancel()
	}
	backoff := 10 * time.Millisecond
	for {
		var resp rpcResponse
		var err error
		if n.raft.State() == raft.Leader {
			err = local()
			if err == nil {
				return rpcResponse{}, nil
			}
			// Leader-only operations are idempotent (membership changes, backup, restore of
			// the same state): retry them on the next leader.
			if !errors.Is(err, raft.ErrNotLeader) && !errors.Is(err, raft.ErrLeadershipLost) && !errors.Is(err, raft.ErrEnqueueTimeout) {
				return rpcResponse{}, err
			}
		} else if addr, _ := n.raft.LeaderWithID(); addr == "" {
			err = ErrNoLeader
		} else {
			resp, err = n.forward(ctx, string(addr), req)
			if err == nil && resp.Error == nil {
				return resp, nil
			}
			if err == nil && resp.Error.Code != codeNotLeader {
				return resp, resp.Error
			}
		}
		select {
		case <-ctx.Done():
			return rpcResponse{}, fmt.Errorf("%s: %w (last error: %v)", req.Kind, ctx.Err(), err)
		case <-n.ctx.Done():
			return rpcResponse{}, ErrClosed
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

// AddVoter adds a node to the Raft group as a voter (on the leader, forwarded if needed). The
// new node must be running with the same cluster TLS identity and no bootstrap of its own (it
// is not listed in its own raft.peers). It registers its member record itself once it has
// caught up. A name that is a voter already is refused (fsm.ErrConflict): re-adding it under
// another address would move a member's vote.
func (n *Node) AddVoter(ctx context.Context, name, addr string) error {
	if name == "" || addr == "" {
		return errors.New("add voter: a name and an address are required")
	}
	if servers, err := n.Servers(); err == nil {
		for _, s := range servers {
			if s.ID == name {
				return fmt.Errorf("add voter: %w", &fsm.Error{Code: fsm.CodeConflict,
					Message: fmt.Sprintf("%s is a voter already (Raft address %s); to replace its host, start the new one under that name and address", name, s.Address)})
			}
		}
	}
	_, err := n.onLeader(ctx, rpcRequest{Kind: rpcAddVoter, ID: name, Address: addr}, func() error { return n.addVoterLocal(ctx, name, addr) })
	return err
}

func (n *Node) addVoterLocal(ctx context.Context, name, addr string) error {
	if err := n.await(ctx, n.raft.AddVoter(raft.ServerID(name), raft.ServerAddress(addr), 0, defaultApplyTimeout)); err != nil {
		return fmt.Errorf("add voter %s at %s: %w", name, addr, err)
	}
	return nil
}

// RemoveMember removes a node from the cluster: its member record (refused for the primary,
// while it takes part in an operation, and while it still reports: a running node would
// register itself again at once, a member without a Raft vote), then its Raft membership.
func (n *Node) RemoveMember(ctx context.Context, name string) error {
	_, err := n.onLeader(ctx, rpcRequest{Kind: rpcRemoveMember, ID: name}, func() error { return n.removeMemberLocal(ctx, name) })
	if err != nil {
		return fmt.Errorf("remove member %s: %w", name, err)
	}
	return nil
}

// removeMemberLocal is RemoveMember on the leader, which judges whether the member still runs
// on the whole committed state: another node's copy may not have the member's latest reports
// yet, or the member at all.
func (n *Node) removeMemberLocal(ctx context.Context, name string) error {
	if err := n.await(ctx, n.raft.Barrier(defaultApplyTimeout)); err != nil {
		return err
	}
	// Agents report every health interval: a member heard from (or registered) within five,
	// and at least 5 s — a node that is merely slow, on a loaded host or in a GC pause, is
	// not taken for stopped — is running.
	running := max(5*n.cfg.Health.Interval, 5*time.Second)
	if m, ok := n.fsm.State().Member(name); ok {
		last, what := m.Status.ReportedAt, "reported"
		if last.IsZero() {
			last, what = m.RegisteredAt, "registered"
		}
		if age := n.now().Sub(last); !last.IsZero() && age < running {
			return &fsm.Error{Code: fsm.CodePrecondition,
				Message: fmt.Sprintf("%s %s %s ago: it is still running. Stop its pgbastion first (a running node registers itself again), wait %s, then remove it",
					name, what, age.Round(100*time.Millisecond), running)}
		}
	}
	if _, err := n.applyChecked(ctx, fsm.RemoveMember{Name: name}); err != nil && !errors.Is(err, fsm.ErrNotFound) {
		return err
	}
	return n.removeServerLocal(ctx, name)
}

func (n *Node) removeServerLocal(ctx context.Context, name string) error {
	if err := n.await(ctx, n.raft.RemoveServer(raft.ServerID(name), 0, defaultApplyTimeout)); err != nil {
		return fmt.Errorf("remove raft server %s: %w", name, err)
	}
	return nil
}

// Switchover asks for a planned switchover from leader (the current primary) to candidate
// ("" lets the controller choose). It returns the operation's ID once accepted; use
// WaitOperation to wait for the outcome. Rejections are *fsm.Error (errors.Is with
// fsm.ErrPrecondition, fsm.ErrConflict, fsm.ErrInvalid).
func (n *Node) Switchover(ctx context.Context, leader, candidate string) (uint64, error) {
	res, err := n.applyChecked(n.traced(ctx, tracing.OperationRef(ctx)), fsm.RequestSwitchover{Leader: leader, Candidate: candidate})
	return res.ID, err
}

// ScheduleSwitchover books a switchover from leader to candidate ("" lets the controller
// choose) at at; the Raft leader's controller requests it then, or cancels the booking with
// the reason it could not start. CancelScheduledSwitchover drops the booking.
func (n *Node) ScheduleSwitchover(ctx context.Context, leader, candidate string, at time.Time) error {
	_, err := n.applyChecked(n.traced(ctx, tracing.OperationRef(ctx)), fsm.ScheduleSwitchover{Leader: leader, Candidate: candidate, At: at})
	return err
}

// CancelScheduledSwitchover drops the booked switchover.
func (n *Node) CancelScheduledSwitchover(ctx context.Context) error {
	_, err := n.applyChecked(ctx, fsm.CancelScheduledSwitchover{Reason: "cancelled by an operator"})
	return err
}

// Failover asks for a manual failover to candidate. With a healthy primary it is carried out
// as a switchover. force promotes even a candidate beyond maximum_lag_on_failover; the
// operation's MayLoseBytes then says how far behind it was.
func (n *Node) Failover(ctx context.Context, candidate string, force bool) (uint64, error) {
	res, err := n.applyChecked(n.traced(ctx, tracing.OperationRef(ctx)), fsm.RequestFailover{Candidate: candidate, Force: force})
	return res.ID, err
}

// SetPause turns maintenance mode (no automatic failover) on or off.
func (n *Node) SetPause(ctx context.Context, paused bool) error {
	_, err := n.applyChecked(ctx, fsm.SetPause{Paused: paused})
	return err
}

// SetTags replaces a member's tags at run time. A node registers its configured tags again when
// it restarts, so make lasting changes in its configuration.
func (n *Node) SetTags(ctx context.Context, name string, tags fsm.Tags) error {
	_, err := n.applyChecked(ctx, fsm.SetTags{Name: name, Tags: tags})
	return err
}

// WaitOperation waits until operation id has finished and returns it.
func (n *Node) WaitOperation(ctx context.Context, id uint64) (fsm.Operation, error) {
	sub := n.fsm.Subscribe()
	defer sub.Close()
	for {
		select {
		case st := <-sub.C:
			op, ok := st.OperationByID(id)
			switch {
			case ok && !op.Active():
				return op, nil
			case !ok && id < st.NextOperationID:
				// Created (here) and no longer retained. An ID at or above NextOperationID may
				// just not be applied on this node yet: keep waiting.
				return fsm.Operation{}, fmt.Errorf("operation %d: %w", id, fsm.ErrNotFound)
			}
		case <-ctx.Done():
			return fsm.Operation{}, ctx.Err()
		case <-n.ctx.Done():
			return fsm.Operation{}, ErrClosed
		}
	}
}

var _ transport.Handler = (*Node)(nil).handleRPC

// await waits for a raft future, but no longer than ctx or the node's life. hashicorp/raft
// never resolves a log future that was committed but not yet applied when raft shut down, and
// such futures have no shutdown channel: waiting on them directly could block Close forever.
// The goroutine that waits then lingers until the process exits; that is the price.
func (n *Node) await(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("waiting for raft: %w", ctx.Err())
	case <-n.ctx.Done():
		return ErrClosed
	}
}

type extensionsKey struct{}

// withExtensions returns ctx whose next apply carries ext in its log entry.
func withExtensions(ctx context.Context, ext []byte) context.Context {
	return context.WithValue(ctx, extensionsKey{}, ext)
}

func extensionsFrom(ctx context.Context) []byte {
	b, _ := ctx.Value(extensionsKey{}).([]byte)
	return b
}

// traced returns ctx whose next apply gives the operation it creates the trace ref (nil:
// none).
func (n *Node) traced(ctx context.Context, ref *fsm.TraceRef) context.Context {
	if ref == nil {
		return ctx
	}
	ext, err := fsm.EncodeExtensions(fsm.Extensions{Trace: ref})
	if err != nil {
		n.log.Warn("operation not traced", "error", err)
		return ctx
	}
	return withExtensions(ctx, ext)
}
