package engine

import "io"

// bigSpan is the size above which a passed-through span is written straight from the input
// buffer instead of being copied into the scratch buffer.
const bigSpan = 16 << 10

// emitter assembles what one handler call sends to one peer, so that a batch of messages
// leaves in a single write. Messages that pass through unchanged are remembered as spans of the
// input buffer and written without a copy when nothing else is sent; when the proxy rewrites,
// injects or synthesizes a message, output is assembled in a scratch buffer instead.
//
// An emitter is used by one goroutine; the scratch buffer belongs to that goroutine (the event
// loop or the stream-path goroutine) and is reused across calls.
type emitter struct {
	dst     io.Writer
	src     []byte
	spanLo  int
	spanHi  int
	scratch []byte
	err     error
}

func (e *emitter) reset(dst io.Writer, src []byte, scratch []byte) {
	e.dst, e.src, e.spanLo, e.spanHi, e.scratch, e.err = dst, src, 0, 0, scratch[:0], nil
}

// pass forwards src[lo:hi] unchanged.
func (e *emitter) pass(lo, hi int) {
	if lo == hi {
		return
	}
	if e.spanHi > e.spanLo && e.spanHi == lo {
		e.spanHi = hi
		return
	}
	e.moveSpan()
	if len(e.scratch) > 0 && hi-lo > bigSpan {
		e.write(e.scratch)
		e.scratch = e.scratch[:0]
	}
	e.spanLo, e.spanHi = lo, hi
}

// add forwards bytes the proxy produced.
func (e *emitter) add(b []byte) {
	e.moveSpan()
	e.scratch = append(e.scratch, b...)
}

// buf returns the scratch buffer for appending a message in place; give it back with setBuf.
func (e *emitter) buf() []byte {
	e.moveSpan()
	return e.scratch
}

func (e *emitter) setBuf(b []byte) { e.scratch = b }

func (e *emitter) moveSpan() {
	if e.spanHi > e.spanLo {
		e.scratch = append(e.scratch, e.src[e.spanLo:e.spanHi]...)
	}
	e.spanLo, e.spanHi = 0, 0
}

// flush writes everything pending. It returns the scratch buffer (possibly grown) for reuse,
// and the first write error.
func (e *emitter) flush() ([]byte, error) {
	if len(e.scratch) == 0 {
		if e.spanHi > e.spanLo {
			e.write(e.src[e.spanLo:e.spanHi])
		}
	} else {
		e.moveSpan()
		e.write(e.scratch)
	}
	e.spanLo, e.spanHi = 0, 0
	s := e.scratch[:0]
	if cap(s) > 1<<20 {
		s = nil // do not keep a huge buffer after a rare large message
	}
	e.scratch = s
	return s, e.err
}

func (e *emitter) write(b []byte) {
	if e.err != nil || e.dst == nil || len(b) == 0 {
		return
	}
	_, e.err = e.dst.Write(b)
}
