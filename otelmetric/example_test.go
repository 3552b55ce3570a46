package otelmetric_test

import (
	"context"
	"fmt"
	"log"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/otelmetric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// A Node reporting to the host's MeterProvider. Here the provider has a
// ManualReader, to show what was recorded; a host's would export.
func Example() {
	ctx := context.Background()
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer provider.Shutdown(ctx)

	m, err := otelmetric.New(provider)
	if err != nil {
		log.Fatal(err)
	}
	node, err := tether.Open(ctx, tether.Config{
		Store:    memstore.New(),
		Endpoint: "https://support.example.com/tether",
		Metrics:  m,
	})
	if err != nil {
		log.Fatal(err)
	}
	if _, _, err := node.Initiate(ctx, tether.InitiateRequest{
		Mode: tether.ModeBasic, LocalName: "Support", RemoteName: "Engineering", Name: "Support to Engineering",
	}); err != nil {
		log.Fatal(err)
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		log.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			h := m.Data.(metricdata.Histogram[float64])
			op, _ := h.DataPoints[0].Attributes.Value(otelmetric.AttrStoreOp)
			fmt.Println(m.Name, m.Unit, op.AsString(), h.DataPoints[0].Count)
		}
	}
	// Output:
	// tether.store.operation.duration s CreateConnection 1
}
