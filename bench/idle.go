package bench

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
	"sync/atomic"
	"time"
)

// IdleResult is the memory a proxy spends on idle client connections.
type IdleResult struct {
	Target  string
	Clients int
	// TLS: the clients negotiated TLS (sslmode=require) before logging in.
	TLS bool
	// Opened is how many clients logged in; Errors how many did not (with the first error).
	Opened   int
	Errors   int
	FirstErr string
	// BaseRSS is the proxy's RSS with one client logged in and its pool warm; RSS with all
	// clients idle; HWM the peak. KiB.
	BaseRSS, RSS, HWM int64
	// CPUms is the proxy's CPU time spent accepting and logging in the clients.
	CPUms   float64
	Elapsed time.Duration
}

// PerClientKiB is the RSS growth per idle client.
func (r *IdleResult) PerClientKiB() float64 {
	if r.Opened == 0 {
		return 0
	}
	return float64(r.RSS-r.BaseRSS) / float64(r.Opened)
}

// startupMessage encodes a protocol 3.0 StartupMessage.
func startupMessage(params ...string) []byte {
	b := make([]byte, 8, 64)
	binary.BigEndian.PutUint32(b[4:], 196608)
	for _, p := range params {
		b = append(b, p...)
		b = append(b, 0)
	}
	b = append(b, 0)
	binary.BigEndian.PutUint32(b, uint32(len(b)))
	return b
}

// errNeedsPassword means the target asked for a password; idle clients log in with trust.
var errNeedsPassword = errors.New("the proxy asked for a password; idle clients expect trust authentication")

// tlsNote marks TLS results in printed lines.
func tlsNote(on bool) string {
	if on {
		return " over TLS"
	}
	return ""
}

// sslRequest is the 8-byte SSLRequest packet.
var sslRequest = []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}

// loginIdle opens one connection to addr, logs in with trust (over TLS when useTLS, as
// sslmode=require does: no certificate check) and returns it at ReadyForQuery.
func loginIdle(ctx context.Context, addr string, useTLS bool) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	if useTLS {
		if _, err := c.Write(sslRequest); err != nil {
			c.Close()
			return nil, err
		}
		var answer [1]byte
		if _, err := io.ReadFull(c, answer[:]); err != nil || answer[0] != 'S' {
			c.Close()
			return nil, fmt.Errorf("TLS refused (answer %q, %v)", answer[0], err)
		}
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // sslmode=require verifies nothing either
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		c = tc
	}
	if _, err := c.Write(startupMessage("user", Superuser, "database", "postgres", "application_name", "idle")); err != nil {
		c.Close()
		return nil, err
	}
	r := bufio.NewReaderSize(c, 1024)
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			c.Close()
			return nil, fmt.Errorf("reading login reply: %w", err)
		}
		n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
		if n < 0 || n > 1<<20 {
			c.Close()
			return nil, fmt.Errorf("bad message length %d", n)
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			c.Close()
			return nil, err
		}
		switch hdr[0] {
		case 'R':
			if n >= 4 && binary.BigEndian.Uint32(body) != 0 {
				c.Close()
				return nil, errNeedsPassword
			}
		case 'E':
			c.Close()
			return nil, fmt.Errorf("login refused: %s", errorFields(body))
		case 'Z':
			_ = c.SetDeadline(time.Time{})
			return c, nil
		}
	}
}

// errorFields renders an ErrorResponse body as "SQLSTATE message".
func errorFields(body []byte) string {
	var code, msg string
	for len(body) > 1 {
		t := body[0]
		end := 1
		for end < len(body) && body[end] != 0 {
			end++
		}
		v := string(body[1:end])
		switch t {
		case 'C':
			code = v
		case 'M':
			msg = v
		}
		if end >= len(body) {
			break
		}
		body = body[end+1:]
	}
	return code + " " + msg
}

// measureIdle opens n idle clients to t (logged in, then silent) and measures the proxy's memory
// growth over the baseline of one logged-in client.
func measureIdle(ctx context.Context, t *target, n int, settle time.Duration, useTLS bool) (*IdleResult, error) {
	pid := t.pid()
	res := &IdleResult{Target: t.name, Clients: n, TLS: useTLS}
	first, err := loginIdle(ctx, t.addr, useTLS)
	if err != nil {
		return nil, fmt.Errorf("%s: first idle client: %w", t.name, err)
	}
	defer first.Close()
	// Let the proxy settle (a Go runtime returns freed memory lazily; PgBouncer is quiet).
	sleepCtx(ctx, settle)
	res.BaseRSS, _ = memKiB(pid)
	cpu0 := cpuTicks(pid)
	start := time.Now()

	conns := make([]net.Conn, n)
	var (
		wg       sync.WaitGroup
		errs     atomic.Int64
		firstErr atomic.Value
	)
	sem := make(chan struct{}, 128)
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := loginIdle(ctx, t.addr, useTLS)
			if err != nil {
				errs.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.CPUms = float64(cpuTicks(pid)-cpu0) * 1000 / clockTicks
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	res.Errors = int(errs.Load())
	res.Opened = n - res.Errors
	if v := firstErr.Load(); v != nil {
		res.FirstErr = v.(string)
	}
	sleepCtx(ctx, settle)
	res.RSS, res.HWM = memKiB(pid)
	// Every client must still be connected: a proxy that dropped idle clients saved nothing.
	alive := 0
	for _, c := range conns {
		if c == nil {
			continue
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
		var b [1]byte
		if _, err := c.Read(b[:]); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				alive++
			}
		}
	}
	if alive < res.Opened {
		res.FirstErr = fmt.Sprintf("%d of %d idle clients were disconnected by the proxy; %s", res.Opened-alive, res.Opened, res.FirstErr)
		res.Opened = alive
	}
	return res, ctx.Err()
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
