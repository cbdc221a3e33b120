// Package admin serves PGBastion's operator surface: the fasthttp REST API (Patroni-compatible
// health endpoints, switchover and failover, cluster-wide PostgreSQL configuration), Prometheus
// metrics, server-sent events and the web UI.
//
// Mutating endpoints require a bearer token; the API binds to 127.0.0.1 unless configured
// otherwise. admin reads state through interfaces and is imported only by cmd/pgbastion.
package admin
