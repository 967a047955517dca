package testenv

import (
	"net"
	"testing"
	"time"
)

func TestUnacceptingAddrHangs(t *testing.T) {
	t.Parallel()
	addr := UnacceptingAddr(t)
	for range 3 {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			t.Fatal("connected to a full accept queue")
		}
		if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			t.Fatalf("want a timeout, got %v", err)
		}
	}
}
