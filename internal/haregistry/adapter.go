// Package haregistry gives the hub the ownership registry of package mesh
// in the hub's own terms (hub.Registry): the hub declares what it consumes,
// mesh implements it, and this adapter, used by cmd and the tests, joins
// them without either importing the other.
package haregistry

import (
	"context"

	"github.com/nowconnect/nowconnect/hub"
	"github.com/nowconnect/nowconnect/mesh"
)

// Adapt returns r as a hub.Registry.
func Adapt(r mesh.Registry) hub.Registry { return adapter{r} }

type adapter struct{ mesh.Registry }

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
