package engine

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/pgbastion/pgbastion/pgwire"
	"github.com/pgbastion/pgbastion/pgwire/auth"
)

// serverLogin is what PostgreSQL reported while the proxy logged in.
type serverLogin struct {
	params [][2]string
	pid    uint32
	key    []byte
}

// credsFor returns the credentials to log in to PostgreSQL as user: the configured
// proxy.server credentials, or the user's own secret from the auth_file. Credentials are
// cached, so SCRAM's key derivation runs once per user, not per connection.
func (e *Engine) credsFor(user string) (*auth.Credentials, error) {
	l := e.conf()
	if c, ok := l.creds.Load(user); ok {
		return c.(*auth.Credentials), nil
	}
	var c *auth.Credentials
	switch {
	case l.cfg.Server.User != "":
		c = auth.NewCredentials(l.cfg.Server.User, l.cfg.Server.Password)
	case l.secrets != nil:
		sec, ok := l.secrets.Lookup(user)
		if !ok {
			c = auth.NewCredentials(user, "")
			break
		}
		var err error
		if c, err = auth.CredentialsFromSecret(user, sec); err != nil {
			return nil, sqlErr(pgwire.InvalidAuthorization,
				fmt.Sprintf("the proxy cannot log in to PostgreSQL as %q: its auth_file entry is a SCRAM secret", user),
				"give the user a plaintext or md5 password in the auth_file, or set proxy.server.user")
		}
	default:
		c = auth.NewCredentials(user, "")
	}
	actual, _ := l.creds.LoadOrStore(user, c)
	return actual.(*auth.Credentials), nil
}

// login logs in to PostgreSQL over conn. A server error keeps its SQLSTATE and message so the
// client sees PostgreSQL's own answer (28P01, 3D000, 53300, ...).
func (e *Engine) loginServer(ctx context.Context, conn net.Conn, database, user string) (*serverLogin, error) {
	creds, err := e.credsFor(user)
	if err != nil {
		return nil, err
	}
	sess, err := creds.Login(ctx, conn, []auth.Param{{Name: "database", Value: database}})
	if err != nil {
		var se *auth.ServerError
		if errors.As(err, &se) {
			code := se.Code
			if code == "" {
				code = pgwire.ConnectionFailure
			}
			return nil, &clientError{code: code, msg: se.Message, hint: se.Hint, fatal: true}
		}
		return nil, sqlErr(pgwire.ConnectionFailure, fmt.Sprintf("cannot log in to PostgreSQL: %v", err), "")
	}
	li := &serverLogin{pid: sess.PID, key: sess.SecretKey}
	for _, p := range sess.Params {
		li.params = append(li.params, [2]string{p.Name, p.Value})
	}
	return li, nil
}
