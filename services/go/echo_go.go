// echo_go: answers every request with its payload unchanged (Go).
package main

import "skyhost"

func init() {
	skyhost.Serve(func(m *skyhost.Msg) ([]byte, error) {
		return m.Payload, nil
	})
}

func main() {}
