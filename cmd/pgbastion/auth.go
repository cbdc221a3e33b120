package main

import (
	"fmt"
	"log/slog"

	"github.com/pgbastion/pgbastion/engine"
)

// buildAuth returns the client authenticator for the configured method (nil for trust) and a
// lookup of server passwords from the auth_file.
func buildAuth(c engine.AuthConfig, log *slog.Logger) (engine.Authenticator, func(string) (string, bool), error) {
	if c.Method == "trust" {
		return nil, nil, nil
	}
	return nil, nil, fmt.Errorf("proxy.auth.method %s: not available yet in this build", c.Method)
}
