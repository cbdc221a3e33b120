package engine

import (
	"context"
	"fmt"
	"net"
	"strconv"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/pgwire"
)

// PgconnLogin logs in with pgx's pgconn over an established connection and takes the
// connection back (Hijack): every authentication method pgconn supports (trust, password,
// md5, SCRAM-SHA-256) works, and server errors keep their SQLSTATE.
func PgconnLogin(ctx context.Context, conn net.Conn, database, user, password string) (*ServerLogin, error) {
	host, port, _ := net.SplitHostPort(conn.RemoteAddr().String())
	p, _ := strconv.Atoi(port)
	cfg, err := pgconn.ParseConfig("sslmode=disable")
	if err != nil {
		return nil, err
	}
	cfg.Host, cfg.Port, cfg.User, cfg.Password, cfg.Database = host, uint16(p), user, password, database
	cfg.RuntimeParams = map[string]string{}
	cfg.Fallbacks = nil
	cfg.TLSConfig = nil
	cfg.DialFunc = func(context.Context, string, string) (net.Conn, error) { return conn, nil }
	cfg.LookupFunc = func(context.Context, string) ([]string, error) { return []string{host}, nil }
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, loginError(err)
	}
	hj, err := pc.Hijack()
	if err != nil {
		return nil, err
	}
	li := &ServerLogin{PID: hj.PID, Key: hj.SecretKey}
	for k, v := range hj.ParameterStatuses {
		li.Params = append(li.Params, [2]string{k, v})
	}
	return li, nil
}

// loginError keeps PostgreSQL's own error (SQLSTATE and message) for the client.
func loginError(err error) error {
	var pe *pgconn.PgError
	if asPgError(err, &pe) {
		return &clientError{code: pe.Code, msg: pe.Message, hint: pe.Hint, fatal: true}
	}
	return sqlErr(pgwire.ConnectionFailure, fmt.Sprintf("cannot log in to PostgreSQL: %v", err), "")
}
