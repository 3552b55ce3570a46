package memstore_test

import (
	"testing"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(testing.TB) tether.Store { return memstore.New() })
}
