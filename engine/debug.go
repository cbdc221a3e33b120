package engine

import (
	"fmt"
	"strings"
)

// DebugState describes every connection the engine holds, for tests and the admin API.
func (e *Engine) DebugState() string {
	loops := e.loopList()
	var b strings.Builder
	for _, lp := range loops {
		done := make(chan struct{})
		lp.exec(func() {
			defer close(done)
			fmt.Fprintf(&b, "loop %d: %d clients, %d servers\n", lp.idx, len(lp.clients), len(lp.servers))
			for s := range lp.servers {
				cl := "-"
				if s.client != nil {
					cl = fmt.Sprint(s.client.pid)
				}
				in, out := -1, -1
				if s.conn != nil {
					in, out = s.conn.InboundBuffered(), s.conn.OutboundBuffered()
				}
				fmt.Fprintf(&b, "  server %p home=%d client=%s outstanding=%d tx=%c copy=%v/%v detaching=%v resetting=%v dirty=%v closing=%v in=%d out=%d remain=%d\n",
					s, s.home, cl, s.tr.Outstanding(), s.tr.TxStatus, s.tr.CopyIn, s.tr.CopyOut, s.detaching, s.resetting, s.dirty, s.closing, in, out, s.remain)
			}
			for cl := range lp.clients {
				if cl.waiting || cl.dialing || cl.srv != nil {
					fmt.Fprintf(&b, "  client %d state=%d waiting=%v dialing=%v srv=%p pending=%d\n", cl.pid, cl.state, cl.waiting, cl.dialing, cl.srv, cl.conn.InboundBuffered())
				}
			}
		})
		<-done
	}
	return b.String()
}
