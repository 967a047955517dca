// Package haregistry gives the hub the ownership registry of package mesh
// in the hub's own terms (hub.Registry): the hub declares what it consumes,
// mesh implements it, and this adapter, used by cmd and the tests, joins
// them without either importing the other.
package haregistry

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/hub"
	"github.com/nowconnect/nowconnect/mesh"
)

// Adapt returns r as a hub.Registry.
func Adapt(r mesh.Registry) hub.Registry { return adapter{r} }

type adapter struct{ mesh.Registry }

// Heartbeat is mesh's, with mesh.ErrOwnerGone told as hub.ErrOwnerGone.
func (a adapter) Heartbeat(ctx context.Context, agentID string, epoch uint64) (bool, error) {
	owned, err := a.Registry.Heartbeat(ctx, agentID, epoch)
	if errors.Is(err, mesh.ErrOwnerGone) {
		err = fmt.Errorf("%w: %w", hub.ErrOwnerGone, err)
	}
	return owned, err
}

// Owners lists the agents of connector with their owners (mesh Agents).
func (a adapter) Owners(ctx context.Context, connector string) ([]hub.Ownership, error) {
	list, err := a.Agents(ctx, connector)
	if err != nil {
		return nil, err
	}
	out := make([]hub.Ownership, len(list))
	for i, x := range list {
		out[i] = hub.Ownership{AgentID: x.AgentID, ReplicaID: x.Owner.ReplicaID, Epoch: x.Owner.Epoch}
	}
	return out, nil
}

// MeshHandler delivers a mesh.Manager's links to a hub, which is built after
// the manager (each needs the other): set the hub with SetHub before
// starting the manager.
type MeshHandler struct{ h atomic.Pointer[hub.Hub] }

// SetHub sets the hub that receives the links.
func (m *MeshHandler) SetHub(h *hub.Hub) { m.h.Store(h) }

// Active reports whether the hub forwards (mode active), for M_HELLO.
func (m *MeshHandler) Active() bool {
	h := m.h.Load()
	return h != nil && h.Mode() == hub.ModeActive
}

// LinkUp implements mesh.Handler.
func (m *MeshHandler) LinkUp(l *mesh.Link) {
	if h := m.h.Load(); h != nil {
		h.LinkUp(l)
	}
}

// Frame implements mesh.Handler.
func (m *MeshHandler) Frame(l *mesh.Link, fh codec.MeshHeader, p []byte) {
	if h := m.h.Load(); h != nil {
		h.Frame(l, fh, p)
	}
}

// LinkDown implements mesh.Handler.
func (m *MeshHandler) LinkDown(l *mesh.Link, err error) {
	if h := m.h.Load(); h != nil {
		h.LinkDown(l, err)
	}
}

var (
	_ mesh.Handler    = (*MeshHandler)(nil)
	_ hub.MeshLink    = (*mesh.Link)(nil)
	_ hub.Mesh        = (*mesh.Manager)(nil)
	_ mesh.PeerSource = mesh.Registry(nil)
)
