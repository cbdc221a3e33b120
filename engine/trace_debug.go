package engine

import (
	"fmt"
	"os"
)

var traceOn = os.Getenv("PGBASTION_TRACE") != ""

func trace(dir string, cl *client, typ byte, msg []byte) {
	id := uint32(0)
	if cl != nil {
		id = cl.pid
	}
	if len(msg) > 60 {
		msg = msg[:60]
	}
	fmt.Fprintf(os.Stderr, "%s %d %c %q\n", dir, id, typ, msg[min(5, len(msg)):])
}
