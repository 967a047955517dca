package hub

import "github.com/nowconnect/nowconnect/mesh"

// A mesh.Link must be loopReadable, or every link stays on its reader
// goroutine without a word: the interface is matched by method signature.
var _ loopReadable = (*mesh.Link)(nil)
