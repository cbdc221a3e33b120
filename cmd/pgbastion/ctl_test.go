package main

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestCtlRemoveSendsAnAuthenticatedDelete(t *testing.T) {
	var got string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got = r.Method + " " + r.URL.EscapedPath() + " " + r.Header.Get("Authorization") + " " + string(body)
		if r.URL.Path == "/members/primary" {
			w.WriteHeader(http.StatusPreconditionFailed)
		}
		_, _ = w.Write([]byte(`{"removed": "x"}`))
	}))
	defer srv.Close()
	var out, errOut bytes.Buffer
	if code := Main([]string{"ctl", "--api", srv.URL, "--token", "t0k", "remove", "db 3"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if want := "DELETE /members/db%203 Bearer t0k "; got != want {
		t.Fatalf("request %q, want %q", got, want)
	}
	if code := Main([]string{"ctl", "--api", srv.URL, "--token", "t0k", "remove", "primary"}, &out, &errOut); code != 1 ||
		!strings.Contains(errOut.String(), "412") {
		t.Fatalf("refused removal: exit %d, %q", code, errOut.String())
	}
	if code := Main([]string{"ctl", "--api", srv.URL, "remove"}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "usage") {
		t.Fatalf("missing name: exit %d, %q", code, errOut.String())
	}
}

func TestCtlListFlagsASilentNode(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"primary": "n2", "raft_leader": "n2", "nodes": [
			{"name": "n1", "status": {"role": "primary", "state": "RUNNING_PRIMARY", "healthy": true}, "status_age_seconds": 42.3},
			{"name": "n2", "status": {"role": "primary", "state": "RUNNING_PRIMARY", "healthy": true}, "status_age_seconds": 0.4}]}`))
	}))
	defer srv.Close()
	var out, errOut bytes.Buffer
	if code := Main([]string{"ctl", "--api", srv.URL, "list"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	lines := strings.Split(out.String(), "\n")
	if len(lines) < 3 || !strings.Contains(lines[1], "no report for 42s") || strings.Contains(lines[2], "no report") {
		t.Fatalf("ctl list:\n%s", out.String())
	}
}
