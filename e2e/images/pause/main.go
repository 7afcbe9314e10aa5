// The sandbox ("pause") process of every pod on the local node: it holds the pod's namespaces
// open, reaps orphaned children (it is PID 1 when the pod shares its process namespace) and exits
// on SIGINT or SIGTERM, which is how containerd stops a sandbox. Our own, so that no image has to
// be pulled from a registry.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		// Reap every child that has exited; WNOHANG so that live ones are left alone.
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
