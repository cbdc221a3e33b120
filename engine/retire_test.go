package engine

import (
	"context"
	"testing"

	"github.com/panjf2000/gnet/v2"

	"github.com/pgbastion/pgbastion/pool"
)

// queueLoop stands in for a gnet event loop: it counts the tasks handed to it.
type queueLoop struct {
	gnet.EventLoop
	tasks int
}

func (q *queueLoop) Execute(context.Context, gnet.Runnable) error { q.tasks++; return nil }

// A server that was moving between event loops when its backend left its role has no
// connection closeAsync could close. When it arrives it must close itself and send the client
// it moved for back to the pools: attached, the client's next transaction would reach a
// deposed primary (DESIGN.md invariant 1).
func TestServerRetiredWhileMovingIsNotAttached(t *testing.T) {
	e, cl, s := pair(t, pool.ModeTransaction)
	lp := s.lp
	q := &queueLoop{}
	lp.el = q
	// Between homes: detached from its old loop, not yet enrolled on the client's.
	s.conn, s.out, s.lp = nil, nil, nil
	cl.waiting, s.moveTo = true, cl

	e.SetRouting(RoutingSpec{Primary: "127.0.0.1:2"}) // the old primary's servers are retired
	if !s.retired.Load() {
		t.Fatal("SetRouting did not retire the server of the old primary")
	}
	s.onEnrolled(fakeConn{}, lp)
	if cl.srv != nil {
		t.Fatal("a server of the deposed primary was attached to a client")
	}
	if !s.closing {
		t.Error("the retired server was not closed when it arrived on its loop")
	}
	if q.tasks == 0 {
		t.Error("the client the server moved for was not sent back to the pools")
	}
}
