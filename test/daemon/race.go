//go:build race

package daemon

// raceEnabled: the test binary was built with -race, and so is the daemon it runs.
const raceEnabled = true
