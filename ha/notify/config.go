package notify

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Callbacks are programs run on this node when its own PostgreSQL changes, with Patroni's
// names and calling convention (postgresql.callbacks). Each is a program with optional
// arguments separated by spaces (no shell); ACTION ROLE CLUSTER are appended.
type Callbacks struct {
	// OnStart: PostgreSQL started (or came back) in the role it had.
	OnStart string `yaml:"on_start"`
	// OnStop: PostgreSQL stopped, crashed, or was fenced.
	OnStop string `yaml:"on_stop"`
	// OnRestart: an operator's restart of this node's PostgreSQL finished.
	OnRestart string `yaml:"on_restart"`
	// OnRoleChange: PostgreSQL runs in another role than before (promoted, or back as a
	// replica after it was the primary).
	OnRoleChange string `yaml:"on_role_change"`
	// OnReload: PostgreSQL reloaded a new cluster-wide configuration (ctl config set).
	OnReload string `yaml:"on_reload"`
	// Timeout bounds each run (default 30s); a program still running then is killed with
	// its process group.
	Timeout time.Duration `yaml:"timeout"`
}

// Any reports whether a callback is configured.
func (c Callbacks) Any() bool {
	return c.OnStart != "" || c.OnStop != "" || c.OnRestart != "" || c.OnRoleChange != "" || c.OnReload != ""
}

func (c Callbacks) byAction() map[string]string {
	return map[string]string{"on_start": c.OnStart, "on_stop": c.OnStop, "on_restart": c.OnRestart, "on_role_change": c.OnRoleChange,
		"on_reload": c.OnReload}
}

// Validate checks the callbacks; prefix names the configuration section in messages.
func (c *Callbacks) Validate(prefix string) error {
	var errs []error
	for _, action := range []string{"on_start", "on_stop", "on_restart", "on_role_change", "on_reload"} {
		cmd := c.byAction()[action]
		if cmd == "" {
			continue
		}
		if err := ValidateProgram(prefix+"."+action, cmd); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("%s.timeout: must not be negative", prefix))
	}
	if c.Timeout == 0 {
		c.Timeout = 30 * time.Second
	}
	return errors.Join(errs...)
}

// ValidateProgram checks a program setting (key names it in messages): the first word must be
// the absolute path of an executable file, since programs run without a shell and without
// PATH.
func ValidateProgram(key, cmdline string) error {
	fields := strings.Fields(cmdline)
	if len(fields) == 0 {
		return fmt.Errorf("%s: no program given", key)
	}
	prog := fields[0]
	switch fi, err := os.Stat(prog); {
	case !filepath.IsAbs(prog):
		return fmt.Errorf("%s: %q must be an absolute path (programs run without a shell and without PATH)", key, prog)
	case err != nil:
		return fmt.Errorf("%s: %v", key, err)
	case fi.IsDir() || fi.Mode()&0o111 == 0:
		return fmt.Errorf("%s: %s is not an executable file (chmod +x it)", key, prog)
	}
	return nil
}

// Webhook is an HTTP endpoint that receives cluster events (top-level webhooks list). The
// Raft leader POSTs each event once; a failed delivery (a network error, 5xx or 429) is
// tried up to five times over about 15 seconds.
type Webhook struct {
	// URL is http:// or https://. It is never logged (chat webhooks carry their secret in
	// the path); logs name the webhook by Name or by scheme and host.
	URL  string `yaml:"url"`
	Name string `yaml:"name"`
	// Events limits delivery to these event types (default: all).
	Events []string `yaml:"events"`
	// MinSeverity is info (default), warning or critical.
	MinSeverity string `yaml:"min_severity"`
	// Format is json (default: the event as JSON), slack (a {"text": ...} message that
	// Slack, Mattermost and Rocket.Chat incoming webhooks accept) or pagerduty (PagerDuty's
	// Events API v2: alerts that open and close by themselves; see pagerduty.go).
	Format string `yaml:"format"`
	// RoutingKey is the PagerDuty integration key (format pagerduty). Never logged.
	RoutingKey string `yaml:"routing_key"`
	// Headers are added to every request (for example Authorization); never logged.
	Headers map[string]string `yaml:"headers"`
	// Timeout bounds each attempt (default 10s).
	Timeout time.Duration `yaml:"timeout"`
	// CAFile is a PEM bundle of the certificate authorities that sign an https receiver's
	// certificate (an internal CA); the system's roots otherwise.
	CAFile string `yaml:"ca_file"`

	roots *x509.CertPool
}

var severities = map[Severity]int{SevInfo: 0, SevWarning: 1, SevCritical: 2}

// AtLeast reports whether s is min or worse; an unknown min counts as info.
func (s Severity) AtLeast(min Severity) bool { return severities[s] >= severities[min] }

// ValidSeverity reports whether s is info, warning or critical.
func ValidSeverity(s string) bool {
	_, ok := severities[Severity(s)]
	return ok
}

// Validate checks a webhook; prefix names it in messages. It fills in defaults.
func (w *Webhook) Validate(prefix string) error {
	var errs []error
	if w.URL == "" && w.Format == "pagerduty" {
		w.URL = DefaultPagerDutyURL
	}
	u, err := url.Parse(w.URL)
	switch {
	case w.URL == "":
		errs = append(errs, fmt.Errorf("%s.url: required", prefix))
	case err != nil:
		// url's error repeats the URL, which may hold a secret.
		errs = append(errs, fmt.Errorf("%s.url: not a valid URL", prefix))
	case u.Scheme != "http" && u.Scheme != "https":
		errs = append(errs, fmt.Errorf("%s.url: scheme %q is not http or https", prefix, u.Scheme))
	case u.Host == "":
		errs = append(errs, fmt.Errorf("%s.url: has no host", prefix))
	}
	for _, e := range w.Events {
		if !slices.Contains(EventTypes, EventType(e)) {
			names := make([]string, len(EventTypes))
			for i, t := range EventTypes {
				names[i] = string(t)
			}
			errs = append(errs, fmt.Errorf("%s.events: %q is not an event type (%s)", prefix, e, strings.Join(names, ", ")))
		}
	}
	if w.MinSeverity == "" {
		w.MinSeverity = "info"
	}
	if !ValidSeverity(w.MinSeverity) {
		errs = append(errs, fmt.Errorf("%s.min_severity: %q is not info, warning or critical", prefix, w.MinSeverity))
	}
	if w.Format == "" {
		w.Format = "json"
	}
	switch {
	case w.Format != "json" && w.Format != "slack" && w.Format != "pagerduty":
		errs = append(errs, fmt.Errorf("%s.format: %q is not json, slack or pagerduty", prefix, w.Format))
	case w.Format == "pagerduty" && w.RoutingKey == "":
		errs = append(errs, fmt.Errorf("%s.routing_key: required with format pagerduty (the integration key of a PagerDuty service's Events API v2 integration)", prefix))
	case w.Format != "pagerduty" && w.RoutingKey != "":
		errs = append(errs, fmt.Errorf("%s.routing_key: only for format pagerduty", prefix))
	}
	for k, v := range w.Headers {
		if !validHeader(k, v) {
			errs = append(errs, fmt.Errorf("%s.headers: %q is not a valid header name, or its value has a line break", prefix, k))
		}
	}
	if w.Timeout < 0 {
		errs = append(errs, fmt.Errorf("%s.timeout: must not be negative", prefix))
	}
	if w.Timeout == 0 {
		w.Timeout = 10 * time.Second
	}
	if w.CAFile != "" {
		pem, err := os.ReadFile(w.CAFile)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s.ca_file: %v", prefix, err))
		default:
			w.roots = x509.NewCertPool()
			if !w.roots.AppendCertsFromPEM(pem) {
				errs = append(errs, fmt.Errorf("%s.ca_file: %s holds no PEM certificate", prefix, w.CAFile))
			}
		}
	}
	return errors.Join(errs...)
}

func validHeader(k, v string) bool {
	if k == "" || strings.ContainsAny(v, "\r\n\x00") || http.CanonicalHeaderKey(k) == "Host" {
		return false
	}
	for _, c := range k {
		if c <= ' ' || c >= 0x7f || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, c) {
			return false
		}
	}
	return true
}

// label is how logs name the webhook: its name, or its scheme and host (never the path or
// query, where chat services put the secret).
func (w *Webhook) label() string {
	if w.Name != "" {
		return w.Name
	}
	u, err := url.Parse(w.URL)
	if err != nil {
		return "(invalid URL)"
	}
	return u.Scheme + "://" + u.Host
}

func (w *Webhook) wants(e Event) bool {
	if w.Format == "pagerduty" {
		return w.pdWants(e)
	}
	return e.Severity.AtLeast(Severity(w.MinSeverity)) && w.wantsType(string(e.Type))
}
