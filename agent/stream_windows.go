package agent

// writeNow writes p to the target without blocking and returns how much
// the socket took. Go keeps Windows sockets in blocking mode (all I/O is
// overlapped), so a direct send could block with mu held: it takes nothing,
// and the caller queues p for targetWriteLoop, whose net.Conn writes go
// through the runtime's completion port. Called with mu held.
func (st *stream) writeNow([]byte) (int, error) { return 0, nil }
