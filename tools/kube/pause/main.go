// pause holds a pod's namespaces open, as the sandbox ("pause") container of every pod:
// it sleeps until SIGINT or SIGTERM and, as PID 1 of the pod, reaps orphaned children.
// No registry can be reached here, so the lab builds its own sandbox image around it.
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
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
