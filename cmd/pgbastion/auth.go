package main

import (
	"fmt"
	"log/slog"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pgwire/auth"
)

// buildAuth returns the client verifier for the configured method (nil for trust without an
// auth_file) and the auth_file's secrets, which also give the passwords to log in to
// PostgreSQL as each client's user when proxy.server.user is empty.
func buildAuth(c engine.AuthConfig, log *slog.Logger) (*auth.Verifier, auth.Secrets, error) {
	// With hba the method is chosen per connection (the engine reads the hba_file); the
	// verifier's own method is then only a default that is never used.
	hba := c.Method == "hba"
	name := c.Method
	if hba {
		name = "scram-sha-256"
	}
	method, err := auth.ParseMethod(name)
	if err != nil {
		return nil, nil, fmt.Errorf("proxy.auth.method: %w", err)
	}
	if hba {
		// The engine reads it (again at every reload); reading it here too makes a bad line
		// fail `pgbastion check` with its file and line.
		if _, err := auth.LoadHBA(c.HBAFile); err != nil {
			return nil, nil, fmt.Errorf("proxy.auth.hba_file: %w", err)
		}
	}
	var users *auth.Userlist
	if c.AuthFile != "" {
		users, err = auth.LoadUserlist(c.AuthFile)
		if err != nil {
			return nil, nil, fmt.Errorf("proxy.auth.auth_file: %w", err)
		}
		// Derive SCRAM keys for plaintext passwords now, off the event loops.
		users.DeriveSCRAM()
		log.Info("loaded auth_file", "path", c.AuthFile, "users", users.Len())
	}
	if method == auth.MethodTrust && users == nil {
		return nil, nil, nil
	}
	var secrets auth.Secrets
	if users != nil {
		secrets = users
	}
	v, err := auth.NewVerifier(auth.VerifierConfig{Method: method, Secrets: secrets, HideUnknownUsers: true,
		LookupByCaller: c.AuthUser != "" || hba})
	if err != nil {
		return nil, nil, fmt.Errorf("proxy.auth: %w", err)
	}
	return v, secrets, nil
}
