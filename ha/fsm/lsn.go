package fsm

import (
	"fmt"
	"strconv"
	"strings"
)

// LSN is a PostgreSQL write-ahead log position (pg_lsn). The zero value means "unknown".
type LSN uint64

// String formats the LSN as PostgreSQL does: two hexadecimal halves separated by a slash.
func (l LSN) String() string {
	return fmt.Sprintf("%X/%X", uint64(l)>>32, uint64(l)&0xFFFFFFFF)
}

// ParseLSN parses PostgreSQL's "XXXXXXXX/XXXXXXXX" notation.
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("parse lsn %q: want XXXXXXXX/XXXXXXXX", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("parse lsn %q: %w", s, err)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("parse lsn %q: %w", s, err)
	}
	return LSN(h<<32 | l), nil
}

// Sub returns l-o in bytes, or 0 when o is ahead of l.
func (l LSN) Sub(o LSN) uint64 {
	if o >= l {
		return 0
	}
	return uint64(l - o)
}
