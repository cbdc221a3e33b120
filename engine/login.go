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
	if l.cfg.Server.User == "" {
		if c, ok := e.learned.Load(user); ok {
			return c.(*auth.Credentials), nil
		}
	}
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
			// Not cached: the first SCRAM login of the user teaches the proxy its key.
			return nil, sqlErr(pgwire.InvalidAuthorization,
				fmt.Sprintf("the proxy cannot log in to PostgreSQL as %q yet: its auth_file entry is a SCRAM secret, which serves only once a client has logged in as %q with SCRAM", user, user),
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
	if errors.Is(err, auth.ErrSCRAMKeyStale) {
		return nil, sqlErr(pgwire.InvalidPassword,
			fmt.Sprintf("the proxy cannot log in to PostgreSQL as %q: the user's password was changed in PostgreSQL after this client logged in", user),
			"reconnect, so that the proxy learns the new password")
	}
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

// learnCredentials keeps what a client's successful authentication taught the proxy about
// logging in to PostgreSQL as its user, when proxy.server.user is empty: the ClientKey of a
// SCRAM proof against a stored SCRAM secret (pass-through; from the auth_file or the
// auth_query), or an md5 or plaintext secret the auth_query found. A later login replaces it,
// so a password changed in PostgreSQL takes over with the next client that uses it.
func (e *Engine) learnCredentials(user string, ex *auth.Exchange, fromQuery bool) {
	if e.conf().cfg.Server.User != "" || ex == nil {
		return
	}
	sec := ex.Secret()
	if sec == nil {
		return
	}
	var c *auth.Credentials
	var err error
	if key := ex.SCRAMClientKey(); key != nil {
		c, err = auth.CredentialsFromSCRAMKey(user, sec, key)
	} else if fromQuery {
		c, err = auth.CredentialsFromSecret(user, sec)
	} else {
		return
	}
	if err != nil {
		// An md5 client of a SCRAM secret proves nothing the server would take; the server
		// login reports it.
		return
	}
	e.learned.Store(user, c)
}

// authUserCredentials returns the credentials of proxy.auth.auth_user: auth_password, else
// its auth_file entry, else proxy.server.password when it is proxy.server.user, else none
// (trust or peer).
func authUserCredentials(cfg Config, secrets auth.Secrets) (*auth.Credentials, error) {
	a := cfg.Auth
	switch {
	case a.AuthPassword != "":
		return auth.NewCredentials(a.AuthUser, a.AuthPassword), nil
	case secrets != nil:
		if sec, ok := secrets.Lookup(a.AuthUser); ok {
			c, err := auth.CredentialsFromSecret(a.AuthUser, sec)
			if err != nil {
				return nil, fmt.Errorf("proxy.auth.auth_user %q: its auth_file entry is a SCRAM secret, which cannot log in to PostgreSQL; give it a plaintext or md5 password there, or set proxy.auth.auth_password", a.AuthUser)
			}
			return c, nil
		}
	}
	if a.AuthUser == cfg.Server.User {
		return auth.NewCredentials(a.AuthUser, cfg.Server.Password), nil
	}
	return auth.NewCredentials(a.AuthUser, ""), nil
}
