package sqlstore_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"fmt"
	"log"
	"os"
	"path/filepath"

	_ "modernc.org/sqlite"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/sqlstore"
)

// A node keeps its identity and connections in a SQLite file, and finds
// them again when it opens the file again.
func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "tether-example")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "tether.db")

	// The sealing key comes from the host's secret store; a fixed ring here.
	key := make([]byte, 32)
	rand.Read(key)
	sealer, err := tether.NewSealer("2026-11", map[string][]byte{"2026-11": key})
	if err != nil {
		log.Fatal(err)
	}

	open := func() (*tether.Node, *sql.DB) {
		db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_txlock=immediate")
		if err != nil {
			log.Fatal(err)
		}
		db.SetMaxOpenConns(1)
		store, err := sqlstore.New(ctx, db, sqlstore.SQLite, sqlstore.Config{Sealer: sealer})
		if err != nil {
			log.Fatal(err)
		}
		node, err := tether.Open(ctx, tether.Config{Store: store, Endpoint: "https://support.example.com/tether"})
		if err != nil {
			log.Fatal(err)
		}
		return node, db
	}

	node, db := open()
	conn, _, err := node.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "Support", RemoteName: "Engineering", Name: "Support to Engineering"})
	if err != nil {
		log.Fatal(err)
	}
	id := node.ID()
	db.Close()

	again, db := open()
	defer db.Close()
	c, err := again.Get(ctx, conn.ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("same instance:", again.ID() == id)
	fmt.Println(c.Name, c.Status)
	// Output:
	// same instance: true
	// Support to Engineering pending
}
