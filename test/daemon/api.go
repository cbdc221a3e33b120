package daemon

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// APIClient talks to one member's REST API.
type APIClient struct {
	// Addr is the API's host:port; Token authorises mutations.
	Addr, Token string
	// HTTP sends the requests (for a member in another network namespace, one whose
	// transport dials from there). Its Timeout bounds reads; Switchover waits longer.
	HTTP *http.Client
}

// Nodes is the part of GET /nodes the tests read.
type Nodes struct {
	Primary    string       `json:"primary"`
	RaftLeader string       `json:"raft_leader"`
	ThisNode   string       `json:"this_node"`
	Nodes      []NodeStatus `json:"nodes"`
}

// NodeStatus is one member in GET /nodes.
type NodeStatus struct {
	Name   string `json:"name"`
	Status struct {
		Role     string `json:"role"`
		State    string `json:"state"`
		Healthy  bool   `json:"healthy"`
		Timeline uint32 `json:"timeline"`
		Reason   string `json:"reason"`
		// ReportedAt: when the status was applied (the Raft leader's clock).
		ReportedAt time.Time `json:"reported_at"`
	} `json:"status"`
	// Local holds the answering member's own facts (proxy, vip), decoded by whoever needs them.
	Local map[string]json.RawMessage `json:"local"`
}

// Node returns the status of the member called name (the zero value when it is not listed).
func (v Nodes) Node(name string) NodeStatus {
	for _, n := range v.Nodes {
		if n.Name == name {
			return n
		}
	}
	return NodeStatus{}
}

// Healthy returns nil when the view names a primary that runs healthy as the primary and at
// least replicas other members run as healthy replicas, and otherwise says what is missing.
func (v Nodes) Healthy(replicas int) error {
	primary, r := false, 0
	for _, n := range v.Nodes {
		switch {
		case n.Name == v.Primary && n.Status.Healthy && n.Status.State == "RUNNING_PRIMARY":
			primary = true
		case n.Status.Healthy && n.Status.State == "RUNNING_REPLICA":
			r++
		}
	}
	if !primary || r < replicas {
		return fmt.Errorf("primary %q (healthy: %v), %d healthy replicas of %d wanted", v.Primary, primary, r, replicas)
	}
	return nil
}

func (a APIClient) client() *http.Client {
	if a.HTTP != nil {
		return a.HTTP
	}
	return &http.Client{Timeout: 5 * time.Second}
}

// fetch reads path from the API; an answer other than 200 is an error carrying the body.
func (a APIClient) fetch(path string) ([]byte, error) {
	resp, err := a.client().Get("http://" + a.Addr + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s from %s: %s: %s", path, a.Addr, resp.Status, b)
	}
	return b, nil
}

// Get reads a JSON document from the API into into.
func (a APIClient) Get(path string, into any) error {
	b, err := a.fetch(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, into)
}

// Text reads a plain-text document from the API (GET /metrics).
func (a APIClient) Text(path string) (string, error) {
	b, err := a.fetch(path)
	return string(b), err
}

// Nodes reads GET /nodes.
func (a APIClient) Nodes() (Nodes, error) {
	var v Nodes
	return v, a.Get("/nodes", &v)
}

// Switchover asks for a switchover to candidate (POST /switchover) and waits up to timeout
// for the answer; the error carries the API's answer when it is not 200.
func (a APIClient) Switchover(candidate string, timeout time.Duration) error {
	req, err := http.NewRequest(http.MethodPost, "http://"+a.Addr+"/switchover", strings.NewReader(`{"candidate":"`+candidate+`"}`))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+a.Token)
	c := *a.client()
	c.Timeout = timeout
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("switchover to %s: %w", candidate, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("switchover to %s: %s: %s", candidate, resp.Status, body)
	}
	return nil
}
