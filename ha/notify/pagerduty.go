package notify

import (
	"encoding/json"
	"fmt"
	"slices"
)

// PagerDuty's Events API v2 (format: pagerduty). An alert opens when something goes wrong and
// closes by itself when it is put right, so that a page stands for as long as the problem:
//
//	no_primary                         opens  <cluster>/no_primary; primary_changed closes it
//	node_state down, fenced, unhealthy opens  <cluster>/node/<name>; back running and healthy closes it
//	maintenance on                     opens  <cluster>/maintenance; off closes it
//	any other warning or critical      opens  an alert of its own (its event ID): a failed
//	                                   failover or switchover, a failed restart…
//
// Info events open nothing. min_severity and events filter what opens alerts; a closing event
// is sent whenever its alert could have been opened (closing one that is not open is a no-op
// for PagerDuty).

// DefaultPagerDutyURL is PagerDuty's Events API v2 endpoint, the url of a pagerduty webhook
// that names none.
const DefaultPagerDutyURL = "https://events.pagerduty.com/v2/enqueue"

// pdAction is what e does to a PagerDuty alert: "trigger" or "resolve" with the alert's key
// (dedup_key), or "" when e opens or closes nothing.
func pdAction(e Event) (action, key, opens string) {
	c := e.Cluster
	if c == "" {
		c = "pgbastion"
	}
	switch e.Type {
	case EvNoPrimary:
		return "trigger", c + "/no_primary", string(EvNoPrimary)
	case EvPrimaryChanged:
		return "resolve", c + "/no_primary", string(EvNoPrimary)
	case EvNodeState:
		key := c + "/node/" + e.Node
		running := e.To == "RUNNING_PRIMARY" || e.To == "RUNNING_REPLICA"
		switch {
		case running && e.Healthy != nil && *e.Healthy:
			return "resolve", key, string(EvNodeState)
		case e.Severity.AtLeast(SevWarning):
			return "trigger", key, string(EvNodeState)
		}
		return "", "", ""
	case EvMaintenance:
		if e.Paused != nil && *e.Paused {
			return "trigger", c + "/maintenance", string(EvMaintenance)
		}
		return "resolve", c + "/maintenance", string(EvMaintenance)
	}
	if e.Severity.AtLeast(SevWarning) {
		return "trigger", c + "/" + e.ID, string(e.Type)
	}
	return "", "", ""
}

// pdWants reports whether a pagerduty webhook sends e: a trigger that passes the webhook's
// filters, or a resolve of an alert such a trigger could have opened.
func (w *Webhook) pdWants(e Event) bool {
	action, _, opens := pdAction(e)
	switch action {
	case "trigger":
		return w.wantsType(opens) && e.Severity.AtLeast(Severity(w.MinSeverity))
	case "resolve":
		return w.wantsType(opens)
	}
	return false
}

func (w *Webhook) wantsType(t string) bool { return len(w.Events) == 0 || slices.Contains(w.Events, t) }

// pdSeverities maps ours to PagerDuty's (critical, error, warning, info).
var pdSeverities = map[Severity]string{SevCritical: "critical", SevWarning: "warning", SevInfo: "info"}

// pdBody is the Events API v2 message for e.
func pdBody(w *Webhook, e Event) ([]byte, error) {
	action, key, _ := pdAction(e)
	if action == "" {
		return nil, fmt.Errorf("event %s opens or closes no PagerDuty alert", e.ID)
	}
	msg := map[string]any{"routing_key": w.RoutingKey, "event_action": action, "dedup_key": key,
		"client": "PGBastion"}
	if action == "trigger" {
		source := e.Node
		if source == "" {
			source = e.Sender
		}
		if source == "" {
			source = "pgbastion"
		}
		summary := e.Message
		if e.Cluster != "" {
			summary = e.Cluster + ": " + summary
		}
		if len(summary) > 1024 { // PagerDuty's limit
			summary = summary[:1021] + "..."
		}
		msg["payload"] = map[string]any{"summary": summary, "source": source, "severity": pdSeverities[e.Severity],
			"timestamp": e.At, "component": "pgbastion", "group": e.Cluster, "class": string(e.Type), "custom_details": e}
	}
	return json.Marshal(msg)
}
