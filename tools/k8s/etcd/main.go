// Command etcd is etcd's own server main: `go install` of etcd's module fails
// on the replace lines in its go.mod, so it is built from here instead.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
