package admin

import (
	"crypto/sha256"
	"encoding/base64"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
)

func TestWebUIIsServedWithItsHeaders(t *testing.T) {
	base := startAPI(t, "", newCluster(t, "n1"))
	resp, err := http.Get(base + "/ui/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != string(uiPage) || !strings.Contains(string(body), "<title>PGBastion</title>") {
		t.Fatalf("GET /ui/: %d, %d bytes, want 200 and the page", resp.StatusCode, len(body))
	}
	for k, want := range map[string]string{
		"Content-Type":           "text/html; charset=utf-8",
		"Cache-Control":          "no-store",
		"X-Content-Type-Options": "nosniff",
		"X-Frame-Options":        "DENY",
		"Referrer-Policy":        "no-referrer",
	} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if resp.Header.Get("Content-Security-Policy") == "" {
		t.Error("no Content-Security-Policy")
	}

	// /ui redirects to /ui/, whose relative API paths (../nodes) need the slash.
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err = noFollow.Get(base + "/ui")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 3 || resp.Header.Get("Location") != base+"/ui/" {
		t.Errorf("GET /ui: %d Location %q, want a redirect to %s/ui/", resp.StatusCode, resp.Header.Get("Location"), base)
	}
	if code, body := do(t, "GET", base+"/ui", "", ""); code != 200 || body != string(uiPage) {
		t.Errorf("GET /ui, following the redirect: %d, %d bytes", code, len(body))
	}
}

// TestWebUIPolicyCoversItsInlineCode recomputes the hashes of the served page's inline script
// and style and checks that the Content-Security-Policy allows exactly them, and that the page
// has nothing else the policy would refuse.
func TestWebUIPolicyCoversItsInlineCode(t *testing.T) {
	base := startAPI(t, "", newCluster(t, "n1"))
	resp, err := http.Get(base + "/ui/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	page := string(b)
	csp := map[string]string{}
	for d := range strings.SplitSeq(resp.Header.Get("Content-Security-Policy"), ";") {
		name, value, _ := strings.Cut(strings.TrimSpace(d), " ")
		csp[name] = value
	}
	hashOf := func(tag string) string {
		t.Helper()
		m := regexp.MustCompile(`(?is)<`+tag+`\b[^>]*>(.*?)</`+tag+`>`).FindAllStringSubmatch(page, -1)
		if len(m) != 1 {
			t.Fatalf("the page has %d <%s> elements, want 1", len(m), tag)
		}
		sum := sha256.Sum256([]byte(m[0][1]))
		return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	}
	for name, want := range map[string]string{
		"default-src":               "'none'",
		"script-src":                hashOf("script"),
		"style-src":                 hashOf("style"),
		"connect-src":               "'self'",
		"base-uri":                  "'none'",
		"form-action":               "'none'",
		"frame-ancestors":           "'none'",
		"require-trusted-types-for": "'script'",
		"trusted-types":             "'none'",
	} {
		if got := csp[name]; got != want {
			t.Errorf("CSP %s: %q, want %q (policy: %v)", name, got, want, csp)
		}
	}

	// Markup the policy would refuse or that reaches outside: event-handler and style
	// attributes, external resources, javascript: URLs.
	markup := regexp.MustCompile(`(?is)<(script|style)>.*?</(script|style)>|<!--.*?-->`).ReplaceAllString(page, "")
	for _, bad := range []*regexp.Regexp{
		regexp.MustCompile(`(?i)\son[a-z]+\s*=`),
		regexp.MustCompile(`(?i)\sstyle\s*=`),
		regexp.MustCompile(`(?i)<(script|link|img|iframe|object|embed|form)\b`),
		regexp.MustCompile(`(?i)(src|href|action)\s*=`),
		regexp.MustCompile(`(?i)javascript:`),
	} {
		if m := bad.FindString(markup); m != "" {
			t.Errorf("the page's markup has %q", m)
		}
	}
	// The script builds the DOM from text only, and keeps the token out of lasting storage.
	script := regexp.MustCompile(`(?s)<script>(.*?)</script>`).FindStringSubmatch(page)[1]
	for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(", "localStorage", "http://", "https://"} {
		if strings.Contains(script, bad) {
			t.Errorf("the page's script uses %s", bad)
		}
	}
}

func TestWebUIRefusesPagesItsPolicyCannotCover(t *testing.T) {
	const style, script = "<style>p{}</style>", "<script>go()</script>"
	for _, tc := range []struct{ name, page string }{
		{"no script", style},
		{"no style", script},
		{"two scripts", style + script + script},
		{"a script with attributes", style + `<script type="module">go()</script>`},
		{"an external script too", style + script + `<script src="x.js"></script>`},
		{"upper case", style + "<SCRIPT>go()</SCRIPT>"},
		{"CR LF", style + "<script>go()\r\n</script>"},
	} {
		if _, err := newWebUI([]byte(tc.page)); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
	ui, err := newWebUI([]byte(style + script))
	if err != nil {
		t.Fatal(err)
	}
	sum := func(s string) string { h := sha256.Sum256([]byte(s)); return base64.StdEncoding.EncodeToString(h[:]) }
	if !strings.Contains(ui.csp, "script-src 'sha256-"+sum("go()")+"'") || !strings.Contains(ui.csp, "style-src 'sha256-"+sum("p{}")+"'") {
		t.Errorf("CSP %q does not allow exactly the inline script and style", ui.csp)
	}
}

// TestWebUIScriptFindsItsElements checks that every element the script looks up by id
// ($('…')) is in the page's markup: a missing one throws only when its code runs.
func TestWebUIScriptFindsItsElements(t *testing.T) {
	page := string(uiPage)
	script := regexp.MustCompile(`(?s)<script>(.*?)</script>`).FindStringSubmatch(page)[1]
	ids := map[string]bool{}
	for _, m := range regexp.MustCompile(`\sid="([^"]+)"`).FindAllStringSubmatch(page, -1) {
		ids[m[1]] = true
	}
	used := regexp.MustCompile(`\$\('([^']+)'\)`).FindAllStringSubmatch(script, -1)
	if len(used) < 10 {
		t.Fatalf("found %d $('…') look-ups in the script; has its helper changed?", len(used))
	}
	for _, m := range used {
		if !ids[m[1]] {
			t.Errorf("the script looks up #%s, which the page does not have", m[1])
		}
	}
}
