package netns

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Sample is one look at which members held an address.
type Sample struct {
	At      time.Time
	Holders []string
	Err     error // the look failed; Holders may be incomplete
}

// Sampler records which members hold an address at a fixed interval, in its own goroutine.
type Sampler struct {
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	samples []Sample // written by the sampling goroutine until done is closed
}

// SampleHolders starts recording, every interval, which members hold ip. Stop it (also
// registered with t.Cleanup) to get the samples. Used to prove that a VIP "is never on two nodes
// at any 100 ms sample".
func (c *Cluster) SampleHolders(ip netip.Addr, interval time.Duration) *Sampler {
	s := &Sampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			h, err := c.Holders(ip)
			s.samples = append(s.samples, Sample{At: time.Now(), Holders: h, Err: err})
			select {
			case <-s.stop:
				h, err := c.Holders(ip)
				s.samples = append(s.samples, Sample{At: time.Now(), Holders: h, Err: err})
				return
			case <-t.C:
			}
		}
	}()
	c.t.Cleanup(func() { s.Stop() })
	return s
}

// Stop ends sampling (after one last sample) and returns every sample taken. It may be called
// more than once.
func (s *Sampler) Stop() []Sample {
	s.once.Do(func() { close(s.stop) })
	<-s.done
	return s.samples
}

// CheckAtMostOne returns an error describing every sample in which more than one member held
// the address or the look failed, and nil when there was none.
func CheckAtMostOne(samples []Sample) error {
	var bad []string
	for _, s := range samples {
		switch {
		case s.Err != nil:
			bad = append(bad, fmt.Sprintf("%s: sample failed: %v", s.At.Format("15:04:05.000"), s.Err))
		case len(s.Holders) > 1:
			bad = append(bad, fmt.Sprintf("%s: held by %v", s.At.Format("15:04:05.000"), s.Holders))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%d of %d samples broke \"at most one holder\":\n%s", len(bad), len(samples), strings.Join(bad, "\n"))
	}
	return nil
}
