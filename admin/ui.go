package admin

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/valyala/fasthttp"
)

// uiPage is the web UI: one HTML page whose style and script are inline, so that the admin
// server has a single file to serve and the browser a single request to make.
//
//go:embed ui/index.html
var uiPage []byte

// webUI serves the operator's page at /ui/. The page reads the unauthenticated endpoints
// (/nodes, /cluster, /cluster/postgresql, /history, /restarts, /cluster/events), follows
// /events, and sends mutations with the bearer token the operator types in; the token is kept
// in the tab's sessionStorage only.
type webUI struct {
	page []byte
	// csp allows the page's inline style and script by their sha256 hashes and nothing else:
	// no other script, style, frame, form target or origin, and no innerHTML (Trusted Types).
	csp string
}

// newWebUI checks that page has exactly one inline style and one inline script and builds
// the Content-Security-Policy that allows them.
func newWebUI(page []byte) (*webUI, error) {
	// Browsers turn CR LF into LF before hashing; a page checked out with CR LF would be
	// refused by its own policy.
	if bytes.IndexByte(page, '\r') >= 0 {
		return nil, fmt.Errorf("web UI: the page has CR line endings; its inline hashes would not match")
	}
	script, err := inlineElement(page, "script")
	if err != nil {
		return nil, err
	}
	style, err := inlineElement(page, "style")
	if err != nil {
		return nil, err
	}
	csp := strings.Join([]string{
		"default-src 'none'",
		"script-src " + cspHash(script),
		"style-src " + cspHash(style),
		"connect-src 'self'",
		"base-uri 'none'",
		"form-action 'none'",
		"frame-ancestors 'none'",
		"require-trusted-types-for 'script'",
		"trusted-types 'none'",
	}, "; ")
	return &webUI{page: page, csp: csp}, nil
}

// inlineElement returns the text of page's only <tag> element, which must have no attributes.
func inlineElement(page []byte, tag string) ([]byte, error) {
	lower := bytes.ToLower(page)
	open, end := []byte("<"+tag), []byte("</"+tag+">")
	if n, m := bytes.Count(lower, open), bytes.Count(lower, end); n != 1 || m != 1 {
		return nil, fmt.Errorf("web UI: the page must have exactly one <%s> element (found %d openings, %d closings); the CSP allows it by its hash", tag, n, m)
	}
	start := bytes.Index(page, []byte("<"+tag+">"))
	stop := bytes.Index(page, end)
	if start < 0 || stop < start {
		return nil, fmt.Errorf("web UI: the page's <%s> element must be written exactly <%s>…</%s>, without attributes", tag, tag, tag)
	}
	return page[start+len(tag)+2 : stop], nil
}

// cspHash is a CSP source expression allowing the inline element with text b.
func cspHash(b []byte) string {
	sum := sha256.Sum256(b)
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}

// serve is GET /ui/.
func (u *webUI) serve(ctx *fasthttp.RequestCtx) {
	h := &ctx.Response.Header
	h.SetContentType("text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Security-Policy", u.csp)
	ctx.Response.SetBodyRaw(u.page) // never modified
}
