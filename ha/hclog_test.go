package ha

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestHclogBridge(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	h := newHclog(l, "raft")
	if h.IsDebug() || !h.IsInfo() || !h.IsError() || h.GetLevel() != hclog.Info {
		t.Fatalf("levels: debug %v info %v level %v", h.IsDebug(), h.IsInfo(), h.GetLevel())
	}
	h.Debug("hidden")
	h.Named("net").With("peer", "n2").Warn("failed to heartbeat", "error", "timeout")
	out := buf.String()
	if strings.Contains(out, "hidden") {
		t.Fatalf("debug record leaked: %s", out)
	}
	for _, want := range []string{"level=WARN", `msg="failed to heartbeat"`, "subsystem=raft.net", "peer=n2", "error=timeout"} {
		if !strings.Contains(out, want) {
			t.Fatalf("missing %q in %s", want, out)
		}
	}
	buf.Reset()
	h.SetLevel(hclog.Error)
	h.Warn("filtered by SetLevel")
	h.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}).Print("[ERROR] from the standard logger")
	out = buf.String()
	if strings.Contains(out, "filtered") || !strings.Contains(out, "level=ERROR") || !strings.Contains(out, `msg="from the standard logger"`) {
		t.Fatalf("got %s", out)
	}
	if h.ResetNamed("x").Name() != "x" || len(h.With("a", 1).ImpliedArgs()) != 2 {
		t.Fatal("naming")
	}
}
