// Package notify tells the outside world what happens to the cluster.
//
// Events are derived from the replicated state (Diff compares two states): a new primary, no
// primary, a failover or switchover starting and ending, a node changing state or health, a
// member added or removed, maintenance mode, a new Raft leader, a cluster configuration
// change, a finished restart. Every node derives the same events from the same log; the Raft
// leader delivers them to the configured webhooks, so a receiver hears each event once. A node
// that becomes the leader first delivers again the recent events it did not queue itself (its
// predecessor may have died with them queued), marked Redelivered: a receiver may use Event.ID
// to drop the duplicates this sends around a change of leader.
//
// Callbacks are Patroni's: programs run on a node when its own PostgreSQL starts, stops,
// restarts, reloads a new cluster configuration or changes role, called as
// `PROGRAM ACTION ROLE CLUSTER` (for example `/usr/local/bin/on-role-change on_role_change
// primary main`) with the event as JSON in PGBASTION_EVENT. They run one at a time, in order, each bounded by a timeout.
//
// Delivery never holds up the HA core: events wait in bounded queues, the oldest is dropped
// (and counted) when a receiver cannot keep up, and webhook URLs and headers, which often
// carry secrets, are never logged.
package notify
