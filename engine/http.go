package engine

import (
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/panjf2000/gnet/v2"
)

// The control port speaks just enough HTTP/1.1 for health checks, metrics
// scrapes and WebSocket upgrades: GET requests without bodies, keep-alive,
// a bounded header size and a deadline for slow or idle half-requests.

const (
	// MaxRequestBytes bounds a request's head; larger ones get 431.
	MaxRequestBytes = 8 << 10
)

// Request is a parsed request head on the control port.
type Request struct {
	Method        string
	Path          string // without the query
	Authorization []byte // valid only during Route
	Protocols     []byte // Sec-WebSocket-Protocol as sent (comma-separated); valid only during Route
	Tunnel        []byte // Nowconnect-Tunnel: the agent's tunnel index; valid only during Route
	Upgrade       bool   // a valid WebSocket upgrade request
	RemoteAddr    net.Addr
}

// OffersProtocol reports whether the request's Sec-WebSocket-Protocol
// lists p.
func (r *Request) OffersProtocol(p string) bool {
	for _, tok := range bytes.Split(r.Protocols, []byte(",")) {
		if string(bytes.TrimSpace(tok)) == p {
			return true
		}
	}
	return false
}

// Response answers a Request. Exactly one of Decide, Body, Render and
// Upgrade is used: Decide runs off the event loop and returns the real
// response (for work that may block, such as fetching token keys), Upgrade
// switches the connection to WebSocket with that handler, Render produces
// the body off the event loop (metrics), else Body is sent. A Decide
// closure must copy what it needs from the Request: the request's slices
// are gone once Route returns.
//
// With Upgrade, Subprotocol (if set) is selected in the 101 answer, and Loop
// (if set and not the connection's own) moves the connection to that loop
// before answering: the WebSocket then lives there (the client sends
// nothing before the 101, so nothing is in flight while it moves).
type Response struct {
	Status      int
	ContentType string
	Body        []byte
	Render      func() []byte
	Upgrade     WSHandler
	Subprotocol string
	Loop        *Loop
	Decide      func() Response
	// Detach, with Upgrade set to nil, answers 101 and hands the socket to
	// Detach as a net.Conn that goroutines then own (hub-to-hub links run
	// off the event loops: they may use TLS, which gnet lacks). The client
	// sends nothing before the 101, so no byte is in flight.
	Detach func(net.Conn)
}

// Router answers control-port requests. Route runs on the event loop and
// must not block.
type Router interface {
	Route(req *Request) Response
}

// httpConn is a control-port connection before any upgrade.
type httpConn struct {
	// set at construction
	s    *Server
	loop *Loop

	// owned by the loop
	c        gnet.Conn // set by OnOpen
	deadline time.Time
	busy     bool // a rendered response is being produced off the loop
	done     bool // closed or upgraded
}

// newHTTPConn returns the context of a control-port connection about to
// join loop (Loop.Adopt).
func newHTTPConn(s *Server, loop *Loop) *httpConn {
	return &httpConn{s: s, loop: loop, deadline: time.Now().Add(s.opts.RequestTimeout)}
}

// OnOpen runs on the loop once gnet adopted the connection.
func (h *httpConn) OnOpen(c gnet.Conn) gnet.Action {
	h.c = c
	h.loop.AddTicker(h)
	return gnet.None
}

// EnrollFailed: gnet closed the connection; nothing is held.
func (h *httpConn) EnrollFailed(error) { h.done = true }

// Tick closes connections whose request did not arrive in time.
func (h *httpConn) Tick(now time.Time) bool {
	if h.done {
		return false
	}
	if !h.busy && now.After(h.deadline) {
		h.done = true
		_ = h.loop.el.Close(h.c)
		return false
	}
	return true
}

func (h *httpConn) OnClose(gnet.Conn, error) { h.done = true }

func (h *httpConn) OnTraffic(c gnet.Conn) gnet.Action {
	for !h.busy && !h.done {
		buf, _ := c.Peek(-1)
		if len(buf) == 0 {
			return gnet.None
		}
		end := bytes.Index(buf, []byte("\r\n\r\n"))
		if end < 0 {
			if len(buf) > MaxRequestBytes {
				h.reply(431, "text/plain", []byte("request header too large\n"), false)
				return gnet.Close
			}
			return gnet.None
		}
		if end+4 > MaxRequestBytes {
			h.reply(431, "text/plain", []byte("request header too large\n"), false)
			return gnet.Close
		}
		req, wsKey, keepAlive, ok := parseRequest(buf[:end+4])
		if !ok {
			h.reply(400, "text/plain", []byte("bad request\n"), false)
			return gnet.Close
		}
		req.RemoteAddr = c.RemoteAddr()
		resp := h.s.router.Route(&req)
		_, _ = c.Discard(end + 4)
		h.deadline = time.Now().Add(h.s.opts.RequestTimeout)
		switch {
		case resp.Decide != nil:
			h.busy = true
			h.s.workers.Add(1)
			go h.decideLoop(resp.Decide, req.Upgrade, wsKey, keepAlive)
			return gnet.None
		case resp.Upgrade != nil && req.Upgrade:
			h.done = true
			return h.upgrade(c, wsKey, resp)
		case resp.Detach != nil && req.Upgrade:
			h.done = true
			return h.detach(c, wsKey, resp)
		case resp.Render != nil:
			h.busy = true
			h.renderOffLoop(resp, keepAlive)
			return gnet.None
		default:
			h.reply(resp.Status, resp.ContentType, resp.Body, keepAlive)
			if !keepAlive {
				return gnet.Close
			}
		}
	}
	return gnet.None
}

// renderOffLoop produces the body on a worker goroutine owned by the server
// and writes the response back on the loop.
func (h *httpConn) renderOffLoop(resp Response, keepAlive bool) {
	h.s.workers.Add(1)
	go h.renderLoop(resp, keepAlive)
}

func (h *httpConn) renderLoop(resp Response, keepAlive bool) {
	defer h.s.workers.Done()
	body := resp.Render()
	err := h.loop.Execute(func() {
		h.busy = false
		if h.done {
			return
		}
		h.reply(resp.Status, resp.ContentType, body, keepAlive)
		if !keepAlive {
			h.done = true
			_ = h.loop.el.Close(h.c)
			return
		}
		// Requests pipelined behind this one wait in gnet's buffer.
		if h.c.InboundBuffered() > 0 {
			if h.OnTraffic(h.c) == gnet.Close {
				h.done = true
				_ = h.loop.el.Close(h.c)
			}
		}
	})
	if err != nil {
		h.s.log.Debug("metrics response dropped", "err", err)
	}
}

// decideLoop runs a Decide off the loop, then answers on the loop.
func (h *httpConn) decideLoop(decide func() Response, upgrade bool, wsKey string, keepAlive bool) {
	defer h.s.workers.Done()
	resp := decide()
	err := h.loop.Execute(func() {
		h.busy = false
		if h.done {
			return
		}
		action := gnet.None
		switch {
		case resp.Upgrade != nil && upgrade:
			h.done = true
			action = h.upgrade(h.c, wsKey, resp)
		case resp.Detach != nil && upgrade:
			h.done = true
			action = h.detach(h.c, wsKey, resp)
		default:
			h.reply(resp.Status, resp.ContentType, resp.Body, keepAlive)
			if !keepAlive {
				action = gnet.Close
			} else if h.c.InboundBuffered() > 0 {
				action = h.OnTraffic(h.c)
			}
		}
		if action == gnet.Close {
			h.done = true
			_ = h.loop.el.Close(h.c)
		}
	})
	if err != nil {
		h.s.log.Debug("decision dropped", "err", err)
	}
}

// upgrade answers 101 and switches c to WebSocket, on this loop or, with
// resp.Loop, on that one. It returns the action for c.
func (h *httpConn) upgrade(c gnet.Conn, key string, resp Response) gnet.Action {
	if resp.Loop == nil || resp.Loop == h.loop {
		return acceptWS(c, h.loop, key, resp)
	}
	fd, err := c.Dup()
	if err != nil {
		h.s.log.Warn("upgrade_move_failed", "err", err.Error())
		return gnet.Close
	}
	c.SetContext(detached{})
	err = Enroll(resp.Loop, fd, &movedUpgrade{loop: resp.Loop, key: key, resp: resp})
	CloseFD(fd, false) // gnet holds its own descriptor now (or none: the move failed)
	if err != nil {
		h.s.log.Warn("upgrade_move_failed", "err", err.Error())
	}
	return gnet.Close // the original descriptor; the socket lives on in the moved one
}

// switching returns the 101 answer to a WebSocket upgrade.
func switching(key, subprotocol string) []byte {
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	var b []byte
	b = append(b, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "...)
	b = base64.StdEncoding.AppendEncode(b, sum[:])
	if subprotocol != "" {
		b = append(b, "\r\nSec-WebSocket-Protocol: "...)
		b = append(b, subprotocol...)
	}
	return append(b, "\r\n\r\n"...)
}

// detach answers 101 with a blocking write on a dup of the socket (gnet's
// outbound buffer stays empty) and hands the dup to resp.Detach.
func (h *httpConn) detach(c gnet.Conn, key string, resp Response) gnet.Action {
	fd, err := c.Dup()
	if err != nil {
		h.s.log.Warn("detach_failed", "err", err.Error())
		return gnet.Close
	}
	c.SetContext(detached{})
	f := os.NewFile(uintptr(fd), "detached")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		h.s.log.Warn("detach_failed", "err", err.Error())
		return gnet.Close
	}
	if _, err := nc.Write(switching(key, resp.Subprotocol)); err != nil {
		nc.Close()
		return gnet.Close
	}
	h.s.workers.Go(func() { resp.Detach(nc) }) // detachedHandoff: the callee owns nc (it starts its own goroutines)
	return gnet.Close
}

// acceptWS writes the 101 on c and installs the WebSocket handler.
func acceptWS(c gnet.Conn, loop *Loop, key string, resp Response) gnet.Action {
	if _, err := c.Write(switching(key, resp.Subprotocol)); err != nil {
		return gnet.Close
	}
	w := &WSConn{c: c, loop: loop, h: resp.Upgrade}
	c.SetContext(w)
	resp.Upgrade.OnOpen(w)
	if w.closed {
		return gnet.Close
	}
	// Frames the agent sent right behind the handshake are already buffered.
	if c.InboundBuffered() > 0 {
		return w.OnTraffic(c)
	}
	return gnet.None
}

// movedUpgrade is the context of an upgrading connection moving to another
// loop; OnOpen answers the upgrade there.
type movedUpgrade struct {
	loop *Loop
	key  string
	resp Response
}

func (m *movedUpgrade) OnOpen(c gnet.Conn) gnet.Action  { return acceptWS(c, m.loop, m.key, m.resp) }
func (m *movedUpgrade) EnrollFailed(error)              {}
func (m *movedUpgrade) OnTraffic(gnet.Conn) gnet.Action { return gnet.Close }
func (m *movedUpgrade) OnClose(gnet.Conn, error)        {}

// detached is the context of a connection whose socket moved on: gnet's
// close of the old descriptor is expected and ignored.
type detached struct{}

func (detached) OnTraffic(gnet.Conn) gnet.Action { return gnet.Close }
func (detached) OnClose(gnet.Conn, error)        {}

var statusText = map[int]string{
	200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
	405: "Method Not Allowed", 426: "Upgrade Required", 431: "Request Header Fields Too Large",
	500: "Internal Server Error", 503: "Service Unavailable",
}

func (h *httpConn) reply(status int, ctype string, body []byte, keepAlive bool) {
	b := make([]byte, 0, 160+len(body))
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, statusText[status]...)
	b = append(b, "\r\nContent-Type: "...)
	if ctype == "" {
		ctype = "text/plain; charset=utf-8"
	}
	b = append(b, ctype...)
	b = append(b, "\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	if !keepAlive {
		b = append(b, "\r\nConnection: close"...)
	}
	b = append(b, "\r\n\r\n"...)
	b = append(b, body...)
	_, _ = h.c.Write(b)
}

// parseRequest parses a request head ending in CRLFCRLF. It accepts only
// requests without a body.
func parseRequest(head []byte) (req Request, wsKey string, keepAlive bool, ok bool) {
	lineEnd := bytes.Index(head, []byte("\r\n"))
	if lineEnd < 0 {
		return req, "", false, false
	}
	parts := bytes.Split(head[:lineEnd], []byte(" "))
	if len(parts) != 3 || len(parts[0]) == 0 || len(parts[1]) == 0 || parts[1][0] != '/' {
		return req, "", false, false
	}
	proto := string(parts[2])
	if proto != "HTTP/1.1" && proto != "HTTP/1.0" {
		return req, "", false, false
	}
	req.Method = string(parts[0])
	path := parts[1]
	if q := bytes.IndexByte(path, '?'); q >= 0 {
		path = path[:q]
	}
	req.Path = string(path)
	keepAlive = proto == "HTTP/1.1"
	var upgradeWS, connUpgrade, version13 bool
	rest := head[lineEnd+2:]
	for len(rest) > 2 {
		e := bytes.Index(rest, []byte("\r\n"))
		if e < 0 {
			break
		}
		line := rest[:e]
		rest = rest[e+2:]
		if len(line) == 0 {
			break
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return req, "", false, false
		}
		name := bytes.TrimSpace(line[:colon])
		val := bytes.TrimSpace(line[colon+1:])
		switch {
		case bytes.EqualFold(name, []byte("Authorization")):
			req.Authorization = val
		case bytes.EqualFold(name, []byte("Upgrade")):
			upgradeWS = bytes.EqualFold(val, []byte("websocket"))
		case bytes.EqualFold(name, []byte("Connection")):
			for _, tok := range bytes.Split(val, []byte(",")) {
				tok = bytes.TrimSpace(tok)
				if bytes.EqualFold(tok, []byte("upgrade")) {
					connUpgrade = true
				}
				if bytes.EqualFold(tok, []byte("close")) {
					keepAlive = false
				}
				if bytes.EqualFold(tok, []byte("keep-alive")) {
					keepAlive = true
				}
			}
		case bytes.EqualFold(name, []byte("Sec-WebSocket-Protocol")):
			req.Protocols = val
		case bytes.EqualFold(name, []byte("Nowconnect-Tunnel")):
			req.Tunnel = val
		case bytes.EqualFold(name, []byte("Sec-WebSocket-Key")):
			wsKey = string(val)
		case bytes.EqualFold(name, []byte("Sec-WebSocket-Version")):
			version13 = string(val) == "13"
		case bytes.EqualFold(name, []byte("Content-Length")):
			if string(val) != "0" {
				return req, "", false, false
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			return req, "", false, false
		}
	}
	req.Upgrade = req.Method == "GET" && upgradeWS && connUpgrade && version13 && len(wsKey) == 24
	return req, wsKey, keepAlive, true
}
