package e2e

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/nowconnect/nowconnect/codec"
)

// rawTunnel is a hand-driven agent connection for feeding the hub bad input.
type rawTunnel struct {
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, th *testHub, tok string) (*rawTunnel, error) {
	t.Helper()
	d := ws.Dialer{Timeout: 5 * time.Second}
	if tok != "" {
		d.Header = ws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer " + tok}})
	}
	c, br, _, err := d.Dial(context.Background(), "ws://"+th.Control+"/tunnel")
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	if br == nil {
		br = bufio.NewReader(c)
	}
	return &rawTunnel{c: c, br: br}, nil
}

// send writes raw bytes as one masked binary WebSocket message.
func (r *rawTunnel) send(p []byte) error {
	h := ws.Header{Fin: true, OpCode: ws.OpBinary, Masked: true, Length: int64(len(p)), Mask: ws.NewMask()}
	b := codec.AppendWSHeader(nil, h)
	q := append([]byte(nil), p...)
	ws.Cipher(q, h.Mask, 0)
	_, err := r.c.Write(append(b, q...))
	return err
}

// read returns the next tunnel frame from the hub.
func (r *rawTunnel) read() (codec.Header, []byte, error) {
	_ = r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	h, err := ws.ReadHeader(r.br)
	if err != nil {
		return codec.Header{}, nil, err
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(r.br, p); err != nil {
		return codec.Header{}, nil, err
	}
	if h.OpCode == ws.OpClose {
		return codec.Header{}, nil, io.EOF
	}
	fh, payload, err := codec.ParseFrame(p)
	return fh, payload, err
}

// closed reports whether the hub closed the connection (EOF or reset).
func (r *rawTunnel) closed() bool {
	for {
		if _, _, err := r.read(); err != nil {
			var ne net.Error
			return !(errors.As(err, &ne) && ne.Timeout())
		}
	}
}

func (r *rawTunnel) hello(t *testing.T, id string, conns ...string) {
	t.Helper()
	b, err := codec.AppendHello(nil, codec.Hello{Version: codec.Version1, Window: 256 << 10, AgentID: id, Connectors: conns})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.send(b); err != nil {
		t.Fatal(err)
	}
	fh, _, err := r.read()
	if err != nil || fh.Type != codec.FrameHelloAck {
		t.Fatalf("HELLO_ACK: %v %v", fh.Type, err)
	}
}

func TestBadInput(t *testing.T) {
	leakCheck(t)
	th := startHub(t, []string{"svc"})
	good := token(t, "bad-agent", []string{"svc"})

	t.Run("no token", func(t *testing.T) {
		_, err := dialRaw(t, th, "")
		if err == nil || !strings.Contains(err.Error(), "401") {
			t.Fatalf("want 401, got %v", err)
		}
	})
	t.Run("bad token", func(t *testing.T) {
		bad := good[:len(good)-4] + "AAAA"
		_, err := dialRaw(t, th, bad)
		if err == nil || !strings.Contains(err.Error(), "401") {
			t.Fatalf("want 401, got %v", err)
		}
		if strings.Contains(th.Logs.String(), bad) || strings.Contains(th.Logs.String(), good) {
			t.Fatal("a token appeared in the hub's logs")
		}
		if !strings.Contains(th.Logs.String(), "agent_auth_failed") {
			t.Fatal("no agent_auth_failed log line")
		}
	})
	t.Run("frame before HELLO", func(t *testing.T) {
		r, err := dialRaw(t, th, good)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.send(codec.AppendWindow(nil, 1, 100)); err != nil {
			t.Fatal(err)
		}
		if !r.closed() {
			t.Fatal("hub kept a tunnel that skipped HELLO")
		}
	})
	t.Run("HELLO with another agent id", func(t *testing.T) {
		r, err := dialRaw(t, th, good)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := codec.AppendHello(nil, codec.Hello{Version: codec.Version1, Window: 65536, AgentID: "someone-else", Connectors: []string{"svc"}})
		_ = r.send(b)
		if !r.closed() {
			t.Fatal("hub accepted a HELLO whose agent id differs from the token")
		}
	})
	malformed := map[string][]byte{
		"garbage":       []byte("\xff\x00\x00\x00\x01garbage"),
		"short":         {0x06, 0, 0},
		"data on cid 0": append(codec.AppendHeader(nil, codec.FrameData, 0), 'x'),
		"second HELLO":  mustHello(codec.Hello{Version: codec.Version1, Window: 65536, AgentID: "bad-agent", Connectors: []string{"svc"}}),
	}
	for name, frame := range malformed {
		t.Run("malformed "+name, func(t *testing.T) {
			r, err := dialRaw(t, th, good)
			if err != nil {
				t.Fatal(err)
			}
			r.hello(t, "bad-agent", "svc")
			_ = r.send(frame)
			if !r.closed() {
				t.Fatal("hub kept a tunnel after a malformed frame")
			}
		})
	}
	t.Run("oversized message", func(t *testing.T) {
		r, err := dialRaw(t, th, good)
		if err != nil {
			t.Fatal(err)
		}
		r.hello(t, "bad-agent", "svc")
		// Only the header: the hub must refuse on the declared length.
		h := ws.Header{Fin: true, OpCode: ws.OpBinary, Masked: true, Length: codec.MaxFrameLen + 1, Mask: ws.NewMask()}
		_, _ = r.c.Write(codec.AppendWSHeader(nil, h))
		if !r.closed() {
			t.Fatal("hub kept a tunnel after an oversized message header")
		}
	})
	t.Run("unmasked frame", func(t *testing.T) {
		r, err := dialRaw(t, th, good)
		if err != nil {
			t.Fatal(err)
		}
		r.hello(t, "bad-agent", "svc")
		p := codec.AppendPing(nil, codec.FramePing, 1)
		_, _ = r.c.Write(append(codec.AppendWSHeader(nil, codec.BinaryHeader(len(p))), p...))
		if !r.closed() {
			t.Fatal("hub accepted an unmasked client frame")
		}
	})
	t.Run("unknown cid gets RST", func(t *testing.T) {
		r, err := dialRaw(t, th, good)
		if err != nil {
			t.Fatal(err)
		}
		r.hello(t, "bad-agent", "svc")
		_ = r.send(append(codec.AppendHeader(nil, codec.FrameData, 77), "stray"...))
		for {
			fh, p, err := r.read()
			if err != nil {
				t.Fatalf("no RST for an unknown cid: %v", err)
			}
			if fh.Type == codec.FrameRst && fh.CID == 77 {
				if rs, _, _ := codec.ParseReason(p); rs != codec.ReasonUnknownCID {
					t.Fatalf("RST reason %v", rs)
				}
				break
			}
		}
		// The tunnel survives and answers pings.
		_ = r.send(codec.AppendPing(nil, codec.FramePing, 0xabc))
		for {
			fh, p, err := r.read()
			if err != nil {
				t.Fatalf("tunnel died after an unknown cid: %v", err)
			}
			if fh.Type == codec.FramePong {
				if binary.BigEndian.Uint64(p) != 0xabc {
					t.Fatal("PONG does not echo the PING")
				}
				break
			}
		}
	})
	t.Run("window overrun resets the stream", func(t *testing.T) {
		r, err := dialRaw(t, th, good)
		if err != nil {
			t.Fatal(err)
		}
		r.hello(t, "bad-agent", "svc")
		waitAgents(t, th, 1)
		client, err := net.Dial("tcp", th.Addr["svc"])
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		var cid uint32
		for cid == 0 {
			fh, _, err := r.read()
			if err != nil {
				t.Fatal(err)
			}
			if fh.Type == codec.FrameOpen {
				cid = fh.CID
			}
		}
		_ = r.send(codec.AppendEmpty(nil, codec.FrameOpenAck, cid))
		// A client that does not read, and an agent that ignores the hub's
		// 256 KiB window: the hub must reset the stream, not buffer.
		chunk := append(codec.AppendHeader(nil, codec.FrameData, cid), make([]byte, 60000)...)
		for i := 0; i < 2000; i++ { // enough to fill the kernel buffers too
			if err := r.send(chunk); err != nil {
				break
			}
		}
		for {
			fh, p, err := r.read()
			if err != nil {
				t.Fatalf("no RST after a window overrun: %v", err)
			}
			if fh.Type == codec.FrameRst && fh.CID == cid {
				if rs, _, _ := codec.ParseReason(p); rs != codec.ReasonWindowExceeded {
					t.Fatalf("RST reason %v, want window_exceeded", rs)
				}
				break
			}
		}
	})
	// After all that the hub still serves.
	resp, err := http.Get("http://" + th.Control + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != `{"status":"ok"}` {
		t.Fatalf("healthz: %s", body)
	}
}

func mustHello(h codec.Hello) []byte {
	b, err := codec.AppendHello(nil, h)
	if err != nil {
		panic(err)
	}
	return b
}
