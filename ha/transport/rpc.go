package transport

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// MaxFrame bounds an RPC request or response. Lengths are checked before anything is
// allocated.
const MaxFrame = 8 << 20

// idleTimeout closes a server-side RPC connection that carries no request for this long.
const idleTimeout = 2 * time.Minute

// Handler serves one RPC request. The returned bytes, or the error's text, go back to the
// caller; ctx ends when the mux closes. It is called concurrently from several connections.
type Handler func(ctx context.Context, req []byte) ([]byte, error)

// RemoteError is an error the remote handler returned.
type RemoteError struct{ Msg string }

func (e *RemoteError) Error() string { return e.Msg }

// Frames: a request is a 4-byte big-endian length and the payload; a response is a status
// byte (0 ok, 1 error), a 4-byte length and the payload (the error text for status 1).

func writeFrame(w *bufio.Writer, status *byte, payload []byte) error {
	if len(payload) > MaxFrame {
		return fmt.Errorf("frame of %d bytes exceeds %d", len(payload), MaxFrame)
	}
	if status != nil {
		if err := w.WriteByte(*status); err != nil {
			return err
		}
	}
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(payload)))
	if _, err := w.Write(n[:]); err != nil {
		return err
	}
	if _, err := w.Write(payload); err != nil {
		return err
	}
	return w.Flush()
}

func readFrame(r *bufio.Reader) ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > MaxFrame {
		return nil, fmt.Errorf("frame of %d bytes exceeds %d", size, MaxFrame)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

func (m *Mux) serveRPC(c net.Conn, h Handler) {
	r := bufio.NewReader(c)
	w := bufio.NewWriter(c)
	for {
		_ = c.SetReadDeadline(time.Now().Add(idleTimeout))
		req, err := readFrame(r)
		if err != nil {
			if !errors.Is(err, io.EOF) && m.ctx.Err() == nil {
				m.log.Debug("rpc connection ended", "remote", c.RemoteAddr().String(), "error", err)
			}
			return
		}
		_ = c.SetReadDeadline(time.Time{})
		resp, herr := h(m.ctx, req)
		status := byte(0)
		if herr != nil {
			status, resp = 1, []byte(herr.Error())
		}
		if err := writeFrame(w, &status, resp); err != nil {
			m.log.Debug("rpc response not delivered", "remote", c.RemoteAddr().String(), "error", err)
			return
		}
	}
}

// Client calls RPC handlers on other nodes' muxes, reusing connections. It is safe for
// concurrent use.
type Client struct {
	tls     *tls.Config
	maxIdle int

	mu     sync.Mutex
	idle   map[string][]net.Conn
	closed bool
}

// NewClient returns a client; clientTLS nil means plain TCP.
func NewClient(clientTLS *tls.Config) *Client {
	return &Client{tls: clientTLS, maxIdle: 2, idle: map[string][]net.Conn{}}
}

func (c *Client) get(ctx context.Context, addr string) (net.Conn, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, net.ErrClosed
	}
	if conns := c.idle[addr]; len(conns) > 0 {
		conn := conns[len(conns)-1]
		c.idle[addr] = conns[:len(conns)-1]
		c.mu.Unlock()
		return conn, nil
	}
	c.mu.Unlock()
	return dial(ctx, addr, protoRPC, c.tls)
}

func (c *Client) put(addr string, conn net.Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || len(c.idle[addr]) >= c.maxIdle {
		conn.Close()
		return
	}
	c.idle[addr] = append(c.idle[addr], conn)
}

// Call sends req to the handler at addr and returns its response. A *RemoteError means the
// handler ran and failed; any other error means the call may or may not have reached it.
func (c *Client) Call(ctx context.Context, addr string, req []byte) ([]byte, error) {
	conn, err := c.get(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("rpc to %s: %w", addr, err)
	}
	resp, err := roundTrip(ctx, conn, req)
	if err != nil {
		var re *RemoteError
		if errors.As(err, &re) { // the connection is in a clean state
			c.put(addr, conn)
			return nil, err
		}
		conn.Close()
		return nil, fmt.Errorf("rpc to %s: %w", addr, err)
	}
	c.put(addr, conn)
	return resp, nil
}

func roundTrip(ctx context.Context, conn net.Conn, req []byte) ([]byte, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(idleTimeout)
	}
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	w := bufio.NewWriter(conn)
	if err := writeFrame(w, nil, req); err != nil {
		return nil, err
	}
	r := bufio.NewReader(conn)
	status, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	resp, err := readFrame(r)
	if err != nil {
		return nil, err
	}
	if r.Buffered() > 0 {
		return nil, errors.New("unexpected data after the response")
	}
	_ = conn.SetDeadline(time.Time{})
	switch status {
	case 0:
		return resp, nil
	case 1:
		return nil, &RemoteError{Msg: string(resp)}
	}
	return nil, fmt.Errorf("bad response status %d", status)
}

// Close closes the idle connections; later calls fail.
func (c *Client) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for _, conns := range c.idle {
		for _, conn := range conns {
			conn.Close()
		}
	}
	c.idle = map[string][]net.Conn{}
}
